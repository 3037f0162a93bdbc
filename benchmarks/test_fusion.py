"""Heatmap–feature fusion: reference vs ``torch.compile(reference)`` vs Triton vs CUDA.

GPU cases (skipped without CUDA; the CUDA rows also skip unless ``labfast._cuda`` is built) use
the model's shapes: input fusion of an ``N×3×256×256`` image with K = 13 boundary heatmaps of
64×64; ``M ⊕ F`` (heatmaps shrunk by area, the default, and bilinearly, the old behaviour) and
``F ⊕ (F ⊗ T)`` at the ResNet-18 stage shapes 64×64×64, 128×32×32, 256×16×16, 512×8×8 (heatmaps
13×64×64); batch 1 / 32 / 256, fp32 and bf16, forward alone and
forward + backward. One CPU case per op (reference and its compiled form) runs anywhere. Each
group holds one shape, so pytest-benchmark's relative columns are the ratios against the
reference measured in the same run; each row's ``extra_info`` records device, versions, date and
the fewest bytes the op must move (divide by the time for the achieved bandwidth).

    pytest benchmarks/test_fusion.py --benchmark-group-by=group \\
        --benchmark-json benchmarks/results/fusion-<device>-<date>.json
"""

from functools import partial

import pytest
import torch

from labfast.ops import OPS, cuda_extension
from labfast.ops.fusion import RESIZE_MODES
from labfast.perf.devices import environment

NUM_BOUNDARIES = 13
HEATMAP_SIZE = 64
IMAGE_SIZE = 256
STAGES = [(64, 64), (128, 32), (256, 16), (512, 8)]  # (channels, size) of the ResNet-18 stages
IMPLEMENTATIONS = ("reference", "compiled_reference", "triton", "cuda")


def _variants(op):
    """``{case name: (public function, reference, fast paths)}`` of one fusion op of the registry:
    ``heatmap_feature_concat`` once per resize mode."""
    if op.name != "heatmap_feature_concat":
        return {op.name: (op.function, op.reference, op.fast_paths)}
    return {f"{op.name}_{resize}": (partial(op.function, resize=resize), partial(op.reference, resize=resize),
                                    op.fast_paths) for resize in RESIZE_MODES}


FUSION_OPS = {name: variant for op in OPS.values() if op.module == "fusion" for name, variant in _variants(op).items()}


def make_inputs(op, batch, channels, size, dtype, device, requires_grad):
    """The op's two inputs; ``channels``/``size`` describe the features (or the image)."""
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=device, dtype=dtype).requires_grad_(requires_grad)

    heatmaps = rand(batch, NUM_BOUNDARIES, HEATMAP_SIZE, HEATMAP_SIZE)
    if op == "input_fusion":
        return rand(batch, channels, size, size), heatmaps
    if op.startswith("heatmap_feature_concat"):
        return heatmaps, rand(batch, channels, size, size)
    return rand(batch, channels, size, size), rand(batch, channels, size, size)


def minimum_bytes(inputs, out, backward):
    """Bytes read and written by a perfect fused kernel: inputs once, output once (and the same
    again for backward: upstream gradient in, input gradients out, inputs re-read)."""
    inputs_bytes = sum(t.numel() * t.element_size() for t in inputs)
    out_bytes = out.numel() * out.element_size()
    forward = inputs_bytes + out_bytes
    return forward + (out_bytes + 2 * inputs_bytes if backward else 0)


def implementation(op, name, monkeypatch):
    public, reference, fast_paths = FUSION_OPS[op]
    if name == "reference":
        return reference
    if name == "compiled_reference":
        return torch.compile(reference)
    if name not in fast_paths:
        pytest.skip(f"{op} has no {name} kernel")
    if name == "cuda" and cuda_extension.status() is not None:
        pytest.skip(cuda_extension.status())
    monkeypatch.setenv("LABFAST_BACKEND_FUSION", name)  # forced: raises rather than falls back
    return public


def measure(benchmark, monkeypatch, op, name, batch, channels, size, dtype, device, backward):
    function = implementation(op, name, monkeypatch)
    inputs = make_inputs(op, batch, channels, size, dtype, device, requires_grad=backward)

    def run():
        out = function(*inputs)
        if backward:
            torch.autograd.grad(out, inputs, torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    out = run()  # compile / JIT outside the timed rounds
    benchmark.group = (f"{op} {device.type} N={batch} C={channels} {size}x{size} "
                       f"{str(dtype).removeprefix('torch.')} {'fwd+bwd' if backward else 'fwd'}")
    benchmark.extra_info.update(environment(device), implementation=name,
                                bytes=minimum_bytes(inputs, out, backward))
    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)


# input fusion at the model's image size, the others at every ResNet-18 stage
CASES = [(op, channels, size) for op in FUSION_OPS
         for channels, size in ([(3, IMAGE_SIZE)] if op == "input_fusion" else STAGES)]
CPU_CASES = [next(case for case in CASES if case[0] == op) for op in FUSION_OPS]  # the first of each op


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 32, 256])
@pytest.mark.parametrize("op, channels, size", CASES, ids=[f"{op}-{c}x{s}" for op, c, s in CASES])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_fusion_gpu(benchmark, monkeypatch, name, op, channels, size, batch, dtype, backward):
    torch._dynamo.reset()  # each shape compiles afresh rather than hitting the recompile limit
    measure(benchmark, monkeypatch, op, name, batch, channels, size, dtype, torch.device("cuda"), backward)


@pytest.mark.parametrize("op, channels, size", CPU_CASES, ids=[f"{op}-{c}x{s}" for op, c, s in CPU_CASES])
@pytest.mark.parametrize("name", IMPLEMENTATIONS[:2])
def test_fusion_cpu_reference(benchmark, monkeypatch, name, op, channels, size):
    """A small CPU case anywhere: the reference and its compiled form (Triton needs a GPU)."""
    measure(benchmark, monkeypatch, op, name, 1, channels, size, torch.float32, torch.device("cpu"), False)
