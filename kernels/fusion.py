"""Triton kernels for LAB's heatmap–feature fusion (``labfast.ops.fusion``), forward and backward.

Three fused ops, each written straight into its concatenated output (no ``torch.cat``, no
materialised resized heatmaps), each with an ``<op>_forward`` and an ``<op>_backward`` launcher
(the operators of ``labfast.ops.fusion`` call them, and the CUDA extension's of the same names):

- ``input_fusion``: ``I ⊕ (I ⊗ up(M_1)) ⊕ … ⊕ (I ⊗ up(M_K))`` -> ``(N, C (K + 1), H, W)``;
- ``heatmap_feature_concat``: ``up(M) ⊕ F`` -> ``(N, K + C, H, W)``;
- ``feature_fusion``: ``F ⊕ (F ⊗ T)`` -> ``(N, 2C, H, W)``.

``up`` resizes each axis on its own: bilinearly with ``align_corners=False``, with the same
source-index rule as ``F.interpolate`` (ATen's ``area_pixel_compute_source_index``), or, for an axis
that shrinks when ``heatmap_feature_concat`` is asked for area resizing, as the mean of the source
pixels ``floor(o n / m) … ceil((o + 1) n / m) - 1`` (``F.adaptive_avg_pool2d``'s bins; see
``labfast.ops.fusion.resize_heatmaps``). Either way an output reads a few *taps* per axis with
weights, and the 2-D value is ``Σ_y w_y Σ_x w_x M[y, x]``.

Backward of the resize (its adjoint, ``up^T``) is a *gather*, not an atomic scatter: one program
owns a ``TILE × TILE`` block of heatmap pixels, loads the window of output-gradient pixels that can
reach it, and applies ``Wy · G · Wxᵀ`` with two small matmuls, where ``Wy``/``Wx`` hold the exact
forward weights (bilinear or area; zero where an output pixel does not touch a source pixel). Why a gather:
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

# Pixels per program in the pointwise kernels. The input-fusion kernels resize a (16 heatmaps,
# _PIXEL_BLOCK) tile and the feature concat a (16 channels, _CONCAT_PIXEL_BLOCK) one; at 256 pixels
# triton 3.6 spilled 0.5-1.1 KB per thread on sm_90, and the concat's fp32 bilinear tile still
# spilled at 128 (tests/ops/test_compile_sm90.py fails on any spill).
_PIXEL_BLOCK = 128
_CONCAT_PIXEL_BLOCK = 64
_CHANNEL_BLOCK = 16  # output channels per program in heatmap_feature_concat's forward
_ELEMENT_BLOCK = 1024  # elements per program in feature_fusion
_TILE = 16  # heatmap pixels per side owned by one resize-adjoint program (tl.dot needs >= 16)
_CHUNK = 32  # output-gradient rows and columns per step of the resize adjoint (bounds register use)


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
def _area_bin(dst, in_size, out_size):
    """Area bin ``[start, end)`` of output index ``dst`` on an axis shrinking ``in_size -> out_size``:
    ``start = floor(dst n / m)``, ``end = ceil((dst + 1) n / m)`` (ATen's adaptive pooling bins)."""
    start = dst * in_size // out_size
    end = ((dst + 1) * in_size + out_size - 1) // out_size
    return start, end


@triton.jit
def _axis_tap(dst, tap, in_size, out_size, AREA: tl.constexpr, ACC: tl.constexpr):
    """Tap number ``tap`` of output index ``dst`` on one axis: ``(source index, weight, in use)``.

    Bilinear: taps 0 and 1 are ``i0`` and ``i1`` of ``_source_index``. Area: tap ``t`` is source
    ``start + t`` with weight ``1 / (end - start)``, in use while ``start + t < end``.
    """
    if AREA:
        start, end = _area_bin(dst, in_size, out_size)
        index = start + tap
        in_use = index < end
        weight = tl.where(in_use, _ratio(1, end - start, ACC), 0.0)
        index = tl.minimum(index, in_size - 1)  # a valid address; its load is masked off
    else:
        i0, i1, lambda1 = _source_index(dst, _ratio(in_size, out_size, ACC), in_size, ACC)
        in_use = i0 >= 0  # both taps always
        index = tl.where(tap == 0, i0, i1)
        weight = tl.where(tap == 0, 1.0 - lambda1, lambda1)
    return index, weight, in_use


@triton.jit
def _resized_tile(heatmaps_ptr, n, k, k_mask, pixels, pixel_mask, K, H, W, h, w,
                  ROWS: tl.constexpr, COLS: tl.constexpr, AREA_Y: tl.constexpr, AREA_X: tl.constexpr,
                  TAPS_Y: tl.constexpr, TAPS_X: tl.constexpr, ACC: tl.constexpr):
    """``up(M)[n, k, pixels]`` as a ``(ROWS, COLS) = (len(k), len(pixels))`` tile in ``ACC``; M is
    ``(N, K, h, w)``. ``AREA_*``: area-average that axis (it shrinks); ``TAPS_*``: taps per output
    on that axis (2 for bilinear, the longest area bin otherwise)."""
    oy = pixels // W
    ox = pixels % W
    base = heatmaps_ptr + n.to(tl.int64) * K * h * w  # one 64-bit base; int32 offsets in the image
    mask = k_mask[:, None] & pixel_mask[None, :]
    result = tl.zeros((ROWS, COLS), dtype=ACC)
    # Σ_y w_y (Σ_x w_x v): for bilinear the same association as ATen's upsample_bilinear2d
    for tap_y in range(TAPS_Y):
        iy, weight_y, use_y = _axis_tap(oy, tap_y, h, H, AREA_Y, ACC)
        row = tl.zeros((ROWS, COLS), dtype=ACC)
        for tap_x in range(TAPS_X):
            ix, weight_x, use_x = _axis_tap(ox, tap_x, w, W, AREA_X, ACC)
            value = tl.load(base + (k[:, None] * (h * w) + (iy * w + ix)[None, :]),
                            mask=mask & (use_y & use_x)[None, :], other=0.0)
            row += weight_x[None, :] * value.to(ACC)
        result += weight_y[None, :] * row
    return result


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
    resized = _resized_tile(heatmaps_ptr, n, k, k_mask, pixels, pixel_mask, K, H, W, h, w, BLOCK_K, BLOCK,
                            False, False, 2, 2, ACC)
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
    resized = _resized_tile(heatmaps_ptr, n, k, k_mask, pixels, pixel_mask, K, H, W, h, w, BLOCK_K, BLOCK,
                            False, False, 2, 2, ACC)
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
def _tap_weights(out_index, out_size, src_index, in_size, AREA: tl.constexpr, ACC: tl.constexpr):
    """``(len(src_index), len(out_index))`` matrix of the weight with which output ``o`` reads source
    ``i`` in the forward resize (all taps; zero where it does not read it, or ``o`` is out of range)."""
    valid = (out_index < out_size)[None, :]
    src = src_index[:, None]
    if AREA:
        start, end = _area_bin(out_index, in_size, out_size)
        inside = (src >= start[None, :]) & (src < end[None, :]) & valid
        weight = tl.where(inside, _ratio(1, end - start, ACC)[None, :], 0.0)
    else:
        i0, i1, lambda1 = _source_index(out_index, _ratio(in_size, out_size, ACC), in_size, ACC)
        weight = tl.where((i0[None, :] == src) & valid, (1.0 - lambda1)[None, :], 0.0)
        weight += tl.where((i1[None, :] == src) & valid, lambda1[None, :], 0.0)
    return weight


@triton.jit
def _first_reader(src_start, in_size, out_size, AREA: tl.constexpr, ACC: tl.constexpr):
    """A lower bound on the first output index whose taps reach source indices ``>= src_start``.

    Bilinear: output ``o`` reads ``floor(src(o))`` and the index after it, with
    ``src(o) = (o+0.5)·scale - 0.5``, so it reaches rows ``>= src_start`` only if
    ``src(o) >= src_start - 1``, i.e. ``o >= (src_start - 0.5) / scale - 0.5``; one index of slack
    absorbs rounding. Area: bin ``o`` ends at ``ceil((o + 1) n / m) > src_start`` exactly when
    ``o >= floor(src_start m / n)`` (integers, no slack needed).
    """
    if AREA:
        first = src_start * out_size // in_size
    else:
        scale = _ratio(in_size, out_size, ACC).to(tl.float32)
        first = ((src_start.to(tl.float32) - 0.5) / scale - 0.5).to(tl.int32) - 1
    return tl.maximum(first, 0)


@triton.jit
def _resize_adjoint_kernel(
    grad_ptr, image_ptr, out_ptr, grad_channels, C, K, H, W, h, w,
    HAS_IMAGE: tl.constexpr, AREA_Y: tl.constexpr, AREA_X: tl.constexpr, TILE: tl.constexpr,
    SPAN_Y: tl.constexpr, SPAN_X: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    """Grid ``(N * K, cdiv(h, TILE), cdiv(w, TILE))``: dL/dM = upᵀ(G) for one ``TILE²`` heatmap block.

    ``grad`` is ``(N, grad_channels, H, W)``. With ``HAS_IMAGE`` (input fusion),
    ``G_k = Σ_c grad[:, C + k C + c] · I_c`` (image ``(N, C, H, W)``); otherwise (heatmap–feature
    concat) ``G_k = grad[:, k]``. Output ``(N, K, h, w)``. ``AREA_*``: that axis was area-averaged
    (else bilinear). ``SPAN_Y × SPAN_X`` output pixels starting at ``_first_reader`` cover every
    reader of the block (see ``_resize_adjoint_spans``), visited in ``CHUNK × CHUNK`` windows (a
    ``SPAN_Y``-tall window at 4× upsampling took all 255 registers).
    """
    nk = tl.program_id(0)
    n = nk // K
    k = nk % K
    row_start = tl.program_id(1) * TILE
    col_start = tl.program_id(2) * TILE
    rows = row_start + tl.arange(0, TILE)
    cols = col_start + tl.arange(0, TILE)
    oy_first = _first_reader(row_start, h, H, AREA_Y, ACC)
    ox_first = _first_reader(col_start, w, W, AREA_X, ACC)
    grad_base = grad_ptr + n.to(tl.int64) * grad_channels * H * W
    image_base = image_ptr + n.to(tl.int64) * C * H * W
    result = tl.zeros((TILE, TILE), dtype=ACC)
    for step_x in range(SPAN_X // CHUNK):
        ox = ox_first + step_x * CHUNK + tl.arange(0, CHUNK)
        partial = tl.zeros((TILE, CHUNK), dtype=ACC)
        for step_y in range(SPAN_Y // CHUNK):
            oy = oy_first + step_y * CHUNK + tl.arange(0, CHUNK)
            mask = (oy < H)[:, None] & (ox < W)[None, :]
            offsets = oy[:, None] * W + ox[None, :]
            if HAS_IMAGE:
                window = tl.zeros((CHUNK, CHUNK), dtype=ACC)
                for c in range(C):
                    grad = tl.load(grad_base + (C + k * C + c) * H * W + offsets, mask=mask, other=0.0)
                    image = tl.load(image_base + c * H * W + offsets, mask=mask, other=0.0)
                    window += grad.to(ACC) * image.to(ACC)
            else:
                window = tl.load(grad_base + k * H * W + offsets, mask=mask, other=0.0).to(ACC)
            weight_y = _tap_weights(oy, H, rows, h, AREA_Y, ACC)  # (TILE, CHUNK)
            partial = tl.dot(weight_y, window, partial, input_precision="ieee", out_dtype=ACC)  # (TILE, CHUNK)
        weight_x = tl.trans(_tap_weights(ox, W, cols, w, AREA_X, ACC))  # (CHUNK, TILE)
        result += tl.dot(partial, weight_x, input_precision="ieee")
    out_mask = (rows < h)[:, None] & (cols < w)[None, :]
    tl.store(out_ptr + nk.to(tl.int64) * h * w + rows[:, None] * w + cols[None, :],
             result.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _feature_concat_fwd_kernel(
    heatmaps_ptr, features_ptr, out_ptr, K, C, H, W, h, w,
    BLOCK_C: tl.constexpr, BLOCK: tl.constexpr, AREA_Y: tl.constexpr, AREA_X: tl.constexpr,
    TAPS_Y: tl.constexpr, TAPS_X: tl.constexpr, ACC: tl.constexpr,
):
    """Grid ``(N, cdiv(K + C, BLOCK_C), cdiv(H*W, BLOCK))``: out ``(N, K + C, H, W)`` =
    ``up(M) ⊕ F``; a channel block may straddle the boundary between the two parts. ``AREA_*`` and
    ``TAPS_*`` as in ``_resized_tile``."""
    n = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pixels = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    pixel_mask = pixels < H * W
    is_heatmap = channels < K
    is_feature = (channels >= K) & (channels < K + C)
    feature_offsets = (n.to(tl.int64) * C + (channels - K)[:, None]) * (H * W) + pixels[None, :]
    values = tl.load(features_ptr + feature_offsets, mask=is_feature[:, None] & pixel_mask[None, :],
                     other=0.0).to(ACC)
    if tl.program_id(1) * BLOCK_C < K:  # only blocks holding heatmap channels run the taps (64 at 64 -> 8)
        resized = _resized_tile(heatmaps_ptr, n, channels, is_heatmap, pixels, pixel_mask, K, H, W, h, w,
                                BLOCK_C, BLOCK, AREA_Y, AREA_X, TAPS_Y, TAPS_X, ACC)
        values = tl.where(is_heatmap[:, None], resized, values)
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


def _area_taps(src_size: int, out_size: int) -> int:
    """The longest area bin ``ceil((o + 1) n / m) - floor(o n / m)`` of an axis shrinking ``n -> m``
    (``n / m`` for an integer factor, one more for some bins otherwise)."""
    return max(-(-(o + 1) * src_size // out_size) - o * src_size // out_size for o in range(out_size))


def _resize_adjoint_spans(src_size: int, out_size: int, area: bool) -> int:
    """Output pixels per axis that can read a ``_TILE``-long run of source pixels (a power of two).

    Bilinear: readers of sources ``[s, s + TILE)`` satisfy ``s - 1 <= src(o) < s + TILE`` with
    ``src(o) = (o + 0.5)·scale - 0.5``: an interval of length ``(TILE + 1) / scale`` in ``o``;
    + 2 for its end points, + 1 for ``_first_reader``'s slack, + 1 for rounding.
    Area: readers are ``floor(s m / n) <= o <= ceil((s + TILE) m / n) - 1``, at most
    ``TILE m / n + 2`` outputs.
    """
    if area:
        readers = math.ceil(_TILE * out_size / src_size) + 2
    else:
        readers = math.ceil((_TILE + 1) * out_size / src_size) + 4
    return max(_CHUNK, triton.next_power_of_2(readers))


def _area_axes(heatmaps_size, out_size, area: bool) -> tuple[bool, bool]:
    """Which of the two axes are area-averaged: with ``area``, those that shrink."""
    return tuple(area and source > target for source, target in zip(heatmaps_size, out_size))


def resize_adjoint(grad: torch.Tensor, image: torch.Tensor | None, heatmaps_shape, heatmaps_dtype,
                   area: bool):
    """dL/dM ``(N, K, h, w)`` from ``grad`` ``(N, *, H, W)`` (contiguous); see ``_resize_adjoint_kernel``.
    ``area``: the forward area-averaged the axes that shrink (else bilinear on both)."""
    n, k, h, w = heatmaps_shape
    _, grad_channels, H, W = grad.shape
    area_y, area_x = _area_axes((h, w), (H, W), area)
    out = torch.empty((n, k, h, w), dtype=heatmaps_dtype, device=grad.device)
    grid = (n * k, triton.cdiv(h, _TILE), triton.cdiv(w, _TILE))
    channels = 0 if image is None else image.shape[1]
    _resize_adjoint_kernel[grid](
        grad, grad if image is None else image, out, grad_channels, channels, k, H, W, h, w,
        HAS_IMAGE=image is not None, AREA_Y=area_y, AREA_X=area_x, TILE=_TILE,
        SPAN_Y=_resize_adjoint_spans(h, H, area_y), SPAN_X=_resize_adjoint_spans(w, W, area_x),
        CHUNK=_CHUNK, ACC=_accumulator(grad.dtype), num_warps=4,
    )
    return out


def _contiguous(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(tensor.contiguous() for tensor in tensors)


def _launch_per_pixel(kernel, image: torch.Tensor, heatmaps: torch.Tensor, accumulate: torch.dtype, *tensors):
    """``kernel(*tensors, C, K, H, W, h, w)`` on the grid ``(N, cdiv(H*W, _PIXEL_BLOCK))`` of an
    ``(N, C, H, W)`` image and ``(N, K, h, w)`` heatmaps: the input-fusion forward and its image
    gradient. ``accumulate``: the dtype whose accumulator the kernel computes in."""
    n, c, H, W = image.shape
    k, h, w = heatmaps.shape[1:]
    kernel[(n, triton.cdiv(H * W, _PIXEL_BLOCK))](
        *tensors, c, k, H, W, h, w, BLOCK_K=triton.next_power_of_2(k), BLOCK=_PIXEL_BLOCK,
        ACC=_accumulator(accumulate), num_warps=4,
    )


def _launch_per_element(kernel, features: torch.Tensor, accumulate: torch.dtype, *tensors, **flags):
    """``kernel(*tensors, C*H*W, N*C*H*W)`` on ``cdiv(N*C*H*W, _ELEMENT_BLOCK)`` programs of
    ``(N, C, H, W)`` features: feature fusion, forward and backward."""
    c, H, W = features.shape[1:]
    total = features.numel()
    kernel[(triton.cdiv(total, _ELEMENT_BLOCK),)](
        *tensors, c * H * W, total, **flags, BLOCK=_ELEMENT_BLOCK, ACC=_accumulator(accumulate), num_warps=4,
    )


def _buffer(needed: bool, like: torch.Tensor) -> torch.Tensor | None:
    """An output gradient shaped as ``like``, if it is needed."""
    return torch.empty_like(like) if needed else None


def input_fusion_forward(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` image, ``(N, K, h, w)`` heatmaps -> ``(N, C (K + 1), H, W)`` in the image's dtype."""
    image, heatmaps = _contiguous(image, heatmaps)
    n, c, H, W = image.shape
    out = torch.empty((n, c * (heatmaps.shape[1] + 1), H, W), dtype=image.dtype, device=image.device)
    _launch_per_pixel(_input_fusion_fwd_kernel, image, heatmaps, image.dtype, image, heatmaps, out)
    return out


def input_fusion_backward(grad: torch.Tensor, image: torch.Tensor, heatmaps: torch.Tensor, need_image: bool,
                          need_heatmaps: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dL/dI, dL/dM)`` of ``input_fusion_forward`` (``None`` where not needed)."""
    grad, image, heatmaps = _contiguous(grad, image, heatmaps)
    grad_image = _buffer(need_image, image)
    if need_image:
        _launch_per_pixel(_input_fusion_bwd_image_kernel, image, heatmaps, grad.dtype, grad, heatmaps, grad_image)
    grad_heatmaps = None
    if need_heatmaps:
        grad_heatmaps = resize_adjoint(grad, image, heatmaps.shape, heatmaps.dtype, area=False)
    return grad_image, grad_heatmaps


def heatmap_feature_concat_forward(heatmaps: torch.Tensor, features: torch.Tensor, area: bool) -> torch.Tensor:
    """``(N, K, h, w)`` heatmaps, ``(N, C, H, W)`` features -> ``(N, K + C, H, W)`` in the features' dtype.
    ``area``: area-average the axes that shrink (``resize="area"``); else bilinear on both."""
    heatmaps, features = _contiguous(heatmaps, features)
    n, c, H, W = features.shape
    k, h, w = heatmaps.shape[1:]
    area_y, area_x = _area_axes((h, w), (H, W), area)
    out = torch.empty((n, k + c, H, W), dtype=features.dtype, device=features.device)
    block = min(_CONCAT_PIXEL_BLOCK, triton.next_power_of_2(H * W))
    grid = (n, triton.cdiv(k + c, _CHANNEL_BLOCK), triton.cdiv(H * W, block))
    _feature_concat_fwd_kernel[grid](
        heatmaps, features, out, k, c, H, W, h, w, BLOCK_C=_CHANNEL_BLOCK, BLOCK=block,
        AREA_Y=area_y, AREA_X=area_x, TAPS_Y=_area_taps(h, H) if area_y else 2,
        TAPS_X=_area_taps(w, W) if area_x else 2, ACC=_accumulator(features.dtype), num_warps=4,
    )
    return out


def heatmap_feature_concat_backward(grad: torch.Tensor, heatmaps: torch.Tensor, features: torch.Tensor, area: bool,
                                    need_heatmaps: bool) -> tuple[torch.Tensor | None]:
    """``(dL/dM,)`` of ``heatmap_feature_concat_forward`` (``None`` if not needed); dL/dF is the
    slice ``grad[:, K:]`` (F is copied unchanged), which the caller takes without a kernel."""
    if not need_heatmaps:
        return (None,)
    k, h, w = heatmaps.shape[1:]
    if (h, w) == tuple(grad.shape[-2:]):  # no resize: its adjoint is the identity
        return (grad[:, :k].to(heatmaps.dtype, copy=True),)
    return (resize_adjoint(grad.contiguous(), None, heatmaps.shape, heatmaps.dtype, area),)


def feature_fusion_forward(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` features and gate -> ``(N, 2C, H, W)`` in their promoted dtype."""
    features, gate = _contiguous(features, gate)
    n, c, H, W = features.shape
    dtype = torch.promote_types(features.dtype, gate.dtype)
    out = torch.empty((n, 2 * c, H, W), dtype=dtype, device=features.device)
    _launch_per_element(_feature_fusion_fwd_kernel, features, dtype, features, gate, out)
    return out


def feature_fusion_backward(grad: torch.Tensor, features: torch.Tensor, gate: torch.Tensor, need_features: bool,
                            need_gate: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dL/dF, dL/dT)`` of ``feature_fusion_forward`` (``None`` where not needed)."""
    grad, features, gate = _contiguous(grad, features, gate)
    grad_features, grad_gate = _buffer(need_features, features), _buffer(need_gate, gate)
    _launch_per_element(_feature_fusion_bwd_kernel, features, grad.dtype, grad, features, gate,
                        features if grad_features is None else grad_features, gate if grad_gate is None else grad_gate,
                        FEATURES_GRAD=need_features, GATE_GRAD=need_gate)
    return grad_features, grad_gate
