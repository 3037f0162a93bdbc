"""``FaceAligner``: the one user-facing class for inference.

Build it once (it loads the checkpoint), then call :meth:`FaceAligner.predict` on an image, an
image path or a list of them, with face boxes or with the bundled YuNet detector (``detector="haar"``
for OpenCV's Haar cascade)::

    aligner = FaceAligner("lab_300w.pt")               # device "auto": CUDA if available
    faces = aligner.predict("photo.jpg")               # list of Face, one per detected face
    faces[0].landmarks                                 # (68, 2) float32, original image pixels

Every face goes through ``labfast.inference.core.InferenceCore``, the one inference path of
labfast (eval and training validation run it too): the training crop without augmentation from the
face box, the crops of all faces of all images in batches of ``batch_size`` on the device, and the
landmarks mapped back to the original image there.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from labfast import schemes
from labfast.checkpoint import load_model
from labfast.inference import detect
from labfast.inference.core import InferenceCore, resolve_device
from labfast.inference.cuda_graphs import CudaGraphModel, check_device
from labfast.inference.runtime import DEFAULT_THREADS, RUNTIMES, TorchModel, inference_runtime, set_threads
from labfast.inference.weights import default_weights

logger = logging.getLogger("labfast.inference.aligner")

#: The face-or-not threshold on ``Face.confidence`` fitted for the shipped weights, with its provenance
#: and rates (``python -m labfast.tools.face_confidence_fit``).
FACE_CONFIDENCE_FILE = Path(__file__).resolve().parents[1] / "detectors" / "face_confidence.json"


def default_min_confidence() -> float:
    """The fitted face-or-not threshold of ``labfast/detectors/face_confidence.json``."""
    return float(json.loads(FACE_CONFIDENCE_FILE.read_text(encoding="utf-8"))["min_confidence"])


@dataclass
class Face:
    """One aligned face, in the coordinates of the image it came from.

    Attributes:
        landmarks: ``(L, 2)`` float32, 0-based pixel coordinates (x, y) of the original image.
        box: ``(4,)`` float32 ``x0, y0, x1, y1``, the landmark-extent-style box the crop was made
            from (a converted detector box, or the box the caller gave).
        boundary_heatmaps: ``(K, h, w)`` float32 boundary heatmaps of the last estimator stack on
            the crop's heatmap grid, or ``None`` when not asked for.
        heatmap_to_image: ``(2, 3)`` float64 affine from heatmap pixels to original-image pixels
            (heatmap pixel centres at integer coordinates, like the image's).
        confidence: how well the regressed landmarks agree with the predicted boundary heatmaps, in
            [0, 1]: the mean over landmarks of the strongest boundary heatmap at the landmark
            (:func:`labfast.inference.core.landmark_confidence`). Low when the crop holds no face or a
            badly placed one: detections below ``FaceAligner.min_confidence`` are dropped as
            non-faces, and ``labfast.inference.track`` re-detects when a tracked face falls below it.
        score: the face detector's score for this face, ``None`` when the caller gave the box; for a
            face followed by ``labfast.inference.track.FaceTracker``, the score of the detection
            that started or last refreshed its track.
        track_id: ``FaceTracker``'s id of the face, the same on every frame while it is followed;
            ``None`` outside a tracker.
    """

    landmarks: np.ndarray
    box: np.ndarray
    boundary_heatmaps: np.ndarray | None
    heatmap_to_image: np.ndarray
    confidence: float = float("nan")
    score: float | None = None
    track_id: int | None = None


class FaceAligner:
    """LAB landmarks for faces in images.

    Args:
        checkpoint: a labfast checkpoint path; ``None`` takes the weights shipped in
            ``labfast/weights/lab_300w.pt`` (an error says so if this install has none).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        batch_size: faces per forward pass, across images.
        threads: CPU threads (torch's intra-op threads, process-wide, and ONNX Runtime's); ``None``
            takes ``labfast.inference.runtime.DEFAULT_THREADS`` (1: more threads made batch-1 inference
            several times slower on a shared CPU; that module says why). Ignored on CUDA.
        flip: average each face's landmarks with those of its mirrored crop (test-time augmentation,
            twice the compute); boundary heatmaps stay those of the unmirrored crop.
        runtime: ``"auto"`` (ONNX Runtime on the CPU where installed and checked equal to eager,
            else eager PyTorch), ``"torch"`` or ``"onnxruntime"``; ``labfast.inference.runtime``.
        detector: the face detector used when no boxes are given: ``"yunet"`` (default, shipped in
            ``labfast/detectors/``) or ``"haar"`` (OpenCV's frontal-face cascade).
        min_score: the detector's score a detection needs (``None``: YuNet's 0.6, every Haar
            detection; ``labfast.inference.detect.detect_faces``).
        min_confidence: detections whose landmark confidence (``Face.confidence``) falls below it are
            dropped as non-faces; ``None`` takes the threshold fitted for the shipped weights
            (``labfast/detectors/face_confidence.json``: 1 of 98 real faces fell below it) when they
            are the ones loaded, else 0 (a threshold fitted for other weights means nothing; fit
            yours with ``python -m labfast.tools.face_confidence_fit --checkpoint CKPT --out FILE``);
            0 keeps every detection. Boxes the caller gives are never dropped.
        cuda_graphs: on CUDA, replay each batch size's forward from a CUDA graph captured on first
            use (batches padded to powers of two up to ``batch_size``): the low-latency path for small
            batches, where launching kernels one by one costs more than the GPU work
            (``labfast.inference.cuda_graphs``). CUDA devices only; the PyTorch runtime.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 batch_size: int = 64, threads: int | None = None, flip: bool = False, runtime: str = "auto",
                 detector: str = detect.DEFAULT_DETECTOR, cuda_graphs: bool = False, min_score: float | None = None,
                 min_confidence: float | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if detector not in detect.DETECTORS:
            raise ValueError(f"unknown face detector {detector!r}; choose one of {', '.join(detect.DETECTORS)}")
        self.checkpoint = os.fspath(checkpoint) if checkpoint is not None else default_weights()
        self.device = resolve_device(device)
        if cuda_graphs:
            if runtime == "onnxruntime":
                raise ValueError("cuda_graphs=True replays PyTorch's CUDA forward; runtime 'onnxruntime' is the CPU path")
            check_device(self.device)
        self.batch_size = batch_size
        self.flip = bool(flip)
        self.detector = detector
        self.min_score = min_score
        if min_confidence is None:
            min_confidence = default_min_confidence() if checkpoint is None else 0.0
        self.min_confidence = float(min_confidence)
        self._warned_partly_outside = False
        self.threads = set_threads(threads) if self.device.type == "cpu" else None
        self.model, self.info = load_model(self.checkpoint, self.device)
        self.scheme = schemes.get(self.info["scheme"])
        self.boundary_scheme = schemes.get(self.info.get("boundary_scheme", self.info["scheme"]))
        self.input_size = int(self.info["config"].input_size)
        if cuda_graphs:
            forward = CudaGraphModel(TorchModel(self.model), self.device, batch_size)
        else:
            forward = inference_runtime(self.model, self.device, runtime, self.threads or DEFAULT_THREADS)
        self.core = InferenceCore(forward, self.input_size, self.device,
                                  self.scheme.flip_permutation if self.flip else None)

    @property
    def forward(self):
        """The model's inference callable the core runs (``labfast.inference.core.Forward``)."""
        return self.core.forward

    @forward.setter
    def forward(self, forward) -> None:
        self.core.forward = forward

    def predict(self, image_or_batch, boxes=None, heatmaps: bool = False) -> list[Face] | list[list[Face]]:
        """Landmarks of every face in one image or in a list of images.

        Args:
            image_or_batch: one ``(H, W, 3)`` uint8 BGR image (as ``cv2.imread`` gives; BGRA and
                grey are accepted too) or an image file path, or a list of them (sizes may differ).
            boxes: ``None`` to detect faces (``self.detector``, its boxes converted to landmark-extent
                boxes with :func:`labfast.inference.detect.to_landmark_box`); else the face boxes ``x0, y0, x1, y1``
                in the landmark-extent convention LAB was trained on: an ``(F, 4)`` array for one
                image, or a list of them (one per image, ``F`` may be 0) for a list of images.
            heatmaps: also return each face's predicted boundary heatmaps.

        Returns:
            For one image, a list of :class:`Face` (empty if no face); for a list of images, a list
            of such lists in the same order. Detections below ``min_confidence`` are left out.
        """
        if image_or_batch is None:
            raise ValueError(_NONE_IMAGE.format(index=0))
        single = (isinstance(image_or_batch, np.ndarray) and image_or_batch.ndim in (2, 3)) or \
            isinstance(image_or_batch, (str, os.PathLike))
        images = [_as_bgr(image, index) for index, image in enumerate([image_or_batch] if single else image_or_batch)]
        if boxes is None:
            found = [detect.detect_landmark_boxes(image, self.detector, self.min_score) for image in images]
            face_boxes = [detections.boxes for detections in found]
            scores = [detections.scores for detections in found]
            results = self._align(images, face_boxes, scores, heatmaps)
            results = [[face for face in faces if face.confidence >= self.min_confidence] for faces in results]
            return results[0] if single else results
        face_boxes = [boxes] if single else list(boxes)
        if len(face_boxes) != len(images):
            raise ValueError(f"got {len(face_boxes)} box lists for {len(images)} images")
        face_boxes = [self._checked_boxes(image_boxes, index, image.shape)
                      for index, (image_boxes, image) in enumerate(zip(face_boxes, images))]
        scores = [[None] * len(image_boxes) for image_boxes in face_boxes]
        results = self._align(images, face_boxes, scores, heatmaps)
        return results[0] if single else results

    def _checked_boxes(self, boxes, index: int, image_shape: tuple[int, ...]) -> np.ndarray:
        """:func:`check_boxes`, with a warning for the first box partly outside the image and debug lines
        after it: a tracked face at the frame's edge would otherwise warn on every frame."""
        boxes, partly_outside = check_boxes(boxes, index, image_shape)
        for message in partly_outside:
            level = logging.DEBUG if self._warned_partly_outside else logging.WARNING
            logger.log(level, "%s; boxes are x0, y0, x1, y1 in 0-based pixels of that image%s", message,
                       "" if self._warned_partly_outside else " (further such boxes are logged at debug level)")
            self._warned_partly_outside = True
        return boxes

    def _align(self, images: list[np.ndarray], face_boxes: list[np.ndarray], scores: list, heatmaps: bool) -> list[list[Face]]:
        owners = [(index, box, score) for index, boxes in enumerate(face_boxes) for box, score in zip(boxes, scores[index])]
        batches = self.core.align(((images[index], box) for index, box, _ in owners), self.batch_size, heatmaps)
        aligned = ((batch, position) for batch in batches for position in range(len(batch)))
        results: list[list[Face]] = [[] for _ in images]
        for (index, box, score), (batch, position) in zip(owners, aligned):
            results[index].append(Face(
                landmarks=batch.landmarks[position],
                box=np.asarray(box, np.float32),
                boundary_heatmaps=None if batch.boundary_heatmaps is None else batch.boundary_heatmaps[position],
                heatmap_to_image=batch.heatmap_to_image[position],
                confidence=float(batch.confidence[position]),
                score=None if score is None else float(score),
            ))
        return results


