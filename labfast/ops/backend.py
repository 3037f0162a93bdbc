"""The one place that decides, per op, between the ``triton``, ``cuda`` and ``reference`` paths.

Rules:
- ``LABFAST_BACKEND=reference|triton|cuda`` forces a backend for every op (tests, benchmarks);
  ``LABFAST_BACKEND_<OP>`` (e.g. ``LABFAST_BACKEND_FUSION``) forces one op. A forced fast path that
  cannot run raises instead of silently falling back: a benchmark must measure what it names.
- Otherwise the fast path is taken for CUDA tensors when it is importable (Triton first, then the
  CUDA extension), and the reference everywhere else.
- The first time an op does not take a fast path, one log line says which op and why.
- ``TRITON_INTERPRET=1`` lets a *forced* Triton path run on CPU tensors (parity tests); CPU
  tensors never take it on their own, the interpreter being far slower than the reference.

Every op chooses its path here, the same way (``labfast.ops.registry`` lists the ops):
- its public function asks ``select_for`` (a constant under ``torch.compile``): on ``"reference"``
  it runs the plain ``*_ref`` (autograd through its decomposition; what ONNX export sees), else it
  calls its ``torch.ops.labfast`` operator (``boundary_heatmaps`` calls its operator on every path:
  its reference reads a value on the host, which must stay out of a compiled graph);
- the operator's body (eager, never traced) calls ``run``, which selects again and runs the chosen
  launcher, or the reference where the fast path fails its self-check or does not compile.

Self-check (fast paths that prove themselves): each op module registers one with
``register_self_check``. The first time an op would take a fast path for a given (backend, dtype,
device), the check runs the op's public function on a small random input with that path pinned
(so the registered operator and its backward run, as in production) beside the reference (forward
and backward, milliseconds); the two must agree within
``SELF_CHECK_TOLERANCE[dtype]`` of the reference's largest value. A mismatch, or an exception
while checking (a kernel that does not compile, a missing CUDA extension symbol), logs one
warning and the op takes the reference for that (backend, dtype, device) from then on. A *forced*
backend that fails its self-check raises instead: a forced path must run what it names.
``LABFAST_SELFCHECK=0`` turns the check off (benchmarks). The check runs eagerly; it is skipped,
not cached, while ``torch.compile`` traces or a CUDA graph is being captured (the fast path is then
taken unchecked), so make one eager call first to have it before compiling or capturing:
``FaceAligner`` runs eagerly, and an eager warm-up call (``labfast bench``'s first call of an eager
row) checks every op it reaches. A fast path that checked out but fails to compile later, at a new
specialisation, also falls back with one log line (``run``).
"""
from __future__ import annotations

import functools
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch

import labfast.ops.cuda_extension as cuda_extension

logger = logging.getLogger("labfast.ops")

BACKENDS = ("triton", "cuda", "reference")
_logged: set[str] = set()


@functools.cache
def triton_status() -> str | None:
    """``None`` if Triton kernels can launch here, else the reason they cannot."""
    try:
        import triton  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising at import
        return f"triton is not importable ({error})"
    return None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def forced(op: str) -> str | None:
    """The backend forced for ``op`` by environment, or ``None``."""
    value = os.environ.get(f"LABFAST_BACKEND_{op.upper()}") or os.environ.get("LABFAST_BACKEND")
    if value is None or value == "":
        return None
    if value not in BACKENDS:
        raise ValueError(f"LABFAST_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def _unavailable(backend: str, tensor: torch.Tensor, supported: tuple[str, ...]) -> str | None:
    """Why ``backend`` cannot run on ``tensor`` (``None`` if it can)."""
    if backend == "reference":
        return None
    if backend not in supported:
        return f"no {backend} kernel exists for this op"
    if backend == "triton":
        if not (tensor.is_cuda or interpreting()):
            return f"tensors are on {tensor.device.type} (Triton needs CUDA, or TRITON_INTERPRET=1)"
        return triton_status()
    if not tensor.is_cuda:
        return f"tensors are on {tensor.device.type} (the CUDA extension needs CUDA tensors)"
    return cuda_extension.status()


# How far a fast path may sit from the reference on the self-check input, as a fraction of the
# reference's largest value, per dtype. Both paths round to the dtype, and fp32 convolutions may
# use TF32 (10-bit mantissa, unit roundoff 2**-11) on both: ~20 unit roundoffs of the operand
# precision (fp32/TF32 and fp16: 20 * 2**-11 ~ 1e-2; bf16: 20 * 2**-8 ~ 8e-2) covers a correct
# kernel, while a broken one (wrong tap, channel, branch, uninitialised memory) errs by O(1).
SELF_CHECK_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 8e-2}
_self_checked: dict[tuple[str, str, torch.dtype, str], str | None] = {}  # key -> None (passed) or reason
Results = list[torch.Tensor | None]
SelfCheck = Callable[[torch.device, torch.dtype], tuple[Results, Results]]
_self_checks: dict[str, SelfCheck] = {}
# (op, backend) whose self-check is running: ``select`` pins the op to that backend and ``run``
# lets its errors through. A plain global, not thread-local: the backward of CUDA tensors runs on
# autograd's device thread.
_checking: set[tuple[str, str]] = set()


