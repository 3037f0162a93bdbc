"""Heatmap-feature fusion of the boundary-aware regressor (LAB, Sec. 3.1).

- input fusion ``I ⊕ (I ⊗ M_1) ⊕ … ⊕ (I ⊗ M_K)``: the image and its K boundary-masked copies,
  the heatmaps bilinearly resized to the image size;
- ``heatmap_feature_concat``: ``M ⊕ F``, the input of the transform T, M resized to F's size
  (``resize="area"``: axes that shrink are area-averaged, see ``resize_heatmaps``);
- feature fusion ``F ⊕ (F ⊗ T)``, T the sigmoid output of the small hourglass.

⊕ is channel concatenation and ⊗ the element-wise product. Each public function dispatches via
``labfast.ops.backend`` (op name ``"fusion"``, forced by ``LABFAST_BACKEND_FUSION``); its ``*_ref``
twin is the plain PyTorch definition it is judged by. Fast paths: Triton (``labfast.kernels.fusion``)
and CUDA (``csrc/fusion.cu``, ``labfast.ops.cuda_extension``), each for all three ops, forward and
backward. They write the concatenated output directly and return NCHW-contiguous tensors
(channels_last inputs are copied to NCHW first). The CUDA path takes fp32/fp16/bf16; Triton also
fp64 (used by gradcheck).

Autocast: none of the three is an autocast op. Their operators run in their inputs' dtypes inside
an autocast region as outside: the result takes the image's (the features') dtype, feature fusion
the promoted dtype of features and gate (the model casts the gate to the features' dtype).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

import labfast.ops.backend as backend
import labfast.ops.cuda_extension as cuda_extension

OP = "fusion"
FAST_PATHS = ("triton", "cuda")


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


def _uses_reference(tensor: torch.Tensor) -> bool:
    """Whether the public function runs the plain ``*_ref`` (autograd through its decomposition)
    rather than the ``torch.ops.labfast`` operator (fast path inside); a constant under compile."""
    return backend.select_for(OP, tensor.device, tensor.dtype, FAST_PATHS) == "reference"


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
# The operators, each defined from its parts by ``_define``. Their bodies run eagerly (never
# traced) and pick the path with ``backend.run``: the launcher ``<name>_forward`` /
# ``<name>_backward`` of ``labfast.kernels.fusion`` or ``labfast.ops.cuda_extension``, or the
# reference (differentiated with ``torch.func.vjp`` in the backward operator) where the fast path
# fails its self-check or does not compile. Outputs are NCHW-contiguous whatever the path; a
# gradient not asked for is an empty tensor.


@dataclasses.dataclass(frozen=True)
class _Parts:
    """What defines one fusion operator ``labfast::<name>`` and its ``labfast::<name>_backward``."""

    name: str
    tensors: tuple[str, ...]  # the tensor arguments, in order
    options: str  # the other arguments as schema text after the tensors: "" or ", bool area"
    like: int  # the tensor whose device and dtype pick the path
    reference: Callable[..., torch.Tensor]  # the plain definition, on the operator's arguments
    output: Callable[..., tuple[tuple[int, ...], torch.dtype]]  # (shape, dtype) of the result
    differentiated: int  # the backward operator gives the gradients of the first this-many tensors
    # (grad, *arguments) -> the gradients of the other tensors: views of grad, taken without a kernel
    other_gradients: Callable[..., tuple[torch.Tensor, ...]] | None = None


def _launchers(name: str, arguments: tuple) -> dict[str, Callable[[], object]]:
    """The Triton and CUDA launchers called ``name``, bound to ``arguments`` (``backend.run``'s thunks)."""
    def triton():
        from labfast.kernels import fusion as kernels

        return getattr(kernels, name)(*arguments)

    return {"triton": triton, "cuda": lambda: getattr(cuda_extension, name)(*arguments)}


def _define(parts: _Parts) -> None:
    """Register ``labfast::<name>`` (with its fake), its backward operator (with its fake) and the
    autograd formula linking them, from ``parts``."""
    count, differentiated = len(parts.tensors), parts.differentiated
    signature = ", ".join(f"Tensor {name}" for name in parts.tensors) + parts.options

    def forward(*arguments):
        return backend.run(OP, arguments[parts.like], _launchers(f"{parts.name}_forward", arguments),
                           lambda: parts.reference(*arguments).contiguous())

    def forward_fake(*arguments):
        shape, dtype = parts.output(*arguments)
        return torch.empty(shape, dtype=dtype, device=arguments[parts.like].device)

    def backward(grad, *arguments_and_needs):
        *arguments, needs = arguments_and_needs

        def reference():
            others = arguments[differentiated:]
            pullback = torch.func.vjp(lambda *inputs: parts.reference(*inputs, *others), *arguments[:differentiated])[1]
            return [g.clone(memory_format=torch.contiguous_format) for g in pullback(grad)]  # never a view of grad

        grads = backend.run(OP, arguments[parts.like],
                            _launchers(f"{parts.name}_backward", (grad, *arguments, *needs)), reference)
        return [g.contiguous() if need else x.new_empty(0) for g, need, x in zip(grads, needs, arguments)]

    def backward_fake(grad, *arguments_and_needs):
        *arguments, needs = arguments_and_needs
        return [torch.empty(x.shape if need else (0,), dtype=x.dtype, device=x.device)
                for x, need in zip(arguments, needs)]

    operator = torch.library.custom_op(f"labfast::{parts.name}", forward, mutates_args=(),
                                       schema=f"({signature}) -> Tensor")
    operator.register_fake(forward_fake)
    backward_operator = torch.library.custom_op(f"labfast::{parts.name}_backward", backward, mutates_args=(),
                                                schema=f"(Tensor grad, {signature}, bool[] needs) -> Tensor[]")
    backward_operator.register_fake(backward_fake)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:count])
        ctx.options = inputs[count:]

    def gradients(ctx, grad):
        arguments = (*ctx.saved_tensors, *ctx.options)
        needs = list(ctx.needs_input_grad[:differentiated])
        grads = [None] * len(ctx.needs_input_grad)
        if any(needs):
            computed = backward_operator(grad, *arguments, needs)
            grads[:differentiated] = [g if need else None for g, need in zip(computed, needs)]
        if parts.other_gradients is not None:
            for index, gradient in enumerate(parts.other_gradients(grad, *arguments), start=differentiated):
                grads[index] = gradient if ctx.needs_input_grad[index] else None
        return tuple(grads)

    operator.register_autograd(gradients, setup_context=setup_context)


