"""``FaceAligner``: the one user-facing class for inference (STYLE.md convention 8).

Build it once (it loads the checkpoint), then call :meth:`FaceAligner.predict` on an image, an
image path or a list of them, with face boxes or with the bundled YuNet detector (``detector="haar"``
for OpenCV's Haar cascade)::

    aligner = FaceAligner("lab_300w.pt")               # device "auto": CUDA if available
    faces = aligner.predict("photo.jpg")               # list of Face, one per detected face
    faces[0].landmarks                                 # (68, 2) float32, original image pixels

Every face is cropped exactly as in training without augmentation (``labfast.data.crop_face``
from the face box), the crops of all faces of all images go through the model in batches of
``batch_size``, and the landmarks are mapped back through the inverse of the crop's affine.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from labfast import schemes

from labfast.inference import detect
from labfast.checkpoint import load_model
from labfast.inference.runtime import DEFAULT_THREADS, RUNTIMES, TorchModel, inference_runtime, set_threads
from labfast.inference.cuda_graphs import CudaGraphModel, check_device
from labfast.data import crop_face

logger = logging.getLogger("labfast.inference.aligner")

#: The shipped default weights: (package, path inside it). Read through importlib.resources, so the
#: file only needs to be package data of ``labfast`` (``weights/`` need not be a Python package).
DEFAULT_WEIGHTS = ("labfast", "weights/lab_300w.pt")


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
            (:func:`landmark_confidence`). Low when the crop holds no face or a badly placed one;
            ``labfast.inference.track`` re-detects below a threshold fitted on held-out training faces.
        score: the face detector's score for this face, ``None`` when the caller gave the box.
    """

    landmarks: np.ndarray
    box: np.ndarray
    boundary_heatmaps: np.ndarray | None
    heatmap_to_image: np.ndarray
    confidence: float = float("nan")
    score: float | None = None


def default_weights() -> str:
    """Path of the shipped default checkpoint; a clear error if this install has none."""
    package, name = DEFAULT_WEIGHTS
    path = resources.files(package).joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no default weights are bundled with this labfast install ({package}/{name} is absent); "
            "pass a checkpoint: FaceAligner('path/to/model.pt') or labfast predict --checkpoint PATH "
            "(labfast train writes one)"
        )
    return os.fspath(path)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def heatmap_to_crop(heatmap_size: int, input_size: int) -> np.ndarray:
    """``(3, 3)`` affine heatmap pixels -> crop pixels, pixel centres aligned:
    ``x_crop = (x_heatmap + 0.5) * input_size / heatmap_size - 0.5`` (``labfast.boundary.heatmaps``)."""
    scale = input_size / heatmap_size
    offset = 0.5 * scale - 0.5
    return np.array([[scale, 0.0, offset], [0.0, scale, offset], [0.0, 0.0, 1.0]])


