"""``FaceDataset``: face crops with landmark-consistent augmentation; ``crop_face_pixels`` for inference;
``collate_readable``, the batch maker that drops the items whose image could not be read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from .. import config_fields
from .. import schemes as schemes_module
from .sample import Sample
from .transforms import (apply_affine, color_jitter, crop_matrix, face_centre_and_side, flip_landmarks, gamma, greyscale,
                         illumination_gradient, jitter_box, motion_blur, occlude, paste_patch, shift_hue, warp_crop)

#: Default crop margin: the square crop's side is ``max(w, h) * (1 + 2 * margin)`` = 1.25 x the
#: box's longer side (the 1.25 of HRNet's face crops).
DEFAULT_MARGIN = 0.125

#: One random stream per augmentation, spawned from ``SeedSequence([seed, epoch, index])`` in this
#: order (``geometric`` first: its stream is the one the crop geometry always drew from).
AUGMENTATION_STREAMS = ("geometric", "colour", "box", "hue", "greyscale", "gamma", "illumination", "blur",
                        "motion_blur", "occlusion", "patch")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (used only when ``FaceDataset(train=True)``).

    Every augmentation is switched off by a zero probability (or range). Each draws from its own
    random stream (seeded by seed, epoch, index), so switching one off leaves the others' draws
    unchanged.

    Geometric (applied through the single crop warp, landmarks carried by the same matrix):
    the face box jittered like a detector's box (centre ``box_shift_std`` of the box side per
    axis, side scaled by ``exp(box_scale_std * z)``, ``z`` standard normal), rotation uniform in
    ``±rotation_deg``, zoom uniform in ``zoom_range``, shift uniform in ``±shift`` of the crop
    size per axis, horizontal flip with ``flip_probability``.
    Photometric (on the crop, landmarks untouched): brightness / contrast / saturation factors in
    ``1 ± value``, hue turned by up to ``±hue_degrees``, greyscale with ``greyscale_probability``,
    gamma (log-uniform in ``gamma_range``) with ``gamma_probability``, a linear side-lighting ramp
    of up to ``1 ± illumination_strength`` with ``illumination_probability``, Gaussian blur with
    ``blur_probability`` and sigma in ``blur_sigma`` px, motion blur with
    ``motion_blur_probability`` along ``motion_blur_length`` of the crop side.
    Occluders (landmarks untouched): one random-noise rectangle (random erasing) with
    ``occlusion_probability`` and one patch cut from elsewhere in the crop with
    ``patch_probability``, sides ``occlusion_size`` / ``patch_size`` of the crop.
    """

    # YuNet's box error after its fitted conversion, on the 2012 300-W training faces
    # (``labfast.inference.detect.box_error("yunet")``, measured by ``python -m labfast.tools.detector_fit``; 2012 of 2012
    # found): centre error std 0.029 (x) / 0.028 (y) of the landmark box's longer side, log side-ratio
    # std 0.042 (converted vs landmark box IoU: median 0.90, 10th percentile 0.83). A test pins these.
    box_shift_std: float = 0.029
    box_scale_std: float = 0.042
    rotation_deg: float = 30.0
    zoom_range: tuple[float, float] = (0.75, 1.25)
    shift: float = 0.05
    flip_probability: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue_degrees: float = 10.0
    greyscale_probability: float = 0.1
    gamma_probability: float = 0.3
    gamma_range: tuple[float, float] = (0.6, 1.6)
    illumination_probability: float = 0.3
    illumination_strength: float = 0.5
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    motion_blur_probability: float = 0.1
    motion_blur_length: tuple[float, float] = (0.03, 0.1)
    occlusion_probability: float = 0.3
    occlusion_size: tuple[float, float] = (0.1, 0.4)
    patch_probability: float = 0.2
    patch_size: tuple[float, float] = (0.1, 0.3)

    def __post_init__(self) -> None:
        config_fields.check(self)


def read_image_bgr(path: str) -> np.ndarray:
    """``cv2.imread`` as 3-channel BGR uint8; a missing or unreadable file raises naming the path.

    EXIF orientation is ignored: annotations refer to the stored pixel grid.
    """
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise OSError(f"cannot read image {path} (missing, corrupt or not an image)")
    return image


