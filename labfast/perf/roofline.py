"""A predicted roofline of LAB at the model's shapes: FLOPs, bytes, intensity and the time a GPU's peaks allow.

Nothing here runs on a GPU: the model runs on the ``meta`` device (shapes only) under a dispatch
mode that sees every aten operator eager PyTorch would launch. For each operator it records

- FLOPs: ``torch.utils.flop_counter``'s formulas (2 per multiply-accumulate of convolutions and
  matrix products; element-wise work counts 0 there, as in ``labfast bench``);
- bytes: the operator's tensor inputs and outputs (views move nothing and count 0). This is what
  an *unfused* eager step must move at least; a fused kernel moves less.

The predicted time of one operator is ``max(FLOPs / peak FLOP/s, bytes / bandwidth)``; the
eager prediction of a whole step is the sum over its operators (no overlap between operators, no
launch overhead: the launch count is reported beside it, and at batch 1 it decides). The fused
ops of ``labfast.ops`` are predicted from their own minimum traffic (inputs + outputs once) and
their analytic arithmetic. Ceilings: ``labfast.perf.devices.ceilings`` (datasheet and measured).

This is the model a measured run is read against: ``labfast bench --predict`` prints it beside
(or, without a GPU, instead of) the measured table, and a measured row divided by its predicted
row says how far a path is from what the device allows.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import conv_flop_count, flop_registry

from labfast.perf import devices

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HEATMAP_PAIR_FLOPS = 16
"""FLOPs per (pixel, curve segment) pair of the fused heatmap kernel: the point-to-segment
distance (``r = p - a``: 2, ``<r, d>``: 3, divide: 1, clamp: 2, ``e = r - t d``: 4, ``|e|^2``:
3) and the running minimum (1), an FMA counted as 2. fp32 on CUDA cores, not tensor cores."""


@dataclasses.dataclass
class Traffic:
    """What a stretch of eager PyTorch asks of the device, operator by operator."""

    calls: int = 0
    flops: int = 0
    bytes: int = 0
    per_operator: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (name, flops, bytes)

    def operator_seconds(self, ceiling: devices.Ceiling, dtype: str) -> list[tuple[str, float]]:
        """Per operator, ``(name, max(FLOPs / peak, bytes / bandwidth))``."""
        peak = ceiling.flops(dtype)
        return [(name, max(flops / peak, moved / ceiling.bandwidth)) for name, flops, moved in self.per_operator]

    def seconds(self, ceiling: devices.Ceiling, dtype: str) -> float:
        """The eager prediction: the sum of ``operator_seconds``."""
        return sum(seconds for _, seconds in self.operator_seconds(ceiling, dtype))

    def by_group(self) -> dict[str, tuple[int, int, int]]:
        """``group -> (calls, FLOPs, bytes)``, groups from ``operator_group``."""
        groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for name, flops, moved in self.per_operator:
            group = groups[operator_group(name)]
            group[0] += 1
            group[1] += flops
            group[2] += moved
        return {name: tuple(values) for name, values in groups.items()}


_GROUPS = (
    ("convolution", ("convolution",)),
    ("matrix product", ("mm", "addmm", "bmm", "matmul", "einsum")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("activation", ("relu", "sigmoid", "threshold_backward", "leaky_relu", "hardtanh")),
    ("resampling", ("upsample", "max_pool", "avg_pool", "adaptive_avg_pool", "grid_sampler", "pixel_shuffle")),
    ("concatenation and copies", ("cat", "copy", "clone", "contiguous", "_to_copy", "stack", "slice_backward",
                                  "select_backward", "index", "gather", "scatter", "zeros", "ones", "full",
                                  "fill", "empty", "new_", "zero")),
    ("optimizer", ("_foreach",)),
    ("reduction and loss", ("sum", "mean", "mse_loss", "binary_cross_entropy", "norm", "amax", "amin", "max", "min")),
    ("element-wise arithmetic", ("add", "sub", "mul", "div", "exp", "sqrt", "rsqrt", "pow", "neg", "where",
                                 "clamp", "lerp", "addcmul", "addcdiv", "reciprocal", "abs", "sign", "lt", "gt",
                                 "ge", "le", "eq", "ne", "logical")),
)


def operator_group(name: str) -> str:
    """A coarse family of an aten operator name (``aten.native_batch_norm.default`` -> ``batch norm``)."""
    base = name.split(".")[1] if name.startswith("aten.") else name
    for group, stems in _GROUPS:
        if any(base.startswith(stem) or base.startswith(f"{stem}_") for stem in stems):
            return group
    return "other"


_NOT_KERNELS = {"aten._local_scalar_dense.default", "aten.detach.default", "aten._unsafe_view.default",
                "aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default",
                "aten.new_empty.default", "aten.new_empty_strided.default"}
"""Operators that launch no device kernel: a host read of a scalar (Adam's step count on the meta
device; on a GPU it lives on the host), autograd's detach and ``_unsafe_view`` (views whose schema
does not say so), and allocations (``empty*``: memory from the caching allocator, nothing written)."""


def operator_flops(func, args, kwargs, out) -> int:
    """FLOPs of one aten call: ``flop_registry``'s formulas, with grouped convolutions' backward fixed.

    torch's formula for ``convolution_backward`` ignores ``groups`` and over-counts a grouped
    convolution's backward about ``groups``-fold (13 groups: 14x; the message-passing convolutions are
    grouped). Here it is the forward's FLOPs once per gradient asked for (input, weight), as for any
    convolution: the same multiply-accumulates, read in another order.
    """
    if func is torch.ops.aten.convolution_backward.default:
        grad_output, inputs, weight = args[:3]
        transposed, output_mask = args[7], args[10]
        forward = conv_flop_count(inputs.shape, weight.shape, grad_output.shape, transposed)
        return int(forward) * (int(output_mask[0]) + int(output_mask[1]))
    packet = func._overloadpacket
    return int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0


def _aliases(func) -> bool:
    """True when every output of ``func`` is a view of an input (nothing moves)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _tensor_bytes(values) -> int:
    leaves, _ = tree_flatten(values)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class _TrafficMode(TorchDispatchMode):
    def __init__(self, traffic: Traffic):
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket not in flop_registry:
            # a composite operator (``conv2d`` under inference_mode reaches a mode undecomposed):
            # record the operators it is made of, as the kernels that run are theirs
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        name = str(func)
        if name in _NOT_KERNELS or name.startswith("profiler.") or _aliases(func):
            return out
        flops = operator_flops(func, args, kwargs, out)
        moved = _tensor_bytes((args, kwargs)) + _tensor_bytes(out)
        self.traffic.calls += 1
        self.traffic.flops += flops
        self.traffic.bytes += moved
        self.traffic.per_operator.append((name, flops, moved))
        return out


