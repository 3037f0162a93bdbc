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

Self-check (fast paths that prove themselves): the first time an op would take a fast path for a
given (backend, dtype, device), that path and the reference run on a small random input (forward
and backward; ``labfast.ops.self_checks``, milliseconds) and must agree within
``SELF_CHECK_TOLERANCE[dtype]`` of the reference's largest value. A mismatch, or an exception
while checking (a kernel that does not compile, a missing CUDA extension symbol), logs one
warning and the op takes the reference for that (backend, dtype, device) from then on. A *forced*
backend that fails its self-check raises instead: a forced path must run what it names.
``LABFAST_SELFCHECK=0`` turns the check off (benchmarks). The check runs eagerly; it is skipped,
not cached, while ``torch.compile`` traces or a CUDA graph is being captured (the fast path is then
taken unchecked), so make one eager call first to have it before compiling or capturing:
``FaceAligner`` runs eagerly, and an eager warm-up call (``labfast bench``'s first call of an eager
row) checks every op it reaches. A fast path that checked out but fails to compile later, at a new
specialisation, also falls back with one log line (``run_fast``).
"""
from __future__ import annotations

import functools
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

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


@functools.cache
def cuda_extension_status() -> str | None:
    """``None`` if the compiled ``labfast._cuda`` extension loads, else the reason."""
    try:
        from labfast import _cuda
    except Exception as error:
        return f"the CUDA extension labfast._cuda is not built ({error}); build with LABFAST_BUILD_CUDA=1"
    from labfast.ops import cuda_fakes

    cuda_fakes.register()  # torch.compile / torch.export trace the extension's operators with these
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
    return cuda_extension_status()


# How far a fast path may sit from the reference on the self-check input, as a fraction of the
# reference's largest value, per dtype. Both paths round to the dtype, and fp32 convolutions may
# use TF32 (10-bit mantissa, unit roundoff 2**-11) on both: ~20 unit roundoffs of the operand
# precision (fp32/TF32 and fp16: 20 * 2**-11 ~ 1e-2; bf16: 20 * 2**-8 ~ 8e-2) covers a correct
# kernel, while a broken one (wrong tap, channel, branch, uninitialised memory) errs by O(1).
SELF_CHECK_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 8e-2}
_self_checked: dict[tuple[str, str, torch.dtype, str], str | None] = {}  # key -> None (passed) or reason


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
    if key in _self_checked:  # also holds run_fast's compile failures, checked or not
        return _self_checked[key]
    if not self_check_enabled() or _cannot_run_eagerly(tensor):
        return None
    from labfast.ops import self_checks

    check = self_checks.CHECKS.get(op)
    if check is None:
        return None
    try:
        # Eager, with autograd, outside any autocast region or inference mode the caller is in.
        with torch.inference_mode(False), torch.enable_grad(), \
                torch.autocast(tensor.device.type, enabled=False):
            fast, reference = check(backend, tensor.device, tensor.dtype)
            reason = _mismatch(fast, reference, tensor.dtype)
    except Exception as error:  # a kernel that does not compile, a missing extension symbol, ...
        reason = f"raised {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
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


def run_fast(op: str, backend: str, tensor: torch.Tensor, fast: Callable[[], Result],
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
                           op, backend, tensor.dtype, tensor.device, type(error).__name__,
                           str(error).strip().splitlines()[0] if str(error).strip() else "")
        _self_checked[key] = f"did not compile ({type(error).__name__})"
        return reference()


def _takes_fast_paths(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` takes an available fast path unforced: CUDA tensors only."""
    return tensor.is_cuda


def select(op: str, tensor: torch.Tensor, supported: tuple[str, ...]) -> str:
    """Backend to run ``op`` on ``tensor``; ``supported`` lists the op's fast paths in preference order."""
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