_NONE_IMAGE = ("image {index} is None, not an image: cv2.imread returns None for a path it cannot read "
               "(missing file, wrong path, or a format OpenCV does not decode); check the path, or pass the path itself")


def _as_bgr(image, index: int) -> np.ndarray:
    """Accept ``(H, W, 3)`` BGR, ``(H, W, 4)`` BGRA (alpha dropped, as ``cv2.imread`` drops an RGBA
    file's) or ``(H, W)`` grey uint8, or an image path; name the image in the error otherwise."""
    if image is None:
        raise ValueError(_NONE_IMAGE.format(index=index))
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if os.path.isdir(path):
            raise ValueError(f"image {index}: {path} is a folder; pass its image files (a list of paths), "
                             "or run `labfast predict FOLDER` for every image in it")
        pixels = cv2.imread(path, cv2.IMREAD_COLOR)
        if pixels is None:
            reason = "no such file" if not os.path.isfile(path) else "OpenCV cannot decode it"
            raise ValueError(f"image {index}: cannot read {path} ({reason})")
        return pixels
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: expected uint8 pixels (as cv2.imread gives), got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image {index}: expected an (H, W, 3) BGR, (H, W, 4) BGRA or (H, W) grey image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index} is empty: {image.shape[1]}x{image.shape[0]} pixels")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


