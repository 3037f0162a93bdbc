"""Heatmap-feature fusion of the boundary-aware regressor (LAB, Sec. 3.1).

- input fusion ``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)``: the image and its K boundary-masked copies,
  the heatmaps bilinearly resized to the image size;
- ``heatmap_feature_concat``: ``M ⊕ F``, the input of the transform T, M resized to F's size
  (``resize="area"``: axes that shrink are area-averaged, see ``resize_heatmaps``);
- feature fusion ``F ⊕ (F ⊗ T)``, T the sigmoid output of the small hourglass.

⊕ is channel concatenation and ⊗ the element-wise product. Each public function dispatches via
``labfast.ops.backend`` (op name ``"fusion"``, forced by ``LABFAST_BACKEND_FUSION``); its ``*_ref``
twin is the plain PyTorch definition it is judged by. Fast paths: Triton (``labfast.kernels.fusion``)
and CUDA (``csrc/fusion.cu``), each for all three ops. They write the
concatenated output directly and return NCHW-contiguous tensors (channels_last inputs are copied to
NCHW first). The CUDA path takes fp32/fp16/bf16; Triton also fp64 (used by gradcheck).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from labfast.ops import backend


RESIZE_MODES = ("area", "bilinear")


def resize_heatmaps(heatmaps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``(N, K, h, w)`` -> ``(N, K, *size)``.

    ``"bilinear"``: bilinear interpolation (``align_corners=False``) on both axes.
    ``"area"``: every axis that shrinks is area-averaged, every axis that grows (or keeps its size)
    is interpolated bilinearly; the two act on different axes, so the order does not matter.
    Bilinear down-sizing reads only the two source rows nearest each output row: from 64 to 8 it
    skips 6 rows in 8, and a thin boundary between the rows it reads vanishes. Area averaging reads
    every row. Output ``o`` of an axis shrinking from ``n`` to ``m`` is the mean of source indices
    ``floor(o n / m) … ceil((o + 1) n / m) - 1`` (``F.adaptive_avg_pool2d``, which is also what
    ``F.interpolate(mode="area")`` computes): for an integer factor ``f = n / m`` that is the mean of
    ``f`` pixels, the exact area average; for a non-integer ratio each output averages every source
    pixel its cell touches, whole pixels with equal weights, so neighbouring outputs share a pixel
    (e.g. 3 -> 2: ``(x0 + x1) / 2`` and ``(x1 + x2) / 2``). LAB's own sizes are powers of two
    (heatmaps at ``input_size / 4``, ResNet stages at ``input_size / 4 … / 32``), so the model only
    meets integer factors.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    if mode == "area":
        # plain ints: sizes are fixed by the model's input size, and a traced export keeps them so
        height, width = int(heatmaps.shape[-2]), int(heatmaps.shape[-1])
        shrunk = (min(int(size[0]), height), min(int(size[1]), width))
        if shrunk != (height, width):
            if height % shrunk[0] == 0 and width % shrunk[1] == 0:
                # integer factors (all the model meets): the same mean over fixed windows, and a
                # fixed kernel exports to ONNX where adaptive pooling of a traced size does not
                factor = (height // shrunk[0], width // shrunk[1])
                heatmaps = F.avg_pool2d(heatmaps, kernel_size=factor, stride=factor)
            else:
                heatmaps = F.adaptive_avg_pool2d(heatmaps, shrunk)
    if tuple(heatmaps.shape[-2:]) == tuple(size):
        return heatmaps
    return F.interpolate(heatmaps, size=size, mode="bilinear", align_corners=False)


def input_fusion_ref(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)``, ``(N, K, h, w)`` -> ``(N, C * (K + 1), H, W)``: ``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)``.

    The heatmaps are resized bilinearly (the model up-sizes them here, 4x).
    """
    resized = resize_heatmaps(heatmaps.to(image.dtype), image.shape[-2:], "bilinear")
    masked = image.unsqueeze(1) * resized.unsqueeze(2)  # (N, K, C, H, W)
    return torch.cat([image, masked.flatten(1, 2)], dim=1)


def heatmap_feature_concat_ref(heatmaps: torch.Tensor, features: torch.Tensor, resize: str = "area") -> torch.Tensor:
    """``(N, K, h, w)``, ``(N, C, H, W)`` -> ``(N, K + C, H, W)``: ``M ⊕ F`` with M resized to F's size
    by ``resize_heatmaps(..., mode=resize)``."""
    resized = resize_heatmaps(heatmaps.to(features.dtype), features.shape[-2:], resize)
    return torch.cat([resized, features], dim=1)


def feature_fusion_ref(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)``, ``(N, C, H, W)`` -> ``(N, 2C, H, W)``: ``F ⊕ (F ⊗ T)``."""
    return torch.cat([features, features * gate], dim=1)


def _check_maps(op: str, **tensors: torch.Tensor) -> None:
    """The fast paths' contract: 4-D ``(N, C, H, W)`` floating tensors, one device, one batch."""
    (first_name, first), *_ = tensors.items()
    for name, tensor in tensors.items():
        if tensor.dim() != 4:
            raise ValueError(f"{op}: {name} has shape {tuple(tensor.shape)}; expected (N, C, H, W)")
        if not tensor.is_floating_point():
            raise TypeError(f"{op}: {name} has dtype {tensor.dtype}; expected a floating dtype")
        if tensor.device != first.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but {first_name} on {first.device}")
        if tensor.shape[0] != first.shape[0]:
            raise ValueError(f"{op}: {name} has batch {tensor.shape[0]} but {first_name} {first.shape[0]}")


