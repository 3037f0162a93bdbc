"""The batched inference core: faces in images in, landmarks in image pixels out.

Every prediction labfast makes runs through :class:`InferenceCore`: ``FaceAligner`` (photos and
videos), the evaluation protocols (``labfast eval``), training's validation NME and the demo. A face
is therefore cropped, run and mapped back the same way wherever its landmarks are measured or shown.

For a batch of faces:

1. crop, on the host: each face's square around its box, warped from its image as uint8 BGR
   (``labfast.data.crop_face_pixels``: the training crop, without augmentation);
2. upload the uint8 crops (a quarter of the bytes of float32) and make them RGB, channels first, on
   the device (:func:`model_input`); the model turns them into [0, 1] there (``LAB.normalize``: the
   numbers ``labfast.data.crop_face`` gives on the host);
3. forward; with flip averaging, a second forward of the mirrored crops, whose landmarks are
   mirrored back (``x -> S - 1 - x``) and relabelled (the scheme's flip permutation) and averaged in;
4. each face's confidence (:func:`landmark_confidence`) from its crop-space landmarks and the
   unmirrored crop's boundary heatmaps;
5. the landmarks mapped to image pixels through the inverse of each crop's affine, in float64;
6. only the landmarks and the confidences copied back to the host; the boundary heatmaps only when
   asked for.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labfast.data import crop_face_pixels
from labfast.data.transforms import apply_affine, invert_affine, rescale_pixel_coordinates
from labfast.inference.runtime import TorchModel

#: ``images (N, 3, S, S)`` uint8 RGB on the core's device -> float32 ``landmarks (N, L, 2)`` in crop
#: pixels and ``boundary_heatmaps (N, K, S/4, S/4)``: eager PyTorch, ONNX Runtime or a CUDA-graph
#: replay (``labfast.inference.runtime``, ``labfast.inference.cuda_graphs``).
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given, or a ``ValueError`` saying
    why it cannot run here (not a device name; CUDA asked of a torch without it or a GPU it lacks)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but no GPU is usable"
            raise ValueError(f"device {device!r} asked for, but this torch {torch.__version__} is {build}; "
                             "use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return resolved


def model_input(crops: torch.Tensor) -> torch.Tensor:
    """``(N, S, S, 3)`` uint8 BGR crops -> the model's input ``(N, 3, S, S)`` uint8 RGB, NCHW-contiguous,
    on the crops' device (the model divides by 255 there: ``LAB.normalize``)."""
    return crops.permute(0, 3, 1, 2).flip(1).contiguous()


def heatmap_to_crop(heatmap_size: int, input_size: int) -> np.ndarray:
    """``(3, 3)`` affine heatmap pixels -> crop pixels, pixel centres aligned (the grid of
    ``labfast.boundary.heatmaps``): ``x_crop = rescale_pixel_coordinates(x_heatmap, input_size / heatmap_size)``."""
    scale = input_size / heatmap_size
    offset = rescale_pixel_coordinates(0.0, scale)
    return np.array([[scale, 0.0, offset], [0.0, scale, offset], [0.0, 0.0, 1.0]])


def landmark_confidence(landmarks: torch.Tensor, boundary_heatmaps: torch.Tensor, input_size: int) -> torch.Tensor:
    """``(N,)`` agreement of landmarks ``(N, L, 2)`` (crop pixels) with boundary heatmaps ``(N, K, h, w)``.

    Every landmark lies on a facial boundary, so a good prediction finds a strong response of some
    boundary heatmap under each landmark: the score is the mean over the ``L`` landmarks of
    ``max_k heatmap_k`` bilinearly sampled at the landmark (heatmaps cover the crop, pixel centres
    aligned; outside the crop it is 0).
    """
    strongest = boundary_heatmaps.float().amax(dim=1, keepdim=True)  # (N, 1, h, w)
    # grid_sample's [-1, 1] spans the crop's outer edges: twice the crop coordinates on a one-pixel grid
    grid = 2 * rescale_pixel_coordinates(landmarks.float(), 1 / input_size)[:, None]  # (N, 1, L, 2)
    sampled = F.grid_sample(strongest, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.clamp(0, 1).mean(dim=(1, 2, 3))


@dataclass
class Aligned:
    """One batch of aligned faces, on the host.

    Attributes:
        landmarks: ``(N, L, 2)`` float32, 0-based pixel coordinates (x, y) of each face's image.
        confidence: ``(N,)`` float32, :func:`landmark_confidence` in [0, 1].
        heatmap_to_image: ``(N, 2, 3)`` float64 affines from heatmap pixels to image pixels.
        boundary_heatmaps: ``(N, K, h, w)`` float32 of the last estimator stack on the unmirrored
            crops, or ``None`` when not asked for.
    """

    landmarks: np.ndarray
    confidence: np.ndarray
    heatmap_to_image: np.ndarray
    boundary_heatmaps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.landmarks)


