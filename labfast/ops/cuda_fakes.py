"""Fake (meta) kernels of the CUDA extension's operators (``torch.ops.labfast_cuda.*``, ``csrc/*.cu``).

``torch.compile`` and ``torch.export`` trace with fake tensors: an operator without a fake kernel
stops them. ``register()`` adds one per operator when the extension loads
(``labfast.ops.backend.cuda_extension_status``); ``FAKES`` names every operator the ``m.def(...)``
lines of ``csrc/*.cu`` declare (a test checks the two lists agree). Each gives the shape and dtype
the CUDA kernel returns, NCHW-contiguous.
"""
from __future__ import annotations

import torch


def _empty(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device)


def boundary_heatmaps(curves, height, width, sigma, dtype):
    return _empty((curves.shape[0], curves.shape[1], height, width), curves, dtype)


def input_fusion_forward(image, heatmaps):
    n, c, height, width = image.shape
    return _empty((n, c * (heatmaps.shape[1] + 1), height, width), image)


def input_fusion_backward_image(grad, image, heatmaps):
    return _empty(image.shape, image)


def input_fusion_backward_heatmaps(grad, image, heatmaps):
    return _empty(heatmaps.shape, heatmaps)


def heatmap_feature_concat_forward(heatmaps, features, area):
    n, c, height, width = features.shape
    return _empty((n, heatmaps.shape[1] + c, height, width), features)


def heatmap_feature_concat_backward_heatmaps(grad, heatmaps, area):
    return _empty(heatmaps.shape, heatmaps)


def feature_fusion_forward(features, gate):
    n, c, height, width = features.shape
    return _empty((n, 2 * c, height, width), features)


def feature_fusion_backward(grad, features, gate):
    return _empty(features.shape, features), _empty(gate.shape, gate)


FAKES = {function.__name__: function for function in (
    boundary_heatmaps, input_fusion_forward, input_fusion_backward_image, input_fusion_backward_heatmaps,
    heatmap_feature_concat_forward, heatmap_feature_concat_backward_heatmaps, feature_fusion_forward,
    feature_fusion_backward)}

_registered = False


def register() -> None:
    """Register every fake once (the extension's operators must be loaded)."""
    global _registered
    if _registered:
        return
    for name, fake in FAKES.items():
        torch.library.register_fake(f"labfast_cuda::{name}", fake)
    _registered = True
