"""Affine crop maths and the photometric augmentations.

Point convention (the brief's): 0-based pixel coordinates, pixel (row i, col j) has its centre
at (x=j, y=i). ``cv2.warpAffine(src, M, ...)`` samples ``dst(p) = src(M^-1 p)`` at integer
``p``, i.e. it maps the source pixel centre ``q`` to ``M q`` in the destination with no
half-pixel shift. So a landmark is carried into the crop by the very same 2x3 matrix: ``M @ [x, y, 1]``.

The output crop's pixel centres are ``0 .. size-1``, so its area spans ``[-0.5, size-0.5]`` and
its centre is at ``(size-1)/2``; the face centre is mapped there. Between two grids of one area
and different pixel counts (crop and heatmap, photo and its downscaled copy), pixel centres map
onto pixel centres: :func:`rescale_pixel_coordinates`.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

#: ``cv2.warpAffine`` border: constant black. Replicated borders paint edge streaks that look like
#: face texture (and, for rotated crops, like extra contour lines); black is plainly "no image".
BORDER_MODE = cv2.BORDER_CONSTANT


def face_centre_and_side(box: np.ndarray, margin: float) -> tuple[np.ndarray, float]:
    """Square crop around a box: centre ``(2,)`` and side ``max(w, h) * (1 + 2 * margin)`` px."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = x1 - x0, y1 - y0
    if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
        raise ValueError(f"face box must have positive width and height, got {list(map(float, box))}")
    return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0]), max(width, height) * (1.0 + 2.0 * margin)


def crop_matrix(
    centre: np.ndarray,
    side: float,
    input_size: int,
    rotation_deg: float = 0.0,
    zoom: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
) -> np.ndarray:
    """The ``(2, 3)`` float64 matrix: original image coords -> crop coords.

    ``M = F · T((size-1)/2 + shift·size) · R(rotation) · S(zoom·size/side) · T(-centre)``:
    the source square of ``side`` px around ``centre`` fills the crop; ``zoom > 1`` enlarges the
    face; ``shift`` is a fraction of the crop size; ``rotation_deg`` turns the face
    counter-clockwise as seen on screen (y points down); ``flip`` mirrors the crop horizontally
    (``x -> size-1-x``), last.
    """
    scale = zoom * input_size / side
    angle = math.radians(rotation_deg)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # y points down, so a screen-counter-clockwise turn is [[cos, sin], [-sin, cos]]
    linear = np.array([[cos, sin], [-sin, cos]])
    centre_out = (input_size - 1) / 2.0 + np.asarray(shift, dtype=np.float64) * input_size
    matrix = np.hstack([linear, (centre_out - linear @ np.asarray(centre, dtype=np.float64))[:, None]])
    if flip:
        matrix = np.array([[-1.0, 0.0, input_size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0, 0, 1]])
    return matrix


def rescale_pixel_coordinates(points, scale):
    """Coordinates on a grid ``scale`` times as fine over the same area: ``(x + 0.5) * scale - 0.5``.

    Pixel centres sit at integers and a pixel spans ``[i - 0.5, i + 0.5]``, so the grids' outer edges
    (``-0.5``) coincide and centres map onto centres (a 256 px crop onto its 64 px heatmap:
    ``scale = 1/4``). Works on numpy arrays, torch tensors and numbers alike.
    """
    return (points + 0.5) * scale - 0.5


def apply_affine(points, matrix):
    """``(..., L, 2)`` points through ``(..., 2, 3)`` matrices (numpy arrays or torch tensors alike):
    ``points @ linear.T + offset``, batched over the leading dimensions."""
    return points @ matrix[..., :2].swapaxes(-1, -2) + matrix[..., None, :, 2]


def invert_affine(matrix) -> np.ndarray:
    """Inverse of ``(..., 2, 3)`` affine matrices, float64, batched over the leading dimensions.

    The closed form of ``cv2.invertAffineTransform`` term for term (same float64 bits for one
    matrix), so crops, predictions and overlays all map back the one way.
    """
    matrix = np.asarray(matrix, np.float64)
    (a, b, c), (d, e, f) = np.moveaxis(matrix, (-2, -1), (0, 1))
    scale = 1.0 / (a * e - b * d)
    a, b, d, e = e * scale, -b * scale, -d * scale, a * scale
    rows = [np.stack([a, b, -a * c - b * f], axis=-1), np.stack([d, e, -d * c - e * f], axis=-1)]
    return np.stack(rows, axis=-2)


