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
from labfast import data, metrics
from labfast.inference import detect as face_detection
from labfast.inference.core import InferenceCore
from labfast.progress import track

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
    return face_detection.detect_landmark_boxes(image_bgr).boxes


def match_detections(samples: list, detect=detect_landmark_boxes) -> list:
    """For each annotated face, the detected box that contains its box's centre and overlaps it
    most (``labfast.inference.detect.match``, the rule the detector's box conversion was fitted
    with), or ``None`` when the detector missed it."""
    matched = []
    for sample in track(samples, len(samples), "detect", "face"):
        boxes = np.asarray(detect(data.sample_image(sample)), np.float64).reshape(-1, 4)
        index = face_detection.match(boxes, sample.box.astype(np.float64)) if len(boxes) else None
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


def annotated_landmarks(core: InferenceCore, samples: list, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Landmarks ``(N, L, 2)`` float32 of annotated faces, in original image coordinates, each face
    cropped from its ``box`` and run through ``core`` (``labfast.inference.core``)."""
    faces = ((data.sample_image(sample), sample.box) for sample in samples)  # one image read at a time
    batches = core.align(faces, batch_size)
    if progress:
        batches = track(batches, len(samples), "faces", "face", step=lambda batch: len(batch.landmarks))
    return np.concatenate([batch.landmarks for batch in batches])


def predict_faces(model, samples: list, device: torch.device, batch_size: int = 32, flip: bool = False,
                  progress: bool = True) -> np.ndarray:
    """:func:`annotated_landmarks` with an eager ``model`` on ``device``; ``flip`` averages each face
    with its mirrored crop's prediction."""
    return annotated_landmarks(InferenceCore.for_model(model, device, flip=flip), samples, batch_size, progress)


def score_faces(core: InferenceCore, samples: list, scheme, boxes: str = "gt", detect=detect_landmark_boxes,
                batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """NME / FR / AUC (``metrics.summarize``) of annotated faces plus ``faces``, ``missed`` and the
    per-face ``nmes``: cropped from the annotated boxes (``boxes="gt"``) or from ``detect``'s
    (``"detector"``, missed faces scored ``MISSED_NME``; module docstring)."""
    if boxes not in BOX_SOURCES:
        raise ValueError(f"boxes must be one of {', '.join(BOX_SOURCES)}, got {boxes!r}")
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
        predicted = annotated_landmarks(core, cropped, batch_size, progress)
        nmes[found] = metrics.nme(predicted, truth[found], scheme, boxes=annotated_boxes[found])
    return {**metrics.summarize(nmes), "faces": len(samples), "missed": int((~found).sum()), "nmes": nmes.tolist()}


def evaluate(model, dataset: str, root: Path, subsets: tuple[str, ...], device: torch.device,
             batch_size: int = 32, flip: bool = False, boxes: str = "gt", detect=detect_landmark_boxes,
             strict: bool = False) -> dict[str, Any]:
    """:func:`score_faces` per subset with an eager ``model``; a subset whose files are absent (or
    that has no readable face) is reported, not skipped silently. Malformed annotations are skipped
    and counted (``skipped``) unless ``strict``, where the first one raises
    ``labfast.data.AnnotationError``.
    """
    core = InferenceCore.for_model(model, device, flip=flip)
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
        row = score_faces(core, samples, model.scheme, boxes, detect, batch_size)
        nmes = row.pop("nmes")
        results[subset] = {**row, "skipped": counter.skipped, "nmes": nmes}
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
