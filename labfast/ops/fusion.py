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


_FAST_PATHS = ("triton", "cuda")


def _uses_reference(tensor: torch.Tensor) -> bool:
    """Whether the public function runs the plain ``*_ref`` (autograd through its decomposition)
    rather than the ``torch.ops.labfast`` operator (fast path inside); a constant under compile."""
    return backend.select_for("fusion", tensor.device, tensor.dtype, _FAST_PATHS) == "reference"


def input_fusion(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)``; see ``input_fusion_ref`` (same signature and result)."""
    _check_maps("input_fusion", image=image, heatmaps=heatmaps)
    if _uses_reference(image):
        return input_fusion_ref(image, heatmaps)
    return torch.ops.labfast.input_fusion(image, heatmaps)


def heatmap_feature_concat(heatmaps: torch.Tensor, features: torch.Tensor, resize: str = "area") -> torch.Tensor:
    """``M ⊕ F``; see ``heatmap_feature_concat_ref`` (same signature and result)."""
    _check_maps("heatmap_feature_concat", features=features, heatmaps=heatmaps)
    if resize not in RESIZE_MODES:
        raise ValueError(f"heatmap_feature_concat: resize={resize!r} is not one of {RESIZE_MODES}")
    if _uses_reference(features):
        return heatmap_feature_concat_ref(heatmaps, features, resize)
    return torch.ops.labfast.heatmap_feature_concat(heatmaps, features, resize == "area")


def feature_fusion(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``F ⊕ (F ⊗ T)``; see ``feature_fusion_ref``. ``gate`` must have the shape of ``features``."""
    _check_maps("feature_fusion", features=features, gate=gate)
    if gate.shape != features.shape:
        raise ValueError(
            f"feature_fusion: gate has shape {tuple(gate.shape)} but features {tuple(features.shape)}"
        )
    if _uses_reference(features):
        return feature_fusion_ref(features, gate)
    return torch.ops.labfast.feature_fusion(features, gate)


# ---------------------------------------------------------------------------------------------
# The operators. Their bodies run eagerly (never traced): each picks its path with
# ``backend.select`` (a fast path that fails its self-check or does not compile runs the reference
# there, and the backward operator then differentiates the reference with ``torch.func.vjp``).
# Outputs are NCHW-contiguous whatever the path; a gradient not asked for is an empty tensor.


def _run(tensor: torch.Tensor, triton, cuda, reference):
    """Call the ``triton``, ``cuda`` or ``reference`` thunk, as ``backend`` decides for ``tensor``."""
    choice = backend.select("fusion", tensor, supported=_FAST_PATHS)
    if choice == "triton":
        return backend.run_fast("fusion", "triton", tensor, triton, reference)
    return cuda() if choice == "cuda" else reference()