def flip_landmarks(points: np.ndarray, flip_permutation) -> np.ndarray:
    """Relabel mirrored points: point ``i`` becomes point ``flip_permutation[i]`` (Scheme contract).

    ``points`` are already mirrored in position; the result holds at row ``flip_permutation[i]``
    the position of input row ``i`` (e.g. the mirrored left eye corner is the new right one).
    """
    permutation = np.asarray(flip_permutation)
    if sorted(permutation.tolist()) != list(range(len(points))):
        raise ValueError(f"flip_permutation is not a permutation of {len(points)} points")
    relabelled = np.empty_like(points)
    relabelled[permutation] = points
    return relabelled


def warp_crop(image: np.ndarray, matrix: np.ndarray, input_size: int) -> np.ndarray:
    """One ``cv2.warpAffine`` of ``image`` (H, W, C) with ``matrix`` -> ``(size, size, C)``, same dtype.

    Two things happen before the warp, neither a resampling: the source is sliced to the
    region the crop can see (an integer offset folded into the matrix's translation, so large
    photos cost little), and when the crop shrinks the face (scale ``s < 1``) that region is
    Gaussian-smoothed with ``sigma = (1/s - 1)/2`` source px against aliasing (the rule of
    ``skimage.transform.rescale``). Gaussian smoothing is symmetric, so it moves no point.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    sigma = max(0.0, (1.0 / scale - 1.0) / 2.0)
    corners = np.array([[-0.5, -0.5], [input_size - 0.5, -0.5], [-0.5, input_size - 0.5],
                        [input_size - 0.5, input_size - 0.5]])
    seen = apply_affine(corners, invert_affine(matrix))
    pad = int(math.ceil(3 * sigma)) + 2  # smoothing support + bilinear neighbours
    height, width = image.shape[:2]
    x_start = int(np.clip(math.floor(seen[:, 0].min()) - pad, 0, width))
    y_start = int(np.clip(math.floor(seen[:, 1].min()) - pad, 0, height))
    x_stop = int(np.clip(math.ceil(seen[:, 0].max()) + pad + 1, 0, width))
    y_stop = int(np.clip(math.ceil(seen[:, 1].max()) + pad + 1, 0, height))
    if x_stop <= x_start or y_stop <= y_start:  # the crop lies wholly outside the image
        return np.zeros((input_size, input_size) + image.shape[2:], dtype=image.dtype)
    region = image[y_start:y_stop, x_start:x_stop]
    if sigma > 0.1:
        region = cv2.GaussianBlur(region, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x_start, y_start], dtype=np.float64)
    return cv2.warpAffine(region, shifted, (input_size, input_size), flags=cv2.INTER_LINEAR,
                          borderMode=BORDER_MODE, borderValue=0)


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float) -> np.ndarray:
    """Random brightness, contrast and saturation factors in ``[1 - a, 1 + a]``; (H, W, 3) RGB float in [0, 1]."""
    image = image * rng.uniform(1.0 - brightness, 1.0 + brightness)
    grey = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    image = (image - grey.mean()) * rng.uniform(1.0 - contrast, 1.0 + contrast) + grey.mean()
    grey = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    image = (image - grey[..., None]) * rng.uniform(1.0 - saturation, 1.0 + saturation) + grey[..., None]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def jitter_box(box: np.ndarray, rng: np.random.Generator, shift_std: float, scale_std: float) -> np.ndarray:
    """A face box moved and resized the way a detector's box errs: ``(4,)`` float64 ``x0, y0, x1, y1``.

    The centre moves by ``shift_std * side`` per axis and the box is scaled about it by
    ``exp(scale_std * z)`` (aspect kept), ``side = max(w, h)``, each ``z`` standard normal clipped
    to +-3 so that a rare draw cannot push the face out of the crop.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0)
    shift_x, shift_y, log_scale = np.clip(rng.standard_normal(3), -3.0, 3.0) * [shift_std, shift_std, scale_std]
    centre_x, centre_y = (x0 + x1) / 2 + shift_x * side, (y0 + y1) / 2 + shift_y * side
    half_w, half_h = (x1 - x0) / 2 * math.exp(log_scale), (y1 - y0) / 2 * math.exp(log_scale)
    return np.array([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h])


