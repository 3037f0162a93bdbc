"""Parity of the fused batch norm (+ residual) (+ ReLU) (``labfast.ops.batch_norm_act``) with its reference.

Triton runs on the CPU under ``TRITON_INTERPRET=1`` (tests/conftest.py), forced through the public
function (``LABFAST_BACKEND_BATCH_NORM_ACT=triton``), so dispatch and the custom ops are exercised.

Tolerance (flash-attention style), for every output, gradient and running statistic of the op run
with activations in dtype ``d`` (weights and statistics fp32, as under autocast):

    |fused_d - ref_64| <= 2 |ref_d - ref_64| + eps_d · max |ref_64| + M · eps_32 · max |ref_64|

``ref_64`` is the reference on the same (``d``-rounded) inputs in float64, ``ref_d`` the reference
in ``d``. The kernels accumulate in fp32 and round once when storing: half an ulp of each value
(within the floor ``eps_d · max|ref_64|``) plus the fp32 error of the per-channel sums over
``M = N·H·W`` rows (mean, variance, ``Σ g``, ``Σ g x̂``). A sum's rounding error is about
``sqrt(M) · eps_32 · Σ|terms|`` (random-signed roundings), and for random-signed terms (``g`` is
random) ``Σ|terms| ≈ sqrt(M) · |Σ terms|``: the last term, ``M · eps_32`` of the largest value
(``1e-3`` at ``M = 8192``, ``1e-5`` at ``M = 105``; measured errors sit 5-50x below it). A wrong
channel, stride, mask or missing statistic term errs by the order of the values themselves.
"""
from __future__ import annotations

import logging
import subprocess

import pytest
import torch
import torch.nn as nn

import labfast.kernels.batch_norm_act as kernels
from labfast.model.batch_norm_act import BatchNormAct
from labfast.ops import backend
from labfast.ops.batch_norm_act import batch_norm_act, batch_norm_act_ref

