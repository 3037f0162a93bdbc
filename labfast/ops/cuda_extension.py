"""The CUDA extension ``labfast._cuda`` (``csrc/*.cu``, built by ``setup.py`` only with
``LABFAST_BUILD_CUDA=1``): its loading, its launchers and the fakes of its operators.

- ``status()`` loads it once and says why it cannot run (``None`` when it can);
  ``labfast.ops.backend`` offers the ``cuda`` path only then.
- The launchers have the signatures of the Triton launchers in ``labfast.kernels`` (the operators
  of ``labfast.ops`` call either the same way); they cast their inputs to the dtype the kernels
  compute in, as the references do, and the gradients back to each input's dtype.
- ``FAKES`` gives every ``torch.ops.labfast_cuda`` operator the ``m.def(...)`` lines of
  ``csrc/*.cu`` declare a fake kernel (the shape and dtype the CUDA kernel returns,
  NCHW-contiguous), registered when the extension loads, so that ``torch.compile`` and
  ``torch.export`` can trace them (a test checks the two lists agree).
"""
from __future__ import annotations

import functools

import torch


@functools.cache
def status() -> str | None:
    """``None`` if the compiled ``labfast._cuda`` extension loads, else the reason."""
    try:
        import labfast._cuda  # noqa: F401  (registers torch.ops.labfast_cuda)
    except Exception as error:
        return f"the CUDA extension labfast._cuda is not built ({error}); build with LABFAST_BUILD_CUDA=1"
    for name, fake in FAKES.items():
        torch.library.register_fake(f"labfast_cuda::{name}", fake)
    return None


def _operators():
    """``torch.ops.labfast_cuda``, the extension loaded (``ImportError`` with the reason if it cannot be)."""
    reason = status()
    if reason is not None:
        raise ImportError(reason)
    return torch.ops.labfast_cuda


# ---------------------------------------------------------------------------------------------
# Launchers. Heatmaps are cast to the image's / features' dtype and feature fusion runs in the
# promoted dtype, as in the references.


def boundary_heatmaps(curves: torch.Tensor, height: int, width: int, sigma: float,
                      dtype: torch.dtype) -> torch.Tensor:
    """``(N, K, P, 2)`` float32 curves -> ``(N, K, height, width)`` heatmaps in ``dtype``."""
    return _operators().boundary_heatmaps(curves, height, width, sigma, dtype)


def input_fusion_forward(image: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    return _operators().input_fusion_forward(image, heatmaps.to(image.dtype))


def input_fusion_backward(grad: torch.Tensor, image: torch.Tensor, heatmaps: torch.Tensor,
                          need_image: bool, need_heatmaps: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    operators = _operators()
    cast = heatmaps.to(image.dtype)
    grad_image = operators.input_fusion_backward_image(grad, image, cast) if need_image else None
    grad_heatmaps = None
    if need_heatmaps:
        grad_heatmaps = operators.input_fusion_backward_heatmaps(grad, image, cast).to(heatmaps.dtype)
    return grad_image, grad_heatmaps


def heatmap_feature_concat_forward(heatmaps: torch.Tensor, features: torch.Tensor, area: bool) -> torch.Tensor:
    return _operators().heatmap_feature_concat_forward(heatmaps.to(features.dtype), features, area)


def heatmap_feature_concat_backward(grad: torch.Tensor, heatmaps: torch.Tensor, features: torch.Tensor, area: bool,
                                   need_heatmaps: bool) -> tuple[torch.Tensor | None]:
    """``(dL/dM,)``: dL/dF is the slice ``grad[:, K:]`` (F is copied unchanged), taken by the operator."""
    if not need_heatmaps:
        return (None,)
    grad_heatmaps = _operators().heatmap_feature_concat_backward_heatmaps(grad, heatmaps.to(grad.dtype), area)
    return (grad_heatmaps.to(heatmaps.dtype),)


def feature_fusion_forward(features: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(features.dtype, gate.dtype)
    return _operators().feature_fusion_forward(features.to(dtype), gate.to(dtype))


def feature_fusion_backward(grad: torch.Tensor, features: torch.Tensor, gate: torch.Tensor, need_features: bool,
                            need_gate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients whatever is needed: one kernel writes the two."""
    dtype = torch.promote_types(features.dtype, gate.dtype)
    grad_features, grad_gate = _operators().feature_fusion_backward(grad, features.to(dtype), gate.to(dtype))
    return grad_features.to(features.dtype), grad_gate.to(gate.dtype)


# ---------------------------------------------------------------------------------------------
# Fakes, one per ``m.def(...)`` of csrc/*.cu.


def _empty(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device)


def _boundary_heatmaps_fake(curves, height, width, sigma, dtype):
    return _empty((curves.shape[0], curves.shape[1], height, width), curves, dtype)


def _input_fusion_forward_fake(image, heatmaps):
    n, c, height, width = image.shape
    return _empty((n, c * (heatmaps.shape[1] + 1), height, width), image)


def _heatmap_feature_concat_forward_fake(heatmaps, features, area):
    n, c, height, width = features.shape
    return _empty((n, heatmaps.shape[1] + c, height, width), features)


def _feature_fusion_forward_fake(features, gate):
    n, c, height, width = features.shape
    return _empty((n, 2 * c, height, width), features)


FAKES = {
    "boundary_heatmaps": _boundary_heatmaps_fake,
    "input_fusion_forward": _input_fusion_forward_fake,
    "input_fusion_backward_image": lambda grad, image, heatmaps: _empty(image.shape, image),
    "input_fusion_backward_heatmaps": lambda grad, image, heatmaps: _empty(heatmaps.shape, heatmaps),
    "heatmap_feature_concat_forward": _heatmap_feature_concat_forward_fake,
    "heatmap_feature_concat_backward_heatmaps": lambda grad, heatmaps, area: _empty(heatmaps.shape, heatmaps),
    "feature_fusion_forward": _feature_fusion_forward_fake,
    "feature_fusion_backward": lambda grad, features, gate: (_empty(features.shape, features),
                                                             _empty(gate.shape, gate)),
}
