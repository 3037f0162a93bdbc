"""Tests of labfast.ops.boundary_heatmaps, the ground truth: densifier vs scipy, the op vs an
independent NumPy oracle of its definition on real faces, Triton (interpreter) vs the torch
reference, non-finite landmarks, dispatch, and the nvcc compile check of the CUDA kernel.
(Its distance from the OpenCV raster baseline ``labfast.boundary`` is pinned in tests/test_boundary.py.)"""
from __future__ import annotations

import importlib
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import splev, splprep

from labfast.ops import backend
from labfast.schemes import Scheme, get

# The module, not the function of the same name that labfast.ops exports.
op = importlib.import_module("labfast.ops.boundary_heatmaps")

CSRC = Path(__file__).resolve().parents[2] / "csrc" / "boundary_heatmaps.cu"


def _splprep_samples(points: np.ndarray, count: int) -> np.ndarray:
    """scipy's curve at ``count`` uniform parameters (points without repeats)."""
    if len(points) == 1:
        return np.repeat(points, count, axis=0)
    tck, _ = splprep(points.T, s=0, k=min(3, len(points) - 1))
    return np.stack(splev(np.linspace(0.0, 1.0, count), tck), axis=1)


def _one_boundary(indices: tuple[int, ...], num_points: int) -> Scheme:
    return Scheme("one", num_points, {"line": indices}, tuple(range(num_points)), "box")


def _real_faces(shared_data: Path, count: int) -> np.ndarray:
    """``(count, 68, 2)`` float32 300-W LFPW test faces at 64x64 (1-based .pts -> 0-based, 256 -> 64)."""
    from labfast.data.pts import read_pts

    files = sorted((shared_data / "300w" / "lfpw" / "testset").glob("*.pts"))[:count]
    points = np.stack([read_pts(path) for path in files]) - 1.0
    return ((points + 0.5) * 64 / 256 - 0.5).astype(np.float32)


# --- densifier -------------------------------------------------------------------------------

@pytest.mark.parametrize("num_points", [1, 2, 3, 4, 5, 7, 17])
def test_densifier_matches_splprep(num_points):
    # Random arcs (sorted angles, so some points crowd together) plus noise in a 64 px map. The
    # solve is float64 like scipy's; the samples are rounded to float32 (~4e-6 px at 64): 1e-4 px.
    rng = np.random.default_rng(num_points)
    angle = np.sort(rng.uniform(0, np.pi, (8, num_points)), axis=1)
    points = np.stack([32 + 20 * np.cos(angle), 32 + 20 * np.sin(angle)], axis=-1)
    points = (points + rng.normal(0, 0.5, points.shape)).astype(np.float32)  # both sides see the same input
    got = op._spline_samples(torch.from_numpy(points), 97).numpy()
    for curve, samples in zip(points, got):
        np.testing.assert_allclose(samples, _splprep_samples(curve, 97), atol=1e-4, rtol=0)


def test_densifier_drops_repeated_points_like_removing_them():
    rng = np.random.default_rng(1)
    points = rng.uniform(10, 50, (6, 2)).astype(np.float32)
    repeated = np.insert(points, [2, 2, 4], points[[1, 1, 3]], axis=0)  # 9 points, 3 repeats
    got = op._spline_samples(torch.tensor(repeated[None], dtype=torch.float32), 97)[0].numpy()
    np.testing.assert_allclose(got, _splprep_samples(points, 97), atol=1e-4, rtol=0)


@pytest.mark.parametrize("distinct", [1, 2, 3])
def test_densifier_lowers_the_degree_when_repeats_leave_few_points(distinct):
    # 5 slots holding `distinct` points: spline of degree distinct - 1 (a dot for one point), in
    # the same batch as a curve with 5 distinct points (per-curve point counts, no loop over faces).
    rng = np.random.default_rng(distinct)
    points = rng.uniform(10, 50, (distinct, 2)).astype(np.float32)
    padded = np.concatenate([points, np.repeat(points[-1:], 5 - distinct, axis=0)])
    full = rng.uniform(10, 50, (5, 2)).astype(np.float32)
    got = op._spline_samples(torch.tensor(np.stack([padded, full]), dtype=torch.float32), 97).numpy()
    np.testing.assert_allclose(got[0], _splprep_samples(points, 97), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], _splprep_samples(full, 97), atol=1e-4, rtol=0)