def input_fusion(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)``; see ``input_fusion_ref`` (same signature and result)."""
    _check_maps("input_fusion", image=image, heatmaps=heatmaps)
    choice = backend.select("fusion", image, supported=("triton", "cuda"))
    if choice == "triton":
        from labfast.kernels.fusion import InputFusion

        return backend.run_fast("fusion", "triton", image, lambda: InputFusion.apply(image, heatmaps),
                                lambda: input_fusion_ref(image, heatmaps))
    if choice == "cuda":
        return _CudaInputFusion.apply(image, heatmaps)
    return input_fusion_ref(image, heatmaps)


def heatmap_feature_concat(heatmaps: torch.Tensor, features: torch.Tensor, resize: str = "area") -> torch.Tensor:
    """``M ⊕ F``; see ``heatmap_feature_concat_ref`` (same signature and result)."""
    _check_maps("heatmap_feature_concat", features=features, heatmaps=heatmaps)
    if resize not in RESIZE_MODES:
        raise ValueError(f"heatmap_feature_concat: resize={resize!r} is not one of {RESIZE_MODES}")
    choice = backend.select("fusion", features, supported=("triton", "cuda"))
    if choice == "triton":
        from labfast.kernels.fusion import HeatmapFeatureConcat

        return backend.run_fast("fusion", "triton", features,
                                lambda: HeatmapFeatureConcat.apply(heatmaps, features, resize == "area"),
                                lambda: heatmap_feature_concat_ref(heatmaps, features, resize))
    if choice == "cuda":
        return _CudaHeatmapFeatureConcat.apply(heatmaps, features, resize == "area")
    return heatmap_feature_concat_ref(heatmaps, features, resize)


def feature_fusion(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``F ⊕ (F ⊗ T)``; see ``feature_fusion_ref``. ``gate`` must have the shape of ``features``."""
    _check_maps("feature_fusion", features=features, gate=gate)
    if gate.shape != features.shape:
        raise ValueError(
            f"feature_fusion: gate has shape {tuple(gate.shape)} but features {tuple(features.shape)}"
        )
    choice = backend.select("fusion", features, supported=("triton", "cuda"))
    if choice == "triton":
        from labfast.kernels.fusion import FeatureFusion

        return backend.run_fast("fusion", "triton", features, lambda: FeatureFusion.apply(features, gate),
                                lambda: feature_fusion_ref(features, gate))
    if choice == "cuda":
        return _CudaFeatureFusion.apply(features, gate)
    return feature_fusion_ref(features, gate)


class _CudaInputFusion(torch.autograd.Function):
    """``csrc/fusion.cu``'s input fusion; heatmaps are cast to the image's dtype first, as in the reference."""

    @staticmethod
    def forward(ctx, image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        cast = heatmaps.to(image.dtype)
        ctx.save_for_backward(image, cast)
        ctx.heatmaps_dtype = heatmaps.dtype
        return torch.ops.labfast_cuda.input_fusion_forward(image, cast)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, heatmaps = ctx.saved_tensors
        grad_image = grad_heatmaps = None
        if ctx.needs_input_grad[0]:
            grad_image = torch.ops.labfast_cuda.input_fusion_backward_image(grad, image, heatmaps)
        if ctx.needs_input_grad[1]:
            grad_heatmaps = torch.ops.labfast_cuda.input_fusion_backward_heatmaps(grad, image, heatmaps)
            grad_heatmaps = grad_heatmaps.to(ctx.heatmaps_dtype)
        return grad_image, grad_heatmaps


class _CudaHeatmapFeatureConcat(torch.autograd.Function):
    """``csrc/fusion.cu``'s ``M ⊕ F``; heatmaps are cast to the features' dtype first, as in the reference.
    ``area``: area-average the axes that shrink (``resize="area"``)."""

    @staticmethod
    def forward(ctx, heatmaps: torch.Tensor, features: torch.Tensor, area: bool) -> torch.Tensor:
        cast = heatmaps.to(features.dtype)
        ctx.save_for_backward(cast)
        ctx.heatmaps_dtype = heatmaps.dtype
        ctx.area = area
        return torch.ops.labfast_cuda.heatmap_feature_concat_forward(cast, features, area)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (heatmaps,) = ctx.saved_tensors
        grad_heatmaps = grad_features = None
        if ctx.needs_input_grad[0]:
            grad_heatmaps = torch.ops.labfast_cuda.heatmap_feature_concat_backward_heatmaps(grad, heatmaps, ctx.area)
            grad_heatmaps = grad_heatmaps.to(ctx.heatmaps_dtype)
        if ctx.needs_input_grad[1]:
            grad_features = grad[:, heatmaps.shape[1]:]  # F is copied unchanged
        return grad_heatmaps, grad_features, None


class _CudaFeatureFusion(torch.autograd.Function):
    """``csrc/fusion.cu``'s feature fusion, in the promoted dtype of its inputs (as the reference)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(features.dtype, gate.dtype)
        features_cast, gate_cast = features.to(dtype), gate.to(dtype)
        ctx.save_for_backward(features_cast, gate_cast)
        ctx.dtypes = (features.dtype, gate.dtype)
        return torch.ops.labfast_cuda.feature_fusion_forward(features_cast, gate_cast)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        features, gate = ctx.saved_tensors
        grad_features, grad_gate = torch.ops.labfast_cuda.feature_fusion_backward(grad, features, gate)
        return grad_features.to(ctx.dtypes[0]), grad_gate.to(ctx.dtypes[1])
