"""The plain face sample every reader returns: paths and arrays, no framework types."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One annotated face.

    Attributes:
        image_path: image file on disk, or ``None`` for in-memory sets (COFW).
        landmarks: ``(L, 2)`` float32, 0-based pixel coordinates, x then y; pixel (row i, col j)
            has its centre at (x=j, y=i).
        box: ``(4,)`` float32 face box ``x0, y0, x1, y1`` in the same coordinates.
        attributes: per-face boolean flags (WFLW: pose, expression, illumination, makeup,
            occlusion, blur); empty where the data set has none.
        image: ``(H, W, 3)`` uint8 BGR (as ``cv2.imread`` gives) for in-memory sets, else ``None``.
        occlusion: ``(L,)`` bool per-point occlusion flags where the set has them (COFW), else ``None``.
    """

    image_path: str | None
    landmarks: np.ndarray
    box: np.ndarray
    attributes: dict[str, bool] = field(default_factory=dict)
    image: np.ndarray | None = None
    occlusion: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32)
        self.box = np.asarray(self.box, dtype=np.float32)
        if self.landmarks.ndim != 2 or self.landmarks.shape[1] != 2:
            raise ValueError(f"landmarks must be (L, 2), got {self.landmarks.shape} ({self.image_path})")
        if self.box.shape != (4,):
            raise ValueError(f"box must be (4,) x0, y0, x1, y1, got {self.box.shape} ({self.image_path})")
        if self.occlusion is not None:
            self.occlusion = np.asarray(self.occlusion, dtype=bool)
            if self.occlusion.shape != (self.landmarks.shape[0],):
                raise ValueError(
                    f"occlusion must be ({self.landmarks.shape[0]},), got {self.occlusion.shape}"
                )


def box_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks' extent ``(x0, y0, x1, y1)`` as ``(4,)`` float32."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    return np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)]).astype(np.float32)
