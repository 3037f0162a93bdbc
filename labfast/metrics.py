"""Face-alignment metrics: NME, failure rate, AUC and the CED curve (LAB, Wu et al. 2018, Sec. 4).

- **NME** of a face: the mean point-to-point Euclidean error over its L landmarks divided by a
  normaliser — the distance between ``scheme.normalizer_points`` of the *ground truth*
  (inter-ocular = outer eye corners for 300-W and WFLW, inter-pupil for COFW) or, for
  ``"box"`` (AFLW), the face size ``sqrt(w * h)`` of the given boxes.
- **FR@t**: share of faces with NME > t (t = 0.10 in LAB).
- **CED**: the cumulative error distribution ``CED(e) = share of faces with NME <= e``.
- **Paired bootstrap**: an interval on the difference of two methods' means over the same faces.
- **AUC@t**: ``(1/t) * integral_0^t CED(e) de``. CED is a step function, so the integral is exact
  in closed form: each face with NME ``n_i < t`` contributes ``(t - n_i) / N``, hence
  ``AUC = mean(max(0, 1 - n_i / t))``. Implementations that integrate CED on a grid (trapezoid on
  ``linspace(0, t, m)``) differ from it by up to about ``t / m`` in error units.

Units: the functions here return fractions; :func:`summarize` reports what the papers print —
NME and FR in percent, AUC as a fraction (e.g. LAB on WFLW: 5.27, 7.56, 0.532).
All inputs may be NumPy arrays or torch tensors; results are float64 NumPy.
"""
from __future__ import annotations


import numpy as np

from labfast.arrays import as_numpy
from labfast.schemes import Scheme, get


def _check_finite(array: np.ndarray, name: str) -> None:
    if not np.isfinite(array).all():
        first = np.argwhere(~np.isfinite(array))[0].tolist()
        raise ValueError(f"{name} must be finite; index {first} is {array[tuple(first)]}")


def _check_nmes(nmes) -> np.ndarray:
    nmes = as_numpy(nmes)
    if nmes.ndim != 1 or len(nmes) == 0:
        raise ValueError(f"nmes must be a non-empty 1-D array of per-face errors, got shape {nmes.shape}")
    _check_finite(nmes, "nmes")
    if (nmes < 0).any():
        raise ValueError(f"nmes must be non-negative; face {int(np.argmin(nmes))} has {nmes.min()}")
    return nmes


def _check_threshold(threshold: float) -> float:
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold!r}")
    return float(threshold)


def nme(pred, gt, scheme: Scheme | str, boxes=None) -> np.ndarray:
    """Per-face normalised mean error: ``(N, L, 2)`` predictions and ground truth -> ``(N,)`` float64.

    Args:
        pred, gt: landmarks (x, y) in the same pixel units.
        scheme: the :class:`~labfast.schemes.Scheme` (or name) whose normaliser applies.
        boxes: ``(N, 4)`` face boxes ``x0, y0, x1, y1``; required when ``scheme.normalizer == "box"``
            (normaliser ``sqrt((x1 - x0) * (y1 - y0))``), ignored otherwise.
    """
    scheme = get(scheme)
    pred, gt = as_numpy(pred), as_numpy(gt)
    if gt.ndim != 3 or gt.shape[2] != 2 or gt.shape[1] != scheme.num_points:
        raise ValueError(
            f"gt must have shape (N, {scheme.num_points}, 2) for scheme {scheme.name!r}, got {gt.shape}"
        )
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {pred.shape} but gt has {gt.shape}")
    _check_finite(pred, "pred")
    _check_finite(gt, "gt")

    if scheme.normalizer in ("inter_ocular", "inter_pupil"):
        first, second = scheme.normalizer_points
        normalizer = np.linalg.norm(gt[:, first] - gt[:, second], axis=1)
        what = f"{scheme.normalizer} distance (gt points {first} and {second})"
    elif scheme.normalizer == "box":
        if boxes is None:
            raise ValueError(f"scheme {scheme.name!r} normalises by the face box: pass boxes (N, 4)")
        boxes = as_numpy(boxes)
        if boxes.shape != (len(gt), 4):
            raise ValueError(f"boxes must have shape ({len(gt)}, 4) as x0, y0, x1, y1, got {boxes.shape}")
        _check_finite(boxes, "boxes")
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        normalizer = np.sqrt(np.clip(width, 0, None) * np.clip(height, 0, None))
        what = "box size sqrt(w * h)"
    else:
        raise ValueError(f"scheme {scheme.name!r} has unknown normalizer {scheme.normalizer!r}")
    if (normalizer <= 0).any():
        face = int(np.argmin(normalizer))
        raise ValueError(f"face {face}: the {what} is {normalizer[face]}, cannot normalise by it")

    errors = np.linalg.norm(pred - gt, axis=2).mean(axis=1)
    return errors / normalizer


