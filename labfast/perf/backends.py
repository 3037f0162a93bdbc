"""The backends a benchmark row names, and forcing ``labfast.ops``' dispatch onto one of them.

- ``reference``: ``LABFAST_BACKEND=reference``, eager; every ratio divides by this row.
- ``compile``: ``torch.compile`` of the reference model (or of the op's ``*_ref``).
- ``fast`` expands to ``fast`` (the ``labfast.ops`` fast paths, eager), ``fast+compile`` and, for
  inference, ``fast+cudagraphs``; in the kernel and heatmap sections to ``fast (triton)`` and
  ``fast (cuda)``, each fused op with that path forced.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

BACKEND_GROUPS = ("reference", "compile", "fast")

FAST_NEEDS_CUDA = ("fast paths (Triton / CUDA kernels) need CUDA tensors; on a CPU every op takes the "
                   "reference (TRITON_INTERPRET=1 is a correctness tool, not a fast path)")


class Unavailable(Exception):
    """A backend that cannot run on this device or install; the message is the reason."""


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


def under(value: str | None, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` wrapped so that every call runs under ``forced_backend(value)``."""
    def call():
        with forced_backend(value):
            return fn()
    return call


def dispatch(backend: str) -> str | None:
    """The ``LABFAST_BACKEND`` a model row runs under: the reference for ``reference`` and
    ``compile``, the default dispatch for the ``fast`` rows."""
    return "reference" if backend in ("reference", "compile") else None


def check_fast(backend: str, device: torch.device) -> None:
    """``Unavailable`` when a ``fast`` model row cannot run on ``device``."""
    if backend.startswith("fast") and device.type != "cuda":
        raise Unavailable(FAST_NEEDS_CUDA)
    if backend == "fast+cudagraphs" and device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")


def fast_path(backend: str, device: torch.device) -> str:
    """``"fast (triton)"`` -> ``"triton"``; ``Unavailable`` off CUDA."""
    if device.type != "cuda":
        raise Unavailable(FAST_NEEDS_CUDA)
    return backend[len("fast ("):-1]


def compiled(module_or_fn):
    """A fresh compiled callable (dynamo's caches reset, so no recompile limit is reached and no
    earlier backend's graphs are reused); static shapes, one compile per case."""
    torch._dynamo.reset()
    return torch.compile(module_or_fn, dynamic=False)


def row_backends(section: str, groups: tuple[str, ...] = BACKEND_GROUPS) -> list[str]:
    """The row backends of ``section`` for the requested groups, the reference always first.

    train / infer: ``compile``, then ``fast`` and ``fast+compile`` (and ``fast+cudagraphs`` for
    inference); heatmaps: the OpenCV raster baseline, no ``compile`` (the reference's chunk loop
    reads a tensor value on the host); kernels: ``compile`` of the op's ``*_ref``; both op sections
    then each fast path forced.
    """
    names = ["reference"]
    if section == "heatmaps":
        names.append("opencv")
    elif "compile" in groups:
        names.append("compile")
    if "fast" in groups and section in ("train", "infer"):
        names += ["fast", "fast+compile"] + (["fast+cudagraphs"] if section == "infer" else [])
    elif "fast" in groups:
        names += ["fast (triton)", "fast (cuda)"]
    return names
