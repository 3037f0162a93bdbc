"""Message passing: reference vs ``torch.compile(reference)`` vs the fused Triton kernels (the
public function with the Triton path forced: its operator and backward operator run them).

GPU cases (skipped without CUDA) use the paper preset's own calls: its two graphs over 300-W's
K = 13 boundaries at 64×64 — intra-level (the model's 38 directed neighbour edges over 13 branches)
and inter-level (13 edges from each boundary of the previous stack, over 2K = 26 branches) — with
the preset's C = 4 channels per branch and 7×7 messages; batch 1 / 32 / 256, fp32 and bf16,
forward alone and forward + backward. One CPU case (reference and its compiled form) runs
anywhere. Each group holds one shape, so pytest-benchmark's relative columns (the reference ratio)
are the ratios against the reference measured in the same run; each row's
``extra_info`` records device, versions, date and the op's FLOPs.

    pytest benchmarks/test_message_passing.py --benchmark-group-by=group \\
        --benchmark-json benchmarks/results/message_passing-<device>-<date>.json
"""

import pytest
import torch

from labfast import schemes
from labfast.perf.devices import environment
from labfast.model import config_by_name
from labfast.model.estimator import boundary_neighbours
from labfast.ops.message_passing import message_passing, message_passing_ref

PAPER = config_by_name("paper")
BOUNDARIES = schemes.get("300w").num_boundaries
# graph name -> (branches, directed edges), as labfast.model.estimator builds them
GRAPHS = {
    "intra": (BOUNDARIES, boundary_neighbours(schemes.get("300w"))),
    "inter": (2 * BOUNDARIES, tuple((k, BOUNDARIES + k) for k in range(BOUNDARIES))),
}
CHANNELS = PAPER.boundary_channels
KSIZE = PAPER.message_kernel
SIZE = PAPER.heatmap_size


def make_inputs(batch, graph, dtype, device, requires_grad):
    branches, edges = GRAPHS[graph]
    generator = torch.Generator(device=device).manual_seed(0)
    features = torch.randn(batch, branches * CHANNELS, SIZE, SIZE, generator=generator, device=device, dtype=dtype)
    weights = torch.randn(len(edges), CHANNELS, CHANNELS, KSIZE, KSIZE, generator=generator, device=device,
                          dtype=dtype) / (CHANNELS * KSIZE * KSIZE) ** 0.5
    bias = torch.randn(len(edges), CHANNELS, generator=generator, device=device, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (features, weights, bias)]


def implementation(name: str, monkeypatch):
    if name == "reference":
        return message_passing_ref
    if name == "compiled_reference":
        return torch.compile(message_passing_ref)
    monkeypatch.setenv("LABFAST_BACKEND_MESSAGE_PASSING", name)  # forced: raises rather than falls back
    return message_passing


def step(op, inputs, edges, backward: bool, device: torch.device):
    """One call (and its backward), synchronised so the wall clock measures the device's work."""
    features, weights, bias = inputs

    def run():
        out = op(features, weights, bias, edges)
        if backward:
            torch.autograd.grad(out, (features, weights, bias), torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def flops(batch, graph, backward):
    forward = 2 * len(GRAPHS[graph][1]) * batch * SIZE * SIZE * CHANNELS * CHANNELS * KSIZE * KSIZE
    return forward * (3 if backward else 1)  # backward: grad wrt features and wrt weights


def measure(benchmark, monkeypatch, name, batch, graph, dtype, device, backward):
    inputs = make_inputs(batch, graph, dtype, device, requires_grad=backward)
    run = step(implementation(name, monkeypatch), inputs, GRAPHS[graph][1], backward, device)
    run()  # compile / JIT outside the timed rounds
    benchmark.group = (f"{device.type} {graph} E={len(GRAPHS[graph][1])} N={batch} C={CHANNELS} k={KSIZE} "
                       f"{str(dtype).removeprefix('torch.')} {'fwd+bwd' if backward else 'fwd'}")
    benchmark.extra_info.update(environment(device), implementation=name, flops=flops(batch, graph, backward))
    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)


IMPLEMENTATIONS = ("reference", "compiled_reference", "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("batch", [1, 32, 256])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_message_passing_gpu(benchmark, monkeypatch, name, batch, graph, dtype, backward):
    if name == "compiled_reference":
        torch._dynamo.reset()  # each shape compiles afresh rather than hitting the recompile limit
    measure(benchmark, monkeypatch, name, batch, graph, dtype, torch.device("cuda"), backward)


@pytest.mark.parametrize("name", IMPLEMENTATIONS[:2])
def test_message_passing_cpu_reference(benchmark, monkeypatch, name):
    """A small CPU case anywhere: the reference and its compiled form (Triton needs a GPU)."""
    measure(benchmark, monkeypatch, name, 1, "intra", torch.float32, torch.device("cpu"), backward=False)