class InferenceCore:
    """Landmarks of faces, batched, with the work on the device (module docstring).

    Args:
        forward: the model's inference callable (:data:`Forward`), attribute ``forward``.
        input_size: the model's crop side ``S`` in pixels.
        device: where the crops are uploaded and the forward runs.
        flip_permutation: the landmark scheme's flip permutation to average each face with its
            mirrored crop (test-time augmentation, twice the compute), or ``None`` for no flip.
    """

    def __init__(self, forward: Forward, input_size: int, device: str | torch.device,
                 flip_permutation: Sequence[int] | None = None):
        self.forward = forward
        self.input_size = int(input_size)
        self.device = torch.device(device)
        self.flip_permutation = None if flip_permutation is None else torch.as_tensor(flip_permutation, device=self.device)

    @classmethod
    def for_model(cls, model: torch.nn.Module, device: str | torch.device, flip: bool = False) -> InferenceCore:
        """The core of an eager ``labfast.model.LAB`` already on ``device`` (in eval mode)."""
        return cls(TorchModel(model), model.config.input_size, device, model.scheme.flip_permutation if flip else None)

    def align(self, faces: Iterable[tuple[np.ndarray, Sequence[float]]], batch_size: int,
              heatmaps: bool = False) -> Iterator[Aligned]:
        """:class:`Aligned` batches of at most ``batch_size`` faces, in order, for ``(image, box)``
        pairs: ``image`` ``(H, W, 3)`` uint8 BGR, ``box`` ``x0, y0, x1, y1`` the landmark-extent box.

        ``faces`` is consumed lazily, one face per crop, so a caller that reads each image in its
        generator holds only a batch of crops, never a batch of whole images.
        """
        crops = (crop_face_pixels(image, box, self.input_size) for image, box in faces)
        while batch := list(itertools.islice(crops, batch_size)):
            pixels, image_to_crop = zip(*batch)
            yield self(np.stack(pixels), np.stack(image_to_crop), heatmaps)

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray, image_to_crop: np.ndarray, heatmaps: bool = False) -> Aligned:
        """One batch: ``crops`` ``(N, S, S, 3)`` uint8 BGR and ``image_to_crop`` ``(N, 2, 3)`` their
        affines from image pixels to crop pixels."""
        images = model_input(torch.from_numpy(crops).to(self.device))
        landmarks, boundary = self.forward(images)
        if self.flip_permutation is not None:
            landmarks = (landmarks + self._unmirror(self.forward(images.flip(-1))[0])) / 2
        confidence = landmark_confidence(landmarks, boundary, self.input_size)
        crop_to_image = invert_affine(image_to_crop)
        on_image = apply_affine(landmarks.double(), torch.from_numpy(crop_to_image).to(self.device))
        return Aligned(
            landmarks=on_image.float().cpu().numpy(),
            confidence=confidence.cpu().numpy(),
            heatmap_to_image=crop_to_image @ heatmap_to_crop(boundary.shape[-1], self.input_size),
            boundary_heatmaps=boundary.cpu().numpy() if heatmaps else None,
        )

    def _unmirror(self, mirrored: torch.Tensor) -> torch.Tensor:
        """Landmarks ``(N, L, 2)`` of mirrored crops in the unmirrored crops' frame: ``x -> S - 1 - x``
        and mirrored point ``i`` relabelled as point ``flip_permutation[i]``."""
        unmirrored = torch.empty_like(mirrored)
        unmirrored[:, self.flip_permutation] = mirrored
        unmirrored[..., 0] = self.input_size - 1 - unmirrored[..., 0]
        return unmirrored
