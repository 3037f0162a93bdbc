"""``labfast eval``: a checkpoint on a data set's test protocol, as the paper's tables print it.

    labfast eval --checkpoint best.pt --dataset 300w --data-root DATA/300w [--subset common] [--flip]
                 [--boxes gt|detector]

Prints one row per subset (NME %, FR@10 %, AUC@10) — 300-W common / challenging / full (and the
300-W test set on request), WFLW full and its six attribute subsets, COFW, AFLW full / frontal —
and writes ``metrics.json`` plus a CED plot (``ced.png``) to ``--out`` (default: ``labfast-eval-DATASET``
in the working directory). ``--checkpoint`` defaults to the shipped weights.

A malformed annotation (a ``.pts`` with the wrong number of points, an unreadable line) is skipped
with a warning and counted in the table and ``metrics.json``; ``--strict`` stops at the first one.
The command exits with status 1 when no subset could be evaluated.

Errors are measured in the original image: predictions in crop coordinates are mapped back with
the inverse of the crop's affine transform before the NME is taken against the annotation.

``--boxes gt`` (default) crops every face from its annotated landmark box, the protocol's box.
``--boxes detector`` crops it from the face detector's box (converted to a landmark box), as a user
gets it from a photo: each annotated face takes the detection that contains its box's centre and
overlaps it most; a face with no such detection is *missed* and scored ``MISSED_NME`` (a failure
at every threshold, and it weighs on the mean NME), so a detector that finds fewer faces never looks
better.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from labfast import data, metrics

logger = logging.getLogger("labfast.evaluation.protocols")

NORMALISER_NAMES = {"inter_ocular": "inter-ocular distance", "inter_pupil": "inter-pupil distance",
                    "box": "face box size, sqrt(w·h)"}
DEFAULT_SUBSETS = {
    "300w": ("common", "challenging", "full"),
    "wflw": ("full", "pose", "expression", "illumination", "makeup", "occlusion", "blur"),
    "cofw": ("test",),
    "aflw": ("full", "frontal"),
}


#: NME given to a face the detector missed: one whole normaliser (inter-ocular distance for 300-W),
#: ten times the failure threshold.
MISSED_NME = 1.0
BOX_SOURCES = ("gt", "detector")


def detect_landmark_boxes(image_bgr: np.ndarray) -> np.ndarray:
    """Faces found by the default detector (shipped YuNet) as landmark-extent boxes ``(F, 4)``."""
    from labfast.inference import detect

    return detect.detect_landmark_boxes(image_bgr).boxes


def match_detections(samples: list, detect=detect_landmark_boxes) -> list:
    """For each annotated face, the detected box that contains its box's centre and overlaps it
    most (``labfast.inference.detect.match``, the rule the detector's box conversion was fitted with),
    or ``None`` when the detector missed it."""
    from labfast.inference.detect import match

    matched = []
    for sample in samples:
        image = sample.image if sample.image is not None else data.read_image_bgr(sample.image_path)
        boxes = np.asarray(detect(image), np.float64).reshape(-1, 4)
        index = match(boxes, sample.box.astype(np.float64)) if len(boxes) else None
        matched.append(None if index is None else boxes[index])
    return matched


class _SkipCounter(logging.Handler):
    """Adds up the "skipped N bad entries" summaries the readers log (``labfast.data``) with ``strict=False``."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.skipped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("skipped %d bad entries") and record.args:
            self.skipped += int(record.args[0])


@contextlib.contextmanager
def count_skipped():
    """Count the annotations the data readers skip inside the block (``counter.skipped``)."""
    counter = _SkipCounter()
    reader_logger = logging.getLogger("labfast.data")
    reader_logger.addHandler(counter)
    try:
        yield counter
    finally:
        reader_logger.removeHandler(counter)


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
             batch_size: int = 32, flip: bool = False, boxes: str = "gt", detect=detect_landmark_boxes,
             strict: bool = False) -> dict[str, Any]:
    """NME / FR / AUC per subset; a subset whose files are absent (or that has no readable face) is
    reported, not skipped silently. Malformed annotations are skipped and counted (``skipped``)
    unless ``strict``, where the first one raises ``labfast.data.AnnotationError``.

    ``boxes``: ``"gt"`` crops from the annotated boxes, ``"detector"`` from ``detect``'s boxes
    (missed faces scored ``MISSED_NME``; module docstring).
    """
    if boxes not in BOX_SOURCES:
        raise ValueError(f"boxes must be one of {', '.join(BOX_SOURCES)}, got {boxes!r}")
    results: dict[str, Any] = {}
    for subset in subsets:
        try:
            with count_skipped() as counter:
                samples = data.read_faces(dataset, root, subset, strict=strict)
        except FileNotFoundError as error:
            results[subset] = {"missing": str(error)}
            logger.warning("%s %s: not evaluated (%s)", dataset, subset, error)
            continue
        if not samples:
            results[subset] = {"missing": f"no readable face ({counter.skipped} malformed annotation(s) skipped)"}
            logger.warning("%s %s: not evaluated (no readable face)", dataset, subset)
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
                           "skipped": counter.skipped, "nmes": nmes.tolist()}
    return results


def format_table(dataset: str, results: dict[str, Any]) -> str:
    lines = [f"{'subset':<14}{'faces':>7}{'missed':>8}{'NME %':>9}{'FR@10 %':>10}{'AUC@10':>9}"]
    for subset, row in results.items():
        if "missing" in row:
            lines.append(f"{subset:<14}{'—':>7}  not evaluated: {row['missing']}")
            continue
        skipped = f"  ({row['skipped']} malformed annotation(s) skipped)" if row.get("skipped") else ""
        lines.append(f"{subset:<14}{row['faces']:>7}{row.get('missed', 0):>8}{row['nme']:>9.2f}{row['fr']:>10.2f}"
                     f"{row['auc']:>9.4f}{skipped}")
    return "\n".join(lines)
