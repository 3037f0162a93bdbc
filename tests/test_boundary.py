"""The OpenCV raster baseline (labfast.boundary): pixel-centre convention, distances, 3-sigma
cut-off, dense sampling, clipping, bad input, and its measured distance from the ground truth
(labfast.ops.boundary_heatmaps).

Tolerances: heatmap values are exp() of float32 distances computed in float64 and stored as
float32, so they match the closed forms to float32 rounding (rtol 1e-6).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from labfast import boundary, schemes
from labfast.schemes import Scheme

RTOL = 1e-6


def _one_boundary_scheme(num_points: int) -> Scheme:
    """A scheme whose single boundary runs through all its points in order."""
    return Scheme(
        name="one_line",
        num_points=num_points,
        boundaries={"line": tuple(range(num_points))},
        flip_permutation=tuple(range(num_points)),
        normalizer="box",
    )


def _heatmap(points, size=32, sigma=1.0) -> np.ndarray:
    """``(n, 2)`` points of one boundary -> its ``(size, size)`` heatmap."""
    points = np.asarray(points, np.float64)
    return boundary.heatmaps(points[None], _one_boundary_scheme(len(points)), size=size, sigma=sigma)[0, 0]


def _read_pts(path) -> np.ndarray:
    """iBUG .pts (1-based) -> (68, 2) 0-based."""
    body = path.read_text().split("{")[1].split("}")[0]
    return np.array(body.split(), np.float64).reshape(-1, 2) - 1.0


# --- pixel-centre convention ------------------------------------------------------------------

def test_horizontal_boundary_at_y10_peaks_on_row_10():
    heatmap = _heatmap([[5.0, 10.0], [20.0, 10.0], [40.0, 10.0]], size=64)
    columns = slice(5, 41)
    assert (heatmap.argmax(axis=0)[columns] == 10).all()
    np.testing.assert_array_equal(heatmap[10, columns], 1.0)
    np.testing.assert_allclose(heatmap[[9, 11], columns], math.exp(-0.5), rtol=RTOL)
    np.testing.assert_allclose(heatmap[[8, 12], columns], math.exp(-2.0), rtol=RTOL)
    np.testing.assert_array_equal(heatmap[[7, 13], columns], 0.0)  # d = 3 = 3 sigma is cut


def test_point_at_x3_y7_peaks_on_column_3_row_7_with_exact_euclidean_distances():
    heatmap = _heatmap([[3.0, 7.0]])
    assert np.unravel_index(heatmap.argmax(), heatmap.shape) == (7, 3)
    assert heatmap[7, 3] == 1.0
    np.testing.assert_allclose(heatmap[7, 4], math.exp(-1 / 2), rtol=RTOL)
    np.testing.assert_allclose(heatmap[8, 4], math.exp(-2 / 2), rtol=RTOL)
    # d = sqrt(5): the exact distance; OpenCV's 5x5 mask gives 2.1969 (value 0.0893 vs 0.0821).
    np.testing.assert_allclose(heatmap[9, 4], math.exp(-5 / 2), rtol=RTOL)
    np.testing.assert_allclose(heatmap[9, 5], math.exp(-8 / 2), rtol=RTOL)
    assert heatmap[7, 6] == 0.0


@pytest.mark.parametrize(("x", "column"), [(3.49, 3), (3.5, 4), (4.5, 5), (3.51, 4), (2.51, 3)])
def test_points_light_their_nearest_pixel_centre_halves_rounding_up(x, column):
    heatmap = _heatmap([[x, 7.0]])
    assert np.unravel_index(heatmap.argmax(), heatmap.shape) == (7, column)


# --- Gaussian and its cut-off -----------------------------------------------------------------

def test_values_at_distance_3_are_kept_just_below_3_sigma_and_cut_just_above():
    dot = [[20.0, 20.0]]
    sigma_wide = 1.0 + 1e-3  # 3 sigma = 3.003 > d = 3
    np.testing.assert_allclose(
        _heatmap(dot, size=40, sigma=sigma_wide)[20, 23], math.exp(-9 / (2 * sigma_wide**2)), rtol=RTOL
    )
    assert _heatmap(dot, size=40, sigma=1.0 - 1e-3)[20, 23] == 0.0  # 3 sigma = 2.997 < d
    assert _heatmap(dot, size=40, sigma=1.0)[20, 23] == 0.0  # d = 3 sigma exactly: cut (d < 3 sigma)
    np.testing.assert_allclose(_heatmap(dot, size=40, sigma=1.0)[22, 22], math.exp(-4.0), rtol=RTOL)


def test_sigma_sets_the_gaussian_width():
    heatmap = _heatmap([[20.0, 20.0]], size=40, sigma=2.0)
    np.testing.assert_allclose(heatmap[20, 21], math.exp(-1 / 8), rtol=RTOL)
    np.testing.assert_allclose(heatmap[20, 25], math.exp(-25 / 8), rtol=RTOL)  # d = 5 < 6
    assert heatmap[20, 26] == 0.0  # d = 6 = 3 sigma


# --- every scheme --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", schemes.names())
def test_heatmaps_have_one_channel_per_boundary_lit_at_its_landmarks(name):
    scheme = schemes.get(name)
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(4.0, 60.0, size=(2, scheme.num_points, 2)).astype(np.float32)
    heatmaps = boundary.heatmaps(landmarks, scheme)
    assert heatmaps.shape == (2, scheme.num_boundaries, 64, 64)
    assert heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0.0 and heatmaps.max() == 1.0
    # The spline interpolates its points, so every landmark's pixel is on its own channel's curve.
    pixels = np.floor(landmarks.astype(np.float64) + 0.5).astype(int)
    for face in range(2):
        for channel, indices in enumerate(scheme.boundaries.values()):
            columns, rows = pixels[face, list(indices)].T
            np.testing.assert_array_equal(heatmaps[face, channel, rows, columns], 1.0)


def test_each_channel_depends_only_on_its_own_boundary():
    scheme = schemes.get("300w")
    landmarks = np.random.default_rng(1).uniform(8.0, 56.0, size=(1, 68, 2))
    moved = landmarks.copy()
    moved[0, list(scheme.boundaries["nose_bridge"])] += 3.0
    changed = (boundary.heatmaps(landmarks, scheme) != boundary.heatmaps(moved, scheme)).any(axis=(0, 2, 3))
    assert changed.tolist() == [name == "nose_bridge" for name in scheme.boundary_names]


def test_torch_input_gives_the_same_numpy_heatmaps():
    landmarks = np.random.default_rng(2).uniform(8.0, 56.0, size=(2, 98, 2)).astype(np.float32)
    from_torch = boundary.heatmaps(torch.from_numpy(landmarks), "wflw", size=48, sigma=1.5)
    assert isinstance(from_torch, np.ndarray)
    np.testing.assert_array_equal(from_torch, boundary.heatmaps(landmarks, "wflw", size=48, sigma=1.5))


# --- the dense curve -----------------------------------------------------------------------------

def test_dense_curve_has_no_gaps_on_a_long_irregular_contour():
    # A 300-W-like jaw at 256-px scale with an irregular spacing (hundreds of pixels long).
    angles = np.sort(np.random.default_rng(3).uniform(0.1, np.pi - 0.1, 17))
    points = np.stack([128 + 110 * np.cos(angles), 100 + 140 * np.sin(angles)], axis=1)
    for samples_per_pixel, max_gap in [(2.0, 0.5), (4.0, 0.25)]:
        curve = boundary.dense_curve(points, samples_per_pixel=samples_per_pixel)
        gaps = np.hypot(*np.diff(curve, axis=0).T)
        assert gaps.max() <= max_gap
        length = gaps.sum()
        assert length > 300 and len(curve) >= length * samples_per_pixel


def test_dense_curve_sample_count_follows_the_length():
    assert len(boundary.dense_curve([[0.0, 0.0], [200.0, 0.0]])) >= 401
    assert len(boundary.dense_curve([[0.0, 0.0], [2.0, 0.0]])) <= 6


def test_dense_curve_passes_through_its_points_in_order():
    points = np.array([[0.0, 0.0], [7.3, 2.1], [12.0, -4.4], [20.5, 0.3]])
    curve = boundary.dense_curve(points)
    hits = [int(np.flatnonzero((curve == point).all(axis=1))[0]) for point in points]
    assert hits == sorted(hits) and hits[0] == 0 and hits[-1] == len(curve) - 1


def test_two_points_give_the_straight_segment():
    curve = boundary.dense_curve([[1.0, 5.0], [9.0, 5.0]])
    np.testing.assert_allclose(curve[:, 1], 5.0, atol=1e-12)
    assert curve[0, 0] == 1.0 and curve[-1, 0] == 9.0


def test_repeated_points_are_removed_before_fitting():
    with_repeats = boundary.dense_curve([[0.0, 0.0], [0.0, 0.0], [5.0, 3.0], [5.0, 3.0], [10.0, 0.0]])
    np.testing.assert_allclose(with_repeats, boundary.dense_curve([[0.0, 0.0], [5.0, 3.0], [10.0, 0.0]]))


def test_one_point_and_all_equal_points_are_a_dot():
    np.testing.assert_array_equal(boundary.dense_curve([[2.0, 3.0]]), [[2.0, 3.0]])
    np.testing.assert_array_equal(boundary.dense_curve([[2.0, 3.0]] * 4), [[2.0, 3.0]])
    np.testing.assert_array_equal(_heatmap([[3.0, 7.0]] * 5), _heatmap([[3.0, 7.0]]))


def test_closed_outline_returns_to_its_start():
    square = [[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 20.0], [10.0, 10.0]]
    curve = boundary.dense_curve(square)
    np.testing.assert_array_equal(curve[0], curve[-1])
    assert np.hypot(*np.diff(curve, axis=0).T).max() <= 0.5


# --- points outside the map ----------------------------------------------------------------------

def test_boundary_far_outside_the_map_gives_an_all_zero_channel():
    assert not _heatmap([[-100.0, 5.0], [-90.0, 20.0], [-80.0, 5.0]]).any()


def test_boundary_crossing_the_edge_is_clipped():
    heatmap = _heatmap([[-20.0, 10.0], [5.0, 10.0], [30.0, 10.0]], size=32)
    np.testing.assert_array_equal(heatmap[10, :31], 1.0)
    np.testing.assert_allclose(heatmap[10, 31], math.exp(-0.5), rtol=RTOL)


def test_boundary_just_outside_still_reaches_the_edge_rows():
    heatmap = _heatmap([[-10.0, -1.0], [30.0, -1.0], [70.0, -1.0]], size=32)  # the line y = -1
    np.testing.assert_allclose(heatmap[0], math.exp(-1 / 2), rtol=RTOL)
    np.testing.assert_allclose(heatmap[1], math.exp(-4 / 2), rtol=RTOL)
    assert not heatmap[2:].any()  # d >= 3


# --- bad input -----------------------------------------------------------------------------------

def test_nan_landmark_raises_naming_the_face_and_point():
    landmarks = np.full((3, 19, 2), 20.0)
    landmarks[1, 4, 0] = np.nan
    with pytest.raises(ValueError, match="face 1, point 4"):
        boundary.heatmaps(landmarks, "aflw")
    with pytest.raises(ValueError, match="finite"):
        boundary.dense_curve([[0.0, 0.0], [np.inf, 1.0]])


@pytest.mark.parametrize(
    ("shape", "message"), [((19, 2), r"\(N, L, 2\)"), ((1, 19, 3), r"\(N, L, 2\)"), ((1, 20, 2), "19")]
)
def test_wrong_landmark_shapes_raise(shape, message):
    with pytest.raises(ValueError, match=message):
        boundary.heatmaps(np.zeros(shape), "aflw")


def test_bad_size_or_sigma_raise():
    landmarks = np.full((1, 19, 2), 20.0)
    with pytest.raises(ValueError, match="size"):
        boundary.heatmaps(landmarks, "aflw", size=0)
    with pytest.raises(ValueError, match="sigma"):
        boundary.heatmaps(landmarks, "aflw", sigma=0.0)


def test_absurd_coordinates_fail_clearly_instead_of_exhausting_memory():
    with pytest.raises(ValueError, match="heatmap pixel units"):
        boundary.dense_curve([[0.0, 0.0], [1e9, 0.0]])


# --- real faces and the figure helper ------------------------------------------------------------

def test_real_300w_faces_light_every_landmark_on_its_boundaries(shared_data):
    paths = sorted((shared_data / "300w" / "helen" / "testset").glob("*.pts"))[:4]
    crop_landmarks = np.stack([_read_pts(path) for path in paths])
    landmarks = (crop_landmarks + 0.5) / 4.0 - 0.5  # 256-px crop -> 64-px heatmap, pixel centres
    heatmaps = boundary.heatmaps(landmarks, "300w")
    scheme = schemes.get("300w")
    pixels = np.floor(landmarks + 0.5).astype(int)
    for face in range(len(paths)):
        for channel, indices in enumerate(scheme.boundaries.values()):
            columns, rows = pixels[face, list(indices)].T
            np.testing.assert_array_equal(heatmaps[face, channel, rows, columns], 1.0)


def test_raster_baseline_differs_from_the_ground_truth_by_the_measured_amount():
    # |raster - ground truth| per pixel on the 40 bundled 300-W crops (64x64, sigma 1), measured
    # with OpenCV 4.x: mean 0.00249, max 0.396 (module docstring). The pins are +-5 % of the mean
    # and +-0.02 of the max: a deterministic computation on fixed faces, the margin only for
    # another OpenCV / float order. What they catch: a half-pixel convention mismatch between the
    # two doubles the mean (0.0049 on these faces) and a 1/8-px one already gives mean 0.00265,
    # max 0.469; a changed spline, sampling or cut on either side moves the figures too.
    from labfast.data.pts import read_pts
    from labfast.ops.boundary_heatmaps import boundary_heatmaps_ref

    files = sorted((Path(__file__).resolve().parents[1] / "data" / "300w_sample").glob("*/testset/*.pts"))
    assert len(files) == 40
    landmarks = ((np.stack([read_pts(path) for path in files]) - 1.0 + 0.5) / 4.0 - 0.5).astype(np.float32)
    raster = boundary.heatmaps(landmarks, "300w")
    truth = boundary_heatmaps_ref(torch.from_numpy(landmarks), "300w").numpy()
    difference = np.abs(raster - truth)
    assert 0.00237 <= difference.mean() <= 0.00261
    assert 0.376 <= difference.max() <= 0.416


def test_real_wflw_faces_give_13_nonempty_channels(shared_data):
    path = (shared_data / "wflw_test_subset_annotations" / "data" / "WFLW" / "WFLW_annotations"
            / "list_98pt_test" / "list_98pt_test_largepose.txt")
    rows = [line.split()[:196] for line in path.read_text().splitlines()[:3]]
    landmarks = np.array(rows, np.float64).reshape(-1, 98, 2)
    # Fit each face's landmark box into the middle 48 px of a 64 px map.
    low, high = landmarks.min(axis=1, keepdims=True), landmarks.max(axis=1, keepdims=True)
    landmarks = 8.0 + 48.0 * (landmarks - low) / (high - low).max(axis=2, keepdims=True)
    heatmaps = boundary.heatmaps(landmarks, "wflw")
    assert heatmaps.shape == (3, 13, 64, 64)
    assert (heatmaps.max(axis=(2, 3)) == 1.0).all()
