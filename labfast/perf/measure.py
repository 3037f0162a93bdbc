"""One benchmark row per backend: prepare it, time it, count its FLOPs and bytes, and set what it
achieved against the device's roofline and against the reference row of the same run.

FLOPs are those of the reference computation, counted by ``labfast.perf.traffic`` (torch's flop
formulas, grouped convolutions' backward corrected), the same figure dividing every backend's
time; bytes are inputs + outputs of the call. The share of peak is a roofline share: achieved /
min(peak FLOP/s, intensity x bandwidth), with the vendor peaks of ``labfast.perf.devices``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from labfast.perf import devices, traffic
from labfast.perf.backends import Unavailable
from labfast.perf.timing import first_call, peak_memory, release, time_calls

logger = logging.getLogger("labfast.perf.measure")


@dataclasses.dataclass
class Row:
    section: str
    case: str
    backend: str
    dtype: str
    batch: int
    unit: str
    status: str = "ok"  # ok | unavailable | failed | skipped (the time budget ran out first)
    reason: str | None = None
    throughput: float | None = None  # items (unit) per second at the median time
    median_ms: float | None = None
    p99_ms: float | None = None
    calls: int | None = None
    warmup_s: float | None = None
    flops: int | None = None
    bytes: int | None = None
    tflops: float | None = None
    gbps: float | None = None
    bound: str | None = None
    peak_share: float | None = None
    peak_name: str | None = None
    memory_bytes: int | None = None
    memory_how: str | None = None
    vs_reference: float | None = None
    vs_opencv: float | None = None
    note: str | None = None

    @property
    def label(self) -> str:
        return f"{self.section} {self.case} {self.backend} {self.dtype} b={self.batch}"


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (convolutions and matrix products, forward and backward).

    Counted by ``labfast.perf.traffic``: torch's own ``FlopCounterMode`` over-counts the backward of
    grouped convolutions about ``groups``-fold, which would inflate a training step's TFLOP/s.
    """
    with traffic.recording() as recorded:
        fn()
    return recorded.flops


def peak_share(flops: int | None, moved_bytes: int | None, seconds: float, device: dict, dtype: str) -> dict:
    """Achieved TFLOP/s and GB/s, and the share of the roofline bound ``min(peak, intensity x bandwidth)``.

    Without FLOPs (element-wise ops) the bound is the bandwidth; without bytes (whole models, whose
    activation traffic is not counted) it is the compute peak.
    """
    out: dict[str, Any] = {
        "tflops": flops / seconds / 1e12 if flops else None,
        "gbps": moved_bytes / seconds / 1e9 if moved_bytes else None,
        "bound": None, "peak_share": None, "peak_name": None,
    }
    peak = device.get("peak")
    if peak is None or not (flops or moved_bytes):
        return out
    bandwidth = peak["memory_bandwidth"]
    if flops:
        compute, name = devices.compute_peak(devices.Peak(**peak), dtype)
        attainable = compute if not moved_bytes else min(compute, flops / moved_bytes * bandwidth)
        memory_bound = bool(moved_bytes) and attainable < compute
        out.update(bound="memory" if memory_bound else "compute", peak_share=flops / seconds / attainable,
                   peak_name=f"{bandwidth / 1e12:.2f} TB/s" if memory_bound else f"{compute / 1e12:.0f} TFLOP/s {name}")
    else:
        out.update(bound="memory", peak_share=moved_bytes / seconds / bandwidth, peak_name=f"{bandwidth / 1e12:.2f} TB/s")
    return out


@dataclasses.dataclass
class Rows:
    """The rows of one run, and what measuring each of them shares: the device, how long to time
    a row, the time budget (``deadline``, ``time.monotonic()``) and ``on_row``, called after each."""

    device: torch.device
    device_info: dict
    repeats: int
    min_time: float
    deadline: float = math.inf
    budget_s: float | None = None
    on_row: Callable[[], None] | None = None
    rows: list[Row] = dataclasses.field(default_factory=list)

    def measure(self, backends: list[str], make_row: Callable[[str], Row],
                prepare: Callable[[str], Callable[[], Any]], items: int, count_bytes: bool = False) -> None:
        """One row per backend, the reference first: its FLOP count serves every row of the case.

        ``items``: what one call makes (the row's throughput is items per second).
        ``count_bytes``: add the output's bytes to ``row.bytes`` (which holds the inputs').
        A row not begun by the deadline is recorded as skipped, unmeasured."""
        flops = None
        for backend in backends:
            row = make_row(backend)
            if time.monotonic() > self.deadline:
                row.status, row.reason = "skipped", f"the time budget of {self.budget_s:g} s was spent before this row"
            else:
                logger.debug("measuring %s", row.label)
                self._measure_row(row, functools.partial(prepare, backend), items, flops, backend == "reference", count_bytes)
            if backend == "reference":
                flops = row.flops
            self.rows.append(row)
            if self.on_row is not None:
                self.on_row()

    def _measure_row(self, row: Row, prepare: Callable[[], Callable[[], Any]], items: int, flops: int | None,
                     count: bool, count_bytes: bool) -> None:
        """Fill ``row`` by preparing and timing one backend; an exception becomes the row's reason.
        ``count``: count this backend's FLOPs (the reference's; the other rows get them as ``flops``)."""
        try:
            fn = prepare()
            output, warmup = first_call(fn, self.device)
            moved = traffic.tensor_bytes(output) if count_bytes else None
            del output
            with peak_memory(self.device) as memory:
                timing = time_calls(fn, self.device, self.repeats, self.min_time, warmup=warmup)
            if count:
                flops = count_flops(fn)
        except Unavailable as reason:
            row.status, row.reason = "unavailable", str(reason)
            return
        except Exception as error:  # noqa: BLE001 - a failing backend is reported, the others still run
            message = f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]
            row.status, row.reason = ("unavailable", message) if "was forced but" in message else ("failed", message)
            logger.warning("%s %s %s batch %d failed: %s", row.section, row.case, row.backend, row.batch, message)
            return
        finally:
            release(self.device)
        row.median_ms, row.p99_ms, row.calls, row.warmup_s = (1e3 * timing.median_s, 1e3 * timing.p99_s, timing.calls,
                                                              timing.warmup_s)
        row.throughput = items / timing.median_s
        row.memory_bytes, row.memory_how = memory["bytes"], memory["how"]
        row.flops = flops or None
        if moved is not None:
            row.bytes = moved + row.bytes if row.bytes else moved
        for key, value in peak_share(row.flops, row.bytes, timing.median_s, self.device_info, row.dtype).items():
            setattr(row, key, value)


def add_ratios(rows: list[Row]) -> None:
    """``vs_reference`` (and ``vs_opencv`` for heatmaps): throughput over that row's of the same
    section, case, dtype and batch, measured in this run."""
    def key(row: Row):
        return row.section, row.case, row.dtype, row.batch

    reference = {key(r): r.throughput for r in rows if r.backend == "reference" and r.status == "ok"}
    opencv = {(r.section, r.case, r.batch): r.throughput for r in rows if r.backend == "opencv" and r.status == "ok"}
    for row in rows:
        if row.status != "ok":
            continue
        if key(row) in reference:
            row.vs_reference = row.throughput / reference[key(row)]
        if (row.section, row.case, row.batch) in opencv:
            row.vs_opencv = row.throughput / opencv[(row.section, row.case, row.batch)]
