"""300-W (68 points) in its official folder layout: ``.pts`` files beside ``.jpg`` / ``.png`` images.

Subsets (the protocol LAB reports on, LAB_NOTES.md):

==============  ==========================================================  ========
subset          folders under ``root``                                      official
==============  ==========================================================  ========
``train``       lfpw/trainset, helen/trainset, afw                          3148
``common``      lfpw/testset, helen/testset                                 554
``challenging`` ibug                                                        135
``full``        common + challenging                                        689
``test``        300W/01_Indoor, 300W/02_Outdoor (the 300-W private test)    600
==============  ==========================================================  ========

``.pts`` values are 1-based; 1 is subtracted to give labfast's 0-based pixel centres. The box is
the landmarks' extent (300-W ships no face box). Faces are returned folder by folder in the
order above, files sorted by name within a folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from ._parse import AnnotationError, Skipper
from .pts import read_pts
from .sample import Sample, box_from_landmarks

W300_SUBSETS: dict[str, tuple[str, ...]] = {
    "train": ("lfpw/trainset", "helen/trainset", "afw"),
    "common": ("lfpw/testset", "helen/testset"),
    "challenging": ("ibug",),
    "full": ("lfpw/testset", "helen/testset", "ibug"),
    "test": ("300W/01_Indoor", "300W/02_Outdoor"),
}
NUM_POINTS_300W = 68
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")


def read_300w(root: str | os.PathLike, subset: str = "train", strict: bool = True) -> list[Sample]:
    """Read one 300-W subset -> list of ``Sample`` (68 points, 0-based, box from the extent).

    Raises ``ValueError`` for an unknown subset, ``FileNotFoundError`` naming every missing
    folder of the subset, and ``AnnotationError`` naming the file (and line) for a bad ``.pts``
    or a ``.pts`` with no image beside it. With ``strict=False`` bad files are skipped and
    their count logged.
    """
    if subset not in W300_SUBSETS:
        raise ValueError(f"unknown 300-W subset {subset!r}; known: {', '.join(W300_SUBSETS)}")
    root = Path(root)
    folders = [root / folder for folder in W300_SUBSETS[subset]]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"300-W subset {subset!r} needs folder(s) that do not exist: {', '.join(missing)}"
        )
    return [sample for folder in folders for sample in read_pts_folder(folder, strict=strict)]


def read_pts_folder(folder: str | os.PathLike, strict: bool = True) -> list[Sample]:
    """Every face of one folder in 300-W's layout -> list of ``Sample``, files sorted by name.

    Each ``NAME.pts`` (68 points, 1-based) lies beside its ``NAME.jpg`` / ``.png``; the box is the
    landmarks' extent. This is every 300-W subset folder, and any folder of face crops annotated the
    same way (``labfast eval --dataset wild``). Raises ``FileNotFoundError`` for a missing folder and
    ``AnnotationError`` as :func:`read_300w`; with ``strict=False`` bad files are skipped and counted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    samples: list[Sample] = []
    skipper = Skipper(strict, folder)
    for pts_path in sorted(folder.glob("*.pts")):
        try:
            samples.append(_read_face(pts_path))
        except AnnotationError as error:
            skipper.skip(error)
    skipper.report()
    return samples


def _read_face(pts_path: Path) -> Sample:
    points = read_pts(pts_path)
    if len(points) != NUM_POINTS_300W:
        raise AnnotationError(f"{pts_path}: expected {NUM_POINTS_300W} points, got {len(points)}")
    image_path = next(
        (pts_path.with_suffix(suffix) for suffix in _IMAGE_SUFFIXES if pts_path.with_suffix(suffix).is_file()),
        None,
    )
    if image_path is None:
        raise AnnotationError(f"{pts_path}: no image beside it (looked for {', '.join(_IMAGE_SUFFIXES)})")
    landmarks = points - 1.0  # iBUG .pts are 1-based (MATLAB); labfast is 0-based
    return Sample(image_path=str(image_path), landmarks=landmarks, box=box_from_landmarks(landmarks))
