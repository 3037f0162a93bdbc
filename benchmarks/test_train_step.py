"""One full LAB training step: reference vs ``torch.compile`` vs the fast paths (images/s).

The step is ``labfast.train.step.train_step`` as ``labfast bench`` builds it (``labfast.perf.sections.
train.prepare``: estimator + regressor forward/backward, ground-truth heatmaps on the device,
the discriminator's step, both optimiser steps) on random 256x256 uint8 images. GPU cases (skipped
without CUDA) use the paper model at batch 32 and 256, fp32 and bf16; a backend that cannot run
skips with its reason. The tiny CPU case runs anywhere (its compiled twin is marked ``slow``:
compiling forward and backward takes minutes on a 2-core CPU). One group per case, so the
relative columns are ratios against the reference measured in the same run.

    pytest benchmarks/test_train_step.py --benchmark-group-by=group \\
        --benchmark-json benchmarks/results/train-<device>-<date>.json
"""
import pytest
import torch

from labfast.perf import devices
from labfast.perf.backends import Unavailable, row_backends
from labfast.perf.sections import train

GPU_BACKENDS = row_backends("train")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_step(benchmark, config: str, batch: int, dtype: str, backend: str, device: torch.device, rounds: int):
    try:
        step = train.prepare(config, batch, dtype, backend, device)
    except Unavailable as reason:
        pytest.skip(str(reason))
    benchmark.group = f"train {config} {dtype} batch {batch} ({device.type})"
    benchmark.extra_info.update(device=devices.describe(device)["name"], versions=devices.versions(),
                                images_per_call=batch, backend=backend)
    terms = benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)  # .item() syncs the GPU
    assert all(torch.isfinite(torch.tensor(value)) for value in terms.values()), terms


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch", [32, 256])
def test_train_step_gpu(benchmark, batch, dtype, backend):
    run_step(benchmark, "paper", batch, dtype, backend, torch.device("cuda"), rounds=10)


def test_train_step_cpu_tiny(benchmark):
    run_step(benchmark, "tiny", 1, "fp32", "reference", torch.device("cpu"), rounds=3)


@pytest.mark.slow
def test_train_step_cpu_tiny_compiled(benchmark):
    run_step(benchmark, "tiny", 1, "fp32", "compile", torch.device("cpu"), rounds=3)