def test_sample_spacing_is_at_most_half_a_pixel_on_real_faces(shared_data):
    faces = torch.from_numpy(_real_faces(shared_data, 224))
    curves = op.dense_curves(faces, "300w", 64)
    assert curves.shape == (224, 13, op.samples_per_boundary(64), 2)
    spacing = (curves[:, :, 1:] - curves[:, :, :-1]).norm(dim=-1)
    assert spacing.max() <= 0.5


# --- reference semantics ---------------------------------------------------------------------

def test_one_point_boundary_is_a_dot():
    scheme = _one_boundary((0,), 1)
    heatmap = op.boundary_heatmaps_ref(torch.tensor([[[5.0, 7.0]]]), scheme, size=16)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    squared = (cols - 5) ** 2 + (rows - 7) ** 2
    expected = torch.where(squared < 9, torch.exp(-squared / 2), torch.zeros(()))
    torch.testing.assert_close(heatmap, expected, atol=1e-6, rtol=0)


def test_segment_heatmap_is_the_exact_distance_to_the_segment():
    scheme = _one_boundary((0, 1), 2)
    heatmap = op.boundary_heatmaps_ref(torch.tensor([[[2.0, 3.3], [12.0, 3.3]]]), scheme, size=16)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    along = cols.clamp(2, 12)
    squared = (cols - along) ** 2 + (rows - 3.3) ** 2
    expected = torch.where(squared < 9, torch.exp(-squared / 2), torch.zeros(()))
    torch.testing.assert_close(heatmap, expected, atol=1e-5, rtol=0)


def test_curve_outside_the_map_still_reaches_pixels_within_three_sigma():
    scheme = _one_boundary((0, 1), 2)
    heatmap = op.boundary_heatmaps_ref(torch.tensor([[[-2.0, -5.0], [-2.0, 20.0]]]), scheme, size=8)[0, 0]
    assert torch.allclose(heatmap[:, 0], torch.full((8,), math.exp(-2.0)))  # 2 px from x = -2
    assert (heatmap[:, 1:] == 0).all()  # 3 px or more: cut


# --- the ground truth against an independent NumPy oracle ---------------------------------------
#
# The oracle re-implements the op's definition (module docstring) with different arithmetic:
# repeats (within 1e-3 px of the raw predecessor) dropped; chord-length parameter u; for m >= 4
# points the not-a-knot cubic spline solved as one dense system for the 4 (m - 1) coefficients of
# its pieces (not the op's moment form), for m <= 3 the one polynomial of degree m - 1 through the
# points (m = 1: a dot); 6 * size + 1 samples uniform in u; then the brute-force distance of every
# pixel centre to every segment of the polyline, exp(-d^2 / 2 sigma^2) cut at 3 sigma. All float64.

BUNDLED_300W = Path(__file__).resolve().parents[2] / "data" / "300w_sample"


