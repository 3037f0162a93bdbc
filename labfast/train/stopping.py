"""Stop a run cleanly on SIGINT (Ctrl-C) or SIGTERM: the step in progress finishes, ``last.pt`` is
written at it, and ``--resume`` continues exactly from there; a second signal stops at once.

Without this a stop lost everything since the last periodic ``last.pt`` (up to
``checkpoint_every_minutes``). The data loader's workers ignore both signals (a Ctrl-C reaches the
whole process group), so that they keep serving until the main process shuts them down; under
``torchrun`` every process stops at the same step (``labfast.train.runtime.any_process``).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

logger = logging.getLogger("labfast.train.stopping")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Whether a stop signal has arrived (set by the handler :func:`stop_on_signals` installs)."""

    def __init__(self) -> None:
        self.signal: int | None = None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT or SIGTERM sets the returned request and restores the
    previous handlers (so the second one acts at once); on exit the previous handlers are back.
    Outside the main thread (where Python cannot install handlers) the request never fires."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {number: signal.getsignal(number) for number in SIGNALS}

    def handle(number, frame) -> None:
        request.signal = number
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        logger.warning("%s: stopping after this step and writing last.pt (--resume continues from it); "
                       "send it again to stop at once", signal.Signals(number).name)

    for number in SIGNALS:
        signal.signal(number, handle)
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def ignore_in_worker(worker_id: int) -> None:
    """A data loader worker's ``worker_init_fn``: leave both signals to the main process."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)
