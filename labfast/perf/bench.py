"""``labfast bench``: training, inference, heatmap and kernel speed on this device, in one table.

    labfast bench [--what train|infer|heatmaps|kernels|all] [--batch 1,32,256] [--dtype fp32,bf16]
                  [--backend reference,compile,fast] [--config paper|small|tiny] [--repeats N] [--json PATH]
    labfast bench --plan 'infer@256=reference,compile,fast+compile;infer@1=fast+cudagraphs;kernels@256' --budget 150

``--plan`` names rows in the order they run (``SECTION@BATCH[=BACKEND,...]``), most wanted first;
with ``--budget`` the rows not begun within that many seconds are recorded as ``skipped``. The JSON
is rewritten after every row, so a run killed from outside still leaves the rows it finished
(``benchmarks/gpu_run.py`` asks for its rows this way).

Backends (each row names the one it measured; one that cannot run here is a row with the reason):
- ``reference``: ``LABFAST_BACKEND=reference``, eager. Every ratio divides by this row, measured
  in the same run on the same device, same case, dtype and batch.
- ``compile``: ``torch.compile`` of the reference model (or of the op's ``*_ref``). Not by
  default on a CPU, where compiling the model takes minutes: name it there to have it.
- ``fast`` expands to ``fast`` (the ``labfast.ops`` fast paths, eager), ``fast+compile`` (fast
  paths inside ``torch.compile``) and, for inference, ``fast+cudagraphs`` (the eager fast-path
  forward captured once as a CUDA graph and replayed, ``labfast.inference.cuda_graphs``: what
  ``FaceAligner(cuda_graphs=True)`` runs, the low-latency path). In the kernel
  and heatmap sections ``fast`` is each fused op with its Triton and CUDA paths forced in turn.
  Fast paths run on CUDA tensors only: on the CPU they are listed as unavailable.

What is measured:
- ``train``: images/s of one full LAB step (``labfast.train.step.train_step``: estimator + regressor
  forward/backward, ground-truth heatmaps made on the device by ``labfast.ops.boundary_heatmaps``,
  the discriminator's step, both optimiser steps) on random 256x256 uint8 images and synthetic 300-W faces.
- ``infer``: faces/s and latency (median, p99) of ``model(images)`` in eval mode.
- ``heatmaps``: heatmaps/s of the fused op vs the per-face OpenCV raster baseline (row ``opencv``:
  ``labfast.boundary.heatmaps`` one face at a time, as data loaders make them; always on the CPU;
  not the ground truth, see its docstring) vs the plain torch reference ``boundary_heatmaps_ref``.
- ``kernels``: every fused op at the shapes the model calls it with (recorded from one forward
  pass on the meta device), forward only, vs its ``*_ref`` and ``torch.compile(*_ref)``.

Figures: FLOPs are those of the reference computation counted by ``labfast.perf.roofline`` (torch's
flop formulas, 2 per multiply-accumulate of convolutions and matrix products, with grouped
convolutions' backward corrected; element-wise work is not counted), the
same figure dividing every backend's time; bytes are inputs + outputs of the op. The share of peak
is a roofline share: achieved / min(peak FLOP/s, intensity x bandwidth), with the vendor peaks of
``labfast.perf.devices`` (none on a CPU). ``bf16`` runs the model under ``torch.autocast`` and the ops
on bf16 tensors. Timing: ``triton.testing.do_bench`` on a GPU (warm-up, CUDA events, L2 flushed
between calls, median and p99); on a CPU a time-based loop of ``perf_counter`` per call after
one warm-up call (compilation happens in the warm-up and is reported as ``warmup_s``).
Peak memory: ``torch.cuda.max_memory_allocated`` during the timed calls; on a CPU the growth of
the process's peak RSS over the timed calls (``/proc/self/clear_refs`` resets the high-water mark).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import importlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from labfast.perf import devices

logger = logging.getLogger("labfast.perf.bench")

SECTIONS = ("train", "infer", "heatmaps", "kernels")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BACKEND_GROUPS = ("reference", "compile", "fast")
SCHEME = "300w"  # the synthetic faces are 300-W shaped (68 points), the paper's main benchmark
INPUT_SIZE = 256
HEATMAP_SIZE = 64
SIGMA = 1.0

FAST_NEEDS_CUDA = ("fast paths (Triton / CUDA kernels) need CUDA tensors; on a CPU every op takes the "
                   "reference (TRITON_INTERPRET=1 is a correctness tool, not a fast path)")


class Unavailable(Exception):
    """A backend that cannot run on this device or install; the message is the reason."""


# ----------------------------------------------------------------------------- inputs


def _face_template() -> np.ndarray:
    """A frontal 300-W shaped face, ``(68, 2)`` in units of half the face width (x right, y down).

    Contour, brows, nose, eyes and lips as arcs and ellipses in the 300-W point order: a plausible
    face, so that curve lengths (which set the OpenCV baseline's cost) are those of real faces.
    """
    points = np.zeros((68, 2))
    t = np.linspace(0.0, math.pi, 17)  # contour: left temple, chin, right temple
    points[0:17] = np.stack([-0.8 * np.cos(t), -0.15 + 0.95 * np.sin(t)], axis=1)
    s = np.linspace(0.0, 1.0, 5)
    points[17:22] = np.stack([-0.65 + 0.5 * s, -0.45 - 0.08 * np.sin(math.pi * s)], axis=1)
    points[22:27] = np.stack([0.15 + 0.5 * s, -0.45 - 0.08 * np.sin(math.pi * s)], axis=1)
    points[27:31] = np.stack([np.zeros(4), np.linspace(-0.3, 0.15, 4)], axis=1)
    points[31:36] = np.stack([np.linspace(-0.18, 0.18, 5), 0.22 + 0.05 * np.cos(np.linspace(-1.2, 1.2, 5))], axis=1)

    def ellipse(centre_x, centre_y, a, b, degrees):
        angles = np.radians(degrees)
        return np.stack([centre_x + a * np.cos(angles), centre_y - b * np.sin(angles)], axis=1)

    eye = [180, 120, 60, 0, -60, -120]
    points[36:42] = ellipse(-0.38, -0.22, 0.15, 0.06, eye)
    points[42:48] = ellipse(0.38, -0.22, 0.15, 0.06, eye)
    points[48:60] = ellipse(0.0, 0.5, 0.35, 0.15, [180, 150, 120, 90, 60, 30, 0, -30, -60, -90, -120, -150])
    points[60:68] = ellipse(0.0, 0.5, 0.25, 0.05, [180, 135, 90, 45, 0, -45, -90, -135])
    return points


def synthetic_faces(count: int, size: float, seed: int = 0) -> torch.Tensor:
    """``(count, 68, 2)`` float32 300-W landmarks in a ``size`` x ``size`` crop (pixel coordinates).

    The template scaled to about 80 % of the crop, rotated by up to 15 degrees, scaled by +-10 %,
    shifted by up to 5 % of the crop, each point jittered by 0.5 % of the crop.
    """
    rng = np.random.default_rng(seed)
    template = _face_template()
    angle = np.radians(rng.uniform(-15, 15, count))
    scale = 0.4 * size * rng.uniform(0.9, 1.1, count)
    rotation = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    faces = np.einsum("nij,pj->npi", rotation, template) * scale[:, None, None]
    faces += (size - 1) / 2 + rng.uniform(-0.05, 0.05, (count, 1, 2)) * size
    faces += rng.normal(0.0, 0.005 * size, faces.shape)
    return torch.from_numpy(faces.astype(np.float32))


def random_images(count: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``(count, 3, 256, 256)`` float32 uniform in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, INPUT_SIZE, INPUT_SIZE, generator=generator).to(device)


# ----------------------------------------------------------------------------- backends


@contextlib.contextmanager
def forced_backend(value: str | None) -> Iterator[None]:
    """``LABFAST_BACKEND=value`` (``None``: no forcing, the default dispatch) for the duration;
    per-op ``LABFAST_BACKEND_<OP>`` settings of the caller are lifted too, so that a row measures
    what it names."""
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("LABFAST_BACKEND")}
    if value is not None:
        os.environ["LABFAST_BACKEND"] = value
    try:
        yield
    finally:
        for key in [key for key in os.environ if key.startswith("LABFAST_BACKEND")]:
            del os.environ[key]
        os.environ.update(saved)


def _under(value: str | None, fn: Callable[[], Any]) -> Callable[[], Any]:
    def call():
        with forced_backend(value):
            return fn()
    return call


def model_backends(section: str, groups: tuple[str, ...]) -> list[str]:
    """Row backends of the train / infer sections for the requested groups (reference always first)."""
    names = ["reference"]
    if "compile" in groups:
        names.append("compile")
    if "fast" in groups:
        names += ["fast", "fast+compile"] + (["fast+cudagraphs"] if section == "infer" else [])
    return names


def _check_fast(backend: str, device: torch.device) -> None:
    if backend.startswith("fast") and device.type != "cuda":
        raise Unavailable(FAST_NEEDS_CUDA)
    if backend == "fast+cudagraphs" and device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")


def _compile(module_or_fn, backend: str):
    """A fresh compiled callable (dynamo's caches reset, so no recompile limit is reached and no
    earlier backend's graphs are reused); static shapes, one compile per case."""
    torch._dynamo.reset()
    return torch.compile(module_or_fn, dynamic=False)


def _dispatch(backend: str) -> str | None:
    return "reference" if backend in ("reference", "compile") else None


# ----------------------------------------------------------------------------- model cases


def _train_config(config_name: str, batch: int, dtype: str):
    from labfast.train import presets

    config = presets.get("300w")
    config.model = config_name
    config.batch_size = batch
    config.amp = "bf16" if dtype == "bf16" else "none"
    config.input_size, config.heatmap_size, config.sigma = INPUT_SIZE, HEATMAP_SIZE, SIGMA
    return config


def prepare_train_step(config_name: str, batch: int, dtype: str, backend: str,
                       device: torch.device, seed: int = 0) -> Callable[[], dict]:
    """A callable running one full LAB training step (``labfast.train.step.train_step``) per call.

    Raises ``Unavailable`` when ``backend`` cannot run on ``device``.
    """
    from labfast.train.build import build_model
    from labfast.train.runtime import Runtime
    from labfast.train.step import build_trainer, train_step

    _check_fast(backend, device)
    if backend == "fast+cudagraphs":
        raise Unavailable("CUDA graphs are measured for inference only")
    config = _train_config(config_name, batch, dtype)
    torch.manual_seed(seed)
    model = build_model(config).to(device)
    if model.discriminator is None:
        raise Unavailable(f"config {config_name!r} has no discriminator; the LAB step needs one")
    trainer = build_trainer(model, config, Runtime(device=device))
    if "compile" in backend:
        trainer.forward = _compile(model, backend)
    images = (random_images(batch, device, seed) * 255).to(torch.uint8)  # crops reach the step as uint8
    landmarks = synthetic_faces(batch, INPUT_SIZE, seed).to(device)

    def step() -> dict:
        return train_step(trainer, images, landmarks)

    return _under(_dispatch(backend), step)


def prepare_inference(config_name: str, batch: int, dtype: str, backend: str,
                      device: torch.device, seed: int = 0) -> Callable[[], Any]:
    """A callable running ``model(images)`` (eval mode, inference mode, autocast for bf16)."""
    from labfast.model import LAB, config_by_name

    _check_fast(backend, device)
    torch.manual_seed(seed)
    model = LAB(SCHEME, config_by_name(config_name)).to(device).eval()
    forward = _compile(model, backend) if "compile" in backend else model
    images = random_images(batch, device, seed)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    if backend == "fast+cudagraphs":  # what FaceAligner(cuda_graphs=True) runs; captured in the warm-up call
        from labfast.inference.cuda_graphs import CudaGraphModel

        def outputs(batch_images):
            with autocast():
                output = model(batch_images)
            return output.landmarks, output.heatmaps[-1]

        graphed = CudaGraphModel(outputs, device, max_batch=batch)
        return _under(_dispatch(backend), lambda: graphed(images)[0])

    def infer():
        with torch.inference_mode(), autocast():
            return forward(images).landmarks

    return _under(_dispatch(backend), infer)


# ----------------------------------------------------------------------------- heatmap cases


def heatmap_backends(groups: tuple[str, ...]) -> list[str]:
    names = ["reference", "opencv"]
    if "fast" in groups:
        names += ["fast (triton)", "fast (cuda)"]
    return names


def prepare_heatmaps(batch: int, dtype: str, backend: str, device: torch.device,
                     seed: int = 0) -> Callable[[], Any]:
    """A callable making ``(batch, K, 64, 64)`` ground-truth heatmaps from synthetic faces.

    ``opencv``: the raster baseline ``labfast.boundary.heatmaps``, one face per call on the CPU (NumPy
    landmarks, float32 out, whatever ``dtype``); ``reference``: ``boundary_heatmaps_ref``; ``fast (triton|cuda)``:
    ``boundary_heatmaps`` with that path forced. No ``compile`` row: the reference's chunk loop
    reads a tensor value on the host (graph break) and compiling it took minutes on the CPU.
    """
    from labfast import boundary
    from labfast.ops.boundary_heatmaps import boundary_heatmaps, boundary_heatmaps_ref

    landmarks = synthetic_faces(batch, HEATMAP_SIZE, seed)
    if backend == "opencv":
        faces = landmarks.numpy()
        return lambda: [boundary.heatmaps(faces[i:i + 1], SCHEME, HEATMAP_SIZE, SIGMA) for i in range(batch)]
    landmarks = landmarks.to(device)
    torch_dtype = DTYPES[dtype]
    if backend == "reference":
        return _under("reference", lambda: boundary_heatmaps_ref(landmarks, SCHEME, HEATMAP_SIZE, SIGMA, torch_dtype))
    path = _fast_path(backend, device)
    return _under(path, lambda: boundary_heatmaps(landmarks, SCHEME, HEATMAP_SIZE, SIGMA, torch_dtype))


def _fast_path(backend: str, device: torch.device) -> str:
    """``"fast (triton)"`` -> ``"triton"``; ``Unavailable`` off CUDA."""
    if device.type != "cuda":
        raise Unavailable(FAST_NEEDS_CUDA)
    return backend[len("fast ("):-1]


# ----------------------------------------------------------------------------- kernel cases

_KERNEL_OPS = ("input_fusion", "heatmap_feature_concat", "feature_fusion", "message_passing", "batch_norm_act")
_OP_MODULES = {"message_passing": "labfast.ops.message_passing", "batch_norm_act": "labfast.ops.batch_norm_act"}


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One fused op at one argument signature the model uses: tensor shapes and static arguments."""

    op: str
    shapes: tuple[tuple[int, ...] | None, ...]  # per tensor argument (None for an absent bias)
    edges: tuple[tuple[int, int], ...] = ()

    @property
    def label(self) -> str:
        """The op and its tensor shapes, e.g. ``feature_fusion 2x64x64x64,2x64x64x64`` (weights as ``E=``;
        batch norm: the activation's shape, ``+ residual`` when it adds one)."""
        shapes = self.shapes[:1] if self.op in ("message_passing", "batch_norm_act") else self.shapes
        text = ",".join("x".join(map(str, shape)) for shape in shapes if shape is not None)
        if self.op == "batch_norm_act" and self.shapes[5] is not None:
            text += " + residual"
        if self.op == "message_passing":
            weights = self.shapes[1]
            text += f" E={weights[0]} k={weights[-1]}"
        return f"{self.op} {text}"


def kernel_cases(config_name: str, batch: int) -> list[KernelCase]:
    """The distinct calls of the fused ops in one forward pass of LAB at ``batch`` (meta device).

    Batch norm + ReLU is called at ~35 distinct shapes (every width at every hourglass level): it
    keeps, per (channels, residual or not), its call on the largest map."""
    from labfast import ops
    from labfast.model import LAB, config_by_name

    seen: dict[KernelCase, None] = {}
    originals = {name: getattr(ops, name) for name in _KERNEL_OPS}

    def recorder(name):
        def record(*args):
            shapes = tuple(None if a is None else tuple(a.shape) for a in args if a is None or isinstance(a, torch.Tensor))
            edges = tuple(tuple(e) for e in args[3]) if name == "message_passing" else ()
            seen.setdefault(KernelCase(name, shapes, edges))
            return originals[name](*args)
        return record

    model = LAB(SCHEME, config_by_name(config_name)).to("meta").eval()
    try:
        for name in _KERNEL_OPS:
            setattr(ops, name, recorder(name))
        with torch.no_grad(), forced_backend("reference"):
            model(torch.zeros(batch, 3, INPUT_SIZE, INPUT_SIZE, device="meta"))
    finally:
        for name, original in originals.items():
            setattr(ops, name, original)
    largest: dict[tuple[int, bool], KernelCase] = {}
    for case in (case for case in seen if case.op == "batch_norm_act"):
        key = (case.shapes[0][1], case.shapes[5] is not None)
        if key not in largest or math.prod(case.shapes[0]) > math.prod(largest[key].shapes[0]):
            largest[key] = case
    return [case for case in seen if case.op != "batch_norm_act" or largest[(case.shapes[0][1], case.shapes[5] is not None)] is case]


def kernel_backends(groups: tuple[str, ...]) -> list[str]:
    names = ["reference"]
    if "compile" in groups:
        names.append("compile")
    if "fast" in groups:
        names += ["fast (triton)", "fast (cuda)"]
    return names


def kernel_arguments(case: KernelCase, dtype: str, device: torch.device, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    tensors = [None if shape is None else torch.rand(shape, generator=generator).to(device, DTYPES[dtype])
               for shape in case.shapes]
    if case.op == "message_passing":
        tensors[1] = (tensors[1] - 0.5) * 0.1  # conv weights of a sensible size
        return (*tensors, case.edges)
    return tuple(tensors)


def prepare_kernel(case: KernelCase, dtype: str, backend: str, device: torch.device,
                   seed: int = 0) -> Callable[[], Any]:
    """A callable running ``case``'s op (forward) with ``backend`` (batch norm: in training, its
    defaults: batch statistics, running-statistic update, ReLU)."""
    from labfast import ops

    module = importlib.import_module(_OP_MODULES.get(case.op, "labfast.ops.fusion"))
    reference = getattr(module, f"{case.op}_ref")
    arguments = kernel_arguments(case, dtype, device, seed)
    if backend == "reference":
        return _under("reference", lambda: reference(*arguments))
    if backend == "compile":
        compiled = _compile(reference, backend)
        return _under("reference", lambda: compiled(*arguments))
    path = _fast_path(backend, device)
    op = getattr(ops, case.op)
    return _under(path, lambda: op(*arguments))


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


# ----------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Timing:
    median_s: float
    p99_s: float
    calls: int
    warmup_s: float  # the first call (compilation, autotuning, caches)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, min_time: float,
               warmup: float = math.nan) -> Timing:
    """Median and p99 seconds per call of ``fn`` (see the module docstring). The caller has made
    the first call (``warmup`` seconds: compilation, autotuning, caches); on a GPU one more sizes
    ``do_bench``'s run."""
    if device.type == "cuda":
        import triton.testing

        start = time.perf_counter()
        fn()
        _sync(device)
        estimate = time.perf_counter() - start

        rep_ms = max(1e3 * min_time, 1e3 * repeats * estimate)
        median_ms, p99_ms = triton.testing.do_bench(fn, warmup=max(1e3 * estimate, 1.0), rep=rep_ms, quantiles=[0.5, 0.99])
        return Timing(median_ms / 1e3, p99_ms / 1e3, max(1, int(rep_ms / max(1e3 * estimate, 1e-3))), warmup)
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - begin < min_time:
        tick = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - tick)
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return Timing(statistics.median(ordered), p99, len(ordered), warmup)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict that holds ``bytes`` (or ``None``) and ``how`` after the block."""
    result: dict[str, Any] = {"bytes": None, "how": "n/a"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result.update(bytes=torch.cuda.max_memory_allocated(device), how="torch.cuda.max_memory_allocated")
        return
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")  # resets VmHWM, the peak resident set size
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    yield result
    peak = _status_kib("VmHWM")
    if before is not None and peak is not None:
        result.update(bytes=max(0, peak - before) * 1024, how="peak RSS growth (VmHWM - VmRSS before)")


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (convolutions and matrix products, forward and backward).

    Counted by ``labfast.perf.roofline``: torch's own ``FlopCounterMode`` over-counts the backward of
    grouped convolutions about ``groups``-fold, which would inflate a training step's TFLOP/s.
    """
    from labfast.perf import roofline

    with roofline.recording() as traffic:
        fn()
    return traffic.flops


def roofline(flops: int | None, moved_bytes: int | None, seconds: float, device: dict, dtype: str) -> dict:
    """Achieved TFLOP/s and GB/s, and the share of the roofline bound ``min(peak, intensity x bandwidth)``.

    Without FLOPs (element-wise ops) the bound is the bandwidth; without bytes (whole models, whose
    activation traffic is not counted) it is the compute peak.
    """
    out: dict[str, Any] = {
        "tflops": flops / seconds / 1e12 if flops else None,
        "gbps": moved_bytes / seconds / 1e9 if moved_bytes else None,
        "bound": None, "peak_share": None, "peak_name": None,
    }
    peak = device.get("peak")
    if peak is None or not (flops or moved_bytes):
        return out
    bandwidth = peak["memory_bandwidth"]
    if flops:
        compute, name = devices.compute_peak(devices.Peak(**peak), dtype)
        attainable = compute if not moved_bytes else min(compute, flops / moved_bytes * bandwidth)
        memory_bound = bool(moved_bytes) and attainable < compute
        out.update(bound="memory" if memory_bound else "compute", peak_share=flops / seconds / attainable,
                   peak_name=f"{bandwidth / 1e12:.2f} TB/s" if memory_bound else f"{compute / 1e12:.0f} TFLOP/s {name}")
    else:
        out.update(bound="memory", peak_share=moved_bytes / seconds / bandwidth, peak_name=f"{bandwidth / 1e12:.2f} TB/s")
    return out


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass
class Row:
    section: str
    case: str
    backend: str
    dtype: str
    batch: int
    unit: str
    status: str = "ok"  # ok | unavailable | failed | skipped (the time budget ran out first)
    reason: str | None = None
    throughput: float | None = None  # items (unit) per second at the median time
    median_ms: float | None = None
    p99_ms: float | None = None
    calls: int | None = None
    warmup_s: float | None = None
    flops: int | None = None
    bytes: int | None = None
    tflops: float | None = None
    gbps: float | None = None
    bound: str | None = None
    peak_share: float | None = None
    peak_name: str | None = None
    memory_bytes: int | None = None
    memory_how: str | None = None
    vs_reference: float | None = None
    vs_opencv: float | None = None
    note: str | None = None


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def measure_row(row: Row, prepare: Callable[[], Callable[[], Any]], items: int, device: torch.device,
                device_info: dict, repeats: int, min_time: float, flops: int | None = None,
                count: bool = False, count_bytes: bool = False) -> Row:
    """Fill ``row`` by preparing and timing one backend; an exception becomes the row's reason.

    ``count``: count this backend's FLOPs (the reference's; the other rows get them as ``flops``).
    ``count_bytes``: add the output's bytes to ``row.bytes`` (which holds the inputs').
    """
    try:
        fn = prepare()
        start = time.perf_counter()
        output = fn()
        _sync(device)
        first_call = time.perf_counter() - start
        moved = _tensor_bytes(output) if count_bytes else None
        del output
        with peak_memory(device) as memory:
            timing = time_calls(fn, device, repeats, min_time, warmup=first_call)
        if count:
            flops = count_flops(fn)
    except Unavailable as reason:
        row.status, row.reason = "unavailable", str(reason)
        return row
    except Exception as error:  # noqa: BLE001 - a failing backend is reported, the others still run
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]
        row.status, row.reason = ("unavailable", message) if "was forced but" in message else ("failed", message)
        logger.warning("%s %s %s batch %d failed: %s", row.section, row.case, row.backend, row.batch, message)
        return row
    finally:
        _release(device)
    row.median_ms, row.p99_ms, row.calls, row.warmup_s = 1e3 * timing.median_s, 1e3 * timing.p99_s, timing.calls, timing.warmup_s
    row.throughput = items / timing.median_s
    row.memory_bytes, row.memory_how = memory["bytes"], memory["how"]
    row.flops = flops or None
    if moved is not None:
        row.bytes = moved + row.bytes if row.bytes else moved
    for key, value in roofline(row.flops, row.bytes, timing.median_s, device_info, row.dtype).items():
        setattr(row, key, value)
    return row


def measure_backends(rows: list[Row], backends: list[str], make_row: Callable[[str], Row],
                     prepare: Callable[[str], Callable[[], Any]], items: int, count_bytes: bool = False,
                     **common) -> None:
    """One row per backend, the reference first: its FLOP count serves every row of the case.

    A row not begun by ``deadline`` (``time.monotonic()``) is recorded as skipped, unmeasured;
    ``on_row`` runs after each row."""
    deadline, budget_s, on_row = common.pop("deadline", math.inf), common.pop("budget_s", None), common.pop("on_row", None)
    flops = None
    for backend in backends:
        if time.monotonic() > deadline:
            row = make_row(backend)
            row.status, row.reason = "skipped", f"the time budget of {budget_s:g} s was spent before this row"
        else:
            row = measure_row(make_row(backend), lambda: prepare(backend), items, flops=flops,
                              count=backend == "reference", count_bytes=count_bytes, **common)
        if backend == "reference":
            flops = row.flops
        rows.append(row)
        _log_row(row)
        if on_row is not None:
            on_row()


def add_ratios(rows: list[Row]) -> None:
    """``vs_reference`` (and ``vs_opencv`` for heatmaps): throughput over that row's of the same
    section, case, dtype and batch, measured in this run."""
    def key(row: Row, dtype: str | None = None):
        return row.section, row.case, dtype or row.dtype, row.batch

    reference = {key(r): r.throughput for r in rows if r.backend == "reference" and r.status == "ok"}
    opencv = {(r.section, r.case, r.batch): r.throughput for r in rows if r.backend == "opencv" and r.status == "ok"}
    for row in rows:
        if row.status != "ok":
            continue
        if key(row) in reference:
            row.vs_reference = row.throughput / reference[key(row)]
        if (row.section, row.case, row.batch) in opencv:
            row.vs_opencv = row.throughput / opencv[(row.section, row.case, row.batch)]


# ----------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class PlanItem:
    """One entry of ``--plan``: a section at one batch size, with named row backends (``None``: the
    section's backends for the ``--backend`` groups)."""

    section: str
    batch: int
    backends: tuple[str, ...] | None = None


@dataclasses.dataclass
class Settings:
    what: tuple[str, ...]
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]
    groups: tuple[str, ...]
    config: str
    repeats: int
    min_time: float
    plan: tuple[PlanItem, ...] | None = None  # rows in this order instead of what x batches
    budget_s: float | None = None  # rows not begun within this many seconds are recorded as skipped


