"""``labfast eval``: a checkpoint on a data set's test protocol, as the paper's tables print it.

    labfast eval --checkpoint best.pt --dataset 300w --data-root DATA/300w [--subset common] [--flip]
                 [--boxes gt|detector]

Prints one row per subset (NME %, FR@10 %, AUC@10) — 300-W common / challenging / full (and the
300-W test set on request), WFLW full and its six attribute subsets, COFW, AFLW full / frontal —
and writes ``metrics.json`` plus a CED plot (``ced.png``) to ``--out``.

Errors are measured in the original image: predictions in crop coordinates are mapped back with
the inverse of the crop's affine transform before the NME is taken against the annotation.

``--boxes gt`` (default) crops every face from its annotated landmark box, the protocol's box.
``--boxes detector`` crops it from the face detector's box (converted to a landmark box), as a user
gets it from a photo: each annotated face takes the detection that overlaps its box most (IoU at
least ``MATCH_IOU``); a face with no such detection is *missed* and scored ``MISSED_NME`` (a failure
at every threshold, and it weighs on the mean NME), so a detector that finds fewer faces never looks
better.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from labfast import checkpoint, data, metrics, plots
from labfast.cpu_inference import add_threads_argument, set_threads

logger = logging.getLogger("labfast.evaluate")

DEFAULT_SUBSETS = {
    "300w": ("common", "challenging", "full"),
    "wflw": ("full", "pose", "expression", "illumination", "makeup", "occlusion", "blur"),
    "cofw": ("test",),
    "aflw": ("full", "frontal"),
}


def read_test_faces(dataset: str, root: Path, subset: str) -> list:
    if dataset == "300w":
        return data.read_300w(root, subset=subset)
    if dataset == "wflw":
        return data.read_wflw(root, split="test", subset=None if subset == "full" else subset)
    if dataset == "cofw":
        return data.read_cofw(root / "COFW_test_color.mat" if root.is_dir() else root)
    if dataset == "aflw":
        return data.read_aflw(root, split=subset)
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DEFAULT_SUBSETS)}")


#: A detection belongs to an annotated face when their boxes overlap at least this much (IoU).
MATCH_IOU = 0.3
#: NME given to a face the detector missed: one whole normaliser (inter-ocular distance for 300-W),
#: ten times the failure threshold.
MISSED_NME = 1.0
BOX_SOURCES = ("gt", "detector")

# The detector for ``--boxes detector``: YuNet run by cv2.FaceDetectorYN from ../shared, and its box
# converted to the landmark box with the medians fitted on the 2012 300-W training faces by
# benchmarks/detector_box_error.py (centre + (0.0014 w, 0.1143 h), size (1.0311 w, 0.7709 h); the
# 0.0014 w is taken as 0). Stand-in until labfast.detect ships YuNet: the lead switches
# ``detect_landmark_boxes`` to the packaged detector on merge.
YUNET_MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "yunet" / "face_detection_yunet_2026may.onnx"
YUNET_CENTRE_SHIFT_Y, YUNET_WIDTH_SCALE, YUNET_HEIGHT_SCALE = 0.1143, 1.0311, 0.7709


@functools.cache
def _yunet() -> "cv2.FaceDetectorYN":
    if not YUNET_MODEL.is_file():
        raise FileNotFoundError(f"--boxes detector needs the YuNet model {YUNET_MODEL} (absent)")
    return cv2.FaceDetectorYN.create(str(YUNET_MODEL), "", (320, 320), 0.6, 0.3, 50)


def detect_landmark_boxes(image_bgr: np.ndarray) -> np.ndarray:
    """Faces found by YuNet in a BGR ``uint8`` image as landmark-extent boxes ``(F, 4)`` float64."""
    detector = _yunet()
    detector.setInputSize((image_bgr.shape[1], image_bgr.shape[0]))
    _, found = detector.detect(image_bgr)
    if found is None:
        return np.zeros((0, 4))
    x, y, width, height = (found[:, column].astype(np.float64) for column in range(4))
    centre_x, centre_y = x + width / 2, y + height / 2 + YUNET_CENTRE_SHIFT_Y * height
    half_w, half_h = YUNET_WIDTH_SCALE * width / 2, YUNET_HEIGHT_SCALE * height / 2
    return np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` ``(F, 4)`` with ``box`` ``(4,)``, all ``x0, y0, x1, y1``."""
    x0, y0 = np.maximum(boxes[:, 0], box[0]), np.maximum(boxes[:, 1], box[1])
    x1, y1 = np.minimum(boxes[:, 2], box[2]), np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def match_detections(samples: list, detect=detect_landmark_boxes) -> list:
    """For each annotated face, the detected box that overlaps its box most (IoU >= ``MATCH_IOU``),
    or ``None`` when the detector missed it."""
    matched = []
    for sample in samples:
        image = sample.image if sample.image is not None else data.read_image_bgr(sample.image_path)
        boxes = np.asarray(detect(image), np.float64).reshape(-1, 4)
        overlaps = box_iou(boxes, sample.box.astype(np.float64)) if len(boxes) else np.zeros(0)
        matched.append(boxes[overlaps.argmax()] if len(boxes) and overlaps.max() >= MATCH_IOU else None)
    return matched