def _resize_mode(area: bool) -> str:
    return "area" if area else "bilinear"


def _concatenated(image_or_features: torch.Tensor, channels: int, dtype: torch.dtype):
    n, _, height, width = image_or_features.shape
    return (n, channels, height, width), dtype


_define(_Parts(
    "input_fusion", ("image", "heatmaps"), "", like=0, reference=input_fusion_ref,
    output=lambda image, heatmaps: _concatenated(image, image.shape[1] * (heatmaps.shape[1] + 1), image.dtype),
    differentiated=2))
_define(_Parts(
    "heatmap_feature_concat", ("heatmaps", "features"), ", bool area", like=1,
    reference=lambda heatmaps, features, area: heatmap_feature_concat_ref(heatmaps, features, _resize_mode(area)),
    output=lambda heatmaps, features, area: _concatenated(features, heatmaps.shape[1] + features.shape[1],
                                                          features.dtype),
    differentiated=1,  # dL/dM; dL/dF is the slice grad[:, K:] (F is copied unchanged)
    other_gradients=lambda grad, heatmaps, features, area: (grad[:, heatmaps.shape[1]:],)))
_define(_Parts(
    "feature_fusion", ("features", "gate"), "", like=0, reference=feature_fusion_ref,
    output=lambda features, gate: _concatenated(features, 2 * features.shape[1],
                                                torch.promote_types(features.dtype, gate.dtype)),
    differentiated=2))


def _self_check(device: torch.device, dtype: torch.dtype) -> tuple[backend.Results, backend.Results]:
    """The three public functions (both resize modes) against their references on small inputs:
    heatmaps up-sized bilinearly 8 -> 16, down-sized 8 -> 4 by area and bilinearly, 5 channels."""
    def random(*shape: int, seed: int) -> torch.Tensor:
        return backend.random_tensor(*shape, device=device, dtype=dtype, seed=seed)

    image, heatmaps = random(1, 3, 16, 16, seed=3), random(1, 2, 8, 8, seed=4).sigmoid()
    features, gate = random(1, 5, 8, 8, seed=5), random(1, 5, 8, 8, seed=6).sigmoid()
    cases = [(input_fusion, input_fusion_ref, [image, heatmaps]),
             *((partial(heatmap_feature_concat, resize=mode), partial(heatmap_feature_concat_ref, resize=mode),
                [heatmaps, features[..., :4, :4]]) for mode in RESIZE_MODES),
             (feature_fusion, feature_fusion_ref, [features, gate])]
    fast, reference = [], []
    for function, plain, inputs in cases:
        fast += backend.outputs_and_grads(function, inputs)
        reference += backend.outputs_and_grads(plain, inputs)
    return fast, reference


backend.register_self_check(OP, _self_check)
