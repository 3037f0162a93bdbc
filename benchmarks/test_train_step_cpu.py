"""The shipped CPU preset's training step (``300w_cpu``): the plain step, as ``labfast train`` ran it
before the speed switches (``labfast.train.speed``), against each switch and the preset as it ships.

Every case is one full ``labfast.train.step.train_step`` (forward, ground truth, losses, backward,
both optimiser steps) on a batch of 16 augmented 300-W training crops (128 px, uint8, as the
training loader makes them), on the CPU, from the same initial weights:

- ``plain``: every switch off, torch's default threads (one per core): the step before;
- ``plain, 1 thread``: the ``threads`` switch alone;
- ``dense message passing``, ``fused Adam``, ``compiled step``: one switch each, on one thread;
- ``shipped``: the preset as it ships (every switch on: the convolutions and eager operators on
  torch's default threads, the compiled step's generated loops on one); ``shipped, loops on torch's
  threads``: the loops on torch's threads too; ``shipped, 1 thread``: everything on one thread (the
  preset before 2026-12-06, for a CPU shared with other work).

Measured **interleaved**: each round runs one step of every case (threads set per case), so a
neighbour's load on a shared CPU falls on all of them alike. Per case: images/s from the median
wall time, the median CPU time of the process per step (all its threads: a thread that
spin-waits burns CPU too), the wall-time ratio to ``plain`` and the CPU-time ratio to ``plain, 1
thread`` (the work each step does, whatever the load); the load average (1 min) before, during
and after, versions, CPU and date. The compiled cases compile in their warm-up steps (minutes;
Inductor caches them on disk), timed apart.

    python benchmarks/test_train_step_cpu.py --rounds 20 --json benchmarks/results/train-step-cpu-<date>.json
    python benchmarks/test_train_step_cpu.py --profile shipped   # where the time goes
    pytest benchmarks/test_train_step_cpu.py --benchmark-json out.json   # 6 rounds; shipped faster than plain, ratios in extra_info
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from labfast import data
from labfast.perf import devices
from labfast.train import faces, presets
from labfast.train.build import build_model, to_training_device
from labfast.train.runtime import Runtime
from labfast.train.step import build_trainer, train_step

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "300w"
PLAIN = ["threads=0", "compile_step=false", "dense_message_passing=false", "fused_adam=false"]
CASES = {
    "plain": PLAIN,
    "plain, 1 thread": PLAIN + ["threads=1"],
    "dense message passing": PLAIN + ["threads=1", "dense_message_passing=true"],
    "fused Adam": PLAIN + ["threads=1", "fused_adam=true"],
    "compiled step": PLAIN + ["threads=1", "compile_step=true"],
    "shipped": [],
    "shipped, loops on torch's threads": ["inductor_threads=0"],
    "shipped, 1 thread": ["threads=1", "inductor_threads=0"],
}


def batches(data_root: Path, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` training batches of the preset: augmented crops (uint8) and their landmarks."""
    config = presets.override(presets.get("300w_cpu"), [f"data_root={data_root}"])
    train_faces, _ = faces.read_training_faces(config)
    dataset = data.FaceDataset(train_faces, "300w", input_size=config.input_size, train=True,
                               augment=config.augment, seed=config.seed)
    made = []
    for first in range(0, count * config.batch_size, config.batch_size):
        batch = data.collate_readable([dataset[index] for index in range(first, first + config.batch_size)])
        made.append((batch["image"], batch["landmarks"]))
    return made


def build_cases(names: list[str], data_root: Path) -> dict:
    """Name -> ``(trainer, threads)``, each from the same initial weights."""
    default_threads = torch.get_num_threads()
    made = {}
    for name in names:
        config = presets.override(presets.get("300w_cpu"), [f"data_root={data_root}", *CASES[name]])
        torch.manual_seed(config.seed)
        model = to_training_device(build_model(config), config, torch.device("cpu"))
        made[name] = (build_trainer(model, config, Runtime()), config.threads or default_threads)
    torch.set_num_threads(default_threads)
    return made


class Interleaved:
    """The cases built and warmed up (compiled); each call of :meth:`round` times one step of every case."""

    def __init__(self, names: list[str], data_root: Path = DATA_ROOT, warmup: int = 2):
        self.load = {"before": os.getloadavg()[0]}
        self.steps = batches(data_root, 4)
        self.cases = build_cases(names, data_root)
        self.warmup_seconds = {}
        for name, (trainer, threads) in self.cases.items():
            torch.set_num_threads(threads)
            start = time.perf_counter()
            for images, landmarks in self.steps[:warmup]:
                train_step(trainer, images, landmarks)
            self.warmup_seconds[name] = time.perf_counter() - start
        self.wall = {name: [] for name in self.cases}
        self.cpu = {name: [] for name in self.cases}
        self.during = []

    def round(self) -> None:
        images, landmarks = self.steps[len(self.during) % len(self.steps)]
        for name, (trainer, threads) in self.cases.items():
            torch.set_num_threads(threads)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            train_step(trainer, images, landmarks)
            self.wall[name].append(time.perf_counter() - start_wall)
            self.cpu[name].append(time.process_time() - start_cpu)
        self.during.append(os.getloadavg()[0])

    def report(self) -> dict:
        """The ``cases`` rows and the 1-minute load average before, during and after the rounds."""
        load = {**self.load, "during_median": statistics.median(self.during), "during_max": max(self.during),
                "after": os.getloadavg()[0]}
        rows = summarise(self.cases, self.wall, self.cpu, self.warmup_seconds, len(self.steps[0][0]))
        return {"machine": describe_machine(), "load_average_1min": load, "cases": rows}


