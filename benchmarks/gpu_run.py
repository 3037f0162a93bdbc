"""The GPU day: two commands for a lent GPU, each a list of time-boxed, independent steps.

    python3 benchmarks/gpu_run.py prepare [--train-quality Q]   here: data into gpu_data/300w, sizes printed
    python3 benchmarks/gpu_run.py cmd1 [--dry-run]              there: build, GPU tests, benchmark rows
    python3 benchmarks/gpu_run.py cmd2 [--dry-run]              there: train the paper model, evaluate, export
    python3 benchmarks/gpu_run.py join DIR [--dest PATH]        here: rebuild the fp16 weights from their parts

benchmarks/GPU_RUN.md gives the exact device calls and what comes back. Every step runs as its own
process under a time box (the smaller of its own and what is left of its command's total), with its
output in its own log; a step that fails or runs out of time is logged and the next one runs. Result
files go to ``$OUT`` (at most 8 files of at most 16 MiB come back from a device call):

- cmd1: ``bench.json`` (the ``labfast bench`` rows; rewritten after every row) and ``cmd1.tar.gz``
  (steps.log, env.txt, the build log's tail, the GPU test summary and junit XML, the bench log).
- cmd2: ``weights.part1``, ``weights.part2`` (the paper model's inference weights in float16 without
  the discriminator, cut in two under 16 MiB each), ``weights.sha256`` and ``cmd2.tar.gz`` (steps.log,
  env.txt, config.json, metrics.csv, the training log, both evaluations).

``--dry-run`` runs the same steps on the CPU with tiny sizes (the tiny model, the bundled sample faces,
seconds instead of minutes; no CUDA build) and writes the same file names: ``tests/test_gpu_run.py``
runs it, so on the GPU day only the GPU itself is new.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
#: What one device call may send (repository + carried paths) and bring back per file.
SEND_LIMIT = 64 * MiB
FILE_LIMIT = 16 * MiB
#: Weights are cut into parts of at most this size (under FILE_LIMIT with room to spare).
PART_SIZE = 15 * MiB
WEIGHTS_NAME = "lab_300w_paper.pt"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU day and the dry run on the CPU."""

    cmd1_total_s: float  # each command's steps end within this (the device call's timeout_s is a little more)
    cmd2_total_s: float
    build_box_s: float
    tests_box_s: float
    bench_budget_s: float  # labfast bench --budget: rows not begun by then are skipped
    bench_config: str
    bench_dtype: str
    infer_batch: int
    train_batch: int  # command 2's batch, also the bench's training-step row
    data_root: str
    train_settings: tuple[str, ...]  # labfast train --set, besides the batch and the time budget
    eval_box_s: float
    export_box_s: float
    after_training_s: float  # expected time of export + both evaluations + packing, kept from training
    train_grace_s: float  # after the time budget: SIGINT, then this long before SIGKILL


GPU = Sizes(
    cmd1_total_s=225, cmd2_total_s=345, build_box_s=110, tests_box_s=50, bench_budget_s=150,
    bench_config="paper", bench_dtype="bf16", infer_batch=256, train_batch=32, data_root="gpu_data/300w",
    # all 2,012 training faces (1,911 trained on, 101 held out), the paper model, bf16, channels_last;
    # 12 loader workers of the 16 cores (the main process and the GPU's feeding keep the rest)
    train_settings=("model=paper", "amp=bf16", "channels_last=true", "num_workers=12", "log_every=20"),
    eval_box_s=45, export_box_s=40, after_training_s=80, train_grace_s=30,
)
#: The dry run trains in float32 with the default memory format: bfloat16 on a CPU is far slower
#: (a tiny-model forward took 10 s on a busy 2-core machine; tests/train/test_loop.py covers bf16 and
#: channels_last there), and with float32, channels_last training crashed in the backward pass
#: (SIGSEGV, torch 2.13.0+cpu, 2026-11-28).
DRY = Sizes(
    cmd1_total_s=150, cmd2_total_s=150, build_box_s=30, tests_box_s=60, bench_budget_s=10,
    bench_config="tiny", bench_dtype="fp32", infer_batch=2, train_batch=4, data_root="data/300w_sample",
    train_settings=("model=tiny", "amp=none", "channels_last=false", "num_workers=0", "log_every=1",
                    "train_subset=common", "train_limit=10", "val_fraction=0.2"),
    eval_box_s=40, export_box_s=40, after_training_s=60, train_grace_s=40,
)
#: labfast train --set time_budget_minutes: the dry run's (command 2 on the GPU computes its own).
DRY_TRAIN_BUDGET_MIN = 0.1


