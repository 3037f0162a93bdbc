"""Drawing predictions on images: landmarks, face boxes and the predicted boundary heatmaps.

The boundary heatmaps live on the model's ``(size, size)`` grid over the face crop; each face
carries ``heatmap_to_image`` (the ``(2, 3)`` affine from heatmap pixels to original-image pixels,
see :class:`labfast.inference.aligner.Face`), so they are warped back onto the whole photo, one colour per
boundary, before blending.
"""
from __future__ import annotations

import colorsys
from typing import Sequence

import cv2
import numpy as np

from labfast.inference.aligner import Face

LANDMARK_COLOUR = (255, 255, 255)  # BGR; white with a black rim stays visible over every boundary hue
LANDMARK_RIM = (0, 0, 0)
BOX_COLOUR = (255, 160, 0)
HEATMAP_OPACITY = 0.75


def boundary_colours(count: int) -> np.ndarray:
    """``(count, 3)`` float32 BGR colours in [0, 255], evenly spaced hues (one per boundary)."""
    rgb = [colorsys.hsv_to_rgb(index / max(count, 1), 1.0, 1.0) for index in range(count)]
    return np.asarray([(b, g, r) for r, g, b in rgb], np.float32) * 255.0


def draw_boundaries(image_bgr: np.ndarray, heatmaps: np.ndarray, heatmap_to_image: np.ndarray) -> np.ndarray:
    """Blend one face's boundary heatmaps ``(K, h, w)`` (values in [0, 1]) onto a copy of the image.

    Each boundary gets its own hue; where boundaries overlap the stronger one wins. Opacity is the
    heatmap value times ``HEATMAP_OPACITY``, so the photo stays visible under weak responses.
    """
    height, width = image_bgr.shape[:2]
    image_to_heatmap = cv2.invertAffineTransform(np.asarray(heatmap_to_image, np.float64))
    # Warp every channel into the image at once: cv2 handles up to 4 channels per call.
    warped = np.concatenate(
        [
            cv2.warpAffine(
                np.ascontiguousarray(heatmaps[start:start + 4].transpose(1, 2, 0), dtype=np.float32),
                image_to_heatmap,
                (width, height),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            ).reshape(height, width, -1)
            for start in range(0, len(heatmaps), 4)
        ],
        axis=2,
    )  # (H, W, K)
    warped = np.clip(warped, 0.0, 1.0)
    strongest = warped.argmax(axis=2)
    alpha = warped.max(axis=2, keepdims=True) * HEATMAP_OPACITY
    colour = boundary_colours(len(heatmaps))[strongest]
    blended = image_bgr.astype(np.float32) * (1.0 - alpha) + colour * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def draw_faces(image_bgr: np.ndarray, faces: Sequence[Face], boundaries: bool = True, points: bool = True) -> np.ndarray:
    """A copy of ``image_bgr`` (``(H, W, 3)`` uint8) with every face's heatmaps (``boundaries``), and
    box and landmarks (``points``)."""
    canvas = np.ascontiguousarray(image_bgr.copy())
    if boundaries:
        for face in faces:
            if face.boundary_heatmaps is not None:
                canvas = draw_boundaries(canvas, face.boundary_heatmaps, face.heatmap_to_image)
    for face in faces if points else ():
        x0, y0, x1, y1 = face.box
        side = max(x1 - x0, y1 - y0)
        thickness = max(1, int(round(side / 150)))
        scale = 16  # cv2 draws at integer positions; shift=4 (x16) keeps 1/16 px precision
        cv2.rectangle(
            canvas, (int(round(x0 * scale)), int(round(y0 * scale))), (int(round(x1 * scale)), int(round(y1 * scale))),
            BOX_COLOUR, thickness, cv2.LINE_AA, shift=4,
        )
        radius = max(1, int(round(side / 100)))
        for x, y in face.landmarks:
            centre = (int(round(x * scale)), int(round(y * scale)))
            cv2.circle(canvas, centre, (radius + 1) * scale, LANDMARK_RIM, -1, cv2.LINE_AA, shift=4)
            cv2.circle(canvas, centre, radius * scale, LANDMARK_COLOUR, -1, cv2.LINE_AA, shift=4)
    return canvas
