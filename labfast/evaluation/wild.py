"""Faces in the wild, end to end with the face detector, against dlib on the same faces in the same run.

    labfast eval --dataset wild --data-root FOLDER [--checkpoint CKPT] [--latency [ROUNDS]]

``FOLDER`` holds face images with a 68-point iBUG ``.pts`` beside each (300-W's layout,
:func:`labfast.data.read_pts_folder`), e.g. ``../shared/data/wflw_wild_dev``. Each image is judged
as a user meets it: the method finds the faces in it, and the annotated face is **found** when a
detection is matched to it (:func:`labfast.inference.detect.match`: it contains the centre of the
annotation's landmark box, the most overlapping such one). Per method:

- **found**: faces matched to a detection;
- **FR@10**: share of *all* faces with NME > 10 %, a missed face counted as a failure (scored
  ``MISSED_NME``, as ``labfast eval --boxes detector``), so finding fewer faces never looks better;
- **NME (found)**: mean NME over the faces the method found; **NME (both found)**: over the faces
  both methods found, the landmark models compared on the same faces. NME is inter-ocular (outer
  eye corners of the annotation), the 300-W protocol.

labfast is :class:`~labfast.inference.aligner.FaceAligner` as built (YuNet unless told otherwise).
dlib is its HOG detector and 68-point predictor (:mod:`labfast.evaluation.dlib_reference`), run when
the ``benchmark`` extra is installed. With both, the differences labfast − dlib of FR@10 and of the
NME on the faces both found get paired bootstrap 95 % intervals (``RESAMPLES`` resamples of the
faces, seeded with ``SEED``; :func:`labfast.metrics.paired_bootstrap`): a hundred faces are few,
five points of FR are five faces.

With ``latency_rounds``, the CPU time per face given a box (no detection) is measured too, both
methods interleaved round by round on the same faces (annotated boxes), so a neighbour's load on a
shared CPU falls on both alike; medians, on the threads the aligner was built with.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from labfast import data, metrics
from labfast.evaluation.protocols import MISSED_NME, count_skipped
from labfast.inference.detect import match

FAILURE_THRESHOLD = 0.10
RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
SCHEME = "300w"  # the .pts files hold 300-W's 68 points
WARMUP_ROUNDS = 3


@dataclass
class MethodResult:
    """One method on the folder's faces: ``found`` ``(N,)`` bool and per-face ``nmes`` ``(N,)``
    (fractions of the inter-ocular distance; ``MISSED_NME`` where not found)."""

    found: np.ndarray
    nmes: np.ndarray

    def summary(self, both_found: np.ndarray) -> dict:
        """found, FR@10 % and AUC@10 (misses fail), NME % on its own found faces and on ``both_found``."""
        return {"found": int(self.found.sum()),
                "fr": 100 * metrics.failure_rate(self.nmes, FAILURE_THRESHOLD),
                "auc": metrics.auc(self.nmes, FAILURE_THRESHOLD),
                "nme_found": _mean_percent(self.nmes[self.found]),
                "nme_both_found": _mean_percent(self.nmes[both_found])}


@dataclass
class WildReport:
    """``names``: the faces (file stems), in reading order; ``methods``: ``"labfast"`` and, where
    installed, ``"dlib"``; ``differences``: labfast − dlib with intervals (:func:`compare`);
    ``latency``: per-face times (:func:`measure_latency`); ``skipped``: malformed annotations;
    ``versions``: of what ran (the figures depend on them)."""

    names: list[str]
    methods: dict[str, MethodResult]
    differences: dict | None
    latency: dict | None
    skipped: int
    versions: dict[str, str]

    @property
    def both_found(self) -> np.ndarray:
        found = [result.found for result in self.methods.values()]
        return np.logical_and.reduce(found) if found else np.zeros(len(self.names), bool)


def dlib_installed() -> bool:
    """Whether the ``benchmark`` extra is here: dlib and the package that ships its 68-point predictor."""
    return all(importlib.util.find_spec(name) is not None for name in ("dlib", "face_recognition_models"))


def dlib_aligner():
    """dlib's detector and predictor (:class:`~labfast.evaluation.dlib_reference.DlibAligner`), or
    ``None`` where dlib is not installed."""
    if not dlib_installed():
        return None
    from labfast.evaluation.dlib_reference import DlibAligner

    return DlibAligner()


def align_labfast(aligner, samples: list) -> tuple[np.ndarray, np.ndarray]:
    """``aligner.predict`` on each whole image (its detector, then its landmarks, batched across
    images); the face matched to the annotation is kept. Returns ``found`` ``(N,)`` and landmarks
    ``(N, 68, 2)`` in image pixels (NaN where missed)."""
    found, landmarks = np.zeros(len(samples), bool), np.full((len(samples), 68, 2), np.nan)
    for start in range(0, len(samples), aligner.batch_size):
        chunk = samples[start:start + aligner.batch_size]
        faces = aligner.predict([data.read_image_bgr(sample.image_path) for sample in chunk])
        for offset, (sample, image_faces) in enumerate(zip(chunk, faces)):
            index = match(np.array([face.box for face in image_faces], np.float64).reshape(-1, 4), sample.box)
            if index is not None:
                found[start + offset], landmarks[start + offset] = True, image_faces[index].landmarks
    return found, landmarks


def align_dlib(reference, samples: list) -> tuple[np.ndarray, np.ndarray]:
    """:func:`align_labfast` for dlib: its HOG detector on each image, its predictor on the matched box."""
    found, landmarks = np.zeros(len(samples), bool), np.full((len(samples), 68, 2), np.nan)
    for position, sample in enumerate(samples):
        image = reference.rgb(data.read_image_bgr(sample.image_path))
        boxes = reference.detect(image)
        index = match(boxes, sample.box)
        if index is not None:
            found[position], landmarks[position] = True, reference.landmarks(image, boxes[index])
    return found, landmarks


def score(samples: list, found: np.ndarray, landmarks: np.ndarray) -> MethodResult:
    """Per-face NME against the annotations, ``MISSED_NME`` for the faces not found."""
    nmes = np.full(len(samples), MISSED_NME)
    if found.any():
        truth = np.stack([sample.landmarks for sample in samples])[found]
        nmes[found] = metrics.nme(landmarks[found], truth, SCHEME)
    return MethodResult(found=found, nmes=nmes)


def compare(labfast: MethodResult, dlib: MethodResult, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """labfast − dlib, in percentage points, with paired bootstrap intervals at ``LEVEL``: of FR@10
    over all faces (misses fail) and of the mean NME over the faces both found (``None`` if none)."""
    def in_points(interval: dict) -> dict:
        return {key: 100 * value for key, value in interval.items()}

    both = labfast.found & dlib.found
    fr = metrics.paired_bootstrap((labfast.nmes > FAILURE_THRESHOLD).astype(float),
                                  (dlib.nmes > FAILURE_THRESHOLD).astype(float), resamples, seed, LEVEL)
    nme = metrics.paired_bootstrap(labfast.nmes[both], dlib.nmes[both], resamples, seed, LEVEL) if both.any() else None
    return {"fr": in_points(fr), "nme_both_found": None if nme is None else in_points(nme), "both_found": int(both.sum()),
            "resamples": resamples, "seed": seed, "level": LEVEL}


def measure_latency(aligner, reference, samples: list, rounds: int) -> dict:
    """Median (and min, p90) ms per face given its annotated box, labfast and dlib interleaved:
    round ``r`` aligns face ``r % N`` with each method once; ``WARMUP_ROUNDS`` rounds first, untimed.
    OpenCV runs on one thread meanwhile (labfast's crop); the model on the aligner's ``threads``
    (one by default), dlib's predictor on one (it is serial)."""
    images = [data.read_image_bgr(sample.image_path) for sample in samples]
    calls = {"labfast": lambda i: aligner.predict(images[i], boxes=samples[i].box[None])}
    if reference is not None:
        rgb = [reference.rgb(image) for image in images]
        calls["dlib"] = lambda i: reference.landmarks(rgb[i], samples[i].box)
    times: dict[str, list[float]] = {name: [] for name in calls}
    opencv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for round_index in range(WARMUP_ROUNDS + rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call(round_index % len(samples))
                if round_index >= WARMUP_ROUNDS:
                    times[name].append(1e3 * (time.perf_counter() - start))
    finally:
        cv2.setNumThreads(opencv_threads)
    rows = {name: {"median_ms": statistics.median(values), "min_ms": min(values),
                   "p90_ms": float(np.percentile(values, 90))} for name, values in times.items()}
    return {"rounds": rounds, "faces": min(rounds, len(samples)), "threads": aligner.threads,
            "load_average": list(os.getloadavg()), "rows": rows,
            "ratio": rows["labfast"]["median_ms"] / rows["dlib"]["median_ms"] if "dlib" in rows else None}


def evaluate(aligner, root: Path, reference=None, latency_rounds: int = 0, strict: bool = False,
             resamples: int = RESAMPLES, seed: int = SEED) -> WildReport:
    """The protocol (module docstring) on ``root``'s faces for ``aligner`` and, if given, dlib's
    ``reference``. Raises ``ValueError`` for an aligner that does not predict 300-W's 68 points."""
    if aligner.scheme.name != SCHEME:
        raise ValueError(f"{aligner.checkpoint} predicts the {aligner.scheme.name} scheme; the wild protocol's "
                         f".pts files hold {SCHEME}'s 68 points")
    with count_skipped() as counter:
        samples = data.read_pts_folder(root, strict=strict)
    methods = {}
    if samples:
        methods["labfast"] = score(samples, *align_labfast(aligner, samples))
        if reference is not None:
            methods["dlib"] = score(samples, *align_dlib(reference, samples))
    return WildReport(
        names=[Path(sample.image_path).stem for sample in samples], methods=methods,
        differences=compare(methods["labfast"], methods["dlib"], resamples, seed) if "dlib" in methods else None,
        latency=measure_latency(aligner, reference, samples, latency_rounds) if samples and latency_rounds else None,
        skipped=counter.skipped, versions=versions(reference))


def versions(reference=None) -> dict[str, str]:
    """Versions of the libraries whose code produced the figures: torch, ONNX Runtime (labfast's CPU
    runtime where installed), OpenCV (YuNet, the crop) and dlib when it ran."""
    found = {"torch": torch.__version__, "opencv": cv2.__version__}
    if importlib.util.find_spec("onnxruntime") is not None:
        found["onnxruntime"] = importlib.import_module("onnxruntime").__version__
    if reference is not None:
        found["dlib"] = reference.version
    return found


def format_table(report: WildReport) -> str:
    """The report as printed by ``labfast eval --dataset wild``."""
    both = report.both_found
    lines = [f"{'method':<10}{'found':>10}{'FR@10 %':>9}{'AUC@10':>8}{'NME % found':>13}{f'NME % both found ({both.sum()})':>26}"]
    for name, result in report.methods.items():
        row = result.summary(both)
        lines.append(f"{name:<10}{row['found']:>6}/{len(report.names):<3}{row['fr']:>9.2f}{row['auc']:>8.4f}"
                     f"{_text(row['nme_found']):>13}{_text(row['nme_both_found']):>26}")
    if report.differences:
        differences = report.differences
        lines.append(f"labfast - dlib (paired bootstrap {100 * differences['level']:.0f} % interval, "
                     f"{differences['resamples']} resamples, seed {differences['seed']}): "
                     f"FR@10 {_interval(differences['fr'])} points; "
                     f"NME on the {differences['both_found']} both found {_interval(differences['nme_both_found'])} points")
    if report.latency:
        latency = report.latency
        times = ", ".join(f"{name} {row['median_ms']:.2f} ms (min {row['min_ms']:.2f})" for name, row in latency["rows"].items())
        ratio = f"; labfast {latency['ratio']:.1f}x dlib's median" if latency["ratio"] else ""
        lines.append(f"CPU per face given a box, {latency['threads']} thread(s), median of {latency['rounds']} "
                     f"rounds: {times}{ratio}; load average {latency['load_average'][0]:.1f}")
    if report.skipped:
        lines.append(f"({report.skipped} malformed annotation(s) skipped)")
    return "\n".join(lines)


def to_json(report: WildReport) -> dict:
    """``metrics.json``'s ``results``: per method its summary, found faces and per-face NMEs in %."""
    both = report.both_found
    return {"faces": report.names, "skipped": report.skipped,
            "methods": {name: {**result.summary(both), "found_faces": result.found.tolist(),
                               "nmes": [round(100 * value, 4) for value in result.nmes.tolist()]}
                        for name, result in report.methods.items()},
            "differences": report.differences, "latency": report.latency, "versions": report.versions}


def curves(report: WildReport) -> dict[str, np.ndarray]:
    """CED curves over all faces, a miss scored ``MISSED_NME`` (beyond the plot: never a success);
    draw them with ``plots.plot_ced(..., missed_nme=MISSED_NME)``."""
    return {name: result.nmes for name, result in report.methods.items()}


def _mean_percent(nmes: np.ndarray) -> float | None:
    return 100 * float(nmes.mean()) if len(nmes) else None


def _text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _interval(interval: dict | None) -> str:
    return "—" if interval is None else f"{interval['difference']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]"
