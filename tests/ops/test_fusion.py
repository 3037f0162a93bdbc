"""Parity of the fusion fast paths (labfast.ops.fusion) with their ``*_ref`` definitions.

Triton runs on the CPU under ``TRITON_INTERPRET=1`` (tests/conftest.py), forced through the public
functions (``LABFAST_BACKEND_FUSION=triton``): the ``torch.ops.labfast`` operators and their
backward operators run the kernels, as in production.
The CUDA path cannot run here (CPU torch): its torch-free kernels and launchers are compile-checked
with nvcc; its parity is checked only where a GPU build exists (not by this file).

Tolerance (flash-attention style), for every output and gradient of a fused op run in dtype ``d``:

    |fused_d - ref_64| <= 2 |ref_d - ref_64| + eps_d · max |ref_64|

``ref_64`` is the reference on the same (``d``-rounded) inputs in float64, ``ref_d`` the reference
computed in ``d``. The fused kernels accumulate in fp32 and round once when storing, so their error
is at most half an ulp of each value plus fp32 noise: the floor ``eps_d · max|ref_64|`` (one ulp at
the top of the range) alone admits a correct kernel, and the first term keeps the test meaningful
when the reference itself is inexact. A wrong tap, weight, channel or missed window pixel gives
errors of the order of the values themselves and fails.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from labfast.ops import backend, cuda_extension
from labfast.ops.fusion import (
    feature_fusion,
    feature_fusion_ref,
    heatmap_feature_concat,
    heatmap_feature_concat_ref,
    input_fusion,
    input_fusion_ref,
    resize_heatmaps,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Triton on CPU tensors needs the interpreter (tests/conftest.py sets it unless told otherwise; run
# ``TRITON_INTERPRET=0 pytest -m gpu`` on a GPU machine to test the compiled kernels).
interpreted = pytest.mark.skipif(not backend.interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
CSRC = Path(__file__).resolve().parents[2] / "csrc" / "fusion.cu"


@pytest.fixture
def triton_forced(monkeypatch):
    """The public functions run their operators on the Triton path (the self-checks are
    tests/ops/test_self_check.py's)."""
    monkeypatch.setenv("LABFAST_BACKEND_FUSION", "triton")
    monkeypatch.setenv("LABFAST_SELFCHECK", "0")


def run(fn, inputs, grad_out=None):
    """Output and input gradients of ``fn(*inputs)`` for the upstream gradient ``grad_out``."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    if grad_out is None:
        return out.detach(), None
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [leaf.grad for leaf in leaves]


def assert_within_reference_error(fused, low, exact, dtype, what):
    """``fused`` and ``low`` (the reference in ``dtype``) against ``exact`` (the float64 reference)."""
    exact = exact.double()
    fused_error = (fused.double() - exact).abs().max().item()
    reference_error = (low.double() - exact).abs().max().item()
    floor = torch.finfo(dtype).eps * exact.abs().max().item()
    bound = 2 * reference_error + floor
    assert fused_error <= bound, f"{what} ({dtype}): error {fused_error:.3g} > bound {bound:.3g}"


def check_parity(fused_fn, ref_fn, inputs, dtype):
    """Forward and backward of ``fused_fn`` in ``dtype`` against ``ref_fn`` (see module docstring)."""
    generator = torch.Generator().manual_seed(1)
    low_inputs = [x.to(dtype) for x in inputs]
    exact_inputs = [x.double() for x in low_inputs]  # the same rounded values, in float64
    exact_out, _ = run(ref_fn, exact_inputs)
    grad_out = torch.randn(exact_out.shape, generator=generator).to(exact_out.device, dtype)
    exact_out, exact_grads = run(ref_fn, exact_inputs, grad_out.double())
    low_out, low_grads = run(ref_fn, low_inputs, grad_out)
    fused_out, fused_grads = run(fused_fn, low_inputs, grad_out)
    assert fused_out.shape == exact_out.shape and fused_out.dtype == low_out.dtype
    assert_within_reference_error(fused_out, low_out, exact_out, dtype, "output")
    for index, (fused, low, exact) in enumerate(zip(fused_grads, low_grads, exact_grads)):
        assert fused.dtype == low_inputs[index].dtype and fused.shape == exact.shape
        assert_within_reference_error(fused, low, exact, dtype, f"gradient of input {index}")


# (N, C, H, W) image, (K, h, w) heatmaps: batch 1 with K=1 at the same size; non-integer
# up-sampling (13×17 from 5×7); the model's 4× ratio; heatmaps larger than the image.
INPUT_FUSION_SHAPES = [
    ((1, 3, 13, 17), (1, 13, 17)),
    ((2, 3, 13, 17), (3, 5, 7)),
    ((1, 3, 16, 16), (4, 4, 4)),
    ((1, 3, 9, 11), (2, 20, 15)),
]


@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("image_shape, heatmap_shape", INPUT_FUSION_SHAPES, ids=str)
def test_input_fusion_matches_reference(triton_forced, image_shape, heatmap_shape, dtype):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(image_shape, generator=generator)
    heatmaps = torch.rand((image_shape[0], *heatmap_shape), generator=generator)
    check_parity(input_fusion, input_fusion_ref, [image, heatmaps], dtype)


# (N, K, h, w) heatmaps, (C, H, W) features: same size; 2× down; non-integer up-sampling; the
# model's 64 -> 32 / 16 / 8 (heatmaps to ResNet stages 2-4 at input 256; stage 1 keeps 64);
# non-integer down-sampling on both axes; one axis shrinking (12 -> 5) while the other grows (5 -> 8).
# The launch parameters are those of a GPU launch: pixel blocks of min(256, H·W) (16 for 4×4 up
# to 256), 16-channel blocks, 16-pixel adjoint tiles.
CONCAT_SHAPES = [
    ((1, 1, 13, 17), (4, 13, 17)),
    ((2, 3, 16, 16), (5, 8, 8)),
    ((2, 2, 7, 9), (3, 13, 17)),
    ((1, 2, 64, 64), (3, 32, 32)),
    ((1, 2, 64, 64), (3, 16, 16)),
    ((1, 2, 64, 64), (3, 8, 8)),
    ((2, 2, 13, 17), (3, 5, 7)),
    ((1, 2, 12, 5), (3, 5, 8)),
    ((1, 18, 16, 16), (20, 4, 4)),  # 16-channel blocks: heatmaps only, both, features only
]
RESIZE_MODES = ["area", "bilinear"]


@interpreted
@pytest.mark.parametrize("resize", RESIZE_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heatmap_shape, feature_shape", CONCAT_SHAPES, ids=str)
def test_heatmap_feature_concat_matches_reference(triton_forced, heatmap_shape, feature_shape, dtype, resize):
    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.rand(heatmap_shape, generator=generator)
    features = torch.randn((heatmap_shape[0], *feature_shape), generator=generator)
    check_parity(partial(heatmap_feature_concat, resize=resize), partial(heatmap_feature_concat_ref, resize=resize),
                 [heatmaps, features], dtype)


def boundary_row(position: float, size: int = 64) -> torch.Tensor:
    """``(1, 1, size, size)`` float64 heatmap of a horizontal boundary at row coordinate ``position``:
    the ground truth's profile ``exp(-d² / 2σ²)``, σ = 1 heatmap pixel, cut at 3σ (LAB Eq. 1)."""
    distance = (torch.arange(size, dtype=torch.float64) - position).abs()
    profile = torch.where(distance < 3, torch.exp(-distance ** 2 / 2), 0.0)
    return profile[:, None].expand(size, size)[None, None].clone()


@pytest.mark.parametrize("implementation", ["reference", pytest.param("triton", marks=interpreted)])
def test_bilinear_down_sizing_drops_a_thin_boundary_that_area_keeps(implementation, monkeypatch):
    """64 -> 8, as for ResNet stage 4. Bilinear reads only rows 8o + 3 and 8o + 4 (source coordinate
    8o + 3.5): a boundary at y = 7.5 lights rows 5-10 (d < 3σ) and vanishes (0.00), one at 11.5 sits
    on rows 11 and 12 and gives e^(-1/8) = 0.88. Area averages all 8 rows of a cell: the 7.5 line
    gives (e^(-25/8) + e^(-9/8) + e^(-1/8)) / 8 = 0.16 in each of the cells on either side, the 11.5
    line twice that in its cell. Float64: only summation rounding (1e-15) separates the figures."""
    features = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    monkeypatch.setenv("LABFAST_BACKEND_FUSION", implementation)

    def strongest(position, resize):
        return heatmap_feature_concat(boundary_row(position), features, resize)[0, 0].max().item()

    half_line = (math.exp(-25 / 8) + math.exp(-9 / 8) + math.exp(-1 / 8)) / 8
    assert strongest(7.5, "bilinear") == 0.0
    assert strongest(11.5, "bilinear") == pytest.approx(math.exp(-1 / 8), abs=1e-12)
    assert strongest(7.5, "area") == pytest.approx(half_line, abs=1e-12)
    assert round(half_line, 2) == 0.16
    assert strongest(11.5, "area") == pytest.approx(2 * half_line, abs=1e-12)


def test_area_resize_with_a_non_integer_ratio_averages_every_pixel_a_cell_touches():
    """Output ``o`` of ``n -> m`` averages source pixels ``floor(o n/m) … ceil((o+1) n/m) - 1`` with
    equal weights (``F.adaptive_avg_pool2d``, ``F.interpolate(mode="area")``): 3 -> 2 shares the
    middle pixel."""
    column = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(1, 1, 3, 1)
    assert resize_heatmaps(column, (2, 1), "area").flatten().tolist() == [1.5, 3.0]
    heatmaps = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(resize_heatmaps(heatmaps, (5, 7), "area"),
                               F.interpolate(heatmaps, size=(5, 7), mode="area"), rtol=1e-15, atol=1e-15)


def test_area_mode_interpolates_an_axis_that_grows():
    """Area mode shrinks by area and grows bilinearly, axis by axis: 4 rows -> 2 (pairs averaged),
    2 columns -> 3 (bilinear, align_corners=False: source columns 0, 0.5, 1 after clamping)."""
    heatmaps = torch.tensor([[0.0, 4.0], [2.0, 6.0], [8.0, 0.0], [8.0, 2.0]], dtype=torch.float64)[None, None]
    expected = torch.tensor([[1.0, 3.0, 5.0], [8.0, 4.5, 1.0]], dtype=torch.float64)[None, None]
    torch.testing.assert_close(resize_heatmaps(heatmaps, (2, 3), "area"), expected, rtol=0, atol=1e-15)


@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 4, 13, 17), (2, 8, 8, 8)], ids=str)
def test_feature_fusion_matches_reference(triton_forced, shape, dtype):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(shape, generator=generator)
    gate = torch.rand(shape, generator=generator)
    check_parity(feature_fusion, feature_fusion_ref, [features, gate], dtype)