def run_benchmarks(settings: Settings, device: torch.device,
                   on_row: Callable[[dict], None] | None = None) -> dict:
    """Every requested row, measured on ``device``; the JSON-ready result. ``on_row`` gets the
    result so far after each row (``labfast bench`` rewrites its JSON then, so a run killed from
    outside leaves every row it finished)."""
    device_info = devices.describe(device)
    fallbacks = _FallbackLog()
    rows: list[Row] = []
    deadline = time.monotonic() + settings.budget_s if settings.budget_s is not None else math.inf

    def result() -> dict:
        add_ratios(rows)
        return {
            "schema": 1,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git_commit(),
            "device": device_info,
            "versions": versions(),
            "settings": dataclasses.asdict(settings),
            "notes": _notes(device),
            "fast_path_fallbacks": fallbacks.messages,
            "rows": [dataclasses.asdict(row) for row in rows],
        }

    common = dict(device=device, device_info=device_info, repeats=settings.repeats, min_time=settings.min_time,
                  deadline=deadline, budget_s=settings.budget_s, on_row=(lambda: on_row(result())) if on_row else None)
    plan = settings.plan or tuple(PlanItem(section, batch) for batch in settings.batches
                                  for section in SECTIONS if section in settings.what)
    with fallbacks.attached():
        for dtype in settings.dtypes:
            for item in plan:
                _run_item(rows, settings, item, dtype, common)
    return result()