def _contiguous(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _reference_grads(reference, inputs: tuple[torch.Tensor, ...], grad: torch.Tensor):
    """The reference's input gradients for ``grad`` (a fallback inside a backward operator)."""
    return _contiguous(*torch.func.vjp(reference, *inputs)[1](grad))


def _gradient(gradient: torch.Tensor | None, like: torch.Tensor, needed: bool) -> torch.Tensor:
    """``gradient`` where it was asked for, else an empty tensor (operators return no ``None``)."""
    return gradient if needed else like.new_empty(0)


def _nchw(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


@torch.library.custom_op("labfast::input_fusion", mutates_args=())
def _input_fusion_op(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    def triton():
        from labfast.kernels.fusion import input_fusion_forward

        return input_fusion_forward(image, heatmaps)

    return _run(image, triton, lambda: _cuda_input_fusion_forward(image, heatmaps),
                lambda: input_fusion_ref(image, heatmaps).contiguous())


@_input_fusion_op.register_fake
def _(image, heatmaps):
    n, c, height, width = image.shape
    return _nchw((n, c * (heatmaps.shape[1] + 1), height, width), image)


@torch.library.custom_op("labfast::input_fusion_backward", mutates_args=())
def _input_fusion_backward_op(grad: torch.Tensor, image: torch.Tensor, heatmaps: torch.Tensor,
                              image_needs_grad: bool, heatmaps_needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    needs = (image_needs_grad, heatmaps_needs_grad)

    def triton():
        from labfast.kernels.fusion import input_fusion_backward

        return input_fusion_backward(grad, image, heatmaps, *needs)

    grads = _run(image, triton, lambda: _cuda_input_fusion_backward(grad, image, heatmaps, *needs),
                 lambda: _reference_grads(input_fusion_ref, (image, heatmaps), grad))
    return _gradient(grads[0], image, needs[0]), _gradient(grads[1], heatmaps, needs[1])


@_input_fusion_backward_op.register_fake
def _(grad, image, heatmaps, image_needs_grad, heatmaps_needs_grad):
    return (_nchw(image.shape if image_needs_grad else (0,), image),
            _nchw(heatmaps.shape if heatmaps_needs_grad else (0,), heatmaps))


def _input_fusion_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _input_fusion_backward(ctx, grad):
    image, heatmaps = ctx.saved_tensors
    grads = torch.ops.labfast.input_fusion_backward(grad, image, heatmaps, *ctx.needs_input_grad)
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))


_input_fusion_op.register_autograd(_input_fusion_backward, setup_context=_input_fusion_setup)


@torch.library.custom_op("labfast::heatmap_feature_concat", mutates_args=())
def _heatmap_feature_concat_op(heatmaps: torch.Tensor, features: torch.Tensor, area: bool) -> torch.Tensor:
    def triton():
        from labfast.kernels.fusion import heatmap_feature_concat_forward

        return heatmap_feature_concat_forward(heatmaps, features, area)

    return _run(features, triton, lambda: _cuda_heatmap_feature_concat_forward(heatmaps, features, area),
                lambda: heatmap_feature_concat_ref(heatmaps, features, _resize_mode(area)).contiguous())


@_heatmap_feature_concat_op.register_fake
def _(heatmaps, features, area):
    n, c, height, width = features.shape
    return _nchw((n, heatmaps.shape[1] + c, height, width), features)


def _resize_mode(area: bool) -> str:
    return "area" if area else "bilinear"


@torch.library.custom_op("labfast::heatmap_feature_concat_backward", mutates_args=())
def _heatmap_feature_concat_backward_op(grad: torch.Tensor, heatmaps: torch.Tensor, area: bool) -> torch.Tensor:
    """dL/dM only: dL/dF is the slice ``grad[:, K:]`` (F is copied unchanged)."""
    def triton():
        from labfast.kernels.fusion import heatmap_feature_concat_backward_heatmaps

        return heatmap_feature_concat_backward_heatmaps(grad, heatmaps.shape, heatmaps.dtype, area)

    def reference():
        features = grad[:, heatmaps.shape[1]:]  # only its shape and dtype matter to dL/dM
        return _reference_grads(lambda m: heatmap_feature_concat_ref(m, features, _resize_mode(area)),
                                (heatmaps,), grad)[0]

    return _run(grad, triton, lambda: _cuda_heatmap_feature_concat_backward(grad, heatmaps, area), reference)


@_heatmap_feature_concat_backward_op.register_fake
def _(grad, heatmaps, area):
    return _nchw(heatmaps.shape, heatmaps)


def _heatmap_feature_concat_setup(ctx, inputs, output):
    heatmaps, _, area = inputs
    ctx.save_for_backward(heatmaps)
    ctx.area = area


def _heatmap_feature_concat_backward(ctx, grad):
    (heatmaps,) = ctx.saved_tensors
    grad_heatmaps = grad_features = None
    if ctx.needs_input_grad[0]:
        grad_heatmaps = torch.ops.labfast.heatmap_feature_concat_backward(grad, heatmaps, ctx.area)
    if ctx.needs_input_grad[1]:
        grad_features = grad[:, heatmaps.shape[1]:]
    return grad_heatmaps, grad_features, None


_heatmap_feature_concat_op.register_autograd(_heatmap_feature_concat_backward, setup_context=_heatmap_feature_concat_setup)


@torch.library.custom_op("labfast::feature_fusion", mutates_args=())
def _feature_fusion_op(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    def triton():
        from labfast.kernels.fusion import feature_fusion_forward

        return feature_fusion_forward(features, gate)

    return _run(features, triton, lambda: _cuda_feature_fusion_forward(features, gate),
                lambda: feature_fusion_ref(features, gate).contiguous())


@_feature_fusion_op.register_fake
def _(features, gate):
    n, c, height, width = features.shape
    return _nchw((n, 2 * c, height, width), features, torch.promote_types(features.dtype, gate.dtype))


@torch.library.custom_op("labfast::feature_fusion_backward", mutates_args=())
def _feature_fusion_backward_op(grad: torch.Tensor, features: torch.Tensor, gate: torch.Tensor,
                                features_needs_grad: bool, gate_needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    needs = (features_needs_grad, gate_needs_grad)

    def triton():
        from labfast.kernels.fusion import feature_fusion_backward

        return feature_fusion_backward(grad, features, gate, *needs)

    grads = _run(features, triton, lambda: _cuda_feature_fusion_backward(grad, features, gate),
                 lambda: _reference_grads(feature_fusion_ref, (features, gate), grad))
    return _gradient(grads[0], features, needs[0]), _gradient(grads[1], gate, needs[1])


@_feature_fusion_backward_op.register_fake
def _(grad, features, gate, features_needs_grad, gate_needs_grad):
    return (_nchw(features.shape if features_needs_grad else (0,), features),
            _nchw(gate.shape if gate_needs_grad else (0,), gate))


def _feature_fusion_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _feature_fusion_backward(ctx, grad):
    features, gate = ctx.saved_tensors
    grads = torch.ops.labfast.feature_fusion_backward(grad, features, gate, *ctx.needs_input_grad)
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))


_feature_fusion_op.register_autograd(_feature_fusion_backward, setup_context=_feature_fusion_setup)


# ---------------------------------------------------------------------------------------------
# The CUDA extension's launchers (``csrc/fusion.cu``); heatmaps are cast to the image's / features'
# dtype first and feature fusion runs in the promoted dtype, as in the references.


def _cuda_input_fusion_forward(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    return torch.ops.labfast_cuda.input_fusion_forward(image, heatmaps.to(image.dtype))


def _cuda_input_fusion_backward(grad, image, heatmaps, need_image=True, need_heatmaps=True):
    cast = heatmaps.to(image.dtype)
    grad_image = grad_heatmaps = None
    if need_image:
        grad_image = torch.ops.labfast_cuda.input_fusion_backward_image(grad, image, cast)
    if need_heatmaps:
        grad_heatmaps = torch.ops.labfast_cuda.input_fusion_backward_heatmaps(grad, image, cast).to(heatmaps.dtype)
    return grad_image, grad_heatmaps


def _cuda_heatmap_feature_concat_forward(heatmaps, features, area: bool) -> torch.Tensor:
    return torch.ops.labfast_cuda.heatmap_feature_concat_forward(heatmaps.to(features.dtype), features, area)


def _cuda_heatmap_feature_concat_backward(grad, heatmaps, area: bool) -> torch.Tensor:
    cast = heatmaps.to(grad.dtype)
    return torch.ops.labfast_cuda.heatmap_feature_concat_backward_heatmaps(grad, cast, area).to(heatmaps.dtype)


def _cuda_feature_fusion_forward(features, gate) -> torch.Tensor:
    dtype = torch.promote_types(features.dtype, gate.dtype)
    return torch.ops.labfast_cuda.feature_fusion_forward(features.to(dtype), gate.to(dtype))


def _cuda_feature_fusion_backward(grad, features, gate):
    dtype = torch.promote_types(features.dtype, gate.dtype)
    grad_features, grad_gate = torch.ops.labfast_cuda.feature_fusion_backward(grad, features.to(dtype), gate.to(dtype))
    return grad_features.to(features.dtype), grad_gate.to(gate.dtype)


class _CudaInputFusion(torch.autograd.Function):
    """The CUDA launchers with their backward, for direct calls (self-check, GPU parity tests)."""

    @staticmethod
    def forward(ctx, image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(image, heatmaps)
        return _cuda_input_fusion_forward(image, heatmaps)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, heatmaps = ctx.saved_tensors
        return _cuda_input_fusion_backward(grad, image, heatmaps, *ctx.needs_input_grad)


class _CudaHeatmapFeatureConcat(torch.autograd.Function):
    """The CUDA launchers with their backward, for direct calls (self-check, GPU parity tests)."""

    @staticmethod
    def forward(ctx, heatmaps: torch.Tensor, features: torch.Tensor, area: bool) -> torch.Tensor:
        ctx.save_for_backward(heatmaps)
        ctx.area = area
        return _cuda_heatmap_feature_concat_forward(heatmaps, features, area)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (heatmaps,) = ctx.saved_tensors
        grad_heatmaps = grad_features = None
        if ctx.needs_input_grad[0]:
            grad_heatmaps = _cuda_heatmap_feature_concat_backward(grad, heatmaps, ctx.area)
        if ctx.needs_input_grad[1]:
            grad_features = grad[:, heatmaps.shape[1]:]  # F is copied unchanged
        return grad_heatmaps, grad_features, None


class _CudaFeatureFusion(torch.autograd.Function):
    """The CUDA launchers with their backward, for direct calls (self-check, GPU parity tests)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(features, gate)
        return _cuda_feature_fusion_forward(features, gate)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        features, gate = ctx.saved_tensors
        return _cuda_feature_fusion_backward(grad, features, gate)
