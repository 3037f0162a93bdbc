"""Pose-based data balancing: the yaw estimate from 68 points and the sampling weights."""
import math

import numpy as np
import pytest

from labfast.data import pose


def _face(nose_x: float) -> np.ndarray:
    """68 points at the origin except the jaw ends at x = -1 and +1 and the nose tip at ``nose_x``."""
    points = np.zeros((68, 2))
    points[0], points[16], points[30] = (-1.0, 0.0), (1.0, 0.0), (nose_x, 0.3)
    return points


def _turned(points: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return scale * points @ rotation.T + shift


def test_yaw_is_the_nose_offset_over_half_the_jaw_and_ignores_in_plane_rotation_scale_and_shift():
    faces = np.stack([_face(0.0), _face(0.5), _face(-0.25), _face(3.0)])
    expected = [0.0, 0.5, -0.25, 1.0]  # the last one clipped
    np.testing.assert_allclose(pose.yaw_proxy(faces, "300w"), expected, atol=1e-12)
    moved = np.stack([_turned(face, 35.0, 80.0, (200.0, 90.0)) for face in faces])
    np.testing.assert_allclose(pose.yaw_proxy(moved, "300w"), expected, atol=1e-9)


def test_weights_are_the_largest_bin_over_the_own_bin_capped():
    # |yaw| bins of width 0.25: six faces in bin 0, three in bin 1, one in bin 3
    faces = np.stack([_face(x) for x in [0.0] * 6 + [0.3] * 3 + [0.9]])
    weights = pose.balance_weights(faces, "300w", bins=4, cap=4.0)
    np.testing.assert_allclose(weights, [1.0] * 6 + [2.0] * 3 + [4.0])  # 6/1 = 6 capped at 4
    np.testing.assert_allclose(pose.balance_weights(faces, "300w", bins=4, cap=10.0)[-1], 6.0)


def test_a_scheme_without_yaw_points_is_refused():
    with pytest.raises(ValueError, match="cofw"):
        pose.yaw_proxy(np.zeros((1, 29, 2)), "cofw")