def greyscale(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma in all three channels; (H, W, 3) RGB float in [0, 1]."""
    grey = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def shift_hue(image: np.ndarray, rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """Turn the hue by a uniform angle in ``+-max_degrees``; (H, W, 3) RGB float in [0, 1]."""
    hsv = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2HSV)  # float input: H in [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-max_degrees, max_degrees), 360.0)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def gamma(image: np.ndarray, rng: np.random.Generator, gamma_range: tuple[float, float]) -> np.ndarray:
    """``image ** g``, ``log g`` uniform over ``log gamma_range`` (under- and over-exposure alike)."""
    exponent = math.exp(rng.uniform(math.log(gamma_range[0]), math.log(gamma_range[1])))
    return np.power(np.clip(image, 0.0, 1.0), exponent).astype(np.float32)


def illumination_gradient(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Side lighting: multiply by a linear ramp from ``1 - s`` to ``1 + s`` across the crop in a
    random direction, ``s`` uniform in ``[0, strength]``."""
    height, width = image.shape[:2]
    angle = rng.uniform(0.0, 2.0 * math.pi)
    amount = rng.uniform(0.0, strength)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (xs - (width - 1) / 2) * math.cos(angle) + (ys - (height - 1) / 2) * math.sin(angle)
    reach = max(1.0, (abs(math.cos(angle)) * (width - 1) + abs(math.sin(angle)) * (height - 1)) / 2)
    ramp = 1.0 + amount * along / reach
    return np.clip(image * ramp[..., None], 0.0, 1.0).astype(np.float32)


def motion_blur(image: np.ndarray, rng: np.random.Generator, length_range: tuple[float, float]) -> np.ndarray:
    """Blur along a line of random direction, length ``length_range`` of the crop side.

    The kernel is a line segment centred on its middle pixel (odd size, point-symmetric), so like
    a Gaussian blur it moves no point.
    """
    length = max(1.0, rng.uniform(*length_range) * image.shape[1])
    size = 2 * int(math.ceil(length / 2)) + 1
    angle = rng.uniform(0.0, math.pi)
    half = (length - 1) / 2
    centre = size // 2
    kernel = np.zeros((size, size), np.float32)
    start = (centre - half * math.cos(angle), centre - half * math.sin(angle))
    stop = (centre + half * math.cos(angle), centre + half * math.sin(angle))
    # drawn at 8x sub-pixel precision (shift=3), symmetric about the centre pixel
    cv2.line(kernel, tuple(int(round(v * 8)) for v in start), tuple(int(round(v * 8)) for v in stop),
             1.0, thickness=1, lineType=cv2.LINE_AA, shift=3)
    kernel = (kernel + kernel[::-1, ::-1]) / 2  # exact point symmetry despite anti-aliasing rounding
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def _random_region(rng: np.random.Generator, height: int, width: int,
                   size_range: tuple[float, float]) -> tuple[int, int, int, int]:
    """``top, left, box_h, box_w`` of a rectangle with sides ``size_range`` of the crop, wholly inside."""
    box_h = max(1, int(round(rng.uniform(*size_range) * height)))
    box_w = max(1, int(round(rng.uniform(*size_range) * width)))
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    return top, left, box_h, box_w


def occlude(image: np.ndarray, rng: np.random.Generator,
            size_range: tuple[float, float]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Paint one rectangle of random grey-level noise (random erasing), sides ``size_range`` of the
    crop, anywhere. Returns the image and the region ``top, left, height, width``."""
    top, left, box_h, box_w = region = _random_region(rng, *image.shape[:2], size_range)
    image = image.copy()
    image[top:top + box_h, left:left + box_w] = rng.random((box_h, box_w, image.shape[2]), dtype=np.float32)
    return image, region


def paste_patch(image: np.ndarray, rng: np.random.Generator,
                size_range: tuple[float, float]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Cover one rectangle with a patch cut from another place of the same crop (a hand, hair or
    a second face's texture rather than noise), sides ``size_range`` of the crop. Returns the image
    and the covered region ``top, left, height, width``."""
    top, left, box_h, box_w = region = _random_region(rng, *image.shape[:2], size_range)
    source_top = int(rng.integers(0, image.shape[0] - box_h + 1))
    source_left = int(rng.integers(0, image.shape[1] - box_w + 1))
    patch = image[source_top:source_top + box_h, source_left:source_left + box_w].copy()
    image = image.copy()
    image[top:top + box_h, left:left + box_w] = patch
    return image, region
