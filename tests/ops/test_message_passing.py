"""Parity of the fused Triton message passing (``labfast.kernels.message_passing``) with
``message_passing_ref``, forward and backward, run through the Triton interpreter on CPU: the
public function with the Triton path forced, so the ``torch.ops.labfast`` operators run the kernels.

Tolerances (stated per dtype, derived rather than tuned):
- fp32: a length-``n`` fp32 sum of products differs from the exact value by at most
  ``n·u·Σ|terms|`` (``u = 2**-24``; Higham, *Accuracy and Stability*, Sec. 3.1). Both the kernel
  and the reference obey it, so they may differ by ``2·n·u·Σ|terms|``, checked element-wise with
  ``Σ|terms|`` computed exactly as the op applied to ``|x|, |W|, |b|`` (and its gradients with
  ``|grad_out|``), ``n`` the longest sum in the case. A wrong tap, channel or branch is off by
  ``O(Σ|terms|)``, thousands of times more.
- fp16 / bf16 (flash-attention's rule): inputs are rounded to the dtype once, then the kernel
  and the reference both run in that dtype and are compared with the fp32 reference on the same
  rounded inputs. The kernel's max error may be at most twice the low-precision reference's:
  both end in one rounding to the output dtype (≤ ½ ulp each, on different elements), the
  reference rounds more often (each message, each scatter-add), the kernel accumulates in fp32.
  The fp32 reference's own error (the fp32 bound above) is added.
- fp64: ``torch.autograd.gradcheck`` on a tiny case.
"""
import pytest
import torch

from labfast.kernels.message_passing import (
    _fold_patch_weights,
    _patch_weights,
    grad_weights,
    patch_shape,
    routing_tables,
)
from labfast.ops import backend, message_passing
from labfast.ops.message_passing import message_passing_ref

# CPU tensors through the interpreter; the compiled kernels are tested by tests/gpu/ on a GPU.
pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1")

from labfast import schemes
from labfast.model import config_by_name  # noqa: E402
from labfast.model.estimator import boundary_neighbours  # noqa: E402

PAPER = config_by_name("paper")
SMALL = config_by_name("small")
TINY = config_by_name("tiny")
# The model's graphs for 300-W: intra-level (38 edges between K = 13 boundaries) and inter-level
# (boundary k of the previous stack to boundary k of this one: 13 edges over 2K = 26 branches).
BOUNDARIES = schemes.get("300w").num_boundaries
INTRA = boundary_neighbours(schemes.get("300w"))
INTER = tuple((k, BOUNDARIES + k) for k in range(BOUNDARIES))
CHAIN = ((0, 1), (1, 2), (2, 1), (0, 2))  # a chain both ways; branches 1 and 2 have two incoming edges
MIXED = ((0, 1), (1, 0), (3, 1), (2, 2))  # a self-loop, branch 3 receives nothing

@pytest.fixture
def triton_forced(monkeypatch):
    """``message_passing`` runs its operators on the Triton path (the self-checks are
    tests/ops/test_self_check.py's)."""
    monkeypatch.setenv("LABFAST_BACKEND_MESSAGE_PASSING", "triton")
    monkeypatch.setenv("LABFAST_SELFCHECK", "0")


