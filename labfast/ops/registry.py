"""The one list of labfast's fused ops: ``OPS``, name -> ``Op``.

Everything that needs the list of ops reads it here: the package's exports (``labfast.ops``), the
benchmarks and the roofline (``labfast.perf``), the offline compile, the tests. Adding an op is one
line below, beside its files (see the README's "How to add an op"):

- ``labfast/ops/<module>.py``: the public function ``<name>`` and its plain reference ``<name>_ref``
  (same signature, the equation in its docstring), ``OP = "<module>"`` (the name dispatch, its
  environment switch ``LABFAST_BACKEND_<MODULE>`` and the self-check go by), ``FAST_PATHS``, the
  ``torch.library`` operators with their fakes and autograd, and ``backend.register_self_check``;
- ``kernels/<module>.py``: the Triton kernels and their launchers (``labfast.kernels.<module>``);
- optionally ``csrc/<module>.cu`` with its launchers and fakes in ``labfast.ops.cuda_extension``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType

# Submodules by their full names: the package's __init__ imports this module (and exports the
# functions, which share some of these modules' names, once this module has run).
import labfast.ops.batch_norm_act as batch_norm_act
import labfast.ops.boundary_heatmaps as boundary_heatmaps
import labfast.ops.fusion as fusion
import labfast.ops.message_passing as message_passing


@dataclasses.dataclass(frozen=True)
class Op:
    """One fused op."""

    name: str  # the public function's name, exported by labfast.ops
    module: str  # labfast.ops.<module> holds it; also its name for dispatch (LABFAST_BACKEND_<MODULE>)
    function: Callable  # the public function (dispatches to a fast path or the reference)
    reference: Callable  # <name>_ref: plain PyTorch, same signature and result
    kernels: str  # the module of its Triton kernels and launchers
    fast_paths: tuple[str, ...]  # the backends besides "reference", in preference order
    model: bool  # LAB's forward calls it (bench, roofline and offline compile record those calls)
    trains: bool  # it has a backward (its parity tests and benchmarks take gradients)


def _op(module: ModuleType, name: str, *, model: bool, trains: bool) -> Op:
    short = module.__name__.rsplit(".", 1)[-1]
    return Op(name=name, module=short, function=getattr(module, name), reference=getattr(module, f"{name}_ref"),
              kernels=f"labfast.kernels.{short}", fast_paths=module.FAST_PATHS, model=model, trains=trains)


OPS: dict[str, Op] = {op.name: op for op in (
    _op(fusion, "input_fusion", model=True, trains=True),
    _op(fusion, "heatmap_feature_concat", model=True, trains=True),
    _op(fusion, "feature_fusion", model=True, trains=True),
    _op(message_passing, "message_passing", model=True, trains=True),
    _op(batch_norm_act, "batch_norm_act", model=True, trains=True),
    _op(boundary_heatmaps, "boundary_heatmaps", model=False, trains=False),
)}


def modules() -> tuple[str, ...]:
    """The ops' modules (their names for dispatch and self-checks), each once, in ``OPS`` order."""
    return tuple(dict.fromkeys(op.module for op in OPS.values()))
