"""``labfast demo``: the main job, on the 40 real 300-W test faces bundled in ``data/300w_sample``.

Without ``--train`` it runs the shipped weights (``labfast/weights/``; trained on 300-W training
faces, never on these test faces) on all 40 faces. With ``--train`` — or when no weights are
shipped — it trains a small LAB from scratch for a few minutes on 30 of the 40 faces and
evaluates on the other 10: this shows the whole pipeline working, not an accuracy anyone should
quote (30 training faces and minutes of CPU, against the paper's 3,148 faces and a GPU schedule).

The report folder holds ``metrics.json`` (NME in % of the inter-ocular distance), ``ced.png``
(cumulative error distribution), for the first ``--overlays`` faces a full-size overlay of the
predicted landmarks and boundary heatmaps with the annotation in green (``overlays/``), and every
evaluated face on one contact sheet (``overlays.png``): per tile the face's NME, the annotation as
green crosses and the prediction as white dots with a black rim.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from labfast import metrics, plots
from labfast.data import read_image_bgr
from labfast.data.transforms import rescale_pixel_coordinates
from labfast.evaluation.protocols import format_table, score_faces
from labfast.inference.aligner import FaceAligner
from labfast.commands.device import device_from_args
from labfast.inference.detect import detect_landmark_boxes
from labfast.inference.overlay import draw_faces
from labfast.progress import track
from labfast.inference.runtime import add_threads_argument
from labfast.inference.weights import default_weights
from labfast.train import presets, train
from labfast.train.faces import read_training_faces

logger = logging.getLogger("labfast.commands.demo")

BUNDLED_DATA = Path(__file__).resolve().parents[2] / "data" / "300w_sample"
ANNOTATION_COLOUR = (0, 220, 0)  # BGR
SHEET_TILE = 256  # px per face in overlays.png
SHEET_LEGEND = "green +: annotation   white dot: prediction   colours: predicted boundaries   NME: % inter-ocular"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="labfast-demo-report", help="report folder")
    parser.add_argument("--train", action="store_true", help="train a small LAB from scratch on the bundled faces first")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time budget with --train")
    parser.add_argument("--checkpoint", default=None, help="weights to run (default: the shipped ones)")
    parser.add_argument("--data-root", default=str(BUNDLED_DATA), help="300-W layout folder (default: bundled sample)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--overlays", type=int, default=8, help="how many faces get a full-size overlay picture (the sheet shows all)")
    add_threads_argument(parser)


def demo_training_config(data_root: str, minutes: float) -> presets.TrainConfig:
    """The small model on 30 bundled faces for a wall-clock budget; 10 faces held out. The step is not
    compiled (a compile takes minutes of a budget of a few) and keeps the threads ``--threads`` set."""
    return presets.override(presets.get("300w_cpu"), [
        f"data_root={data_root}", "train_subset=common", "val_fraction=0.25", "batch_size=8",
        f"time_limit_minutes={minutes}", "epochs=1000", "lr_milestones=", "num_workers=0", "log_every=5",
        "compile_step=false", "threads=0",
    ])


def _shipped_weights() -> Path | None:
    try:
        return Path(default_weights())
    except FileNotFoundError:
        return None


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = device_from_args(args, "demo")
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
    aligner = FaceAligner(weights, device=device, threads=torch.get_num_threads())  # as --threads set it
    nmes, tiles = _predict_and_draw(aligner, faces, args.overlays, out)
    summary = metrics.summarize(nmes)
    detected = _detector_summary(aligner, faces)
    print(note)
    print(format_table("300w", {"annotated box": {**summary, "faces": len(faces)}, "YuNet box": detected}))
    (out / "metrics.json").write_text(json.dumps({
        "note": note, "weights": str(weights), "data": str(args.data_root),
        "units": {"nme": "% of the inter-ocular distance", "fr": "% of faces (NME > 10 %)", "auc": "fraction (0-1)",
                  "per_face": "NME, % of the inter-ocular distance"},
        "summary": summary,
        "from_detector": {**detected, "note": "the same faces cropped from the shipped YuNet detector's boxes instead of "
                                              "the annotated ones; a face the detector misses counts as a failure "
                                              "(NME 100 %, in the mean too, as labfast eval --boxes detector scores it)"},
        "per_face": {Path(face.image_path).name: round(100 * float(error), 4) for face, error in zip(faces, nmes)},
    }, indent=2) + "\n")
    plots.plot_ced({"bundled 300-W faces": nmes}, out / "ced.png", title="labfast demo: cumulative error distribution")
    if tiles:
        cv2.imwrite(str(out / "overlays.png"), _contact_sheet(tiles))
    print(f"Report: {out.resolve()} (metrics.json, ced.png, overlays.png, overlays/)")
    return 0


def _detector_summary(aligner: FaceAligner, faces: list) -> dict:
    """NME / FR / AUC when each face is cropped from the aligner's detector box instead of its
    annotated box, scored as ``labfast eval --boxes detector`` scores it (a missed face is a failure
    with ``MISSED_NME``); ``found`` counts the faces the detector found."""
    row = score_faces(aligner.core, faces, aligner.scheme, boxes="detector", batch_size=aligner.batch_size, progress=False,
                      detect=lambda image: detect_landmark_boxes(image, aligner.detector).boxes)
    del row["nmes"]
    return {**row, "found": row["faces"] - row["missed"]}


def _predict_and_draw(aligner: FaceAligner, faces: list, full_size: int, out: Path,
                      batch: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each face's NME from its annotated box, its contact-sheet tile, and for the first ``full_size``
    faces a full-size overlay (``overlays/``): one prediction per face serves all three, in batches
    whose heatmaps are dropped once drawn."""
    folder = out / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    nmes, tiles = [], []
    starts = range(0, len(faces), batch)
    for start in track(starts, len(faces), "demo: faces", "face", step=lambda start: len(faces[start:start + batch])):
        chunk = faces[start:start + batch]
        images = [read_image_bgr(face.image_path) for face in chunk]
        predicted = aligner.predict(images, boxes=[face.box[None] for face in chunk], heatmaps=True)
        errors = metrics.nme(np.stack([found.landmarks for found, in predicted]),
                             np.stack([face.landmarks for face in chunk]), aligner.scheme)
        for number, (face, image, found, error) in enumerate(zip(chunk, images, predicted, errors), start):
            if number < full_size:
                canvas = draw_faces(image, found)
                _draw_annotation(canvas, face.landmarks, arm=max(2, round(max(image.shape[:2]) / 200)))
                cv2.imwrite(str(folder / (Path(face.image_path).stem + ".png")), canvas)
            tiles.append(_tile(image, found, face.landmarks, f"{Path(face.image_path).stem}  NME {100 * error:.2f}"))
        nmes.extend(errors)
    return np.asarray(nmes), tiles