# (h, w) -> (H, W) pairs that stress the window of the resize adjoint: odd ratios both ways, a
# single output or source pixel, sizes that are not multiples of the 16-pixel tile, long area
# bins (64 -> 3, 50 -> 7: bins of 22 and 8 pixels, several 16-pixel tiles per bin).
@interpreted
@pytest.mark.parametrize("resize", RESIZE_MODES)
@pytest.mark.parametrize(
    "source, target",
    [((7, 5), (5, 7)), ((3, 16), (16, 3)), ((33, 20), (64, 9)), ((1, 4), (4, 1)), ((18, 17), (18, 17)),
     ((64, 50), (3, 7))],
    ids=str,
)
def test_resize_adjoint_matches_reference_for_any_ratio(triton_forced, source, target, resize):
    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.rand((1, 1, *source), generator=generator, dtype=torch.float64)
    features = torch.randn((1, 1, *target), generator=generator, dtype=torch.float64)
    grad_out = torch.randn((1, 2, *target), generator=generator, dtype=torch.float64)
    out, grads = run(partial(heatmap_feature_concat, resize=resize), [heatmaps, features], grad_out)
    expected_out, expected_grads = run(partial(heatmap_feature_concat_ref, resize=resize), [heatmaps, features],
                                       grad_out)
    # float64 on both sides; the only difference is summation order (~1e-16 relative)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], expected_grads[0], rtol=1e-12, atol=1e-12)