def _run_item(rows: list[Row], settings: Settings, item: PlanItem, dtype: str, common: dict) -> None:
    device, config, batch = common["device"], settings.config, item.batch
    if item.section == "train":
        measure_backends(rows, list(item.backends or model_backends("train", settings.groups)),
                         lambda backend: Row("train", f"LAB {config} step", backend, dtype, batch, "images/s"),
                         lambda backend: prepare_train_step(config, batch, dtype, backend, device), batch, **common)
    elif item.section == "infer":
        measure_backends(rows, list(item.backends or model_backends("infer", settings.groups)),
                         lambda backend: Row("infer", f"LAB {config} forward", backend, dtype, batch, "faces/s"),
                         lambda backend: prepare_inference(config, batch, dtype, backend, device), batch, **common)
    elif item.section == "heatmaps":
        def heatmap_row(backend: str) -> Row:
            row = Row("heatmaps", f"boundary heatmaps {HEATMAP_SIZE}x{HEATMAP_SIZE}", backend,
                      "fp32" if backend == "opencv" else dtype, batch, "heatmaps/s")
            row.bytes = batch * 68 * 2 * 4  # the landmarks in; the heatmaps out are added when measured
            if backend == "opencv":
                row.note = "CPU, one face per call (NumPy/OpenCV), float32, whatever the device and dtype"
            return row

        # OpenCV makes float32 on the CPU whatever the dtype: measured once per batch.
        backends = [b for b in item.backends or heatmap_backends(settings.groups)
                    if b != "opencv" or dtype == settings.dtypes[0]]
        measure_backends(rows, backends, heatmap_row, lambda backend: prepare_heatmaps(batch, dtype, backend, device),
                         batch * _num_boundaries(), count_bytes=True, **common)
    elif item.section == "kernels":
        for case in kernel_cases(config, batch):
            inputs = sum(math.prod(shape) for shape in case.shapes if shape is not None) * DTYPES[dtype].itemsize
            measure_backends(rows, list(item.backends or kernel_backends(settings.groups)),
                             lambda backend: Row("kernels", case.label, backend, dtype, batch, "calls/s", bytes=inputs),
                             lambda backend: prepare_kernel(case, dtype, backend, device), 1, count_bytes=True, **common)
    else:
        raise ValueError(f"unknown bench section {item.section!r}; known: {', '.join(SECTIONS)}")


