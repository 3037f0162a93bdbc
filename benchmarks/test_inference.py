"""LAB inference: reference vs ``torch.compile`` vs the fast paths vs CUDA graphs (faces/s, latency).

``model(images)`` in eval and inference mode as ``labfast bench`` builds it
(``labfast.perf.sections.infer.prepare``; bf16 under autocast). GPU cases (skipped without CUDA):
the paper model at batch 1 (latency), 32 and 256 (throughput), fp32 and bf16, backends
reference, compile, fast, fast+compile and fast+cudagraphs (``labfast.inference.cuda_graphs``, the
low-latency path); each call ends with a CUDA synchronisation so its time is a latency. A backend
that cannot run skips with its reason. The tiny CPU case runs anywhere (its compiled twin is
marked ``slow``). One group per case: the relative columns are ratios against the reference.

    pytest benchmarks/test_inference.py --benchmark-group-by=group \\
        --benchmark-json benchmarks/results/inference-<device>-<date>.json
"""
import pytest
import torch

from labfast.perf import devices
from labfast.perf.backends import Unavailable, row_backends
from labfast.perf.sections import infer

GPU_BACKENDS = row_backends("infer")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_inference(benchmark, config: str, batch: int, dtype: str, backend: str, device: torch.device, rounds: int):
    try:
        forward = infer.prepare(config, batch, dtype, backend, device)
    except Unavailable as reason:
        pytest.skip(str(reason))

    def call():
        landmarks = forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return landmarks

    benchmark.group = f"infer {config} {dtype} batch {batch} ({device.type})"
    benchmark.extra_info.update(device=devices.describe(device)["name"], versions=devices.versions(),
                                faces_per_call=batch, backend=backend)
    landmarks = benchmark.pedantic(call, rounds=rounds, warmup_rounds=2, iterations=1)
    assert landmarks.shape == (batch, 68, 2) and torch.isfinite(landmarks).all()


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 32, 256])
def test_inference_gpu(benchmark, batch, dtype, backend):
    run_inference(benchmark, "paper", batch, dtype, backend, torch.device("cuda"), rounds=20)


def test_inference_cpu_tiny(benchmark):
    run_inference(benchmark, "tiny", 1, "fp32", "reference", torch.device("cpu"), rounds=3)


@pytest.mark.slow
def test_inference_cpu_tiny_compiled(benchmark):
    run_inference(benchmark, "tiny", 1, "fp32", "compile", torch.device("cpu"), rounds=3)
