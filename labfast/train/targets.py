"""The ground truth of one training step: the dense boundary curves of the crop's landmarks and the
boundary heatmaps drawn from them (LAB Sec. 3.1), made on the model's device once a step.

:func:`boundary_targets` is the step's definition; :func:`boundary_targets_compiled` (same
signature, ``TrainConfig.compile_step``) makes the same curves and heatmaps with two compiled
graphs: the curves, and the distance pass in windows whose side is read once on the host, where
the eager reference makes about fifteen passes over its window temporaries. The heatmaps agree
to rounding (``tests/train/test_speed.py``).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from labfast.data.transforms import rescale_pixel_coordinates
from labfast.ops.boundary_heatmaps import (check_finite_landmarks, dense_curves, gaussian_cut, heatmaps_of_curves,
                                           squared_distance_in_windows, window_side)

#: The compiled distance pass is made for window sides rounded up to a multiple of this: a larger
#: window changes no heatmap value (``squared_distance_in_windows``) and a new side is a recompile.
WINDOW_STEP = 4


class BoundaryTargets(NamedTuple):
    """The ground truth of one step in heatmap pixels: ``(N, K, P, 2)`` curves, ``(N, K, h, w)`` heatmaps."""

    curves: torch.Tensor
    heatmaps: torch.Tensor


def heatmap_coordinates(landmarks: torch.Tensor, input_size: int, heatmap_size: int) -> torch.Tensor:
    """Crop pixel coordinates -> heatmap pixel coordinates (pixel centres map onto pixel centres)."""
    return rescale_pixel_coordinates(landmarks, heatmap_size / input_size)


def boundary_targets(landmarks: torch.Tensor, boundary_scheme, input_size: int, heatmap_size: int,
                     sigma: float) -> BoundaryTargets:
    """The ground truth of crop-pixel ``(N, L, 2)`` landmarks: their dense curves and heatmaps.

    A non-finite landmark raises ``ValueError`` naming the sample and the landmark.
    """
    points = heatmap_coordinates(landmarks, input_size, heatmap_size).float()
    check_finite_landmarks(points)
    curves = dense_curves(points, boundary_scheme, heatmap_size)
    return BoundaryTargets(curves, heatmaps_of_curves(curves, heatmap_size, sigma))


def boundary_targets_compiled(landmarks: torch.Tensor, boundary_scheme, input_size: int, heatmap_size: int,
                              sigma: float) -> BoundaryTargets:
    """:func:`boundary_targets` by compiled graphs (the first call of a shape compiles); eager only
    (it reads the window side on the host)."""
    points = heatmap_coordinates(landmarks, input_size, heatmap_size).float()
    check_finite_landmarks(points)
    curves = _compiled(dense_curves)(points, boundary_scheme, heatmap_size)
    side = WINDOW_STEP * math.ceil(window_side(curves, 3.0 * sigma) / WINDOW_STEP)
    return BoundaryTargets(curves, _compiled(_heatmaps_in_windows)(curves, heatmap_size, float(sigma), side))


def _heatmaps_in_windows(curves: torch.Tensor, size: int, sigma: float, side: int) -> torch.Tensor:
    """The reference operator's CPU path (``gaussian_cut`` of ``squared_distance_ref``), window side given."""
    return gaussian_cut(squared_distance_in_windows(curves, size, size, 3.0 * sigma, side), sigma)


@functools.cache
def _compiled(function: Callable) -> Callable:
    """One compiled callable per function for the process (static shapes: a training run has one)."""
    return torch.compile(function, fullgraph=True, dynamic=False)