def register_self_check(op: str, check: SelfCheck) -> None:
    """Register ``op``'s self-check: ``check(device, dtype)`` returns ``(fast results, reference
    results)``, the public function's and the reference's outputs and input gradients on the same
    small inputs (``random_tensor``, ``outputs_and_grads``). While it runs, every call of ``op``
    takes the path under check."""
    _self_checks[op] = check


def random_tensor(*shape: int, device: torch.device, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A self-check input: fixed seed, a private generator (the caller's random state is untouched)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)


def outputs_and_grads(function: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Results:
    """``[out, d out·g / d input for each input]`` with a fixed upstream gradient ``g``."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = function(*leaves)
    grad_out = random_tensor(*out.shape, device=out.device, dtype=out.dtype, seed=99)
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return [out.detach(), *grads]


def self_check_enabled() -> bool:
    return os.environ.get("LABFAST_SELFCHECK", "1") != "0"


def _cannot_run_eagerly(tensor: torch.Tensor) -> bool:
    """True while torch.compile or torch.export traces (fake tensors) or a CUDA graph is being
    captured: a check cannot run then."""
    if torch.compiler.is_compiling() or torch._subclasses.fake_tensor.is_fake(tensor):
        return True
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _mismatch(fast: Sequence[torch.Tensor | None], reference: Sequence[torch.Tensor | None],
              dtype: torch.dtype) -> str | None:
    """Why ``fast`` disagrees with ``reference`` (``None`` if every pair agrees within tolerance)."""
    tolerance = SELF_CHECK_TOLERANCE.get(dtype, SELF_CHECK_TOLERANCE[torch.float32])
    for index, (mine, theirs) in enumerate(zip(fast, reference, strict=True)):
        if mine is None and theirs is None:
            continue
        if mine is None or theirs is None or mine.shape != theirs.shape:
            return (f"result {index}: shape {None if mine is None else tuple(mine.shape)} where the "
                    f"reference has {None if theirs is None else tuple(theirs.shape)}")
        scale = theirs.double().abs().max().item() if theirs.numel() else 0.0
        error = (mine.double() - theirs.double()).abs().max().item() if theirs.numel() else 0.0
        if not error <= tolerance * max(scale, 1e-30):  # `not <=` so that NaN fails
            return (f"result {index} differs from the reference by {error:.3g} "
                    f"(allowed {tolerance:g} x max |reference| = {tolerance * scale:.3g})")
    return None


def self_check_failure(op: str, backend: str, tensor: torch.Tensor) -> str | None:
    """Run (once per op, backend, dtype, device) the op's self-check; the failure reason or ``None``."""
    key = (op, backend, tensor.dtype, str(tensor.device))
    if key in _self_checked:  # also holds _run_fast's compile failures, checked or not
        return _self_checked[key]
    check = _self_checks.get(op)
    if check is None or not self_check_enabled() or _cannot_run_eagerly(tensor):
        return None
    _checking.add((op, backend))
    try:
        # Eager, with autograd, outside any autocast region or inference mode the caller is in.
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(tensor.device.type, enabled=False):
            fast, reference = check(tensor.device, tensor.dtype)
            reason = _mismatch(fast, reference, tensor.dtype)
    except Exception as error:  # a kernel that does not compile, a missing extension symbol, ...
        reason = f"raised {type(error).__name__}: {_first_line(error)}"
    finally:
        _checking.discard((op, backend))
    _self_checked[key] = reason
    if reason is not None:
        logger.warning("labfast op %r: the %s path failed its self-check for %s on %s (%s); using the reference",
                       op, backend, tensor.dtype, tensor.device, reason)
    return reason


@functools.cache
def compile_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this fast path does not compile / is not built" (not a bad argument)."""
    errors: list[type[BaseException]] = [subprocess.CalledProcessError, ImportError, AttributeError]
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime import errors as runtime_errors

        errors.append(CompilationError)
        errors += [getattr(runtime_errors, name) for name in ("OutOfResources", "PTXASError")
                   if hasattr(runtime_errors, name)]
    except ImportError:
        pass
    return tuple(errors)


Result = TypeVar("Result")


def _run_fast(op: str, backend: str, tensor: torch.Tensor, fast: Callable[[], Result],
             reference: Callable[[], Result]) -> Result:
    """``fast()``, or ``reference()`` with one log line if the fast path fails to compile (a
    specialisation the self-check did not meet). A forced backend re-raises."""
    try:
        return fast()
    except compile_errors() as error:
        if forced(op) == backend:
            raise
        key = (op, backend, tensor.dtype, str(tensor.device))
        if _self_checked.get(key) is None:
            logger.warning("labfast op %r: the %s path did not compile for %s on %s (%s: %s); using the reference",
                           op, backend, tensor.dtype, tensor.device, type(error).__name__, _first_line(error))
        _self_checked[key] = f"did not compile ({type(error).__name__})"
        return reference()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def run(op: str, tensor: torch.Tensor, fast_paths: Mapping[str, Callable[[], Result]],
        reference: Callable[[], Result]) -> Result:
    """An operator's body: the launcher of the path ``select`` chooses for ``tensor`` (``fast_paths``
    maps each of the op's fast paths, in preference order, to a thunk), or ``reference()``. A fast
    path that does not compile falls back (``_run_fast``), except while it is under its self-check,
    whose verdict the error must reach."""
    choice = select(op, tensor, supported=tuple(fast_paths))
    if choice == "reference":
        return reference()
    if (op, choice) in _checking:
        return fast_paths[choice]()
    return _run_fast(op, choice, tensor, fast_paths[choice], reference)


def _takes_fast_paths(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` takes an available fast path unforced: CUDA tensors only."""
    return tensor.is_cuda


def select(op: str, tensor: torch.Tensor, supported: tuple[str, ...]) -> str:
    """Backend to run ``op`` on ``tensor``; ``supported`` lists the op's fast paths in preference order."""
    pinned = next((checked for checked_op, checked in _checking if checked_op == op), None)
    if pinned is not None:  # inside the op's own self-check
        return pinned
    choice = forced(op)
    if choice is not None:
        reason = _unavailable(choice, tensor, supported)
        if reason is None and choice != "reference":
            failure = self_check_failure(op, choice, tensor)
            reason = None if failure is None else f"it failed its self-check: {failure}"
        if reason is not None:
            raise RuntimeError(f"labfast op {op!r}: backend {choice!r} was forced but {reason}")
        return choice
    reasons = []
    for backend in supported:
        reason = _unavailable(backend, tensor, supported)
        if reason is None and _takes_fast_paths(tensor):
            failure = self_check_failure(op, backend, tensor)
            if failure is None:
                return backend
            reason = f"self-check failed: {failure}"
        reasons.append(f"{backend}: {reason or 'CPU tensors take the reference unless a backend is forced'}")
    if op not in _logged:
        _logged.add(op)
        logger.info("labfast op %r runs the reference path (%s)", op, "; ".join(reasons) or "no fast path")
    return "reference"


@torch.compiler.assume_constant_result
def select_for(op: str, device: torch.device, dtype: torch.dtype, supported: tuple[str, ...]) -> str:
    """``select`` for tensors on ``device`` of ``dtype``, as an op's public function asks it.

    Under ``torch.compile`` Dynamo runs this once while tracing and bakes the answer into the graph
    as a constant (``assume_constant_result``): no graph break on the environment reads, caches and
    the log line inside, and a graph compiled for one backend stays on it (``torch._dynamo.reset()``
    after changing ``LABFAST_BACKEND``). The self-check does not run while tracing; the operator
    runs it on its first eager call and takes the reference inside itself if it fails.
    """
    return select(op, torch.empty(0, device=device, dtype=dtype), supported)
