"""Kernel launches of one inference forward, counted on the CPU: a proxy for the CUDA launches
that decide batch-1 latency."""
from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from labfast.perf.backends import forced_backend
from labfast.perf.traffic import recording


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
