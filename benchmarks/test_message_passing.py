"""Message passing: reference vs ``torch.compile(reference)`` vs the fused Triton kernels.

GPU cases (skipped without CUDA) use the model's shapes: K = 13 boundary branches at 64×64,
C = 16 or 32 channels per branch, a 24-edge boundary neighbour graph, k = 7 and 3, batch
1 / 32 / 256, fp32 and bf16, forward alone and forward + backward. One CPU case (reference and
its compiled form) runs anywhere. Each group holds one shape, so pytest-benchmark's relative
columns are the ratios against the reference measured in the same run; each row's
``extra_info`` records device, versions, date and the op's FLOPs.

    pytest benchmarks/test_message_passing.py --benchmark-group-by=group \\
        --benchmark-json benchmarks/results/message_passing-<device>-<date>.json
"""

import pytest
import torch

from labfast.bench import environment
from labfast.ops.message_passing import message_passing_ref

# 300-W boundaries in LAB order: 0 contour, 1/2 left/right eyebrow, 3 nose bridge, 4 nose boundary,
# 5/6 left upper/lower eyelid, 7/8 right upper/lower eyelid, 9-12 lip edges top to bottom.
# Facial neighbours, each passed both ways: 12 pairs, 24 directed edges (the size of the
# model's intra-level graph; the model owns the exact graph).
NEIGHBOURS = ((0, 1), (0, 2), (1, 5), (2, 7), (5, 6), (7, 8), (1, 3), (3, 4), (4, 9), (9, 10),
              (10, 11), (11, 12))
EDGES = NEIGHBOURS + tuple((dst, src) for src, dst in NEIGHBOURS)
NUM_BRANCHES = 13
SIZE = 64



def make_inputs(batch, channels, ksize, dtype, device, requires_grad):
    generator = torch.Generator(device=device).manual_seed(0)
    features = torch.randn(batch, NUM_BRANCHES * channels, SIZE, SIZE, generator=generator, device=device, dtype=dtype)
    weights = torch.randn(len(EDGES), channels, channels, ksize, ksize, generator=generator, device=device,
                          dtype=dtype) / (channels * ksize * ksize) ** 0.5
    bias = torch.randn(len(EDGES), channels, generator=generator, device=device, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (features, weights, bias)]


def implementation(name: str):
    if name == "reference":
        return message_passing_ref
    if name == "compiled_reference":
        return torch.compile(message_passing_ref)
    from labfast.kernels.message_passing import message_passing_triton

    return message_passing_triton


def step(op, inputs, backward: bool, device: torch.device):
    """One call (and its backward), synchronised so the wall clock measures the device's work."""
    features, weights, bias = inputs

    def run():
        out = op(features, weights, bias, EDGES)
        if backward:
            torch.autograd.grad(out, (features, weights, bias), torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def flops(batch, channels, ksize, backward):
    forward = 2 * len(EDGES) * batch * SIZE * SIZE * channels * channels * ksize * ksize
    return forward * (3 if backward else 1)  # backward: grad wrt features and wrt weights


def measure(benchmark, name, batch, channels, ksize, dtype, device, backward):
    inputs = make_inputs(batch, channels, ksize, dtype, device, requires_grad=backward)
    run = step(implementation(name), inputs, backward, device)
    run()  # compile / JIT outside the timed rounds
    benchmark.group = (f"{device.type} N={batch} C={channels} k={ksize} {str(dtype).removeprefix('torch.')} "
                       f"{'fwd+bwd' if backward else 'fwd'}")
    benchmark.extra_info.update(environment(device), implementation=name, flops=flops(batch, channels, ksize, backward))
    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)


IMPLEMENTATIONS = ("reference", "compiled_reference", "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ksize", [7, 3])
@pytest.mark.parametrize("channels", [16, 32])
@pytest.mark.parametrize("batch", [1, 32, 256])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_message_passing_gpu(benchmark, name, batch, channels, ksize, dtype, backward):
    if name == "compiled_reference":
        torch._dynamo.reset()  # each shape compiles afresh rather than hitting the recompile limit
    measure(benchmark, name, batch, channels, ksize, dtype, torch.device("cuda"), backward)


@pytest.mark.parametrize("name", IMPLEMENTATIONS[:2])
def test_message_passing_cpu_reference(benchmark, name):
    """A small CPU case anywhere: the reference and its compiled form (Triton needs a GPU)."""
    measure(benchmark, name, 1, 16, 3, torch.float32, torch.device("cpu"), backward=False)
