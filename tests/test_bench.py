"""``labfast bench``: the CPU smoke run end to end, and the arithmetic behind its columns."""
import contextlib
import io
import json
import logging
import math
import os
import re

import pytest
import torch

from labfast import checkpoint
from labfast.cli import main
from labfast.inference.aligner import default_weights
from labfast.perf import bench, devices, measure, plan, timing
from labfast.perf.inputs import synthetic_faces
from labfast.perf.op_calls import kernel_cases
from labfast.perf.sections import SECTIONS


@pytest.fixture(scope="module")
def cpu_result(tmp_path_factory):
    """One ``labfast bench --what all --config tiny --batch 1`` on the CPU (in-process).

    ``--backend reference,fast``: compiling the tiny model's forward and backward takes minutes on
    a 2-core CPU, too long for the unit suite (``benchmarks/`` holds the compiled cases).
    ``--threads 1``: on a CPU shared with other test runs, two spinning torch threads ran the
    tiny model 14x slower than one.
    """
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--what", "all", "--config", "tiny", "--batch", "1", "--backend", "reference,fast",
                     "--repeats", "1", "--min-time", "0", "--device", "cpu", "--threads", "1",
                     "--json", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def run_as_typed(tmp_path_factory):
    """``labfast bench --what heatmaps`` on the CPU as a user types it, without ``--json``, in an
    empty folder, with the log at INFO as the command sets it: ``(stdout and log text, the folder's
    files afterwards)``."""
    folder = tmp_path_factory.mktemp("as_typed")
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    root, level, cwd, threads = logging.getLogger(), logging.getLogger().level, os.getcwd(), torch.get_num_threads()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(text):
            assert main(["bench", "--what", "heatmaps", "--batch", "1", "--backend", "reference,fast", "--repeats", "1",
                         "--min-time", "0", "--device", "cpu", "--threads", "1"]) == 0
    finally:
        os.chdir(cwd)
        root.removeHandler(handler)
        root.setLevel(level)
        torch.set_num_threads(threads)
    return text.getvalue(), sorted(path.name for path in folder.iterdir())


def test_each_row_is_printed_once(run_as_typed):
    output, _ = run_as_typed
    lines = [line for line in output.splitlines() if "boundary heatmaps 64x64" in line]
    assert sorted(re.split(r"\s{2,}", line)[2] for line in lines) == ["fast (cuda)", "fast (triton)", "opencv", "reference"]


def test_without_json_no_file_is_written(run_as_typed):
    output, files = run_as_typed
    assert files == [] and "wrote" not in output


def test_cpu_default_preset_is_the_shipped_weights_one():
    shipped = checkpoint.load(default_weights())["config"]["name"]
    assert shipped == "small"
    args = build_parser_args(["bench", "--device", "cpu"])
    assert plan.settings_from_args(args, torch.device("cpu")).config == shipped
    assert plan.settings_from_args(args, torch.device("cuda")).config == "paper"


def test_smoke_run_covers_every_section_with_a_measured_reference(cpu_result):
    for section in SECTIONS:
        references = [r for r in cpu_result["rows"] if r["section"] == section and r["backend"] == "reference"]
        assert references, f"no reference row in section {section}"
        for row in references:
            assert row["status"] == "ok", row
            assert row["throughput"] > 0 and row["median_ms"] > 0 and row["vs_reference"] == 1.0


def test_smoke_run_records_device_versions_and_commit(cpu_result):
    assert cpu_result["device"]["type"] == "cpu" and cpu_result["device"]["name"]
    assert cpu_result["device"]["peak"] is None and "not known" in cpu_result["device"]["peak_note"]
    assert cpu_result["versions"]["torch"] == torch.__version__
    assert cpu_result["versions"]["triton"] and cpu_result["device"]["torch_threads"] == 1
    assert cpu_result["git"]["commit"] and cpu_result["date"]


