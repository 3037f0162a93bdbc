"""Which fused ops the model calls, and with what: one recording of ``labfast.ops`` calls for the
benchmark's kernel cases, the roofline's per-op rows and the offline compile, and the distinct
calls of one forward (``kernel_cases``), named as the rows of both tables name them.

The model calls its fused ops as ``labfast.ops.<name>(...)``, so replacing those attributes for
the duration of one forward sees every call, with the arguments the model passes, whatever the
device (``meta``, ``FakeTensorMode``, a real one).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from labfast.ops import OPS
from labfast.perf.backends import forced_backend
from labfast.perf.inputs import INPUT_SIZE, SCHEME

MODEL_OPS = tuple(name for name, op in OPS.items() if op.model)
"""The fused ops of ``labfast.ops`` that LAB's forward calls (``labfast.ops.registry``; the
ground-truth heatmaps are made outside the model, by ``labfast.ops.boundary_heatmaps``)."""


class TensorSpec(NamedTuple):
    """A tensor argument as recorded: what it takes to make one like it."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype


class OpCall(NamedTuple):
    """One call of ``labfast.ops.<op>``: tensors as ``TensorSpec``, the other arguments as given."""

    op: str
    args: tuple


def _spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.stride(), value.dtype)
    return value


def record(forward: Callable[[], Any], ops: tuple[str, ...] = MODEL_OPS) -> list[OpCall]:
    """Every call of the ``ops`` while ``forward()`` runs, in call order (repeats kept), with every op
    on its reference path (``LABFAST_BACKEND=reference``): the calls are recorded, then run."""
    import labfast.ops

    calls: list[OpCall] = []
    originals = {name: getattr(labfast.ops, name) for name in ops}

    def recorder(name: str):
        def call(*args):
            calls.append(OpCall(name, tuple(_spec(a) for a in args)))
            return originals[name](*args)
        return call

    try:
        for name in ops:
            setattr(labfast.ops, name, recorder(name))
        with forced_backend("reference"):
            forward()
    finally:
        for name, original in originals.items():
            setattr(labfast.ops, name, original)
    return calls


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One fused op at one argument signature the model uses: tensor shapes and static arguments."""

    op: str
    shapes: tuple[tuple[int, ...] | None, ...]  # per tensor argument (None for an absent bias)
    edges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, call: OpCall) -> KernelCase:
        """The case of one recorded call."""
        shapes = tuple(None if a is None else a.shape for a in call.args if a is None or isinstance(a, TensorSpec))
        edges = tuple(tuple(e) for e in call.args[3]) if call.op == "message_passing" else ()
        return cls(call.op, shapes, edges)

    @property
    def label(self) -> str:
        """The op and its tensor shapes, e.g. ``feature_fusion 2x64x64x64,2x64x64x64`` (weights as ``E=``;
        batch norm: the activation's shape, ``+ residual`` when it adds one)."""
        shapes, suffix = self.shapes, ""
        if self.op == "message_passing":
            shapes, suffix = self.shapes[:1], f" E={self.shapes[1][0]} k={self.shapes[1][-1]}"
        elif self.op == "batch_norm_act":
            shapes, suffix = self.shapes[:1], " + residual" if self.shapes[5] is not None else ""
        return f"{self.op} " + ",".join("x".join(map(str, shape)) for shape in shapes if shape is not None) + suffix


def kernel_cases(config_name: str, batch: int) -> list[KernelCase]:
    """The distinct calls of the fused ops in one forward pass of LAB at ``batch`` (meta device).

    Batch norm + ReLU is called at ~35 distinct shapes (every width at every hourglass level): it
    keeps, per (channels, residual or not), its call on the largest map."""
    from labfast.model import LAB, config_by_name

    model = LAB(SCHEME, config_by_name(config_name)).to("meta").eval()

    def forward():
        with torch.no_grad():
            model(torch.zeros(batch, 3, INPUT_SIZE, INPUT_SIZE, device="meta"))

    seen = list(dict.fromkeys(KernelCase.of(call) for call in record(forward)))

    def norm_key(case: KernelCase) -> tuple[int, bool]:
        return case.shapes[0][1], case.shapes[5] is not None

    largest: dict[tuple[int, bool], KernelCase] = {}
    for case in (case for case in seen if case.op == "batch_norm_act"):
        key = norm_key(case)
        if key not in largest or math.prod(case.shapes[0]) > math.prod(largest[key].shapes[0]):
            largest[key] = case
    return [case for case in seen if case.op != "batch_norm_act" or largest[norm_key(case)] is case]
