"""Face detection (YuNet by default, OpenCV's Haar cascade on request) and the box conversion LAB needs.

LAB's crops (``labfast.data.crop_face``) are made from the extent of the 68 landmarks, the box it
was trained on. A detector's box is drawn differently (YuNet's reaches from the hairline to the
chin, Haar's is a square from the forehead to the lower lip), so :func:`to_landmark_box` maps it to
the landmark-extent box, per detector, with the four numbers of :class:`BoxConversion`.

The numbers live in ``labfast/detectors/box_conversion.json`` with where they came from: they are
fitted on the 300-W **training** faces only (never the test faces) by
``python -m labfast.tools.detector_fit --data-root ../shared/data/300w``. That file also holds each
detector's remaining box error on those faces (:func:`box_error`), for box-jitter augmentation.

- **YuNet** (``labfast/detectors/face_detection_yunet_2026may.onnx``, OpenCV Zoo, MIT; see the README
  beside it) runs in ``cv2.FaceDetectorYN``: no dependency beyond OpenCV. Images whose longer side
  exceeds ``max_side`` are detected on a downscaled copy and the boxes scaled back.
- **Haar**: ``haarcascade_frontalface_default.xml`` from ``cv2.data`` (OpenCV 4 only).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from labfast.data.transforms import rescale_pixel_coordinates

log = logging.getLogger(__name__)

DETECTORS = ("yunet", "haar")
DEFAULT_DETECTOR = "yunet"
CASCADE_FILE = "haarcascade_frontalface_default.xml"
YUNET_FILE = "face_detection_yunet_2026may.onnx"
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
CONVERSION_FILE = "box_conversion.json"
#: YuNet's thresholds: a face needs score >= 0.6; overlapping boxes (IoU > 0.3) are merged (the
#: model's README values). ``MAX_SIDE``: longer image sides above it are detected on a downscaled
#: copy (YuNet costs ~280 ms on 1920x1080 at full size; at 640 px a face of 32 px in the copy, the
#: smallest LAB's 128 px input makes sense of, is 5 % of the longer side).
YUNET_SCORE_THRESHOLD = 0.6
YUNET_NMS_THRESHOLD = 0.3
MAX_SIDE = 640
#: What a face's detector ``score`` means, per detector (written beside predictions).
SCORE_MEANING = {
    "yunet": f"YuNet's face confidence in [0, 1]; faces below {YUNET_SCORE_THRESHOLD} are not reported",
    "haar": "the Haar cascade's level weight (its last stage's summed response): unbounded, not a probability, "
            "larger is surer (a few units on clear faces); not comparable with YuNet's",
}


@dataclass(frozen=True)
class BoxConversion:
    """Detector box -> landmark-extent box, relative to the detector box's width ``w`` and height ``h``:
    centre moved by ``(shift_x * w, shift_y * h)``, size ``(scale_x * w, scale_y * h)``."""

    shift_x: float
    shift_y: float
    scale_x: float
    scale_y: float


@dataclass
class Detections:
    """Faces found in one image: ``boxes`` ``(F, 4)`` float32 ``x0, y0, x1, y1`` in the detector's own
    convention (0-based pixels of the image given) and ``scores`` ``(F,)`` float32, largest box first."""

    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def detector_file(name: str) -> Path:
    """A file shipped in ``labfast/detectors/`` (package data); a clear error if this install lacks it."""
    path = resources.files("labfast").joinpath("detectors", name)
    if not path.is_file():
        raise FileNotFoundError(f"labfast/detectors/{name} is missing from this labfast install; reinstall labfast "
                                "or use the Haar detector (--detector haar) or explicit boxes (--boxes)")
    return Path(str(path))


@functools.cache
def _conversions() -> dict:
    return json.loads(detector_file(CONVERSION_FILE).read_text(encoding="utf-8"))


def _check_detector(detector: str) -> None:
    if detector not in DETECTORS:
        raise ValueError(f"unknown face detector {detector!r}; choose one of {', '.join(DETECTORS)}")


def conversion(detector: str = DEFAULT_DETECTOR) -> BoxConversion:
    """The fitted :class:`BoxConversion` of ``detector`` (``labfast/detectors/box_conversion.json``)."""
    _check_detector(detector)
    return BoxConversion(**_conversions()["detectors"][detector]["conversion"])


def box_error(detector: str = DEFAULT_DETECTOR) -> dict[str, dict[str, float]]:
    """The converted detector box's error on the 300-W training faces, in the terms box-jitter
    augmentation draws it: ``{"shift_x": {"mean", "std"}, "shift_y", "log_side"}`` with
    ``shift_x = (converted centre x - landmark centre x) / S`` (``S`` the landmark box's longer side)
    and ``log_side = log(converted longer side / S)``. ``AugmentConfig``'s defaults are YuNet's."""
    _check_detector(detector)
    return _conversions()["detectors"][detector]["box_error"]


@functools.cache
def _cascade() -> cv2.CascadeClassifier:
    """The frontal-face cascade, loaded once per process."""
    data = getattr(cv2, "data", None)
    if data is None or not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 removed them); "
            "install opencv-python-headless>=4.9,<5, use --detector yunet, or pass face boxes explicitly"
        )
    path = Path(data.haarcascades) / CASCADE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the Haar cascade {path} is missing from this OpenCV install; reinstall "
            "opencv-python-headless>=4.9,<5 or pass face boxes explicitly (labfast predict --boxes)"
        )
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load the Haar cascade {path}")
    return cascade


@functools.cache
def _yunet():
    """YuNet in ``cv2.FaceDetectorYN``, loaded once per process after checking the file's digest."""
    path = detector_file(YUNET_FILE)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != YUNET_SHA256:
        raise RuntimeError(f"{path} has SHA-256 {digest}, not the shipped YuNet's {YUNET_SHA256}; reinstall labfast")
    return cv2.FaceDetectorYN.create(str(path), "", (320, 320), YUNET_SCORE_THRESHOLD, YUNET_NMS_THRESHOLD, 5000)


def _as_bgr_uint8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image, dtype=np.uint8)
    raise ValueError(f"face detection expects an (H, W, 3) BGR or (H, W) grey image, got shape {image.shape}")


