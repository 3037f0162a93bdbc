"""Compile every Triton kernel the LAB presets launch to sm_90 cubin, on a machine without a GPU.

``python -m labfast.perf.offline_compile`` (in a process *without* ``TRITON_INTERPRET=1``: Triton decides
between interpreting and compiling when the kernels are decorated) runs the model's own launchers,
so each kernel is specialised exactly as on an H100 (argument dtypes, 16-byte alignment, integer
specialisation, constexpr block sizes), but nothing is launched:

- a stand-in Triton driver reports the target ``GPUTarget("cuda", 90, 32)`` and H100 properties;
- ``JITFunction.run`` is made compile-only (``warmup=True``), so a launch compiles (Triton's own
  pipeline down to ``ptxas``, which the Triton wheel bundles) and returns without running; the
  kernel's output buffers stay uninitialised, which is harmless since only shapes flow on;
- every op is forced onto its Triton path (``LABFAST_BACKEND=triton``) and the self-check is off
  (``LABFAST_SELFCHECK=0``: it would compare against uninitialised outputs); the ops' launchers see
  CPU tensors, which ``labfast.ops.backend`` is told to accept for Triton as under the interpreter.

It runs each preset (by default all of them: paper, small, tiny) forward and backward in fp32 and
under fp16 and bf16 autocast, the boundary-heatmap op in each dtype and every batch norm + ReLU of a training forward
(``batch_norm_act``, training and eval), then prints one row per
compiled specialisation: registers, spill bytes (ptxas ``-v``), shared memory. Rows that look alike
differ in the specialisation of integer arguments (divisible by 16, or equal to 1). Batch size does
not change a specialisation here (every pixel count is a multiple of 16 at batch 1 already).
A specialisation compiled by several presets is listed once per phase, under the first preset (a
phase lists every kernel it launches, also those it shares with another phase).

The Triton cache goes to a fresh temporary folder per run (``TRITON_CACHE_DIR``), so a clean clone
compiles everything and nothing is reused across runs. The last line printed is a JSON summary
(``tests/ops/test_compile_sm90.py`` reads it). The exit status is 1 when a kernel was never compiled
or any specialisation spills registers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time

# An H100 SXM: what the compiler may ask the driver about (shared memory limits pipelining).
_H100_PROPERTIES = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536,
                    "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}
SUMMARY_PREFIX = "OFFLINE_COMPILE_SUMMARY "
PHASES = ("fp32", "fp16", "bf16")


@dataclasses.dataclass
class KernelReport:
    """One compiled specialisation of one kernel."""

    kernel: str
    config: str  # the preset whose run first launched it
    phase: str  # which run launched it: "fp32", "fp16" or "bf16"
    operand_dtypes: str  # pointer argument dtypes of the specialisation, e.g. "fp32,fp32,fp32"
    constexprs: str
    registers: int
    spill_bytes: int  # spill stores + spill loads, bytes per thread (ptxas -v)
    shared_bytes: int
    cubin_bytes: int


class _CompileOnlyDriver:
    """The parts of Triton's driver interface that specialisation and compilation ask for."""

    def __init__(self, target):
        self.target = target
        self.utils = self  # compiler code calls driver.active.utils.get_device_properties

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_properties(self, device=None):
        return dict(_H100_PROPERTIES)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def map_python_to_cpp_type(self, ty: str) -> str:  # not reached without a launch
        raise NotImplementedError(ty)


def _ptxas_usage(ptxas: str, ptx: str) -> tuple[int, int]:
    """``(registers, spill bytes)`` from ``ptxas -v`` on ``ptx`` (the cubin is Triton's own build),
    for the architecture the PTX names (``sm_90a`` for capability 9.0)."""
    arch = re.search(r"^\.target\s+(sm_\w+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        result = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", source, "-o", os.path.join(folder, "k.o")],
                                capture_output=True, text=True)
    log = result.stderr + result.stdout
    if result.returncode != 0:
        raise RuntimeError(f"ptxas --gpu-name={arch} failed:\n{log}")
    registers = re.search(r"Used (\d+) registers", log)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    if registers is None:
        raise RuntimeError(f"no register count in the ptxas log:\n{log}")
    return int(registers.group(1)), sum(spills)


def launched_kernel_names() -> set[str]:
    """Names of every kernel (``@triton.jit`` function named ``*_kernel``) in ``labfast.kernels``."""
    from triton.runtime.jit import JITFunction

    import labfast.kernels

    names = set()
    for module_info in pkgutil.iter_modules(labfast.kernels.__path__):
        module = importlib.import_module(f"labfast.kernels.{module_info.name}")
        names |= {name for name, value in vars(module).items()
                  if isinstance(value, JITFunction) and name.endswith("_kernel")}
    return names