def _oracle_curve(points: np.ndarray, num_samples: int) -> np.ndarray:
    """``(n, 2)`` float64 points -> ``(num_samples, 2)`` samples of the op's curve."""
    keep = np.ones(len(points), bool)
    keep[1:] = np.hypot(*np.diff(points, axis=0).T) > 1e-3
    q = points[keep]
    m = len(q)
    if m == 1:
        return np.repeat(q, num_samples, axis=0)
    chords = np.hypot(*np.diff(q, axis=0).T)
    u = np.concatenate([[0.0], np.cumsum(chords)]) / chords.sum()
    t = np.linspace(0.0, 1.0, num_samples)
    if m <= 3:
        return np.vander(t, m) @ np.linalg.solve(np.vander(u, m), q)
    # Piece i: S_i(s) = c0 + c1 s + c2 s^2 + c3 s^3, s = t - u_i in [0, h_i].
    h = np.diff(u)
    pieces = m - 1
    system = np.zeros((4 * pieces, 4 * pieces))
    rhs = np.zeros((4 * pieces, 2))
    row = 0
    for i in range(pieces):
        c = 4 * i
        system[row, c] = 1.0  # S_i(0) = q_i
        rhs[row] = q[i]
        system[row + 1, c:c + 4] = [1.0, h[i], h[i] ** 2, h[i] ** 3]  # S_i(h_i) = q_{i+1}
        rhs[row + 1] = q[i + 1]
        row += 2
    for i in range(pieces - 1):
        c = 4 * i
        system[row, c + 1:c + 4] = [1.0, 2 * h[i], 3 * h[i] ** 2]  # S_i'(h_i) = S_{i+1}'(0)
        system[row, c + 5] = -1.0
        system[row + 1, c + 2:c + 4] = [2.0, 6 * h[i]]  # S_i''(h_i) = S_{i+1}''(0)
        system[row + 1, c + 6] = -2.0
        row += 2
    system[row, [3, 7]] = [1.0, -1.0]  # not-a-knot at u_1: one cubic on pieces 0 and 1
    system[row + 1, [4 * pieces - 5, 4 * pieces - 1]] = [1.0, -1.0]  # and at u_{m-2}
    coefficients = np.linalg.solve(system, rhs).reshape(pieces, 4, 2)
    piece = np.clip(np.searchsorted(u, t, side="right") - 1, 0, pieces - 1)
    s = (t - u[piece])[:, None]
    c = coefficients[piece]
    return c[:, 0] + c[:, 1] * s + c[:, 2] * s**2 + c[:, 3] * s**3


def _oracle_squared_distance(curve: np.ndarray, size: int) -> np.ndarray:
    """``(size, size)`` squared distance of every pixel centre to every segment, minimum (brute force)."""
    rows, cols = np.mgrid[0:size, 0:size]
    px, py = cols.reshape(-1, 1).astype(np.float64), rows.reshape(-1, 1).astype(np.float64)  # (H*W, 1)
    ax, ay = curve[:-1, 0], curve[:-1, 1]  # (P-1,)
    dx, dy = curve[1:, 0] - ax, curve[1:, 1] - ay
    rx, ry = px - ax, py - ay  # (H*W, P-1)
    t = np.clip((rx * dx + ry * dy) / np.maximum(dx * dx + dy * dy, 1e-300), 0.0, 1.0)
    return ((rx - t * dx) ** 2 + (ry - t * dy) ** 2).min(axis=1).reshape(size, size)


def _oracle_heatmaps(landmarks: np.ndarray, scheme: Scheme, size: int, sigma: float):
    """``(N, L, 2)`` -> ``(N, K, size, size)`` heatmaps and squared distances, float64."""
    num_samples = op.samples_per_boundary(size)
    squared = np.stack([
        np.stack([_oracle_squared_distance(_oracle_curve(face[list(indices)], num_samples), size)
                  for indices in scheme.boundaries.values()])
        for face in landmarks.astype(np.float64)
    ])
    return np.where(squared < 9 * sigma**2, np.exp(-squared / (2 * sigma**2)), 0.0), squared


def _bundled_300w_faces() -> np.ndarray:
    """``(40, 68, 2)`` float32: the bundled 300-W crops (256 px) in 64x64 heatmap pixels."""
    from labfast.data.pts import read_pts

    files = sorted(BUNDLED_300W.glob("*/testset/*.pts"))
    assert len(files) == 40, f"data/300w_sample should hold 40 test crops, found {len(files)}"
    points = np.stack([read_pts(path) for path in files]) - 1.0
    return ((points + 0.5) * 64 / 256 - 0.5).astype(np.float32)


