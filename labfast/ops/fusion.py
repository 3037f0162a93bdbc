"""Heatmap-feature fusion of the boundary-aware regressor (LAB, Sec. 3.2).

- input fusion ``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)``: the image and its K boundary-masked copies,
  the heatmaps bilinearly resized to the image size;
- ``heatmap_feature_concat``: ``M ⊕ F``, the input of the transform T, M resized to F's size;
- feature fusion ``F ⊕ (F ⊗ T)``, T the sigmoid output of the small hourglass.

⊕ is channel concatenation and ⊗ the element-wise product. Each public function dispatches via
``labfast.ops.backend``; its ``*_ref`` twin is the plain PyTorch definition it is judged by.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from labfast.ops import backend


def _resize(heatmaps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if heatmaps.shape[-2:] == size:
        return heatmaps
    return F.interpolate(heatmaps, size=size, mode="bilinear", align_corners=False)


def input_fusion_ref(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)``, ``(N, K, h, w)`` -> ``(N, C * (K + 1), H, W)``: ``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)``."""
    resized = _resize(heatmaps.to(image.dtype), image.shape[-2:])
    masked = image.unsqueeze(1) * resized.unsqueeze(2)  # (N, K, C, H, W)
    return torch.cat([image, masked.flatten(1, 2)], dim=1)


def heatmap_feature_concat_ref(heatmaps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``(N, K, h, w)``, ``(N, C, H, W)`` -> ``(N, K + C, H, W)``: ``M ⊕ F`` with M resized to F's size."""
    return torch.cat([_resize(heatmaps.to(features.dtype), features.shape[-2:]), features], dim=1)


def feature_fusion_ref(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)``, ``(N, C, H, W)`` -> ``(N, 2C, H, W)``: ``F ⊕ (F ⊗ T)``."""
    return torch.cat([features, features * gate], dim=1)


def input_fusion(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    backend.select("fusion", image, supported=())
    return input_fusion_ref(image, heatmaps)


def heatmap_feature_concat(heatmaps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    backend.select("fusion", features, supported=())
    return heatmap_feature_concat_ref(heatmaps, features)


def feature_fusion(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    backend.select("fusion", features, supported=())
    return feature_fusion_ref(features, gate)