@interpreted
@pytest.mark.parametrize(
    "function, shapes",
    [
        (input_fusion, [(1, 2, 5, 7), (1, 2, 3, 4)]),
        (partial(heatmap_feature_concat, resize="bilinear"), [(1, 2, 3, 4), (1, 2, 5, 7)]),
        (partial(heatmap_feature_concat, resize="area"), [(1, 2, 8, 6), (1, 2, 4, 3)]),
        (partial(heatmap_feature_concat, resize="area"), [(1, 2, 7, 5), (1, 2, 3, 8)]),
        (feature_fusion, [(2, 3, 4, 5), (2, 3, 4, 5)]),
    ],
    ids=["input_fusion", "heatmap_feature_concat_bilinear", "heatmap_feature_concat_area_2x",
         "heatmap_feature_concat_area_non_integer", "feature_fusion"],
)
def test_gradcheck_float64(triton_forced, function, shapes):
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.rand(shape, generator=generator, dtype=torch.float64, requires_grad=True) for shape in shapes]
    assert torch.autograd.gradcheck(function, inputs, fast_mode=True)


@interpreted
def test_non_contiguous_and_channels_last_inputs_give_the_reference_result(triton_forced):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 17, 13, generator=generator).transpose(2, 3)  # (1, 3, 13, 17), strided
    heatmaps = torch.rand(1, 6, 5, 7, generator=generator)[:, ::2]  # (1, 3, 5, 7), strided
    grad_out = torch.randn(1, 12, 13, 17, generator=generator)
    assert not image.is_contiguous() and not heatmaps.is_contiguous()
    for image_in in (image, image.contiguous(memory_format=torch.channels_last)):
        out, grads = run(input_fusion, [image_in, heatmaps], grad_out)
        expected_out, expected_grads = run(input_fusion_ref, [image_in, heatmaps], grad_out)
        torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=1e-6)
        for grad, expected in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)
    features = torch.randn(2, 8, 6, 5, generator=generator).permute(0, 3, 2, 1)  # (2, 5, 6, 8)
    gate = torch.rand(2, 5, 6, 8, generator=generator).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 10, 6, 8, generator=generator)
    out, grads = run(feature_fusion, [features, gate], grad_out)
    expected_out, expected_grads = run(feature_fusion_ref, [features, gate], grad_out)
    torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=1e-6)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)
    heatmaps_small = torch.rand(2, 3, 10, 12, generator=generator)[..., ::2, ::2]  # (2, 3, 5, 6), strided
    heatmaps_big = torch.rand(2, 3, 24, 32, generator=generator).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 8, 6, 8, generator=generator)
    for heatmaps_in in (heatmaps_small, heatmaps_big):  # up-sized; area-averaged 4× down
        for resize in RESIZE_MODES:
            out, grads = run(partial(heatmap_feature_concat, resize=resize), [heatmaps_in, features], grad_out)
            expected_out, expected_grads = run(partial(heatmap_feature_concat_ref, resize=resize),
                                               [heatmaps_in, features], grad_out)
            torch.testing.assert_close(out, expected_out, rtol=1e-6, atol=1e-6)
            for grad, expected in zip(grads, expected_grads):
                torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)


