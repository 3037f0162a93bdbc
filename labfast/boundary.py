"""The OpenCV raster baseline of LAB's boundary heatmaps (Wu et al., CVPR 2018, Sec. 3.1).

**Not the ground truth.** labfast's ground truth is ``labfast.ops.boundary_heatmaps`` (the exact
distance of every pixel to the spline's polyline, on the model's device); training uses it. This
module is the per-face CPU pipeline that LAB re-implementations use (spline, rasterise, distance
transform), kept as the baseline the benchmarks compare the fast op against (``labfast bench
--what heatmaps``, ``benchmarks/test_boundary_heatmaps.py``).

For every boundary line of a face (the landmark indices in ``scheme.boundaries``):

1. **Dense curve** (:func:`dense_curve`). Consecutive repeated points are removed; the rest are
   interpolated by a parametric B-spline through the points (``scipy.interpolate.splprep``,
   ``s=0``, ``k=min(3, n-1)``, chord-length parameters — what the public re-implementations do;
   the official release has no boundary generation). One point is a dot. The spline is sampled
   densely enough that consecutive samples are at most ``1 / samples_per_pixel`` pixels apart
   (default 0.5 px): the sample count follows from the curve's length, never a fixed number (a
   fixed 64 samples leaves gaps on a long contour). The samples include the input points
   themselves (exactly), so the curve passes through every landmark.
2. **Rasterise** into a binary map: each sample is rounded to its nearest pixel centre,
   ``floor(v + 0.5)`` (halves round up). Pixel (row i, col j) has its centre at (x=j, y=i), so a
   point at x=3.0 lights column 3. Because samples are at most 0.5 px apart, two consecutive
   rounded pixels differ by at most one in each axis: the lit pixels form an 8-connected chain with
   no gaps — the same as drawing the polyline of the samples, stated more simply. The map is
   padded by ``ceil(3 sigma) + 1`` pixels on every side, so the parts of a curve just outside the
   heatmap still lower the distance of the pixels near the edge; curve pixels beyond the padding
   cannot reach any heatmap pixel within ``3 sigma`` and are dropped (clipping).
3. **Distance transform**: ``cv2.distanceTransform(DIST_L2, DIST_MASK_PRECISE)``, the exact
   Euclidean distance ``d`` of every pixel centre to the nearest lit pixel centre (the 5×5 mask is
   an approximation off by up to ~2 %, e.g. 2.197 instead of sqrt(5) = 2.236).
4. **Gaussian with a cut-off**: ``M = exp(-d² / (2 sigma²))`` where ``d < 3 sigma``, else 0.
   sigma = 1 at 64×64 is the default.

How far this baseline is from the ground truth. Bound: a lit pixel centre is within sqrt(2)/2 px
of a sample on the curve, and every curve point is within 0.25 px (half the sample spacing) of a
sample, so ``d_exact - 0.71 <= d_raster <= d_exact + 0.96`` px; the 5×5 mask adds up to ~2 %. With
sigma = 1 the Gaussian moves at most 1/sqrt(e) per px and the 3 sigma cut can add exp(-4.5):
at most 0.96 / sqrt(e) + exp(-4.5) = 0.59 per pixel. Measured |raster - ground truth| per pixel
at 64×64, sigma 1, over all ``faces x 13 x 64 x 64`` values (landmarks 1-based .pts -> 0-based,
256-px crop -> heatmap ``(x + 0.5) / 4 - 0.5``):

=====================================================  ======  =====
faces                                                   mean    max
=====================================================  ======  =====
the 40 bundled 300-W crops (``data/300w_sample``)       0.0025  0.40
the 224 300-W LFPW test faces                           0.0025  0.41
40 WFLW large-pose test faces (box fit to 48 px)        0.0026  0.37
=====================================================  ======  =====

The largest differences sit 1-2 px off the curve, where the Gaussian is steepest; the two agree
on the landmark pixels themselves (``d = 0``, value 1) when landmarks lie on pixel centres.
``tests/test_boundary.py`` pins the bundled-face figures.

:func:`heatmaps` accepts NumPy arrays or torch tensors (detached and copied to the CPU) and always
returns a float32 NumPy array: one way in, one way out.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.interpolate import splev, splprep

from labfast.arrays import as_numpy
from labfast.schemes import Scheme, get

#: Consecutive points closer than this (pixels) count as repeated and are merged before fitting:
#: a spline through two (nearly) coincident points has a (nearly) zero parameter step and swings
#: wildly; a thousandth of a pixel cannot change the rasterised map.
REPEAT_TOLERANCE = 1e-3

#: Upper bound on the samples of one dense curve, so that an absurd coordinate (1e9) fails with
#: a clear error instead of exhausting memory. 2e6 samples cover a curve 1e6 px long at 2/px.
MAX_SAMPLES = 2_000_000


def _remove_repeats(points: np.ndarray) -> np.ndarray:
    """``(n, 2)`` -> ``(m, 2)``, m <= n: drop each point within REPEAT_TOLERANCE of its predecessor kept."""
    kept = [points[0]]
    for point in points[1:]:
        if np.hypot(*(point - kept[-1])) >= REPEAT_TOLERANCE:
            kept.append(point)
    return np.stack(kept)


def dense_curve(points, samples_per_pixel: float = 2.0) -> np.ndarray:
    """Densified curve of one boundary: ``(n, 2)`` points (x, y) -> ``(P, 2)`` float64 samples.

    Interpolating parametric B-spline (``splprep(s=0, k=min(3, n-1))``) through the points after
    consecutive repeats are removed; a single remaining point is returned as the ``(1, 2)`` dot.
    Samples are spaced at most ``1 / samples_per_pixel`` px apart (Euclidean distance between
    consecutive samples) and include the input points themselves, in curve order.

    The sample count starts from the polyline length of the points and is refined from the measured
    largest gap: a cubic spline can be longer than its control polyline (it overshoots between
    irregular points) and its chord-length parameter is not arc length, so one pass is not enough.
    """
    if samples_per_pixel <= 0:
        raise ValueError(f"samples_per_pixel must be positive, got {samples_per_pixel}")
    points = as_numpy(points)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"points must have shape (n, 2) with n >= 1, got {points.shape}")
    if not np.isfinite(points).all():
        bad = np.argwhere(~np.isfinite(points).all(axis=1)).ravel().tolist()
        raise ValueError(f"points must be finite; rows {bad} hold NaN or inf")
    points = _remove_repeats(points)
    if len(points) == 1:
        return points.copy()

    degree = min(3, len(points) - 1)
    tck, knot_params = splprep(points.T, s=0, k=degree)
    max_gap = 1.0 / samples_per_pixel
    polyline_length = np.hypot(*np.diff(points, axis=0).T).sum()
    count = int(math.ceil(polyline_length * samples_per_pixel)) + 1
    while True:
        if count > MAX_SAMPLES:
            raise ValueError(
                f"boundary curve of length >= {polyline_length:.3g} px needs more than {MAX_SAMPLES} "
                "samples; are the landmarks in heatmap pixel units?"
            )
        params = np.union1d(np.linspace(0.0, 1.0, count), knot_params)
        samples = np.stack(splev(params, tck), axis=1)
        # The spline reproduces its points only to ~1e-15; put them back exactly so that a landmark
        # on a half pixel rounds like the landmark itself (one-point dots included).
        samples[np.searchsorted(params, knot_params)] = points
        gap = np.hypot(*np.diff(samples, axis=0).T).max()
        if gap <= max_gap:
            return samples
        # Gaps shrink in proportion to the parameter step; 5 % more avoids a near-miss loop.
        count = int(math.ceil((count - 1) * gap / max_gap * 1.05)) + 1


def _boundary_heatmap(points: np.ndarray, size: int, sigma: float, pad: int) -> np.ndarray:
    """One boundary ``(n, 2)`` -> ``(size, size)`` float32 heatmap (see the module docstring)."""
    curve = dense_curve(points)
    pixels = np.floor(curve + 0.5).astype(np.int64) + pad  # (P, 2) column, row on the padded canvas
    canvas_size = size + 2 * pad
    inside = ((pixels >= 0) & (pixels < canvas_size)).all(axis=1)
    if not inside.any():
        return np.zeros((size, size), np.float32)
    # distanceTransform measures the distance to the nearest ZERO pixel: the curve is 0, the rest 255.
    canvas = np.full((canvas_size, canvas_size), 255, np.uint8)
    canvas[pixels[inside, 1], pixels[inside, 0]] = 0
    distance = cv2.distanceTransform(canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    distance = distance[pad:pad + size, pad:pad + size].astype(np.float64)
    heatmap = np.where(distance < 3.0 * sigma, np.exp(-distance**2 / (2.0 * sigma**2)), 0.0)
    return heatmap.astype(np.float32)


def heatmaps(landmarks, scheme: Scheme | str, size: int = 64, sigma: float = 1.0) -> np.ndarray:
    """Raster-baseline boundary heatmaps: ``(N, L, 2)`` landmarks -> ``(N, K, size, size)`` float32.

    Not the ground truth (``labfast.ops.boundary_heatmaps``); see the module docstring for how far
    from it this is.

    Args:
        landmarks: NumPy array or torch tensor, (x, y) in heatmap pixel units. With pixel centres at
            integer coordinates, crop coordinates map to a heatmap ``size / input_size`` times smaller
            as ``x_heatmap = (x_crop + 0.5) * size / input_size - 0.5`` (256 -> 64: ``(x + 0.5) / 4 - 0.5``).
            Points outside the map are fine: the curve is clipped, a channel may be all zero.
        scheme: a :class:`~labfast.schemes.Scheme` or its name; K = ``scheme.num_boundaries``,
            channels in ``scheme.boundaries`` order.
        size: heatmap side in pixels.
        sigma: Gaussian width in pixels; values are 0 where the distance is ``>= 3 sigma``.

    Raises:
        ValueError: wrong shape, point count not the scheme's, NaN/inf landmarks (the face and point
            are named), non-positive size or sigma.
    """
    scheme = get(scheme)
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    landmarks = as_numpy(landmarks)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2:
        raise ValueError(f"landmarks must have shape (N, L, 2), got {landmarks.shape}")
    if landmarks.shape[1] != scheme.num_points:
        raise ValueError(
            f"landmarks have {landmarks.shape[1]} points per face; scheme {scheme.name!r} has "
            f"{scheme.num_points}"
        )
    bad = np.argwhere(~np.isfinite(landmarks).all(axis=2))
    if len(bad):
        face, point = bad[0]
        raise ValueError(
            f"landmarks must be finite: face {face}, point {point} is {landmarks[face, point].tolist()} "
            f"({len(bad)} non-finite points in all)"
        )
    size = int(size)
    pad = int(math.ceil(3.0 * sigma)) + 1
    out = np.zeros((len(landmarks), scheme.num_boundaries, size, size), np.float32)
    for face, face_landmarks in enumerate(landmarks):
        for channel, indices in enumerate(scheme.boundaries.values()):
            out[face, channel] = _boundary_heatmap(face_landmarks[list(indices)], size, sigma, pad)
    return out