def _wflw_faces(shared_data: Path, count: int) -> np.ndarray:
    """``(count, 98, 2)`` float32 real WFLW test faces, each landmark box fit into the middle 48 px."""
    path = (shared_data / "wflw_test_subset_annotations" / "data" / "WFLW" / "WFLW_annotations"
            / "list_98pt_test" / "list_98pt_test_largepose.txt")
    rows = [line.split()[:196] for line in path.read_text().splitlines()[:count]]
    landmarks = np.array(rows, np.float64).reshape(-1, 98, 2)
    low, high = landmarks.min(axis=1, keepdims=True), landmarks.max(axis=1, keepdims=True)
    return (8.0 + 48.0 * (landmarks - low) / (high - low).max(axis=2, keepdims=True)).astype(np.float32)


def _assert_matches_the_oracle(faces: np.ndarray, scheme: Scheme, sigma: float = 1.0) -> None:
    # Tolerance 2e-5: the op rounds its samples to float32 (<= 3.8e-6 px at |x| <= 64) and takes
    # the distance in float32 (relative ~1e-7); exp(-d^2/2) moves at most 1/sqrt(e) per px, so
    # |op - oracle| <= ~1e-5 where both sit on the same side of the cut (measured: 1.4e-6). Pixels with d^2 within
    # 1e-3 of 9 sigma^2 may fall on either side of the cut (a jump of exp(-4.5)) and are skipped.
    expected, squared = _oracle_heatmaps(faces, scheme, 64, sigma)
    got = op.boundary_heatmaps_ref(torch.from_numpy(faces), scheme, size=64, sigma=sigma).double().numpy()
    keep = np.abs(squared - 9 * sigma**2) > 1e-3
    assert keep.mean() > 0.99
    error = np.abs(got - expected)[keep]
    assert error.max() <= 2e-5, f"max |op - oracle| = {error.max():.3g}"


def test_the_package_exports_this_op_as_the_ground_truth():
    import labfast

    assert labfast.boundary_heatmaps is op.boundary_heatmaps


def test_oracle_spline_is_the_splprep_interpolant():
    # The oracle itself, against scipy (same definition, third arithmetic): 5, 4, 3, 2, 1 points.
    rng = np.random.default_rng(5)
    for n in (5, 4, 3, 2, 1):
        points = np.cumsum(rng.uniform(1, 6, (n, 2)), axis=0)
        np.testing.assert_allclose(_oracle_curve(points, 97), _splprep_samples(points, 97), atol=1e-9, rtol=0)


def test_ground_truth_matches_the_numpy_oracle_on_bundled_300w_faces():
    _assert_matches_the_oracle(_bundled_300w_faces()[::10], get("300w"))  # 2 HELEN, 2 LFPW of the 40


def test_ground_truth_matches_the_numpy_oracle_on_300w_faces(shared_data):
    _assert_matches_the_oracle(_real_faces(shared_data, 224)[100::40], get("300w"))  # 4, none bundled


def test_ground_truth_matches_the_numpy_oracle_on_wflw_faces_with_closed_eyebrows(shared_data):
    scheme = get("wflw")
    closed = [name for name, indices in scheme.boundaries.items() if indices[0] == indices[-1]]
    assert closed == ["left_eyebrow", "right_eyebrow"]
    _assert_matches_the_oracle(_wflw_faces(shared_data, 4), scheme)


def test_ground_truth_matches_the_numpy_oracle_with_repeats_and_few_points():
    # Repeated points (curves left with 1, 2, 3 and 4 distinct points) and sigma 1.5.
    rng = np.random.default_rng(6)
    points = rng.uniform(8, 56, (2, 4, 2))
    faces = np.concatenate([points[:, [0, 0, 0, 0, 0]], points[:, [0, 1, 1, 1, 1]],
                            points[:, [0, 0, 1, 2, 2]], points[:, [0, 1, 2, 2, 3]]], axis=1)
    scheme = Scheme("four", 20, {f"curve{i}": tuple(range(5 * i, 5 * i + 5)) for i in range(4)},
                    tuple(range(20)), "box")
    _assert_matches_the_oracle(faces.astype(np.float32), scheme, sigma=1.5)


