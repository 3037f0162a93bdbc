"""The registry of ops (``labfast.ops.registry``) and the pattern each op follows: the public
function and its ``*_ref`` side by side in ``labfast/ops/<module>.py``, which names itself for
dispatch, registers a self-check, and has its kernels in ``labfast.kernels.<module>``."""
import importlib

import pytest

import labfast.ops
from labfast.ops import OPS, backend, registry


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_has_its_reference_its_dispatch_name_its_self_check_and_its_kernels(name):
    op = OPS[name]
    module = importlib.import_module(f"labfast.ops.{op.module}")
    assert op.function.__name__ == name and op.reference.__name__ == f"{name}_ref"
    assert op.function.__module__ == op.reference.__module__ == module.__name__
    assert getattr(labfast.ops, name) is op.function and getattr(labfast.ops, f"{name}_ref") is op.reference
    assert module.OP == op.module and module.FAST_PATHS == op.fast_paths
    assert set(op.fast_paths) <= set(backend.BACKENDS) - {"reference"}
    assert op.module in backend._self_checks
    assert importlib.import_module(op.kernels).__name__ == f"labfast.kernels.{op.module}"


def test_the_dispatch_names_are_the_modules_once_each():
    assert registry.modules() == ("fusion", "message_passing", "batch_norm_act", "boundary_heatmaps")
