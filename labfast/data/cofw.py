"""COFW (29 points, with per-point occlusion; Burgos-Artizzu et al., ICCV 2013) from the
official colour MATLAB files ``COFW_train_color.mat`` (1,345 faces) / ``COFW_test_color.mat`` (507).

These are MATLAB v7.3 files, i.e. HDF5, read with h5py. MATLAB stores arrays column-major, so
h5py sees every array transposed:

- ``IsTr`` / ``IsT``: cell array of images -> HDF5 ``(1, N)`` (or ``(N, 1)``) object references;
  each image ``H x W x 3`` uint8 RGB appears as ``(3, W, H)`` (grey ``H x W`` as ``(W, H)``).
- ``phisTr`` / ``phisT``: ``N x 87`` -> ``(87, N)``; per face 29 x, 29 y, 29 occlusion flags (1 = occluded).
- ``bboxesTr`` / ``bboxesT``: ``N x 4`` -> ``(4, N)``; ``x y w h`` of the face box.

Coordinates are MATLAB 1-based; 1 is subtracted from points and from the box corner. Images are
kept in memory as ``(H, W, 3)`` uint8 **BGR** (``Sample.image``), the same layout ``cv2.imread``
gives for the file-based sets.
"""
from __future__ import annotations

import os

import numpy as np

from ._parse import MAX_VALUE, AnnotationError, Skipper
from .sample import Sample

NUM_POINTS_COFW = 29
_KEYS = {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")}


def read_cofw(mat_path: str | os.PathLike, strict: bool = True) -> list[Sample]:
    """Read a COFW colour ``.mat`` -> ``Sample`` per face with ``image`` and ``occlusion`` set.

    Whether the file is the train or the test file is decided by its keys. Errors name the file
    and the face (1-based, as MATLAB numbers it): wrong array shapes, NaN coordinates, occlusion
    flags other than 0/1, an empty box, an image that is not 2-D or 3-channel uint8.
    """
    import h5py  # only COFW needs it

    mat_path = os.fspath(mat_path)
    try:
        handle = h5py.File(mat_path, "r")
    except OSError as error:
        raise AnnotationError(
            f"{mat_path}: not a MATLAB v7.3 (HDF5) file ({error}); save COFW with -v7.3"
        ) from None
    with handle:
        split = next((name for name, keys in _KEYS.items() if keys[0] in handle), None)
        if split is None:
            raise AnnotationError(f"{mat_path}: has neither 'IsTr' nor 'IsT'; keys: {sorted(handle.keys())}")
        images_key, phis_key, boxes_key = _KEYS[split]
        references = _array(handle, images_key, mat_path).reshape(-1)
        phis = _as_rows(_array(handle, phis_key, mat_path, np.float64), 3 * NUM_POINTS_COFW, mat_path, phis_key)
        boxes = _as_rows(_array(handle, boxes_key, mat_path, np.float64), 4, mat_path, boxes_key)
        if not len(references) == len(phis) == len(boxes):
            raise AnnotationError(
                f"{mat_path}: {images_key} has {len(references)} faces, {phis_key} {len(phis)}, "
                f"{boxes_key} {len(boxes)}"
            )
        skipper = Skipper(strict, mat_path)
        samples = []
        for index in range(len(phis)):
            try:
                samples.append(_face(handle, references[index], phis[index], boxes[index], mat_path, index + 1))
            except AnnotationError as error:
                skipper.skip(error)
        skipper.report()
    return samples


def _array(handle, key: str, path: str, dtype=None) -> np.ndarray:
    """``handle[key]`` as an array; a missing key, a group or data that is not numbers raise
    ``AnnotationError`` (h5py raises OSError, TypeError or ValueError for each of those)."""
    import h5py

    item = handle.get(key)
    if not isinstance(item, h5py.Dataset):
        raise AnnotationError(f"{path}: {'missing' if item is None else 'not an array:'} {key!r}")
    try:
        return np.asarray(item, dtype=dtype)
    except (OSError, TypeError, ValueError) as error:
        raise AnnotationError(f"{path}: {key!r} cannot be read as {np.dtype(dtype).name if dtype else 'an array'} ({error})") from None


def _image(handle, reference, name: str) -> np.ndarray:
    """The image an ``IsT`` / ``IsTr`` cell refers to; anything but an object reference to an array
    raises ``AnnotationError``."""
    import h5py

    try:
        stored = handle[reference]
    except (OSError, TypeError, ValueError, KeyError) as error:
        raise AnnotationError(f"{name}: the image cell is not a reference to an image ({error})") from None
    if not isinstance(stored, h5py.Dataset):
        raise AnnotationError(f"{name}: the image cell refers to a group, not an image")
    return np.asarray(stored)


def _as_rows(array: np.ndarray, width: int, path: str, key: str) -> np.ndarray:
    """MATLAB ``N x width`` arrives as ``(width, N)``; accept either orientation."""
    if array.ndim == 2 and array.shape[0] == width:
        return array.T
    if array.ndim == 2 and array.shape[1] == width:
        return array
    raise AnnotationError(f"{path}: {key} has shape {array.shape}, expected (N, {width}) or ({width}, N)")


def _face(handle, reference, phis: np.ndarray, box: np.ndarray, path: str, face: int) -> Sample:
    name = f"{path}: face {face}"
    if not np.all(np.isfinite(phis)):
        raise AnnotationError(f"{name}: non-finite coordinate or flag in {phis.tolist()}")
    if np.abs(phis).max() > MAX_VALUE or np.abs(box).max() > MAX_VALUE:
        raise AnnotationError(f"{name}: a coordinate beyond ±{MAX_VALUE:g} is not a pixel position")
    if not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
        raise AnnotationError(f"{name}: bad box x y w h {box.tolist()}")
    flags = phis[2 * NUM_POINTS_COFW:]
    if not np.all((flags == 0) | (flags == 1)):
        raise AnnotationError(f"{name}: occlusion flags must be 0 or 1, got {flags.tolist()}")
    landmarks = np.stack([phis[:NUM_POINTS_COFW], phis[NUM_POINTS_COFW:2 * NUM_POINTS_COFW]], axis=1) - 1.0
    x0, y0 = box[0] - 1.0, box[1] - 1.0  # MATLAB 1-based corner
    image = _image(handle, reference, name)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[0] != 3):
        raise AnnotationError(f"{name}: image must be uint8 (W, H) or (3, W, H) as stored, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = np.repeat(image.T[:, :, None], 3, axis=2)  # grey H x W -> 3 equal channels
    else:
        image = image.transpose(2, 1, 0)[:, :, ::-1]  # (3, W, H) RGB -> (H, W, 3) BGR
    return Sample(
        image_path=None,
        landmarks=landmarks,
        box=np.array([x0, y0, x0 + box[2], y0 + box[3]]),
        image=np.ascontiguousarray(image),
        occlusion=flags.astype(bool),
    )
