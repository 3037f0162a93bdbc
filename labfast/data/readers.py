"""One entry point for every data set labfast reads: ``read_faces(dataset, root, subset)``.

Training (``labfast.train``) and the test protocols (``labfast.evaluation``) both read through it,
so a data set's layout is known in one place. Subset names are the protocols' own:

- ``300w``: a ``W300_SUBSETS`` name (``train``, ``common``, ``challenging``, ``full``, ``test``);
- ``wflw``: ``train``, ``test`` or ``full`` (every test face), or one of ``WFLW_ATTRIBUTES``
  (the test faces with that flag);
- ``cofw``: ``train`` or ``test``: ``COFW_<subset>_color.mat`` in ``root`` (a ``root`` that is a
  ``.mat`` file is read as it is);
- ``aflw``: an ``AFLW_SPLITS`` name (``train``, ``full``, ``frontal``).
"""
from __future__ import annotations

import os
from pathlib import Path

from .aflw import read_aflw
from .cofw import read_cofw
from .sample import Sample
from .w300 import read_300w
from .wflw import read_wflw

DATASETS = ("300w", "wflw", "cofw", "aflw")
_COFW_SUBSETS = ("train", "test")


def read_faces(dataset: str, root: str | os.PathLike, subset: str, strict: bool = True) -> list[Sample]:
    """The faces of one subset of ``dataset`` under ``root``, in the reader's order.

    ``strict=False`` skips malformed annotations (the readers log their count). Raises
    ``ValueError`` for an unknown data set or subset, ``FileNotFoundError`` for missing files.
    """
    root = Path(root)
    if dataset == "300w":
        return read_300w(root, subset=subset, strict=strict)
    if dataset == "wflw":
        if subset in ("train", "test"):
            return read_wflw(root, split=subset, strict=strict)
        return read_wflw(root, split="test", subset=None if subset == "full" else subset, strict=strict)
    if dataset == "cofw":
        if subset not in _COFW_SUBSETS:
            raise ValueError(f"unknown COFW subset {subset!r}; known: {', '.join(_COFW_SUBSETS)}")
        return read_cofw(root / f"COFW_{subset}_color.mat" if root.is_dir() else root, strict=strict)
    if dataset == "aflw":
        return read_aflw(root, split=subset, strict=strict)
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
