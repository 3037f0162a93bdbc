"""benchmarks/gpu_run.py: the GPU day's two commands run on the CPU as a dry run (same steps, same
result files), the weights survive being cut in parts, and a step past its time box is stopped
while the next one still runs."""
import hashlib
import importlib.util
import json
import os
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


@pytest.mark.slow
def test_dry_run_brings_back_the_result_files_of_the_gpu_day(dry_run):
    out1, out2 = dry_run / "out_cmd1", dry_run / "out_cmd2"
    assert sorted(p.name for p in out1.iterdir()) == ["bench.json", "cmd1.tar.gz"]
    assert sorted(p.name for p in out2.iterdir()) == ["cmd2.tar.gz", "weights.part1", "weights.part2", "weights.sha256"]
    files = [*out1.iterdir(), *out2.iterdir()]
    assert all(p.stat().st_size <= gpu_run.FILE_LIMIT for p in files)  # what a device call brings back


@pytest.mark.slow
def test_dry_run_command_1_logs_the_skipped_build_and_still_runs_tests_and_bench_rows_in_order(dry_run):
    archive = members(dry_run / "out_cmd1" / "cmd1.tar.gz")
    steps = archive["steps.log"].decode()
    assert "step build: skipped: dry run" in steps
    assert "step tests: ok" in steps and "step bench: ok" in steps
    assert {"env.txt", "tests.log", "tests.xml", "bench.log"} <= archive.keys()
    rows = json.loads((dry_run / "out_cmd1" / "bench.json").read_text())["rows"]
    assert (rows[0]["section"], rows[0]["batch"], rows[0]["backend"]) == ("infer", 2, "reference")
    assert rows[0]["status"] in ("ok", "skipped")
    order = [(r["section"], r["batch"]) for r in rows]
    assert order.index(("infer", 1)) < order.index(("train", 4)) < order.index(("heatmaps", 2)) < order.index(("kernels", 2))


@pytest.mark.slow
def test_dry_run_command_2_trains_exports_and_evaluates_with_and_without_flip(dry_run):
    archive = members(dry_run / "out_cmd2" / "cmd2.tar.gz")
    assert {"config.json", "metrics.csv", "train.log", "eval/metrics.json", "eval_flip/metrics.json"} <= {
        name.removeprefix("train/") for name in archive}
    config = json.loads(archive["train/config.json"])
    assert config["model"] == "tiny" and config["time_budget_minutes"] == gpu_run.DRY_TRAIN_BUDGET_MIN
    assert json.loads(archive["eval/metrics.json"])["flip"] is False
    assert json.loads(archive["eval_flip/metrics.json"])["flip"] is True
    assert json.loads(archive["eval/metrics.json"])["results"]["common"]["faces"] == 40  # the bundled common faces


@pytest.mark.slow
def test_joined_weights_are_the_float16_inference_model_without_discriminator(dry_run, tmp_path):
    joined = gpu_run.join_weights(dry_run / "out_cmd2", tmp_path / "joined.pt")
    payload = checkpoint.load(joined)
    assert payload["dtype"] == "float16" and payload["config"]["discriminator"] is False
    assert not [name for name in payload["model"] if name.startswith("discriminator.")]
    assert all(value.dtype == torch.float16 for value in payload["model"].values() if value.is_floating_point())
    model, _ = checkpoint.load_model(joined)
    assert model.discriminator is None


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