interpreted = pytest.mark.skipif(not backend.interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
pytestmark = interpreted


@pytest.fixture
def triton_forced(monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND_BATCH_NORM_ACT", "triton")


def make_inputs(shape, seed=0):
    """``x`` with a per-channel offset and scale (so that the statistics matter), its residual,
    weight, bias and running statistics (fp32)."""
    generator = torch.Generator().manual_seed(seed)
    channels = shape[1]
    offset = torch.randn(1, channels, 1, 1, generator=generator) * 3
    spread = torch.rand(1, channels, 1, 1, generator=generator) * 2 + 0.5
    x = torch.randn(*shape, generator=generator) * spread + offset
    residual = torch.randn(*shape, generator=generator)
    weight = torch.randn(channels, generator=generator)
    bias = torch.randn(channels, generator=generator)
    running_mean = torch.randn(channels, generator=generator)
    running_var = torch.rand(channels, generator=generator) + 0.5
    return x, residual, weight, bias, running_mean, running_var


def results(function, x, residual, weight, bias, running_mean, running_var, grad_out, training, relu,
            memory_format=torch.contiguous_format):
    """``[out, grad x, grad weight, grad bias, grad residual, running mean, running var]``."""
    x = x.detach().clone().to(memory_format=memory_format).requires_grad_()
    weight, bias = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    if residual is not None:
        residual = residual.detach().clone().to(memory_format=memory_format).requires_grad_()
    running_mean, running_var = running_mean.clone(), running_var.clone()
    out = function(x, weight, bias, running_mean, running_var, residual, training, 0.1, 1e-5, relu)
    out.backward(grad_out)
    return [out.detach(), x.grad, weight.grad, bias.grad, None if residual is None else residual.grad,
            running_mean, running_var]


NAMES = ("out", "grad x", "grad weight", "grad bias", "grad residual", "running mean", "running var")


def check_parity(shape, dtype, training, relu=True, with_residual=True, memory_format=torch.contiguous_format,
                 reference_yardstick=True):
    """``reference_yardstick=False``: the bound leaves out ``2 |ref_d - ref_64|`` (and allows the
    fused op 2 ulps, ``2 eps_d · max|ref_64|``, in its place: it rounds once)."""
    x, residual, weight, bias, running_mean, running_var = make_inputs(shape)
    x = x.to(dtype)
    residual = residual.to(dtype) if with_residual else None
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    if relu:
        # Where the exact pre-activation lies within fp32 rounding of 0 the ReLU's mask is a matter of
        # rounding (one element in ~30 000 here flips between fp32 and fp64): no upstream gradient there.
        # 1e-5 of the largest |y| is ~10x the fused op's fp32 error of y.
        pre_activation = batch_norm_act_ref(
            x.double(), weight.double(), bias.double(), running_mean.double().clone(), running_var.double().clone(),
            None if residual is None else residual.double(), training, 0.1, 1e-5, relu=False)
        ambiguous = pre_activation.abs() < 1e-5 * pre_activation.abs().max()
        grad_out = grad_out.masked_fill(ambiguous, 0)
    exact = results(batch_norm_act_ref, x.double(), None if residual is None else residual.double(), weight.double(),
                    bias.double(), running_mean.double(), running_var.double(), grad_out.double(), training, relu)
    low = results(batch_norm_act_ref, x, residual, weight, bias, running_mean, running_var, grad_out, training, relu)
    fused = results(batch_norm_act, x, residual, weight, bias, running_mean, running_var, grad_out, training, relu,
                    memory_format)
    rows = shape[0] * shape[2] * shape[3]
    for name, mine, theirs, truth in zip(NAMES, fused, low, exact):
        if truth is None:
            assert mine is None, name
            continue
        assert mine.dtype == theirs.dtype and mine.shape == truth.shape, name
        truth = truth.double()
        scale = truth.abs().max().item()
        error = (mine.double() - truth).abs().max().item()
        yardstick = 2 * (theirs.double() - truth).abs().max().item() if reference_yardstick \
            else torch.finfo(dtype).eps * scale
        bound = yardstick + torch.finfo(dtype).eps * scale + rows * torch.finfo(torch.float32).eps * scale
        assert error <= bound, f"{name} ({dtype}, {shape}): error {error:.3g} > bound {bound:.3g}"
    if memory_format == torch.channels_last:
        assert fused[0].is_contiguous(memory_format=torch.channels_last)


# The model's shapes at batch 1-2 (labfast.model, the presets): the paper estimator's hourglass widths 40
# and 20 from 64x64 down to 2x2, its 4·13 boundary branches, the tiny preset's widths 4 and 8 at 128x128,
# and the ResNet-18 stages (64..512 channels, 64x64..8x8) whose second BN takes the residual.
MODEL_SHAPES = [((1, 40, 64, 64), False), ((2, 20, 32, 32), False), ((2, 16, 2, 2), False),
                ((2, 52, 16, 16), False), ((1, 4, 128, 128), False), ((2, 64, 64, 64), True),
                ((2, 128, 32, 32), True), ((2, 256, 16, 16), True), ((2, 512, 8, 8), True)]


@pytest.mark.parametrize("shape, with_residual", MODEL_SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_training_forward_backward_and_running_stats_match_the_reference_fp32(triton_forced, shape, with_residual):
    check_parity(shape, torch.float32, training=True, with_residual=with_residual)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_half_precision_activations_with_fp32_weights_match_the_reference(triton_forced, dtype, training):
    check_parity((2, 40, 16, 16), dtype, training, with_residual=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_half_precision_residual_is_added_before_rounding(triton_forced, dtype, training):
    """With a residual the reference in bf16/fp16 rounds ``bn(x)`` before the add, and its ReLU mask
    then differs from the exact one wherever ``bn(x) + residual`` is within a rounding of 0 (its
    gradients err by ~0.4 of their largest value at (2, 64, 64, 64), measured): no yardstick. The
    fused op adds in fp32 and rounds once, so it is held to 2 ulps of the exact result instead."""
    check_parity((2, 64, 16, 16), dtype, training, reference_yardstick=False)


@pytest.mark.parametrize("relu, with_residual", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_combination_of_residual_and_relu(triton_forced, relu, with_residual, training):
    check_parity((3, 13, 5, 7), torch.float32, training, relu=relu, with_residual=with_residual)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_channels_last_input_gives_a_channels_last_output_of_the_same_values(triton_forced, training):
    check_parity((2, 24, 9, 6), torch.float32, training, memory_format=torch.channels_last)
    check_parity((2, 24, 9, 6), torch.bfloat16, training, memory_format=torch.channels_last)


def test_one_pixel_maps_and_many_row_blocks(triton_forced):
    """1x1 spatial size (M = N rows), and more rows than one interpreter tile (several partials to merge)."""
    check_parity((5, 7, 1, 1), torch.float32, training=True)
    check_parity((3, 5, 30, 30), torch.float32, training=True)  # 2700 rows: 3 tiles of 1024


@pytest.mark.parametrize("programs", [1024, 3], ids=["one_tile_per_program", "several_tiles_per_program"])
def test_gpu_blocks_and_many_partials(triton_forced, monkeypatch, programs):
    """The GPU's tiles (64 rows x 32 channels) and partition under the interpreter, which otherwise
    runs one program per channel block: 13 tiles over 13 programs or 5 tiles per program over 3
    programs (a short last one); the finalize kernel steps over the partials 4 at a time (a masked
    last step)."""
    monkeypatch.setattr(kernels, "_INTERPRETER_BLOCKS", kernels._GPU_BLOCKS)
    monkeypatch.setattr(kernels, "_INTERPRETER_PROGRAMS", programs)
    monkeypatch.setattr(kernels, "_FINALIZE_BLOCKS", (4, 32))
    assert kernels._partition(2 * 20 * 20, 13) == {1024: (64, 13), 3: (320, 3)}[programs]
    check_parity((2, 13, 20, 20), torch.float32, training=True)
    check_parity((2, 40, 6, 6), torch.bfloat16, training=True, with_residual=False)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("relu, with_residual", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_operators_run_the_same_formulas_in_pytorch_where_the_kernels_do_not_compile(
        monkeypatch, caplog, training, relu, with_residual, memory_format):
    """A fast path that fails to compile falls back inside each operator (``backend.run``) to the
    kernels' formulas in plain PyTorch: the reference's results, running statistics included, in
    the kernels' layout (the same bound as the kernels)."""
    def does_not_compile(*arguments):
        raise subprocess.CalledProcessError(255, ["ptxas"], "ptxas fatal: Unresolved extern function")

    for name in ("batch_norm_statistics", "batch_norm_act_apply", "batch_norm_act_backward"):
        monkeypatch.setattr(kernels, name, does_not_compile)
    monkeypatch.setattr(backend, "_takes_fast_paths", lambda tensor: True)  # CUDA's automatic choice
    # the Triton path passed its self-check; its first launch does not compile
    monkeypatch.setattr(backend, "_self_checked", {("batch_norm_act", "triton", torch.float32, "cpu"): None})
    with caplog.at_level(logging.WARNING, logger="labfast.ops"):
        check_parity((2, 6, 5, 3), torch.float32, training, relu=relu, with_residual=with_residual,
                     memory_format=memory_format)
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == [
        "labfast op 'batch_norm_act': the triton path did not compile for torch.float32 on cpu"]


def test_fp64_gradcheck(triton_forced):
    x, residual, weight, bias, running_mean, running_var = (t.double() for t in make_inputs((2, 3, 3, 2)))
    for training in (True, False):
        def function(x, weight, bias, residual, training=training):
            return batch_norm_act(x, weight, bias, running_mean.clone(), running_var.clone(), residual, training,
                                  0.1, 1e-5, True)

        inputs = [t.clone().requires_grad_() for t in (x, weight, bias, residual)]
        assert torch.autograd.gradcheck(function, inputs, fast_mode=True)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_module_updates_running_stats_as_nn_batchnorm2d_and_loads_its_state(triton_forced, momentum):
    """``BatchNormAct`` on the Triton path against ``nn.BatchNorm2d`` + ``nn.ReLU``: same state-dict
    keys, outputs within fp32 tolerance, running statistics and ``num_batches_tracked`` after three
    training steps equal to fp32 roundoff (3 updates of an fp32 mean: a few ulps)."""
    reference = nn.BatchNorm2d(6, momentum=momentum)
    fused = BatchNormAct(6, momentum=momentum)
    assert fused.state_dict().keys() == reference.state_dict().keys()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2)
        reference.bias.uniform_(-1, 1)
    fused.load_state_dict(reference.state_dict())
    generator = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.randn(4, 6, 5, 5, generator=generator) * (step + 1) + step
        torch.testing.assert_close(fused(x), torch.relu(reference(x)), rtol=0, atol=1e-5)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, rtol=1e-6, atol=1e-6, msg=name)
    fused.eval(), reference.eval()
    torch.testing.assert_close(fused(x), torch.relu(reference(x)), rtol=0, atol=1e-5)


def test_reference_module_is_bit_identical_to_batchnorm_then_relu():
    """On the CPU (reference path) the model's numbers are unchanged: same arithmetic, same bits."""
    reference = nn.BatchNorm2d(6)
    fused = BatchNormAct(6)
    generator = torch.Generator().manual_seed(4)
    x, identity = torch.randn(2, 6, 4, 4, generator=generator), torch.randn(2, 6, 4, 4, generator=generator)
    assert torch.equal(fused(x, identity), torch.relu(reference(x) + identity))
    assert torch.equal(fused.running_var, reference.running_var)
    fused.eval(), reference.eval()
    assert torch.equal(fused(x), torch.relu(reference(x)))


def test_bad_arguments_name_the_argument():
    x = torch.randn(2, 3, 4, 4)
    ones = torch.ones(3)
    with pytest.raises(ValueError, match="residual"):
        batch_norm_act(x, ones, ones, None, None, torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="weight has shape"):
        batch_norm_act(x, torch.ones(4), ones, None, None)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_act(torch.randn(1, 3, 1, 1), ones, ones, None, None)
    with pytest.raises(ValueError, match="eval mode"):
        batch_norm_act(x, ones, ones, None, None, training=False)


def test_module_compiles_in_one_graph(triton_forced):
    """``torch.compile(fullgraph=True)`` of a conv + ``BatchNormAct`` block traces the custom ops
    without a graph break (fullgraph raises on any), runs forward and backward, and agrees with eager."""
    torch.manual_seed(5)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNormAct(8))
    x = torch.randn(2, 3, 6, 6)
    eager_out = block(x)
    eager_stats = block[1].running_mean.clone()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=0, atol=1e-5)
    # the second call (compiled) updated the running mean again: it moved on from the eager step
    assert not torch.equal(block[1].running_mean, eager_stats)
    assert block[1].num_batches_tracked.item() == 2
    assert block[0].weight.grad is not None and block[1].weight.grad is not None
