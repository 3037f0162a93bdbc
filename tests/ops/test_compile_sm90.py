"""Every Triton kernel the LAB presets launch compiles to sm_90 cubin without register spills, without a GPU.

``labfast.perf.offline_compile`` runs in a subprocess without ``TRITON_INTERPRET`` (Triton decides
between interpreting and compiling when kernels are decorated, and tests/conftest.py sets the
interpreter for this process), with a fresh Triton cache, so nothing compiled earlier is reused.
It compiles the paper and tiny presets (C = 4 and C = 2 channels per branch: the two message-passing
layouts; ``small`` shares the paper's, run ``python -m labfast.perf.offline_compile`` for every preset) in
fp32, fp16 and bf16; its table (registers,
spills, shared memory per kernel specialisation) is printed (``pytest -s`` shows it), and any
specialisation that spills (ptxas reports more than 0 bytes of spill stores or loads) fails the test.
The same check under triton 3.6 (the GPU machines'): run ``python -m labfast.perf.offline_compile`` with
that triton; it exits non-zero on a spill too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from labfast.perf.offline_compile import SUMMARY_PREFIX

triton = pytest.importorskip("triton")


def ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not ptxas_available(), reason="this Triton wheel has no NVIDIA backend (ptxas)")
def test_every_kernel_compiles_to_sm90_cubin_without_spills_in_every_preset_and_dtype(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if key != "TRITON_INTERPRET" and not key.startswith("LABFAST_")}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    result = subprocess.run([sys.executable, "-m", "labfast.perf.offline_compile", "--config", "paper", "--config", "tiny"], env=env, capture_output=True,
                            text=True, timeout=900)
    print(result.stdout[-30000:])
    assert SUMMARY_PREFIX in result.stdout, result.stderr[-5000:]
    summary = json.loads(next(line for line in result.stdout.splitlines()
                              if line.startswith(SUMMARY_PREFIX))[len(SUMMARY_PREFIX):])
    reports = summary["reports"]
    assert summary["configs"] == ["paper", "tiny"] and summary["phases"] == ["fp32", "fp16", "bf16"]
    for phase in ("fp32", "fp16", "bf16"):
        compiled = {r["kernel"] for r in reports if r["phase"] == phase}
        assert compiled == set(summary["expected_kernels"]), f"{phase}: missing {set(summary['expected_kernels']) - compiled}"
    for report in reports:
        assert report["registers"] > 0 and report["cubin_bytes"] > 0, report
    # The GPU's blocks, not the interpreter's (kernels/boundary_heatmaps.py picks by the interpreter switch).
    assert {r["constexprs"] for r in reports if r["kernel"] == "_boundary_heatmaps_kernel"} == \
        {"BLOCK_PIXELS=128 BLOCK_SEGMENTS=32"}
    # bf16 operands reach tl.dot as bf16 on a GPU (the interpreter upcasts them to fp32).
    assert all("DOT_DTYPE=bf16" in r["constexprs"] for r in reports
               if r["kernel"].startswith("_message_passing") and r["phase"] == "bf16")
    # C = 4 branches (paper) pack 2×2 pixel patches into the dot's 16 columns, C = 2 (tiny) 2×4.
    assert {(r["config"], "PATCH_Y=2 PATCH_X=2" in r["constexprs"]) for r in reports
            if r["kernel"].startswith("_message_passing") and r["config"] != "tiny"} == {("paper", True)}
    spilling = [f"{r['kernel']} {r['config']} {r['phase']} ({r['constexprs']}): {r['spill_bytes']} B"
                for r in reports if r["spill_bytes"] > 0]
    assert not spilling, "register spills:\n" + "\n".join(spilling)
    assert result.returncode == 0, result.stderr[-5000:]
