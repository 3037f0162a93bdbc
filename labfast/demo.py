"""``labfast demo``: the main job, on the 40 real 300-W test faces bundled in ``data/300w_sample``.

Without ``--train`` it runs the shipped weights (``labfast/weights/``; trained on 300-W training
faces, never on these test faces) on all 40 faces. With ``--train`` — or when no weights are
shipped — it trains a small LAB from scratch for a few minutes on 30 of the 40 faces and
evaluates on the other 10: this shows the whole pipeline working, not an accuracy anyone should
quote (30 training faces and minutes of CPU, against the paper's 3,148 faces and a GPU schedule).

The report folder holds ``metrics.json``, ``ced.png`` (cumulative error distribution), per face an
overlay of the predicted landmarks and boundary heatmaps with the annotation in green
(``overlays/``), and all of them on one sheet (``overlays.png``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from labfast import checkpoint, metrics, plots, presets
from labfast.aligner import FaceAligner, default_weights
from labfast.cpu_inference import add_threads_argument, set_threads
from labfast.data import read_image_bgr
from labfast.evaluate import format_table, predict_faces, resolve_device
from labfast.overlay import draw_faces
from labfast.train import read_training_faces, train

logger = logging.getLogger("labfast.demo")

BUNDLED_DATA = Path(__file__).resolve().parents[1] / "data" / "300w_sample"
ANNOTATION_COLOUR = (0, 200, 0)  # BGR
SHEET_TILE = 256  # px per face in overlays.png


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="labfast-demo-report", help="report folder")
    parser.add_argument("--train", action="store_true", help="train a small LAB from scratch on the bundled faces first")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget with --train")
    parser.add_argument("--checkpoint", default=None, help="weights to run (default: the shipped ones)")
    parser.add_argument("--data-root", default=str(BUNDLED_DATA), help="300-W layout folder (default: bundled sample)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overlays", type=int, default=8, help="how many faces get an overlay picture")
    add_threads_argument(parser)


def demo_training_config(data_root: str, minutes: float) -> presets.TrainConfig:
    """The small model on 30 bundled faces for a wall-clock budget; 10 faces held out."""
    return presets.override(presets.get("300w_cpu"), [
        f"data_root={data_root}", "train_subset=common", "val_fraction=0.25", "batch_size=8",
        f"time_limit_minutes={minutes}", "epochs=1000", "lr_milestones=", "num_workers=0", "log_every=5",
    ])


def _shipped_weights() -> Path | None:
    try:
        return Path(default_weights())
    except FileNotFoundError:
        return None


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if device.type == "cpu":
        set_threads(args.threads)
    weights = Path(args.checkpoint) if args.checkpoint else _shipped_weights()
    train_first = args.train or weights is None
    if train_first and not args.train:
        print("This labfast ships no weights yet, so the demo trains a small LAB first.")
    config = demo_training_config(args.data_root, args.minutes)
    if train_first:
        print(f"Training a small LAB from scratch for about {args.minutes:g} min on the bundled faces ...")
        summary = train(config, out / "run")
        weights = out / "run" / "last.pt"
        train_faces, faces = read_training_faces(config)
        note = (f"trained for {summary['steps']} steps (~{args.minutes:g} min) on {len(train_faces)} bundled faces; evaluated on the "
                f"{len(faces)} held-out bundled faces. A pipeline check, not an accuracy figure.")
    else:
        train_faces, held_out = read_training_faces(config)
        faces = sorted(train_faces + held_out, key=lambda sample: sample.image_path)
        note = f"shipped weights {weights.name} on all {len(faces)} bundled 300-W common-test faces (never trained on)."
    model, info = checkpoint.load_model(weights, device=device)
    predicted = predict_faces(model, faces, device, batch_size=16)
    truth = np.stack([face.landmarks for face in faces])
    nmes = metrics.nme(predicted, truth, model.scheme)
    summary = metrics.summarize(nmes)
    print(note)
    print(format_table("300w", {"bundled": {**summary, "faces": len(faces)}}))
    (out / "metrics.json").write_text(json.dumps({
        "note": note, "weights": str(weights), "data": str(args.data_root), "summary": summary,
        "per_face": {Path(face.image_path).name: float(error) for face, error in zip(faces, nmes)},
    }, indent=2) + "\n")
    plots.plot_ced({"bundled 300-W faces": nmes}, out / "ced.png", title="labfast demo: cumulative error distribution")
    _write_overlays(weights, faces[: args.overlays], out / "overlays", device)
    print(f"Report: {out.resolve()} (metrics.json, ced.png, overlays.png, overlays/)")
    return 0


def _write_overlays(weights: Path, faces: list, folder: Path, device) -> None:
    """Per face: predicted landmarks (white) over the predicted boundary heatmaps, annotation in green."""
    aligner = FaceAligner(weights, device=device, threads=torch.get_num_threads())  # as --threads set it
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    for face in faces:
        image = read_image_bgr(face.image_path)
        canvas = draw_faces(image, aligner.predict(image, boxes=face.box[None], heatmaps=True))
        for x, y in face.landmarks:
            cv2.circle(canvas, (int(round(x)), int(round(y))), 1, ANNOTATION_COLOUR, -1, cv2.LINE_AA)
        cv2.imwrite(str(folder / (Path(face.image_path).stem + ".png")), canvas)
        tiles.append(cv2.resize(canvas, (SHEET_TILE, SHEET_TILE), interpolation=cv2.INTER_AREA))
    if tiles:
        cv2.imwrite(str(folder.parent / "overlays.png"), _contact_sheet(tiles))


def _contact_sheet(tiles: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Square tiles in rows of ``columns`` (the last row padded with black)."""
    rows = -(-len(tiles) // columns)
    blank = np.zeros_like(tiles[0])
    tiles = tiles + [blank] * (rows * columns - len(tiles))
    return cv2.vconcat([cv2.hconcat(tiles[row * columns:(row + 1) * columns]) for row in range(rows)])