def _detect_yunet(image_bgr: np.ndarray, max_side: int, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    image = _as_bgr_uint8(image_bgr)
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    model = _yunet()
    model.setInputSize((image.shape[1], image.shape[0]))
    model.setScoreThreshold(min_score)
    _, found = model.detect(image)
    if found is None or len(found) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    found = np.asarray(found, np.float32)
    boxes = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:4]], axis=1)
    if scale < 1.0:  # back from the downscaled copy's pixels, pixel centres onto pixel centres
        boxes = rescale_pixel_coordinates(boxes, image_bgr.shape[1] / image.shape[1])
    return boxes, found[:, -1]


def _detect_haar(image_bgr: np.ndarray, min_face_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    if image_bgr.ndim == 3 and image_bgr.shape[2] == 3:
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    elif image_bgr.ndim == 2:
        grey = image_bgr
    else:
        raise ValueError(f"face detection expects an (H, W, 3) BGR or (H, W) grey image, got shape {image_bgr.shape}")
    # Histogram equalisation makes the cascade less sensitive to exposure (more faces found on 300-W).
    grey = cv2.equalizeHist(np.ascontiguousarray(grey, dtype=np.uint8))
    min_side = max(24, int(min(grey.shape) * min_face_fraction))
    found, _, weights = _cascade().detectMultiScale3(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side),
                                                     outputRejectLevels=True)
    if len(found) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    found = np.asarray(found, np.float32)
    return np.concatenate([found[:, :2], found[:, :2] + found[:, 2:]], axis=1), np.asarray(weights, np.float32).reshape(-1)


