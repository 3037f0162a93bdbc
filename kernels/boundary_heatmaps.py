"""Triton kernel: boundary heatmaps from densified curves, distance + Gaussian + cut fused.

One program computes ``BLOCK_PIXELS`` pixels of one curve (one face n, one boundary k). It walks the
curve's ``P - 1`` segments ``BLOCK_SEGMENTS`` at a time as a ``(BLOCK_PIXELS, BLOCK_SEGMENTS)`` tile,
keeps the running minimum squared distance per pixel in registers, and writes
``exp(-d^2 / (2 sigma^2)) * [d < 3 sigma]`` in the output dtype. No binary map and no distance
field ever reach memory. Forward only: ground truth needs no gradient.

Pointer arithmetic and masks only (no block pointers), so it runs on triton 3.6 and 3.8.
The formula is the one of ``labfast.ops.boundary_heatmaps.squared_distance_ref``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_PIXELS = 128
BLOCK_SEGMENTS = 32
# Fewer, larger programs under the interpreter, which pays ~0.75 ms per program. Chosen by the
# interpreter switch, not by the tensors' device, so an offline compile (CPU tensors, no
# interpreter: labfast.perf.offline_compile) specialises the GPU's block.
_INTERPRETER_BLOCK_PIXELS = 1024


@triton.jit
def _boundary_heatmaps_kernel(
    curves_ptr,  # (C, P, 2) float32, contiguous
    out_ptr,  # (C, H, W) output dtype, contiguous
    num_samples,
    height,
    width,
    half_inverse_variance,  # 1 / (2 sigma^2)
    cut_squared,  # (3 sigma)^2
    BLOCK_PIXELS: tl.constexpr,
    BLOCK_SEGMENTS: tl.constexpr,
):
    curve = tl.program_id(0)
    pixel = tl.program_id(1) * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    pixel_mask = pixel < height * width
    px = (pixel % width).to(tl.float32)[:, None]
    py = (pixel // width).to(tl.float32)[:, None]

    base = curves_ptr + curve.to(tl.int64) * num_samples * 2
    num_segments = tl.maximum(num_samples - 1, 1)
    best = tl.full((BLOCK_PIXELS,), float("inf"), tl.float32)
    for first in range(0, num_segments, BLOCK_SEGMENTS):
        segment = first + tl.arange(0, BLOCK_SEGMENTS)
        segment_mask = segment < num_segments
        end = tl.minimum(segment + 1, num_samples - 1)  # a one-sample curve is its point
        ax = tl.load(base + segment * 2, mask=segment_mask, other=0.0)
        ay = tl.load(base + segment * 2 + 1, mask=segment_mask, other=0.0)
        dx = tl.load(base + end * 2, mask=segment_mask, other=0.0) - ax
        dy = tl.load(base + end * 2 + 1, mask=segment_mask, other=0.0) - ay
        length2 = tl.maximum(dx * dx + dy * dy, 1e-12)
        rx = px - ax[None, :]
        ry = py - ay[None, :]
        t = (rx * dx[None, :] + ry * dy[None, :]) / length2[None, :]
        t = tl.minimum(tl.maximum(t, 0.0), 1.0)
        ex = rx - t * dx[None, :]
        ey = ry - t * dy[None, :]
        d2 = tl.where(segment_mask[None, :], ex * ex + ey * ey, float("inf"))
        best = tl.minimum(best, tl.min(d2, axis=1))

    value = tl.exp(-best * half_inverse_variance)
    value = tl.where(best < cut_squared, value, 0.0)
    out = out_ptr + curve.to(tl.int64) * height * width + pixel
    tl.store(out, value.to(out_ptr.dtype.element_ty), mask=pixel_mask)


def boundary_heatmaps_triton(
    curves: torch.Tensor, height: int, width: int, sigma: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(N, K, P, 2)`` float32 curves -> ``(N, K, height, width)`` heatmaps in ``dtype`` (forward only)."""
    if curves.dim() != 4 or curves.shape[-1] != 2 or curves.shape[2] < 1:
        raise ValueError(f"curves must be (N, K, P, 2) with P >= 1, got {tuple(curves.shape)}")
    if curves.dtype != torch.float32:
        raise TypeError(f"curves must be float32, got {curves.dtype}")
    count, num_boundaries, num_samples, _ = curves.shape
    curves = curves.contiguous()  # the kernel assumes packed (C, P, 2)
    out = torch.empty(count, num_boundaries, height, width, device=curves.device, dtype=dtype)
    if out.numel() == 0:
        return out
    block = _INTERPRETER_BLOCK_PIXELS if os.environ.get("TRITON_INTERPRET") == "1" else BLOCK_PIXELS
    grid = (count * num_boundaries, triton.cdiv(height * width, block))
    _boundary_heatmaps_kernel[grid](
        curves,
        out,
        num_samples,
        height,
        width,
        0.5 / sigma**2,
        9.0 * sigma**2,
        BLOCK_PIXELS=block,
        BLOCK_SEGMENTS=BLOCK_SEGMENTS,
    )
    return out