# --- Triton kernel vs reference (interpreter on CPU) ---------------------------------------------

def _near_cut(curves: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Pixels whose squared distance is within float32 rounding of the cut (9 sigma^2): the two
    implementations may land on either side there (a jump of exp(-4.5)), so the tests skip them."""
    squared = op.squared_distance_ref(curves, size, size, 3.0 * sigma + 1.0)
    return (squared - 9.0 * sigma**2).abs() <= 1e-4 * 9.0 * sigma**2


# Triton on CPU tensors: the interpreter only (a GPU machine runs the compiled kernels in tests/gpu/).
interpreted = pytest.mark.skipif(not backend.interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1")


def _triton(curves, size, sigma, dtype):
    from labfast.kernels.boundary_heatmaps import boundary_heatmaps_triton

    return boundary_heatmaps_triton(curves, size, size, sigma, dtype)


CASES = {
    # name: (landmarks (N, L, 2), scheme, size)
    "batch1_300w": (lambda g: torch.rand(1, 68, 2, generator=g) * 14 + 1, get("300w"), 16),
    "odd_size_37": (lambda g: torch.rand(2, 68, 2, generator=g) * 30 + 3, get("300w"), 37),
    "k1_custom": (lambda g: torch.rand(3, 5, 2, generator=g) * 18, _one_boundary((0, 1, 2, 3, 4), 5), 19),
    "outside_map": (lambda g: torch.rand(2, 5, 2, generator=g) * 40 - 12, _one_boundary((0, 1, 2, 3, 4), 5), 16),
    "repeated_points": (
        lambda g: (torch.rand(2, 3, 2, generator=g) * 14 + 1)[:, [0, 0, 1, 1, 2]],
        _one_boundary((0, 1, 2, 3, 4), 5),
        16,
    ),
}


@interpreted
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference_float32(case):
    make, scheme, size = CASES[case]
    landmarks = make(torch.Generator().manual_seed(0))
    curves = op.dense_curves(landmarks, scheme, size)
    expected = op.gaussian_cut(op.squared_distance_ref(curves, size, size, 3.0), 1.0)
    got = _triton(curves, size, 1.0, torch.float32)
    keep = ~_near_cut(curves, size, 1.0)
    # Same float32 expression; exp and the division may differ by a few ulp: 1e-6 absolute.
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-6, rtol=0)


@interpreted
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_output_is_within_one_ulp(dtype):
    # The kernel computes in float32 and converts once on store: round-to-nearest on a GPU (half
    # an ulp), truncation under the interpreter's bf16 emulation (under one ulp). So per pixel
    # |kernel - float32 reference| <= one ulp of `dtype` at the value (2^-8 relative for bf16,
    # 2^-11 for fp16) + 2e-6 float32 disagreement. A kernel rounding twice, or computing in the
    # low dtype, breaks this (bf16 exp loses ~3 ulps).
    make, scheme, size = CASES["odd_size_37"]
    landmarks = make(torch.Generator().manual_seed(1))
    curves = op.dense_curves(landmarks, scheme, size)
    expected = op.gaussian_cut(op.squared_distance_ref(curves, size, size, 3.0), 1.0)
    got = _triton(curves, size, 1.0, dtype)
    assert got.dtype == dtype
    keep = ~_near_cut(curves, size, 1.0)
    mantissa_bits = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    _, exponent = torch.frexp(expected)  # expected = f * 2^exponent, f in [0.5, 1)
    ulp = torch.where(expected > 0, torch.ldexp(torch.ones_like(expected), exponent - 1 - mantissa_bits), 0.0)
    error = (got.float() - expected).abs()
    assert (error[keep] <= ulp[keep] + 2e-6).all()


@interpreted
def test_triton_sigma_other_than_one():
    make, scheme, size = CASES["k1_custom"]
    curves = op.dense_curves(make(torch.Generator().manual_seed(2)), scheme, size)
    expected = op.gaussian_cut(op.squared_distance_ref(curves, size, size, 6.0), 2.0)
    got = _triton(curves, size, 2.0, torch.float32)
    keep = ~_near_cut(curves, size, 2.0)
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-6, rtol=0)


# --- dispatch --------------------------------------------------------------------------------

def test_forced_reference_is_the_reference(monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND_BOUNDARY_HEATMAPS", "reference")
    landmarks = torch.rand(2, 68, 2) * 14 + 1
    torch.testing.assert_close(
        op.boundary_heatmaps(landmarks, "300w", size=16), op.boundary_heatmaps_ref(landmarks, "300w", size=16),
        atol=0, rtol=0,
    )


@interpreted
def test_forced_triton_runs_on_cpu_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("LABFAST_BACKEND_BOUNDARY_HEATMAPS", "triton")
    scheme = _one_boundary((0, 1, 2, 3), 4)
    landmarks = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(3)) * 14 + 1
    got = op.boundary_heatmaps(landmarks, scheme, size=16, dtype=torch.float16)
    assert got.dtype == torch.float16 and got.shape == (2, 1, 16, 16)
    expected = op.boundary_heatmaps_ref(landmarks, scheme, size=16)
    # float16 of values in [0, 1]: within one ulp (see above), at most 2^-11, plus 2e-6 float32
    # disagreement (cut ties are absent for this seed).
    torch.testing.assert_close(got.float(), expected, atol=2**-11 + 2e-6, rtol=0)


def test_forced_cuda_on_cpu_raises_clearly(monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND_BOUNDARY_HEATMAPS", "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' was forced.*CUDA"):
        op.boundary_heatmaps(torch.zeros(1, 68, 2), "300w", size=8)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"landmarks must be \(N, 68, 2\)"):
        op.boundary_heatmaps(torch.zeros(1, 67, 2), "300w")
    with pytest.raises(ValueError, match="sigma must be positive"):
        op.boundary_heatmaps(torch.zeros(1, 68, 2), "300w", sigma=0.0)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        op.boundary_heatmaps(torch.zeros(1, 68, 2), "300w", size=0)
    with pytest.raises(TypeError, match="dtype must be"):
        op.boundary_heatmaps(torch.zeros(1, 68, 2), "300w", dtype=torch.float64)


# --- non-finite landmarks ---------------------------------------------------------------------

def _entry_points(monkeypatch):
    """Every way into the op: the reference, and the public op with each backend forced (the
    check runs before dispatch, so even the CUDA path, unavailable here, reports the landmark)."""
    def forced(name):
        def run(landmarks):
            monkeypatch.setenv("LABFAST_BACKEND_BOUNDARY_HEATMAPS", name)
            return op.boundary_heatmaps(landmarks, "300w", size=16)
        return run
    return {"reference": lambda landmarks: op.boundary_heatmaps_ref(landmarks, "300w", size=16),
            **{f"forced {name}": forced(name) for name in ("reference", "triton", "cuda")}}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("entry", ["reference", "forced reference", "forced triton", "forced cuda"])
def test_non_finite_landmark_raises_naming_sample_and_landmark(entry, value, monkeypatch):
    # Before the check a NaN point was dropped like a repeat (the heatmap of the other points came
    # back) and an infinite one gave an all-zero channel; neither raised.
    landmarks = torch.rand(3, 68, 2, generator=torch.Generator().manual_seed(4)) * 14 + 1
    landmarks[2, 40, 1] = value
    landmarks[2, 50, 0] = value
    with pytest.raises(ValueError, match=r"finite: sample 2 \(batch index\), landmark 40 .*2 non-finite"):
        _entry_points(monkeypatch)[entry](landmarks)


# --- CUDA source -----------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles_with_nvcc(tmp_path):
    # The torch-free part only (LABFAST_NO_TORCH): the binding needs a CUDA build of torch.
    result = subprocess.run(
        ["nvcc", "-c", "-DLABFAST_NO_TORCH", "-gencode=arch=compute_90,code=sm_90",
         str(CSRC), "-o", str(tmp_path / "boundary_heatmaps.o")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
