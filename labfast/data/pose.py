"""Pose-based data balancing (Feng et al., *Wing Loss*, CVPR 2018, Sec. 5): a yaw estimate from the
landmarks and sampling weights that draw rare large-pose faces more often.

300-W's training faces are mostly frontal, and large pose is where a small model fails most on faces
in the wild. Feng et al. duplicate the minority poses (each copy augmented anew); drawing each face
with a weight inversely proportional to its pose bin's frequency does the same in expectation.
"""
from __future__ import annotations

import numpy as np

#: Per scheme: the nose tip and the two ends of the jaw line (the contour's first and last point).
YAW_POINTS = {"300w": (30, 0, 16), "wflw": (54, 0, 32)}


def yaw_proxy(landmarks: np.ndarray, scheme: str) -> np.ndarray:
    """``(N,)`` signed yaw estimate of ``(N, L, 2)`` landmarks: 0 frontal, ±1 the nose tip over a jaw end.

    The nose tip's offset from the midpoint of the jaw ends, along the jaw-end axis, over half the
    jaw width: ``(2 n - a - b) / (b - a)`` with ``a, b, n`` the jaw ends and the nose tip projected
    onto that axis. Invariant to in-plane rotation, scale and shift; it grows with out-of-plane
    rotation because the nose turns towards the near cheek while the contour's ends stay on the
    silhouette. Clipped to ±1 (a profile's nose can pass the visible contour).
    """
    if scheme not in YAW_POINTS:
        raise ValueError(f"yaw_proxy: no yaw points for scheme {scheme!r}; known: {', '.join(YAW_POINTS)}")
    nose, first, last = YAW_POINTS[scheme]
    points = np.asarray(landmarks, dtype=np.float64)
    axis = points[:, last] - points[:, first]
    length = np.linalg.norm(axis, axis=-1)
    unit = axis / np.maximum(length, 1e-9)[:, None]
    offset = ((2 * points[:, nose] - points[:, first] - points[:, last]) * unit).sum(-1)
    return np.clip(offset / np.maximum(length, 1e-9), -1.0, 1.0)


def balance_weights(landmarks: np.ndarray, scheme: str, bins: int, cap: float) -> np.ndarray:
    """``(N,)`` sampling weights, the most common pose bin's faces at 1 and the rarest at most ``cap``.

    ``|yaw_proxy|`` is cut into ``bins`` equal bins over [0, 1]; a face's weight is the largest
    bin's count over its own bin's count, capped at ``cap`` so that a handful of profiles is not
    drawn tens of times an epoch (an over-fitting risk on 300-W's few profiles).
    """
    if bins < 1 or cap < 1:
        raise ValueError(f"balance_weights: bins ({bins}) and cap ({cap}) must be at least 1")
    yaw = np.abs(yaw_proxy(landmarks, scheme))
    which = np.minimum((yaw * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    return np.minimum(counts.max() / counts[which], cap)
