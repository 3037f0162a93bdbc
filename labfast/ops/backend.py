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
"""
from __future__ import annotations

import functools
import logging
import os

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
        from labfast import _cuda  # noqa: F401
    except Exception as error:
        return f"the CUDA extension labfast._cuda is not built ({error}); build with LABFAST_BUILD_CUDA=1"
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


def select(op: str, tensor: torch.Tensor, supported: tuple[str, ...]) -> str:
    """Backend to run ``op`` on ``tensor``; ``supported`` lists the op's fast paths in preference order."""
    choice = forced(op)
    if choice is not None:
        reason = _unavailable(choice, tensor, supported)
        if reason is not None:
            raise RuntimeError(f"labfast op {op!r}: backend {choice!r} was forced but {reason}")
        return choice
    reasons = []
    for backend in supported:
        reason = _unavailable(backend, tensor, supported)
        if reason is None and tensor.is_cuda:
            return backend
        reasons.append(f"{backend}: {reason or 'CPU tensors take the reference unless a backend is forced'}")
    if op not in _logged:
        _logged.add(op)
        logger.info("labfast op %r runs the reference path (%s)", op, "; ".join(reasons) or "no fast path")
    return "reference"