# (id, batch, branches K, channels C, H, W, kernel k, edges)
CASES = [
    ("chain_c5_k3_7x9", 1, 3, 5, 7, 9, 3, CHAIN),
    ("chain_c20_k5_batch2", 2, 3, 20, 7, 9, 5, CHAIN),
    ("mixed_c16_k1", 1, 4, 16, 6, 5, 1, MIXED),
    ("two_channel_blocks_c72_k1", 1, 2, 72, 5, 4, 1, ((0, 1), (1, 0))),
    ("pixel_blocks_across_images", 3, 2, 8, 9, 11, 3, ((0, 1), (1, 0))),
    # The paper preset's branch width and kernel (C = 4, 7×7): 2×2 pixel patches (16 columns),
    # an 8×8 window of 256 patch-weight rows; odd sizes cut the last patch row and column.
    ("paper_branch_c4_k7", 1, 3, PAPER.boundary_channels, 9, 11, PAPER.message_kernel, CHAIN),
    # The model's own graphs at each preset's C and k (small images: interpreter time).
    ("paper_intra_38_edges_c4_k7", 1, BOUNDARIES, PAPER.boundary_channels, 7, 9, PAPER.message_kernel, INTRA),
    ("paper_inter_13_edges_c4_k7", 1, 2 * BOUNDARIES, PAPER.boundary_channels, 5, 6, PAPER.message_kernel, INTER),
    ("small_intra_38_edges_c4_k3", 2, BOUNDARIES, SMALL.boundary_channels, 6, 5, SMALL.message_kernel, INTRA),
    ("tiny_intra_38_edges_c2_k3", 1, BOUNDARIES, TINY.boundary_channels, 7, 9, TINY.message_kernel, INTRA),
]


