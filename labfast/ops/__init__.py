"""Ops with a fast path (Triton / CUDA) and a plain PyTorch reference; see ``backend``."""
from labfast.ops.batch_norm_act import batch_norm_act, batch_norm_act_ref
from labfast.ops.boundary_heatmaps import boundary_heatmaps, boundary_heatmaps_ref
from labfast.ops.fusion import feature_fusion, heatmap_feature_concat, input_fusion
from labfast.ops.message_passing import message_passing

__all__ = ["batch_norm_act", "batch_norm_act_ref", "boundary_heatmaps", "boundary_heatmaps_ref", "input_fusion", "heatmap_feature_concat", "feature_fusion", "message_passing"]
