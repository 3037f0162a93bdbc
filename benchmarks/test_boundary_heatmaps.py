"""Boundary heatmaps (300-W scheme, K = 13, 64x64, sigma 1): the per-face OpenCV raster baseline
(``labfast.boundary.heatmaps``, row ``opencv``; not the ground truth) vs the ground truth's batched
torch reference vs ``torch.compile`` of it vs the fused Triton and CUDA kernels, at batch 1 / 32 / 256.

Landmarks are real 300-W LFPW test faces (repeated to fill the batch), scaled 256 -> 64. GPU rows
skip without CUDA (the CUDA row also without a built ``labfast._cuda``); on a CPU only batch 1 runs
(the OpenCV baseline, the torch reference and the compiled reference). Each group is one batch size, so
pytest-benchmark's relative columns are ratios against the rows measured in the same run; each
row's ``extra_info`` records device, versions and date. The fused rows include the spline densifier
(the op as the training loop calls it).

    pytest benchmarks/test_boundary_heatmaps.py --benchmark-group-by=group \\
        --benchmark-json benchmarks/results/boundary_heatmaps-<device>-<date>.json
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labfast import boundary
from labfast.perf.devices import environment
from labfast.ops import boundary_heatmaps, boundary_heatmaps_ref

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "300w" / "lfpw" / "testset"
IMPLEMENTATIONS = ("opencv", "reference", "compiled_reference", "triton", "cuda")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def faces(batch: int) -> torch.Tensor:
    """``(batch, 68, 2)`` float32 real faces in 64x64 heatmap pixels."""
    from labfast.data.pts import read_pts

    files = sorted(FACES.glob("*.pts"))
    if not files:
        pytest.skip(f"no 300-W faces under {FACES}")
    points = np.stack([read_pts(path) for path in files[:batch]]) - 1.0  # iBUG .pts are 1-based
    points = np.resize(points, (batch, 68, 2))
    return torch.from_numpy(((points + 0.5) * 64 / 256 - 0.5).astype(np.float32))


def run_fn(name: str, landmarks: torch.Tensor, monkeypatch):
    if name == "opencv":
        return lambda: boundary.heatmaps(landmarks, "300w", size=64, sigma=1.0)
    if name in ("triton", "cuda"):
        if DEVICE.type != "cuda":
            pytest.skip(f"{name} needs a CUDA device")
        monkeypatch.setenv("LABFAST_BACKEND_BOUNDARY_HEATMAPS", name)
        landmarks = landmarks.to(DEVICE)
        try:
            boundary_heatmaps(landmarks, "300w")
        except RuntimeError as error:
            pytest.skip(str(error))
        return lambda: boundary_heatmaps(landmarks, "300w")
    landmarks = landmarks.to(DEVICE)
    function = boundary_heatmaps_ref
    if name == "compiled_reference":
        torch._dynamo.reset()
        function = torch.compile(boundary_heatmaps_ref)
    function(landmarks, "300w")  # compile / warm up outside the timing
    return lambda: function(landmarks, "300w")


@pytest.mark.parametrize("batch", [1, 32, 256])
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_boundary_heatmaps(benchmark, name, batch, monkeypatch):
    if DEVICE.type == "cpu" and batch > 1:
        pytest.skip("on a CPU only batch 1 runs (the torch reference takes ~0.1 s per face there)")
    fn = run_fn(name, faces(batch), monkeypatch)

    def timed():
        out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.group = f"boundary_heatmaps 300w 64x64 batch={batch}"
    benchmark.extra_info.update(environment(DEVICE))
    benchmark.extra_info.update(implementation=name, batch=batch)
    out = benchmark(timed)
    assert tuple(out.shape) == (batch, 13, 64, 64)
