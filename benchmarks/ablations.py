"""Short ablations of the CPU recipe: candidates trained on one wall-clock budget, judged two ways.

    python benchmarks/ablations.py train [NAME ...] [--budget 30] [--parallel 2]
    python benchmarks/ablations.py evaluate [NAME | NAME=RUN_FOLDER ...] [--latency 60]
    python benchmarks/ablations.py table

Each candidate is a list of overrides of the ``300w_cpu`` preset. ``train`` runs ``labfast train``
for each one in ``~/labfast-runs/ablations/<name>`` (outside the checkout) with one torch thread,
``time_budget_minutes`` (which sizes epochs and learning-rate milestones to the budget after two
epochs, ``labfast.train.schedule``), at most ``--parallel`` at once, the log in ``train.log`` of
the run folder. A folder with ``last.pt`` is resumed (``--resume``) with the schedule it was sized
to and the rest of its budget (``elapsed.json`` counts its training seconds); a folder with
``finished.json`` is skipped. A killed driver loses nothing but the minute since its last count.

``evaluate`` judges each finished run's ``best.pt`` (the best validation NME) and the shipped
weights as a reference row; ``NAME=RUN_FOLDER`` judges any training run's folder (such as the long
run of ``labfast train --config 300w_cpu_wild``) on its ``best.pt`` so far, finished or not:

- the 300-W validation split (the 5 % of the training faces held out by seed 0; 101 faces) with
  annotated boxes (the run's best validation NME, recomputed) and with YuNet boxes (a missed face
  counts as NME 1.0);
- ``../shared/data/wflw_wild_dev`` (100 WFLW faces in the wild; judging only, never training or
  stopping) with ``labfast.evaluation.wild``: faces found, FR@10 with misses failing, NME on the
  faces found and on those both labfast and dlib find, paired bootstrap intervals against dlib, and
  the CPU latency ratio to dlib in the same process (``--latency`` rounds; 0: off).

Results go to ``results/ablations-<date>.json`` (every run, its overrides, config, and figures);
``table`` prints the markdown table of that file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path.home() / "labfast-runs" / "ablations"
DATA = ROOT.parent / "shared" / "data"
PRESET = "300w_cpu"
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = "shipped"

#: The schedule every candidate trains: two epochs, the learning rate divided by 10 for the second.
#: At one thread on the shared 2-core machine an epoch of 300w_cpu takes about 14 minutes, so the
#: budget holds two: the preset's milestones (20, 26 of 30) would never be reached, and weights at
#: the starting rate judge a lever by noise. The budget stays the hard stop (a slower model is cut).
SCHEDULE = ["epochs=2", "lr_milestones=1"]

#: name -> (overrides of the preset, what it tests)
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "baseline": ([], "300w_cpu as it is"),
    "wing": (["model.landmark_loss=wing"], "Wing loss on the coordinates"),
    "wing_balance": (["model.landmark_loss=wing", "pose_balance_bins=5"],
                     "Wing loss + pose-based data balancing (5 yaw bins, cap 4)"),
    "wide": (["model.regressor_width=24"], "regressor 1.5x wider (0.42 GFLOPs, 1.83 M parameters)"),
    "balance": (["pose_balance_bins=5"], "pose-based data balancing alone (L2)"),
    "wing_balance_wide": (["model.landmark_loss=wing", "pose_balance_bins=5", "model.regressor_width=24"],
                          "the three together"),
}


def run_folder(name: str) -> Path:
    return RUNS / name


def _elapsed(folder: Path) -> float:
    path = folder / "elapsed.json"
    return json.loads(path.read_text())["seconds"] if path.exists() else 0.0


def train_command(name: str, budget_minutes: float) -> list[str] | None:
    """The ``labfast train`` command that starts or continues ``name``; ``None`` when it is finished
    or its budget is spent."""
    folder = run_folder(name)
    if (folder / "finished.json").exists():
        return None
    left = budget_minutes - _elapsed(folder) / 60
    if left <= 0.5:
        return None
    overrides = SCHEDULE + list(CANDIDATES[name][0])
    command = [sys.executable, "-m", "labfast", "train", "--config", PRESET, "--data-root", str(DATA / "300w"),
               "--out", str(folder)]
    if (folder / "last.pt").exists():
        command.append("--resume")
        saved = json.loads((folder / "config.json").read_text())
        if saved["epochs"] < int(SCHEDULE[0].split("=")[1]):  # the budget sized it down: keep that schedule
            overrides += [f"epochs={saved['epochs']}", "lr_milestones=" + ",".join(map(str, saved["lr_milestones"]))]
    return command + [arg for override in overrides + [f"time_budget_minutes={left:.2f}"] for arg in ("--set", override)]


def train(names: list[str], budget_minutes: float, parallel: int) -> None:
    """Runs the candidates' training, ``parallel`` at a time, each on one torch thread."""
    queue = [name for name in names if train_command(name, budget_minutes) is not None]
    running: dict[str, tuple[subprocess.Popen, float, float]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while queue or running:
        while queue and len(running) < parallel:
            name = queue.pop(0)
            command = train_command(name, budget_minutes)
            folder = run_folder(name)
            folder.mkdir(parents=True, exist_ok=True)
            log = (folder / "train.log").open("a")
            log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[name] = (process, time.monotonic(), _elapsed(folder))
            print(f"started {name} (pid {process.pid}) in {folder}", flush=True)
        time.sleep(30)
        for name, (process, started, before) in list(running.items()):
            folder = run_folder(name)
            (folder / "elapsed.json").write_text(json.dumps({"seconds": before + time.monotonic() - started}))
            if process.poll() is None:
                continue
            del running[name]
            print(f"{name} ended with exit status {process.returncode}", flush=True)
            if process.returncode == 0:
                (folder / "finished.json").write_text(json.dumps(
                    {"at": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": _elapsed(folder)}))


def validation_faces():
    from labfast.train.faces import held_out_faces

    return held_out_faces(PRESET, DATA / "300w")


def validation_nmes(checkpoint: Path, faces: list) -> dict:
    """Mean NME % on the held-out faces with annotated and with YuNet boxes (a miss scores 1.0)."""
    import dataclasses

    import numpy as np
    import torch

    from labfast import metrics
    from labfast.checkpoint import load_model
    from labfast.evaluation.protocols import MISSED_NME, match_detections, predict_faces

    model, _ = load_model(checkpoint)
    model.eval()
    truth = np.stack([face.landmarks for face in faces])
    boxes = np.stack([face.box for face in faces])
    device = torch.device("cpu")
    annotated = metrics.nme(predict_faces(model, faces, device, progress=False), truth, model.scheme, boxes=boxes)
    detected = match_detections(faces)
    found = np.array([box is not None for box in detected])
    yunet = np.full(len(faces), MISSED_NME)
    crops = [dataclasses.replace(face, box=box) for face, box in zip(faces, detected) if box is not None]
    yunet[found] = metrics.nme(predict_faces(model, crops, device, progress=False), truth[found], model.scheme,
                               boxes=boxes[found])
    return {"faces": len(faces), "nme_annotated": 100 * float(annotated.mean()),
            "nme_yunet": 100 * float(yunet.mean()), "fr_yunet": 100 * float((yunet > 0.1).mean()),
            "yunet_found": int(found.sum()), "nmes_annotated": [round(100 * float(v), 4) for v in annotated],
            "nmes_yunet": [round(100 * float(v), 4) for v in yunet]}


def wild(checkpoint: Path, latency_rounds: int) -> dict:
    from labfast.evaluation import wild as protocol
    from labfast import FaceAligner

    aligner = FaceAligner(str(checkpoint), device="cpu", threads=1)
    report = protocol.evaluate(aligner, DATA / "wflw_wild_dev", protocol.dlib_aligner(), latency_rounds)
    print(protocol.format_table(report), flush=True)
    return protocol.to_json(report)


def _named_folder(name: str) -> tuple[str, Path, bool]:
    """``NAME`` (a candidate of ``RUNS``) or ``NAME=FOLDER`` (any training run's folder, judged on its
    ``best.pt`` so far even while it trains) -> (name, folder, whether it must have finished)."""
    name, _, folder = name.partition("=")
    return (name, Path(folder).expanduser(), False) if folder else (name, run_folder(name), True)


def evaluate(names: list[str], latency_rounds: int, out: Path, reference: str) -> None:
    """Judges the runs and the shipped weights; merges into ``out`` (one JSON per day)."""
    import torch

    from labfast import checkpoint as checkpoints

    torch.set_num_threads(1)
    report = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    faces = validation_faces()
    for name, folder, must_finish in map(_named_folder, names):
        path = ROOT / "labfast" / "weights" / "lab_300w.pt" if name == SHIPPED else folder / "best.pt"
        if name != SHIPPED and must_finish and not (folder / "finished.json").exists():
            print(f"{name}: not finished, skipped", flush=True)
            continue
        state = checkpoints.load(path)
        # best.pt's own config holds the schedule a time budget sized; config.json the one asked for
        config = state.get("train_config") or (json.loads((folder / "config.json").read_text()) if name != SHIPPED else None)
        print(f"== {name}: {path}", flush=True)
        what = "lab_300w.pt as shipped" if name == SHIPPED else f"{folder}/best.pt"
        row = {"checkpoint": str(path), "overrides": CANDIDATES[name][0] if name in CANDIDATES else [],
               "what": CANDIDATES[name][1] if name in CANDIDATES else what,
               "epoch_of_best": state.get("epoch"), "epochs": config and config["epochs"],
               "lr_milestones": config and config["lr_milestones"],
               "training_minutes": _elapsed(folder) / 60 if name != SHIPPED else None,
               "validation": validation_nmes(path, faces), "wild": wild(path, latency_rounds),
               "load_average": list(os.getloadavg())}
        report["rows"][name] = row
        report["date"] = datetime.date.today().isoformat()
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report, reference))


def _cell(value, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _versus(values, reference, digits: int = 2) -> str:
    """``mean(values) - mean(reference)`` on the same faces with its paired bootstrap 95 % interval."""
    from labfast import metrics

    interval = metrics.paired_bootstrap(np.asarray(values, float), np.asarray(reference, float), 10_000, 0, 0.95)
    return (f"{interval['difference']:+.{digits}f} [{interval['low']:+.{digits}f}, "
            f"{interval['high']:+.{digits}f}]")


def wild_yaw(names: list[str]) -> np.ndarray:
    """``|yaw_proxy|`` (``labfast.data.pose``) of the wild faces named ``names``, from their .pts."""
    from labfast import data
    from labfast.data import pose

    samples = {Path(sample.image_path).stem: sample for sample in data.read_pts_folder(DATA / "wflw_wild_dev")}
    return np.abs(pose.yaw_proxy(np.stack([samples[name].landmarks for name in names]), "300w"))


#: ``|yaw_proxy|`` from which a wild face counts as large-pose in the table
LARGE_POSE = 0.4


def table(report: dict, reference: str = "baseline") -> str:
    """Markdown: dlib once, then one row per run (the shipped weights first); differences to
    ``reference`` on the same faces with paired bootstrap 95 % intervals (10,000 resamples, seed 0):
    validation NME (annotated boxes) and wild FR@10 (misses fail), in points."""
    rows = report["rows"]
    base = rows.get(reference)
    lines = ["| run | epochs (best) | val NME % annotated / YuNet | Δ val NME vs " + reference + " | val NME % frontal / large pose "
             "| wild found | wild FR@10 % | Δ wild FR vs " + reference + f" | wild FR % frontal / large pose (yaw proxy ≥ {LARGE_POSE}) "
             "| wild NME % found | wild NME % both found (Δ vs dlib [95 %]) | latency × dlib, median (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    some = next(iter(rows.values()), None)
    large = wild_yaw(some["wild"]["faces"]) >= LARGE_POSE if some else None
    from labfast.data import pose

    val_large = np.abs(pose.yaw_proxy(np.stack([face.landmarks for face in validation_faces()]), "300w")) >= LARGE_POSE

    def val_by_pose(nmes) -> str:
        nmes = np.asarray(nmes)
        return f"{nmes[~val_large].mean():.2f} / {nmes[val_large].mean():.2f}"

    def by_pose(nmes) -> str:
        failed = np.asarray(nmes) > 10
        return f"{100 * failed[~large].mean():.0f} / {100 * failed[large].mean():.0f}"

    dlib = next((row["wild"]["methods"]["dlib"] for row in rows.values() if "dlib" in row["wild"]["methods"]), None)
    if dlib:
        lines.append(f"| dlib (HOG + 68-point predictor) | — | — | — | — | {dlib['found']} | {_cell(dlib['fr'], 0)} | — "
                     f"| {by_pose(dlib['nmes'])} | {_cell(dlib['nme_found'])} | — | 1 |")
    for name, row in sorted(rows.items(), key=lambda item: item[0] != SHIPPED):
        ours, wild_row = row["wild"]["methods"]["labfast"], row["wild"]
        difference = (wild_row.get("differences") or {}).get("nme_both_found")
        both = (f"{_cell(ours['nme_both_found'])} vs {_cell(wild_row['methods']['dlib']['nme_both_found'])} "
                f"({wild_row['differences']['both_found']} faces; {difference['difference']:+.2f} "
                f"[{difference['low']:+.2f}, {difference['high']:+.2f}])") if difference else _cell(ours["nme_both_found"])
        latency = wild_row.get("latency") or {}
        timing = latency.get("rows", {})
        minimum = timing["labfast"]["min_ms"] / timing["dlib"]["min_ms"] if "dlib" in timing else None
        epochs = f"{row['epochs']} ({row['epoch_of_best'] + 1})" if row["epochs"] else "—"
        versus_val = versus_fr = "—"
        if base is not None and name != reference:
            versus_val = _versus(row["validation"]["nmes_annotated"], base["validation"]["nmes_annotated"])
            failed = [np.asarray(r["wild"]["methods"]["labfast"]["nmes"]) > 10 for r in (row, base)]
            versus_fr = _versus(100.0 * failed[0], 100.0 * failed[1], 0)
        validation = row["validation"]
        lines.append(
            f"| {name} | {epochs} | {_cell(validation['nme_annotated'])} / {_cell(validation['nme_yunet'])} "
            f"| {versus_val} | {val_by_pose(validation['nmes_annotated'])} | {ours['found']} | {_cell(ours['fr'], 0)} "
            f"| {versus_fr} | {by_pose(ours['nmes'])} "
            f"| {_cell(ours['nme_found'])} "
            f"| {both} | {_cell(latency.get('ratio'), 1)} ({_cell(minimum, 1)}) |")
    return "\n".join(lines)


def main() -> None:
    global DATA
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("train", "evaluate", "table"))
    parser.add_argument("names", nargs="*", help=f"candidates (default: all; evaluate also knows {SHIPPED!r} "
                        "and NAME=RUN_FOLDER for any run's folder)")
    parser.add_argument("--budget", type=float, default=30.0, help="training minutes per candidate")
    parser.add_argument("--parallel", type=int, default=2, help="training processes at once")
    parser.add_argument("--latency", type=int, default=60, help="latency rounds against dlib (0: off)")
    parser.add_argument("--data", type=Path, default=DATA, help="the folder holding 300w/ and wflw_wild_dev/")
    parser.add_argument("--out", type=Path, default=RESULTS / f"ablations-{datetime.date.today().isoformat()}.json")
    parser.add_argument("--reference", default="baseline", help="the row the table's differences are taken to")
    args = parser.parse_args()
    DATA = args.data
    if args.what == "train":
        train(args.names or list(CANDIDATES), args.budget, args.parallel)
    elif args.what == "evaluate":
        evaluate(args.names or [SHIPPED, *CANDIDATES], args.latency, args.out, args.reference)
    else:
        print(table(json.loads(args.out.read_text()), args.reference))


if __name__ == "__main__":
    main()