@interpreted
def test_backward_skips_the_resize_adjoint_when_heatmaps_need_no_gradient(triton_forced, monkeypatch):
    import labfast.kernels.fusion as kernels

    def fail(*args, **kwargs):
        raise AssertionError("resize_adjoint ran for heatmaps that need no gradient")

    monkeypatch.setattr(kernels, "resize_adjoint", fail)
    image = torch.rand(1, 3, 8, 8)
    heatmaps = torch.rand(1, 2, 4, 4)  # requires_grad=False
    grad_out = torch.randn(1, 9, 8, 8)
    (_, grads), (_, expected) = (run(fn, [image], grad_out) for fn in
                                 (lambda x: input_fusion(x, heatmaps), lambda x: input_fusion_ref(x, heatmaps)))
    torch.testing.assert_close(grads[0], expected[0], rtol=1e-6, atol=1e-6)


@interpreted
def test_operators_run_the_references_inside_where_the_kernels_do_not_compile(monkeypatch):
    """A fast path that fails to compile falls back inside the forward and the backward operator
    (``backend.run``): outputs and gradients are the references' (float64: the same arithmetic)."""
    import labfast.kernels.fusion as kernels

    def does_not_compile(*arguments):
        raise subprocess.CalledProcessError(255, ["ptxas"], "ptxas fatal: Unresolved extern function")

    for name in ("input_fusion", "heatmap_feature_concat", "feature_fusion"):
        for step in ("forward", "backward"):
            monkeypatch.setattr(kernels, f"{name}_{step}", does_not_compile)
    monkeypatch.setattr(backend, "_takes_fast_paths", lambda tensor: True)  # CUDA's automatic choice
    generator = torch.Generator().manual_seed(0)
    image, heatmaps = (torch.rand(shape, generator=generator, dtype=torch.float64) for shape in
                       ((1, 3, 8, 8), (1, 2, 4, 4)))
    features, gate = (torch.rand(1, 4, 2, 2, generator=generator, dtype=torch.float64) for _ in range(2))
    for public, reference, inputs in ((input_fusion, input_fusion_ref, [image, heatmaps]),
                                      (heatmap_feature_concat, heatmap_feature_concat_ref, [heatmaps, features]),
                                      (feature_fusion, feature_fusion_ref, [features, gate])):
        # the Triton path passed its self-check; the first launch does not compile
        monkeypatch.setattr(backend, "_self_checked", {("fusion", "triton", torch.float64, "cpu"): None})
        leaves = [x.clone().requires_grad_() for x in inputs]
        assert public(*leaves).grad_fn.name().startswith("GeneratedBackwardFor_labfast_")
        monkeypatch.setattr(backend, "_self_checked", {("fusion", "triton", torch.float64, "cpu"): None})
        grad_out = torch.randn(reference(*inputs).shape, generator=generator, dtype=torch.float64)
        (out, grads), (expected_out, expected_grads) = (run(function, inputs, grad_out)
                                                        for function in (public, reference))
        torch.testing.assert_close(out, expected_out, rtol=1e-15, atol=1e-15)
        for grad, expected in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-15, atol=1e-15)


