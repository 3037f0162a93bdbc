"""benchmarks/gpu_run.py: both commands of the GPU run as a dry run on the CPU (same steps, same
result files in ``$OUT``), a command killed halfway still leaving its finished bench rows and test
lines, the weights surviving being cut in parts, steps in their time boxes, and GPU_RUN.md's
figures coming from the script."""
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from labfast import checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_run.py"


def load_gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_run"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


gpu_run = load_gpu_run()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Both commands with --dry-run, as the device would run them (``$OUT`` set), once for the module."""
    base = tmp_path_factory.mktemp("gpu_run")
    for name in ("cmd1", "cmd2"):
        result = subprocess.run([sys.executable, str(SCRIPT), name, "--dry-run", "--work", str(base / f"work_{name}")],
                                cwd=ROOT, env={**os.environ, "OUT": str(base / f"out_{name}")},
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
    return base


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def row_order(rows: list[dict]) -> list[tuple[str, int, str]]:
    """``(section, batch, backend)`` of ``rows`` in order, each once (kernel rows repeat per op)."""
    order = []
    for row in rows:
        key = (row["section"], row["batch"], row["backend"])
        if key not in order:
            order.append(key)
    return order


@pytest.mark.slow
def test_dry_run_brings_back_the_result_files_of_the_gpu_run(dry_run):
    out1, out2 = dry_run / "out_cmd1", dry_run / "out_cmd2"
    assert sorted(p.name for p in out1.iterdir()) == ["bench.json", "cmd1.tar.gz", "gpu_tests.txt"]
    assert sorted(p.name for p in out2.iterdir()) == ["cmd2.tar.gz", "config.json", "evaluations.json", "metrics.csv",
                                                       "weights.part1", "weights.part2", "weights.sha256"]
    for out in (out1, out2):  # what a device call brings back
        assert len(list(out.iterdir())) <= 8
        assert all(p.stat().st_size <= gpu_run.FILE_LIMIT for p in out.iterdir())


@pytest.mark.slow
def test_dry_run_bench_rows_come_eager_first_in_order_of_value_then_compile_rows_not_reached(dry_run):
    eager, compiled = gpu_run.bench_plans(gpu_run.DRY)
    assert eager.startswith("infer@2=reference,fast;infer@1=reference,fast,fast+cudagraphs;train@4=reference,fast;"
                            "heatmaps@2=") and "kernels@2=" in eager
    rows = json.loads((dry_run / "out_cmd1" / "bench.json").read_text())["rows"]
    assert row_order(rows) == gpu_run.planned_rows(eager) + gpu_run.planned_rows(compiled)
    assert rows[0]["status"] == "ok" and rows[0]["backend"] == "reference"
    compile_rows = [r for r in rows if "compile" in r["backend"]]
    assert len(compile_rows) == 3 and {r["status"] for r in compile_rows} == {"not reached (budget)"}
    assert not [r for r in rows if r["status"] in ("skipped", "failed")]


@pytest.mark.slow
def test_dry_run_command_1_runs_only_the_gpu_test_files_in_a_box_sized_by_their_count(dry_run):
    archive = members(dry_run / "out_cmd1" / "cmd1.tar.gz")
    steps = archive["steps.log"].decode()
    assert "step build: skipped: dry run" in steps
    assert "step tests: ok" in steps and "step bench: ok" in steps
    count = int(re.search(r"(\d+)/\d+ tests collected", archive["collect.log"].decode()).group(1))
    box = count * gpu_run.DRY.test_allowance_s + gpu_run.DRY.test_overhead_s
    assert (f"plan: tests: {count} selected in {len(gpu_run.gpu_test_files())} files x "
            f"{gpu_run.DRY.test_allowance_s:g} s + {gpu_run.DRY.test_overhead_s:g} s = box {box:.0f} s") in steps
    lines = (dry_run / "out_cmd1" / gpu_run.TEST_LINES).read_text().splitlines()
    assert len(lines) == count and all(line.startswith("SKIPPED") for line in lines)  # no CUDA here
    assert "-v --durations=0" in steps
    assert {"env.txt", "collect.log", "tests.log", "tests.xml", "bench.log"} <= archive.keys()


@pytest.mark.slow
def test_the_gpu_test_files_hold_every_test_marked_gpu():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                             "-p", "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    files = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    assert files and files == set(gpu_run.gpu_test_files())


@pytest.mark.slow
def test_dry_run_env_txt_records_every_installed_package(dry_run):
    env = members(dry_run / "out_cmd1" / "cmd1.tar.gz")["env.txt"].decode()
    for package in ("torch", "triton", "numpy", "pytest", "h5py", "matplotlib", "pillow", "scipy", "tqdm"):
        assert f"{importlib.metadata.metadata(package)['Name']}=={importlib.metadata.version(package)}" in env
    installed = {(d.metadata["Name"], d.version) for d in importlib.metadata.distributions() if d.metadata["Name"]}
    assert f"installed packages ({len(installed)})" in env  # the dry run's Python is this one


@pytest.mark.slow
def test_dry_run_command_2_copies_its_results_out_and_evaluates_the_float16_weights_it_ships(dry_run):
    out = dry_run / "out_cmd2"
    archive = members(out / "cmd2.tar.gz")
    assert (out / "config.json").read_bytes() == archive["train/config.json"]
    assert (out / "metrics.csv").read_bytes() == archive["train/metrics.csv"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "tiny" and config["time_budget_minutes"] == gpu_run.DRY_TRAIN_BUDGET_MIN
    evaluations = json.loads((out / "evaluations.json").read_text())
    assert list(evaluations) == ["eval", "eval_flip", "eval_fp32"]
    assert [evaluations[name]["metrics"]["flip"] for name in evaluations] == [False, True, False]
    assert "float16" in evaluations["eval"]["checkpoint"] and "float32" in evaluations["eval_fp32"]["checkpoint"]
    assert all(e["metrics"]["results"]["common"]["faces"] == 40 for e in evaluations.values())  # the bundled faces
    assert json.loads(archive["eval/metrics.json"]) == evaluations["eval"]["metrics"]


@pytest.mark.slow
def test_joined_weights_are_the_float16_inference_model_without_discriminator(dry_run, tmp_path):
    joined = gpu_run.join_weights(dry_run / "out_cmd2", tmp_path / "joined.pt")
    payload = checkpoint.load(joined)
    assert payload["dtype"] == "float16" and payload["config"]["discriminator"] is False
    assert not [name for name in payload["model"] if name.startswith("discriminator.")]
    assert all(value.dtype == torch.float16 for value in payload["model"].values() if value.is_floating_point())
    model, _ = checkpoint.load_model(joined)
    assert model.discriminator is None


def finished_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [row for row in json.loads(path.read_text())["rows"] if row["status"] in ("ok", "unavailable", "failed")]


@pytest.mark.slow
def test_command_1_killed_halfway_leaves_every_finished_bench_row_in_the_json(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "cmd1", "--dry-run", "--work", str(tmp_path / "work")],
                               cwd=ROOT, env={**os.environ, "OUT": str(out)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    seen: list[dict] = []
    try:
        deadline = time.monotonic() + 500
        while len(seen) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            seen = finished_rows(out / "bench.json")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # as the device call's limit kills a command: no packing
        process.wait()
    assert len(seen) >= 3 and not (out / "cmd1.tar.gz").exists()
    left = finished_rows(out / "bench.json")
    assert left[:len(seen)] == seen
    eager, _ = gpu_run.bench_plans(gpu_run.DRY)
    assert row_order(left) == gpu_run.planned_rows(eager)[:len(row_order(left))]
    lines = (out / gpu_run.TEST_LINES).read_text().splitlines()  # the tests ran before the bench
    assert lines and all(line.startswith("SKIPPED") for line in lines)


def test_a_killed_test_run_still_leaves_a_result_line_per_finished_test(tmp_path):
    tests = tmp_path / "fake" / "test_fake.py"
    tests.parent.mkdir()
    tests.write_text("import time\n\nimport pytest\n\npytestmark = pytest.mark.gpu\n\n\n"
                     "def test_passes():\n    pass\n\n\n"
                     "@pytest.mark.skip(reason='no GPU')\ndef test_skipped():\n    pass\n\n\n"
                     "def test_hangs():\n    time.sleep(120)\n")
    command = gpu_run.Command("cmd1", total_s=120, out=tmp_path / "out", dry_run=True, work=tmp_path / "work")
    sizes = dataclasses.replace(gpu_run.DRY, test_allowance_s=1, test_overhead_s=12)
    tick = time.monotonic()
    gpu_run.run_gpu_tests(command, sizes, [str(tests)], reserve_s=0)
    assert time.monotonic() - tick < 60 and command.verdicts["tests"] == "stopped at its time box"
    lines = (tmp_path / "out" / gpu_run.TEST_LINES).read_text().splitlines()
    assert [(line.split()[0], line.split("::")[-1]) for line in lines] == [("PASSED", "test_passes"),
                                                                            ("SKIPPED", "test_skipped")]
    steps = (tmp_path / "work" / "steps.log").read_text()
    assert "plan: tests: 3 selected in 1 files x 1 s + 12 s = box 15 s" in steps
    assert "tests: 2 of 3 selected tests have a result line" in steps


def test_join_bench_writes_every_planned_row_not_measured_as_not_reached(tmp_path):
    eager_json = tmp_path / "bench.json"
    measured = [{"section": "infer", "batch": 8, "backend": "reference", "case": "LAB", "dtype": "bf16",
                 "status": "ok", "throughput": 100.0, "vs_reference": 1.0},
                {"section": "infer", "batch": 8, "backend": "fast", "case": "LAB", "dtype": "bf16",
                 "status": "skipped", "reason": "the time budget of 5 s was spent before this row"}]
    eager_json.write_text(json.dumps({"schema": 1, "device": {"name": "cpu"}, "rows": measured}))
    compile_json = tmp_path / "bench_compile.json"
    compile_json.write_text(json.dumps({"rows": [{"section": "infer", "batch": 8, "backend": "compile", "case": "LAB",
                                                  "dtype": "bf16", "status": "ok", "throughput": 150.0}]}))
    joined = gpu_run.join_bench(
        [("bench", "infer@8=reference,fast;infer@1=reference", eager_json),
         ("bench_compile", "infer@8=compile,fast+compile;train@4=compile", compile_json)],
        {"bench": "stopped at its time box", "bench_compile": "FAILED (exit 1)"})
    assert [(r["batch"], r["backend"], r["status"]) for r in joined["rows"]] == [
        (8, "reference", "ok"), (8, "fast", "not reached (budget)"), (1, "reference", "not reached (budget)"),
        (8, "compile", "ok"), (8, "fast+compile", "not reached (bench failed)"),
        (4, "compile", "not reached (bench failed)")]
    assert joined["rows"][3]["vs_reference"] == 1.5  # against the eager reference of the other step
    assert joined["device"] == {"name": "cpu"} and [s["verdict"] for s in joined["steps"]] == [
        "stopped at its time box", "FAILED (exit 1)"]


def test_with_no_time_left_every_bench_row_is_written_not_reached(tmp_path):
    assert gpu_run.main(["cmd1", "--dry-run", "--total", "2", "--out", str(tmp_path / "out"),
                         "--work", str(tmp_path / "work")]) == 0
    steps = (tmp_path / "work" / "steps.log").read_text()
    assert "cmd1 (dry run): 2 s in all" in steps and "step bench: skipped" in steps
    rows = json.loads((tmp_path / "out" / "bench.json").read_text())["rows"]
    eager, compiled = gpu_run.bench_plans(gpu_run.DRY)
    assert row_order(rows) == gpu_run.planned_rows(eager) + gpu_run.planned_rows(compiled)
    assert {row["status"] for row in rows} == {"not reached (budget)"}


def test_command_2_with_no_time_left_skips_training_and_still_packs(tmp_path):
    assert gpu_run.main(["cmd2", "--dry-run", "--total", "2", "--out", str(tmp_path / "out"),
                         "--work", str(tmp_path / "work")]) == 0
    steps = (tmp_path / "work" / "steps.log").read_text()
    assert "cmd2 (dry run): 2 s in all" in steps and "step export: skipped: training left no checkpoint" in steps
    assert (tmp_path / "out" / "cmd2.tar.gz").exists()


def test_total_must_be_positive():
    with pytest.raises(SystemExit, match="--total"):
        gpu_run.main(["cmd2", "--total", "0"])


def test_a_missing_module_stops_the_command_in_its_first_second_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_run, "REQUIRED_MODULES", (*gpu_run.REQUIRED_MODULES, "labfast_no_such_module"))
    for command in (gpu_run.cmd1, gpu_run.cmd2):
        tick = time.monotonic()
        assert command(tmp_path / "out", dry_run=True, work=tmp_path / "work") == 2
        assert time.monotonic() - tick < 1
        assert "cannot import labfast_no_such_module" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing ran


def test_every_module_the_gpu_path_needs_is_checked():
    assert {"torch", "triton", "numpy", "cv2", "tqdm", "matplotlib", "PIL", "scipy", "h5py",
            "pytest"} <= set(gpu_run.REQUIRED_MODULES)
    assert gpu_run.missing_modules(gpu_run.REQUIRED_MODULES) == []  # this environment has them all


def fake_nvcc(folder: Path) -> Path:
    (folder / "bin").mkdir(parents=True)
    nvcc = folder / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho nvcc\n")
    nvcc.chmod(0o755)
    return nvcc


def test_nvcc_is_found_through_cuda_home_when_not_on_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_run, "DEFAULT_CUDA_HOME", tmp_path / "absent")
    nvcc = fake_nvcc(tmp_path / "cuda-13.0")
    environ = {"PATH": str(tmp_path), "CUDA_HOME": str(tmp_path / "cuda-13.0")}
    assert gpu_run.find_nvcc(environ) == nvcc
    added = gpu_run.cuda_build_env(nvcc, environ)
    assert added["PATH"].startswith(str(nvcc.parent)) and added["CUDA_HOME"] == str(tmp_path / "cuda-13.0")
    assert gpu_run.find_nvcc({"PATH": str(tmp_path)}) is None


def test_nvcc_is_found_in_the_toolkits_default_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_run, "DEFAULT_CUDA_HOME", tmp_path / "cuda")
    nvcc = fake_nvcc(tmp_path / "cuda")
    assert gpu_run.find_nvcc({"PATH": str(tmp_path)}) == nvcc
    assert gpu_run.cuda_build_env(nvcc, {"PATH": str(tmp_path)})["CUDA_HOME"] == str(tmp_path / "cuda")
    assert gpu_run.cuda_build_env(nvcc, {"PATH": str(nvcc.parent)}) == {}  # on the PATH: setup.py finds its toolkit


def test_gpu_run_md_states_the_paper_weights_size_the_script_computes():
    parameters, size = gpu_run.paper_weights_size()
    text = (ROOT / "benchmarks" / "GPU_RUN.md").read_text()
    assert f"{parameters / 1e6:.2f} M parameters" in text
    assert f"{size / gpu_run.MiB:.1f} MiB in float16" in text


@pytest.mark.parametrize("name", ["benchmarks/GPU_RUN.md", "benchmarks/check_cuda_build.sh"])
def test_no_absolute_machine_path_in_the_gpu_run_docs(name):
    text = (ROOT / name).read_text().removeprefix("#!/usr/bin/env bash\n")
    machine_roots = "work|tmp|home|root|opt|usr|mnt|srv|var|scratch|data|etc|nfs"
    assert not re.findall(rf"(?<![\w$}}\"'.])/(?:{machine_roots})/[\w./-]*", text)


def test_weights_are_cut_in_at_least_two_parts_under_the_file_limit_and_joined_back(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(os.urandom(31 * 2**20 + 7))  # 31 MiB: three parts of at most 15 MiB
    out = tmp_path / "out"
    out.mkdir()
    parts = gpu_run.split_weights(weights, out)
    assert [p.name for p in parts] == ["weights.part1", "weights.part2", "weights.part3"]
    assert all(p.stat().st_size <= gpu_run.PART_SIZE for p in parts)
    joined = gpu_run.join_weights(out, tmp_path / "joined.pt")
    assert hashlib.sha256(joined.read_bytes()).digest() == hashlib.sha256(weights.read_bytes()).digest()
    small = tmp_path / "small.pt"
    small.write_bytes(b"x" * 11)
    assert len(gpu_run.split_weights(small, out)) == 2  # always two parts: one join procedure


def test_join_refuses_parts_that_do_not_match_the_digest(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(os.urandom(1000))
    gpu_run.split_weights(weights, tmp_path)
    part = tmp_path / "weights.part2"
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(SystemExit, match="SHA-256"):
        gpu_run.join_weights(tmp_path, tmp_path / "joined.pt")
    assert not (tmp_path / "joined.pt").exists()


def test_a_step_past_its_time_box_is_stopped_and_the_next_step_runs(tmp_path):
    command = gpu_run.Command("box", total_s=60, out=tmp_path / "out", dry_run=True, work=tmp_path / "work")
    tick = time.monotonic()
    assert command.step("hang", [sys.executable, "-c", "import time; time.sleep(60)"], box_s=2) is None
    assert time.monotonic() - tick < 15  # stopped at 2 s (+ up to 5 s for SIGTERM), not after 60 s
    assert command.step("fail", [sys.executable, "-c", "raise SystemExit(3)"], box_s=10) == 3
    assert command.step("next", [sys.executable, "-c", "print('ran')"], box_s=10) == 0
    log = (tmp_path / "work" / "steps.log").read_text()
    assert "step hang: stopped at its time box" in log and "step fail: FAILED (exit 3)" in log and "step next: ok" in log


def test_a_step_is_skipped_when_the_command_has_no_time_left(tmp_path):
    command = gpu_run.Command("late", total_s=5, out=tmp_path / "out", dry_run=True, work=tmp_path / "work")
    assert command.step("late", [sys.executable, "-c", "pass"], box_s=30, reserve_s=10) is None
    assert "step late: skipped: no time left" in (tmp_path / "work" / "steps.log").read_text()


def test_prepare_reencodes_only_the_training_crops_and_reports_the_size(tmp_path, capsys):
    import cv2
    import numpy as np

    source = tmp_path / "300w"
    for folder in ("afw", "lfpw/testset"):
        (source / folder).mkdir(parents=True)
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        cv2.imwrite(str(source / folder / "face.jpg"), noise, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (source / "README.md").write_text("300-W crops\n")
    dest = tmp_path / "gpu_data" / "300w"
    assert gpu_run.prepare(source, dest, train_quality=50) == 0
    assert (dest / "lfpw/testset/face.jpg").read_bytes() == (source / "lfpw/testset/face.jpg").read_bytes()
    assert (dest / "afw/face.jpg").stat().st_size < (source / "afw/face.jpg").stat().st_size
    assert "MiB of the 64 MiB allowed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- setup.py: CUDA_HOME


def load_setup():
    spec = importlib.util.spec_from_file_location("labfast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__
    return module


def fake_toolkit_behind_a_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp/cuda-13.0/bin/nvcc`` (answers ``--dryrun`` as nvcc does) and ``tmp/bin/nvcc``, a wrapper
    script exec-ing it, as /usr/local/bin/nvcc does on this project's machines."""
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    real = toolkit / "bin" / "nvcc"
    real.write_text(f'#!/bin/sh\necho "#$ _NVVM_BRANCH_=nvvm" >&2\necho "#$ _HERE_={toolkit}/bin" >&2\n')
    wrapper_folder = tmp_path / "bin"
    wrapper_folder.mkdir()
    wrapper = wrapper_folder / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    for script in (real, wrapper):
        script.chmod(0o755)
    return toolkit, wrapper_folder


def test_setup_finds_the_toolkit_behind_an_nvcc_wrapper_script(tmp_path):
    setup = load_setup()
    toolkit, wrapper_folder = fake_toolkit_behind_a_wrapper(tmp_path)
    # torch's guess, the wrapper's grandparent, would be tmp_path: no lib64/libcudart there
    assert setup.resolve_cuda_home({"PATH": str(wrapper_folder)}) == str(toolkit)


def test_setup_keeps_a_cuda_home_that_is_given(tmp_path):
    setup = load_setup()
    _, wrapper_folder = fake_toolkit_behind_a_wrapper(tmp_path)
    assert setup.resolve_cuda_home({"PATH": str(wrapper_folder), "CUDA_HOME": "/opt/cuda"}) == "/opt/cuda"


def test_setup_says_what_to_set_without_nvcc(tmp_path):
    with pytest.raises(SystemExit, match="set CUDA_HOME"):
        load_setup().resolve_cuda_home({"PATH": str(tmp_path)})
