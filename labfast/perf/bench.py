"""``labfast bench``: training, inference, heatmap and kernel speed on this device, in one table.

    labfast bench [--what train|infer|heatmaps|kernels|all] [--batch 1,32,256] [--dtype fp32,bf16]
                  [--backend reference,compile,fast] [--config paper|small|tiny] [--repeats N] [--json PATH]
    labfast bench --plan 'infer@256=reference,compile,fast+compile;infer@1=fast+cudagraphs;kernels@256' --budget 150

``--plan`` names rows in the order they run (``SECTION@BATCH[=BACKEND,...]``, ``labfast.perf.plan``),
most wanted first; with ``--budget`` the rows not begun within that many seconds are recorded as
``skipped``. With ``--json PATH`` the JSON is rewritten after every row, so a run killed from
outside still leaves the rows it finished (``benchmarks/gpu_run.py`` asks for its rows this way).

Backends (``labfast.perf.backends``; each row names the one it measured; one that cannot run here
is a row with the reason):
- ``reference``: ``LABFAST_BACKEND=reference``, eager. Every ratio divides by this row, measured
  in the same run on the same device, same case, dtype and batch.
- ``compile``: ``torch.compile`` of the reference model (or of the op's ``*_ref``). Not by
  default on a CPU, where compiling the model takes minutes: name it there to have it.
- ``fast`` expands to ``fast`` (the ``labfast.ops`` fast paths, eager), ``fast+compile`` (fast
  paths inside ``torch.compile``) and, for inference, ``fast+cudagraphs`` (the eager fast-path
  forward captured once as a CUDA graph and replayed, ``labfast.inference.cuda_graphs``: what
  ``FaceAligner(cuda_graphs=True)`` runs, the low-latency path). In the kernel
  and heatmap sections ``fast`` is each fused op with its Triton and CUDA paths forced in turn.
  Fast paths run on CUDA tensors only: on the CPU they are listed as unavailable.

What is measured: one module of ``labfast.perf.sections`` per section (``train``, ``infer``,
``heatmaps``, ``kernels``) says it. How: ``labfast.perf.measure`` (FLOPs, bytes, share of peak),
``labfast.perf.timing`` (the clock and peak memory). ``bf16`` runs the model under
``torch.autocast`` and the ops on bf16 tensors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Callable

import torch

from labfast.perf import devices
from labfast.perf.backends import row_backends
from labfast.perf.inputs import INPUT_SIZE
from labfast.perf.measure import Rows, add_ratios
from labfast.perf.plan import Settings
from labfast.perf.sections import MEASURE

logger = logging.getLogger("labfast.perf.bench")


class _FallbackLog(logging.Handler):
    """Collects the ``labfast.ops`` lines saying an op took the reference path (once per op)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @contextlib.contextmanager
    def attached(self):
        ops_logger = logging.getLogger("labfast.ops")
        ops_logger.addHandler(self)
        previous = ops_logger.level
        ops_logger.setLevel(min(previous or logging.INFO, logging.INFO))
        try:
            yield
        finally:
            ops_logger.removeHandler(self)
            ops_logger.setLevel(previous)


def _notes(device: torch.device) -> list[str]:
    notes = [
        "ratios divide by the reference row of the same section, case, dtype and batch, measured in this run",
        "FLOPs: the reference computation's, by labfast.perf.traffic (torch's flop formulas, grouped convolutions' "
        "backward corrected; convolutions and "
        "matrix products, 2 per multiply-accumulate; element-wise work not counted)",
        "bytes: inputs + outputs of the call (kernels, heatmaps); models report FLOPs only",
        f"inputs: random {INPUT_SIZE}x{INPUT_SIZE} images, synthetic 300-W faces (labfast.perf.inputs.synthetic_faces)",
        "fast = labfast.ops default dispatch (Triton first, then the CUDA extension); fast+compile = the same "
        "inside torch.compile; fast+cudagraphs = the fast-path forward replayed from a CUDA graph (labfast.inference.cuda_graphs)",
    ]
    if device.type == "cpu":
        notes.append("CPU run: no vendor peak, so no share of peak; fast paths need CUDA and are listed as unavailable")
    return notes


def run_benchmarks(settings: Settings, device: torch.device,
                   on_row: Callable[[dict], None] | None = None) -> dict:
    """Every requested row, measured on ``device``; the JSON-ready result. ``on_row`` gets the
    result so far after each row (``labfast bench --json`` rewrites its file then, so a run killed
    from outside leaves every row it finished)."""
    fallbacks = _FallbackLog()
    rows = Rows(device, devices.describe(device), settings.repeats, settings.min_time,
                deadline=time.monotonic() + settings.budget_s if settings.budget_s is not None else math.inf,
                budget_s=settings.budget_s)

    def result() -> dict:
        add_ratios(rows.rows)
        return {
            "schema": 1,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": devices.git_commit(),
            "device": rows.device_info,
            "versions": devices.versions(),
            "settings": dataclasses.asdict(settings),
            "notes": _notes(device),
            "fast_path_fallbacks": fallbacks.messages,
            "rows": [dataclasses.asdict(row) for row in rows.rows],
        }

    if on_row is not None:
        rows.on_row = lambda: on_row(result())
    with fallbacks.attached():
        for dtype in settings.dtypes:
            for item in settings.items():
                # progress only: the rows themselves are printed once, in the table at the end
                logger.info("measuring %s at batch %d in %s", item.section, item.batch, dtype)
                names = list(item.backends or row_backends(item.section, settings.groups))
                MEASURE[item.section](rows, settings.config, item.batch, dtype, names)
    return result()