def summarise(cases: dict, wall: dict, cpu: dict, warmup_seconds: dict, batch: int) -> dict:
    """Per case: threads, images/s, medians, ratios to ``plain`` (wall) and ``plain, 1 thread`` (CPU)."""
    rows = {}
    for name, (_, threads) in cases.items():
        rows[name] = {"threads": threads, "images_per_second": batch / statistics.median(wall[name]),
                      "wall_ms_median": 1e3 * statistics.median(wall[name]), "wall_ms_min": 1e3 * min(wall[name]),
                      "cpu_ms_median": 1e3 * statistics.median(cpu[name]), "warmup_s": warmup_seconds[name],
                      "rounds": len(wall[name])}
    for name, row in rows.items():
        if "plain" in rows:
            row["wall_speedup_vs_plain"] = rows["plain"]["wall_ms_median"] / row["wall_ms_median"]
        if "plain, 1 thread" in rows:
            row["cpu_work_ratio_vs_plain_1_thread"] = rows["plain, 1 thread"]["cpu_ms_median"] / row["cpu_ms_median"]
    return rows


def describe_machine() -> dict:
    return {"cpu": devices.describe(torch.device("cpu"))["name"], "cores": len(os.sched_getaffinity(0)),
            "torch_default_threads": torch.get_num_threads(), "versions": devices.versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def format_rows(rows: dict) -> str:
    lines = [f"{'case':<24}{'threads':>8}{'images/s':>10}{'wall ms':>9}{'cpu ms':>8}{'vs plain':>10}{'work':>7}"]
    for name, row in rows.items():
        lines.append(f"{name:<24}{row['threads']:>8}{row['images_per_second']:>10.1f}{row['wall_ms_median']:>9.0f}"
                     f"{row['cpu_ms_median']:>8.0f}{row.get('wall_speedup_vs_plain', 0):>9.2f}x"
                     f"{row.get('cpu_work_ratio_vs_plain_1_thread', 0):>6.2f}x")
    return "\n".join(lines)


def test_shipped_step_against_the_plain_one(benchmark):
    """The shipped step's images/s against the plain step's, both measured in the same interleaved run
    (one benchmark round = one step of every case); the ratios go to the benchmark's extra info. It
    must be faster; the target of twice as fast is not reached on a 2-core CPU (benchmarks/RESULTS.md)."""
    if not DATA_ROOT.is_dir():
        pytest.skip(f"real data folder {DATA_ROOT} is absent")
    measured = Interleaved(list(CASES))
    benchmark.pedantic(measured.round, rounds=6, iterations=1)
    report = measured.report()
    benchmark.extra_info.update(report)
    print("\n" + json.dumps(report["load_average_1min"]) + "\n" + format_rows(report["cases"]))
    assert report["cases"]["shipped"]["wall_speedup_vs_plain"] > 1


def profile(name: str, data_root: Path, steps: int = 8, top: int = 12) -> str:
    """Where one case's step spends its time: ``steps`` steps under ``torch.profiler``, each of
    Inductor's generated loops recorded as its own event (``cpp.enable_kernel_profile``); milliseconds
    per step of the main thread's self time, grouped (oneDNN convolutions forward and backward,
    Inductor's loops, the rest), then the ``top`` events."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    inductor_config.cpp.enable_kernel_profile = True
    measured = Interleaved([name], data_root)
    trainer, threads = measured.cases[name]
    torch.set_num_threads(threads)
    with profiler(activities=[ProfilerActivity.CPU]) as recorded:
        for index in range(steps):
            train_step(trainer, *measured.steps[index % len(measured.steps)])
    events = sorted(recorded.key_averages(), key=lambda event: -event.self_cpu_time_total)

    def per_step(chosen) -> float:
        return sum(event.self_cpu_time_total for event in chosen) / 1e3 / steps

    convolutions = [event for event in events if event.key in ("aten::mkldnn_convolution", "aten::convolution_backward")]
    loops = [event for event in events if event.key.startswith("graph_")]
    lines = [f"{name}: {per_step(events):.1f} ms per step: convolutions {per_step(convolutions):.1f}, "
             f"Inductor loops {per_step(loops):.1f}, the rest {per_step(events) - per_step(convolutions + loops):.1f} "
             f"(load average {os.getloadavg()[0]:.2f})"]
    lines += [f"{per_step([event]):8.1f}  {event.key[:110]}" for event in events[:top]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", choices=list(CASES), default=None,
                        help="profile this case instead of timing the cases (labfast.train.speed's levers: where the time goes)")
    args = parser.parse_args()
    if args.profile:
        print(profile(args.profile, args.data_root))
        return
    measured = Interleaved(args.cases, args.data_root)
    for _ in range(args.rounds):
        measured.round()
    report = measured.report()
    print(json.dumps({"machine": report["machine"], "load_average_1min": report["load_average_1min"]}))
    print(format_rows(report["cases"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
