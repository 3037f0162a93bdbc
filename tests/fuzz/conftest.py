import faulthandler
import resource

import pytest

from fuzzing import hang_seconds

#: Growth of the process's peak resident memory one fuzz test may cause.
MEMORY_BOUND_MB = 500


@pytest.fixture(autouse=True)
def bounded_time_and_memory():
    """Kill the run with tracebacks if a test hangs; fail it if it raised the process's peak memory
    by more than ``MEMORY_BOUND_MB`` (ru_maxrss is a high-water mark: only new peaks count)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    faulthandler.dump_traceback_later(hang_seconds(), exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert grown < MEMORY_BOUND_MB, f"peak memory grew by {grown:.0f} MB"
