"""Ops with a fast path (Triton / CUDA) and a plain PyTorch reference.

Every op of ``registry.OPS`` is exported here by name, with its reference as ``<name>_ref``
(``input_fusion``, ``input_fusion_ref``, ...); ``backend`` chooses between the paths.
"""
from labfast.ops.registry import OPS, Op

for _op in OPS.values():
    globals()[_op.name] = _op.function
    globals()[f"{_op.name}_ref"] = _op.reference

__all__ = ["OPS", "Op", *(name for op in OPS.values() for name in (op.name, f"{op.name}_ref"))]