def test_opencv_heatmaps_ratio_is_against_the_torch_reference_of_the_same_run(cpu_result):
    rows = {r["backend"]: r for r in cpu_result["rows"] if r["section"] == "heatmaps"}
    ratio = rows["opencv"]["throughput"] / rows["reference"]["throughput"]
    assert rows["opencv"]["vs_reference"] == pytest.approx(ratio, rel=1e-12)
    assert rows["opencv"]["vs_opencv"] == pytest.approx(1.0, rel=1e-12)


def test_fast_backends_on_cpu_are_listed_with_their_reason(cpu_result):
    fast = [r for r in cpu_result["rows"] if r["backend"].startswith("fast")]
    names = {r["backend"] for r in fast}
    assert {"fast", "fast+compile", "fast+cudagraphs", "fast (triton)", "fast (cuda)"} <= names
    for row in fast:
        assert row["status"] == "unavailable" and "CUDA" in row["reason"] and row["throughput"] is None, row


def test_model_rows_count_flops_and_kernel_rows_count_bytes(cpu_result):
    for row in cpu_result["rows"]:
        if row["status"] != "ok":
            continue
        if row["section"] in ("train", "infer"):
            assert row["flops"] > 0 and row["tflops"] == pytest.approx(row["flops"] / row["median_ms"] * 1e-9)
        else:
            assert row["bytes"] > 0 and row["gbps"] == pytest.approx(row["bytes"] / row["median_ms"] * 1e-6)
        assert row["peak_share"] is None  # no CPU peak is known


def test_kernel_cases_are_the_calls_the_model_makes():
    cases = kernel_cases("tiny", 2)
    assert {case.op for case in cases} == {"input_fusion", "heatmap_feature_concat", "feature_fusion", "message_passing",
                                           "batch_norm_act"}
    fusion = next(case for case in cases if case.op == "input_fusion")
    assert fusion.shapes == ((2, 3, 256, 256), (2, 13, 64, 64))  # 300-W has K = 13 boundaries
    # batch norm + ReLU: one case per (width, residual), on the largest map the model gives it
    # (the tiny estimator's stem at 128x128; the residual of the last ResNet stage at 8x8)
    norms = {case.label for case in cases if case.op == "batch_norm_act"}
    assert "batch_norm_act 2x8x128x128" in norms and "batch_norm_act 2x32x8x8 + residual" in norms
    assert len(norms) == len({(case.shapes[0][1], case.shapes[5] is not None) for case in cases
                              if case.op == "batch_norm_act"})


def test_synthetic_faces_lie_inside_the_crop():
    faces = synthetic_faces(64, 64.0, seed=1)
    assert faces.shape == (64, 68, 2) and faces.dtype == torch.float32
    assert faces.min() > 0 and faces.max() < 63


@pytest.mark.parametrize("name, model", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM5"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200 SXM"), ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM4"), ("NVIDIA A100-PCIE-40GB", "A100 40GB"),
])
def test_known_gpus_are_recognised_by_name(name, model):
    assert devices.known_peak(name).model == model


def test_unknown_gpus_get_no_peak():
    assert devices.known_peak("NVIDIA GeForce RTX 4090") is None
    assert devices.known_peak("NVIDIA GH200 480GB") is None


def test_roofline_share_uses_the_lower_of_compute_and_bandwidth_bounds():
    peak = devices.known_peak("NVIDIA H100 80GB HBM3")
    info = {"peak": vars(peak)}
    # 1 GFLOP over 1 MB in 1 ms: intensity 1000 FLOP/B x 3.35 TB/s > 989 TFLOP/s -> compute bound.
    compute = measure.peak_share(10**9, 10**6, 1e-3, info, "bf16")
    assert compute["bound"] == "compute" and compute["peak_share"] == pytest.approx(1e12 / peak.bf16_flops)
    # 1 GFLOP over 1 GB: intensity 1 -> bound 3.35 TFLOP/s; 1 TFLOP/s achieved is 1 / 3.35 of it.
    memory = measure.peak_share(10**9, 10**9, 1e-3, info, "bf16")
    assert memory["bound"] == "memory" and memory["peak_share"] == pytest.approx(1e12 / peak.memory_bandwidth)
    moved = measure.peak_share(None, 10**9, 1e-3, info, "fp32")
    assert moved["gbps"] == pytest.approx(1e3) and moved["peak_share"] == pytest.approx(1e12 / 3.35e12)