def make_inputs(batch, branches, channels, height, width, ksize, edges, dtype, with_bias=True, seed=0):
    """Features, weights (scaled so messages are O(1)), bias and grad_out, rounded to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    num_edges = len(edges)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    features = randn(batch, branches * channels, height, width)
    weights = (torch.randn(num_edges, channels, channels, ksize, ksize, generator=generator)
               / (channels * ksize * ksize) ** 0.5).to(dtype)
    bias = randn(num_edges, channels) if with_bias else None
    grad_out = randn(batch, branches * channels, height, width)
    return features, weights, bias, grad_out


def run(op, features, weights, bias, grad_out, edges, dtype):
    """Output and gradients wrt features, weights, bias (bias grad ``None`` without bias), in fp32."""
    inputs = [t.to(dtype).requires_grad_() for t in (features, weights, bias) if t is not None]
    out = op(inputs[0], inputs[1], inputs[2] if bias is not None else None, edges)
    grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
    results = [out.detach(), *grads] + ([None] if bias is None else [])
    return [None if t is None else t.float() for t in results]


def magnitudes(features, weights, bias, grad_out, edges):
    """``Σ|terms|`` of the output and of each gradient: the op on absolute values (it is linear in
    each argument, so gradients with ``|grad_out|`` sum absolute products too)."""
    return run(message_passing_ref, features.abs(), weights.abs(), None if bias is None else bias.abs(),
               grad_out.abs(), edges, torch.float64)


def longest_sum(batch, channels, height, width, ksize, edges):
    """Most terms any output or gradient element sums: messages (E·k²·C, + bias and residual)
    or the pixel sums of the weight and bias gradients (N·H·W)."""
    return max(len(edges) * ksize * ksize * channels + len(edges) + 1, batch * height * width)


# The bias-free path only on the first case (interpreter time).
FP32_CASES = [(case, True) for case in CASES] + [(CASES[0], False)]


@pytest.mark.parametrize("case, with_bias", FP32_CASES,
                         ids=[c[0] + ("" if with_bias else "_no_bias") for c, with_bias in FP32_CASES])
def test_fp32_forward_and_backward_match_reference(triton_forced, case, with_bias):
    _, batch, branches, channels, height, width, ksize, edges = case
    tensors = make_inputs(batch, branches, channels, height, width, ksize, edges, torch.float32, with_bias)
    ours = run(message_passing, *tensors, edges, torch.float32)
    reference = run(message_passing_ref, *tensors, edges, torch.float32)
    bound = 2 * longest_sum(batch, channels, height, width, ksize, edges) * 2.0**-24
    for name, mine, theirs, magnitude in zip(("out", "grad_features", "grad_weights", "grad_bias"),
                                             ours, reference, magnitudes(*tensors, edges)):
        if theirs is None:
            assert mine is None, name
            continue
        excess = (mine - theirs).abs() - bound * magnitude.float()
        assert excess.max() <= 0, f"{name}: exceeds 2·n·u·Σ|terms| by {excess.max():.3e}"


LOW_PRECISION_CASES = [CASES[0], CASES[1], CASES[5], CASES[6]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=[c[0] for c in LOW_PRECISION_CASES])
def test_low_precision_error_at_most_twice_the_references(triton_forced, case, dtype):
    _, batch, branches, channels, height, width, ksize, edges = case
    tensors = make_inputs(batch, branches, channels, height, width, ksize, edges, dtype)
    exact = run(message_passing_ref, *tensors, edges, torch.float32)
    low = run(message_passing_ref, *tensors, edges, dtype)
    ours = run(message_passing, *tensors, edges, dtype)
    fp32_bound = longest_sum(batch, channels, height, width, ksize, edges) * 2.0**-24
    for name, mine, reference_low, truth, magnitude in zip(
            ("out", "grad_features", "grad_weights", "grad_bias"), ours, low, exact, magnitudes(*tensors, edges)):
        reference_error = (reference_low - truth).abs().max().item()
        our_error = (mine - truth).abs().max().item()
        allowed = 2 * reference_error + fp32_bound * magnitude.max().item()
        assert our_error <= allowed, f"{name}: error {our_error:.3e} > 2 × reference's {reference_error:.3e}"


def test_outputs_keep_the_input_dtype(triton_forced):
    tensors = make_inputs(1, 2, 4, 3, 4, 3, ((0, 1),), torch.bfloat16)
    features, weights, bias, _ = [t.requires_grad_() for t in tensors]
    out = message_passing(features, weights, bias, ((0, 1),))
    out.sum().backward()
    assert out.dtype == features.grad.dtype == weights.grad.dtype == bias.grad.dtype == torch.bfloat16


def test_one_branch_without_edges_is_the_identity(triton_forced):
    features = torch.randn(2, 6, 5, 7, requires_grad=True)
    weights = torch.zeros(0, 6, 6, 3, 3, requires_grad=True)
    bias = torch.zeros(0, 6, requires_grad=True)
    out = message_passing(features, weights, bias, ())
    grad_out = torch.randn_like(out)
    grad_features, grad_weights_, grad_bias = torch.autograd.grad(out, (features, weights, bias), grad_out)
    assert torch.equal(out, features)
    assert torch.equal(grad_features, grad_out)
    assert grad_weights_.shape == weights.shape and grad_bias.shape == bias.shape
    assert torch.equal(message_passing_ref(features, weights, bias, ()), features)


def test_fp64_gradcheck(triton_forced):
    # fast_mode checks the Jacobian along random directions (one backward instead of one per
    # output element): the full check takes ~40 s of interpreter time.
    edges = ((0, 1), (1, 0), (1, 1))
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 2 * 2, 3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(3, 2, 2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(3, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, w, b: message_passing(f, w, b, edges), (features, weights, bias), fast_mode=True)


def test_split_pixel_sums_of_the_weight_gradient_agree():
    edges = ((0, 1), (2, 1), (1, 0))
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(3, 3 * 6, 9, 11, dtype=torch.float64, generator=generator)  # 3 pixel blocks
    grad_out = torch.randn(features.shape, dtype=torch.float64, generator=generator)
    tables = routing_tables(edges, 3, features.device)
    whole = grad_weights(features, grad_out, tables, 6, 3, splits=1)
    split = grad_weights(features, grad_out, tables, 6, 3, splits=3)
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)


def test_non_contiguous_features_are_handled(triton_forced):
    tensors = make_inputs(2, 2, 4, 5, 6, 3, ((0, 1), (1, 0)), torch.float32)
    features = tensors[0].to(memory_format=torch.channels_last)
    assert not features.is_contiguous()
    out = message_passing(features, tensors[1], tensors[2], ((0, 1), (1, 0)))
    torch.testing.assert_close(out, message_passing_ref(tensors[0], tensors[1], tensors[2], ((0, 1), (1, 0))),
                               rtol=1e-5, atol=1e-5)


def test_forced_triton_backend_routes_through_the_operator(monkeypatch):
    tensors = make_inputs(1, 2, 4, 4, 4, 3, ((0, 1),), torch.float32)
    features = tensors[0].requires_grad_()
    monkeypatch.setenv("LABFAST_BACKEND_MESSAGE_PASSING", "triton")
    assert type(message_passing(features, tensors[1], tensors[2], [[0, 1]]).grad_fn).__name__ == \
        "GeneratedBackwardFor_labfast_message_passing_defaultBackward"
    monkeypatch.setenv("LABFAST_BACKEND_MESSAGE_PASSING", "reference")
    assert type(message_passing(features, tensors[1], tensors[2], [[0, 1]]).grad_fn).__name__ != \
        "GeneratedBackwardFor_labfast_message_passing_defaultBackward"


@pytest.mark.parametrize("change, message", [
    (dict(edges=((0, 1), (1, 0))), "2 edges but weights hold 1"),
    (dict(edges=((0, 3),)), "edge 0 = (0, 3) names a branch outside 0..1"),
    (dict(weights=torch.zeros(1, 4, 4, 2, 2)), "kernel size must be odd"),
    (dict(weights=torch.zeros(1, 3, 3, 3, 3)), "not a multiple of the 3 channels"),
    (dict(bias=torch.zeros(1, 5)), "bias must be (E, C) = (1, 4)"),
    (dict(weights=torch.zeros(1, 4, 4, 3, 3, dtype=torch.float64)), "weights dtype torch.float64 differs"),
    (dict(edges=((0, "x"),)), "edges must be (src, dst) integer pairs"),
])
def test_bad_arguments_raise_clear_errors(change, message):
    arguments = dict(features=torch.zeros(1, 8, 4, 4), weights=torch.zeros(1, 4, 4, 3, 3),
                     bias=torch.zeros(1, 4), edges=((0, 1),))
    arguments.update(change)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        message_passing(**arguments)


@pytest.mark.parametrize("channels, patch, columns", [
    (1, (4, 4), 16), (2, (2, 4), 16), (3, (2, 4), 24), (4, (2, 2), 16), (5, (2, 2), 20), (8, (1, 2), 16),
    (16, (1, 1), 16), (72, (1, 1), 72)])
def test_patches_fill_the_dots_16_columns(channels, patch, columns):
    """A patch of ``J`` pixels gives ``J·C >= 16`` columns (tl.dot's minimum), exactly 16 when C
    divides 16: at the paper's C = 4 no column of the dot is padding (one pixel per row left 12 of 16 empty)."""
    assert patch_shape(channels) == patch
    assert patch[0] * patch[1] * channels == columns


def test_patch_weights_place_each_tap_and_fold_is_their_adjoint():
    """``_patch_weights`` puts ``W[co, ci, a-dy, b-dx]`` at row ``(a, b, ci)``, column ``(dy, dx, co)``
    (zero elsewhere); ``_fold_patch_weights`` is its adjoint: ``<P(W), G> == <W, fold(G)>`` exactly in fp64."""
    generator = torch.Generator().manual_seed(3)
    weights = torch.randn(2, 4, 4, 7, 7, dtype=torch.float64, generator=generator)
    patched = _patch_weights(weights, (2, 2)).view(2, 8, 8, 4, 2, 2, 4)  # (E, a, b, ci, dy, dx, co)
    for dy in range(2):
        for dx in range(2):
            copy = patched[:, dy:dy + 7, dx:dx + 7, :, dy, dx, :].permute(0, 4, 3, 1, 2)
            assert torch.equal(copy, weights)
            assert patched[:, :, :, :, dy, dx, :].abs().sum() == copy.abs().sum()  # nothing outside the copy
    grad = torch.randn(2, 256, 16, dtype=torch.float64, generator=generator)
    folded = _fold_patch_weights(grad, (2, 2), 4, 7)
    assert folded.shape == weights.shape
    torch.testing.assert_close((patched.reshape(2, 256, 16) * grad).sum(), (weights * folded).sum(),
                               rtol=1e-12, atol=0)