def landmark_confidence(landmarks: torch.Tensor, boundary_heatmaps: torch.Tensor, input_size: int) -> torch.Tensor:
    """``(N,)`` agreement of landmarks ``(N, L, 2)`` (crop pixels) with boundary heatmaps ``(N, K, h, w)``.

    Every landmark lies on a facial boundary, so a good prediction finds a strong response of some
    boundary heatmap under each landmark: the score is the mean over the ``L`` landmarks of
    ``max_k heatmap_k`` bilinearly sampled at the landmark (heatmaps cover the crop, pixel centres
    aligned; outside the crop it is 0).
    """
    strongest = boundary_heatmaps.float().amax(dim=1, keepdim=True)  # (N, 1, h, w)
    grid = ((landmarks.float() + 0.5) / input_size * 2 - 1)[:, None]  # (N, 1, L, 2) in [-1, 1]
    sampled = F.grid_sample(strongest, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.clamp(0, 1).mean(dim=(1, 2, 3))


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
        cuda_graphs: on CUDA, replay each batch size's forward from a CUDA graph captured on first
            use (batches padded to powers of two up to ``batch_size``): the low-latency path for small
            batches, where launching kernels one by one costs more than the GPU work
            (``labfast.inference.cuda_graphs``). CUDA devices only; the PyTorch runtime.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 batch_size: int = 64, threads: int | None = None, flip: bool = False, runtime: str = "auto",
                 detector: str = detect.DEFAULT_DETECTOR, cuda_graphs: bool = False):
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
        self.threads = set_threads(threads) if self.device.type == "cpu" else None
        self.model, self.info = load_model(self.checkpoint, self.device)
        self.scheme = schemes.get(self.info["scheme"])
        self.boundary_scheme = schemes.get(self.info.get("boundary_scheme", self.info["scheme"]))
        self.input_size = int(self.info["config"].input_size)
        if cuda_graphs:
            self.forward = CudaGraphModel(TorchModel(self.model), self.device, batch_size)
        else:
            self.forward = inference_runtime(self.model, self.device, runtime, self.threads or DEFAULT_THREADS)

    def predict(self, image_or_batch, boxes=None, heatmaps: bool = False) -> list[Face] | list[list[Face]]:
        """Landmarks of every face in one image or in a list of images.

        Args:
            image_or_batch: one ``(H, W, 3)`` uint8 BGR image (as ``cv2.imread`` gives) or an image
                file path, or a list of them (sizes may differ).
            boxes: ``None`` to detect faces (``self.detector``, its boxes converted to landmark-extent
                boxes with :func:`labfast.inference.detect.to_landmark_box`); else the face boxes ``x0, y0, x1, y1``
                in the landmark-extent convention LAB was trained on: an ``(F, 4)`` array for one
                image, or a list of them (one per image, ``F`` may be 0) for a list of images.
            heatmaps: also return each face's predicted boundary heatmaps.

        Returns:
            For one image, a list of :class:`Face` (empty if no face); for a list of images, a list
            of such lists in the same order.
        """
        if image_or_batch is None:
            raise ValueError(_NONE_IMAGE.format(index=0))
        single = (isinstance(image_or_batch, np.ndarray) and image_or_batch.ndim in (2, 3)) or \
            isinstance(image_or_batch, (str, os.PathLike))
        images = [_as_bgr(image, index) for index, image in enumerate([image_or_batch] if single else image_or_batch)]
        if boxes is None:
            found = [detect.detect_landmark_boxes(image, self.detector) for image in images]
            face_boxes = [detections.boxes for detections in found]
            scores = [detections.scores for detections in found]
        else:
            face_boxes = [boxes] if single else list(boxes)
            if len(face_boxes) != len(images):
                raise ValueError(f"got {len(face_boxes)} box lists for {len(images)} images")
            face_boxes = [_check_boxes(image_boxes, index, image.shape) for index, (image_boxes, image) in enumerate(zip(face_boxes, images))]
            scores = [[None] * len(image_boxes) for image_boxes in face_boxes]
        results = self._align(images, face_boxes, scores, heatmaps)
        return results[0] if single else results

    def _landmarks(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Crop-space landmarks ``(N, L, 2)`` and last-stack boundary heatmaps ``(N, K, h, w)``;
        with ``flip``, landmarks averaged with the mirrored crop's, mapped back through
        ``x -> S - 1 - x`` and the scheme's flip permutation."""
        landmarks, boundary = (output.float().cpu().numpy() for output in self.forward(batch))
        if self.flip:
            mirrored = self.forward(batch.flip(-1))[0].float().cpu().numpy()
            unflipped = np.empty_like(mirrored)
            unflipped[:, np.asarray(self.scheme.flip_permutation)] = mirrored  # mirrored point i is point permutation[i]
            unflipped[..., 0] = self.input_size - 1 - unflipped[..., 0]
            landmarks = (landmarks + unflipped) / 2
        return landmarks, boundary

    @torch.inference_mode()
    def _align(self, images: list[np.ndarray], face_boxes: list[np.ndarray], scores: list, heatmaps: bool) -> list[list[Face]]:
        owners = [(index, box, score) for index, boxes in enumerate(face_boxes) for box, score in zip(boxes, scores[index])]
        results: list[list[Face]] = [[] for _ in images]
        for start in range(0, len(owners), self.batch_size):
            chunk = owners[start:start + self.batch_size]
            crops, affines = [], []
            for index, box, _ in chunk:
                crop, affine = crop_face(images[index], box, input_size=self.input_size)
                crops.append(crop)
                affines.append(np.asarray(affine, np.float64))
            batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(self.device, torch.float32)
            landmarks, boundary = self._landmarks(batch)
            confidence = landmark_confidence(torch.from_numpy(landmarks), torch.from_numpy(boundary),
                                             self.input_size).numpy()
            heatmap_size = boundary.shape[-1]
            for position, ((index, box, score), affine) in enumerate(zip(chunk, affines)):
                crop_to_image = np.vstack([cv2.invertAffineTransform(affine), [0.0, 0.0, 1.0]])
                original = landmarks[position] @ crop_to_image[:2, :2].T + crop_to_image[:2, 2]
                results[index].append(Face(
                    landmarks=original.astype(np.float32),
                    box=np.asarray(box, np.float32),
                    boundary_heatmaps=boundary[position] if heatmaps else None,
                    heatmap_to_image=(crop_to_image @ heatmap_to_crop(heatmap_size, self.input_size))[:2],
                    confidence=float(confidence[position]),
                    score=None if score is None else float(score),
                ))
        return results


_NONE_IMAGE = ("image {index} is None, not an image: cv2.imread returns None for a path it cannot read "
               "(missing file, wrong path, or a format OpenCV does not decode); check the path, or pass the path itself")


def _as_bgr(image, index: int) -> np.ndarray:
    """Accept ``(H, W, 3)`` BGR or ``(H, W)`` grey uint8, or an image path; name the image in the error otherwise."""
    if image is None:
        raise ValueError(_NONE_IMAGE.format(index=index))
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        pixels = cv2.imread(path, cv2.IMREAD_COLOR)
        if pixels is None:
            reason = "no such file" if not os.path.isfile(path) else "OpenCV cannot decode it"
            raise ValueError(f"image {index}: cannot read {path} ({reason})")
        return pixels
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: expected uint8 pixels (as cv2.imread gives), got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: expected an (H, W, 3) BGR or (H, W) grey image, got shape {image.shape}")
    return image


def _check_boxes(boxes, index: int, image_shape: tuple[int, ...]) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32)
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {index}: boxes must be (F, 4) x0, y0, x1, y1, got shape {boxes.shape}")
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise ValueError(f"image {index}: box {int(np.argmax(bad))} {boxes[bad][0].tolist()} needs x1 > x0, y1 > y0, finite values")
    height, width = image_shape[:2]
    for number, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        # Landmark-extent boxes lie inside the image (the landmarks do); half a pixel is rounding.
        if x0 < -0.5 or y0 < -0.5 or x1 > width - 0.5 or y1 > height - 0.5:
            inside = max(0.0, min(x1, width - 0.5) - max(x0, -0.5)) * max(0.0, min(y1, height - 0.5) - max(y0, -0.5))
            logger.warning("image %d: box %d [%.1f, %.1f, %.1f, %.1f] lies %s the %dx%d image (%.0f %% of it inside); "
                           "boxes are x0, y0, x1, y1 in 0-based pixels of that image", index, number, x0, y0, x1, y1,
                           "outside" if inside == 0 else "partly outside", width, height, 100 * inside / ((x1 - x0) * (y1 - y0)))
    return boxes