def _drop_degenerate(boxes: np.ndarray, scores: np.ndarray, detector: str) -> tuple[np.ndarray, np.ndarray]:
    """Boxes that are not finite or have no area are dropped: on some corrupt images YuNet returns
    NaN or huge negative coordinates, which are no face and would break every crop downstream."""
    keep = (np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
            & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    if not keep.all():
        log.warning("%s returned %d degenerate box(es) (not finite or empty); dropped", detector, int((~keep).sum()))
    return boxes[keep], scores[keep]


def detect_faces(image_bgr: np.ndarray, detector: str = DEFAULT_DETECTOR, max_side: int = MAX_SIDE,
                 min_face_fraction: float = 0.05, min_score: float | None = None) -> Detections:
    """Every face in a BGR (or grey) ``uint8`` image, largest box first.

    Args:
        image_bgr: ``(H, W, 3)`` BGR or ``(H, W)`` grey ``uint8`` image.
        detector: ``"yunet"`` (default) or ``"haar"``.
        max_side: YuNet: a longer image side above this is detected on a copy downscaled to it.
        min_face_fraction: Haar: the smallest face searched for, as a fraction of the shorter image
            side (never below the cascade's 24 px window).
        min_score: keep detections of at least this score; ``None``: YuNet's
            ``YUNET_SCORE_THRESHOLD``, every Haar detection.

    Returns:
        :class:`Detections` in the detector's own box convention; scores are YuNet's confidence in
        [0, 1], or Haar's level weight (unbounded). Convert with :func:`to_landmark_box`.
    """
    _check_detector(detector)
    if detector == "yunet":
        boxes, scores = _detect_yunet(image_bgr, max_side, YUNET_SCORE_THRESHOLD if min_score is None else min_score)
    else:
        boxes, scores = _detect_haar(image_bgr, min_face_fraction)
        if min_score is not None:
            boxes, scores = boxes[scores >= min_score], scores[scores >= min_score]
    boxes, scores = _drop_degenerate(boxes, scores, detector)
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    return Detections(boxes=boxes[order].astype(np.float32), scores=scores[order].astype(np.float32))


def to_landmark_box(boxes: np.ndarray, detector: str = DEFAULT_DETECTOR) -> np.ndarray:
    """Map ``detector`` boxes ``(F, 4)`` to the landmark-extent boxes LAB was trained on, ``(F, 4)`` float32,
    with the fitted :func:`conversion`."""
    return convert_boxes(boxes, conversion(detector))


def convert_boxes(boxes: np.ndarray, fitted: BoxConversion) -> np.ndarray:
    """Boxes ``(F, 4)`` through one :class:`BoxConversion` -> ``(F, 4)`` float32."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 + fitted.shift_x * width
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 + fitted.shift_y * height
    half_width, half_height = fitted.scale_x * width / 2, fitted.scale_y * height / 2
    return np.stack([centre_x - half_width, centre_y - half_height, centre_x + half_width, centre_y + half_height],
                    axis=1).astype(np.float32)


def detect_landmark_boxes(image_bgr: np.ndarray, detector: str = DEFAULT_DETECTOR,
                          min_score: float | None = None) -> Detections:
    """:func:`detect_faces` with the boxes already converted by :func:`to_landmark_box`."""
    found = detect_faces(image_bgr, detector, min_score=min_score)
    return Detections(boxes=to_landmark_box(found.boxes, detector), scores=found.scores)


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of ``boxes`` ``(F, 4)`` with one ``box`` ``(4,)``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    height = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = width * height
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def match(boxes: np.ndarray, landmark_box: np.ndarray) -> int | None:
    """Index of the detection that contains the landmark box's centre and overlaps it most, or ``None``."""
    centre_x, centre_y = (landmark_box[0] + landmark_box[2]) / 2, (landmark_box[1] + landmark_box[3]) / 2
    inside = (boxes[:, 0] <= centre_x) & (centre_x <= boxes[:, 2]) & (boxes[:, 1] <= centre_y) & (centre_y <= boxes[:, 3])
    if not inside.any():
        return None
    overlap = np.where(inside, box_iou(boxes, landmark_box), -1.0)
    return int(np.argmax(overlap))