def _draw_annotation(canvas: np.ndarray, landmarks: np.ndarray, arm: int) -> None:
    """Annotated points as green crosses with a dark rim: another shape and colour than the predicted
    dots, visible over every boundary hue."""
    for x, y in np.round(landmarks).astype(int):
        cv2.drawMarker(canvas, (int(x), int(y)), (0, 0, 0), cv2.MARKER_CROSS, 2 * arm + 3, 3, cv2.LINE_AA)
    for x, y in np.round(landmarks).astype(int):
        cv2.drawMarker(canvas, (int(x), int(y)), ANNOTATION_COLOUR, cv2.MARKER_CROSS, 2 * arm + 1, 1, cv2.LINE_AA)


def _tile(image: np.ndarray, predicted: list, annotation: np.ndarray, caption: str) -> np.ndarray:
    """One face at ``SHEET_TILE`` px: boundaries blended at full size, then the points drawn at tile
    scale (so they keep their size whatever the photo's), and the caption on a dark band."""
    scale = SHEET_TILE / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    # boundaries at half strength, so the points on top stand out
    shown = cv2.addWeighted(draw_faces(image, predicted, boundaries=True, points=False), 0.5, image, 0.5, 0)
    shown = cv2.resize(shown, size, interpolation=cv2.INTER_AREA)
    tile = np.zeros((SHEET_TILE, SHEET_TILE, 3), np.uint8)
    tile[:size[1], :size[0]] = shown
    _draw_annotation(tile, rescale_pixel_coordinates(annotation, scale), arm=2)
    for face in predicted:
        for x, y in np.round(rescale_pixel_coordinates(face.landmarks, scale)).astype(int):
            cv2.circle(tile, (int(x), int(y)), 2, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(tile, (int(x), int(y)), 1, (255, 255, 255), -1, cv2.LINE_AA)
    cv2.rectangle(tile, (0, 0), (SHEET_TILE - 1, 17), (0, 0, 0), -1)
    cv2.putText(tile, caption, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _contact_sheet(tiles: list[np.ndarray], columns: int = 8) -> np.ndarray:
    """Square tiles in rows of ``columns`` (the last row padded with black) under a legend band."""
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    blank = np.zeros_like(tiles[0])
    tiles = tiles + [blank] * (rows * columns - len(tiles))
    grid = cv2.vconcat([cv2.hconcat(tiles[row * columns:(row + 1) * columns]) for row in range(rows)])
    legend = np.full((24, grid.shape[1], 3), 40, np.uint8)
    cv2.putText(legend, SHEET_LEGEND, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return cv2.vconcat([legend, grid])