def _phase_dtype(phase: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[phase]


def record_model_op_calls(scheme: str, config: str, batch: int, phase: str) -> list:
    """The distinct calls ``(op, args)`` of the fused ops but batch norm in one ``LAB(scheme, config)``
    forward (batch norm is replayed by ``_batch_norm_act_launch``, in training and in eval).

    The forward runs under ``FakeTensorMode`` (shapes, dtypes and strides propagate, nothing is
    computed; a real bf16 autocast forward takes minutes on a CPU), with ``torch.autocast`` for
    ``fp16`` and ``bf16`` as training does. Tensors are recorded as ``TensorSpec(shape, stride, dtype)``.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from labfast.model import LAB, config_by_name
    from labfast.perf import op_calls

    model = LAB(scheme, config_by_name(config)).eval()

    def forward():
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            images = torch.rand(batch, 3, model.config.input_size, model.config.input_size)
            autocast = (contextlib.nullcontext() if phase == "fp32"
                        else torch.autocast("cpu", dtype=_phase_dtype(phase)))
            with autocast:
                model(images)

    replayed = tuple(op for op in op_calls.MODEL_OPS if op != "batch_norm_act")
    return list(dict.fromkeys(op_calls.record(forward, replayed)))  # one replay per distinct call


def _replay(op: str, args: tuple) -> None:
    """Call ``labfast.ops.<op>`` on uninitialised tensors of the recorded specs, forward and backward
    (every floating input requires grad, so every backward kernel is specialised)."""
    import torch

    import labfast.ops
    from labfast.perf.op_calls import TensorSpec

    tensors = tuple(torch.empty_strided(a.shape, a.stride, dtype=a.dtype).requires_grad_() if isinstance(a, TensorSpec)
                    else a for a in args)
    out = getattr(labfast.ops, op)(*tensors)
    out.backward(torch.empty_like(out))


def _boundary_heatmaps_launch(scheme: str, config: str, batch: int, phase: str) -> None:
    """Ground-truth heatmaps as training makes them (float32 landmarks, heatmaps in the phase dtype)."""
    import torch

    from labfast.model import LAB, config_by_name
    from labfast.ops.boundary_heatmaps import boundary_heatmaps

    model_config = config_by_name(config)
    boundary_scheme = LAB(scheme, model_config).boundary_scheme
    size = model_config.heatmap_size
    landmarks = torch.rand(batch, boundary_scheme.num_points, 2) * (size - 1)
    boundary_heatmaps(landmarks, boundary_scheme, size=size, dtype=_phase_dtype(phase))


def _batch_norm_act_launch(scheme: str, config: str, batch: int, phase: str) -> None:
    """Every distinct ``labfast.ops.batch_norm_act`` call of one training forward of
    ``LAB(scheme, config)`` (recorded under ``FakeTensorMode`` as ``record_model_op_calls`` does),
    replayed in training and in eval mode, forward and backward: activations in the phase's dtype,
    weights and running statistics fp32 (as under autocast)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import labfast.ops
    from labfast.model import LAB, config_by_name
    from labfast.perf import op_calls

    model = LAB(scheme, config_by_name(config)).train()

    def forward():
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            model(torch.rand(batch, 3, model.config.input_size, model.config.input_size))

    # args: x, weight, bias, running mean, running var, residual, training, momentum, eps, relu (default on)
    calls = dict.fromkeys((args[0].shape, args[0].stride, args[5] is not None, args[9] if len(args) > 9 else True)
                          for _, args in op_calls.record(forward, ("batch_norm_act",)))
    dtype = _phase_dtype(phase)
    for shape, stride, with_residual, relu in calls:
        channels = shape[1]
        for training in (True, False):
            x = torch.empty_strided(shape, stride, dtype=dtype).requires_grad_()
            residual = torch.empty_strided(shape, stride, dtype=dtype).requires_grad_() if with_residual else None
            weight, bias = torch.ones(channels, requires_grad=True), torch.zeros(channels, requires_grad=True)
            out = labfast.ops.batch_norm_act(x, weight, bias, torch.zeros(channels), torch.ones(channels), residual,
                                             training, 0.1, 1e-5, relu)
            out.backward(torch.empty_like(out))


def compile_model_kernels(scheme: str = "300w", configs: tuple[str, ...] = ("paper", "small", "tiny"),
                          batch: int = 1, phases: tuple[str, ...] = PHASES) -> list[KernelReport]:
    """Run the workload through the compile-only driver; one report per compiled specialisation."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("offline compile needs a process without TRITON_INTERPRET=1 "
                           "(Triton interprets every kernel decorated while it is set)")
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="labfast-triton-cache-"))
    os.environ["LABFAST_BACKEND"] = "triton"
    os.environ["LABFAST_SELFCHECK"] = "0"

    import torch  # noqa: F401
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.runtime.jit import JITFunction

    from labfast.ops import backend

    target = GPUTarget("cuda", 90, 32)
    previous_driver = triton.runtime.driver._active  # reset_active() would look for a real GPU
    triton.runtime.driver.set_active(_CompileOnlyDriver(target))
    # The launchers get CPU tensors; let forced Triton accept them as it does under the interpreter.
    interpreting = backend.interpreting
    backend.interpreting = lambda: True
    ptxas = get_ptxas(target.arch).path

    compiled: dict[tuple[str, str], tuple[str, str, object]] = {}  # (phase, hash)
    run_now = [("", "")]
    original_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = original_run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.setdefault((run_now[0][1], kernel.hash), (*run_now[0], kernel))
        return kernel

    JITFunction.run = compile_only
    try:
        for config in configs:
            for phase in phases:
                calls = record_model_op_calls(scheme, config, batch, phase)
                run_now[0] = (config, phase)
                for op, args in calls:
                    _replay(op, args)
                _boundary_heatmaps_launch(scheme, config, batch, phase)
                _batch_norm_act_launch(scheme, config, batch, phase)
    finally:
        JITFunction.run = original_run
        backend.interpreting = interpreting
        triton.runtime.driver._active = previous_driver

    reports = []
    for config, phase, kernel in compiled.values():
        registers, spills = _ptxas_usage(ptxas, kernel.asm["ptx"])
        reports.append(KernelReport(
            kernel=kernel.src.fn.__name__,
            config=config,
            phase=phase,
            operand_dtypes=",".join(t[1:] for t in _signature_types(kernel.src.signature) if t.startswith("*")),
            constexprs=_constexpr_text(kernel),
            registers=registers,
            spill_bytes=spills,
            shared_bytes=int(kernel.metadata.shared),
            cubin_bytes=len(kernel.asm["cubin"]),
        ))
    return sorted(reports, key=lambda r: (r.kernel, r.config, r.phase, r.operand_dtypes, r.constexprs))


def _signature_types(signature) -> list[str]:
    values = signature.values() if isinstance(signature, dict) else signature
    return [str(v) for v in values]


def _constexpr_text(kernel) -> str:
    """The kernel's upper-case (block size, dtype, switch) constexprs as ``NAME=value``."""
    constants = kernel.src.constants
    names = kernel.src.fn.arg_names
    parts = []
    for key, value in constants.items():
        index = key[0] if isinstance(key, tuple) else key
        name = names[index] if isinstance(index, int) else str(index)
        if name.isupper():
            parts.append(f"{name}={value}")
    return " ".join(parts)


def format_table(reports: list[KernelReport]) -> str:
    header = ("kernel", "config", "phase", "operands", "registers", "spills (B)", "shared (B)", "constexprs")
    rows = [(r.kernel, r.config, r.phase, r.operand_dtypes, str(r.registers), str(r.spill_bytes), str(r.shared_bytes),
             r.constexprs) for r in reports]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", default="300w")
    parser.add_argument("--config", action="append", help="preset (repeatable; default: every preset)")
    parser.add_argument("--phase", action="append", choices=PHASES, help="dtype (repeatable; default: all)")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    import triton

    from labfast.model import PRESETS

    configs = tuple(args.config or PRESETS)
    phases = tuple(args.phase or PHASES)
    start = time.perf_counter()
    reports = compile_model_kernels(args.scheme, configs, args.batch, phases)
    seconds = time.perf_counter() - start
    print(f"triton {triton.__version__}: {len(reports)} kernel specialisations compiled to sm_90 cubin "
          f"for LAB({args.scheme!r}) presets {', '.join(configs)} in {', '.join(phases)} in {seconds:.1f} s")
    print(format_table(reports))
    expected = launched_kernel_names()
    summary = {"triton": triton.__version__, "seconds": round(seconds, 1), "configs": configs, "phases": phases,
               "expected_kernels": sorted(expected), "reports": [dataclasses.asdict(r) for r in reports]}
    print(SUMMARY_PREFIX + json.dumps(summary))
    missing = expected - {r.kernel for r in reports}
    if missing:
        print(f"kernels never compiled: {', '.join(sorted(missing))}", file=sys.stderr)
    spilling = [r for r in reports if r.spill_bytes > 0]
    for report in spilling:
        print(f"register spills: {report.kernel} {report.config} {report.phase}: {report.spill_bytes} B",
              file=sys.stderr)
    return 1 if missing or spilling else 0


if __name__ == "__main__":
    sys.exit(main())
