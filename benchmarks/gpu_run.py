"""The GPU run: two commands for a GPU machine, each a list of time-boxed, independent steps.

    python3 benchmarks/gpu_run.py prepare [--train-quality Q]       here: data into gpu_data/300w, sizes printed
    python3 benchmarks/gpu_run.py cmd1 [--total S] [--dry-run]      there: build, GPU tests, benchmark rows
    python3 benchmarks/gpu_run.py cmd2 [--total S] [--dry-run]      there: train the paper model, export, evaluate
    python3 benchmarks/gpu_run.py join DIR [--dest PATH]            here: rebuild the fp16 weights from their parts

benchmarks/GPU_RUN.md gives the exact device calls and what comes back. Each command first checks
that every module the GPU path imports is installed (and stops, naming the missing ones, when not),
then runs its steps, each as its own process under a time box (the smaller of its own and what is
left of the command's ``--total``), with its output in its own log; a step that fails or runs out of
time is logged and the next one runs. A device call brings back at most 8 files of at most 16 MiB
from ``$OUT``, and when the call's limit kills a command only what is already in ``$OUT`` comes
back, so every result is written there the moment it exists:

- cmd1: ``gpu_tests.txt`` (one line per GPU test, appended as each finishes), ``bench.json`` (the
  eager rows, rewritten after every row, then joined with the compile rows of ``bench_compile.json``;
  every planned row not measured is there as ``not reached (...)``) and ``cmd1.tar.gz`` (steps.log,
  env.txt, the build log's tail, the test log and JUnit XML, the bench logs).
- cmd2: ``config.json`` and ``metrics.csv`` of the training run (copied while it trains),
  ``weights.part1``, ``weights.part2`` (the paper model's inference weights in float16 without the
  discriminator, cut in two under 16 MiB each), ``weights.sha256``, ``evaluations.json`` (the
  shipped float16 weights with and without flip, and the float32 ``best.pt``; rewritten after each
  evaluation) and ``cmd2.tar.gz`` (steps.log, env.txt, the logs, the evaluations' folders).

``--dry-run`` runs the same steps on the CPU with tiny sizes (the tiny model, the bundled sample
faces, seconds instead of minutes; no CUDA build) and writes the same file names:
``tests/test_gpu_run.py`` runs it, so on the GPU machine only the GPU itself is new.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
#: What one device call may send (repository + carried paths) and bring back per file.
SEND_LIMIT = 64 * MiB
FILE_LIMIT = 16 * MiB
#: Weights are cut into parts of at most this size (under FILE_LIMIT with room to spare).
PART_SIZE = 15 * MiB
WEIGHTS_NAME = "lab_300w_paper.pt"
#: Modules the GPU path imports besides the standard library: the model and kernels (torch, triton,
#: numpy), data and evaluation (cv2, tqdm, scipy, matplotlib with PIL for the CED plots), the tests
#: (pytest, and h5py, which test collection imports).
REQUIRED_MODULES = ("torch", "triton", "numpy", "cv2", "tqdm", "matplotlib", "PIL", "scipy", "h5py", "pytest")
#: Where the CUDA toolkit installs itself; nvcc is looked for here when neither the PATH nor CUDA_HOME has it.
DEFAULT_CUDA_HOME = Path("/usr/local/cuda")
#: Per-test result lines of the GPU tests, in ``$OUT`` (``gpu_test_lines.py`` appends them).
TEST_LINES = "gpu_tests.txt"
#: Kept at the end of a command for packing its archive.
PACK_S = 10.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the dry run on the CPU. The GPU's time
    boxes are estimates (no GPU has run these commands yet): each step's log says what it took."""

    cmd1_total_s: float  # the default --total of each command: its steps end within this
    cmd2_total_s: float
    install_box_s: float
    build_box_s: float
    test_allowance_s: float  # the tests' box: this per selected test ...
    test_overhead_s: float  # ... plus this once (pytest's start, collection, the first CUDA call)
    bench_eager_s: float  # labfast bench --budget of the eager rows
    bench_compile_s: float  # at most this --budget for the compile rows, which come after them
    bench_tail_s: float  # a row begun just before its budget ends runs on this long at most
    bench_config: str
    bench_dtype: str
    infer_batch: int
    train_batch: int  # command 2's batch, also the bench's training-step rows
    data_root: str
    train_settings: tuple[str, ...]  # labfast train --set, besides the batch and the time budget
    export_box_s: float
    eval_box_s: float
    after_training_s: float  # export + the three evaluations + packing, kept from training
    train_grace_s: float  # after the time budget: SIGINT, then this long before SIGKILL


