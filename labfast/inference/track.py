"""Faces through a video: detect, then follow each face by its own landmarks, under a stable id.

After a detection, each next frame's face box comes from the face's landmarks in the previous frames:
the extent of the last frame's landmarks, moved and resized by as much as it changed between the two
frames before (constant velocity: without it the box trails a moving face), and placed relative to
that extent as the detector's box was at the face's last detection. That last step matters: the
model was trained on detector-like boxes (box-jitter augmentation drawn from YuNet's box error), and
crops from the bare landmark extent fed back frame after frame gave 0.6 NME percentage points more
than detecting every frame on ``benchmarks/tracking.py``'s clip (4.83 % against 4.20 %), while the
detection-anchored box keeps within a few tenths (``benchmarks/RESULTS.md``). The detector runs only:

- every ``redetect_every`` frames (new faces entering the picture are found then; a frame without
  faces waits for this too), and
- when a followed face is lost: its :attr:`labfast.inference.aligner.Face.confidence` fell below
  ``min_confidence``, by default the aligner's face-or-not threshold
  (``labfast/detectors/face_confidence.json``: fitted to drop about 1 in 50 real faces). Typical
  confidences on faces lie around 0.3-0.6, so a threshold inside that range (an earlier one was
  0.43) made the detector run on most frames.

A face whose box has moved mostly out of the frame (``MIN_INSIDE``) has left the picture: it is
dropped without re-detecting (on a pan, detecting there finds nothing new).

Each face keeps its :attr:`~labfast.inference.aligner.Face.track_id` while it is followed; at a
re-detection a found face takes the id of the followed face whose landmark box it overlaps most
(among those whose last box's centre, or the centre its motion predicts, lies inside the found
face's landmark box), other found faces get new ids. A followed face keeps the detector
``score`` of the detection that started or last refreshed its track.
"""
from __future__ import annotations

import logging

import numpy as np

from labfast.data import box_from_landmarks
from labfast.inference.detect import box_iou

logger = logging.getLogger("labfast.inference.track")

#: Re-detect at least every this many frames: 15 keeps the detector on at most 1 frame in 10 of a clip
#: where no face is lost, and bounds how long a drifting box goes uncorrected (benchmarks/RESULTS.md).
DEFAULT_REDETECT_EVERY = 15
#: A followed face whose next box has less than this share of its area inside the frame has left it.
MIN_INSIDE = 0.5


def anchor(box: np.ndarray, landmark_box: np.ndarray) -> np.ndarray:
    """``(4,)`` the detector box relative to the landmark extent: centre offset and width, height, each
    over the extent's longer side."""
    side = float((landmark_box[2:] - landmark_box[:2]).max())
    offset = ((box[:2] + box[2:]) - (landmark_box[:2] + landmark_box[2:])) / 2 / side
    return np.concatenate([offset, (box[2:] - box[:2]) / side])


def place(relative: np.ndarray, landmark_box: np.ndarray) -> np.ndarray:
    """The inverse of :func:`anchor`: the box ``relative`` describes around ``landmark_box``."""
    side = float((landmark_box[2:] - landmark_box[:2]).max())
    centre = (landmark_box[:2] + landmark_box[2:]) / 2 + relative[:2] * side
    half = relative[2:] * side / 2
    return np.concatenate([centre - half, centre + half]).astype(np.float32)


