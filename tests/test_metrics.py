"""NME with each scheme's normaliser, FR, exact AUC / CED, paper units, WFLW subsets, CED plot.

Expected values are computed by hand in the comments; they are compared to float64 rounding
(rtol 1e-12) except where a grid integral is involved (its bound is stated there).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from labfast import metrics, schemes
from labfast.plots import plot_ced

RTOL = 1e-12


def _face_pair(scheme_name: str, first_point: tuple[float, float], second_point: tuple[float, float]):
    """Ground truth with the normaliser points at the given places; a prediction that is off by
    (3, 4) at point 0 and by (6, 8) at the first normaliser point: total error 5 + 10 = 15 px."""
    scheme = schemes.get(scheme_name)
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.0, 200.0, size=(1, scheme.num_points, 2))
    pred = gt.copy()
    if scheme.normalizer_points:
        first, second = scheme.normalizer_points
    else:
        first, second = 1, 2
    gt[0, first], gt[0, second] = first_point, second_point
    pred[0, first], pred[0, second] = first_point, second_point
    pred[0, 0] += (3.0, 4.0)
    pred[0, first] += (6.0, 8.0)
    return scheme, pred, gt


@pytest.mark.parametrize(
    ("name", "normalizer_points"), [("300w", (36, 45)), ("wflw", (60, 72)), ("cofw", (16, 17))]
)
def test_nme_divides_by_the_ground_truth_distance_of_the_scheme_points(name, normalizer_points):
    scheme, pred, gt = _face_pair(name, (10.0, 20.0), (40.0, 60.0))  # distance 50
    assert scheme.normalizer_points == normalizer_points
    # 15 px over L points, divided by 50 (the moved prediction at the first point must not count).
    expected = 15.0 / scheme.num_points / 50.0
    np.testing.assert_allclose(metrics.nme(pred, gt, scheme), [expected], rtol=RTOL)


def test_nme_for_300w_by_hand():
    _, pred, gt = _face_pair("300w", (0.0, 0.0), (0.0, 25.0))
    np.testing.assert_allclose(metrics.nme(pred, gt, "300w"), [15.0 / 68.0 / 25.0], rtol=RTOL)


def test_nme_box_normaliser_is_sqrt_of_width_times_height():
    scheme, pred, gt = _face_pair("aflw", (10.0, 20.0), (40.0, 60.0))
    boxes = np.array([[5.0, 10.0, 45.0, 100.0]])  # 40 x 90 -> sqrt(3600) = 60
    np.testing.assert_allclose(metrics.nme(pred, gt, scheme, boxes=boxes), [15.0 / 19.0 / 60.0], rtol=RTOL)
    with pytest.raises(ValueError, match="boxes"):
        metrics.nme(pred, gt, scheme)


def test_nme_accepts_tensors_and_returns_float64_per_face():
    scheme, pred, gt = _face_pair("wflw", (10.0, 20.0), (40.0, 60.0))
    pred, gt = np.concatenate([pred, gt]), np.concatenate([gt, gt])
    result = metrics.nme(torch.from_numpy(pred).float(), torch.from_numpy(gt).float(), scheme)
    assert result.dtype == np.float64 and result.shape == (2,)
    # float32 inputs: coordinates up to 200 carry ~1e-5 absolute rounding, so rtol 1e-5.
    np.testing.assert_allclose(result, [15.0 / 98.0 / 50.0, 0.0], rtol=1e-5, atol=1e-9)


def test_nme_rejects_bad_input():
    gt = np.random.default_rng(1).uniform(0, 100, (2, 68, 2))
    with pytest.raises(ValueError, match="shape"):
        metrics.nme(gt[:, :67], gt[:, :67], "300w")
    with pytest.raises(ValueError, match="pred has shape"):
        metrics.nme(gt[:1], gt, "300w")
    broken = gt.copy()
    broken[1, 5, 1] = np.nan
    with pytest.raises(ValueError, match=r"pred must be finite; index \[1, 5, 1\]"):
        metrics.nme(broken, gt, "300w")
    collapsed = gt.copy()
    collapsed[1, 45] = collapsed[1, 36]
    with pytest.raises(ValueError, match="face 1"):
        metrics.nme(gt, collapsed, "300w")


def test_failure_rate_counts_errors_strictly_above_the_threshold():
    assert metrics.failure_rate([0.05, 0.10, 0.1000001, 0.3]) == 0.5
    assert metrics.failure_rate([0.05, 0.10, 0.1000001, 0.3], threshold=0.08) == 0.75


def test_auc_by_hand():
    # (1 - 0.2) + (1 - 0.5) + 0 over 3 faces = 1.3 / 3.
    assert metrics.auc([0.02, 0.05, 0.20]) == pytest.approx(1.3 / 3, rel=RTOL)
    assert metrics.auc([0.0, 0.0]) == 1.0
    assert metrics.auc([0.10, 0.5]) == 0.0
    # threshold 0.08: (1 - 0.25) + (1 - 0.625) + 0 = 1.125 over 3.
    assert metrics.auc([0.02, 0.05, 0.20], threshold=0.08) == pytest.approx(1.125 / 3, rel=RTOL)


def test_auc_agrees_with_a_fine_grid_integral_of_the_ced():
    nmes = np.random.default_rng(2).gamma(4.0, 0.015, size=300)
    grid = np.linspace(0.0, 0.10, 100_001)
    ced_on_grid = (np.sort(nmes)[None, :] <= grid[:, None]).mean(axis=1)
    # The trapezoid rule errs only in the grid cell holding a jump of the step function, by at most
    # half the cell width h times the jump 1/N; the N jumps sum to at most h / 2, i.e. h / (2 t) = 5e-6
    # in AUC units (plus float64 summation rounding, far below 1e-12).
    cell = grid[1] - grid[0]
    assert abs(np.trapezoid(ced_on_grid, grid) / 0.10 - metrics.auc(nmes)) <= cell / (2 * 0.10) + 1e-12


def test_ced_is_the_exact_step_function():
    x, y = metrics.ced([0.02, 0.05, 0.05, 0.20])
    np.testing.assert_allclose(x, [0.0, 0.02, 0.05, 0.10], rtol=RTOL)
    np.testing.assert_allclose(y, [0.0, 0.25, 0.75, 0.75], rtol=RTOL)
    nmes = np.random.default_rng(3).gamma(4.0, 0.02, size=50)
    x, y = metrics.ced(nmes, threshold=0.08)
    assert np.sum(y[:-1] * np.diff(x)) / 0.08 == pytest.approx(metrics.auc(nmes, threshold=0.08), rel=1e-12)


def test_summarize_reports_nme_and_fr_in_percent_and_auc_as_a_fraction():
    summary = metrics.summarize(np.array([0.02, 0.05, 0.20]))
    assert summary["nme"] == pytest.approx(9.0, rel=RTOL)
    assert summary["fr"] == pytest.approx(100.0 / 3, rel=RTOL)
    assert summary["auc"] == pytest.approx(1.3 / 3, rel=RTOL)
    assert summary["count"] == 3


@pytest.mark.parametrize(
    "nmes", [np.array([]), np.zeros((2, 2)), np.array([0.1, np.nan]), np.array([0.1, -0.01])]
)
def test_summaries_reject_empty_nan_negative_or_2d_errors(nmes):
    with pytest.raises(ValueError, match="nmes"):
        metrics.summarize(nmes)


def test_plot_ced_writes_a_png(tmp_path):
    rng = np.random.default_rng(4)
    path = plot_ced(
        {"model": rng.gamma(4.0, 0.012, 100), "baseline": rng.gamma(4.0, 0.016, 100)},
        tmp_path / "ced.png",
        title="test",
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="at least one curve"):
        plot_ced({}, tmp_path / "empty.png")


# --- paired bootstrap ----------------------------------------------------------------------------


def test_paired_bootstrap_of_a_constant_shift_is_the_shift_with_no_width():
    """Pairing: every face differs by exactly 0.01, so every resample does; resampling the two
    methods' faces independently would give an interval as wide as the faces' own spread (0.02-0.3)."""
    second = np.random.default_rng(1).uniform(0.02, 0.3, 100)
    interval = metrics.paired_bootstrap(second + 0.01, second)
    assert interval["difference"] == pytest.approx(0.01, rel=RTOL)
    assert interval["low"] == pytest.approx(0.01, rel=1e-9) and interval["high"] == pytest.approx(0.01, rel=1e-9)


def test_paired_bootstrap_interval_holds_a_known_difference_with_the_normal_width():
    """400 per-face differences of mean 0.02 and spread 0.05: the interval holds 0.02, excludes 0, and
    its width is the normal theory's 2 * 1.96 * s / sqrt(n) within 5 % (10,000 resamples put about
    1 % of Monte Carlo error on the width; the mean of 400 skewless values is close to normal)."""
    generator = np.random.default_rng(2)
    second = generator.uniform(0.02, 0.3, 400)
    first = second + generator.normal(0.02, 0.05, 400)
    interval = metrics.paired_bootstrap(first, second)
    assert interval["low"] < 0.02 < interval["high"] and interval["low"] > 0
    expected_width = 2 * 1.96 * np.std(first - second) / np.sqrt(400)
    assert interval["high"] - interval["low"] == pytest.approx(expected_width, rel=0.05)


def test_paired_bootstrap_of_a_zero_difference_contains_zero():
    values = np.random.default_rng(3).uniform(0.02, 0.3, 100)
    interval = metrics.paired_bootstrap(values, values[::-1])  # the same faces in another order: mean difference 0
    assert interval["difference"] == pytest.approx(0.0, abs=1e-15)
    assert interval["low"] < 0 < interval["high"]


def test_paired_bootstrap_is_seeded():
    generator = np.random.default_rng(4)
    first, second = generator.uniform(size=50), generator.uniform(size=50)
    assert metrics.paired_bootstrap(first, second, seed=7) == metrics.paired_bootstrap(first, second, seed=7)
    assert metrics.paired_bootstrap(first, second, seed=7) != metrics.paired_bootstrap(first, second, seed=8)


def test_paired_bootstrap_refuses_unpaired_values():
    with pytest.raises(ValueError, match="one length"):
        metrics.paired_bootstrap(np.zeros(3), np.zeros(4))