def invert_affine(affine: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of 2×3 affine matrices ``(N, 2, 3)``."""
    linear, offset = affine[:, :, :2], affine[:, :, 2:]
    inverse = torch.linalg.inv(linear)
    return torch.cat([inverse, -inverse @ offset], dim=2)


def apply_affine(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``(N, L, 2)`` points through ``(N, 2, 3)`` matrices."""
    return points @ affine[:, :, :2].transpose(1, 2) + affine[:, :, 2].unsqueeze(1)


@torch.no_grad()
def predict_faces(model, samples: list, device: torch.device, batch_size: int = 32, flip: bool = False,
                  progress: bool = True) -> np.ndarray:
    """Landmarks ``(N, L, 2)`` for annotated faces, in original image coordinates.

    With ``flip``, the prediction is averaged with the one for the mirrored crop, mapped back
    through ``x -> W - 1 - x`` and the scheme's flip permutation (test-time augmentation).
    """
    input_size = model.config.input_size
    dataset = data.FaceDataset(samples, model.scheme, input_size=input_size, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    permutation = torch.tensor(model.scheme.flip_permutation)
    predictions = []
    for batch in tqdm(loader, desc="faces", unit="batch", disable=not progress, leave=False):
        images = batch["image"].to(device)
        landmarks = model(images).landmarks.float().cpu()
        if flip:
            mirrored = model(images.flip(-1)).landmarks.float().cpu()
            unflipped = torch.empty_like(mirrored)
            unflipped[:, permutation] = mirrored  # mirrored point i is the original's permutation[i]
            unflipped[..., 0] = input_size - 1 - unflipped[..., 0]
            landmarks = (landmarks + unflipped) / 2
        predictions.append(apply_affine(landmarks, invert_affine(batch["affine"].double()).float()))
    return torch.cat(predictions).numpy()


def evaluate(model, dataset: str, root: Path, subsets: tuple[str, ...], device: torch.device,
             batch_size: int = 32, flip: bool = False, boxes: str = "gt", detect=detect_landmark_boxes) -> dict[str, Any]:
    """NME / FR / AUC per subset; a subset whose files are absent is reported, not skipped silently.

    ``boxes``: ``"gt"`` crops from the annotated boxes, ``"detector"`` from ``detect``'s boxes
    (missed faces scored ``MISSED_NME``; module docstring).
    """
    if boxes not in BOX_SOURCES:
        raise ValueError(f"boxes must be one of {', '.join(BOX_SOURCES)}, got {boxes!r}")
    results: dict[str, Any] = {}
    for subset in subsets:
        try:
            samples = read_test_faces(dataset, root, subset)
        except FileNotFoundError as error:
            results[subset] = {"missing": str(error)}
            logger.warning("%s %s: not evaluated (%s)", dataset, subset, error)
            continue
        truth = np.stack([sample.landmarks for sample in samples])
        annotated_boxes = np.stack([sample.box for sample in samples])
        if boxes == "gt":
            found = np.ones(len(samples), bool)
            cropped = samples
        else:
            detected = match_detections(samples, detect)
            found = np.array([box is not None for box in detected])
            cropped = [dataclasses.replace(sample, box=box) for sample, box in zip(samples, detected) if box is not None]
        nmes = np.full(len(samples), MISSED_NME)
        if cropped:
            predicted = predict_faces(model, cropped, device, batch_size=batch_size, flip=flip)
            nmes[found] = metrics.nme(predicted, truth[found], model.scheme, boxes=annotated_boxes[found])
        results[subset] = {**metrics.summarize(nmes), "faces": len(samples), "missed": int((~found).sum()),
                           "nmes": nmes.tolist()}
    return results


def format_table(dataset: str, results: dict[str, Any]) -> str:
    lines = [f"{'subset':<14}{'faces':>7}{'missed':>8}{'NME %':>9}{'FR@10 %':>10}{'AUC@10':>9}"]
    for subset, row in results.items():
        if "missing" in row:
            lines.append(f"{subset:<14}{'—':>7}  not evaluated: {row['missing']}")
            continue
        lines.append(f"{subset:<14}{row['faces']:>7}{row.get('missed', 0):>8}{row['nme']:>9.2f}{row['fr']:>10.2f}{row['auc']:>9.4f}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a labfast checkpoint (best.pt / last.pt / shipped weights)")
    parser.add_argument("--dataset", required=True, choices=sorted(DEFAULT_SUBSETS))
    parser.add_argument("--data-root", required=True, help="the data set's root folder (or .mat file for COFW)")
    parser.add_argument("--subset", action="append", help="subset(s) to evaluate (default: all of the protocol's)")
    parser.add_argument("--flip", action="store_true", help="average with the prediction for the mirrored face")
    parser.add_argument("--boxes", choices=BOX_SOURCES, default="gt",
                        help="crop from the annotated boxes (gt) or from the face detector's (detector; missed faces fail)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", default=None, help="folder for metrics.json and ced.png (default: beside the checkpoint)")
    add_threads_argument(parser)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(args) -> int:
    device = resolve_device(args.device)
    if device.type == "cpu":
        set_threads(args.threads)
    model, info = checkpoint.load_model(args.checkpoint, device=device)
    if model.scheme.name != args.dataset:
        raise SystemExit(f"labfast eval: {args.checkpoint} predicts the {model.scheme.name} scheme, not {args.dataset}")
    subsets = tuple(args.subset or DEFAULT_SUBSETS[args.dataset])
    results = evaluate(model, args.dataset, Path(args.data_root), subsets, device, batch_size=args.batch, flip=args.flip,
                       boxes=args.boxes)
    print(f"{args.dataset} — {args.checkpoint}, {args.boxes} boxes{' (flip averaged)' if args.flip else ''}")
    print(format_table(args.dataset, results))
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval_{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "dataset": args.dataset,
                                                  "flip": args.flip, "boxes": args.boxes, "results": results}, indent=2) + "\n")
    curves = {subset: np.asarray(row["nmes"]) for subset, row in results.items() if "nmes" in row}
    if curves:
        plots.plot_ced(curves, out / "ced.png", title=f"{args.dataset}: cumulative error distribution")
    print(f"wrote {out / 'metrics.json'} and {out / 'ced.png'}")
    return 0
