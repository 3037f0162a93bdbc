"""Progress of long jobs (predict over images and video frames, eval, demo), wherever the output goes.

A tqdm bar hides itself when stderr is not a terminal, so a job writing to a log file, a CI job or a
pipe ran for minutes (hours for a long video) without a word. :class:`Progress` draws the bar on a
terminal and otherwise writes a line to the ``labfast.progress`` logger every ``interval`` seconds
(done / total, rate, ETA) and a last one when the job ends, if it wrote any.

Quiet follows that logger: nothing is shown unless it is enabled for INFO, which ``labfast``
commands do (``labfast -q`` sets WARNING). A library caller that configures no logging sees nothing.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

logger = logging.getLogger("labfast.progress")

#: Seconds between two progress lines when stderr is not a terminal (``LABFAST_PROGRESS_SECONDS``).
INTERVAL_SECONDS = float(os.environ.get("LABFAST_PROGRESS_SECONDS", "10"))

Item = TypeVar("Item")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts work done for one job; ``total`` may be ``None`` (a video that declares no frame count).

    Args:
        total: how many ``unit`` the job has, or ``None`` when unknown.
        description: the job's name at the start of every line (``predict``, a video's file name).
        unit: what is counted, singular (``image``, ``frame``, ``face``).
        interval: seconds between lines off a terminal (default :data:`INTERVAL_SECONDS`).
        terminal: draw a tqdm bar instead of lines (default: whether stderr is a terminal).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, total: int | None, description: str, unit: str, interval: float | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.description = description
        self.unit = unit
        self.interval = INTERVAL_SECONDS if interval is None else interval
        self.clock = clock
        self.done = 0
        self.lines = 0
        self.enabled = logger.isEnabledFor(logging.INFO)
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc=description, unit=unit, leave=False) if self.enabled and terminal else None
        self.started = self.last_line = clock()

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled and self.clock() - self.last_line >= self.interval:
            self._line()

    def close(self) -> None:
        """Close the bar, or write the closing line if any line was written (short jobs stay silent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines:
            elapsed = self.clock() - self.started
            rate = self.done / elapsed if elapsed > 0 else math.inf
            logger.info("%s: %d %ss done in %s (%.3g/s)", self.description, self.done, self.unit,
                        _duration(elapsed), rate)
            self.lines = 0

    def _line(self) -> None:
        now = self.clock()
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            remaining = (self.total - self.done) / rate if rate > 0 else math.inf
            eta = _duration(remaining) if math.isfinite(remaining) else "unknown"
            logger.info("%s: %d/%d %ss (%d %%), %.3g/s, ETA %s", self.description, self.done, self.total,
                        self.unit, 100 * self.done // self.total, rate, eta)
        else:
            logger.info("%s: %d %ss, %.3g/s", self.description, self.done, self.unit, rate)
        self.last_line = now
        self.lines += 1

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def track(items: Iterable[Item], total: int | None, description: str, unit: str, step: Callable[[Item], int] | None = None) -> Iterator[Item]:
    """Yield ``items``, counting each (or ``step(item)`` of ``unit`` for each: a batch of faces) as done
    once the caller asks for the next one."""
    with Progress(total, description, unit) as progress:
        for item in items:
            yield item
            progress.update(1 if step is None else step(item))
