"""Parity tests for labfast.ops.boundary_heatmaps: densifier vs scipy, op vs the OpenCV reference,
Triton (interpreter) vs the torch reference, dispatch, and the nvcc compile check of the CUDA kernel."""
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


def test_reference_is_close_to_the_opencv_reference_on_real_faces(shared_data):
    # Exact distance vs rasterise + distanceTransform (labfast.boundary). labfast.boundary bounds
    # its distance by d_exact - 0.71 <= d_ref <= d_exact + 0.96 px; exp(-d^2/2) changes by at most
    # 1/sqrt(e) per px (sigma = 1), and the cut at 3 sigma can add exp(-4.5) on one side:
    # max |difference| <= 0.96 / sqrt(e) + exp(-4.5) = 0.593. Measured over the 224 LFPW test faces:
    # max 0.41, mean 0.0025 (see the op's docstring); on these 32 faces max 0.40, mean 0.0025.
    # Shifting the landmarks by half a pixel (a wrong coordinate convention) doubles the mean to
    # 0.0049 on the same faces: the mean bound 0.0035 sits between the two.
    from labfast import boundary

    faces = _real_faces(shared_data, 32)
    expected = boundary.heatmaps(faces, "300w", size=64, sigma=1.0)
    got = op.boundary_heatmaps_ref(torch.from_numpy(faces), "300w", size=64, sigma=1.0).numpy()
    difference = np.abs(got - expected)
    assert difference.max() <= 0.96 / math.sqrt(math.e) + math.exp(-4.5)
    assert difference.mean() <= 0.0035


# --- Triton kernel vs reference (interpreter on CPU) ---------------------------------------------

def _near_cut(curves: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Pixels whose squared distance is within float32 rounding of the cut (9 sigma^2): the two
    implementations may land on either side there (a jump of exp(-4.5)), so the tests skip them."""
    squared = op.squared_distance_ref(curves, size, size, 3.0 * sigma + 1.0)
    return (squared - 9.0 * sigma**2).abs() <= 1e-4 * 9.0 * sigma**2


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