def failure_rate(nmes, threshold: float = 0.10) -> float:
    """Share (fraction in [0, 1]) of faces with NME strictly greater than ``threshold``."""
    nmes, threshold = _check_nmes(nmes), _check_threshold(threshold)
    return float(np.mean(nmes > threshold))


def auc(nmes, threshold: float = 0.10) -> float:
    """Area under the CED on ``[0, threshold]`` divided by ``threshold``, exact: ``mean(max(0, 1 - n/t))``."""
    nmes, threshold = _check_nmes(nmes), _check_threshold(threshold)
    return float(np.mean(np.clip(1.0 - nmes / threshold, 0.0, None)))


def ced(nmes, threshold: float = 0.10) -> tuple[np.ndarray, np.ndarray]:
    """The exact CED step function on ``[0, threshold]`` as ``(x, y)`` for ``step(x, y, where="post")``.

    ``x`` is 0, every distinct NME below ``threshold`` in increasing order, then ``threshold``;
    ``y[i]`` is the share of faces with NME ``<= x[i]``, constant on ``[x[i], x[i + 1])``. So
    ``sum(y[:-1] * diff(x)) / threshold == auc(nmes, threshold)``.
    """
    nmes, threshold = _check_nmes(nmes), _check_threshold(threshold)
    ordered = np.sort(nmes)
    x = np.unique(np.concatenate([[0.0], ordered[ordered < threshold], [threshold]]))
    y = np.searchsorted(ordered, x, side="right") / len(ordered)
    return x, y


def summarize(nmes, threshold: float = 0.10) -> dict[str, float]:
    """``{"nme": %, "fr": %, "auc": fraction, "count": N}`` — the units the papers print."""
    nmes = _check_nmes(nmes)
    return {
        "nme": 100.0 * float(nmes.mean()),
        "fr": 100.0 * failure_rate(nmes, threshold),
        "auc": auc(nmes, threshold),
        "count": len(nmes),
    }


def paired_bootstrap(first, second, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """``mean(first) - mean(second)`` of two methods' per-face values on the same faces, with a
    percentile bootstrap interval at ``level``.

    Each resample draws the faces with replacement and takes the same faces for both methods, so
    what makes a face hard for both cancels in the difference: on a hundred faces the interval is
    much narrower than two separate intervals would suggest. A share (failure rate) is the mean of
    0/1 values. Seeded: the same inputs give the same interval.

    Returns:
        ``{"difference", "low", "high"}`` in the units of the inputs.
    """
    first, second = as_numpy(first), as_numpy(second)
    if first.ndim != 1 or first.shape != second.shape or len(first) == 0:
        raise ValueError(f"paired values must be two non-empty 1-D arrays of one length, got {first.shape} and {second.shape}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    differences = first - second
    generator = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 1_000_000 // len(differences))  # rows of face indices drawn at once: bounded memory
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        means[start:start + rows] = differences[generator.integers(0, len(differences), (rows, len(differences)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"difference": float(differences.mean()), "low": float(low), "high": float(high)}