@pytest.fixture
def clean_backend_env(monkeypatch):
    monkeypatch.delenv("LABFAST_BACKEND", raising=False)
    monkeypatch.delenv("LABFAST_BACKEND_FUSION", raising=False)
    return monkeypatch


def _fusion_calls():
    image = torch.rand(1, 3, 8, 8, requires_grad=True)
    heatmaps = torch.rand(1, 2, 4, 4, requires_grad=True)
    features = torch.randn(1, 4, 4, 4, requires_grad=True)
    gate = torch.rand(1, 4, 4, 4)
    return {
        "input_fusion": lambda: input_fusion(image, heatmaps),
        "heatmap_feature_concat": lambda: heatmap_feature_concat(heatmaps, features),
        "feature_fusion": lambda: feature_fusion(features, gate),
    }


def test_cpu_tensors_take_the_reference_by_default(clean_backend_env):
    for name, call in _fusion_calls().items():
        assert call().grad_fn.name() == "CatBackward0", f"{name} did not run the reference"


@interpreted
def test_forced_triton_runs_the_kernels_under_the_interpreter(clean_backend_env):
    clean_backend_env.setenv("LABFAST_BACKEND_FUSION", "triton")
    for name, call in _fusion_calls().items():  # the torch.ops.labfast operator, Triton inside
        assert call().grad_fn.name() == f"GeneratedBackwardFor_labfast_{name}_defaultBackward"