def _inside_share(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(F,)`` share of each box's area inside an image of ``shape`` (edges at -0.5 and size - 0.5)."""
    height, width = shape[:2]
    inside_x = np.clip(np.minimum(boxes[:, 2], width - 0.5) - np.maximum(boxes[:, 0], -0.5), 0, None)
    inside_y = np.clip(np.minimum(boxes[:, 3], height - 0.5) - np.maximum(boxes[:, 1], -0.5), 0, None)
    return inside_x * inside_y / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def _centre_inside(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``(F,)`` whether each of ``boxes``' centres lies inside ``box``."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return (centres >= box[:2]).all(axis=1) & (centres <= box[2:]).all(axis=1)


def _landmark_boxes(faces: list) -> np.ndarray:
    return np.stack([box_from_landmarks(face.landmarks) for face in faces]).astype(np.float64)


class FaceTracker:
    """Landmarks of the faces in consecutive frames of one video, each face under a stable id.

    Args:
        aligner: a :class:`labfast.inference.aligner.FaceAligner` (its detector finds the faces; its
            ``min_score`` and ``min_confidence`` filter the detections).
        redetect_every: run the detector at least every this many frames (1 = every frame).
        min_confidence: a followed face below this confidence is lost (re-detect); ``None`` takes the
            aligner's face-or-not threshold ``aligner.min_confidence``.
    """

    def __init__(self, aligner, redetect_every: int = DEFAULT_REDETECT_EVERY, min_confidence: float | None = None):
        if redetect_every < 1:
            raise ValueError(f"redetect_every must be at least 1, got {redetect_every}")
        self.aligner = aligner
        self.redetect_every = redetect_every
        self.min_confidence = aligner.min_confidence if min_confidence is None else float(min_confidence)
        self.faces: list = []
        self.anchors: list[np.ndarray] = []  # per followed face: its detector box relative to its landmarks (anchor())
        self.previous_boxes: np.ndarray | None = None  # (F, 4) landmark boxes one frame before self.faces
        self.since_detection = 0
        self.detections = 0  # how many frames ran the detector
        self.next_id = 0

    def expected_landmark_boxes(self) -> np.ndarray:
        """``(F, 4)`` where the followed faces' landmark boxes should be in the next frame (constant velocity)."""
        boxes = _landmark_boxes(self.faces)
        return boxes if self.previous_boxes is None else boxes + (boxes - self.previous_boxes)

    def next_boxes(self) -> np.ndarray:
        """``(F, 4)`` the boxes to align the followed faces from in the next frame (module docstring)."""
        return np.stack([place(relative, box) for relative, box in zip(self.anchors, self.expected_landmark_boxes())])

    def update(self, frame: np.ndarray, heatmaps: bool = False) -> list:
        """The faces of the next frame (a list of :class:`labfast.inference.aligner.Face`)."""
        if self.detections and self.since_detection < self.redetect_every:
            followed = self._follow(frame, heatmaps)
            if followed is not None:
                return followed
        return self._detect(frame, heatmaps)

    def _follow(self, frame: np.ndarray, heatmaps: bool) -> list | None:
        """The followed faces in ``frame`` (those that left it dropped), or ``None`` when one is lost."""
        staying = _inside_share(self.next_boxes() if self.faces else np.zeros((0, 4)), frame.shape) >= MIN_INSIDE
        if not staying.all():
            logger.debug("%d followed face(s) left the frame", int((~staying).sum()))
            self.faces = [face for face, keep in zip(self.faces, staying) if keep]
            self.anchors = [relative for relative, keep in zip(self.anchors, staying) if keep]
            self.previous_boxes = None if self.previous_boxes is None else self.previous_boxes[staying]
        followed = self.aligner.predict(frame, boxes=self.next_boxes(), heatmaps=heatmaps) if self.faces else []
        if any(face.confidence < self.min_confidence for face in followed):
            logger.debug("a followed face fell below confidence %.3f: re-detecting", self.min_confidence)
            return None
        for face, before in zip(followed, self.faces):
            face.score, face.track_id = before.score, before.track_id
        self.previous_boxes = _landmark_boxes(self.faces) if self.faces else None
        self.faces = followed
        self.since_detection += 1
        return followed

    def _detect(self, frame: np.ndarray, heatmaps: bool) -> list:
        found = self.aligner.predict(frame, heatmaps=heatmaps)
        # where each followed face was last and where its motion would take it: a fast zoom makes the
        # two differ, and either may be the nearer to where the detector finds the face
        last = _landmark_boxes(self.faces) if self.faces else np.zeros((0, 4))
        expected = self.expected_landmark_boxes() if self.faces else np.zeros((0, 4))
        ids = [face.track_id for face in self.faces]
        for face in found:
            box = box_from_landmarks(face.landmarks).astype(np.float64)
            inside = _centre_inside(last, box) | _centre_inside(expected, box)
            overlap = np.where(inside, np.maximum(box_iou(last, box), box_iou(expected, box)), -1.0) if len(last) else np.zeros(0)
            best = int(np.argmax(overlap)) if len(overlap) else -1
            if best >= 0 and overlap[best] >= 0 and ids[best] is not None:
                face.track_id, ids[best] = ids[best], None  # one found face per track
            else:
                face.track_id, self.next_id = self.next_id, self.next_id + 1
        self.faces = found
        self.anchors = [anchor(face.box.astype(np.float64), box_from_landmarks(face.landmarks).astype(np.float64)) for face in found]
        self.previous_boxes = None
        self.detections += 1
        self.since_detection = 1
        return found


def moving_crop_clip(image: np.ndarray, landmarks: np.ndarray, frames: int = 60, size: int = 320,
                     seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """A clip with known ground truth from one annotated photo: a square window that drifts and
    zooms over the face, each frame the window resized to ``size`` x ``size``.

    The window's side swings between 2.0 and 3.2 face sizes and its centre circles up to 0.2 window
    sides around the face (one period over the clip, with a random phase), so the face moves by up
    to ~20 % of the frame and changes size by ~1.6x. Returns ``(frames, landmarks)`` as
    :func:`window_clip` does.
    """
    box = box_from_landmarks(np.asarray(landmarks, np.float64)).astype(np.float64)
    centre, face = (box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).max())
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    windows = []
    for index in range(frames):
        angle = 2 * np.pi * index / frames + phase
        side = face * (2.6 + 0.6 * np.sin(angle))
        windows.append((centre + 0.2 * side * np.array([np.cos(angle), np.sin(2 * angle)]), side))
    return window_clip(image, landmarks, windows, size)


def window_clip(image: np.ndarray, landmarks: np.ndarray, windows, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """One frame per square window ``(centre (2,), side)`` of ``image``, resized to ``size`` x ``size``
    (beyond the photo, its edge pixels repeat). Returns ``(frames, landmarks)``: ``frames``
    ``(size, size, 3)`` uint8 BGR, ``landmarks`` ``(frames, L, 2)`` float32 through the same affines."""
    import cv2

    landmarks = np.asarray(landmarks, np.float64)
    clip, truth = [], []
    for centre, side in windows:
        scale = size / side
        # the window's centre onto the frame's centre; warpAffine and the landmarks share the matrix
        offset = (size - 1) / 2 - np.asarray(centre, np.float64) * scale
        matrix = np.array([[scale, 0, offset[0]], [0, scale, offset[1]]])
        clip.append(cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE))
        truth.append(landmarks @ matrix[:, :2].T + matrix[:, 2])
    return clip, np.asarray(truth, np.float32)