def sample_image(sample: Sample) -> np.ndarray:
    """A sample's pixels: ``sample.image`` when it holds them, else its file (:func:`read_image_bgr`)."""
    if sample.image is not None:
        return sample.image
    if sample.image_path is None:
        raise ValueError("sample has neither image nor image_path")
    return read_image_bgr(sample.image_path)


def _bgr_to_rgb_float(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def crop_face_pixels(image_bgr: np.ndarray, box: Sequence[float], input_size: int,
                     margin: float = DEFAULT_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The inference crop as pixels: square around the box centre, side ``max(w, h) * (1 + 2 * margin)``.

    Args:
        image_bgr: ``(H, W, 3)`` uint8 BGR (as ``cv2.imread`` gives).
        box: ``x0, y0, x1, y1`` face box.
    Returns:
        ``crop`` ``(input_size, input_size, 3)`` uint8 BGR (a quarter of the float crop's bytes, for
        the trip to the device), and ``affine`` ``(2, 3)`` float64 mapping original image coords ->
        crop coords (``labfast.data.transforms.invert_affine`` brings predictions back).
    """
    centre, side = face_centre_and_side(np.asarray(box, dtype=np.float64), margin)
    matrix = crop_matrix(centre, side, input_size)
    return warp_crop(image_bgr, matrix, input_size), matrix


def crop_face(image_bgr: np.ndarray, box: Sequence[float], input_size: int,
              margin: float = DEFAULT_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The model's input for one face: :func:`crop_face_pixels` as ``(input_size, input_size, 3)``
    float32 RGB in [0, 1], and its affine as float32.

    ``input_size`` has no default: it is the model's (``model.config.input_size``, an exported
    file's ``input_size`` contract entry; the shipped weights take 128), never a guess."""
    crop, matrix = crop_face_pixels(image_bgr, box, input_size, margin)
    return _bgr_to_rgb_float(crop), matrix.astype(np.float32)


class FaceDataset(torch.utils.data.Dataset):
    """Face crops for training or evaluation.

    ``dataset[i]`` -> dict:
        ``image``: ``(3, S, S)`` uint8 RGB (the model converts it on its device: ``LAB.normalize``;
        a batch travels to the device in a quarter of the bytes of float32);
        ``landmarks``: ``(L, 2)`` float32 in crop pixel coordinates;
        ``affine``: ``(2, 3)`` float32 mapping original image coords -> crop coords (flip included;
        with a flip, ``landmarks[flip_permutation[j]] = affine @ original[j]``);
        ``index``: ``i``.

    With ``skip_unreadable``, an image that cannot be read gives ``{"index": i, "unreadable":
    message}`` (the message names the file) instead of raising, so that one corrupt file does not
    end a training run; :func:`collate_readable` drops such items from the batch and lists their
    messages, in the main process whichever worker read them.

    Photometric augmentation runs on the crop in float32 and the result is rounded to uint8 (by at
    most half a grey level); without it the crop is the warp's own uint8 pixels.

    Training augmentation is drawn from per-item generators seeded by ``(seed, epoch, index)``:
    the same triple gives the same crop in any worker process and any order. ``dataset[(i, c)]`` is
    face ``i``'s ``c``-th copy in an epoch (``labfast.train.sampling.BalancedSampler`` draws faces
    more than once), seeded by ``(seed, epoch, index, c)``: each copy is augmented anew; copy 0 is
    ``dataset[i]``. Call
    ``set_epoch(epoch)`` each epoch (with ``DataLoader`` workers that persist, before the
    iterator is created).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        scheme,
        input_size: int = 256,
        train: bool = False,
        augment: AugmentConfig = AugmentConfig(),
        seed: int = 0,
        margin: float = DEFAULT_MARGIN,
        skip_unreadable: bool = False,
    ):
        self.samples = list(samples)
        self.scheme = schemes_module.get(scheme)
        self.input_size = int(input_size)
        self.train = train
        self.augment = augment
        self.seed = int(seed)
        self.margin = margin
        self.skip_unreadable = skip_unreadable
        self.epoch = 0
        for index, sample in enumerate(self.samples):
            if sample.landmarks.shape != (self.scheme.num_points, 2):
                raise ValueError(
                    f"sample {index} ({sample.image_path}) has landmarks {sample.landmarks.shape}; "
                    f"scheme {self.scheme.name!r} needs ({self.scheme.num_points}, 2)"
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, copy = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        try:
            image = sample_image(sample)
        except OSError as error:
            if not self.skip_unreadable:
                raise
            return {"index": index, "unreadable": f"item {index}: {error}"}
        streams = self.augmentation_streams(index, copy) if self.train else {}
        box = sample.box
        if self.train and (self.augment.box_shift_std > 0 or self.augment.box_scale_std > 0):
            box = jitter_box(box, streams["box"], self.augment.box_shift_std, self.augment.box_scale_std)
        centre, side = face_centre_and_side(box, self.margin)
        if self.train:
            geometric = streams["geometric"]
            config = self.augment
            flip = bool(geometric.random() < config.flip_probability)
            matrix = crop_matrix(
                centre, side, self.input_size,
                rotation_deg=geometric.uniform(-config.rotation_deg, config.rotation_deg),
                zoom=geometric.uniform(*config.zoom_range),
                shift=tuple(geometric.uniform(-config.shift, config.shift, size=2)),
                flip=flip,
            )
        else:
            flip = False
            matrix = crop_matrix(centre, side, self.input_size)

        crop = cv2.cvtColor(warp_crop(image, matrix, self.input_size), cv2.COLOR_BGR2RGB)
        landmarks = apply_affine(sample.landmarks, matrix)
        if flip:
            landmarks = flip_landmarks(landmarks, self.scheme.flip_permutation)
        if self.train:
            crop = _to_uint8(self.photometric(crop.astype(np.float32) / 255.0, streams))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "landmarks": torch.from_numpy(landmarks.astype(np.float32)),
            "affine": torch.from_numpy(matrix.astype(np.float32)),
            "index": index,
        }

    def augmentation_streams(self, index: int, copy: int = 0) -> dict[str, np.random.Generator]:
        """The random streams of item ``index`` (its ``copy``-th draw) this epoch, one per augmentation
        (``AUGMENTATION_STREAMS``)."""
        entropy = [self.seed, self.epoch, index] + ([copy] if copy else [])
        children = np.random.SeedSequence(entropy).spawn(len(AUGMENTATION_STREAMS))
        return dict(zip(AUGMENTATION_STREAMS, (np.random.default_rng(child) for child in children)))

    def photometric(self, crop: np.ndarray, streams: dict[str, np.random.Generator]) -> np.ndarray:
        """The photometric augmentations and occluders on an ``(S, S, 3)`` float32 RGB crop in [0, 1]."""
        config = self.augment
        crop = color_jitter(crop, streams["colour"], config.brightness, config.contrast, config.saturation)
        if config.hue_degrees > 0:
            crop = shift_hue(crop, streams["hue"], config.hue_degrees)
        if streams["greyscale"].random() < config.greyscale_probability:
            crop = greyscale(crop)
        if streams["gamma"].random() < config.gamma_probability:
            crop = gamma(crop, streams["gamma"], config.gamma_range)
        if streams["illumination"].random() < config.illumination_probability:
            crop = illumination_gradient(crop, streams["illumination"], config.illumination_strength)
        if streams["blur"].random() < config.blur_probability:
            sigma = streams["blur"].uniform(*config.blur_sigma)
            crop = cv2.GaussianBlur(crop, (0, 0), sigmaX=sigma, sigmaY=sigma)
        if streams["motion_blur"].random() < config.motion_blur_probability:
            crop = motion_blur(crop, streams["motion_blur"], config.motion_blur_length)
        if streams["occlusion"].random() < config.occlusion_probability:
            crop, _ = occlude(crop, streams["occlusion"], config.occlusion_size)
        if streams["patch"].random() < config.patch_probability:
            crop, _ = paste_patch(crop, streams["patch"], config.patch_size)
        return crop


def _to_uint8(crop: np.ndarray) -> np.ndarray:
    """A float crop in [0, 1] -> uint8, each value rounded to the nearest level (error <= 0.5 / 255)."""
    return np.rint(np.clip(crop, 0.0, 1.0) * 255.0).astype(np.uint8)


def collate_readable(items: list[dict]) -> dict:
    """Batch the readable items (``torch.utils.data.default_collate``) and list the others.

    Returns the collated batch plus ``"unreadable"``: the messages of the dropped items (a list of
    str). When no item is readable the batch holds ``"unreadable"`` alone.
    """
    readable = [item for item in items if "unreadable" not in item]
    batch = torch.utils.data.default_collate(readable) if readable else {}
    batch["unreadable"] = [item["unreadable"] for item in items if "unreadable" in item]
    return batch
