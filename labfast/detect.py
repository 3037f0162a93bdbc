"""Face detection with OpenCV's bundled frontal-face Haar cascade, and the box conversion LAB needs.

LAB's crops (``labfast.data.crop_face``) are made from the extent of the 68 landmarks, the box it
was trained on. A Haar box is a square from the forehead to the lower lip, so it is shifted up
and sized differently; :func:`to_landmark_box` maps it to the landmark-extent box LAB expects.

Measurement behind the conversion (``haarcascade_frontalface_default.xml``, OpenCV 4.14, the
parameters of :func:`detect_faces`): on all 2566 300-W crops of ``../shared/data/300w`` and the 12
whole 300-W photos of ``../shared/data/300w_fullres_samples``, 2416 images had a detection whose box
contains the centre of the annotated landmark box (162 had none). With ``s`` the Haar box side and
centres compared, the medians over those 2416 faces are

    landmark-box centre - Haar centre: dx = +0.003 s, dy = +0.150 s  (IQR 0.11 s, 0.06 s)
    landmark-box width  = 0.899 s, height = 0.885 s                    (IQR 0.08 s, 0.10 s)

(the 12 whole photos alone: dx = 0.00 s, dy = 0.18 s, width 0.86 s, height 0.87 s). The horizontal
offset is taken as 0 (a frontal detector has no left/right bias; 0.003 s is far inside its spread).
Converted with these constants, the IoU between the converted and the landmark box has median 0.79
and 10th percentile 0.66 over the 2416 faces, against 0.62 / 0.53 for the raw Haar box.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Haar box (side s, centre c) -> landmark-extent box; measured as described in the module docstring.
CENTRE_SHIFT_Y = 0.150
WIDTH_SCALE = 0.899
HEIGHT_SCALE = 0.885


@functools.cache
def _cascade() -> cv2.CascadeClassifier:
    """The frontal-face cascade, loaded once per process."""
    data = getattr(cv2, "data", None)
    if data is None or not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 removed them); "
            "install opencv-python-headless>=4.9,<5 or pass face boxes explicitly"
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


def detect_faces(image_bgr: np.ndarray, min_face_fraction: float = 0.05) -> np.ndarray:
    """Frontal faces in a BGR (or grey) ``uint8`` image as Haar boxes, largest first.

    Args:
        image_bgr: ``(H, W, 3)`` BGR or ``(H, W)`` grey ``uint8`` image.
        min_face_fraction: the smallest face searched for, as a fraction of the shorter image side
            (never below the cascade's 24 px window); small faces are slow to search and
            too small for a 256 px crop anyway.

    Returns:
        ``(F, 4)`` float32 boxes ``x0, y0, x1, y1`` (0-based pixel coordinates, ``x1 = x0 + side``),
        sorted by area, largest first. Convert with :func:`to_landmark_box` before cropping.
    """
    if image_bgr.ndim == 3:
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    elif image_bgr.ndim == 2:
        grey = image_bgr
    else:
        raise ValueError(f"detect_faces expects an (H, W, 3) or (H, W) image, got shape {image_bgr.shape}")
    # Histogram equalisation makes the cascade less sensitive to exposure: on the 2578 measurement
    # images it found the annotated face in 2416, against 2398 without.
    grey = cv2.equalizeHist(np.ascontiguousarray(grey, dtype=np.uint8))
    min_side = max(24, int(min(grey.shape) * min_face_fraction))
    found = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(found) == 0:
        return np.zeros((0, 4), np.float32)
    found = np.asarray(found, np.float32)
    boxes = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:]], axis=1)
    order = np.argsort(-(found[:, 2] * found[:, 3]), kind="stable")
    return boxes[order]


def to_landmark_box(haar_boxes: np.ndarray) -> np.ndarray:
    """Map Haar boxes ``(F, 4)`` to the landmark-extent boxes LAB was trained on, ``(F, 4)`` float32.

    Centre moved down by ``0.150 s``, width ``0.899 s``, height ``0.885 s`` (``s`` = Haar side);
    the module docstring gives the measurement.
    """
    haar_boxes = np.asarray(haar_boxes, np.float32).reshape(-1, 4)
    side = haar_boxes[:, 2] - haar_boxes[:, 0]
    centre_x = (haar_boxes[:, 0] + haar_boxes[:, 2]) / 2
    centre_y = (haar_boxes[:, 1] + haar_boxes[:, 3]) / 2 + CENTRE_SHIFT_Y * side
    half_width = WIDTH_SCALE * side / 2
    half_height = HEIGHT_SCALE * side / 2
    return np.stack(
        [centre_x - half_width, centre_y - half_height, centre_x + half_width, centre_y + half_height], axis=1
    ).astype(np.float32)
