"""Triton kernels for ``labfast.ops.batch_norm_act``: batch norm (+ residual) (+ ReLU) in one pass.

A ``(N, C, H, W)`` tensor is read as ``M = N·H·W`` rows of ``C`` channels; row ``r`` is pixel
``r mod HW`` of sample ``r div HW``, so NCHW-contiguous and channels_last inputs are both one
``(n, c, hw)`` stride triple (the wrappers in ``labfast.ops.batch_norm_act`` bring any other
layout to one of the two, and the residual and the gradients to the input's).

Forward, training (three launches):

1. ``_batch_norm_stats_kernel``: each program owns ``rows_per_program`` rows of ``BLOCK_C``
   channels and keeps a running ``(mean, M2)`` per channel, merging tile after tile with Chan's
   pairwise update (no ``Σx² - (Σx)²`` cancellation);
2. ``_batch_norm_finalize_kernel``: merges the programs' partials the same way (two passes over
   them: the total mean, then ``Σ M2_i + n_i (mean_i - mean)²``), writes ``mean`` and
   ``invstd = 1 / sqrt(var + eps)`` (biased variance) and updates the running statistics as
   ``nn.BatchNorm2d`` does: ``r <- (1 - momentum) r + momentum s``, with the unbiased variance;
3. ``_batch_norm_act_forward_kernel``: ``relu((x - mean) · invstd · weight + bias + residual)``.

Eval mode runs only the third, with the running statistics.

Backward, with ``g = grad_out · [out > 0]`` (ReLU) and ``x̂ = (x - mean) · invstd``; without a
residual the mask is recomputed from ``x`` (``out`` is neither read nor kept), with one it is read
from ``out``:
``grad_bias = Σ g``, ``grad_weight = Σ g x̂``, ``grad_residual = g`` and
``grad_x = weight · invstd · (g - grad_bias / M - x̂ · grad_weight / M)`` (training; in eval mode
the statistics are constants and ``grad_x = weight · invstd · g``).
``_batch_norm_act_backward_reduce_kernel`` writes per-program partial sums (and ``g`` for the
residual); the wrapper adds them up (deterministic ``sum``s: no float atomics, whose order
changes run to run); ``_batch_norm_act_backward_input_kernel`` writes ``grad_x``.

All arithmetic is in fp32 (fp64 for fp64 inputs, used by gradcheck); loads and stores use the
tensors' own dtypes (bf16 activations with fp32 weights and running statistics, as under
autocast). Pointer arithmetic and masks only (no block pointers: triton 3.6 and 3.8).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Rows x channels per tile. Fewer, larger programs under the interpreter, which pays ~0.75 ms per
# program; chosen by the interpreter switch, not by the tensors' device, so that an offline
# compile (CPU tensors, no interpreter: labfast.perf.offline_compile) specialises the GPU's blocks.
_GPU_BLOCKS = (64, 32)
_INTERPRETER_BLOCKS = (1024, 64)
_GPU_PROGRAMS = 1024  # stats/backward-reduce programs to aim at: a few per SM of an H100 (132 SMs)
_INTERPRETER_PROGRAMS = 1  # under the interpreter: one program per channel block
_FINALIZE_BLOCKS = (64, 32)  # partials x channels per step of the finalize kernel


def _blocks() -> tuple[int, int]:
    return _INTERPRETER_BLOCKS if os.environ.get("TRITON_INTERPRET") == "1" else _GPU_BLOCKS


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics and of the arithmetic: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _layout(x: torch.Tensor) -> tuple[int, int, int, int, int]:
    """``(M, HW, stride_n, stride_c, stride_hw)`` of a 4-D NCHW-contiguous or channels_last tensor."""
    n, _, h, w = x.shape
    return n * h * w, h * w, x.stride(0), x.stride(1), x.stride(3)


def _partition(rows: int, channels: int) -> tuple[int, int]:
    """``(rows_per_program, programs along the rows)`` of the stats and backward-reduce kernels: whole
    tiles per program, about ``_GPU_PROGRAMS`` programs in all (each merges its tiles, then the
    finalize kernel or a ``sum`` merges the programs)."""
    block_rows, block_channels = _blocks()
    tiles = triton.cdiv(rows, block_rows)
    programs = _INTERPRETER_PROGRAMS if os.environ.get("TRITON_INTERPRET") == "1" else _GPU_PROGRAMS
    target = max(programs // triton.cdiv(channels, block_channels), 1)
    rows_per_program = triton.cdiv(tiles, min(target, tiles)) * block_rows
    return rows_per_program, triton.cdiv(rows, rows_per_program)


@triton.jit
def _channel_block(C, BLOCK_C: tl.constexpr):
    """The ``BLOCK_C`` channels of this program (grid axis 1) and which of them exist."""
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return channels, channels < C


@triton.jit
def _program_rows(M, rows_per_program):
    """``[begin, end)``: the rows a statistics or backward-reduce program (grid axis 0) merges."""
    begin = tl.program_id(0) * rows_per_program
    return begin, tl.minimum(begin + rows_per_program, M)


@triton.jit
def _tile(start, end, channels, channel_mask, HW, stride_n, stride_c, stride_hw, BLOCK_M: tl.constexpr):
    """``(offsets, mask)`` of the tile of ``BLOCK_M`` rows from ``start`` (those below ``end``) by
    ``channels``. Offsets are int64: a batch-256 activation exceeds 2**31 bytes."""
    rows = start + tl.arange(0, BLOCK_M)
    mask = (rows < end)[:, None] & channel_mask[None, :]
    sample = (rows // HW).to(tl.int64)
    pixel = (rows % HW).to(tl.int64)
    offsets = (sample * stride_n + pixel * stride_hw)[:, None] + channels.to(tl.int64)[None, :] * stride_c
    return offsets, mask


@triton.jit
def _batch_norm_stats_kernel(x_ptr, partial_mean_ptr, partial_m2_ptr, M, HW, C, stride_n, stride_c, stride_hw,
                             rows_per_program, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    chunk = tl.program_id(0)
    channels, channel_mask = _channel_block(C, BLOCK_C)
    begin, end = _program_rows(M, rows_per_program)
    count = tl.zeros((BLOCK_C,), dtype=ACC)
    mean = tl.zeros((BLOCK_C,), dtype=ACC)
    m2 = tl.zeros((BLOCK_C,), dtype=ACC)
    for start in range(begin, end, BLOCK_M):
        offsets, mask = _tile(start, end, channels, channel_mask, HW, stride_n, stride_c, stride_hw, BLOCK_M)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        tile_count = tl.minimum(end - start, BLOCK_M).to(ACC)
        tile_mean = tl.sum(x, axis=0) / tile_count
        centred = tl.where(mask, x - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(centred * centred, axis=0)
        # Chan et al.'s merge of (count, mean, M2) with the tile's
        merged = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / merged)
        m2 += tile_m2 + delta * delta * (count * tile_count / merged)
        count = merged
    tl.store(partial_mean_ptr + chunk * C + channels, mean, mask=channel_mask)
    tl.store(partial_m2_ptr + chunk * C + channels, m2, mask=channel_mask)


@triton.jit
def _batch_norm_finalize_kernel(partial_mean_ptr, partial_m2_ptr, mean_ptr, invstd_ptr, running_mean_ptr,
                                running_var_ptr, num_chunks, rows_per_program, M, C, momentum, eps,
                                UPDATE_RUNNING: tl.constexpr, BLOCK_CHUNKS: tl.constexpr, BLOCK_C: tl.constexpr,
                                ACC: tl.constexpr):
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels < C
    total = M.to(ACC)
    weighted = tl.zeros((BLOCK_C,), dtype=ACC)
    for first in range(0, num_chunks, BLOCK_CHUNKS):
        chunks = first + tl.arange(0, BLOCK_CHUNKS)
        mask = (chunks < num_chunks)[:, None] & channel_mask[None, :]
        counts = tl.minimum(M - chunks * rows_per_program, rows_per_program).to(ACC)
        means = tl.load(partial_mean_ptr + chunks[:, None] * C + channels[None, :], mask=mask, other=0.0)
        weighted += tl.sum(means * counts[:, None], axis=0)
    mean = weighted / total
    m2 = tl.zeros((BLOCK_C,), dtype=ACC)
    for first in range(0, num_chunks, BLOCK_CHUNKS):
        chunks = first + tl.arange(0, BLOCK_CHUNKS)
        mask = (chunks < num_chunks)[:, None] & channel_mask[None, :]
        counts = tl.minimum(M - chunks * rows_per_program, rows_per_program).to(ACC)
        offsets = chunks[:, None] * C + channels[None, :]
        means = tl.load(partial_mean_ptr + offsets, mask=mask, other=0.0)
        m2s = tl.load(partial_m2_ptr + offsets, mask=mask, other=0.0)
        delta = tl.where(mask, means - mean[None, :], 0.0)
        m2 += tl.sum(m2s + delta * delta * counts[:, None], axis=0)
    invstd = 1.0 / tl.sqrt(m2 / total + eps)
    tl.store(mean_ptr + channels, mean, mask=channel_mask)
    tl.store(invstd_ptr + channels, invstd, mask=channel_mask)
    if UPDATE_RUNNING:
        running_mean = tl.load(running_mean_ptr + channels, mask=channel_mask)
        running_var = tl.load(running_var_ptr + channels, mask=channel_mask)
        unbiased = m2 / (total - 1.0)
        new_mean = (1.0 - momentum) * running_mean.to(ACC) + momentum * mean
        new_var = (1.0 - momentum) * running_var.to(ACC) + momentum * unbiased
        tl.store(running_mean_ptr + channels, new_mean.to(running_mean.dtype), mask=channel_mask)
        tl.store(running_var_ptr + channels, new_var.to(running_var.dtype), mask=channel_mask)


@triton.jit
def _batch_norm_act_forward_kernel(x_ptr, residual_ptr, out_ptr, mean_ptr, invstd_ptr, weight_ptr, bias_ptr,
                                   M, HW, C, stride_n, stride_c, stride_hw, HAS_RESIDUAL: tl.constexpr,
                                   RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                                   ACC: tl.constexpr):
    channels, channel_mask = _channel_block(C, BLOCK_C)
    offsets, mask = _tile(tl.program_id(0) * BLOCK_M, M, channels, channel_mask, HW, stride_n, stride_c, stride_hw,
                          BLOCK_M)
    mean, _, scale, shift = _channel_affine(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, channels, channel_mask, ACC)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
    y = (x - mean[None, :]) * scale[None, :] + shift[None, :]
    if HAS_RESIDUAL:
        y += tl.load(residual_ptr + offsets, mask=mask, other=0.0).to(ACC)
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_gradient(grad_ptr, out_ptr, offsets, mask, x, mean, invstd, scale, shift, RELU: tl.constexpr,
                     MASK_FROM_OUTPUT: tl.constexpr, ACC: tl.constexpr):
    """``g = grad_out · [out > 0]`` (or ``grad_out`` without ReLU), in ``ACC``. Without a residual the
    ReLU's mask is recomputed from ``x`` (the forward's own expression: ``out`` need not be read,
    nor kept for backward); with one it is read from ``out``."""
    g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(ACC)
    if RELU:
        if MASK_FROM_OUTPUT:
            out = tl.load(out_ptr + offsets, mask=mask, other=0.0)
            g = tl.where(out > 0, g, 0.0)
        else:
            y = (x - mean[None, :]) * scale[None, :] + shift[None, :]
            g = tl.where(y > 0, g, 0.0)
    return g


@triton.jit
def _channel_affine(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, channels, channel_mask, ACC: tl.constexpr):
    """Per channel ``(mean, invstd, scale = invstd · weight, shift = bias)``, as the forward computes them."""
    mean = tl.load(mean_ptr + channels, mask=channel_mask, other=0.0)
    invstd = tl.load(invstd_ptr + channels, mask=channel_mask, other=0.0)
    scale = invstd * tl.load(weight_ptr + channels, mask=channel_mask, other=0.0).to(ACC)
    shift = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(ACC)
    return mean, invstd, scale, shift


@triton.jit
def _batch_norm_act_backward_reduce_kernel(grad_ptr, x_ptr, out_ptr, mean_ptr, invstd_ptr, weight_ptr, bias_ptr,
                                           partial_ptr, grad_residual_ptr, M, HW, C, stride_n, stride_c, stride_hw,
                                           rows_per_program, RELU: tl.constexpr, MASK_FROM_OUTPUT: tl.constexpr,
                                           WRITE_MASKED: tl.constexpr, BLOCK_M: tl.constexpr,
                                           BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Per program: ``Σ g`` and ``Σ g x̂`` over its rows into ``partial[chunk, 0 | 1, :]``."""
    chunk = tl.program_id(0)
    channels, channel_mask = _channel_block(C, BLOCK_C)
    mean, invstd, scale, shift = _channel_affine(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, channels,
                                                 channel_mask, ACC)
    begin, end = _program_rows(M, rows_per_program)
    sum_g = tl.zeros((BLOCK_C,), dtype=ACC)
    sum_g_xhat = tl.zeros((BLOCK_C,), dtype=ACC)
    for start in range(begin, end, BLOCK_M):
        offsets, mask = _tile(start, end, channels, channel_mask, HW, stride_n, stride_c, stride_hw, BLOCK_M)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        g = _masked_gradient(grad_ptr, out_ptr, offsets, mask, x, mean, invstd, scale, shift, RELU,
                             MASK_FROM_OUTPUT, ACC)
        xhat = (x - mean[None, :]) * invstd[None, :]
        sum_g += tl.sum(g, axis=0)
        sum_g_xhat += tl.sum(g * xhat, axis=0)
        if WRITE_MASKED:
            tl.store(grad_residual_ptr + offsets, g.to(grad_residual_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + chunk * 2 * C + channels, sum_g, mask=channel_mask)
    tl.store(partial_ptr + chunk * 2 * C + C + channels, sum_g_xhat, mask=channel_mask)


@triton.jit
def _batch_norm_act_backward_input_kernel(grad_ptr, x_ptr, out_ptr, mean_ptr, invstd_ptr, weight_ptr, bias_ptr,
                                          sum_g_ptr, sum_g_xhat_ptr, grad_x_ptr, M, HW, C, stride_n, stride_c,
                                          stride_hw, RELU: tl.constexpr, MASK_FROM_OUTPUT: tl.constexpr,
                                          TRAINING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                                          ACC: tl.constexpr):
    channels, channel_mask = _channel_block(C, BLOCK_C)
    offsets, mask = _tile(tl.program_id(0) * BLOCK_M, M, channels, channel_mask, HW, stride_n, stride_c, stride_hw,
                          BLOCK_M)
    mean, invstd, scale, shift = _channel_affine(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, channels,
                                                 channel_mask, ACC)
    if TRAINING or (RELU and not MASK_FROM_OUTPUT):
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
    else:  # eval mode with the mask from out (or no ReLU): x is not needed
        x = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    g = _masked_gradient(grad_ptr, out_ptr, offsets, mask, x, mean, invstd, scale, shift, RELU, MASK_FROM_OUTPUT,
                         ACC)
    if TRAINING:
        total = M.to(ACC)
        mean_g = tl.load(sum_g_ptr + channels, mask=channel_mask, other=0.0) / total
        mean_g_xhat = tl.load(sum_g_xhat_ptr + channels, mask=channel_mask, other=0.0) / total
        xhat = (x - mean[None, :]) * invstd[None, :]
        g = g - mean_g[None, :] - xhat * mean_g_xhat[None, :]
    tl.store(grad_x_ptr + offsets, (g * scale[None, :]).to(grad_x_ptr.dtype.element_ty), mask=mask)


def batch_norm_statistics(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                          momentum: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``(mean, invstd)`` per channel of ``x`` (NCHW-contiguous or channels_last), updating the
    running statistics in place when given."""
    M, HW, stride_n, stride_c, stride_hw = _layout(x)
    C = x.shape[1]
    block_rows, block_channels = _blocks()
    rows_per_program, chunks = _partition(M, C)
    acc = accumulator_dtype(x.dtype)
    partial_mean = torch.empty(chunks, C, device=x.device, dtype=acc)
    partial_m2 = torch.empty(chunks, C, device=x.device, dtype=acc)
    _batch_norm_stats_kernel[(chunks, triton.cdiv(C, block_channels))](
        x, partial_mean, partial_m2, M, HW, C, stride_n, stride_c, stride_hw, rows_per_program,
        BLOCK_M=block_rows, BLOCK_C=block_channels, ACC=_acc(x.dtype), num_warps=4)
    mean = torch.empty(C, device=x.device, dtype=acc)
    invstd = torch.empty(C, device=x.device, dtype=acc)
    update = running_mean is not None
    finalize_chunks, finalize_channels = _FINALIZE_BLOCKS
    _batch_norm_finalize_kernel[(triton.cdiv(C, finalize_channels),)](
        partial_mean, partial_m2, mean, invstd, running_mean if update else mean,
        running_var if update else invstd, chunks, rows_per_program, M, C, momentum, eps,
        UPDATE_RUNNING=update, BLOCK_CHUNKS=finalize_chunks, BLOCK_C=finalize_channels, ACC=_acc(x.dtype),
        num_warps=4)
    return mean, invstd


def batch_norm_act_apply(x: torch.Tensor, residual: torch.Tensor | None, mean: torch.Tensor, invstd: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    """``relu((x - mean) · invstd · weight + bias + residual)``, in ``x``'s layout and dtype
    (``residual`` must share ``x``'s strides)."""
    M, HW, stride_n, stride_c, stride_hw = _layout(x)
    C = x.shape[1]
    block_rows, block_channels = _blocks()
    out = torch.empty_like(x)
    _batch_norm_act_forward_kernel[(triton.cdiv(M, block_rows), triton.cdiv(C, block_channels))](
        x, x if residual is None else residual, out, mean, invstd, weight, bias, M, HW, C,
        stride_n, stride_c, stride_hw, HAS_RESIDUAL=residual is not None, RELU=relu,
        BLOCK_M=block_rows, BLOCK_C=block_channels, ACC=_acc(x.dtype), num_warps=4)
    return out


def batch_norm_act_backward(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None, weight: torch.Tensor,
                            bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, training: bool,
                            relu: bool) -> tuple[torch.Tensor, ...]:
    """``(grad_x, grad_weight, grad_bias, g)``. ``out`` is given when a residual was added (the
    ReLU's mask is then read from it, else recomputed from ``x``); ``g = grad · [out > 0]``, the
    residual's gradient under ReLU, is written only then, else it is an empty tensor.
    ``grad`` and ``out`` must share ``x``'s strides."""
    M, HW, stride_n, stride_c, stride_hw = _layout(x)
    C = x.shape[1]
    block_rows, block_channels = _blocks()
    rows_per_program, chunks = _partition(M, C)
    acc = accumulator_dtype(x.dtype)
    partials = torch.empty(chunks, 2, C, device=x.device, dtype=acc)
    from_output = out is not None
    masked = torch.empty_like(x) if from_output and relu else x.new_empty(0)
    _batch_norm_act_backward_reduce_kernel[(chunks, triton.cdiv(C, block_channels))](
        grad, x, out if from_output else x, mean, invstd, weight, bias, partials, masked if masked.numel() else grad,
        M, HW, C, stride_n, stride_c, stride_hw, rows_per_program, RELU=relu, MASK_FROM_OUTPUT=from_output,
        WRITE_MASKED=bool(masked.numel()), BLOCK_M=block_rows, BLOCK_C=block_channels, ACC=_acc(x.dtype),
        num_warps=4)
    sum_g, sum_g_xhat = partials[:, 0].sum(dim=0), partials[:, 1].sum(dim=0)
    grad_x = torch.empty_like(x)
    _batch_norm_act_backward_input_kernel[(triton.cdiv(M, block_rows), triton.cdiv(C, block_channels))](
        grad, x, out if from_output else x, mean, invstd, weight, bias, sum_g, sum_g_xhat, grad_x, M, HW, C,
        stride_n, stride_c, stride_hw, RELU=relu, MASK_FROM_OUTPUT=from_output, TRAINING=training,
        BLOCK_M=block_rows, BLOCK_C=block_channels, ACC=_acc(x.dtype), num_warps=4)
    return grad_x, sum_g_xhat.to(weight.dtype), sum_g.to(weight.dtype), masked
