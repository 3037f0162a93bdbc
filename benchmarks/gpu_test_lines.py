"""pytest plugin: one line per test appended to the file ``$LABFAST_TEST_LINES`` the moment it finishes.

``benchmarks/gpu_run.py`` runs the GPU tests with it (``-p gpu_test_lines``, this folder on
``PYTHONPATH``) in a time box: when the box runs out pytest is killed and never writes its JUnit
file or summary, but every test that finished already has its line, in ``$OUT`` where it comes
back. A line: outcome (PASSED, FAILED, SKIPPED, ERROR for a failed setup or teardown), seconds of
the phase that decided it, node id.
"""
import os


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("LABFAST_TEST_LINES")
    if not path:
        return
    decided = report.when == "call" or report.outcome != "passed"  # a passing setup / teardown decides nothing
    if not decided:
        return
    outcome = "ERROR" if report.when != "call" and report.outcome == "failed" else report.outcome.upper()
    with open(path, "a") as stream:
        stream.write(f"{outcome:<7} {report.duration:8.2f} s  {report.nodeid}\n")