#: A face box's longer side may be at most this many times the image's longer side: a face cut by
#: the frame reaches beyond it, but a box larger than this holds the whole image as a sliver and its
#: crop would smooth the image away (a 1e9 px box asked OpenCV for a blur kernel it cannot allocate).
MAX_BOX_TO_IMAGE = 4.0


def check_boxes(boxes, index: int, image_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """``boxes`` as ``(F, 4)`` float32 and a description of each box partly outside the image (kept: a
    face cut by the frame), or a ``ValueError`` naming image ``index`` and the box: malformed, wholly
    outside the image, or over :data:`MAX_BOX_TO_IMAGE` times its size."""
    boxes = np.asarray(boxes, np.float32)
    partly_outside: list[str] = []
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32), partly_outside
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {index}: boxes must be (F, 4) x0, y0, x1, y1, got shape {boxes.shape}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise ValueError(f"image {index}: box {int(np.argmax(bad))} {boxes[bad][0].tolist()} needs x1 > x0, y1 > y0, finite values")
    height, width = image_shape[:2]
    for number, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        where = f"image {index}: box {number} [{x0:g}, {y0:g}, {x1:g}, {y1:g}]"
        if max(x1 - x0, y1 - y0) > MAX_BOX_TO_IMAGE * max(width, height):
            raise ValueError(f"{where} is over {MAX_BOX_TO_IMAGE:g} times the {width}x{height} image's size; "
                             "boxes are x0, y0, x1, y1 around one face, in 0-based pixels of that image")
        # Landmark-extent boxes lie inside the image (the landmarks do): half a pixel is rounding,
        # and a thousandth more the float32 arithmetic of a converted detector box
        edge = 0.5 + 1e-3
        if x0 < -edge or y0 < -edge or x1 > width - 1 + edge or y1 > height - 1 + edge:
            inside = max(0.0, min(x1, width - 0.5) - max(x0, -0.5)) * max(0.0, min(y1, height - 0.5) - max(y0, -0.5))
            if inside == 0:
                raise ValueError(f"{where} lies wholly outside the {width}x{height} image; "
                                 "boxes are x0, y0, x1, y1 in 0-based pixels of that image")
            partly_outside.append(f"{where} lies partly outside the {width}x{height} image "
                                  f"({100 * inside / ((x1 - x0) * (y1 - y0)):.0f} % of it inside)")
    return boxes, partly_outside
