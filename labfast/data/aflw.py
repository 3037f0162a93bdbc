"""AFLW-19 (the AFLW-Full / AFLW-Frontal protocol of Zhu et al., CVPR 2016, on which LAB reports)
from the annotation files that HRNet's facial-landmark code distributes and most later work uses.

Source of the layout: HRNet/HRNet-Facial-Landmark-Detection, ``lib/datasets/aflw.py`` and
``experiments/aflw/face_alignment_aflw_hrnet_w18.yaml`` (commit 3c9f92a1), cross-checked with
a third-party converter of the same files that writes their header. Layout under ``root``::

    face_landmarks_aflw_train.csv          train split (20,000 faces)
    face_landmarks_aflw_test.csv           AFLW-Full test (4,386 faces)
    face_landmarks_aflw_test_frontal.csv   AFLW-Frontal test (1,314 faces)
    images/<image_name>

Each CSV has one header line, then per face 43 comma-separated fields::

    image_name, scale, box_size, center_w, center_h, x1, y1, x2, y2, ..., x19, y19

i.e. the 19 points **interleaved** (x, y) pairs (HRNet reshapes columns 5.. to ``(-1, 2)``).
``scale`` is HRNet's crop scale (face size / 200 px); ``box_size`` is the protocol's face-box
size, the NME normaliser (HRNet's ``compute_nme`` divides by it for 19 points). The box returned
here is the square of side ``box_size`` centred on ``(center_w, center_h)``, so that
``sqrt(w * h)`` of the box equals the protocol's normaliser exactly.

Coordinates are used as written: HRNet treats them as 0-based (it adds 1 before its 1-based crop
transform and subtracts 1 after); the files themselves state no convention.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._parse import AnnotationError, Skipper, check_image, decode_line, parse_floats, read_lines, where
from .sample import Sample

AFLW_SPLITS = {
    "train": "face_landmarks_aflw_train.csv",
    "full": "face_landmarks_aflw_test.csv",
    "frontal": "face_landmarks_aflw_test_frontal.csv",
}
NUM_POINTS_AFLW = 19
_FIELDS = 5 + 2 * NUM_POINTS_AFLW


def read_aflw(
    root: str | os.PathLike,
    split: str = "train",
    strict: bool = True,
    check_images: bool = True,
    image_root: str | os.PathLike | None = None,
) -> list[Sample]:
    """Read one AFLW-19 split (``"train"``, ``"full"``, ``"frontal"``) -> ``Sample`` per face.

    ``image_root`` defaults to ``root / "images"`` (HRNet's layout). Errors name file and line.
    """
    if split not in AFLW_SPLITS:
        raise ValueError(f"unknown AFLW split {split!r}; known: {', '.join(AFLW_SPLITS)}")
    path = Path(root) / AFLW_SPLITS[split]
    if not path.is_file():
        raise FileNotFoundError(f"AFLW annotation file {path} does not exist")
    images = Path(image_root) if image_root is not None else Path(root) / "images"
    skipper = Skipper(strict, path)
    samples = []
    lines = read_lines(path)
    if not lines or not lines[0].startswith(b"image_name"):
        raise AnnotationError(f"{where(path, 1)}: expected the header line 'image_name,scale,box_size,...'")
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            fields = [field.strip() for field in decode_line(raw, path, number).split(",")]
            if len(fields) != _FIELDS:
                raise AnnotationError(f"{where(path, number)}: expected {_FIELDS} values, got {len(fields)}")
            _scale, box_size, center_x, center_y = parse_floats(fields[1:5], path, number, "box")
            if box_size <= 0:
                raise AnnotationError(f"{where(path, number)}: box_size must be positive, got {box_size}")
            landmarks = parse_floats(fields[5:], path, number, "coordinate").reshape(NUM_POINTS_AFLW, 2)
            image_path = str(images / fields[0])
            if check_images:
                check_image(image_path, path, number)
            half = box_size / 2.0
            samples.append(Sample(
                image_path=image_path,
                landmarks=landmarks,
                box=np.array([center_x - half, center_y - half, center_x + half, center_y + half]),
            ))
        except AnnotationError as error:
            skipper.skip(error)
    skipper.report()
    return samples