GPU = Sizes(
    cmd1_total_s=360, cmd2_total_s=345, install_box_s=60, build_box_s=110,
    test_allowance_s=1.0, test_overhead_s=20, bench_eager_s=90, bench_compile_s=150, bench_tail_s=20,
    bench_config="paper", bench_dtype="bf16", infer_batch=256, train_batch=32, data_root="gpu_data/300w",
    # all 2,012 training faces (1,911 trained on, 101 held out), the paper model, bf16, channels_last;
    # 12 loader workers of the 16 cores (the main process and the GPU's feeding keep the rest)
    train_settings=("model=paper", "amp=bf16", "channels_last=true", "num_workers=12", "log_every=20"),
    export_box_s=40, eval_box_s=45, after_training_s=100, train_grace_s=30,
)
#: The dry run trains in float32 with the default memory format: bfloat16 on a CPU is far slower
#: (a tiny-model forward took 10 s on a busy 2-core machine; tests/train/test_loop.py covers bf16 and
#: channels_last there), and with float32, channels_last training crashed in the backward pass
#: (SIGSEGV, torch 2.13.0+cpu, 2026-11-28). Its compile rows have no budget: compiling the model
#: takes minutes on a CPU, so they are all written as not reached.
DRY = Sizes(
    cmd1_total_s=300, cmd2_total_s=200, install_box_s=30, build_box_s=30,
    test_allowance_s=0.3, test_overhead_s=60, bench_eager_s=60, bench_compile_s=0, bench_tail_s=60,
    bench_config="tiny", bench_dtype="fp32", infer_batch=2, train_batch=4, data_root="data/300w_sample",
    train_settings=("model=tiny", "amp=none", "channels_last=false", "num_workers=0", "log_every=1",
                    "train_subset=common", "train_limit=10", "val_fraction=0.2"),
    export_box_s=40, eval_box_s=40, after_training_s=80, train_grace_s=40,
)
#: labfast train --set time_budget_minutes: the dry run's (command 2 on the GPU computes its own).
DRY_TRAIN_BUDGET_MIN = 0.1