def test_bad_arguments_name_the_flag():
    with pytest.raises(SystemExit, match="--batch"):
        main(["bench", "--batch", "0", "--device", "cpu"])
    with pytest.raises(SystemExit, match="--backend"):
        main(["bench", "--backend", "turbo", "--device", "cpu"])
    assert math.isfinite(timing.time_calls(lambda: None, torch.device("cpu"), 3, 0.0).median_s)


# ----------------------------------------------------------------------------- --plan and --budget


def test_plan_parses_sections_batches_and_row_backends_in_order():
    items = plan.parse_plan("infer@256=reference,compile,fast+compile; infer@1=fast+cudagraphs;"
                            "train@32=reference,compile,fast;heatmaps@256;kernels@256=reference,fast (triton)")
    assert [(item.section, item.batch) for item in items] == [
        ("infer", 256), ("infer", 1), ("train", 32), ("heatmaps", 256), ("kernels", 256)]
    assert items[0].backends == ("reference", "compile", "fast+compile") and items[3].backends is None
    assert items[4].backends == ("reference", "fast (triton)")


@pytest.mark.parametrize("text, named", [
    ("infer@256=turbo", "turbo is not a infer backend"), ("train@8=fast+cudagraphs", "fast+cudagraphs is not a train backend"),
    ("render@8", "'render@8'"), ("infer@0", "--batch"), ("infer", "'infer'"), (";", "--plan is empty"),
])
def test_bad_plan_entries_are_named(text, named):
    with pytest.raises(SystemExit, match=re.escape(named)):
        plan.parse_plan(text)


def _plan_settings(budget_s):
    return plan.Settings(what=SECTIONS, batches=(1,), dtypes=("fp32",), groups=("reference",), config="tiny",
                          repeats=1, min_time=0.0, budget_s=budget_s,
                          plan=plan.parse_plan("heatmaps@2=reference,opencv;infer@1=reference"))


def test_plan_rows_run_in_its_order_and_each_row_reaches_the_json(tmp_path):
    partial_counts = []
    result = bench.run_benchmarks(_plan_settings(None), torch.device("cpu"),
                                  on_row=lambda partial: partial_counts.append(len(partial["rows"])))
    assert [(r["section"], r["batch"], r["backend"], r["status"]) for r in result["rows"]] == [
        ("heatmaps", 2, "reference", "ok"), ("heatmaps", 2, "opencv", "ok"), ("infer", 1, "reference", "ok")]
    assert partial_counts == [1, 2, 3]


def test_rows_not_begun_within_the_budget_are_recorded_as_skipped():
    result = bench.run_benchmarks(_plan_settings(1e-9), torch.device("cpu"))  # spent before the first row
    assert [r["status"] for r in result["rows"]] == ["skipped"] * 3
    assert all("time budget of 1e-09 s" in r["reason"] and r["throughput"] is None for r in result["rows"])
    assert result["settings"]["budget_s"] == 1e-9


def test_compile_is_opt_in_on_the_cpu():
    args = build_parser_args(["bench", "--device", "cpu"])
    assert plan.settings_from_args(args, torch.device("cpu")).groups == ("reference", "fast")
    assert plan.settings_from_args(args, torch.device("cuda")).groups == ("reference", "compile", "fast")
    asked = build_parser_args(["bench", "--device", "cpu", "--backend", "reference,compile"])
    assert plan.settings_from_args(asked, torch.device("cpu")).groups == ("reference", "compile")


def build_parser_args(argv):
    import sys

    from labfast.cli import build_parser

    saved = sys.argv
    sys.argv = ["labfast", *argv]
    try:
        return build_parser().parse_args(argv)
    finally:
        sys.argv = saved
