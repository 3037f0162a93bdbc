"""End-to-end training speed of the ``300w_cpu`` preset on the CPU: ``labfast train`` as a user runs
it (the loader's worker decoding and augmenting crops on the same cores as the step), with the
plain step (every speed switch off), as the preset ships (the convolutions on torch's threads, the
compiled step's generated loops on one), as it shipped before (on one thread) and with the loops on
torch's threads too, alternated run by run.

Each run is ``python -m labfast train --config 300w_cpu --set max_steps=<steps> --set log_every=1``
in a fresh folder; its figure is the median of the loop's own per-step images/s (``metrics.csv``,
wall time from one step's end to the next: loading, upload, step and logging) over the steps after
the first ``--skip`` (the loader filling its queue, the compiled step's first call). Runs alternate
configuration by configuration, round after round, so a neighbour's load falls on all alike; the
ratios are over plain, each configuration's figure the median over its runs. The 1-minute load average is recorded before
and after every run.

    python benchmarks/train_end_to_end_cpu.py --rounds 2 --steps 60 \\
        --json benchmarks/results/train-end-to-end-cpu-<date>.json
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from labfast.perf import devices

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "300w"
CONFIGURATIONS = {
    "plain": ["threads=0", "compile_step=false", "dense_message_passing=false", "fused_adam=false"],
    "shipped": [],
    "shipped, 1 thread": ["threads=1", "inductor_threads=0"],
    "shipped, loops on torch's threads": ["inductor_threads=0"],
}


def one_run(name: str, steps: int, skip: int, data_root: Path) -> dict:
    """One ``labfast train`` run of ``steps`` steps: its per-step images/s after ``skip`` and timings."""
    with tempfile.TemporaryDirectory(prefix=f"e2e-{name}-") as out:
        command = [sys.executable, "-m", "labfast", "train", "--config", "300w_cpu", "--data-root", str(data_root),
                   "--out", out, "--set", f"max_steps={steps}", "--set", "log_every=1"]
        for setting in CONFIGURATIONS[name]:
            command += ["--set", setting]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        with open(Path(out) / "metrics.csv", newline="") as stream:
            rates = [float(row["value"]) for row in csv.DictReader(stream) if row["name"] == "images_per_second"]
    measured = rates[skip:]
    return {"name": name, "images_per_second_median": statistics.median(measured),
            "images_per_second_mean_of_time": len(measured) / sum(1 / rate for rate in measured),
            "steps_measured": len(measured), "process_seconds": seconds,
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=10)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    runs = []
    for _ in range(args.rounds):
        for name in args.configurations:
            runs.append(one_run(name, args.steps, args.skip, args.data_root))
            print(json.dumps(runs[-1]), flush=True)
    medians = {name: statistics.median(run["images_per_second_median"] for run in runs if run["name"] == name)
               for name in args.configurations}
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu": devices.describe(torch.device("cpu"))["name"], "cores": len(os.sched_getaffinity(0)),
              "versions": devices.versions(), "steps": args.steps, "skip": args.skip, "runs": runs,
              "images_per_second": medians,
              "over_plain": {name: rate / medians["plain"] for name, rate in medians.items()} if "plain" in medians else {}}
    print(json.dumps({key: report[key] for key in ("images_per_second", "over_plain")}))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
