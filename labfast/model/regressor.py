"""Boundary-aware landmark regressor (LAB Sec. 3.1): ResNet-18 with input and feature fusion.

- Input fusion: the stem sees ``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)`` (``3(K+1)`` channels), the
  heatmaps bilinearly resized to the image (``labfast.ops.input_fusion``).
- Feature fusion after each stage listed in ``config.fusion_stages``:
  ``F ⊕ (F ⊗ T(M ⊕ F))`` with T a small hourglass ending in a sigmoid (``C`` channels, one gate
  per feature channel; M shrunk to the stage's size as ``config.fusion_resize`` says), then a
  1×1 conv + BN + ReLU from ``2C`` back to ``C`` so the next ResNet stage keeps its standard
  shape (the paper does not say how the ``2C`` channels continue);
  after stage 4 the ``2C`` channels go straight to the head.
- Head: global average pool and a linear layer to ``2L`` coordinates in crop-normalised units
  (``0`` at the crop centre, ``±0.5`` at its edges); ``LAB`` maps them to input pixels.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from labfast import ops
from labfast.model.batch_norm_act import BatchNormAct
from labfast.model.config import LABConfig
from labfast.model.hourglass import Hourglass
from labfast.model.resnet import RESNET18_BLOCKS, init_resnet_, resnet_stages, resnet_stem
from labfast.ops.fusion import RESIZE_MODES


class FeatureFusion(nn.Module):
    """``(N, K, h, w)`` heatmaps, ``(N, C, H, W)`` features -> ``F ⊕ (F ⊗ T(M ⊕ F))``, M resized to
    ``(H, W)`` with ``resize`` (``"area"`` or ``"bilinear"``, ``labfast.ops.heatmap_feature_concat``).

    ``T``: 1×1 conv ``K + C -> t``, hourglass of ``depth`` steps at width ``t``, 1×1 conv
    ``t -> C``, sigmoid. With ``reduce`` the fused ``2C`` channels go through 1×1 conv + BN + ReLU
    back to ``C`` (``(N, C, H, W)`` out, for the next ResNet stage); without it the ``(N, 2C, H, W)``
    fusion is returned (after the last stage, where the pooled head takes it as it is).
    """

    def __init__(self, num_boundaries: int, channels: int, transform_channels: int, depth: int,
                 reduce: bool, resize: str) -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"LABConfig.fusion_resize={resize!r} is not one of {RESIZE_MODES}")
        self.resize = resize
        self.transform = nn.Sequential(
            nn.Conv2d(num_boundaries + channels, transform_channels, 1),
            Hourglass(depth, transform_channels),
            nn.Conv2d(transform_channels, channels, 1),
            nn.Sigmoid(),
        )
        self.reduce = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1, bias=False),
            BatchNormAct(channels),  # BN + ReLU
        ) if reduce else nn.Identity()

    def forward(self, heatmaps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        gate = self.transform(ops.heatmap_feature_concat(heatmaps, features, self.resize))
        return self.reduce(ops.feature_fusion(features, gate.to(features.dtype)))


class BoundaryAwareRegressor(nn.Module):
    """``(N, 3, S, S)`` normalised images, ``(N, K, S/4, S/4)`` heatmaps -> ``(N, L, 2)`` coordinates
    in crop-normalised units."""

    def __init__(self, num_points: int, num_boundaries: int, config: LABConfig) -> None:
        super().__init__()
        self.num_points = num_points
        self.input_fusion = config.input_fusion
        width = config.regressor_width
        in_channels = 3 * (num_boundaries + 1) if config.input_fusion else 3
        self.stem = resnet_stem(in_channels, width, config.regressor_stem_kernel)
        self.stages = resnet_stages(width, RESNET18_BLOCKS)
        last = len(RESNET18_BLOCKS)
        self.fusions = nn.ModuleDict({
            str(stage): FeatureFusion(
                num_boundaries, width * 2 ** (stage - 1), config.transform_channels,
                config.transform_depth, reduce=stage != last, resize=config.fusion_resize,
            )
            for stage in config.fusion_stages
        })
        head_channels = width * 2 ** (last - 1) * (2 if last in config.fusion_stages else 1)
        self.head = nn.Linear(head_channels, 2 * num_points)
        init_resnet_(self)
        # A small head so the first predictions sit near the crop centre, not scattered by ±several crops.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        x = ops.input_fusion(images, heatmaps) if self.input_fusion else images
        x = self.stem(x)
        for stage_number, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if str(stage_number) in self.fusions:
                x = self.fusions[str(stage_number)](heatmaps, x)
        pooled = torch.flatten(x.mean(dim=(2, 3)), 1)
        return self.head(pooled).view(-1, self.num_points, 2)
