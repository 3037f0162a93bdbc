"""Overlays: drawing cost bounded by the faces' crops, an opacity that shows the face, styles, file formats."""
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from labfast import cli
from labfast.inference import overlay
from labfast.inference.aligner import Face
from labfast.inference.overlay import boundary_colours, draw_boundaries, draw_faces

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "300w_sample"


def face_at(x0: float, y0: float, side: float, heatmaps: np.ndarray) -> Face:
    """A face whose ``(K, h, w)`` heatmap grid covers the square ``side`` px from ``(x0, y0)``:
    heatmap pixel centres at ``x0 + (j + 0.5) * side / w - 0.5``, the aligner's convention."""
    scale = side / heatmaps.shape[-1]
    affine = np.array([[scale, 0, x0 + 0.5 * scale - 0.5], [0, scale, y0 + 0.5 * scale - 0.5]])
    return Face(landmarks=np.full((68, 2), x0 + side / 2, np.float32), box=np.array([x0, y0, x0 + side, y0 + side], np.float32),
                boundary_heatmaps=heatmaps, heatmap_to_image=affine)


def test_heatmaps_are_warped_into_their_crop_only(monkeypatch):
    image = np.full((3000, 4000, 3), 90, np.uint8)
    heatmaps = np.random.default_rng(0).uniform(0.2, 1.0, (13, 32, 32)).astype(np.float32)
    face = face_at(1000, 500, 320, heatmaps)  # 10 image px per heatmap px
    sizes = []
    warp = cv2.warpAffine
    monkeypatch.setattr(overlay.cv2, "warpAffine", lambda *args, **kwargs: sizes.append(args[2]) or warp(*args, **kwargs))
    drawn = draw_faces(image, [face], points=False)
    # one warp into the crop's 320 px square, widened by the one heatmap pixel (10 px) that bilinear
    # sampling reaches on each side and a pixel of rounding, not into the 4000 x 3000 photo
    assert len(sizes) == 1 and max(sizes[0]) <= 320 + 2 * 10 + 2
    changed = np.argwhere((drawn != image).any(axis=2))
    assert changed.min(axis=0).tolist() >= [490, 990] and changed.max(axis=0).tolist() <= [830, 1330]


def test_warping_into_the_crop_gives_the_pixels_of_warping_into_the_whole_image(monkeypatch):
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    heatmaps = np.random.default_rng(2).uniform(0.0, 1.0, (13, 32, 32)).astype(np.float32)
    affine = np.array([[2.3, 0.4, 101.7], [-0.4, 2.3, 73.2]])  # rotated, fractional offset
    in_crop = image.copy()
    draw_boundaries(in_crop, heatmaps, affine)
    monkeypatch.setattr(overlay, "heatmap_region", lambda *args: (0, 0, 400, 300))
    whole = image.copy()
    draw_boundaries(whole, heatmaps, affine)
    assert (whole != image).any()
    # cv2.warpAffine rounds each sampling position to 1/32 px from the matrix's own offset, so the two
    # offsets can sample 1/32 heatmap px apart: at most 255 x opacity / 32 levels in the warped
    # colour and as much in the warped opacity (times a pixel of at most 255 / 255), plus the three
    # uint8 roundings of the blend (half a level each)
    difference = np.abs(in_crop.astype(int) - whole)
    assert difference.max() <= 2 * 255 * overlay.HEATMAP_OPACITY / 32 + 1.5 and (difference == 0).mean() > 0.99


def test_a_crop_outside_the_image_draws_nothing_and_one_half_outside_is_clipped():
    image = np.full((100, 100, 3), 90, np.uint8)
    heatmaps = np.ones((3, 8, 8), np.float32)
    outside = image.copy()
    draw_boundaries(outside, heatmaps, face_at(200, 200, 40, heatmaps).heatmap_to_image)
    np.testing.assert_array_equal(outside, image)
    half = image.copy()
    draw_boundaries(half, heatmaps, face_at(80, -20, 40, heatmaps).heatmap_to_image)
    # the crop covers x 80..120, y -20..20; bilinear sampling reaches one heatmap pixel (5 px) beyond
    assert (half[:20, 80:] != 90).any(axis=2).all() and (half[26:, :] == 90).all() and (half[:, :74] == 90).all()


@pytest.mark.parametrize("opacity", [0.5, 0.3])
def test_at_a_heatmap_peak_the_photo_keeps_one_minus_the_opacity(opacity):
    image = np.full((64, 64, 3), 200, np.uint8)
    heatmaps = np.zeros((4, 16, 16), np.float32)
    heatmaps[2] = 1.0  # boundary 2 at full strength everywhere
    drawn = image.copy()
    draw_boundaries(drawn, heatmaps, face_at(0, 0, 64, heatmaps).heatmap_to_image, opacity)
    expected = (1 - opacity) * 200 + opacity * boundary_colours(4)[2]
    # inside the crop (away from its edge, where the warp blends with the empty border), three uint8
    # roundings of half a level: the warped colour x opacity, the warped opacity (x 200 / 255 of the
    # pixel) and the pixel x opacity
    np.testing.assert_allclose(drawn[8:56, 8:56].reshape(-1, 3), np.broadcast_to(expected, (48 * 48, 3)), atol=1.5)
    assert overlay.HEATMAP_OPACITY <= 0.5  # by default the face keeps at least half its weight under a boundary


def predict(monkeypatch, *arguments) -> int:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    return cli.main(["predict", *map(str, arguments), "--device", "cpu"])


@pytest.mark.usefixtures("eager_runtime")
def test_points_style_draws_boxes_and_landmarks_only_and_jpeg_inputs_get_jpeg_overlays(monkeypatch, tiny_checkpoint, tmp_path):
    png = shutil.copy(SAMPLE / "fullres" / "image_0067.png", tmp_path)
    jpeg = shutil.copy(SAMPLE / "fullres" / "3083968872_1.jpg", tmp_path)
    out = tmp_path / "out"
    assert predict(monkeypatch, png, jpeg, "--checkpoint", tiny_checkpoint, "--out", out, "--overlay-style", "points") == 0
    image = cv2.imread(str(png))
    faces = [Face(landmarks=np.asarray(face["landmarks"], np.float32), box=np.asarray(face["box"], np.float32),
                  boundary_heatmaps=None, heatmap_to_image=np.eye(2, 3))
             for face in json.loads((out / "image_0067.json").read_text())["faces"]]
    # a lossless PNG overlay equals the points drawn alone: no heatmap was blended
    np.testing.assert_array_equal(cv2.imread(str(out / "image_0067.png")), draw_faces(image, faces, boundaries=False))
    assert cv2.imread(str(out / "3083968872_1.jpg")).shape == cv2.imread(str(jpeg)).shape
    assert not (out / "3083968872_1.png").exists()


def test_an_overlay_never_overwrites_its_input(monkeypatch, tiny_checkpoint, tmp_path):
    photo = shutil.copy(SAMPLE / "fullres" / "image_0067.png", tmp_path)
    before = Path(photo).read_bytes()
    with pytest.raises(SystemExit, match="would overwrite it"):
        predict(monkeypatch, photo, "--checkpoint", tiny_checkpoint, "--out", tmp_path)
    assert Path(photo).read_bytes() == before


def test_overlay_opacity_outside_zero_to_one_is_refused(monkeypatch, tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="--overlay-opacity must be in"):
        predict(monkeypatch, SAMPLE / "fullres" / "image_0067.png", "--checkpoint", tiny_checkpoint, "--overlay-opacity", "1.5")
