"""Drawing predictions on images: landmarks, face boxes and the predicted boundary heatmaps.

The boundary heatmaps live on the model's ``(size, size)`` grid over the face crop; each face
carries ``heatmap_to_image`` (the ``(2, 3)`` affine from heatmap pixels to original-image pixels,
see :class:`labfast.inference.aligner.Face`). Only the image region that grid covers is touched, so
the cost of an overlay follows the faces' crops, not the photo's pixels times the faces: the
heatmaps are reduced on their own small grid to one colour and one opacity per heatmap pixel, and
those four uint8 channels are warped into that region alone.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:  # typing only: labfast predict's options import this module, and the aligner pulls in torch
    from labfast.inference.aligner import Face

LANDMARK_COLOUR = (255, 255, 255)  # BGR; white with a black rim stays visible over every boundary hue
LANDMARK_RIM = (0, 0, 0)
BOX_COLOUR = (255, 160, 0)
#: Opacity of a boundary where its heatmap is 1: half, so the face stays visible under the lines.
HEATMAP_OPACITY = 0.5
#: ``boundaries``: heatmaps, boxes and landmarks; ``points``: boxes and landmarks only.
OVERLAY_STYLES = ("boundaries", "points")
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
JPEG_QUALITY = 90


def boundary_colours(count: int) -> np.ndarray:
    """``(count, 3)`` float32 BGR colours in [0, 255], evenly spaced hues (one per boundary)."""
    rgb = [colorsys.hsv_to_rgb(index / max(count, 1), 1.0, 1.0) for index in range(count)]
    return np.asarray([(b, g, r) for r, g, b in rgb], np.float32) * 255.0


def heatmap_region(heatmap_to_image: np.ndarray, heatmap_shape: tuple[int, int],
                   image_shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The image pixels ``(x0, y0, x1, y1)`` (end exclusive) that bilinear sampling of the heatmap grid
    ``(h, w)`` through ``heatmap_to_image`` can reach (heatmap coordinates in ``(-1, w)``: one pixel
    beyond a heatmap pixel centre still blends with it), clipped to the image; ``None`` when that
    lies wholly outside."""
    height, width = heatmap_shape
    corners = np.array([[-1.0, -1.0], [width, -1.0], [-1.0, height], [width, height]])
    affine = np.asarray(heatmap_to_image, np.float64)
    mapped = corners @ affine[:, :2].T + affine[:, 2]
    x0, y0 = np.maximum(np.floor(mapped.min(axis=0)), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(mapped.max(axis=0)) + 1, [image_shape[1], image_shape[0]]).astype(int)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def draw_boundaries(canvas: np.ndarray, heatmaps: np.ndarray, heatmap_to_image: np.ndarray,
                    opacity: float = HEATMAP_OPACITY) -> None:
    """Blend one face's boundary heatmaps ``(K, h, w)`` (values in [0, 1]) into ``canvas`` in place.

    Each boundary gets its own hue; where boundaries overlap the stronger one wins. Opacity is the
    heatmap value times ``opacity``. Colour and opacity are formed on the heatmap grid and warped
    premultiplied (colour x opacity, opacity), so the linear interpolation blends them correctly,
    and the blend ``pixel (1 - opacity) + colour x opacity`` runs in uint8 OpenCV arithmetic.
    """
    region = heatmap_region(heatmap_to_image, heatmaps.shape[1:], canvas.shape)
    if region is None:
        return
    x0, y0, x1, y1 = region
    strength = np.clip(np.asarray(heatmaps, np.float32), 0.0, 1.0)
    weight = opacity * strength.max(axis=0)[..., None]  # (h, w, 1)
    colour = boundary_colours(len(strength))[strength.argmax(axis=0)]  # (h, w, 3)
    premultiplied = np.concatenate([colour * weight, 255.0 * weight], axis=2)
    heatmap_to_region = np.asarray(heatmap_to_image, np.float64) - [[0, 0, x0], [0, 0, y0]]
    warped = cv2.warpAffine(np.clip(premultiplied + 0.5, 0, 255).astype(np.uint8), heatmap_to_region, (x1 - x0, y1 - y0),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    area = canvas[y0:y1, x0:x1]
    covered = cv2.multiply(area, cv2.cvtColor(warped[..., 3], cv2.COLOR_GRAY2BGR), scale=1 / 255, dtype=cv2.CV_8U)
    cv2.subtract(area, covered, dst=area)
    cv2.add(area, cv2.cvtColor(warped, cv2.COLOR_BGRA2BGR), dst=area)


def draw_faces(image_bgr: np.ndarray, faces: Sequence[Face], boundaries: bool = True, points: bool = True,
               opacity: float = HEATMAP_OPACITY) -> np.ndarray:
    """A copy of ``image_bgr`` (``(H, W, 3)`` uint8) with every face's heatmaps (``boundaries``, at
    ``opacity``), and box and landmarks (``points``)."""
    canvas = np.ascontiguousarray(image_bgr.copy())
    if boundaries:
        for face in faces:
            if face.boundary_heatmaps is not None:
                draw_boundaries(canvas, face.boundary_heatmaps, face.heatmap_to_image, opacity)
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


def overlay_suffix(input_path: str | Path) -> str:
    """``.jpg`` for a JPEG input (a PNG of a photo is several times the JPEG's size), else ``.png``."""
    return ".jpg" if Path(input_path).suffix.lower() in JPEG_SUFFIXES else ".png"


def write_overlay(path: str | Path, canvas: np.ndarray) -> None:
    """Write an overlay image, JPEG at ``JPEG_QUALITY`` or PNG by ``path``'s suffix."""
    parameters = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if Path(path).suffix.lower() in JPEG_SUFFIXES else []
    if not cv2.imwrite(str(path), canvas, parameters):
        raise OSError(f"could not write {path}")
