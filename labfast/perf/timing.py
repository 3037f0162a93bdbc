"""The clock and the memory gauge of ``labfast bench``: seconds per call and peak memory of a callable.

Timing: ``triton.testing.do_bench`` on a GPU (warm-up, CUDA events, L2 flushed between calls,
median and p99); on a CPU a time-based loop of ``perf_counter`` per call after one warm-up call
made by the caller (compilation happens there and is reported as ``warmup_s``).
Peak memory: ``torch.cuda.max_memory_allocated`` during the timed calls; on a CPU the growth of
the process's peak RSS over the timed calls (``/proc/self/clear_refs`` resets the high-water mark).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


@dataclasses.dataclass
class Timing:
    median_s: float
    p99_s: float
    calls: int
    warmup_s: float  # the first call (compilation, autotuning, caches)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_call(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(output, seconds)`` of one call of ``fn``, the device's queue included."""
    start = time.perf_counter()
    output = fn()
    synchronize(device)
    return output, time.perf_counter() - start


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, min_time: float,
               warmup: float = math.nan) -> Timing:
    """Median and p99 seconds per call of ``fn``: at least ``repeats`` calls and ``min_time``
    seconds of them. The caller has made the first call (``warmup`` seconds: compilation,
    autotuning, caches); on a GPU one more sizes ``do_bench``'s run."""
    if device.type == "cuda":
        import triton.testing

        _, estimate = first_call(fn, device)
        rep_ms = max(1e3 * min_time, 1e3 * repeats * estimate)
        median_ms, p99_ms = triton.testing.do_bench(fn, warmup=max(1e3 * estimate, 1.0), rep=rep_ms, quantiles=[0.5, 0.99])
        return Timing(median_ms / 1e3, p99_ms / 1e3, max(1, int(rep_ms / max(1e3 * estimate, 1e-3))), warmup)
    samples: list[float] = []
    begin = time.perf_counter()
    while len(samples) < repeats or time.perf_counter() - begin < min_time:
        tick = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - tick)
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return Timing(statistics.median(ordered), p99, len(ordered), warmup)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as stream:
            for line in stream:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict that holds ``bytes`` (or ``None``) and ``how`` after the block."""
    result: dict[str, Any] = {"bytes": None, "how": "n/a"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result.update(bytes=torch.cuda.max_memory_allocated(device), how="torch.cuda.max_memory_allocated")
        return
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")  # resets VmHWM, the peak resident set size
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    yield result
    peak = _status_kib("VmHWM")
    if before is not None and peak is not None:
        result.update(bytes=max(0, peak - before) * 1024, how="peak RSS growth (VmHWM - VmRSS before)")


def release(device: torch.device) -> None:
    """Free what one row held (its model, compiled graphs, cached blocks) before the next."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