def bench_plan(sizes: Sizes, dry_run: bool) -> str:
    """The rows of command 1, most wanted first (the issue's order). On the CPU the compile rows
    are left out: compiling the model takes minutes there."""
    items = [
        f"infer@{sizes.infer_batch}=reference,compile,fast+compile",
        "infer@1=reference,fast,fast+cudagraphs",
        f"train@{sizes.train_batch}=reference,compile,fast",
        f"heatmaps@{sizes.infer_batch}",
        f"kernels@{sizes.infer_batch}=reference,fast (triton),fast (cuda)",
    ]
    if dry_run:
        items = [item.replace(",fast+compile", "").replace(",compile", "") for item in items]
    return ";".join(items)


# ----------------------------------------------------------------------------- steps


class Command:
    """One device command: a clock, a work folder, ``$OUT`` and a log of its steps."""

    def __init__(self, name: str, total_s: float, out: Path, dry_run: bool, work: Path | None = None):
        self.name, self.total_s, self.dry_run = name, total_s, dry_run
        self.start = time.monotonic()
        self.out = out
        self.work = work or ROOT / "runs" / "gpu_run" / name
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps_log = self.work / "steps.log"
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
        self.say(f"step {name}: skipped: {reason}")

    def step(self, name: str, argv: list[str], box_s: float, reserve_s: float = 0.0,
             env: dict[str, str] | None = None, interrupt_grace_s: float | None = None) -> int | None:
        """Run ``argv`` as its own process group, output to ``<work>/<name>.log``, for at most
        ``box_s`` and never past the command's total less ``reserve_s``. Returns the exit status,
        or ``None`` when it was stopped at its time box or could not start.

        ``interrupt_grace_s``: at the time box send SIGINT first (Python stops with
        KeyboardInterrupt, files written atomically stay whole) and SIGKILL only that long after.
        """
        box = min(box_s, self.remaining() - reserve_s)
        if box <= 1:
            self.skip(name, f"no time left ({self.remaining():.0f} s of the command, {reserve_s:.0f} s reserved)")
            return None
        log = self.work / f"{name}.log"
        self.say(f"step {name}: {' '.join(argv)} (time box {box:.0f} s)")
        tick = time.monotonic()
        with log.open("w") as stream:
            try:
                process = subprocess.Popen(argv, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                                           env={**os.environ, **self.environment, **(env or {})},
                                           start_new_session=True)
            except OSError as error:
                self.say(f"step {name}: could not start: {error}")
                return None
            status = _wait(process, box, interrupt_grace_s)
        seconds = time.monotonic() - tick
        verdict = "stopped at its time box" if status is None else "ok" if status == 0 else f"FAILED (exit {status})"
        self.say(f"step {name}: {verdict} after {seconds:.1f} s; last lines of {log.name}:")
        for line in _tail(log, 8):
            print(f"    {line}", flush=True)
        return status

    def python(self, *arguments: str) -> list[str]:
        return [sys.executable, *arguments]

    def labfast(self, *arguments: str) -> list[str]:
        return [sys.executable, "-m", "labfast", *arguments]

    def pack(self, archive: str, members: list[Path]) -> None:
        """``$OUT/<archive>``: the steps log, then each member that exists (named relative to the work folder)."""
        path = self.out / archive
        self.say(f"packing {path.name}")
        with tarfile.open(path, "w:gz") as tar:
            for member in [*members, self.steps_log]:
                if member.exists():
                    tar.add(member, arcname=str(member.relative_to(self.work)))
        self.say(f"wrote {path} ({path.stat().st_size / MiB:.2f} MiB); {self.remaining():.0f} s of the command left")


