"""Faces through a video: detect once, then follow each face by its own landmarks.

After a detection, each next frame's face box comes from the face's landmarks in the previous frames:
the extent of the last frame's landmarks (the landmark-extent box LAB is trained on), moved and
resized by as much as it changed between the two frames before (constant velocity: without it the
box trails a moving face, and the crop's offset grows frame by frame until the face is lost). The
detector runs only when needed:

- every ``redetect_every`` frames (new faces entering the picture are found then), and
- as soon as a tracked face's :attr:`labfast.inference.aligner.Face.confidence` falls below
  ``min_confidence`` (the face moved too far, was occluded or left the picture).

The default threshold is fitted on held-out **training** faces (the 5 % validation split of the
300-W training faces the shipped weights were selected on, never the test faces) by
``python -m labfast.tools.tracking_fit --data-root ../shared/data/300w`` and stored with its provenance in
``labfast/detectors/tracking.json``: each face is aligned from its landmark box moved and scaled by
growing amounts, a prediction with NME above 10 % (the FR@10 failure threshold) counts as lost, and
the threshold is the confidence that best separates kept from lost predictions (Youden's J).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from labfast.data import box_from_landmarks

logger = logging.getLogger("labfast.inference.track")

TRACKING_FILE = Path(__file__).resolve().parents[1] / "detectors" / "tracking.json"
DEFAULT_REDETECT_EVERY = 30


def default_min_confidence() -> float:
    """The fitted threshold of ``labfast/detectors/tracking.json`` (for the shipped weights)."""
    return float(json.loads(TRACKING_FILE.read_text(encoding="utf-8"))["min_confidence"])


class FaceTracker:
    """Landmarks of the faces in consecutive frames of one video.

    Args:
        aligner: a :class:`labfast.inference.aligner.FaceAligner` (its detector finds the faces).
        redetect_every: run the detector at least every this many frames (1 = every frame).
        min_confidence: re-detect when a tracked face's confidence falls below it; ``None`` takes
            the threshold fitted for the shipped weights (``labfast/detectors/tracking.json``). For
            other weights, fit theirs: ``python -m labfast.tools.tracking_fit --checkpoint CKPT --out FILE``.
    """

    def __init__(self, aligner, redetect_every: int = DEFAULT_REDETECT_EVERY, min_confidence: float | None = None):
        if redetect_every < 1:
            raise ValueError(f"redetect_every must be at least 1, got {redetect_every}")
        self.aligner = aligner
        self.redetect_every = redetect_every
        self.min_confidence = default_min_confidence() if min_confidence is None else float(min_confidence)
        self.faces: list = []
        self.previous_boxes: np.ndarray | None = None  # (F, 4) landmark boxes one frame before self.faces
        self.since_detection = 0
        self.detections = 0  # how many frames ran the detector

    def next_boxes(self) -> np.ndarray:
        """``(F, 4)`` boxes for the next frame: the last landmark boxes plus their last change."""
        boxes = np.stack([box_from_landmarks(face.landmarks) for face in self.faces])
        return boxes if self.previous_boxes is None else boxes + (boxes - self.previous_boxes)

    def update(self, frame: np.ndarray, heatmaps: bool = False) -> list:
        """The faces of the next frame (a list of :class:`labfast.inference.aligner.Face`)."""
        if self.faces and self.since_detection < self.redetect_every:
            tracked = self.aligner.predict(frame, boxes=self.next_boxes(), heatmaps=heatmaps)
            if all(face.confidence >= self.min_confidence for face in tracked):
                self.previous_boxes = np.stack([box_from_landmarks(face.landmarks) for face in self.faces])
                self.faces = tracked
                self.since_detection += 1
                return tracked
            logger.debug("a tracked face fell below confidence %.3f: re-detecting", self.min_confidence)
        self.faces = self.aligner.predict(frame, heatmaps=heatmaps)
        self.previous_boxes = None
        self.detections += 1
        self.since_detection = 1
        return self.faces


def moving_crop_clip(image: np.ndarray, landmarks: np.ndarray, frames: int = 60, size: int = 320,
                     seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """A clip with known ground truth from one annotated photo: a square window that drifts and
    zooms over the face, each frame the window resized to ``size`` x ``size``.

    The window's side swings between 2.0 and 3.2 face sizes and its centre circles up to 0.2 window
    sides around the face (one period over the clip, with a random phase), so the face moves by up
    to ~20 % of the frame and changes size by ~1.6x. Returns ``(frames, landmarks)``: ``frames``
    ``(size, size, 3)`` uint8 BGR, ``landmarks`` ``(frames, L, 2)`` float32 through the same affines.
    """
    import cv2

    landmarks = np.asarray(landmarks, np.float64)
    box = box_from_landmarks(landmarks).astype(np.float64)
    centre, face = (box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).max())
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    clip, truth = [], []
    for index in range(frames):
        angle = 2 * np.pi * index / frames + phase
        side = face * (2.6 + 0.6 * np.sin(angle))
        window_centre = centre + 0.2 * side * np.array([np.cos(angle), np.sin(2 * angle)])
        scale = size / side
        # the window's centre onto the frame's centre; warpAffine and the landmarks share the matrix
        offset = (size - 1) / 2 - window_centre * scale
        matrix = np.array([[scale, 0, offset[0]], [0, scale, offset[1]]])
        clip.append(cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE))
        truth.append(landmarks @ matrix[:, :2].T + matrix[:, 2])
    return clip, np.asarray(truth, np.float32)
