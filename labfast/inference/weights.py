"""The weights shipped with labfast: the checkpoint every command and ``FaceAligner`` takes by default.

A module of its own, importing nothing of labfast, so that ``labfast export`` and ``labfast eval``
find the default checkpoint without loading the aligner, its detector and OpenCV.
"""
from __future__ import annotations

import os
from importlib import resources

#: The shipped default weights: (package, path inside it). Read through importlib.resources, so the
#: file only needs to be package data of ``labfast`` (``weights/`` need not be a Python package).
DEFAULT_WEIGHTS = ("labfast", "weights/lab_300w.pt")


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
