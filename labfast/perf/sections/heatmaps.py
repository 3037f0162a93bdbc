"""``heatmaps``: heatmaps/s of the fused ground-truth op against the per-face OpenCV raster
baseline (row ``opencv``: ``labfast.boundary.heatmaps`` one face at a time, as data loaders make
them; always on the CPU; not the ground truth, see its docstring) and against the plain torch
reference ``boundary_heatmaps_ref``."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from labfast.perf import backends
from labfast.perf.inputs import DTYPES, HEATMAP_SIZE, SCHEME, SIGMA, synthetic_faces
from labfast.perf.measure import Row, Rows


def prepare(batch: int, dtype: str, backend: str, device: torch.device, seed: int = 0) -> Callable[[], Any]:
    """A callable making ``(batch, K, 64, 64)`` ground-truth heatmaps from synthetic faces.

    ``opencv``: the raster baseline ``labfast.boundary.heatmaps``, one face per call on the CPU (NumPy
    landmarks, float32 out, whatever ``dtype``); ``reference``: ``boundary_heatmaps_ref``; ``fast (triton|cuda)``:
    ``boundary_heatmaps`` with that path forced. No ``compile`` row: the reference's chunk loop
    reads a tensor value on the host (graph break) and compiling it took minutes on the CPU.
    """
    from labfast import boundary
    from labfast.ops.boundary_heatmaps import boundary_heatmaps, boundary_heatmaps_ref

    landmarks = synthetic_faces(batch, HEATMAP_SIZE, seed)
    if backend == "opencv":
        faces = landmarks.numpy()
        return lambda: [boundary.heatmaps(faces[i:i + 1], SCHEME, HEATMAP_SIZE, SIGMA) for i in range(batch)]
    landmarks = landmarks.to(device)
    torch_dtype = DTYPES[dtype]
    if backend == "reference":
        return backends.under("reference", lambda: boundary_heatmaps_ref(landmarks, SCHEME, HEATMAP_SIZE, SIGMA, torch_dtype))
    path = backends.fast_path(backend, device)
    return backends.under(path, lambda: boundary_heatmaps(landmarks, SCHEME, HEATMAP_SIZE, SIGMA, torch_dtype))


def _num_boundaries() -> int:
    from labfast import schemes

    return schemes.get(SCHEME).num_boundaries


def _row(backend: str, dtype: str, batch: int) -> Row:
    row = Row("heatmaps", f"boundary heatmaps {HEATMAP_SIZE}x{HEATMAP_SIZE}", backend,
              "fp32" if backend == "opencv" else dtype, batch, "heatmaps/s")
    row.bytes = batch * 68 * 2 * 4  # the landmarks in; the heatmaps out are added when measured
    if backend == "opencv":
        row.note = "CPU, one face per call (NumPy/OpenCV), float32, whatever the device and dtype"
    return row


def measure(rows: Rows, config: str, batch: int, dtype: str, names: list[str]) -> None:
    """The rows of the ``names`` backends at ``batch`` (``config``: heatmaps are the model's input,
    whatever the preset). OpenCV makes float32 on the CPU whatever the dtype: measured once per batch."""
    if any(row.section == "heatmaps" and row.backend == "opencv" and row.batch == batch for row in rows.rows):
        names = [name for name in names if name != "opencv"]
    rows.measure(names, lambda backend: _row(backend, dtype, batch),
                 lambda backend: prepare(batch, dtype, backend, rows.device), batch * _num_boundaries(), count_bytes=True)