def test_forced_cuda_on_cpu_raises_a_clear_error(clean_backend_env):
    clean_backend_env.setenv("LABFAST_BACKEND", "cuda")
    for name, call in _fusion_calls().items():
        with pytest.raises(RuntimeError, match="backend 'cuda' was forced but"):
            call()
    assert backend.forced("fusion") == "cuda"


def test_an_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="heatmap_feature_concat: resize='nearest'"):
        heatmap_feature_concat(torch.rand(1, 2, 8, 8), torch.rand(1, 3, 4, 4), resize="nearest")


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="feature_fusion: gate has shape"):
        feature_fusion(torch.rand(1, 4, 4, 4), torch.rand(1, 4, 4, 5))
    with pytest.raises(ValueError, match="input_fusion: heatmaps has shape"):
        input_fusion(torch.rand(1, 3, 8, 8), torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="heatmap_feature_concat: heatmaps has batch 2"):
        heatmap_feature_concat(torch.rand(2, 2, 4, 4), torch.rand(1, 3, 4, 4))


GPU_CASES = {  # the model's shapes at batch 2: 256² image with 13 heatmaps of 64², 64 -> 8 / 32 stages
    "input_fusion": (input_fusion, input_fusion_ref, [(2, 3, 256, 256), (2, 13, 64, 64)]),
    **{
        f"heatmap_feature_concat_{resize}_{size}": (
            partial(heatmap_feature_concat, resize=resize), partial(heatmap_feature_concat_ref, resize=resize),
            [(2, 13, 64, 64), (2, channels, size, size)],
        )
        for resize in RESIZE_MODES for channels, size in ((512, 8), (128, 32))
    },
    "heatmap_feature_concat_area_non_integer": (
        partial(heatmap_feature_concat, resize="area"), partial(heatmap_feature_concat_ref, resize="area"),
        [(2, 13, 64, 64), (2, 64, 13, 24)],
    ),
    "feature_fusion": (feature_fusion, feature_fusion_ref, [(2, 64, 64, 64), (2, 64, 64, 64)]),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", GPU_CASES)
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_gpu_backends_match_reference(clean_backend_env, name, op, dtype):
    """Triton (compiled unless TRITON_INTERPRET=1) and the CUDA extension on a real device, same
    tolerance as above."""
    if name == "cuda" and cuda_extension.status() is not None:
        pytest.skip(cuda_extension.status())
    public, reference, shapes = GPU_CASES[op]
    generator = torch.Generator(device="cuda").manual_seed(0)
    inputs = [torch.rand(shape, generator=generator, device="cuda") for shape in shapes]
    clean_backend_env.setenv("LABFAST_BACKEND_FUSION", name)
    check_parity(public, reference, inputs, dtype)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernels_compile_without_torch(tmp_path):
    """The torch-free half of csrc/fusion.cu (kernels + extern "C" launchers) compiles for sm_90."""
    result = subprocess.run(
        ["nvcc", "-c", "-std=c++17", "-DLABFAST_NO_TORCH", "-gencode=arch=compute_90,code=sm_90",
         str(CSRC), "-o", str(tmp_path / "fusion.o")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    if shutil.which("nm") is not None:  # the launchers the torch binding calls are all there
        symbols = subprocess.run(["nm", str(tmp_path / "fusion.o")], capture_output=True, text=True).stdout
        for op in ("input_fusion_forward", "input_fusion_backward_image", "input_fusion_backward_heatmaps",
                   "heatmap_feature_concat_forward", "heatmap_feature_concat_backward_heatmaps",
                   "feature_fusion_forward", "feature_fusion_backward"):
            assert f" T labfast_{op}\n" in symbols, op
