"""Triton kernels for LAB's heatmap–feature fusion (``labfast.ops.fusion``), forward and backward.

Three fused ops, each written straight into its concatenated output (no ``torch.cat``, no
materialised resized heatmaps):

- ``InputFusion``: ``I ⊕ (I ⊗ up(M_1)) ⊕ … ⊕ (I ⊗ up(M_K))`` -> ``(N, C (K + 1), H, W)``;
- ``HeatmapFeatureConcat``: ``up(M) ⊕ F`` -> ``(N, K + C, H, W)``;
- ``FeatureFusion``: ``F ⊕ (F ⊗ T)`` -> ``(N, 2C, H, W)``.

``up`` is bilinear resizing with ``align_corners=False``, computed in the kernel with the same
source-index rule as ``F.interpolate`` (ATen's ``area_pixel_compute_source_index``).

Backward of the resize (its adjoint, ``up^T``) is a *gather*, not an atomic scatter: one program
owns a ``TILE × TILE`` block of heatmap pixels, loads the window of output-gradient pixels that can
reach it, and applies ``Wy · G · Wxᵀ`` with two small matmuls, where ``Wy``/``Wx`` hold the exact
forward bilinear weights (zero where an output pixel does not touch a source pixel). Why a gather:
it is deterministic (no float atomics whose order changes run to run), it needs no zeroed fp32
scratch buffer, and at the model's 64 -> 256 upsampling every heatmap pixel receives ~36
contributions, which would make atomics contend. The window is a conservative superset of the
pixels that contribute; pixels outside it carry weight exactly zero, so its size affects speed
only, never the result.

All arithmetic is in fp32 (fp64 for fp64 inputs, used by gradcheck); loads and stores use the
tensors' own dtypes. Pointer arithmetic and masks only (no block pointers: triton 3.6 and 3.8).
Inputs are made contiguous (NCHW) by the launch helpers; outputs are NCHW-contiguous.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_PIXEL_BLOCK = 256  # pixels per program in the pointwise kernels
_CHANNEL_BLOCK = 16  # output channels per program in HeatmapFeatureConcat's forward
_ELEMENT_BLOCK = 1024  # elements per program in FeatureFusion
_TILE = 16  # heatmap pixels per side owned by one resize-adjoint program (tl.dot needs >= 16)
_CHUNK = 32  # output-gradient columns per step of the resize adjoint (bounds register use)


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _ratio(numerator, denominator, ACC: tl.constexpr):
    """``numerator / denominator`` correctly rounded, as ATen computes the resize scale on the host."""
    # tl.cast, not .to(): a size equal to 1 may reach the kernel as a specialised constexpr
    if ACC == tl.float64:
        ratio = tl.cast(numerator, tl.float64) / tl.cast(denominator, tl.float64)
    else:
        ratio = tl.math.div_rn(tl.cast(numerator, tl.float32), tl.cast(denominator, tl.float32))
    return ratio


@triton.jit
def _source_index(dst, scale, in_size, ACC: tl.constexpr):
    """Bilinear taps of output index ``dst`` (align_corners=False): ``(i0, i1, lambda1)``.

    The output value is ``(1 - lambda1) * x[i0] + lambda1 * x[i1]``; ATen's rule: source coordinate
    ``(dst + 0.5) * scale - 0.5`` clamped at 0, ``i1 = i0 + 1`` except at the last source index.
    """
    src = tl.maximum((dst.to(ACC) + 0.5) * scale - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)  # truncation == floor since src >= 0
    lambda1 = tl.minimum(tl.maximum(src - i0.to(ACC), 0.0), 1.0)
    i1 = tl.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lambda1


@triton.jit
def _resized_tile(heatmaps_ptr, n, k, k_mask, pixels, pixel_mask, K, H, W, h, w, ACC: tl.constexpr):
    """``up(M)[n, k, pixels]`` as a ``(len(k), len(pixels))`` tile in ``ACC``; M is ``(N, K, h, w)``."""
    oy = pixels // W
    ox = pixels % W
    y0, y1, ly = _source_index(oy, _ratio(h, H, ACC), h, ACC)
    x0, x1, lx = _source_index(ox, _ratio(w, W, ACC), w, ACC)
    base = heatmaps_ptr + n.to(tl.int64) * K * h * w + k[:, None] * (h * w)
    mask = k_mask[:, None] & pixel_mask[None, :]
    v00 = tl.load(base + (y0 * w + x0)[None, :], mask=mask, other=0.0).to(ACC)
    v01 = tl.load(base + (y0 * w + x1)[None, :], mask=mask, other=0.0).to(ACC)
    v10 = tl.load(base + (y1 * w + x0)[None, :], mask=mask, other=0.0).to(ACC)
    v11 = tl.load(base + (y1 * w + x1)[None, :], mask=mask, other=0.0).to(ACC)
    lx0 = (1.0 - lx)[None, :]
    lx1 = lx[None, :]
    # same association as ATen's upsample_bilinear2d
    return (1.0 - ly)[None, :] * (lx0 * v00 + lx1 * v01) + ly[None, :] * (lx0 * v10 + lx1 * v11)


@triton.jit
def _input_fusion_fwd_kernel(
    image_ptr, heatmaps_ptr, out_ptr, C, K, H, W, h, w,
    BLOCK_K: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """Grid ``(N, cdiv(H*W, BLOCK))``: image ``(N, C, H, W)``, heatmaps ``(N, K, h, w)`` -> out
    ``(N, C (K+1), H, W)`` with out[:, c] = I_c and out[:, C + k C + c] = I_c · up(M_k)."""
    n = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pixel_mask = pixels < H * W
    k = tl.arange(0, BLOCK_K)
    k_mask = k < K
    resized = _resized_tile(heatmaps_ptr, n, k, k_mask, pixels, pixel_mask, K, H, W, h, w, ACC)
    image_base = image_ptr + n.to(tl.int64) * C * H * W
    out_base = out_ptr + n.to(tl.int64) * C * (K + 1) * H * W
    for c in range(C):
        image = tl.load(image_base + c * H * W + pixels, mask=pixel_mask, other=0.0)
        tl.store(out_base + c * H * W + pixels, image.to(out_ptr.dtype.element_ty), mask=pixel_mask)
        masked = image.to(ACC)[None, :] * resized
        channels = C + k * C + c
        tl.store(out_base + channels[:, None] * (H * W) + pixels[None, :],
                 masked.to(out_ptr.dtype.element_ty), mask=k_mask[:, None] & pixel_mask[None, :])


@triton.jit
def _input_fusion_bwd_image_kernel(
    grad_ptr, heatmaps_ptr, grad_image_ptr, C, K, H, W, h, w,
    BLOCK_K: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """Grid ``(N, cdiv(H*W, BLOCK))``: dL/dI_c = g[:, c] + Σ_k g[:, C + k C + c] · up(M_k)."""
    n = tl.program_id(0)
    pixels = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pixel_mask = pixels < H * W
    k = tl.arange(0, BLOCK_K)
    k_mask = k < K
    mask = k_mask[:, None] & pixel_mask[None, :]
    resized = _resized_tile(heatmaps_ptr, n, k, k_mask, pixels, pixel_mask, K, H, W, h, w, ACC)
    grad_base = grad_ptr + n.to(tl.int64) * C * (K + 1) * H * W
    for c in range(C):
        direct = tl.load(grad_base + c * H * W + pixels, mask=pixel_mask, other=0.0).to(ACC)
        channels = C + k * C + c
        grad_masked = tl.load(grad_base + channels[:, None] * (H * W) + pixels[None, :], mask=mask,
                              other=0.0).to(ACC)
        total = direct + tl.sum(grad_masked * resized, axis=0)
        tl.store(grad_image_ptr + n.to(tl.int64) * C * H * W + c * H * W + pixels,
                 total.to(grad_image_ptr.dtype.element_ty), mask=pixel_mask)


@triton.jit
def _tap_weights(out_index, out_size, src_index, scale, in_size, ACC: tl.constexpr):
    """``(len(src_index), len(out_index))`` matrix of the weight with which output ``o`` reads source
    ``i`` in the forward resize (both taps; zero where it does not read it, or ``o`` is out of range)."""
    i0, i1, lambda1 = _source_index(out_index, scale, in_size, ACC)
    valid = (out_index < out_size)[None, :]
    src = src_index[:, None]
    weight = tl.where((i0[None, :] == src) & valid, (1.0 - lambda1)[None, :], 0.0)
    return weight + tl.where((i1[None, :] == src) & valid, lambda1[None, :], 0.0)


@triton.jit
def _first_reader(src_start, scale):
    """A lower bound on the first output index whose taps reach source index ``src_start - 1``.

    Output ``o`` reads ``floor(src(o))`` and the index after it, with ``src(o) = (o+0.5)·scale - 0.5``,
    so it reaches rows ``>= src_start`` only if ``src(o) >= src_start - 1``, i.e.
    ``o >= (src_start - 0.5) / scale - 0.5``; one index of slack absorbs rounding.
    """
    first = ((src_start.to(tl.float32) - 0.5) / scale - 0.5).to(tl.int32) - 1
    return tl.maximum(first, 0)


@triton.jit
def _resize_adjoint_kernel(
    grad_ptr, image_ptr, out_ptr, grad_channels, C, K, H, W, h, w,
    HAS_IMAGE: tl.constexpr, TILE: tl.constexpr, SPAN_Y: tl.constexpr, SPAN_X: tl.constexpr,
    CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    """Grid ``(N * K, cdiv(h, TILE), cdiv(w, TILE))``: dL/dM = upᵀ(G) for one ``TILE²`` heatmap block.

    ``grad`` is ``(N, grad_channels, H, W)``. With ``HAS_IMAGE`` (input fusion),
    ``G_k = Σ_c grad[:, C + k C + c] · I_c`` (image ``(N, C, H, W)``); otherwise (heatmap–feature
    concat) ``G_k = grad[:, k]``. Output ``(N, K, h, w)``. ``SPAN_Y × SPAN_X`` output pixels starting
    at ``_first_reader`` cover every reader of the block (see ``_resize_adjoint_spans``).
    """
    nk = tl.program_id(0)
    n = nk // K
    k = nk % K
    row_start = tl.program_id(1) * TILE
    col_start = tl.program_id(2) * TILE
    rows = row_start + tl.arange(0, TILE)
    cols = col_start + tl.arange(0, TILE)
    scale_y = _ratio(h, H, ACC)
    scale_x = _ratio(w, W, ACC)
    oy = _first_reader(row_start, scale_y.to(tl.float32)) + tl.arange(0, SPAN_Y)
    ox_first = _first_reader(col_start, scale_x.to(tl.float32))
    weight_y = _tap_weights(oy, H, rows, scale_y, h, ACC)  # (TILE, SPAN_Y)
    grad_base = grad_ptr + n.to(tl.int64) * grad_channels * H * W
    image_base = image_ptr + n.to(tl.int64) * C * H * W
    result = tl.zeros((TILE, TILE), dtype=ACC)
    for step in range(SPAN_X // CHUNK):
        ox = ox_first + step * CHUNK + tl.arange(0, CHUNK)
        mask = (oy < H)[:, None] & (ox < W)[None, :]
        offsets = oy[:, None] * W + ox[None, :]
        if HAS_IMAGE:
            window = tl.zeros((SPAN_Y, CHUNK), dtype=ACC)
            for c in range(C):
                grad = tl.load(grad_base + (C + k * C + c) * H * W + offsets, mask=mask, other=0.0)
                image = tl.load(image_base + c * H * W + offsets, mask=mask, other=0.0)
                window += grad.to(ACC) * image.to(ACC)
        else:
            window = tl.load(grad_base + k * H * W + offsets, mask=mask, other=0.0).to(ACC)
        weight_x = tl.trans(_tap_weights(ox, W, cols, scale_x, w, ACC))  # (CHUNK, TILE)
        partial = tl.dot(weight_y, window, input_precision="ieee")  # (TILE, CHUNK)
        result += tl.dot(partial, weight_x, input_precision="ieee")
    out_mask = (rows < h)[:, None] & (cols < w)[None, :]
    tl.store(out_ptr + nk.to(tl.int64) * h * w + rows[:, None] * w + cols[None, :],
             result.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _feature_concat_fwd_kernel(
    heatmaps_ptr, features_ptr, out_ptr, K, C, H, W, h, w,
    BLOCK_C: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    """Grid ``(N, cdiv(K + C, BLOCK_C), cdiv(H*W, BLOCK))``: out ``(N, K + C, H, W)`` =
    ``up(M) ⊕ F``; a channel block may straddle the boundary between the two parts."""
    n = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pixels = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    pixel_mask = pixels < H * W
    is_heatmap = channels < K
    is_feature = (channels >= K) & (channels < K + C)
    resized = _resized_tile(heatmaps_ptr, n, channels, is_heatmap, pixels, pixel_mask, K, H, W, h, w, ACC)
    feature_offsets = (n.to(tl.int64) * C + (channels - K)[:, None]) * (H * W) + pixels[None, :]
    features = tl.load(features_ptr + feature_offsets, mask=is_feature[:, None] & pixel_mask[None, :],
                       other=0.0).to(ACC)
    values = tl.where(is_heatmap[:, None], resized, features)
    out_offsets = (n.to(tl.int64) * (K + C) + channels[:, None]) * (H * W) + pixels[None, :]
    tl.store(out_ptr + out_offsets, values.to(out_ptr.dtype.element_ty),
             mask=(channels < K + C)[:, None] & pixel_mask[None, :])


@triton.jit
def _feature_fusion_fwd_kernel(features_ptr, gate_ptr, out_ptr, CHW, total,
                               BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Grid ``(cdiv(N*C*H*W, BLOCK),)``: out ``(N, 2C, H, W)`` = ``F ⊕ (F ⊗ T)``."""
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < total
    features = tl.load(features_ptr + index, mask=mask, other=0.0)
    gate = tl.load(gate_ptr + index, mask=mask, other=0.0)
    out = out_ptr + (index // CHW) * CHW + index  # sample n starts at 2 n C H W
    tl.store(out, features.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out + CHW, (features.to(ACC) * gate.to(ACC)).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _feature_fusion_bwd_kernel(grad_ptr, features_ptr, gate_ptr, grad_features_ptr, grad_gate_ptr,
                               CHW, total, FEATURES_GRAD: tl.constexpr, GATE_GRAD: tl.constexpr,
                               BLOCK: tl.constexpr, ACC: tl.constexpr):
    """dL/dF = g[:, :C] + g[:, C:] · T and dL/dT = g[:, C:] · F, elementwise."""
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < total
    grad = grad_ptr + (index // CHW) * CHW + index
    grad_product = tl.load(grad + CHW, mask=mask, other=0.0).to(ACC)
    if FEATURES_GRAD:
        gate = tl.load(gate_ptr + index, mask=mask, other=0.0).to(ACC)
        direct = tl.load(grad, mask=mask, other=0.0).to(ACC)
        tl.store(grad_features_ptr + index,
                 (direct + grad_product * gate).to(grad_features_ptr.dtype.element_ty), mask=mask)
    if GATE_GRAD:
        features = tl.load(features_ptr + index, mask=mask, other=0.0).to(ACC)
        tl.store(grad_gate_ptr + index, (grad_product * features).to(grad_gate_ptr.dtype.element_ty),
                 mask=mask)


# ---------------------------------------------------------------------------------------------
# launch helpers


def _resize_adjoint_spans(src_size: int, out_size: int) -> int:
    """Output pixels per axis that can read a ``_TILE``-long run of source pixels (a power of two).

    Readers of sources ``[s, s + TILE)`` satisfy ``s - 1 <= src(o) < s + TILE`` with
    ``src(o) = (o + 0.5)·scale - 0.5``: an interval of length ``(TILE + 1) / scale`` in ``o``;
    + 2 for its end points, + 1 for ``_first_reader``'s slack, + 1 for rounding.
    """
    readers = math.ceil((_TILE + 1) * out_size / src_size) + 4
    return max(_CHUNK, triton.next_power_of_2(readers))


def resize_adjoint(grad: torch.Tensor, image: torch.Tensor | None, heatmaps_shape, heatmaps_dtype):
    """dL/dM ``(N, K, h, w)`` from ``grad`` ``(N, *, H, W)`` (contiguous); see ``_resize_adjoint_kernel``."""
    n, k, h, w = heatmaps_shape
    _, grad_channels, H, W = grad.shape
    out = torch.empty((n, k, h, w), dtype=heatmaps_dtype, device=grad.device)
    grid = (n * k, triton.cdiv(h, _TILE), triton.cdiv(w, _TILE))
    channels = 0 if image is None else image.shape[1]
    _resize_adjoint_kernel[grid](
        grad, grad if image is None else image, out, grad_channels, channels, k, H, W, h, w,
        HAS_IMAGE=image is not None, TILE=_TILE, SPAN_Y=_resize_adjoint_spans(h, H),
        SPAN_X=_resize_adjoint_spans(w, W), CHUNK=_CHUNK, ACC=_accumulator(grad.dtype),
        num_warps=4,
    )
    return out


class InputFusion(torch.autograd.Function):
    """``(N, C, H, W)`` image, ``(N, K, h, w)`` heatmaps -> ``(N, C (K + 1), H, W)`` in the image's dtype."""

    @staticmethod
    def forward(ctx, image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        image = image.contiguous()
        heatmaps = heatmaps.contiguous()
        n, c, H, W = image.shape
        k, h, w = heatmaps.shape[1:]
        out = torch.empty((n, c * (k + 1), H, W), dtype=image.dtype, device=image.device)
        grid = (n, triton.cdiv(H * W, _PIXEL_BLOCK))
        _input_fusion_fwd_kernel[grid](
            image, heatmaps, out, c, k, H, W, h, w, BLOCK_K=triton.next_power_of_2(k),
            BLOCK=_PIXEL_BLOCK, ACC=_accumulator(image.dtype), num_warps=4,
        )
        ctx.save_for_backward(image, heatmaps)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, heatmaps = ctx.saved_tensors
        grad = grad.contiguous()
        n, c, H, W = image.shape
        k, h, w = heatmaps.shape[1:]
        grad_image = grad_heatmaps = None
        if ctx.needs_input_grad[0]:
            grad_image = torch.empty_like(image)
            grid = (n, triton.cdiv(H * W, _PIXEL_BLOCK))
            _input_fusion_bwd_image_kernel[grid](
                grad, heatmaps, grad_image, c, k, H, W, h, w, BLOCK_K=triton.next_power_of_2(k),
                BLOCK=_PIXEL_BLOCK, ACC=_accumulator(grad.dtype), num_warps=4,
            )
        if ctx.needs_input_grad[1]:
            grad_heatmaps = resize_adjoint(grad, image, heatmaps.shape, heatmaps.dtype)
        return grad_image, grad_heatmaps


class HeatmapFeatureConcat(torch.autograd.Function):
    """``(N, K, h, w)`` heatmaps, ``(N, C, H, W)`` features -> ``(N, K + C, H, W)`` in the features' dtype."""

    @staticmethod
    def forward(ctx, heatmaps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        heatmaps = heatmaps.contiguous()
        features = features.contiguous()
        n, c, H, W = features.shape
        k, h, w = heatmaps.shape[1:]
        out = torch.empty((n, k + c, H, W), dtype=features.dtype, device=features.device)
        block = min(_PIXEL_BLOCK, triton.next_power_of_2(H * W))
        grid = (n, triton.cdiv(k + c, _CHANNEL_BLOCK), triton.cdiv(H * W, block))
        _feature_concat_fwd_kernel[grid](
            heatmaps, features, out, k, c, H, W, h, w, BLOCK_C=_CHANNEL_BLOCK, BLOCK=block,
            ACC=_accumulator(features.dtype), num_warps=4,
        )
        ctx.heatmaps_shape = heatmaps.shape
        ctx.heatmaps_dtype = heatmaps.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k, h, w = ctx.heatmaps_shape[1:]
        grad_heatmaps = grad_features = None
        if ctx.needs_input_grad[0]:
            if (h, w) == tuple(grad.shape[-2:]):  # no resize: its adjoint is the identity
                grad_heatmaps = grad[:, :k].to(ctx.heatmaps_dtype, copy=True)
            else:
                grad_heatmaps = resize_adjoint(grad.contiguous(), None, ctx.heatmaps_shape,
                                               ctx.heatmaps_dtype)
        if ctx.needs_input_grad[1]:
            grad_features = grad[:, k:]  # F is copied unchanged: its gradient is that slice
        return grad_heatmaps, grad_features


class FeatureFusion(torch.autograd.Function):
    """``(N, C, H, W)`` features and gate -> ``(N, 2C, H, W)`` in their promoted dtype."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        features = features.contiguous()
        gate = gate.contiguous()
        n, c, H, W = features.shape
        dtype = torch.promote_types(features.dtype, gate.dtype)
        out = torch.empty((n, 2 * c, H, W), dtype=dtype, device=features.device)
        total = features.numel()
        _feature_fusion_fwd_kernel[(triton.cdiv(total, _ELEMENT_BLOCK),)](
            features, gate, out, c * H * W, total, BLOCK=_ELEMENT_BLOCK, ACC=_accumulator(dtype),
            num_warps=4,
        )
        ctx.save_for_backward(features, gate)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        features, gate = ctx.saved_tensors
        grad = grad.contiguous()
        need_features, need_gate = ctx.needs_input_grad
        grad_features = torch.empty_like(features) if need_features else None
        grad_gate = torch.empty_like(gate) if need_gate else None
        total = features.numel()
        c, H, W = features.shape[1:]
        _feature_fusion_bwd_kernel[(triton.cdiv(total, _ELEMENT_BLOCK),)](
            grad, features, gate, grad_features if need_features else features,
            grad_gate if need_gate else gate, c * H * W, total, FEATURES_GRAD=need_features,
            GATE_GRAD=need_gate, BLOCK=_ELEMENT_BLOCK, ACC=_accumulator(grad.dtype), num_warps=4,
        )
        return grad_features, grad_gate
