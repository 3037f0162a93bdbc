"""``message_passing_dense`` (the sums of message passing as one dense convolution, the training
step's CPU form) against ``message_passing_ref``, forward and backward, on the cases and with the
helpers of ``test_message_passing.py``; plain PyTorch, no interpreter.

Tolerance (fp32, derived as in test_message_passing.py): every output and gradient element is a
sum of at most ``n`` products (``longest_sum``; the zero blocks of the dense weight add exact
zeros, which round nothing), so each form is within ``n·u·Σ|terms|`` of the exact value and the
two within ``2·n·u·Σ|terms|``, element-wise, ``u = 2**-24``. A product put in the wrong block
(a swapped source and destination, a lost repeated edge) is off by ``O(Σ|terms|)``.
"""
import pytest
import torch

from labfast.model import LAB, config_by_name
from labfast.ops.message_passing import message_passing_dense, message_passing_ref
from test_message_passing import CASES, CHAIN, longest_sum, magnitudes, make_inputs, run

REPEATED = ((0, 1), (0, 1), (2, 0))  # one pair twice: its two kernels add up


@pytest.mark.parametrize("case", CASES + [("repeated_edge", 2, 3, 4, 5, 6, 3, REPEATED)],
                         ids=[c[0] for c in CASES] + ["repeated_edge"])
def test_fp32_forward_and_backward_match_reference(case):
    _, batch, branches, channels, height, width, ksize, edges = case
    tensors = make_inputs(batch, branches, channels, height, width, ksize, edges, torch.float32)
    ours = run(message_passing_dense, *tensors, edges, torch.float32)
    reference = run(message_passing_ref, *tensors, edges, torch.float32)
    bound = 2 * longest_sum(batch, channels, height, width, ksize, edges) * 2.0**-24
    for name, mine, theirs, magnitude in zip(("out", "grad_features", "grad_weights", "grad_bias"),
                                             ours, reference, magnitudes(*tensors, edges)):
        excess = (mine - theirs).abs() - bound * magnitude.float()
        assert excess.max() <= 0, f"{name}: exceeds 2·n·u·Σ|terms| by {excess.max():.3e}"


def test_fp64_gradcheck():
    generator = torch.Generator().manual_seed(1)
    inputs = (torch.randn(1, 3 * 2, 4, 5, dtype=torch.float64, generator=generator),
              torch.randn(len(CHAIN), 2, 2, 3, 3, dtype=torch.float64, generator=generator),
              torch.randn(len(CHAIN), 2, dtype=torch.float64, generator=generator))
    assert torch.autograd.gradcheck(lambda f, w, b: message_passing_dense(f, w, b, CHAIN),
                                    [t.requires_grad_() for t in inputs], fast_mode=True)


def test_no_edges_is_the_identity():
    features = torch.randn(2, 6, 5, 7)
    out = message_passing_dense(features, torch.zeros(0, 6, 6, 3, 3), torch.zeros(0, 6), ())
    assert torch.equal(out, features) and out is not features


def test_runs_in_the_autocast_dtype_like_the_op():
    features, weights, bias, _ = make_inputs(1, 3, 4, 5, 6, 3, CHAIN, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = message_passing_dense(features, weights, bias, CHAIN)
    assert out.dtype == torch.bfloat16


def test_the_estimator_switch_reaches_intra_level_passing_only():
    estimator = LAB("300w", config_by_name("tiny")).estimator
    estimator.use_dense_message_passing()
    assert all(passing.dense for passing in estimator.intra)
    assert not any(level.passing.dense for level in estimator.inter)  # one edge per destination: grouped
    estimator.use_dense_message_passing(False)
    assert not any(passing.dense for passing in estimator.intra)
