"""Shared helpers of the benchmark suites (``pytest benchmarks/``): where and with what a row was measured."""
from __future__ import annotations

import datetime
import platform

import pytest
import torch


def environment(device: torch.device | str) -> dict:
    """Device name, torch / triton versions and date, for a benchmark row's ``extra_info``."""
    device = torch.device(device)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


@pytest.fixture
def benchmark_environment():
    """``environment`` as a fixture, for suites that prefer not to import from conftest."""
    return environment