@contextlib.contextmanager
def recording() -> Iterator[Traffic]:
    """Record every aten operator run inside the block (use meta tensors: nothing is computed)."""
    traffic = Traffic()
    with _TrafficMode(traffic):
        yield traffic


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One row: a fused op call, a whole inference or a training step, at one batch and dtype."""

    name: str
    kind: str  # "fused op" | "model"
    flops: int
    bytes: int  # the minimum (fused op) or the unfused eager traffic (model)
    calls: int | None = None  # aten operators (model rows): a proxy for kernel launches
    eager_seconds: dict[str, float] | None = None  # per ceiling name, model rows (per-operator sum)
    compute: str = "tensor"  # the peak that bounds it: "tensor" cores or "cuda cores" (fp32)
    note: str = ""

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else float("inf")

    def bound_seconds(self, ceiling: devices.Ceiling, dtype: str) -> float:
        """``max(FLOPs / peak, bytes / bandwidth)``: the least time the whole row could take."""
        peak = ceiling.fp32_flops if self.compute == "cuda cores" else ceiling.flops(dtype)
        return max(self.flops / peak, self.bytes / ceiling.bandwidth)


def _model(config_name: str, scheme: str, dtype: str, train: bool):
    from labfast.model import LAB, config_by_name

    with torch.device("meta"):
        model = LAB(scheme, config_by_name(config_name)).to(DTYPES[dtype])
    return model.train(train)


def _images(model, batch: int, dtype: str) -> torch.Tensor:
    size = model.config.input_size
    return torch.zeros(batch, 3, size, size, device="meta", dtype=DTYPES[dtype])


def inference_traffic(config_name: str, batch: int, dtype: str, scheme: str = "300w") -> Traffic:
    """Every operator of ``model(images)`` in eval mode, reference ops (what eager launches)."""
    from labfast.perf.bench import forced_backend

    model = _model(config_name, scheme, dtype, train=False)
    images = _images(model, batch, dtype)
    with torch.no_grad(), forced_backend("reference"), recording() as traffic:
        model(images)
    return traffic


def train_step_traffic(config_name: str, batch: int, dtype: str, scheme: str = "300w") -> Traffic:
    """Every operator of one LAB training step but the ground-truth heatmaps (predicted on their own).

    The step of ``labfast.train.step.train_step``: forward, heatmap + landmark + adversarial losses,
    backward, Adam on estimator + regressor, then the discriminator on real and estimated heatmaps,
    its backward and its Adam step. In ``bf16`` the model's tensors are bf16 throughout (autocast
    keeps a few reductions in fp32; the difference is small next to the activations).
    """
    from labfast.perf.bench import forced_backend
    from labfast.model import losses

    model = _model(config_name, scheme, dtype, train=True)
    images = _images(model, batch, dtype)
    heatmap = model.config.heatmap_size
    num_boundaries = model.boundary_scheme.num_boundaries
    target = torch.zeros(batch, num_boundaries, heatmap, heatmap, device="meta", dtype=DTYPES[dtype])
    landmarks = torch.zeros(batch, model.scheme.num_points, 2, device="meta")
    generator = [p for name, p in model.named_parameters() if not name.startswith("discriminator.")]
    optimizer = torch.optim.Adam(generator, foreach=True)
    d_optimizer = torch.optim.Adam(model.discriminator.parameters(), foreach=True)
    for group in (*optimizer.param_groups, *d_optimizer.param_groups):  # Adam's step counters live on the CPU
        group["capturable"] = False
    with forced_backend("reference"), recording() as traffic:
        output = model(images)
        loss = (losses.heatmap_loss(output.heatmaps, target)
                + losses.landmark_loss(output.landmarks, landmarks, model.config.input_size)
                + losses.adversarial_loss(model.discriminator(output.heatmaps[-1])))
        loss.backward()
        optimizer.step()
        logits = model.discriminator(torch.cat([target, output.heatmaps[-1].detach()]))
        d_loss = logits.float().square().mean()  # the BCE's shape of work: one reduction over (2N,)
        d_loss.backward()
        d_optimizer.step()
    return traffic


def heatmaps_prediction(batch: int, num_boundaries: int, size: int, dtype: str) -> Prediction:
    """The fused ground-truth op: every pixel against every curve segment, one pass, output written once."""
    from labfast.ops.boundary_heatmaps import samples_per_boundary

    segments = samples_per_boundary(size) - 1
    pairs = batch * num_boundaries * size * size * segments
    moved = batch * num_boundaries * (segments + 1) * 2 * 4 + batch * num_boundaries * size * size * DTYPES[dtype].itemsize
    return Prediction(f"boundary_heatmaps {batch}x{num_boundaries}x{size}x{size} P={segments + 1}", "fused op",
                      pairs * HEATMAP_PAIR_FLOPS, moved, compute="cuda cores",
                      note="fp32 CUDA-core arithmetic (no tensor cores): bound by the FP32 peak")


def fused_op_predictions(config_name: str, batch: int, dtype: str) -> list[Prediction]:
    """Each fused op at the shapes the model calls it with, forward and backward, from its minimum traffic."""
    from labfast.perf.bench import kernel_cases

    itemsize = DTYPES[dtype].itemsize
    rows = []
    for case in kernel_cases(config_name, batch):
        shapes = [s for s in case.shapes if s is not None]
        numel = [int(torch.Size(s).numel()) for s in shapes]
        if case.op == "message_passing":
            n, kc, h, w = case.shapes[0]
            edges, channels, _, k, _ = case.shapes[1]
            flops = 2 * n * edges * channels * channels * k * k * h * w
            forward = (numel[0] * 2 + sum(numel[1:])) * itemsize  # features in, out, weights (+ bias)
            backward = (numel[0] * 3 + 2 * sum(numel[1:])) * itemsize  # grad out + features in, grad in, weights in/out
            backward_flops = 2 * flops  # grad of the input and of the weights
        elif case.op == "batch_norm_act":
            forward, backward, flops, backward_flops = _batch_norm_act_traffic(case, itemsize)
        else:
            out = {"input_fusion": numel[0] * (shapes[1][1] + 1),
                   "heatmap_feature_concat": _concat_out(shapes),
                   "feature_fusion": 2 * numel[0]}[case.op]
            flops = out  # one product per output element (resizing's interpolation not counted)
            forward = (sum(numel) + out) * itemsize
            backward = (out + sum(numel) * 2) * itemsize  # grad out + inputs in, grads of the inputs out
            backward_flops = 2 * flops
        rows.append(Prediction(f"{case.label} forward", "fused op", flops, forward))
        rows.append(Prediction(f"{case.label} backward", "fused op", backward_flops, backward))
    return rows


def _batch_norm_act_traffic(case, itemsize: int) -> tuple[int, int, int, int]:
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


def batch_norm_act_step_prediction(config_name: str, batch: int, dtype: str,
                                   ceilings: list[devices.Ceiling]) -> Prediction:
    """Every batch norm (+ residual) + ReLU of one training step, forward and backward, fused
    (``bytes``, ``bound_seconds``: ``_batch_norm_act_traffic`` summed over the calls) beside the
    same calls unfused (``eager_seconds``: the per-operator roofline of the reference's
    ``batch_norm``, ``add``, ``relu`` and their backward, traced on the meta device): what the fusion
    saves at most in a step."""
    from labfast import ops
    from labfast.ops.batch_norm_act import batch_norm_act_ref
    from labfast.perf.bench import KernelCase, forced_backend

    model = _model(config_name, "300w", dtype, train=True)
    calls: list[KernelCase] = []
    original = ops.batch_norm_act

    def record(x, weight, bias, running_mean, running_var, residual=None, *args):
        shapes = tuple(None if t is None else tuple(t.shape) for t in (x, weight, bias, running_mean, running_var,
                                                                         residual))
        calls.append(KernelCase("batch_norm_act", shapes))
        return original(x, weight, bias, running_mean, running_var, residual, *args)

    ops.batch_norm_act = record
    try:
        with torch.no_grad(), forced_backend("reference"):
            model(_images(model, batch, dtype))
    finally:
        ops.batch_norm_act = original
    itemsize = DTYPES[dtype].itemsize
    fused_bytes = fused_flops = 0
    arguments = []
    for case in calls:
        forward, backward, flops, backward_flops = _batch_norm_act_traffic(case, itemsize)
        fused_bytes += forward + backward
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


def _concat_out(shapes: list[tuple[int, ...]]) -> int:
    """Output elements of ``M ⊕ F``: ``(N, K + C, H, W)`` with M ``(N, K, h, w)``, F ``(N, C, H, W)``."""
    (n, k, _, _), (_, c, h, w) = shapes
    return n * (k + c) * h * w


def model_prediction(name: str, traffic: Traffic, dtype: str, ceilings: list[devices.Ceiling]) -> Prediction:
    return Prediction(name, "model", traffic.flops, traffic.bytes, traffic.calls,
                      {c.name: traffic.seconds(c, dtype) for c in ceilings},
                      note="bytes: unfused eager traffic (every operator's inputs and outputs)")


def predict(config_name: str = "paper", batch: int = 256, dtype: str = "bf16",
            ceilings: list[devices.Ceiling] | None = None) -> dict[str, Any]:
    """The whole predicted table for ``labfast bench --predict`` (plain data, JSON-ready)."""
    from labfast import schemes

    ceilings = ceilings or devices.ceilings()
    num_boundaries = schemes.get("300w").num_boundaries
    inference = inference_traffic(config_name, batch, dtype)
    inference_one = inference_traffic(config_name, 1, dtype)
    train = train_step_traffic(config_name, batch, dtype)
    heatmap_size = _model(config_name, "300w", dtype, train=False).config.heatmap_size
    rows = [
        model_prediction(f"inference batch {batch}", inference, dtype, ceilings),
        model_prediction("inference batch 1", inference_one, dtype, ceilings),
        model_prediction(f"training step batch {batch} (without ground truth)", train, dtype, ceilings),
        heatmaps_prediction(batch, num_boundaries, heatmap_size, dtype),
        *fused_op_predictions(config_name, batch, dtype),
        batch_norm_act_step_prediction(config_name, batch, dtype, ceilings),
    ]
    return {
        "config": config_name, "batch": batch, "dtype": dtype,
        "ceilings": [dataclasses.asdict(c) for c in ceilings],
        "rows": [_row_dict(row, ceilings, dtype) for row in rows],
        "train_step_groups": _groups(train, ceilings, dtype),
    }


def _row_dict(row: Prediction, ceilings: list[devices.Ceiling], dtype: str) -> dict:
    return {**dataclasses.asdict(row), "intensity": row.intensity,
            "bound_seconds": {c.name: row.bound_seconds(c, dtype) for c in ceilings}}


def _groups(traffic: Traffic, ceilings: list[devices.Ceiling], dtype: str) -> list[dict]:
    """Operator families of a step, largest predicted time first: where fusion could save the most."""
    reference = ceilings[0]
    seconds_by_group: dict[str, float] = collections.defaultdict(float)
    for name, seconds in traffic.operator_seconds(reference, dtype):
        seconds_by_group[operator_group(name)] += seconds
    rows = []
    for group, (calls, flops, moved) in traffic.by_group().items():
        seconds = seconds_by_group[group]
        rows.append({"group": group, "calls": calls, "flops": flops, "bytes": moved,
                     "seconds": seconds, "ceiling": reference.name})
    return sorted(rows, key=lambda r: -r["seconds"])


def format_prediction(result: dict) -> str:
    """The predicted table as text: one line per row, predicted time per ceiling."""
    names = [c["name"] for c in result["ceilings"]]
    lines = [f"Predicted roofline: config {result['config']}, {result['dtype']}, batch {result['batch']} "
             f"(meta-device trace; no GPU ran)",
             "Ceilings: " + "; ".join(f"{c['name']}: {c['bf16_flops'] / 1e12:.0f} TFLOP/s bf16, "
                                      f"{c['fp32_flops'] / 1e12:.0f} fp32, {c['bandwidth'] / 1e12:.2f} TB/s "
                                      f"({c['source']})" for c in result["ceilings"])]
    header = f"{'row':<58} {'GFLOP':>9} {'MB':>9} {'FLOP/B':>7} {'calls':>6} " + " ".join(
        f"{'bound ' + n:>24}" for n in names)
    lines += [header, "-" * len(header)]
    for row in result["rows"]:
        calls = "" if row["calls"] is None else str(row["calls"])
        cells = []
        for name in names:
            bound = row["bound_seconds"][name] * 1e3
            cell = f"{bound:.3f} ms"
            if row["eager_seconds"]:
                cell += f" (eager {row['eager_seconds'][name] * 1e3:.2f})"
            cells.append(f"{cell:>24}")
        lines.append(f"{row['name'][:58]:<58} {row['flops'] / 1e9:>9.2f} {row['bytes'] / 1e6:>9.1f} "
                     f"{row['intensity']:>7.1f} {calls:>6} " + " ".join(cells))
    lines.append("")
    lines.append(f"Training step by operator family ({result['train_step_groups'][0]['ceiling']}, "
                 "per-operator roofline; what fusion could remove is the memory-bound families' time):")
    for group in result["train_step_groups"]:
        lines.append(f"  {group['group']:<26} {group['calls']:>6} calls {group['bytes'] / 1e9:>8.2f} GB "
                     f"{group['flops'] / 1e12:>8.3f} TFLOP {group['seconds'] * 1e3:>8.2f} ms")
    return "\n".join(lines)


def ceiling_for(device_name: str) -> devices.Ceiling | None:
    """The measured ceiling of the GPU named ``device_name`` (H100 or H200), or ``None``."""
    lowered = device_name.lower()
    for ceiling in devices.ceilings():
        model = ceiling.name.split()[0].lower()
        if ceiling.name.endswith("measured") and model in lowered:
            return ceiling
    return None


def compare(rows: list[dict], predictions: list[dict], device_name: str) -> list[dict]:
    """Measured rows of ``labfast bench`` beside their predicted time: ``measured / predicted`` per row.

    Whole-model rows (``infer``, ``train``) are compared with the eager per-operator prediction
    (the reference path's traffic; a fused or compiled path should come in under it) and with the
    compute floor ``FLOPs / peak``; a training step's prediction adds the ground-truth heatmaps.
    Kernel rows are compared with the op's own bound (minimum traffic). Rows without a prediction
    at their batch and dtype are left out.
    """
    ceiling = ceiling_for(device_name)
    if ceiling is None:
        return []
    by_key = {(p["batch"], p["dtype"]): {row["name"]: row for row in p["rows"]} for p in predictions}
    out = []
    for row in rows:
        if row.get("median_ms") is None:
            continue
        predicted = by_key.get((row["batch"], row["dtype"]))
        if predicted is None:
            continue
        heatmaps = next((p for name, p in predicted.items() if name.startswith("boundary_heatmaps")), None)
        if row["section"] == "infer":
            model = predicted.get(f"inference batch {row['batch']}")
            extra = 0.0
        elif row["section"] == "train":
            model = predicted.get(f"training step batch {row['batch']} (without ground truth)")
            extra = heatmaps["bound_seconds"][ceiling.name] if heatmaps else 0.0
        elif row["section"] == "kernels":
            model = predicted.get(f"{row['case']} forward")
            extra = 0.0
        else:
            continue
        if model is None:
            continue
        floor = model["flops"] / ceiling.flops(row["dtype"]) + extra
        eager = (model["eager_seconds"] or model["bound_seconds"])[ceiling.name] + extra
        measured = row["median_ms"] / 1e3
        out.append({"section": row["section"], "case": row["case"], "backend": row["backend"],
                    "dtype": row["dtype"], "batch": row["batch"], "measured_ms": row["median_ms"],
                    "predicted_ms": eager * 1e3, "floor_ms": floor * 1e3,
                    "measured_over_predicted": measured / eager, "ceiling": ceiling.name})
    return out


def format_comparison(comparison: list[dict]) -> str:
    if not comparison:
        return "measured / predicted: no prediction for this device (labfast.perf.devices.ceilings knows H100 and H200)"
    lines = [f"Measured / predicted ({comparison[0]['ceiling']}; predicted = per-operator roofline of the "
             "reference's traffic, or the op's minimum traffic for kernels; floor = FLOPs / peak)",
             f"{'section':<8} {'case':<46} {'backend':<16} {'dtype':<5} {'batch':>5} {'measured ms':>12} "
             f"{'predicted ms':>13} {'floor ms':>9} {'ratio':>6}"]
    for c in comparison:
        lines.append(f"{c['section']:<8} {c['case'][:46]:<46} {c['backend']:<16} {c['dtype']:<5} {c['batch']:>5} "
                     f"{c['measured_ms']:>12.3f} {c['predicted_ms']:>13.3f} {c['floor_ms']:>9.3f} "
                     f"{c['measured_over_predicted']:>6.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- launches per forward


@contextlib.contextmanager
def triton_launches() -> Iterator[list[str]]:
    """Record every Triton kernel launched inside the block, by name, once per launch, **without
    running it** (its outputs stay unwritten): for counting launches only. Catches compiled
    (``JITFunction``) and interpreted (``TRITON_INTERPRET=1``) kernels alike."""
    from triton.runtime import interpreter, jit

    launched: list[str] = []
    classes = [jit.JITFunction, interpreter.InterpretedFunction]
    saved = [cls.run for cls in classes]

    def record(self, *args, **kwargs):
        launched.append(getattr(self, "__name__", None) or getattr(self.fn, "__name__", "triton kernel"))

    for cls in classes:
        cls.run = record
    try:
        yield launched
    finally:
        for cls, run in zip(classes, saved):
            cls.run = run


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


LAUNCH_BACKENDS = ("reference", "triton")


def launch_count(config_name: str, batch: int = 1, backend: str = "reference", scheme: str = "300w") -> dict[str, Any]:
    """Kernel launches of one inference forward (eval mode), counted on the CPU: a proxy for the CUDA
    launches that decide batch-1 latency.

    ``operators``: the aten operators that launch a kernel (views, detach and allocations excluded,
    composite operators counted as what they decompose into); ``triton``: the Triton kernels the fast
    paths launch (recorded, not run); ``total``: their sum. ``labfast_ops``: the ``labfast::`` custom
    operators called, shown apart and not added to the total: what launches inside one is its
    Triton kernels (counted) or aten operators (not seen by the dispatch mode there). ``backend``: ``reference`` (every op its plain PyTorch reference) or ``triton`` (every
    fast path forced to Triton; the kernels are only counted, so no GPU and no interpreter run them).
    """
    if backend not in LAUNCH_BACKENDS:
        raise ValueError(f"launch counts are for backends {LAUNCH_BACKENDS}, not {backend!r}")
    from labfast.perf.bench import forced_backend
    from labfast.model import LAB, config_by_name

    model = LAB(scheme, config_by_name(config_name)).eval()
    size = model.config.input_size
    images = torch.zeros(batch, 3, size, size)
    # forced Triton on CPU tensors passes dispatch under TRITON_INTERPRET=1; the self-check would run
    # the (unrun) kernels and compare garbage, so it is off while counting
    fast = _environment(TRITON_INTERPRET="1", LABFAST_SELFCHECK="0") if backend == "triton" else contextlib.nullcontext()
    with torch.no_grad(), forced_backend(backend), fast, recording() as traffic, triton_launches() as launched:
        model(images)
    custom = sum(1 for name, _, _ in traffic.per_operator if name.startswith("labfast."))
    operators = traffic.calls - custom
    return {"config": config_name, "batch": batch, "backend": backend, "operators": operators,
            "triton": len(launched), "total": operators + len(launched), "labfast_ops": custom,
            "kernels": dict(collections.Counter(launched))}


def format_launch_counts(counts: list[dict[str, Any]]) -> str:
    """The launch-count table of ``labfast bench``."""
    lines = ["kernel launches per inference forward (counted on the CPU; a proxy for CUDA launches)",
             f"{'config':<8} {'batch':>5} {'backend':<10} {'operators':>9} {'triton':>7} {'total':>7} {'labfast ops':>11}"]
    for row in counts:
        lines.append(f"{row['config']:<8} {row['batch']:>5} {row['backend']:<10} {row['operators']:>9} "
                     f"{row['triton']:>7} {row['total']:>7} {row['labfast_ops']:>11}")
    return "\n".join(lines)
