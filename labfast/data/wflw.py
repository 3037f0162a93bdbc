"""WFLW (98 points; Wu et al., CVPR 2018) from its official annotation lists.

Layout under ``root`` (as distributed)::

    WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt
    WFLW_annotations/list_98pt_test/list_98pt_test_{largepose,expression,illumination,makeup,occlusion,blur}.txt
    WFLW_images/<event folder>/<name>.jpg

``list_98pt_rect_attr_*.txt`` lines hold 207 fields: ``x0 y0 ... x97 y97`` (196), the detection
rectangle ``x_min y_min x_max y_max`` (4), six 0/1 flags ``pose expression illumination make-up
occlusion blur`` and the image name relative to ``WFLW_images/`` (the README beside the file).
The per-subset lists (``list_98pt_test/``) hold 197 fields, coordinates and name; each holds the
test faces whose flag for that attribute is 1 (their README), named ``largepose`` for pose.

Coordinates are used as written: they are sub-pixel floats in the image's pixel grid with no
1-based convention stated by the README, and the public WFLW pipelines (HRNet, mmpose) use them
directly as 0-based positions.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._parse import AnnotationError, Skipper, check_image, parse_flag, parse_floats, decode_line, read_lines, where
from .sample import Sample, box_from_landmarks

WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
NUM_POINTS_WFLW = 98
# attribute name -> the word in the official per-subset file name
_SUBSET_FILE_WORD = {name: ("largepose" if name == "pose" else name) for name in WFLW_ATTRIBUTES}


def wflw_annotation_path(root: str | os.PathLike, split: str) -> Path:
    if split not in ("train", "test"):
        raise ValueError(f"unknown WFLW split {split!r}; known: train, test")
    return (Path(root) / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
            / f"list_98pt_rect_attr_{split}.txt")


def read_wflw(
    root: str | os.PathLike,
    split: str = "train",
    subset: str | None = None,
    strict: bool = True,
    check_images: bool = True,
) -> list[Sample]:
    """Read the official WFLW list -> ``Sample`` per face, in file order.

    Args:
        root: folder holding ``WFLW_annotations/`` and ``WFLW_images/``.
        split: ``"train"`` (7,500 faces) or ``"test"`` (2,500).
        subset: ``None`` for all faces, or one of ``WFLW_ATTRIBUTES``: only faces whose flag is 1.
        strict: raise on the first bad line (default); ``False`` skips bad lines and logs a count.
        check_images: raise (or skip) when a listed image does not exist.

    Box: the official detection rectangle. Attributes: the six flags by name.
    """
    _check_subset(subset)
    path = wflw_annotation_path(root, split)
    images = Path(root) / "WFLW_images"
    samples = []
    for sample in _read_list(path, images, with_rect_and_attributes=True, strict=strict, check_images=check_images):
        if subset is None or sample.attributes[subset]:
            samples.append(sample)
    return samples


def read_wflw_test_subset(
    root: str | os.PathLike,
    subset: str,
    strict: bool = True,
    check_images: bool = True,
) -> list[Sample]:
    """Read an official per-subset test list ``list_98pt_test/list_98pt_test_<word>.txt``.

    ``subset`` is one of ``WFLW_ATTRIBUTES`` (``"pose"`` reads ``..._largepose.txt``). These
    files carry no rectangle and no flags: the box is the landmarks' extent and ``attributes``
    holds only the subset's own flag (True), which the README guarantees.
    """
    if subset is None:
        raise ValueError(f"a WFLW test subset name is required; known: {', '.join(WFLW_ATTRIBUTES)}")
    _check_subset(subset)
    path = (Path(root) / "WFLW_annotations" / "list_98pt_test"
            / f"list_98pt_test_{_SUBSET_FILE_WORD[subset]}.txt")
    samples = _read_list(path, Path(root) / "WFLW_images", with_rect_and_attributes=False,
                         strict=strict, check_images=check_images)
    for sample in samples:
        sample.attributes = {subset: True}
    return samples


def _check_subset(subset: str | None) -> None:
    if subset is not None and subset not in WFLW_ATTRIBUTES:
        raise ValueError(f"unknown WFLW subset {subset!r}; known: {', '.join(WFLW_ATTRIBUTES)}")


def _read_list(path: Path, images: Path, with_rect_and_attributes: bool, strict: bool,
               check_images: bool) -> list[Sample]:
    if not path.is_file():
        raise FileNotFoundError(f"WFLW annotation file {path} does not exist")
    coordinates = 2 * NUM_POINTS_WFLW
    expected = coordinates + (4 + len(WFLW_ATTRIBUTES) if with_rect_and_attributes else 0) + 1
    skipper = Skipper(strict, path)
    samples = []
    for number, raw in enumerate(read_lines(path), start=1):
        if not raw.strip():
            continue
        try:
            tokens = decode_line(raw, path, number).split()
            if len(tokens) != expected:
                raise AnnotationError(f"{where(path, number)}: expected {expected} values, got {len(tokens)}")
            landmarks = parse_floats(tokens[:coordinates], path, number, "coordinate").reshape(-1, 2)
            attributes: dict[str, bool] = {}
            if with_rect_and_attributes:
                box = parse_floats(tokens[coordinates:coordinates + 4], path, number, "rectangle")
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise AnnotationError(f"{where(path, number)}: empty rectangle {box.tolist()}")
                flags = tokens[coordinates + 4:coordinates + 4 + len(WFLW_ATTRIBUTES)]
                attributes = {name: parse_flag(flag, path, number, name)
                              for name, flag in zip(WFLW_ATTRIBUTES, flags)}
            else:
                box = box_from_landmarks(landmarks)
            image_path = str(images / tokens[-1])
            if check_images:
                check_image(image_path, path, number)
            samples.append(Sample(image_path=image_path, landmarks=landmarks.astype(np.float32),
                                  box=box, attributes=attributes))
        except AnnotationError as error:
            skipper.skip(error)
    skipper.report()
    return samples