# ----------------------------------------------------------------------------- what the machine has


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` this Python cannot import, found without importing any (well under a second)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def find_nvcc(environ: dict[str, str]) -> Path | None:
    """nvcc on ``environ``'s PATH, else in ``$CUDA_HOME/bin``, else in the toolkit's default folder."""
    on_path = shutil.which("nvcc", path=environ.get("PATH", ""))
    if on_path:
        return Path(on_path)
    for home in (environ.get("CUDA_HOME"), DEFAULT_CUDA_HOME):
        if home and os.access(Path(home) / "bin" / "nvcc", os.X_OK):
            return Path(home) / "bin" / "nvcc"
    return None


def cuda_build_env(nvcc: Path, environ: dict[str, str]) -> dict[str, str]:
    """What the CUDA build adds to ``environ``: an nvcc found off the PATH goes on it, with its
    toolkit as ``CUDA_HOME`` unless one is set (setup.py finds the toolkit of an nvcc on the PATH
    itself, wrapper scripts included)."""
    if shutil.which("nvcc", path=environ.get("PATH", "")):
        return {}
    return {"PATH": f"{nvcc.parent}{os.pathsep}{environ.get('PATH', '')}",
            "CUDA_HOME": environ.get("CUDA_HOME") or str(nvcc.parent.parent)}


# ----------------------------------------------------------------------------- steps


class Command:
    """One device command: a clock, a work folder, ``$OUT``, the log of its steps and their verdicts."""

    def __init__(self, name: str, total_s: float, out: Path, dry_run: bool, work: Path | None = None):
        self.name, self.total_s, self.dry_run = name, total_s, dry_run
        self.start = time.monotonic()
        self.out = out
        self.work = work or ROOT / "runs" / "gpu_run" / name
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps_log = self.work / "steps.log"
        self.verdicts: dict[str, str] = {}  # step name -> ok | stopped at its time box | FAILED (exit N) | skipped: why
        self._copied: dict[Path, tuple[float, int]] = {}
        # the dry run shares a small CPU with other work: one thread each (spinning OpenMP threads on an
        # oversubscribed CPU made a tiny-model step 100x slower)
        self.environment = {"PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if dry_run else {})}
        self.say(f"{name}{' (dry run)' if dry_run else ''}: {total_s:.0f} s in all; work {self.work}, results {out}")

    def remaining(self) -> float:
        return self.total_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f} s] {text}"
        print(line, flush=True)
        with self.steps_log.open("a") as stream:
            stream.write(line + "\n")

    def skip(self, name: str, reason: str) -> None:
        self.verdicts[name] = f"skipped: {reason}"
        self.say(f"step {name}: skipped: {reason}")

    def step(self, name: str, argv: list[str], box_s: float, reserve_s: float = 0.0,
             env: dict[str, str] | None = None, interrupt_grace_s: float | None = None,
             on_tick: Callable[[], None] | None = None) -> int | None:
        """Run ``argv`` as its own process group, output to ``<work>/<name>.log``, for at most
        ``box_s`` and never past the command's total less ``reserve_s``. Returns the exit status,
        or ``None`` when it was stopped at its time box or could not start.

        ``interrupt_grace_s``: at the time box send SIGINT first (Python stops with
        KeyboardInterrupt, files written atomically stay whole) and SIGKILL only that long after.
        ``on_tick`` runs every two seconds while the step runs (and copies its results out).
        """
        box = min(box_s, self.remaining() - reserve_s)
        if box <= 1:
            self.skip(name, f"no time left ({self.remaining():.0f} s of the command, {reserve_s:.0f} s reserved)")
            return None
        log = self.work / f"{name}.log"
        tick = time.monotonic()
        with log.open("w") as stream:
            try:
                process = subprocess.Popen(argv, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                                           env={**os.environ, **self.environment, **(env or {})},
                                           start_new_session=True)
            except OSError as error:
                self.verdicts[name] = f"could not start: {error}"
                self.say(f"step {name}: could not start: {error}")
                return None
            self.say(f"step {name}: {' '.join(argv)} (time box {box:.0f} s, process group {process.pid})")
            status = _wait(process, box, interrupt_grace_s, on_tick)
        seconds = time.monotonic() - tick
        verdict = "stopped at its time box" if status is None else "ok" if status == 0 else f"FAILED (exit {status})"
        self.verdicts[name] = verdict
        self.say(f"step {name}: {verdict} after {seconds:.1f} s; last lines of {log.name}:")
        for line in _tail(log, 8):
            print(f"    {line}", flush=True)
        return status

    def python(self, *arguments: str) -> list[str]:
        return [sys.executable, *arguments]

    def labfast(self, *arguments: str) -> list[str]:
        return [sys.executable, "-m", "labfast", *arguments]

    def copy_out(self, paths: list[Path]) -> None:
        """Copy each of ``paths`` that exists to ``$OUT`` under its own name, again whenever it
        changed: it comes back even if the call's limit kills the command before packing."""
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if self._copied.get(path) != (stat.st_mtime, stat.st_size):
                temporary = self.out / f".{path.name}.tmp"
                shutil.copyfile(path, temporary)
                os.replace(temporary, self.out / path.name)
                self._copied[path] = (stat.st_mtime, stat.st_size)

    def pack(self, archive: str, members: list[Path]) -> None:
        """``$OUT/<archive>``: the steps log, then each member that exists (named relative to the work folder)."""
        path = self.out / archive
        self.say(f"packing {path.name}")
        with tarfile.open(path, "w:gz") as tar:
            for member in [*members, self.steps_log]:
                if member.exists():
                    tar.add(member, arcname=str(member.relative_to(self.work)))
        self.say(f"wrote {path} ({path.stat().st_size / MiB:.2f} MiB); {self.remaining():.0f} s of the command left")


def _wait(process: subprocess.Popen, box: float, interrupt_grace_s: float | None,
          on_tick: Callable[[], None] | None, tick_s: float = 2.0) -> int | None:
    """The exit status, or ``None`` after stopping the whole process group at the time box."""
    deadline = time.monotonic() + box
    while True:
        try:
            return process.wait(timeout=max(0.0, min(tick_s, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if on_tick is not None:
                on_tick()
            if time.monotonic() >= deadline:
                break
    if interrupt_grace_s is not None:
        _signal_group(process, signal.SIGINT)
        try:
            process.wait(timeout=interrupt_grace_s)
            return None
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()
    return None


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    return [line.rstrip()[-200:] for line in path.read_text(errors="replace").splitlines()[-lines:]]


def stop_for_missing_modules(name: str) -> int | None:
    """Exit status 2 with the missing modules named, before anything runs; ``None`` when all are there."""
    missing = missing_modules(REQUIRED_MODULES)
    if not missing:
        return None
    print(f"{name}: stopped before any step: {sys.executable} cannot import {', '.join(missing)} "
          f"(the GPU path needs {', '.join(REQUIRED_MODULES)})", file=sys.stderr, flush=True)
    return 2


def _environment(command: Command) -> Path:
    """``env.txt``: the GPU, driver, nvcc, Python, the main versions and every installed package's."""
    path = command.work / "env.txt"
    nvcc = find_nvcc(dict(os.environ))
    probes = [["nvidia-smi", "-L"], [str(nvcc or "nvcc"), "--version"],
              [sys.executable, "-c", "import sys, torch, triton, numpy, cv2; print(sys.version); "
               "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() "
               "and torch.cuda.get_device_name()); print('triton', triton.__version__, 'numpy', numpy.__version__, "
               "'opencv', cv2.__version__)"],
              ["git", "-C", str(ROOT), "rev-parse", "HEAD"], ["nproc"]]
    with path.open("w") as stream:
        for argv in probes:
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                stream.write(f"$ {' '.join(argv[:2])}\n{result.stdout}{result.stderr}\n")
            except (OSError, subprocess.SubprocessError) as error:
                stream.write(f"$ {' '.join(argv[:2])}\nunavailable: {error}\n")
        packages = sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                           if d.metadata["Name"]}, key=str.lower)
        stream.write(f"$ installed packages ({len(packages)})\n" + "\n".join(packages) + "\n")
    return path


def _install(command: Command, sizes: Sizes) -> None:
    if command.dry_run:  # never reinstall into the environment the tests run in
        command.step("install", command.python("-c", "import labfast; print('labfast from', labfast.__file__)"),
                     sizes.install_box_s)
    else:
        command.step("install", [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                 "--no-index", "-e", "."], sizes.install_box_s)


# ----------------------------------------------------------------------------- command 1: build and GPU tests


def _cuda_reason(nvcc: Path | None) -> str | None:
    """``None`` where a CUDA build can be made and used (an nvcc, a GPU torch sees), else why not."""
    if nvcc is None:
        return f"no CUDA (no nvcc on the PATH, in CUDA_HOME or in {DEFAULT_CUDA_HOME})"
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "True":
        return "no CUDA (torch sees no GPU)"
    return None


def _build(command: Command, sizes: Sizes) -> None:
    nvcc = find_nvcc(dict(os.environ))
    reason = "dry run" if command.dry_run else _cuda_reason(nvcc)
    if reason is not None:
        command.skip("build", f"{reason}: labfast._cuda not built; CUDA rows and tests report it")
        return
    command.say(f"nvcc: {nvcc}")
    command.step("build", command.python("setup.py", "build_ext", "--inplace"), sizes.build_box_s,
                 env={"LABFAST_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": str(os.cpu_count() or 4),
                      **cuda_build_env(nvcc, dict(os.environ))})


#: A line that marks a test, or every test of its file, ``gpu``.
GPU_MARK = re.compile(r"^\s*(@pytest\.mark\.gpu\b|pytestmark\s*=.*\bpytest\.mark\.gpu\b)", re.MULTILINE)


def gpu_test_files(tests: Path = ROOT / "tests") -> list[str]:
    """The test files that mark tests ``gpu`` (paths relative to the repository): only these are collected."""
    return sorted(str(path.relative_to(ROOT)) for path in tests.rglob("test_*.py") if GPU_MARK.search(path.read_text()))


def count_tests(command: Command, files: list[str]) -> int | None:
    """How many tests ``pytest -m gpu FILES`` selects (its own step), ``None`` if collection failed."""
    command.step("collect", command.python("-m", "pytest", "--collect-only", "-q", "-m", "gpu",
                                           "-p", "no:cacheprovider", *files), box_s=60)
    log = command.work / "collect.log"
    summary = re.search(r"(\d+)(?:/\d+)? tests? collected", log.read_text()) if log.exists() else None
    return int(summary.group(1)) if summary else None


def run_gpu_tests(command: Command, sizes: Sizes, files: list[str], reserve_s: float) -> None:
    """``pytest -m gpu -v`` on ``files`` in a box of (selected tests x allowance + overhead); every
    test's result line goes to ``$OUT/gpu_tests.txt`` as it finishes, so a box that runs out (the
    JUnit file is written only at the end) still leaves the name and outcome of every finished test."""
    count = count_tests(command, files)
    if count is None:
        box = command.remaining() - reserve_s
        command.say(f"plan: tests: the number of selected tests is unknown (see collect.log): box {box:.0f} s, all "
                    f"that is left before the bench's {reserve_s:.0f} s")
    else:
        box = count * sizes.test_allowance_s + sizes.test_overhead_s
        command.say(f"plan: tests: {count} selected in {len(files)} files x {sizes.test_allowance_s:g} s "
                    f"+ {sizes.test_overhead_s:g} s = box {box:.0f} s ({command.remaining() - reserve_s:.0f} s left "
                    f"before the bench's {reserve_s:.0f} s)")
    lines = command.out / TEST_LINES
    lines.write_text("")
    env = {"LABFAST_TEST_LINES": str(lines), "PYTHONPATH": os.pathsep.join(filter(None, (
        str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH"))))}
    if not command.dry_run:
        env["TRITON_INTERPRET"] = "0"  # compiled kernels, not the interpreter
    command.step("tests", command.python("-m", "pytest", "-m", "gpu", "-v", "--durations=0", "-rfEs",
                                         "-p", "gpu_test_lines", "-p", "no:cacheprovider",
                                         f"--junitxml={command.work / 'tests.xml'}", *files),
                 box, reserve_s=reserve_s, env=env)
    finished = len(lines.read_text().splitlines())
    command.say(f"tests: {finished} of {count if count is not None else '?'} selected tests have a result line in "
                f"{TEST_LINES}")


# ----------------------------------------------------------------------------- command 1: benchmark rows


def bench_plans(sizes: Sizes) -> tuple[str, str]:
    """The eager rows in order of value, then the compile rows (each row of the paper model compiles
    for minutes: they come last, in a budget of their own, so they never cost an eager row)."""
    batch, train = sizes.infer_batch, sizes.train_batch
    eager = (f"infer@{batch}=reference,fast;infer@1=reference,fast,fast+cudagraphs;train@{train}=reference,fast;"
             f"heatmaps@{batch}=reference,opencv,fast (triton),fast (cuda);"
             f"kernels@{batch}=reference,fast (triton),fast (cuda)")
    compiled = f"infer@{batch}=compile,fast+compile;train@{train}=compile"
    return eager, compiled


def planned_rows(plan: str) -> list[tuple[str, int, str]]:
    """``(section, batch, backend)`` of every row a plan names, in order (each kernel backend once:
    the ops it runs on are known only to the bench)."""
    rows = []
    for entry in plan.split(";"):
        head, _, backends = entry.partition("=")
        section, _, batch = head.partition("@")
        rows += [(section, int(batch), backend) for backend in backends.split(",")]
    return rows


def run_bench(command: Command, sizes: Sizes, name: str, plan: str, budget_s: float, json_path: Path,
              reserve_s: float) -> None:
    """``labfast bench --plan PLAN --budget`` as step ``name``; its JSON is rewritten after every row."""
    budget = min(budget_s, command.remaining() - reserve_s - sizes.bench_tail_s)
    if budget < 1:
        command.skip(name, f"no budget ({budget_s:.0f} s planned, {command.remaining():.0f} s of the command left)")
        return
    command.say(f"{name}: rows begin for {budget:.0f} s, then none (a row begun may run "
                f"{sizes.bench_tail_s:.0f} s more)")
    argv = command.labfast("bench", "--plan", plan, "--budget", f"{budget:.0f}", "--config", sizes.bench_config,
                           "--dtype", sizes.bench_dtype, "--json", str(json_path))
    if command.dry_run:
        argv += ["--repeats", "1", "--min-time", "0"]
    command.step(name, argv, box_s=budget + sizes.bench_tail_s, reserve_s=reserve_s)


def _not_reached(verdict: str) -> str:
    """The status of a planned row its bench step never began, from the step's verdict."""
    return "not reached (bench failed)" if verdict.startswith(("FAILED", "could not start")) else "not reached (budget)"


def join_bench(steps: list[tuple[str, str, Path]], verdicts: dict[str, str]) -> dict:
    """One result of the bench steps ``(name, plan, json_path)``: their rows in plan order, each
    planned row that no step measured added as ``not reached (budget)`` (or ``(bench failed)``),
    rows skipped at a budget renamed so, and each compile row's ratio to the eager reference."""
    result: dict = {"schema": 1, "steps": []}
    rows: list[dict] = []
    for name, plan, path in steps:
        data = json.loads(path.read_text()) if path.exists() else {}
        for key, value in data.items():
            if key not in ("rows", "settings", "fast_path_fallbacks"):
                result.setdefault(key, value)
        verdict = verdicts.get(name, "not run")
        result["steps"].append({"step": name, "plan": plan, "verdict": verdict, "settings": data.get("settings"),
                                "fast_path_fallbacks": data.get("fast_path_fallbacks", [])})
        measured = data.get("rows", [])
        for row in measured:
            if row.get("status") == "skipped":
                row["status"] = "not reached (budget)"
        done = {(row["section"], row["batch"], row["backend"]) for row in measured}
        missing = [{"section": section, "batch": batch, "backend": backend, "status": _not_reached(verdict),
                    "reason": f"step {name}: {verdict}"}
                   for section, batch, backend in planned_rows(plan) if (section, batch, backend) not in done]
        rows += measured + missing
    _ratios_to_reference(rows)
    result["rows"] = rows
    return result


def _ratios_to_reference(rows: list[dict]) -> None:
    """``vs_reference`` of measured rows that lack it (those of another bench step than their reference's)."""
    reference = {(r["section"], r.get("case"), r.get("dtype"), r["batch"]): r["throughput"]
                 for r in rows if r["backend"] == "reference" and r.get("status") == "ok"}
    for row in rows:
        key = (row["section"], row.get("case"), row.get("dtype"), row["batch"])
        if row.get("status") == "ok" and row.get("vs_reference") is None and key in reference:
            row["vs_reference"] = row["throughput"] / reference[key]


def bench(command: Command, sizes: Sizes) -> None:
    """The eager rows into ``$OUT/bench.json``, the compile rows into ``$OUT/bench_compile.json``,
    then both joined into ``bench.json``."""
    eager, compiled = bench_plans(sizes)
    steps = [("bench", eager, command.out / "bench.json"),
             ("bench_compile", compiled, command.out / "bench_compile.json")]
    run_bench(command, sizes, "bench", eager, sizes.bench_eager_s, steps[0][2], reserve_s=PACK_S)
    run_bench(command, sizes, "bench_compile", compiled, sizes.bench_compile_s, steps[1][2], reserve_s=PACK_S)
    joined = join_bench(steps, command.verdicts)
    temporary = command.out / ".bench.json.tmp"
    temporary.write_text(json.dumps(joined, indent=2) + "\n")
    os.replace(temporary, command.out / "bench.json")
    steps[1][2].unlink(missing_ok=True)
    counts = collections.Counter(row["status"] for row in joined["rows"])
    command.say(f"bench.json: {len(joined['rows'])} rows ({', '.join(f'{n} {s}' for s, n in counts.items())})")


def cmd1(out: Path, dry_run: bool, total_s: float | None = None, work: Path | None = None) -> int:
    """Build the CUDA extension, run the GPU tests on the compiled kernels, then the bench rows."""
    stopped = stop_for_missing_modules("cmd1")
    if stopped is not None:
        return stopped
    sizes = DRY if dry_run else GPU
    command = Command("cmd1", total_s or sizes.cmd1_total_s, out, dry_run, work)
    eager, compiled = bench_plans(sizes)
    command.say(f"plan: install (box {sizes.install_box_s:g} s); build ({sizes.build_box_s:g} s); tests (selected "
                f"tests x {sizes.test_allowance_s:g} s + {sizes.test_overhead_s:g} s); eager rows {eager} (budget "
                f"{sizes.bench_eager_s:g} s); compile rows {compiled} (budget up to {sizes.bench_compile_s:g} s of "
                f"what is left); packing ({PACK_S:g} s)")
    env_txt = _environment(command)
    _install(command, sizes)
    _build(command, sizes)
    run_gpu_tests(command, sizes, gpu_test_files(),
                  reserve_s=sizes.bench_eager_s + sizes.bench_tail_s + PACK_S)
    bench(command, sizes)
    build_log = command.work / "build.log"
    if build_log.exists():
        (command.work / "build_tail.log").write_text("\n".join(_tail(build_log, 120)) + "\n")
    command.pack("cmd1.tar.gz", [env_txt, command.work / "build_tail.log", command.work / "collect.log",
                                 command.work / "tests.log", command.work / "tests.xml", command.work / "bench.log",
                                 command.work / "bench_compile.log", command.work / "install.log"])
    return 0


# ----------------------------------------------------------------------------- command 2


def _train(command: Command, sizes: Sizes, run_dir: Path) -> None:
    """``labfast train`` for the time left less what export, evaluation and packing need; its
    ``config.json`` and ``metrics.csv`` are copied to ``$OUT`` while it trains."""
    if command.dry_run:
        budget_min = DRY_TRAIN_BUDGET_MIN
    else:  # 10 s of the rest: starting Python, reading the faces and building the model come before the clock
        budget_min = (command.remaining() - sizes.after_training_s - 10) / 60
    if budget_min <= 0:
        command.skip("train", f"no time left ({command.remaining():.0f} s, {sizes.after_training_s:.0f} s kept for "
                              "export and evaluation)")
        return
    settings = [*sizes.train_settings, f"batch_size={sizes.train_batch}", f"time_budget_minutes={budget_min:.2f}"]
    command.say(f"training budget {budget_min:.2f} min (the schedule is sized to it after two epochs)")
    results = [run_dir / "config.json", run_dir / "metrics.csv"]
    command.step("train", command.labfast("train", "--config", "300w", "--data-root", sizes.data_root,
                                          "--out", str(run_dir), *[f"--set={item}" for item in settings]),
                 box_s=60 * budget_min + sizes.train_grace_s, reserve_s=sizes.after_training_s - 20,
                 interrupt_grace_s=sizes.train_grace_s, on_tick=lambda: command.copy_out(results))
    command.copy_out(results)


def _export(command: Command, sizes: Sizes, best: Path) -> Path | None:
    """The float16 inference weights of ``best`` cut into ``$OUT/weights.part*``; their path, or ``None``."""
    weights = command.work / WEIGHTS_NAME
    command.step("export", command.python(__file__, "release", str(best), str(weights)), sizes.export_box_s)
    if not weights.exists():
        return None
    parts = split_weights(weights, command.out)
    command.say(f"weights: {weights.stat().st_size / MiB:.2f} MiB in {len(parts)} parts")
    return weights


def _evaluate(command: Command, sizes: Sizes, cases: list[tuple[str, Path | None, list[str], str]]) -> None:
    """``labfast eval`` of each case ``(name, checkpoint, flags, what)``; after each, every
    evaluation so far is rewritten to ``$OUT/evaluations.json``."""
    evaluations = {}
    for name, checkpoint_path, flags, what in cases:
        if checkpoint_path is None:
            command.skip(name, f"no {what}")
            continue
        command.step(name, command.labfast("eval", "--checkpoint", str(checkpoint_path), "--dataset", "300w",
                                           "--data-root", sizes.data_root, "--subset", "common",
                                           "--out", str(command.work / name), *flags),
                     sizes.eval_box_s, reserve_s=PACK_S)
        metrics = command.work / name / "metrics.json"
        if metrics.exists():
            evaluations[name] = {"checkpoint": what, "metrics": json.loads(metrics.read_text())}
            temporary = command.out / ".evaluations.json.tmp"
            temporary.write_text(json.dumps(evaluations, indent=2) + "\n")
            os.replace(temporary, command.out / "evaluations.json")


def cmd2(out: Path, dry_run: bool, total_s: float | None = None, work: Path | None = None) -> int:
    """Train the paper model on all training faces inside the time left, then export the float16
    weights that ship and evaluate them (and the float32 checkpoint they came from)."""
    stopped = stop_for_missing_modules("cmd2")
    if stopped is not None:
        return stopped
    sizes = DRY if dry_run else GPU
    command = Command("cmd2", total_s or sizes.cmd2_total_s, out, dry_run, work)
    env_txt = _environment(command)
    _install(command, sizes)
    run_dir = command.work / "train"
    _train(command, sizes, run_dir)
    best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    members = [env_txt, command.work / "install.log", command.work / "train.log", run_dir / "config.json",
               run_dir / "metrics.csv"]
    if not best.exists():
        for name in ("export", "eval", "eval_flip", "eval_fp32"):
            command.skip(name, "training left no checkpoint")
    else:
        command.say(f"exporting and evaluating {best.name}")
        weights = _export(command, sizes, best)  # first: the weights are what a lost evaluation cannot replace
        _evaluate(command, sizes, [
            ("eval", weights, [], f"{WEIGHTS_NAME} (float16, the file that ships)"),
            ("eval_flip", weights, ["--flip"], f"{WEIGHTS_NAME} (float16, the file that ships), flip-averaged"),
            ("eval_fp32", best, [], f"{best.name} (float32, the training checkpoint)"),
        ])
        for name in ("export", "eval", "eval_flip", "eval_fp32"):
            members += [command.work / f"{name}.log", command.work / name]
    command.pack("cmd2.tar.gz", members)
    return 0


def release(checkpoint_path: Path, dest: Path) -> None:
    """The inference weights of a training checkpoint: float16, without the discriminator (a
    training-only part), through ``labfast export``'s release (which reports the float16 change)."""
    import torch

    from labfast import checkpoint
    from labfast.inference.export import release as release_checkpoint

    model, info = checkpoint.load_model(checkpoint_path)
    inference = inference_model(model)
    with torch.no_grad():
        change = release_checkpoint(inference.eval(), info, dest, half=True)
    parameters = sum(p.numel() for p in inference.parameters())
    print(f"wrote {dest}: {parameters / 1e6:.3f} M parameters in float16, {dest.stat().st_size / MiB:.2f} MiB; "
          f"largest landmark change from float16 on a random batch: {change:.3g} px")


def inference_model(model):
    """``model`` without its discriminator (a training-only part), same weights."""
    from labfast.model import LAB

    config = dataclasses.replace(model.config, discriminator=False)
    inference = LAB(model.scheme, config, boundary_scheme=model.boundary_scheme)
    inference.load_state_dict({name: value for name, value in model.state_dict().items()
                               if not name.startswith("discriminator.")})
    return inference


# ----------------------------------------------------------------------------- weights in parts


def split_weights(weights: Path, out: Path) -> list[Path]:
    """``out/weights.part1..N`` (N >= 2, equal cuts, each under ``PART_SIZE``) and
    ``out/weights.sha256`` (``sha256sum`` format, naming the joined file)."""
    payload = weights.read_bytes()
    count = max(2, -(-len(payload) // PART_SIZE))
    cut = -(-len(payload) // count)
    parts = []
    for index in range(count):
        part = out / f"weights.part{index + 1}"
        part.write_bytes(payload[index * cut:(index + 1) * cut])
        parts.append(part)
    (out / "weights.sha256").write_text(f"{hashlib.sha256(payload).hexdigest()}  {weights.name}\n")
    return parts


def join_weights(folder: Path, dest: Path | None = None) -> Path:
    """Rebuild the weights from ``folder``'s parts; the SHA-256 must match ``weights.sha256``."""
    record = (folder / "weights.sha256").read_text().split()
    if len(record) != 2:
        raise SystemExit(f"{folder / 'weights.sha256'} is not one '<sha256>  <name>' line")
    digest, name = record
    parts = sorted(folder.glob("weights.part*"), key=lambda path: int(path.name.removeprefix("weights.part")))
    if len(parts) < 2 or [p.name for p in parts] != [f"weights.part{i + 1}" for i in range(len(parts))]:
        raise SystemExit(f"{folder}: expected weights.part1 .. weights.partN (N >= 2), found {[p.name for p in parts]}")
    payload = b"".join(part.read_bytes() for part in parts)
    got = hashlib.sha256(payload).hexdigest()
    if got != digest:
        raise SystemExit(f"{folder}: the joined parts have SHA-256 {got}, weights.sha256 says {digest}: a part is "
                         "missing, truncated or from another run")
    dest = dest or folder / name
    temporary = dest.with_name(dest.name + ".tmp")
    temporary.write_bytes(payload)
    os.replace(temporary, dest)
    print(f"joined {len(parts)} parts into {dest} ({len(payload) / MiB:.2f} MiB, SHA-256 {digest} checked)")
    return dest


# ----------------------------------------------------------------------------- preparing the data


def paper_weights_size() -> tuple[int, int]:
    """``(parameters, bytes)`` of the weights command 2 ships: the paper model in float16 without
    its discriminator, saved as ``release`` saves it (untrained weights: the size is the same)."""
    import torch

    from labfast import checkpoint
    from labfast.model import LAB, config_by_name

    model = inference_model(LAB("300w", config_by_name("paper")))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / WEIGHTS_NAME
        with torch.no_grad():
            checkpoint.save(path, checkpoint.model_payload(model, half=True))
        return sum(p.numel() for p in model.parameters()), path.stat().st_size


def prepare(source: Path, dest: Path, train_quality: int | None) -> int:
    """Copy the 300-W crops into ``dest`` (an ignored folder the device call carries); with
    ``train_quality`` the training JPEGs are re-encoded at that quality (the test crops stay as
    they are); then print the sizes against the 64 MiB a device call may send, now and once the
    paper model's weights are tracked."""
    if not (source / "README.md").is_file():
        raise SystemExit(f"prepare: {source} is not the 300-W folder (no README.md); pass --source")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)
    if train_quality is not None:
        import cv2

        for image in dest.rglob("*.jpg"):
            if "testset" in image.parts:
                continue
            pixels = cv2.imread(str(image))
            if pixels is None:
                raise SystemExit(f"prepare: cannot read {image}")
            cv2.imwrite(str(image), pixels, [cv2.IMWRITE_JPEG_QUALITY, train_quality])
    data = _bytes(dest.rglob("*"))
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode().split("\0")
    repository = _bytes(ROOT / name for name in tracked if name)
    total = data + repository
    parameters, weights = paper_weights_size()
    what = f"training JPEGs at quality {train_quality}" if train_quality else f"as in {source.name}"
    print(f"{dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}: {data / MiB:.1f} MiB ({what})")
    print(f"repository (tracked and untracked-not-ignored files): {repository / MiB:.1f} MiB")
    print(f"a device call carrying it sends {total / MiB:.1f} MiB of the {SEND_LIMIT / MiB:.0f} MiB allowed")
    print(f"paper model weights as command 2 ships them: {parameters / 1e6:.2f} M parameters, {weights / MiB:.1f} MiB "
          f"in float16; once tracked, a call would send {(total + weights) / MiB:.1f} MiB")
    if total > SEND_LIMIT:
        print("too much for one device call: re-encode the training crops (--train-quality 80)", file=sys.stderr)
        return 1
    return 0


def _bytes(paths) -> int:
    return sum(path.stat().st_size for path in paths if path.is_file() and not path.is_symlink())


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_run.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("cmd1", "cmd2"):
        sub = commands.add_parser(name)
        sub.add_argument("--total", type=float, default=None,
                         help=f"seconds the steps must end within: the device call's limit less a margin "
                              f"(benchmarks/GPU_RUN.md; default {getattr(GPU, name + '_total_s'):.0f}, "
                              f"dry run {getattr(DRY, name + '_total_s'):.0f})")
        sub.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny sizes")
        sub.add_argument("--out", default=None, help="result folder (default $OUT, else runs/gpu_run/out)")
        sub.add_argument("--work", default=None, help="folder for logs and the run (default runs/gpu_run/CMD; emptied first)")
    sub = commands.add_parser("prepare")
    sub.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "300w"))
    sub.add_argument("--dest", default=str(ROOT / GPU.data_root))
    sub.add_argument("--train-quality", type=int, default=None, help="re-encode the training JPEGs at this quality")
    sub = commands.add_parser("join")
    sub.add_argument("folder", help="where weights.part1.. and weights.sha256 lie")
    sub.add_argument("--dest", default=None, help="the joined file (default: the name weights.sha256 gives, in FOLDER)")
    sub = commands.add_parser("release", help="(a step of cmd2) inference weights of a checkpoint in float16")
    sub.add_argument("checkpoint")
    sub.add_argument("dest")
    args = parser.parse_args(argv)
    if args.command in ("cmd1", "cmd2"):
        if args.total is not None and not args.total > 0:
            raise SystemExit(f"gpu_run.py {args.command}: --total {args.total} must be a positive number of seconds")
        out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu_run" / "out")
        work = Path(args.work).resolve() if args.work else None
        return (cmd1 if args.command == "cmd1" else cmd2)(out.resolve(), args.dry_run, args.total, work)
    if args.command == "prepare":
        return prepare(Path(args.source), Path(args.dest).resolve(), args.train_quality)
    if args.command == "join":
        join_weights(Path(args.folder), Path(args.dest) if args.dest else None)
        return 0
    release(Path(args.checkpoint), Path(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