def _num_boundaries() -> int:
    from labfast import schemes

    return schemes.get(SCHEME).num_boundaries


def _log_row(row: Row) -> None:
    if row.status == "ok":
        logger.info("%-8s %-34s %-16s %s b=%-4d %10.1f %s", row.section, row.case, row.backend, row.dtype,
                    row.batch, row.throughput, row.unit)
    else:
        logger.info("%-8s %-34s %-16s %s b=%-4d %s: %s", row.section, row.case, row.backend, row.dtype,
                    row.batch, row.status, row.reason)


class _FallbackLog(logging.Handler):
    """Collects the ``labfast.ops`` lines saying an op took the reference path (once per op)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @contextlib.contextmanager
    def attached(self):
        ops_logger = logging.getLogger("labfast.ops")
        ops_logger.addHandler(self)
        previous = ops_logger.level
        ops_logger.setLevel(min(previous or logging.INFO, logging.INFO))
        try:
            yield
        finally:
            ops_logger.removeHandler(self)
            ops_logger.setLevel(previous)


def _notes(device: torch.device) -> list[str]:
    notes = [
        "ratios divide by the reference row of the same section, case, dtype and batch, measured in this run",
        "FLOPs: the reference computation's, by labfast.perf.roofline (torch's flop formulas, grouped convolutions' "
        "backward corrected; convolutions and "
        "matrix products, 2 per multiply-accumulate; element-wise work not counted)",
        "bytes: inputs + outputs of the call (kernels, heatmaps); models report FLOPs only",
        f"inputs: random {INPUT_SIZE}x{INPUT_SIZE} images, synthetic 300-W faces (labfast.perf.bench.synthetic_faces)",
        "fast = labfast.ops default dispatch (Triton first, then the CUDA extension); fast+compile = the same "
        "inside torch.compile; fast+cudagraphs = the fast-path forward replayed from a CUDA graph (labfast.inference.cuda_graphs)",
    ]
    if device.type == "cpu":
        notes.append("CPU run: no vendor peak, so no share of peak; fast paths need CUDA and are listed as unavailable")
    return notes


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def environment(device: torch.device | str) -> dict:
    """Where and with what a measurement was taken: device name, versions and date
    (``extra_info`` of the pytest-benchmark rows in ``benchmarks/``)."""
    return {"device": devices.describe(torch.device(device))["name"], **versions(),
            "date": datetime.date.today().isoformat()}


def versions() -> dict:
    import cv2

    try:
        import triton

        triton_version = triton.__version__
    except Exception as error:  # noqa: BLE001 - absent or broken: say which
        triton_version = f"unavailable ({error})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


# ----------------------------------------------------------------------------- table


def _si(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.{digits}f}{suffix}"
    return f"{value:.{digits}f}"


def format_table(result: dict) -> str:
    """The rows as one fixed-width table, with the device and versions above it."""
    device, versions, git = result["device"], result["versions"], result["git"]
    lines = [
        f"device: {device['name']} ({device['type']}), driver {device['driver']}; torch {versions['torch']}, "
        f"triton {versions['triton']}; {result['date']}; commit {git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}",
    ]
    header = ("section", "case", "backend", "dtype", "batch", "throughput", "median ms", "p99 ms",
              "vs ref", "vs opencv", "achieved", "% peak", "peak mem", "note")
    table = [header]
    for row in result["rows"]:
        if row["status"] != "ok":
            table.append((row["section"], row["case"], row["backend"], row["dtype"], str(row["batch"]),
                          *["-"] * 8, f"{row['status']}: {row['reason']}"))
            continue
        achieved = (f"{row['tflops']:.3g} TFLOP/s" if row["tflops"] else
                    f"{row['gbps']:.3g} GB/s" if row["gbps"] else "-")
        table.append((
            row["section"], row["case"], row["backend"], row["dtype"], str(row["batch"]),
            f"{_si(row['throughput'])} {row['unit']}", f"{row['median_ms']:.3g}", f"{row['p99_ms']:.3g}",
            f"{row['vs_reference']:.2f}x" if row["vs_reference"] is not None else "-",
            f"{row['vs_opencv']:.1f}x" if row["vs_opencv"] is not None else "-",
            achieved,
            f"{100 * row['peak_share']:.1f}% of {row['peak_name']}" if row["peak_share"] is not None else "n/a",
            f"{_si(row['memory_bytes'])}B" if row["memory_bytes"] is not None else "n/a",
            row["note"] or "",
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for index, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    if result["fast_path_fallbacks"]:
        lines.append("fast-path fallbacks seen: " + " | ".join(result["fast_path_fallbacks"]))
    if device["peak"] is None:
        lines.append(device["peak_note"])
    return "\n".join(lines)


def _list(text: str, allowed: tuple[str, ...] | None, flag: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise SystemExit(f"labfast bench: {flag} is empty")
    if allowed is not None:
        bad = [item for item in items if item not in allowed]
        if bad:
            raise SystemExit(f"labfast bench: {flag} {','.join(bad)} is not one of {', '.join(allowed)}")
    return items


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(part) for part in _list(text, None, "--batch"))
    except ValueError:
        raise SystemExit(f"labfast bench: --batch {text!r} must be comma-separated positive integers") from None
    if any(batch < 1 for batch in batches):
        raise SystemExit(f"labfast bench: --batch {text!r} must be comma-separated positive integers")
    return batches


def section_backends(section: str) -> list[str]:
    """Every row backend ``section`` knows (what a ``--plan`` entry may name)."""
    if section in ("train", "infer"):
        return model_backends(section, BACKEND_GROUPS)
    return heatmap_backends(BACKEND_GROUPS) if section == "heatmaps" else kernel_backends(BACKEND_GROUPS)


def parse_plan(text: str) -> tuple[PlanItem, ...]:
    """``SECTION@BATCH[=BACKEND,...];...`` -> plan items, with errors naming the bad entry."""
    items = []
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        head, _, names = entry.partition("=")
        section, at, batch = head.partition("@")
        section = section.strip()
        if section not in SECTIONS or not at:
            raise SystemExit(f"labfast bench: --plan entry {entry!r} is not SECTION@BATCH[=BACKEND,...] "
                             f"with SECTION one of {', '.join(SECTIONS)}")
        (size,) = _batches(batch)
        backends = None
        if names.strip():
            backends = tuple(part.strip() for part in names.split(","))
            known = section_backends(section)
            bad = [name for name in backends if name not in known]
            if bad:
                raise SystemExit(f"labfast bench: --plan entry {entry!r}: {', '.join(bad)} is not a {section} backend "
                                 f"(known: {', '.join(known)})")
        items.append(PlanItem(section, size, backends))
    if not items:
        raise SystemExit("labfast bench: --plan is empty")
    return tuple(items)


def settings_from_args(args, device: torch.device) -> Settings:
    gpu = device.type == "cuda"
    what = _list(args.what, (*SECTIONS, "all"), "--what")
    if args.repeats < 1:
        raise SystemExit(f"labfast bench: --repeats {args.repeats} must be at least 1")
    if args.budget is not None and not args.budget > 0:
        raise SystemExit(f"labfast bench: --budget {args.budget} must be a positive number of seconds")
    return Settings(
        what=SECTIONS if "all" in what else what,
        batches=_batches(args.batch or ("1,32,256" if gpu else "1,2")),
        dtypes=_list(args.dtype or ("fp32,bf16" if gpu else "fp32"), tuple(DTYPES), "--dtype"),
        groups=_list(args.backend or ("reference,compile,fast" if gpu else "reference,fast"), BACKEND_GROUPS, "--backend"),
        config=args.config or ("paper" if gpu else "tiny"),
        repeats=args.repeats,
        min_time=args.min_time if args.min_time is not None else (1.0 if gpu else 0.2),
        plan=parse_plan(args.plan) if args.plan is not None else None,
        budget_s=args.budget,
    )


def write_json(path: Path, result: dict) -> None:
    """Atomically: a reader (or a kill) never meets half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, path)
