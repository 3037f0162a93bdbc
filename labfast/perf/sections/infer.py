"""``infer``: faces/s and latency (median, p99) of ``model(images)`` in eval mode, on random
256x256 images; ``fast+cudagraphs`` is what ``FaceAligner(cuda_graphs=True)`` runs."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from labfast.perf import backends
from labfast.perf.inputs import SCHEME, random_images
from labfast.perf.measure import Row, Rows


def prepare(config_name: str, batch: int, dtype: str, backend: str,
            device: torch.device, seed: int = 0) -> Callable[[], Any]:
    """A callable running ``model(images)`` (eval mode, inference mode, autocast for bf16)."""
    from labfast.model import LAB, config_by_name

    backends.check_fast(backend, device)
    torch.manual_seed(seed)
    model = LAB(SCHEME, config_by_name(config_name)).to(device).eval()
    forward = backends.compiled(model) if "compile" in backend else model
    images = random_images(batch, device, seed)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    if backend == "fast+cudagraphs":  # what FaceAligner(cuda_graphs=True) runs; captured in the warm-up call
        from labfast.inference.cuda_graphs import CudaGraphModel

        def outputs(batch_images):
            with autocast():
                output = model(batch_images)
            return output.landmarks, output.heatmaps[-1]

        graphed = CudaGraphModel(outputs, device, max_batch=batch)
        return backends.under(backends.dispatch(backend), lambda: graphed(images)[0])

    def infer():
        with torch.inference_mode(), autocast():
            return forward(images).landmarks

    return backends.under(backends.dispatch(backend), infer)


def measure(rows: Rows, config: str, batch: int, dtype: str, names: list[str]) -> None:
    """The rows of the ``names`` backends at ``batch``."""
    rows.measure(names, lambda backend: Row("infer", f"LAB {config} forward", backend, dtype, batch, "faces/s"),
                 lambda backend: prepare(config, batch, dtype, backend, rows.device), batch)
