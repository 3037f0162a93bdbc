"""Shared settings of the fuzz tests (``tests/fuzz``): fixed seed, bounded examples, time and memory.

CI runs ``LABFAST_FUZZ_EXAMPLES`` examples per test (default 25; the whole folder then takes well
under a minute) with ``derandomize=True``: the same inputs every run, so a failure reproduces. For a
longer hunt: ``LABFAST_FUZZ_EXAMPLES=2000 python -m pytest tests/fuzz``. A test that runs past
``hang_seconds`` is killed with every thread's traceback (``faulthandler``): a hang is a failure,
not a stuck CI job.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("LABFAST_FUZZ_EXAMPLES", "25"))

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,  # no .hypothesis folder: the examples come from the seed alone
    deadline=None,  # a busy shared machine makes per-example deadlines flaky; hangs are caught below
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def hang_seconds() -> float:
    """Wall-clock bound of one fuzz test: generous per example (a loaded 2-core machine runs 5-10x slower)."""
    return 60.0 + 2.0 * EXAMPLES
