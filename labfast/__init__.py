"""labfast: Look at Boundary (Wu et al., CVPR 2018) face alignment — fast, complete, honest.

The public API: ``FaceAligner`` for inference, ``LAB`` / ``LABConfig`` for the model,
``boundary_heatmaps`` (the ground-truth boundary heatmaps, ``labfast.ops.boundary_heatmaps``), and
the modules ``schemes`` (landmark schemes), ``boundary`` (the per-face OpenCV raster baseline of
the heatmaps, for benchmarks; not the ground truth) and ``metrics`` (NME, FR, AUC, CED). Names
are imported on first use (PEP 562), so that
``import labfast`` and ``labfast --help`` do not pay for torch and OpenCV up front.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Face": "labfast.inference.aligner",
    "FaceAligner": "labfast.inference.aligner",
    "LAB": "labfast.model",
    "LABConfig": "labfast.model",
    "boundary_heatmaps": "labfast.ops",
    "boundary": None,
    "metrics": None,
    "schemes": None,
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'labfast' has no attribute {name!r}")
    module = _EXPORTS[name]
    value = importlib.import_module(f"labfast.{name}") if module is None else getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
