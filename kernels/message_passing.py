"""Triton kernels for message passing between boundary branches (LAB Sec. 3.1).

    out_dst = x_dst + Σ_{e=(src, dst)} conv(x_src, W_e) + b_e

features ``(N, K * C, H, W)`` (branch ``k`` in channels ``[k*C, (k+1)*C)``), weights
``(E, C, C, k, k)`` (odd ``k``, same padding), bias ``(E, C)`` or ``None``.

What is fused, and how
----------------------
- **Patch layout.** ``tl.dot`` needs at least 16 columns, and a branch has C channels (4 in the
  paper preset): one output pixel per dot row would leave ``1 - C/16`` of every dot empty (75 %
  at C = 4). Each dot row is therefore a ``PY×PX`` patch of output pixels (``patch_shape``: 2×2
  at C = 4), its columns ``(dy, dx, c_out)`` — ``PY·PX·C = 16`` at C = 4 — and its reduction
  axis the patch's ``(k+PY-1)×(k+PX-1)`` input window times ``C_in`` (8·8·4 = 256 at k = 7).
  The weights are laid out to match (``_patch_weights``: ``W[c_out, c_in, a-dy, b-dx]`` at row
  ``(a, b, c_in)``, column ``(dy, dx, c_out)``, zero where the tap falls outside the kernel).
  At C = 4, k = 7 the useful share of the dot's multiply-adds goes from 196·4 / (256·16) = 19 %
  (one pixel per row, 196 reduction rows padded to 256) to 196·4·4 / (256·16) = 77 %; C >= 16
  keeps one pixel per row (the plain im2col layout).
- **Forward: one launch.** Grid ``(images × patch tiles, K destinations, column blocks)``.
  Each program starts its fp32 accumulator from the residual ``x_dst``, walks the
  destination's incoming edges through a CSR table (``offsets[dst] .. offsets[dst+1]``), and for
  each edge runs an implicit-GEMM convolution: the window axis is cut into ``BLOCK_R`` chunks,
  the ``(BLOCK_P, BLOCK_R)`` operand is gathered straight from the source branch (zero outside
  the image by mask) and multiplied by the matching ``(BLOCK_R, BLOCK_N)`` slice of the edge's
  patch weights with ``tl.dot``. Bias is added per edge; the output is written once. No message
  tensor, no gathered-sources tensor exists. A program stays in one image: its 64-bit image
  base is one scalar and every offset inside the image is int32 (fewer registers than 64-bit
  offset tiles; ``N·K·C·H·W`` may still pass ``2**31``).
- **Grad wrt features: one launch of the same kernel.** The adjoint of a same-padded
  convolution is a same-padded convolution with the kernel flipped and in/out channels swapped,
  so ``grad_x_src = grad_out_src + Σ_{e=(src, dst)} conv(grad_out_dst, flip(W_e)^T)`` is the
  forward with edges reversed (CSR by source) and residual ``grad_out``.
- **Grad wrt weights: one launch** of a second kernel: per edge, the gradient of the patch
  weights ``Σ_patches window(x_src) ⊗ patch(grad_out_dst)`` as a ``(R, J·C) = (R, P) @ (P, J·C)``
  GEMM over patches, the patch axis split over ``splits`` programs when there are too few
  ``(edge, block)`` programs to fill the device. Partial sums go to an fp32 buffer
  ``(splits, E, R, J·C)`` that torch sums (deterministic, no atomics) and folds back to
  ``(E, C, C, k, k)`` (``_fold_patch_weights``, the adjoint of the patch layout: each tap summed
  over the ``J`` patch pixels that hold a copy of it).
- **Not fused:** grad wrt bias is one torch reduction of ``grad_out`` per branch, gathered by
  destination; the small weight re-layouts (patch layout, fold, ``flip``) are torch ops.
- **Tiles** (``_blocks``) are fixed per dtype, not autotuned (autotuning cannot run under the
  interpreter): ``tests/ops/test_compile_sm90.py`` compiles every preset's launches for sm_90
  with the installed triton and fails on any register spill (none on 3.6 or 3.8).

Precision: operands are loaded in the input dtype (fp16, bf16, fp32, fp64); accumulation is fp32
(fp64 for fp64 inputs; every ``tl.dot`` names its ``out_dtype``, which triton 3.6 otherwise takes
as fp32 and then rejects an fp64 accumulator). fp32 ``tl.dot`` follows ``torch.backends.cudnn.allow_tf32`` — the flag
that decides whether the reference's ``F.conv2d`` uses TF32 — so both paths round alike; fp64
uses IEEE products. Under ``TRITON_INTERPRET=1`` ``tl.dot`` is an exact numpy matmul.

Only pointer arithmetic and masks (no block pointers, no tensor descriptors): the kernels must
run on triton 3.6 (GPU machines) and 3.8 (CPU interpreter).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _message_passing_forward_kernel(
    x_ptr,  # (N, K*C, H, W) contiguous: features (forward) or grad_out (grad wrt features)
    w_ptr,  # (E, R, J*C) contiguous patch weights (see _patch_weights)
    b_ptr,  # (E, C) or a dummy when HAS_BIAS is false
    out_ptr,  # (N, K*C, H, W) contiguous
    offsets_ptr,  # (K + 1,) int32: incoming edges of branch d are entries offsets[d]..offsets[d+1]
    edge_ptr,  # (E,) int32: edge index of each entry
    source_ptr,  # (E,) int32: branch gathered by each entry
    height,
    width,
    channels_total,  # K*C
    patch_rows,  # cdiv(H, PATCH_Y)
    patch_cols,  # cdiv(W, PATCH_X)
    C: tl.constexpr,
    KSIZE: tl.constexpr,
    PATCH_Y: tl.constexpr,
    PATCH_X: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid ``(N * patch tiles per image, K destinations, column blocks)``: one ``(BLOCK_P patches,
    BLOCK_N columns)`` output tile of one destination in one image, all its incoming edges."""
    pad = KSIZE // 2
    window_x = KSIZE + PATCH_X - 1
    reduction = (KSIZE + PATCH_Y - 1) * window_x * C
    columns = PATCH_Y * PATCH_X * C
    patches = patch_rows * patch_cols
    tiles = tl.cdiv(patches, BLOCK_P)
    n = tl.program_id(0) // tiles
    tile = tl.program_id(0) % tiles
    dst = tl.program_id(1)
    plane = height * width
    # One 64-bit base per program (N * K*C * H*W may pass 2**31); offsets inside an image are int32.
    image_offset = n.to(tl.int64) * channels_total * plane
    x_image = x_ptr + image_offset

    q = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    q_mask = q < patches
    patch_y = (q // patch_cols) * PATCH_Y
    patch_x = (q % patch_cols) * PATCH_X
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < columns
    pixel = cols // C  # patch pixel of each column (row-major in the patch)
    c_out = cols % C
    oy = patch_y[:, None] + (pixel // PATCH_X)[None, :]
    ox = patch_x[:, None] + (pixel % PATCH_X)[None, :]
    out_offsets = ((dst * C + c_out) * plane)[None, :] + oy * width + ox
    out_mask = q_mask[:, None] & col_mask[None, :] & (oy < height) & (ox < width)
    acc = tl.load(x_image + out_offsets, mask=out_mask, other=0.0).to(ACC_DTYPE)

    start = tl.load(offsets_ptr + dst)
    end = tl.load(offsets_ptr + dst + 1)
    for entry in range(start, end):
        edge = tl.load(edge_ptr + entry)
        src_image = x_image + tl.load(source_ptr + entry) * C * plane
        w_edge = w_ptr + edge * (reduction * columns)
        for r0 in range(0, reduction, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_mask = offs_r < reduction
            tap = offs_r // C
            yy = patch_y[:, None] + (tap // window_x - pad)[None, :]
            xx = patch_x[:, None] + (tap % window_x - pad)[None, :]
            a_mask = (q_mask[:, None] & r_mask[None, :]
                      & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width))
            a = tl.load(src_image + (((offs_r % C) * plane)[None, :] + yy * width + xx), mask=a_mask, other=0.0)
            b = tl.load(w_edge + offs_r[:, None] * columns + cols[None, :],
                        mask=r_mask[:, None] & col_mask[None, :], other=0.0)
            acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION,
                         out_dtype=ACC_DTYPE)
        if HAS_BIAS:
            acc += tl.load(b_ptr + edge * C + c_out, mask=col_mask, other=0.0).to(ACC_DTYPE)[None, :]

    tl.store(out_ptr + image_offset + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _message_passing_grad_weight_kernel(
    x_ptr,  # (N, K*C, H, W) contiguous features
    g_ptr,  # (N, K*C, H, W) contiguous grad_out
    partial_ptr,  # (splits, E, R, J*C) accumulator dtype: patch-weight gradients
    edge_src_ptr,  # (E,) int32
    edge_dst_ptr,  # (E,) int32
    num_edges,
    num_images,
    height,
    width,
    channels_total,
    patch_rows,
    patch_cols,
    C: tl.constexpr,
    KSIZE: tl.constexpr,
    PATCH_Y: tl.constexpr,
    PATCH_X: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Grid ``(E, row blocks × column blocks, splits)``: ``(BLOCK_R, BLOCK_N)`` of one edge's
    patch-weight gradient, summed over every ``split``-th patch tile of every image."""
    pad = KSIZE // 2
    window_x = KSIZE + PATCH_X - 1
    reduction = (KSIZE + PATCH_Y - 1) * window_x * C
    columns = PATCH_Y * PATCH_X * C
    col_blocks = (columns + BLOCK_N - 1) // BLOCK_N
    edge = tl.program_id(0)
    pid_r = tl.program_id(1) // col_blocks
    pid_n = tl.program_id(1) % col_blocks
    split = tl.program_id(2)
    splits = tl.num_programs(2)
    plane = height * width
    patches = patch_rows * patch_cols
    tiles = tl.cdiv(patches, BLOCK_P)

    src = tl.load(edge_src_ptr + edge)
    dst = tl.load(edge_dst_ptr + edge)
    # The window offset and input channel of each row are fixed for the whole program.
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < reduction
    tap = offs_r // C
    dy = tap // window_x - pad
    dx = tap % window_x - pad
    src_offsets = (src * C + offs_r % C) * plane
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < columns
    pixel = cols // C
    dst_offsets = (dst * C + cols % C) * plane

    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=ACC_DTYPE)
    for t in range(split, num_images * tiles, splits):
        image_offset = (t // tiles).to(tl.int64) * channels_total * plane
        q = (t % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
        q_mask = q < patches
        patch_y = (q // patch_cols) * PATCH_Y
        patch_x = (q % patch_cols) * PATCH_X
        yy = patch_y[None, :] + dy[:, None]
        xx = patch_x[None, :] + dx[:, None]
        a_mask = (r_mask[:, None] & q_mask[None, :]
                  & (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width))
        a = tl.load(x_ptr + image_offset + (src_offsets[:, None] + yy * width + xx), mask=a_mask, other=0.0)
        oy = patch_y[:, None] + (pixel // PATCH_X)[None, :]
        ox = patch_x[:, None] + (pixel % PATCH_X)[None, :]
        g_mask = q_mask[:, None] & col_mask[None, :] & (oy < height) & (ox < width)
        g = tl.load(g_ptr + image_offset + (dst_offsets[None, :] + oy * width + ox), mask=g_mask, other=0.0)
        acc = tl.dot(a.to(DOT_DTYPE), g.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION,
                     out_dtype=ACC_DTYPE)

    out_offsets = ((split * num_edges + edge) * reduction + offs_r[:, None]) * columns + cols[None, :]
    tl.store(partial_ptr + out_offsets, acc, mask=r_mask[:, None] & col_mask[None, :])


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


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile of one kernel launch: ``p`` patches (dot rows of the forward, reduction of the weight
    gradient), ``r`` patch-weight rows per step, ``warps``."""

    p: int
    r: int
    warps: int


def _blocks(kernel: str, dtype: torch.dtype) -> Blocks:
    """Tiles without register spills at the model's shapes on sm_90 (checked for every preset and
    dtype by tests/ops/test_compile_sm90.py): a 16-bit ``(64, 64)`` operand tile is 32 values per
    thread at 4 warps, whose addresses alone take 64 registers; fp32 and fp64 halve the reduction
    step."""
    return _BLOCKS[kernel, 2 if dtype.itemsize == 2 else 4]


_BLOCKS = {
    ("forward", 2): Blocks(p=64, r=64, warps=4),
    ("forward", 4): Blocks(p=64, r=32, warps=4),
    ("grad_weight", 2): Blocks(p=64, r=64, warps=4),
    ("grad_weight", 4): Blocks(p=64, r=32, warps=4),
}


def patch_shape(channels: int) -> tuple[int, int]:
    """``(PATCH_Y, PATCH_X)`` output pixels packed into the dot's columns with their channels.

    ``tl.dot`` needs at least 16 columns; a branch of C < 16 channels would leave ``1 - C/16`` of
    them empty (75 % at the paper's C = 4). Packing a patch of ``ceil(16 / C)`` pixels (a power of
    two, wider than tall since rows are contiguous) fills them: C = 4 takes 2×2, C = 2 takes 2×4,
    C = 8 takes 1×2; C >= 16 keeps one pixel per row of the dot.
    """
    if channels >= 16:
        return 1, 1
    pixels = triton.next_power_of_2(triton.cdiv(16, channels))
    width = 2 ** (pixels.bit_length() // 2)
    return pixels // width, width


def _patch_weights(weights: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``(E, C_out, C_in, k, k)`` -> patch weights ``(E, R, J*C_out)`` for a ``PY×PX`` patch
    (``J = PY*PX`` pixels, window ``(k+PY-1)×(k+PX-1)``, ``R = window*C_in``).

    Row ``(a*(k+PX-1) + b)*C_in + c_in`` is the window offset ``(a, b)`` from the patch origin
    (minus ``k//2``), column ``(dy*PX + dx)*C_out + c_out`` the patch pixel ``(dy, dx)``; the entry
    is ``W[c_out, c_in, a - dy, b - dx]`` (zero outside the kernel). With a 1×1 patch it is the
    plain im2col layout ``(E, k*k*C_in, C_out)``.
    """
    num_edges, c_out, c_in, k, _ = weights.shape
    patch_y, patch_x = patch
    shifted = torch.stack([F.pad(weights, (dx, patch_x - 1 - dx, dy, patch_y - 1 - dy))
                           for dy in range(patch_y) for dx in range(patch_x)], dim=1)  # (E, J, Co, Ci, Wy, Wx)
    rows = (k + patch_y - 1) * (k + patch_x - 1) * c_in
    return shifted.permute(0, 4, 5, 3, 1, 2).reshape(num_edges, rows, patch_y * patch_x * c_out).contiguous()


def _fold_patch_weights(patch_grad: torch.Tensor, patch: tuple[int, int], channels: int, ksize: int) -> torch.Tensor:
    """The adjoint of ``_patch_weights``: ``(E, R, J*C)`` -> ``(E, C_out, C_in, k, k)``, each
    kernel tap summed over the patch pixels that hold a copy of it."""
    patch_y, patch_x = patch
    num_edges = patch_grad.shape[0]
    window = patch_grad.view(num_edges, ksize + patch_y - 1, ksize + patch_x - 1, channels, patch_y, patch_x,
                             channels)
    folded = sum(window[:, dy:dy + ksize, dx:dx + ksize, :, dy, dx, :]
                 for dy in range(patch_y) for dx in range(patch_x))  # (E, k, k, C_in, C_out)
    return folded.permute(0, 4, 3, 1, 2)


def _convolve_and_route(x, flat_weights, bias, tables, channels, ksize):
    """``out_d = x_d + Σ_{entries of d} conv(x_gathered, W_entry) (+ b_entry)``: one launch.
    ``flat_weights``: ``_patch_weights`` for ``patch_shape(channels)``."""
    if flat_weights.shape[0] == 0:  # no edges: the identity (and no launch over empty buffers)
        return x.clone()
    n, channels_total, height, width = x.shape
    num_branches = channels_total // channels
    patch_y, patch_x = patch_shape(channels)
    patch_rows, patch_cols = triton.cdiv(height, patch_y), triton.cdiv(width, patch_x)
    out = torch.empty_like(x, dtype=torch.float32 if _interpreting_bf16(x.dtype) else x.dtype)
    offsets, edge_index, gathered = tables
    blocks = _blocks("forward", x.dtype)
    block_n = _block_n(flat_weights.shape[2])
    grid = (n * triton.cdiv(patch_rows * patch_cols, blocks.p), num_branches,
            triton.cdiv(flat_weights.shape[2], block_n))
    _message_passing_forward_kernel[grid](
        x, flat_weights, bias if bias is not None else flat_weights, out,
        offsets, edge_index, gathered,
        height, width, channels_total, patch_rows, patch_cols,
        HAS_BIAS=bias is not None, **_launch_constants(channels, ksize, x.dtype, blocks, block_n),
    )
    return out.to(x.dtype)


def _launch_constants(channels: int, ksize: int, dtype: torch.dtype, blocks: Blocks, block_n: int) -> dict:
    """The compile-time arguments both kernels take (and ``num_warps``)."""
    patch_y, patch_x = patch_shape(channels)
    return dict(C=channels, KSIZE=ksize, PATCH_Y=patch_y, PATCH_X=patch_x, ACC_DTYPE=_accumulator(dtype),
                DOT_DTYPE=_dot_operand(dtype), INPUT_PRECISION=_input_precision(dtype), BLOCK_P=blocks.p,
                BLOCK_R=blocks.r, BLOCK_N=block_n, num_warps=blocks.warps)


def _block_n(columns: int) -> int:
    # tl.dot needs every block dimension >= 16; more than 64 columns take several programs.
    return min(max(triton.next_power_of_2(columns), 16), 64)


def _grad_weight_splits(base_programs: int, pixel_blocks: int, device: torch.device) -> int:
    """How many programs share the pixel axis: enough to give ~4 programs per SM, at least one
    pixel block each. The partial buffer is then at most ~4 * SMs * BLOCK_R * BLOCK_N floats."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(pixel_blocks, target // base_programs))


def grad_weights(features, grad_out, tables, channels, ksize, splits=None):
    """``(E, C, C, k, k)`` fp32 (fp64 for fp64): per edge ``Σ_{n,h,w} x_src(shifted) * grad_out_dst``,
    computed as the gradient of the patch weights (one launch) and folded by torch."""
    n, channels_total, height, width = features.shape
    num_edges = tables.edge_source.numel()
    accumulate = torch.float64 if features.dtype == torch.float64 else torch.float32
    if num_edges == 0:
        return torch.zeros(0, channels, channels, ksize, ksize, dtype=accumulate, device=features.device)
    patch = patch_y, patch_x = patch_shape(channels)
    patch_rows, patch_cols = triton.cdiv(height, patch_y), triton.cdiv(width, patch_x)
    reduction = (ksize + patch_y - 1) * (ksize + patch_x - 1) * channels
    columns = patch_y * patch_x * channels
    blocks = _blocks("grad_weight", features.dtype)
    block_n = _block_n(columns)
    rc_blocks = triton.cdiv(reduction, blocks.r) * triton.cdiv(columns, block_n)
    pixel_blocks = n * triton.cdiv(patch_rows * patch_cols, blocks.p)
    if splits is None:
        splits = _grad_weight_splits(num_edges * rc_blocks, pixel_blocks, features.device)
    partial = torch.empty(splits, num_edges, reduction, columns, dtype=accumulate, device=features.device)
    _message_passing_grad_weight_kernel[(num_edges, rc_blocks, splits)](
        features, grad_out, partial, tables.edge_source, tables.edge_destination,
        num_edges, n, height, width, channels_total, patch_rows, patch_cols,
        **_launch_constants(channels, ksize, features.dtype, blocks, block_n),
    )
    return _fold_patch_weights(partial.sum(0) if splits > 1 else partial[0], patch, channels, ksize)


def message_passing_forward(features, weights, bias, edges, num_branches):
    """The fused forward; ``edges`` is a hashable tuple of ``(src, dst)`` pairs. The arguments are
    those ``labfast.ops.message_passing`` checked, in one of the kernels' dtypes."""
    if features.dtype not in _TL_DTYPES:
        raise ValueError(f"features dtype {features.dtype} is not one of {', '.join(map(str, _TL_DTYPES))}")
    features = features.contiguous()
    weights = weights.contiguous()
    bias = None if bias is None else bias.contiguous()
    channels, ksize = weights.shape[1], weights.shape[-1]
    tables = routing_tables(edges, num_branches, features.device)
    return _convolve_and_route(features, _patch_weights(weights, patch_shape(channels)), bias, tables.by_destination,
                               channels, ksize)


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
        adjoint = _patch_weights(weights.flip(-2, -1).transpose(1, 2), patch_shape(channels))
        grad_features = _convolve_and_route(grad_out, adjoint, None, tables.by_source, channels, ksize)
    if needs_input_grad[1]:
        grad_weights_ = grad_weights(features, grad_out, tables, channels, ksize).to(weights.dtype)
    if needs_input_grad[2]:
        n, _, h, w = grad_out.shape
        accumulate = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
        per_branch = grad_out.view(n, -1, channels, h * w).sum(dim=(0, 3), dtype=accumulate)
        grad_bias = per_branch[tables.edge_destination.long()].to(weights.dtype)
    return grad_features, grad_weights_, grad_bias
