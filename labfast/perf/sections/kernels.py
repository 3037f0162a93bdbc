"""``kernels``: every fused op at the shapes the model calls it with (recorded from one forward
pass on the meta device, ``labfast.perf.op_calls.kernel_cases``), forward only, against its
``*_ref`` and ``torch.compile(*_ref)``."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from labfast.perf import backends
from labfast.perf.inputs import DTYPES
from labfast.perf.measure import Row, Rows
from labfast.perf.op_calls import KernelCase, kernel_cases


def kernel_arguments(case: KernelCase, dtype: str, device: torch.device, seed: int = 0) -> tuple:
    """Random arguments of ``case``'s op in ``dtype`` on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [None if shape is None else torch.rand(shape, generator=generator).to(device, DTYPES[dtype])
               for shape in case.shapes]
    if case.op == "message_passing":
        tensors[1] = (tensors[1] - 0.5) * 0.1  # conv weights of a sensible size
        return (*tensors, case.edges)
    return tuple(tensors)


def prepare(case: KernelCase, dtype: str, backend: str, device: torch.device,
            seed: int = 0) -> Callable[[], Any]:
    """A callable running ``case``'s op (forward) with ``backend`` (batch norm: in training, its
    defaults: batch statistics, running-statistic update, ReLU)."""
    from labfast import ops

    reference = ops.OPS[case.op].reference
    arguments = kernel_arguments(case, dtype, device, seed)
    if backend == "reference":
        return backends.under("reference", lambda: reference(*arguments))
    if backend == "compile":
        compiled = backends.compiled(reference)
        return backends.under("reference", lambda: compiled(*arguments))
    path = backends.fast_path(backend, device)
    op = getattr(ops, case.op)
    return backends.under(path, lambda: op(*arguments))


def measure(rows: Rows, config: str, batch: int, dtype: str, names: list[str]) -> None:
    """The rows of the ``names`` backends for every case of ``config`` at ``batch``."""
    for case in kernel_cases(config, batch):
        _measure_case(rows, case, batch, dtype, names)


def _measure_case(rows: Rows, case: KernelCase, batch: int, dtype: str, names: list[str]) -> None:
    inputs = sum(math.prod(shape) for shape in case.shapes if shape is not None) * DTYPES[dtype].itemsize
    rows.measure(names, lambda backend: Row("kernels", case.label, backend, dtype, batch, "calls/s", bytes=inputs),
                 lambda backend: prepare(case, dtype, backend, rows.device), 1, count_bytes=True)
