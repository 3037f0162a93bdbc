"""Each fused op's minimum traffic and its arithmetic: the rows of the predicted roofline that
say what a fused kernel could reach (inputs and outputs moved once; analytic FLOPs)."""
from __future__ import annotations

import math

import torch

from labfast.ops import OPS
from labfast.perf import devices, op_calls
from labfast.perf.inputs import DTYPES, meta_images, meta_model
from labfast.perf.op_calls import KernelCase, kernel_cases
from labfast.perf.traffic import Prediction, recording

HEATMAP_PAIR_FLOPS = 16
"""FLOPs per (pixel, curve segment) pair of the fused heatmap kernel: the point-to-segment
distance (``r = p - a``: 2, ``<r, d>``: 3, divide: 1, clamp: 2, ``e = r - t d``: 4, ``|e|^2``:
3) and the running minimum (1), an FMA counted as 2. fp32 on CUDA cores, not tensor cores."""


def heatmaps_prediction(batch: int, num_boundaries: int, size: int, dtype: str) -> Prediction:
    """The fused ground-truth op: every pixel against every curve segment, one pass, output written once."""
    from labfast.ops.boundary_heatmaps import samples_per_boundary

    segments = samples_per_boundary(size) - 1
    pairs = batch * num_boundaries * size * size * segments
    moved = batch * num_boundaries * (segments + 1) * 2 * 4 + batch * num_boundaries * size * size * DTYPES[dtype].itemsize
    return Prediction(f"boundary_heatmaps {batch}x{num_boundaries}x{size}x{size} P={segments + 1}", "fused op",
                      pairs * HEATMAP_PAIR_FLOPS, moved, compute="cuda cores",
                      note="fp32 CUDA-core arithmetic (no tensor cores): bound by the FP32 peak")


def _message_passing_traffic(case: KernelCase, itemsize: int) -> tuple[int, int, int, int]:
    """``(forward bytes, backward bytes, forward FLOPs, backward FLOPs)``: one convolution per edge;
    features in and out, weights (+ bias) once; the backward's gradients of the input and weights."""
    numel = [math.prod(s) for s in case.shapes if s is not None]
    n, _, h, w = case.shapes[0]
    edges, channels, _, k, _ = case.shapes[1]
    flops = 2 * n * edges * channels * channels * k * k * h * w
    forward = (numel[0] * 2 + sum(numel[1:])) * itemsize  # features in, out, weights (+ bias)
    backward = (numel[0] * 3 + 2 * sum(numel[1:])) * itemsize  # grad out + features in, grad in, weights in/out
    return forward, backward, flops, 2 * flops  # grad of the input and of the weights


def _output_elements(case: KernelCase) -> int:
    """Elements of the op's output at ``case``'s shapes: its reference run on meta tensors."""
    tensors = [torch.empty(shape, device="meta") for shape in case.shapes if shape is not None]
    return OPS[case.op].reference(*tensors).numel()


def _fusion_traffic(case: KernelCase, itemsize: int) -> tuple[int, int, int, int]:
    """The heatmap-feature fusions: one product per output element (resizing's interpolation not
    counted); the backward reads the gradient and the inputs and writes the inputs' gradients."""
    shapes = [s for s in case.shapes if s is not None]
    numel = [math.prod(s) for s in shapes]
    out = _output_elements(case)
    return (sum(numel) + out) * itemsize, (out + sum(numel) * 2) * itemsize, out, 2 * out


def _batch_norm_act_traffic(case: KernelCase, itemsize: int) -> tuple[int, int, int, int]:
    """``(forward bytes, backward bytes, forward FLOPs, backward FLOPs)`` of one training call of the
    fused batch norm (+ residual) + ReLU (``kernels/batch_norm_act.py``).

    Not one pass: the statistics must be complete before any output, so the forward reads ``x``
    twice (statistics, then the normalisation), reads the residual and writes ``out``; the backward
    reads ``grad`` and ``x`` twice (the sums ``Σ g``, ``Σ g x̂``, then ``grad x``; the ReLU's mask is
    recomputed from ``x``) and writes ``grad x``; with a residual it also reads ``out`` twice (the
    mask) and writes ``grad residual``. Per-channel vectors (a few KB) are left out. FLOPs per element
    (element-wise, CUDA cores; they never bound it): forward 8 (centre, square, accumulate; centre,
    scale, shift, ReLU), +1 for the residual; backward 13.
    """
    elements = math.prod(case.shapes[0])
    residual = int(case.shapes[5] is not None)
    return ((3 + residual) * elements * itemsize, (5 + 3 * residual) * elements * itemsize,
            (8 + residual) * elements, 13 * elements)


def _traffic(case: KernelCase, itemsize: int) -> tuple[int, int, int, int]:
    if case.op == "message_passing":
        return _message_passing_traffic(case, itemsize)
    if case.op == "batch_norm_act":
        return _batch_norm_act_traffic(case, itemsize)
    return _fusion_traffic(case, itemsize)


def fused_op_predictions(config_name: str, batch: int, dtype: str) -> list[Prediction]:
    """Each fused op at the shapes the model calls it with, forward and backward, from its minimum traffic."""
    rows = []
    for case in kernel_cases(config_name, batch):
        forward, backward, flops, backward_flops = _traffic(case, DTYPES[dtype].itemsize)
        rows.append(Prediction(f"{case.label} forward", "fused op", flops, forward))
        rows.append(Prediction(f"{case.label} backward", "fused op", backward_flops, backward))
    return rows


def batch_norm_act_step_prediction(config_name: str, batch: int, dtype: str,
                                   ceilings: list[devices.Ceiling]) -> Prediction:
    """Every batch norm (+ residual) + ReLU of one training step, forward and backward, fused
    (``bytes``, ``bound_seconds``: ``_batch_norm_act_traffic`` summed over the calls) beside the
    same calls unfused (``eager_seconds``: the per-operator roofline of the reference's
    ``batch_norm``, ``add``, ``relu`` and their backward, traced on the meta device): what the fusion
    saves at most in a step."""
    from labfast.ops.batch_norm_act import batch_norm_act_ref

    model = meta_model(config_name, "300w", dtype, train=True)

    def forward():
        with torch.no_grad():
            model(meta_images(model, batch, dtype))

    calls = [KernelCase.of(call) for call in op_calls.record(forward, ("batch_norm_act",))]
    itemsize = DTYPES[dtype].itemsize
    fused_bytes = fused_flops = 0
    arguments = []
    for case in calls:
        forward_bytes, backward_bytes, flops, backward_flops = _batch_norm_act_traffic(case, itemsize)
        fused_bytes += forward_bytes + backward_bytes
        fused_flops += flops + backward_flops
        tensors = [None if shape is None else torch.zeros(shape, device="meta", dtype=DTYPES[dtype]).requires_grad_(
            index in (0, 1, 2, 5)) for index, shape in enumerate(case.shapes)]
        arguments.append((tensors, torch.zeros(case.shapes[0], device="meta", dtype=DTYPES[dtype])))
    with recording() as unfused:  # the upstream gradients are made outside: not the op's traffic
        for (x, weight, bias, running_mean, running_var, residual), grad in arguments:
            batch_norm_act_ref(x, weight, bias, running_mean, running_var, residual, True).backward(grad)
    return Prediction(f"batch_norm_act: {len(calls)} calls of a training step, forward + backward", "fused op",
                      fused_flops, fused_bytes, eager_seconds={c.name: unfused.seconds(c, dtype) for c in ceilings},
                      compute="cuda cores",
                      note="bound: the fused kernels' traffic; eager: the same calls unfused (batch_norm, add, relu)")
