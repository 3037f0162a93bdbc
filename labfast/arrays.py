"""The one conversion of a caller's array to NumPy, for the foundations that accept NumPy arrays
and torch tensors alike (``metrics``, ``boundary``, ``plots``)."""
from __future__ import annotations

import numpy as np


def as_numpy(array, dtype=np.float64) -> np.ndarray:
    """``array`` (a NumPy array, a nested sequence or a torch tensor on any device) as a NumPy array
    of ``dtype``. A tensor is known by its ``detach`` method, so torch is never imported here."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=dtype)