def _wait(process: subprocess.Popen, box: float, interrupt_grace_s: float | None) -> int | None:
    """The exit status, or ``None`` after stopping the whole process group at the time box."""
    try:
        return process.wait(timeout=box)
    except subprocess.TimeoutExpired:
        pass
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


def _cuda_reason() -> str | None:
    """``None`` where a CUDA build can be made and used (nvcc on the PATH, a GPU torch sees), else why not."""
    if shutil.which("nvcc") is None:
        return "no CUDA (no nvcc on the PATH)"
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "True":
        return "no CUDA (torch sees no GPU)"
    return None


def _environment(command: Command) -> Path:
    """``env.txt``: the GPU, driver, Python and package versions of this machine."""
    path = command.work / "env.txt"
    probes = [["nvidia-smi", "-L"], ["nvcc", "--version"],
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
    return path


def _install(command: Command) -> None:
    if command.dry_run:  # never reinstall into the environment the tests run in
        command.step("install", command.python("-c", "import labfast; print('labfast from', labfast.__file__)"), 30)
    else:
        command.step("install", [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                 "--no-index", "-e", "."], 90)


# ----------------------------------------------------------------------------- command 1


def cmd1(out: Path, dry_run: bool, work: Path | None = None) -> int:
    """Build the CUDA extension, run the GPU tests on the compiled kernels, then the bench rows."""
    sizes = DRY if dry_run else GPU
    command = Command("cmd1", sizes.cmd1_total_s, out, dry_run, work)
    env_txt = _environment(command)
    _install(command)
    reason = "dry run" if dry_run else _cuda_reason()
    if reason is not None:
        command.skip("build", f"{reason}: labfast._cuda not built; CUDA rows and tests report it")
    else:
        command.step("build", command.python("setup.py", "build_ext", "--inplace"), sizes.build_box_s,
                     env={"LABFAST_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": str(os.cpu_count() or 4)})
    # the bench needs its budget; the tests get what is left before it
    tests_env = {} if dry_run else {"TRITON_INTERPRET": "0"}  # compiled kernels, not the interpreter
    command.step("tests", command.python("-m", "pytest", "-m", "gpu", "tests", "-q", "-rfEs", "-p", "no:cacheprovider",
                                         f"--junitxml={command.work / 'tests.xml'}"),
                 sizes.tests_box_s, reserve_s=min(sizes.bench_budget_s, 60), env=tests_env)
    bench_json = command.out / "bench.json"
    # rows stop beginning at the budget; a row begun late may run on, so the step's box is the rest
    budget = max(1.0, min(sizes.bench_budget_s, command.remaining() - 30))
    command.step("bench", command.labfast("bench", "--plan", bench_plan(sizes, dry_run), "--budget", f"{budget:.0f}",
                                          "--config", sizes.bench_config, "--dtype", sizes.bench_dtype,
                                          "--json", str(bench_json)) + (["--repeats", "1", "--min-time", "0"] if dry_run else []),
                 box_s=command.remaining(), reserve_s=8)
    if not bench_json.exists():  # the same file names whatever happened: say why it is empty
        bench_json.write_text(json.dumps({"schema": 1, "rows": [], "error": "labfast bench wrote no row; see cmd1.tar.gz"}) + "\n")
    build_log = command.work / "build.log"
    if build_log.exists():
        (command.work / "build_tail.log").write_text("\n".join(_tail(build_log, 120)) + "\n")
    command.pack("cmd1.tar.gz", [env_txt, command.work / "build_tail.log", command.work / "tests.log",
                                 command.work / "tests.xml", command.work / "bench.log", command.work / "install.log"])
    return 0


# ----------------------------------------------------------------------------- command 2


def cmd2(out: Path, dry_run: bool, work: Path | None = None) -> int:
    """Train the paper model on all training faces inside the time left, then export and evaluate it."""
    sizes = DRY if dry_run else GPU
    command = Command("cmd2", sizes.cmd2_total_s, out, dry_run, work)
    env_txt = _environment(command)
    _install(command)
    run_dir = command.work / "train"
    if dry_run:
        budget_min = DRY_TRAIN_BUDGET_MIN
    else:  # 10 s of the rest: starting Python, reading the faces and building the model come before the clock
        budget_min = (command.remaining() - sizes.after_training_s - 10) / 60
    settings = [*sizes.train_settings, f"batch_size={sizes.train_batch}", f"time_budget_minutes={budget_min:.2f}"]
    command.say(f"training budget {budget_min:.2f} min (the schedule is sized to it after two epochs)")
    command.step("train", command.labfast("train", "--config", "300w", "--data-root", sizes.data_root,
                                          "--out", str(run_dir), *[f"--set={item}" for item in settings]),
                 box_s=60 * budget_min + sizes.train_grace_s, reserve_s=sizes.after_training_s - 20,
                 interrupt_grace_s=sizes.train_grace_s)
    best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    members = [env_txt, command.work / "install.log", run_dir / "config.json", run_dir / "metrics.csv",
               command.work / "train.log"]
    if not best.exists():
        for name in ("export", "eval", "eval_flip"):
            command.skip(name, "training left no checkpoint")
    else:
        command.say(f"exporting and evaluating {best.name}")
        weights = command.work / WEIGHTS_NAME  # first: the weights are what a lost evaluation cannot replace
        command.step("export", command.python(__file__, "release", str(best), str(weights)), sizes.export_box_s)
        members.append(command.work / "export.log")
        if weights.exists():
            split_weights(weights, command.out)
            command.say(f"weights: {weights.stat().st_size / MiB:.2f} MiB in {len(list(command.out.glob('weights.part*')))} parts")
        for name, flip in (("eval", []), ("eval_flip", ["--flip"])):
            command.step(name, command.labfast("eval", "--checkpoint", str(best), "--dataset", "300w",
                                               "--data-root", sizes.data_root, "--subset", "common",
                                               "--out", str(command.work / name), *flip), sizes.eval_box_s, reserve_s=5)
            members += [command.work / f"{name}.log", command.work / name]
    command.pack("cmd2.tar.gz", members)
    return 0


def release(checkpoint_path: Path, dest: Path) -> None:
    """The inference weights of a training checkpoint: float16, without the discriminator (a
    training-only part), through ``labfast export``'s release (which reports the float16 change)."""
    import torch

    from labfast import checkpoint
    from labfast.inference.export import release as release_checkpoint
    from labfast.model import LAB

    model, info = checkpoint.load_model(checkpoint_path)
    config = dataclasses.replace(model.config, discriminator=False)
    inference = LAB(model.scheme, config, boundary_scheme=model.boundary_scheme)
    inference.load_state_dict({name: value for name, value in model.state_dict().items()
                               if not name.startswith("discriminator.")})
    with torch.no_grad():
        change = release_checkpoint(inference.eval(), info, dest, half=True)
    parameters = sum(p.numel() for p in inference.parameters())
    print(f"wrote {dest}: {parameters / 1e6:.3f} M parameters in float16, {dest.stat().st_size / MiB:.2f} MiB; "
          f"largest landmark change from float16 on a random batch: {change:.3g} px")


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


def prepare(source: Path, dest: Path, train_quality: int | None) -> int:
    """Copy the 300-W crops into ``dest`` (an ignored folder the device call carries); with
    ``train_quality`` the training JPEGs are re-encoded at that quality (the test crops stay as
    they are); then print the sizes against the 64 MiB a device call may send."""
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
    print(f"{dest}: {data / MiB:.1f} MiB ({'training JPEGs at quality ' + str(train_quality) if train_quality else 'as in ' + str(source)})")
    print(f"repository (tracked and untracked-not-ignored files): {repository / MiB:.1f} MiB")
    print(f"a device call carrying {dest} sends {total / MiB:.1f} MiB of the {SEND_LIMIT / MiB:.0f} MiB allowed")
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
        out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu_run" / "out")
        work = Path(args.work).resolve() if args.work else None
        return (cmd1 if args.command == "cmd1" else cmd2)(out.resolve(), args.dry_run, work)
    if args.command == "prepare":
        return prepare(Path(args.source), Path(args.dest).resolve(), args.train_quality)
    if args.command == "join":
        join_weights(Path(args.folder), Path(args.dest) if args.dest else None)
        return 0
    release(Path(args.checkpoint), Path(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
