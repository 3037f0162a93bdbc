"""Triton kernels for message passing between boundary branches (LAB Sec. 3.1).

    out_dst = x_dst + Σ_{e=(src, dst)} conv(x_src, W_e) + b_e

features ``(N, K * C, H, W)`` (branch ``k`` in channels ``[k*C, (k+1)*C)``), weights
``(E, C, C, k, k)`` (odd ``k``, same padding), bias ``(E, C)`` or ``None``.

What is fused, and how
----------------------
- **Forward: one launch.** Grid ``(pixel blocks of N*H*W, K destinations, output-channel
  blocks)``. Each program starts its fp32 accumulator from the residual ``x_dst``, walks the
  destination's incoming edges through a CSR table (``offsets[dst] .. offsets[dst+1]``), and for
  each edge runs an implicit-GEMM convolution: the reduction axis ``r = (kh*k + kw)*C + c_in``
  is cut into ``BLOCK_R`` chunks, the ``(BLOCK_P, BLOCK_R)`` operand is gathered straight from
  the source branch (zero outside the image by mask) and multiplied by the matching
  ``(BLOCK_R, BLOCK_CO)`` slice of the edge's weights with ``tl.dot``. Bias is added per edge;
  the output is written once. No message tensor, no gathered-sources tensor exists.
- **Grad wrt features: one launch of the same kernel.** The adjoint of a same-padded
  convolution is a same-padded convolution with the kernel flipped and in/out channels swapped,
  so ``grad_x_src = grad_out_src + Σ_{e=(src, dst)} conv(grad_out_dst, flip(W_e)^T)`` is the
  forward with edges reversed (CSR by source) and residual ``grad_out``.
- **Grad wrt weights: one launch** of a second kernel: per edge, the correlation
  ``Σ_{n,h,w} x_src(shifted by the tap) * grad_out_dst`` as a ``(R, C) = (R, P) @ (P, C)`` GEMM
  over pixels, the pixel axis split over ``splits`` programs when there are too few
  ``(edge, r-block)`` programs to fill the device. Partial sums go to an fp32 buffer
  ``(splits, E, R, C)`` that torch sums (deterministic, no atomics), then permutes to
  ``(E, C, C, k, k)``.
- **Not fused:** grad wrt bias is one torch reduction of ``grad_out`` per branch, gathered by
  destination; the small weight re-layouts (``permute``/``flip``) are torch copies.

Precision: operands are loaded in the input dtype (fp16, bf16, fp32, fp64); accumulation is fp32
(fp64 for fp64 inputs; every ``tl.dot`` names its ``out_dtype``, which triton 3.6 otherwise takes
as fp32 and then rejects an fp64 accumulator). fp32 ``tl.dot`` follows ``torch.backends.cudnn.allow_tf32`` — the flag
that decides whether the reference's ``F.conv2d`` uses TF32 — so both paths round alike; fp64
uses IEEE products. Under ``TRITON_INTERPRET=1`` ``tl.dot`` is an exact numpy matmul.

Only pointer arithmetic and masks (no block pointers, no tensor descriptors): the kernels must
run on triton 3.6 (GPU machines) and 3.8 (CPU interpreter).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from labfast.ops.message_passing import check_message_passing_arguments

# One configuration everywhere: autotuning cannot run under the interpreter, and no GPU was
# available to tune on when this was written. 128 pixels × 64 reduction steps keeps the
# 16-bit operand tiles at 16 KiB; fp32/fp64 halve the reduction chunk.
BLOCK_P = 128
NUM_WARPS = 4


@triton.jit
def _message_passing_forward_kernel(
    x_ptr,  # (N, K*C, H, W) contiguous: features (forward) or grad_out (grad wrt features)
    w_ptr,  # (E, R, C) contiguous, R = k*k*C, row r = (kh*k + kw)*C + c_in, column c_out
    b_ptr,  # (E, C) or a dummy when HAS_BIAS is false
    out_ptr,  # (N, K*C, H, W) contiguous
    offsets_ptr,  # (K + 1,) int32: incoming edges of branch d are entries offsets[d]..offsets[d+1]
    edge_ptr,  # (E,) int32: edge index of each entry
    source_ptr,  # (E,) int32: branch gathered by each entry
    num_pixels,  # N*H*W
    height,
    width,
    channels_total,  # K*C
    channels,  # C
    reduction,  # R = k*k*C
    KSIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_CO: tl.constexpr,
):
    pid_p = tl.program_id(0)
    dst = tl.program_id(1)
    pid_co = tl.program_id(2)
    pad = KSIZE // 2
    plane = height * width

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < num_pixels
    n = offs_p // plane
    hw = offs_p % plane
    h = hw // width
    w = hw % width
    # int64: N * K*C * H*W can exceed 2**31 at large batches.
    batch_base = n.to(tl.int64) * channels_total * plane

    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < channels
    out_offsets = batch_base[:, None] + ((dst * channels + offs_co) * plane)[None, :] + hw[:, None]
    out_mask = p_mask[:, None] & co_mask[None, :]
    acc = tl.load(x_ptr + out_offsets, mask=out_mask, other=0.0).to(ACC_DTYPE)

    start = tl.load(offsets_ptr + dst)
    end = tl.load(offsets_ptr + dst + 1)
    for entry in range(start, end):
        edge = tl.load(edge_ptr + entry)
        src = tl.load(source_ptr + entry)
        for r0 in range(0, reduction, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_mask = offs_r < reduction
            tap = offs_r // channels
            c_in = offs_r % channels
            hh = h[:, None] + (tap // KSIZE - pad)[None, :]
            ww = w[:, None] + (tap % KSIZE - pad)[None, :]
            a_mask = (p_mask[:, None] & r_mask[None, :]
                      & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width))
            a = tl.load(
                x_ptr + batch_base[:, None] + ((src * channels + c_in) * plane)[None, :] + hh * width + ww,
                mask=a_mask, other=0.0,
            )
            b = tl.load(
                w_ptr + edge * reduction * channels + offs_r[:, None] * channels + offs_co[None, :],
                mask=r_mask[:, None] & co_mask[None, :], other=0.0,
            )
            acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION,
                     out_dtype=ACC_DTYPE)
        if HAS_BIAS:
            acc += tl.load(b_ptr + edge * channels + offs_co, mask=co_mask, other=0.0).to(ACC_DTYPE)[None, :]

    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _message_passing_grad_weight_kernel(
    x_ptr,  # (N, K*C, H, W) contiguous features
    g_ptr,  # (N, K*C, H, W) contiguous grad_out
    partial_ptr,  # (splits, E, R, C) accumulator dtype
    edge_src_ptr,  # (E,) int32
    edge_dst_ptr,  # (E,) int32
    num_edges,
    num_pixels,
    height,
    width,
    channels_total,
    channels,
    reduction,
    KSIZE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_CO: tl.constexpr,
):
    edge = tl.program_id(0)
    pid_rc = tl.program_id(1)
    split = tl.program_id(2)
    splits = tl.num_programs(2)
    co_blocks = tl.cdiv(channels, BLOCK_CO)
    pid_r = pid_rc // co_blocks
    pid_co = pid_rc % co_blocks
    pad = KSIZE // 2
    plane = height * width

    src = tl.load(edge_src_ptr + edge)
    dst = tl.load(edge_dst_ptr + edge)
    # The tap and input channel of each reduction row are fixed for the whole program.
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < reduction
    tap = offs_r // channels
    dh = tap // KSIZE - pad
    dw = tap % KSIZE - pad
    src_channel_offsets = (src * channels + offs_r % channels) * plane
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < channels
    dst_channel_offsets = (dst * channels + offs_co) * plane

    acc = tl.zeros((BLOCK_R, BLOCK_CO), dtype=ACC_DTYPE)
    for p0 in range(split * BLOCK_P, num_pixels, splits * BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < num_pixels
        n = offs_p // plane
        hw = offs_p % plane
        h = hw // width
        w = hw % width
        batch_base = n.to(tl.int64) * channels_total * plane
        hh = h[None, :] + dh[:, None]
        ww = w[None, :] + dw[:, None]
        a_mask = (r_mask[:, None] & p_mask[None, :]
                  & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width))
        a = tl.load(x_ptr + batch_base[None, :] + src_channel_offsets[:, None] + hh * width + ww,
                    mask=a_mask, other=0.0)
        g = tl.load(g_ptr + batch_base[:, None] + dst_channel_offsets[None, :] + hw[:, None],
                    mask=p_mask[:, None] & co_mask[None, :], other=0.0)
        acc = tl.dot(a.to(DOT_DTYPE), g.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION,
                     out_dtype=ACC_DTYPE)

    out_offsets = ((split * num_edges + edge) * reduction + offs_r[:, None]) * channels + offs_co[None, :]
    tl.store(partial_ptr + out_offsets, acc, mask=r_mask[:, None] & co_mask[None, :])


class RoutingTables:
    """Edge tables on one device for one edge tuple (built once, cached).

    ``by_destination`` routes the forward (each destination gathers its sources);
    ``by_source`` routes grad wrt features (each source gathers its destinations' grads).
    Each is ``(offsets (K+1,), edge index per entry (E,), gathered branch per entry (E,))``.
    """

    def __init__(self, edges: tuple[tuple[int, int], ...], num_branches: int, device: torch.device):
        def csr(key: int, other: int):
            order = sorted(range(len(edges)), key=lambda e: edges[e][key])  # stable: ties keep edge order
            counts = [0] * (num_branches + 1)
            for pair in edges:
                counts[pair[key] + 1] += 1
            offsets = torch.tensor(counts, dtype=torch.int64).cumsum(0).to(torch.int32)
            return (
                offsets.to(device),
                torch.tensor(order, dtype=torch.int32, device=device),
                torch.tensor([edges[e][other] for e in order], dtype=torch.int32, device=device),
            )

        self.by_destination = csr(key=1, other=0)
        self.by_source = csr(key=0, other=1)
        self.edge_source = torch.tensor([s for s, _ in edges], dtype=torch.int32, device=device)
        self.edge_destination = torch.tensor([d for _, d in edges], dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=64)
def routing_tables(edges: tuple[tuple[int, int], ...], num_branches: int, device: torch.device) -> RoutingTables:
    return RoutingTables(edges, num_branches, device)


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def _interpreting_bf16(dtype: torch.dtype) -> bool:
    """The triton 3.8 interpreter mishandles bf16 in two places: ``tl.dot`` multiplies bf16's raw
    uint16 storage, and ``.to(tl.bfloat16)`` truncates instead of rounding to nearest even. Under
    the interpreter bf16 operands are therefore upcast to fp32 for ``tl.dot`` (bf16 values and
    their products are exact in fp32: the same arithmetic as the GPU's bf16 MMA) and results are
    written to an fp32 buffer that torch rounds to bf16 (RTNE, as the GPU's cast does)."""
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def _dot_operand(dtype: torch.dtype):
    return tl.float32 if _interpreting_bf16(dtype) else _TL_DTYPES[dtype]


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _block_r(dtype: torch.dtype) -> int:
    return 64 if dtype.itemsize == 2 else 32


def _block_co(channels: int) -> int:
    # tl.dot needs every block dimension >= 16; channels beyond 64 take several programs.
    return min(max(triton.next_power_of_2(channels), 16), 64)


def _flat_weights(weights: torch.Tensor) -> torch.Tensor:
    """``(E, C_out, C_in, k, k)`` -> ``(E, k*k*C_in, C_out)``, row ``(kh*k + kw)*C_in + c_in``."""
    num_edges, c_out, c_in, k, _ = weights.shape
    return weights.permute(0, 3, 4, 2, 1).reshape(num_edges, k * k * c_in, c_out).contiguous()


def _convolve_and_route(x, flat_weights, bias, tables, channels, ksize):
    """``out_d = x_d + Σ_{entries of d} conv(x_gathered, W_entry) (+ b_entry)``: one launch."""
    if flat_weights.shape[0] == 0:  # no edges: the identity (and no launch over empty buffers)
        return x.clone()
    n, channels_total, height, width = x.shape
    num_branches = channels_total // channels
    out = torch.empty_like(x, dtype=torch.float32 if _interpreting_bf16(x.dtype) else x.dtype)
    offsets, edge_index, gathered = tables
    block_co = _block_co(channels)
    grid = (triton.cdiv(n * height * width, BLOCK_P), num_branches, triton.cdiv(channels, block_co))
    _message_passing_forward_kernel[grid](
        x, flat_weights, bias if bias is not None else flat_weights, out,
        offsets, edge_index, gathered,
        n * height * width, height, width, channels_total, channels, ksize * ksize * channels,
        KSIZE=ksize,
        HAS_BIAS=bias is not None,
        ACC_DTYPE=_accumulator(x.dtype),
        DOT_DTYPE=_dot_operand(x.dtype),
        INPUT_PRECISION=_input_precision(x.dtype),
        BLOCK_P=BLOCK_P,
        BLOCK_R=_block_r(x.dtype),
        BLOCK_CO=block_co,
        num_warps=NUM_WARPS,
    )
    return out.to(x.dtype)


def _grad_weight_splits(base_programs: int, pixel_blocks: int, device: torch.device) -> int:
    """How many programs share the pixel axis: enough to give ~4 programs per SM, at least one
    pixel block each. The partial buffer is then at most ~4 * SMs * BLOCK_R * BLOCK_CO floats."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(pixel_blocks, target // base_programs))


def grad_weights(features, grad_out, tables, channels, ksize, splits=None):
    """``(E, C, C, k, k)`` fp32 (fp64 for fp64): per edge ``Σ_{n,h,w} x_src(shifted) * grad_out_dst``."""
    n, channels_total, height, width = features.shape
    num_edges = tables.edge_source.numel()
    accumulate = torch.float64 if features.dtype == torch.float64 else torch.float32
    if num_edges == 0:
        return torch.zeros(0, channels, channels, ksize, ksize, dtype=accumulate, device=features.device)
    reduction = ksize * ksize * channels
    block_r, block_co = _block_r(features.dtype), _block_co(channels)
    rc_blocks = triton.cdiv(reduction, block_r) * triton.cdiv(channels, block_co)
    pixel_blocks = triton.cdiv(n * height * width, BLOCK_P)
    if splits is None:
        splits = _grad_weight_splits(num_edges * rc_blocks, pixel_blocks, features.device)
    partial = torch.empty(splits, num_edges, reduction, channels, dtype=accumulate, device=features.device)
    _message_passing_grad_weight_kernel[(num_edges, rc_blocks, splits)](
        features, grad_out, partial, tables.edge_source, tables.edge_destination,
        num_edges, n * height * width, height, width, channels_total, channels, reduction,
        KSIZE=ksize,
        ACC_DTYPE=_accumulator(features.dtype),
        DOT_DTYPE=_dot_operand(features.dtype),
        INPUT_PRECISION=_input_precision(features.dtype),
        BLOCK_P=BLOCK_P,
        BLOCK_R=block_r,
        BLOCK_CO=block_co,
        num_warps=NUM_WARPS,
    )
    # (E, R, C_out) with R = (kh, kw, c_in) -> (E, C_out, C_in, kh, kw)
    flat = partial.sum(0) if splits > 1 else partial[0]
    return flat.view(num_edges, ksize, ksize, channels, channels).permute(0, 4, 3, 1, 2)


def message_passing_forward(features, weights, bias, edges, num_branches):
    """The fused forward; ``edges`` is a hashable tuple of ``(src, dst)`` pairs."""
    features = features.contiguous()
    weights = weights.contiguous()
    bias = None if bias is None else bias.contiguous()
    channels, ksize = weights.shape[1], weights.shape[-1]
    tables = routing_tables(edges, num_branches, features.device)
    return _convolve_and_route(features, _flat_weights(weights), bias, tables.by_destination, channels, ksize)


def message_passing_backward(grad_out, features, weights, edges, num_branches, needs_input_grad=(True, True, True)):
    """``(dL/dfeatures, dL/dweights, dL/dbias)`` of ``message_passing_forward`` (``None`` where not needed)."""
    features = features.contiguous()
    weights = weights.contiguous()
    tables = routing_tables(edges, num_branches, features.device)
    grad_out = grad_out.contiguous()
    channels, ksize = weights.shape[1], weights.shape[-1]
    grad_features = grad_weights_ = grad_bias = None
    if needs_input_grad[0]:
        # Adjoint of a same-padded conv: flip the taps, swap in/out channels.
        adjoint = _flat_weights(weights.flip(-2, -1).transpose(1, 2))
        grad_features = _convolve_and_route(grad_out, adjoint, None, tables.by_source, channels, ksize)
    if needs_input_grad[1]:
        grad_weights_ = grad_weights(features, grad_out, tables, channels, ksize).to(weights.dtype)
    if needs_input_grad[2]:
        n, _, h, w = grad_out.shape
        accumulate = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
        per_branch = grad_out.view(n, -1, channels, h * w).sum(dim=(0, 3), dtype=accumulate)
        grad_bias = per_branch[tables.edge_destination.long()].to(weights.dtype)
    return grad_features, grad_weights_, grad_bias


class MessagePassingFunction(torch.autograd.Function):
    """``message_passing_forward`` with its backward, for direct calls (parity tests, self-check)."""

    @staticmethod
    def forward(ctx, features, weights, bias, edges, num_branches):
        ctx.save_for_backward(features, weights)
        ctx.edges, ctx.num_branches = edges, num_branches
        ctx.has_bias = bias is not None
        return message_passing_forward(features, weights, bias, edges, num_branches)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        features, weights = ctx.saved_tensors
        needs = (*ctx.needs_input_grad[:2], ctx.has_bias and ctx.needs_input_grad[2])
        return (*message_passing_backward(grad_out, features, weights, ctx.edges, ctx.num_branches, needs),
                None, None)


def message_passing_triton(
    features: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    edges,
) -> torch.Tensor:
    """Triton path of ``labfast.ops.message_passing`` (same signature and result)."""
    edges, num_branches = check_message_passing_arguments(features, weights, bias, edges)
    if features.dtype not in _TL_DTYPES:
        raise ValueError(f"features dtype {features.dtype} is not one of {', '.join(map(str, _TL_DTYPES))}")
    return MessagePassingFunction.apply(features, weights, bias, edges, num_branches)
