"""Ops with a fast path (Triton / CUDA) and a plain PyTorch reference; see ``backend``."""
from labfast.ops.fusion import feature_fusion, heatmap_feature_concat, input_fusion
from labfast.ops.message_passing import message_passing

__all__ = ["input_fusion", "heatmap_feature_concat", "feature_fusion", "message_passing"]
