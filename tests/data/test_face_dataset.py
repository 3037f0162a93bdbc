"""FaceDataset / crop_face: landmark-consistent warps (dot tests), flip relabelling, seeding, errors.

Dot tests draw a Gaussian dot (sigma 3 source px) centred at a sub-pixel landmark into a black
uint8 image, crop / augment it, and compare the dot's intensity centroid in the crop with the
landmark the dataset reports. Tolerance 0.05 crop px: the error is dominated by the uint8
rounding of the crop (per-pixel error uniform in +-0.5/255 of the peak, std 1/(255*sqrt(12))).
For the 256 px crops below (dot sigma ~6 crop px, centroid window of ~70x70 px, mass ~2*pi*sigma^2)
that gives a centroid std of ~0.006 px; 0.05 is ~8 std, while a half-pixel convention slip,
a missed 1-based shift or a wrong flip relabel moves the centroid by >= 0.5 px.
"""
import math

import cv2
import numpy as np
import pytest
import torch

from labfast import schemes
from labfast.data import AugmentConfig, FaceDataset, Sample, collate_readable, crop_face, read_300w, write_pts
from labfast.data.transforms import warp_crop

TOLERANCE_PX = 0.05
DOT_SIGMA = 3.0
GEOMETRY_ONLY = AugmentConfig(brightness=0, contrast=0, saturation=0, hue_degrees=0, greyscale_probability=0,
                              gamma_probability=0, illumination_probability=0, blur_probability=0,
                              motion_blur_probability=0, occlusion_probability=0, patch_probability=0)
SCHEME = schemes.get("300w")


def _dot_image(height, width, centres, sigma=DOT_SIGMA):
    ys, xs = np.mgrid[0:height, 0:width]
    intensity = np.zeros((height, width))
    for x, y in centres:
        intensity += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    grey = np.clip(np.round(intensity * 255), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _centroid(channel, near, radius):
    """Intensity centroid of ``channel`` (H, W) within a square window around ``near`` (x, y)."""
    ys, xs = np.mgrid[0:channel.shape[0], 0:channel.shape[1]]
    window = (np.abs(xs - near[0]) <= radius) & (np.abs(ys - near[1]) <= radius)
    weights = np.where(window, channel.astype(np.float64), 0.0)
    assert weights.sum() > 0, f"no dot near {near}"
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def _face(rng, drawn, height=300, width=280):
    """68 random landmarks spread over a 140 px face box centred at (140, 150); dots drawn only at
    landmark indices ``drawn``, which are moved within 25 px of the centre so that the strongest
    augmentation (zoom 1.25 of a 1.25-margin crop, 30 deg, 5 % shift) keeps their dots in view."""
    landmarks = np.column_stack([rng.uniform(70, 210, 68), rng.uniform(80, 220, 68)]).astype(np.float32)
    landmarks[list(drawn)] = rng.uniform(-25, 25, size=(len(drawn), 2)) + [140, 150]
    image = _dot_image(height, width, landmarks[list(drawn)])
    return Sample(image_path=None, landmarks=landmarks, box=np.array([70, 80, 210, 220], np.float32), image=image)


def _dot_radius(item):
    """Centroid window: 6 dot sigmas at the crop's scale (plus 2 px)."""
    scale = math.sqrt(abs(np.linalg.det(item["affine"][:, :2].numpy().astype(np.float64))))
    return int(math.ceil(6 * DOT_SIGMA * scale)) + 2


@pytest.mark.parametrize("input_size, seed", [(256, 0), (256, 1), (256, 2), (64, 3), (64, 4)])
def test_dot_lands_where_the_augmented_landmark_says(input_size, seed):
    rng = np.random.default_rng(seed)
    # three landmarks far apart so that windows do not overlap
    sample = _face(rng, drawn=[])
    sample.landmarks[[0, 30, 57]] = [[115.3, 125.7], [165.6, 130.2], [140.1, 178.9]]  # >= 50 px apart
    sample.image = _dot_image(300, 280, sample.landmarks[[0, 30, 57]])
    config = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, "flip_probability": 0.0})
    item = FaceDataset([sample], SCHEME, input_size=input_size, train=True, augment=config, seed=seed)[0]
    channel = item["image"][0].numpy()
    for index in (0, 30, 57):
        expected = item["landmarks"][index].numpy()
        found = _centroid(channel, expected, _dot_radius(item))
        np.testing.assert_allclose(found, expected, atol=TOLERANCE_PX)


@pytest.mark.parametrize("drawn", [36, 0, 48, 31, 19])
def test_flipped_landmark_i_sits_on_the_dot_of_point_flip_permutation_i(drawn):
    # after a flip, output landmark flip_permutation[j] is the mirrored original point j: the dot
    # drawn at original point j must be found at output landmark flip_permutation[j], not at j
    rng = np.random.default_rng(drawn)
    sample = _face(rng, drawn=[drawn])
    config = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, "flip_probability": 1.0})
    item = FaceDataset([sample], SCHEME, train=True, augment=config, seed=drawn)[0]
    assert np.linalg.det(item["affine"][:, :2].numpy()) < 0  # the crop is mirrored
    relabelled = SCHEME.flip_permutation[drawn]
    assert relabelled != drawn
    expected = item["landmarks"][relabelled].numpy()
    found = _centroid(item["image"][0].numpy(), expected, _dot_radius(item))
    np.testing.assert_allclose(found, expected, atol=TOLERANCE_PX)
    # without the relabelling the check above would compare against this far-away point
    assert np.linalg.norm(item["landmarks"][drawn].numpy() - found) > 5


def test_flip_keeps_left_points_on_the_left():
    # anatomical left eye outer corner (36) is on the image left of the right one (45) in a frontal face
    sample = _face(np.random.default_rng(0), drawn=[])
    sample.landmarks[36], sample.landmarks[45] = (100.0, 120.0), (180.0, 120.0)
    config = AugmentConfig(**{**GEOMETRY_ONLY.__dict__, "flip_probability": 1.0, "rotation_deg": 0.0})
    item = FaceDataset([sample], SCHEME, train=True, augment=config)[0]
    assert item["landmarks"][36, 0] < item["landmarks"][45, 0]


def test_pts_one_based_file_puts_the_landmark_on_the_drawn_dot(tmp_path):
    # end to end: dots at 0-based pixel positions, written to .pts 1-based as iBUG does; a reader
    # that forgot to subtract 1 would be off by (crop scale ~1.5) px
    rng = np.random.default_rng(9)
    landmarks = np.column_stack([rng.uniform(60, 200, 68), rng.uniform(60, 200, 68)])
    landmarks[[8, 30, 36]] = [[70.25, 190.5], [130.75, 120.25], [185.5, 65.75]]
    folder = tmp_path / "ibug"
    folder.mkdir()
    cv2.imwrite(str(folder / "face.png"), _dot_image(260, 260, landmarks[[8, 30, 36]]))
    write_pts(folder / "face.pts", landmarks + 1.0)
    sample = read_300w(tmp_path, "challenging")[0]
    item = FaceDataset([sample], "300w")[0]
    for index in (8, 30, 36):
        expected = item["landmarks"][index].numpy()
        found = _centroid(item["image"][1].numpy(), expected, _dot_radius(item))
        np.testing.assert_allclose(found, expected, atol=TOLERANCE_PX)


def test_eval_item_is_crop_face_and_centres_the_box():
    sample = _face(np.random.default_rng(1), drawn=[0, 1, 2])
    item = FaceDataset([sample], SCHEME, input_size=128, margin=0.2)[0]
    crop, affine = crop_face(sample.image, sample.box, input_size=128, margin=0.2)
    # the same pixels: the uint8 crop divided by 255 in float32 (as LAB.normalize does) is crop_face's
    np.testing.assert_array_equal(item["image"].numpy().astype(np.float32) / np.float32(255), crop.transpose(2, 0, 1))
    np.testing.assert_array_equal(item["affine"].numpy(), affine)
    centre = affine.astype(np.float64) @ [140.0, 150.0, 1.0]  # box 70..210 x 80..220
    np.testing.assert_allclose(centre, [63.5, 63.5], atol=1e-4)  # crop centre (size-1)/2
    np.testing.assert_allclose(affine[:, :2], np.eye(2) * 128 / (140 * 1.4), atol=1e-6)


def test_output_contract_and_rgb_order():
    image = np.zeros((300, 280, 3), np.uint8)
    image[..., 0] = 255  # BGR blue
    sample = _face(np.random.default_rng(2), drawn=[])
    sample.image = image
    item = FaceDataset([sample], SCHEME, train=True, seed=5)[0]
    assert set(item) == {"image", "landmarks", "affine", "index"}
    assert item["image"].shape == (3, 256, 256) and item["image"].dtype == torch.uint8  # a quarter of float32's bytes
    assert item["landmarks"].shape == (68, 2) and item["landmarks"].dtype == torch.float32
    assert item["affine"].shape == (2, 3) and item["affine"].dtype == torch.float32
    assert item["index"] == 0
    plain = FaceDataset([sample], SCHEME)[0]["image"]
    assert plain.dtype == torch.uint8
    assert plain[2, 128, 128] == 255 and plain[0, 128, 128] == 0  # blue is the last RGB channel


def test_landmarks_are_the_affine_image_of_the_originals_relabelled():
    sample = _face(np.random.default_rng(3), drawn=[])
    dataset = FaceDataset([sample] * 8, SCHEME, input_size=32, train=True, seed=1)
    permutation = np.asarray(SCHEME.flip_permutation)
    for item in (dataset[i] for i in range(8)):
        affine = item["affine"].numpy().astype(np.float64)
        moved = sample.landmarks @ affine[:, :2].T + affine[:, 2]
        if np.linalg.det(affine[:, :2]) < 0:
            relabelled = np.empty_like(moved)
            relabelled[permutation] = moved
            moved = relabelled
        np.testing.assert_allclose(item["landmarks"].numpy(), moved, atol=1e-3)


def _all(item):
    return [item["image"], item["landmarks"], item["affine"]]


def test_augmentation_is_reproducible_from_seed_epoch_and_index():
    sample = _face(np.random.default_rng(4), drawn=[10, 20])
    first = FaceDataset([sample] * 3, SCHEME, input_size=64, train=True, seed=7)
    second = FaceDataset([sample] * 3, SCHEME, input_size=64, train=True, seed=7)
    later = [second[2], second[0]]  # order of access must not matter
    for a, b in zip([first[2], first[0]], later):
        for x, y in zip(_all(a), _all(b)):
            assert torch.equal(x, y)
    assert not torch.equal(first[0]["affine"], first[1]["affine"])  # indices differ
    other_seed = FaceDataset([sample] * 3, SCHEME, input_size=64, train=True, seed=8)
    assert not torch.equal(first[0]["affine"], other_seed[0]["affine"])
    before = first[0]
    first.set_epoch(1)
    assert not torch.equal(before["affine"], first[0]["affine"])
    first.set_epoch(0)
    assert torch.equal(before["image"], first[0]["image"])


def test_photometric_augmentation_leaves_geometry_alone():
    sample = _face(np.random.default_rng(5), drawn=[10])
    photometric = AugmentConfig(blur_probability=1.0, occlusion_probability=1.0)
    with_photo = FaceDataset([sample], SCHEME, input_size=64, train=True, augment=photometric, seed=3)[0]
    without = FaceDataset([sample], SCHEME, input_size=64, train=True, augment=GEOMETRY_ONLY, seed=3)[0]
    assert torch.equal(with_photo["affine"], without["affine"])
    assert torch.equal(with_photo["landmarks"], without["landmarks"])
    assert not torch.equal(with_photo["image"], without["image"])


def test_training_crop_without_photometric_augmentation_is_the_warps_own_pixels():
    """No photometric change: the uint8 crop is exactly the warp of the image by the item's affine."""
    sample = _face(np.random.default_rng(11), drawn=[10, 20, 30])
    item = FaceDataset([sample], SCHEME, input_size=64, train=True, augment=GEOMETRY_ONLY, seed=4)[0]
    warped = cv2.cvtColor(warp_crop(sample.image, item["affine"].numpy().astype(np.float64), 64), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(item["image"].numpy(), warped.transpose(2, 0, 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_photometric_augmentation_is_the_float_result_rounded_to_uint8(seed):
    """The augmentations still run in float32 on the same draws; only the result is rounded, by at
    most half a grey level (0.5 / 255, plus float32 rounding of ~1e-7)."""
    sample = _face(np.random.default_rng(12), drawn=[10, 20, 30])
    photometric = AugmentConfig(blur_probability=1.0, gamma_probability=1.0, illumination_probability=1.0,
                                occlusion_probability=1.0, hue_degrees=20.0)
    dataset = FaceDataset([sample], SCHEME, input_size=64, train=True, augment=photometric, seed=seed)
    item = dataset[0]
    geometry = FaceDataset([sample], SCHEME, input_size=64, train=True, augment=GEOMETRY_ONLY, seed=seed)[0]
    crop = geometry["image"].numpy().transpose(1, 2, 0).astype(np.float32) / 255.0
    expected = dataset.photometric(crop.copy(), dataset.augmentation_streams(0)).transpose(2, 0, 1)
    rounded = item["image"].numpy().astype(np.float64) / 255
    assert np.abs(rounded - expected).max() <= 0.5 / 255 + 1e-6
    assert np.abs(rounded - crop.transpose(2, 0, 1)).max() > 0.05  # the augmentations did change the crop


def test_augmentation_draws_stay_in_their_ranges():
    sample = _face(np.random.default_rng(6), drawn=[])
    config = AugmentConfig(box_shift_std=0, box_scale_std=0)  # zoom measured against the annotated box
    dataset = FaceDataset([sample] * 60, SCHEME, input_size=16, train=True, augment=config, seed=2)
    side = 140 * (1 + 2 * dataset.margin)
    angles, zooms, flips = [], [], []
    for index in range(len(dataset)):
        affine = dataset[index]["affine"].numpy().astype(np.float64)
        angles.append(math.degrees(math.atan2(-affine[1, 0], affine[1, 1])))  # row 2 is not mirrored
        zooms.append(math.sqrt(abs(np.linalg.det(affine[:, :2]))) * side / 16)
        flips.append(np.linalg.det(affine[:, :2]) < 0)
    assert max(map(abs, angles)) <= config.rotation_deg + 1e-3 and min(angles) < -10 and max(angles) > 10
    assert config.zoom_range[0] - 1e-4 <= min(zooms) and max(zooms) <= config.zoom_range[1] + 1e-4
    assert 10 <= sum(flips) <= 50  # p = 0.5 over 60 draws: outside this has probability < 1e-5


def test_unreadable_and_missing_images_raise_naming_the_path(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    landmarks = np.random.default_rng(0).uniform(10, 50, (68, 2))
    samples = [Sample(str(broken), landmarks, np.array([10, 10, 50, 50])),
               Sample(str(tmp_path / "absent.png"), landmarks, np.array([10, 10, 50, 50]))]
    dataset = FaceDataset(samples, SCHEME)
    with pytest.raises(OSError, match="broken.jpg"):
        dataset[0]
    with pytest.raises(OSError, match="absent.png"):
        dataset[1]


def test_with_skip_unreadable_a_bad_image_gives_a_marker_naming_it(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    good = _face(np.random.default_rng(7), drawn=[])
    bad = Sample(str(broken), good.landmarks, good.box)
    dataset = FaceDataset([good, bad], SCHEME, input_size=64, train=True, skip_unreadable=True)
    assert set(dataset[0]) == {"image", "landmarks", "affine", "index"}
    marker = dataset[1]
    assert set(marker) == {"index", "unreadable"} and marker["index"] == 1
    assert "item 1" in marker["unreadable"] and str(broken) in marker["unreadable"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_collate_readable_drops_bad_items_and_lists_them_across_workers(tmp_path, num_workers):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    good = _face(np.random.default_rng(8), drawn=[])
    samples = [good, Sample(str(broken), good.landmarks, good.box), good, good]
    dataset = FaceDataset(samples, SCHEME, input_size=32, train=True, skip_unreadable=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=collate_readable)
    first, second = list(loader)
    assert first["index"].tolist() == [0] and first["image"].shape == (1, 3, 32, 32)
    assert len(first["unreadable"]) == 1 and "broken.jpg" in first["unreadable"][0]
    assert second["index"].tolist() == [2, 3] and second["unreadable"] == []
    assert collate_readable([dataset[1]]) == {"unreadable": [dataset[1]["unreadable"]]}


def test_landmark_count_must_match_the_scheme():
    sample = Sample(None, np.zeros((98, 2)), np.array([0, 0, 10, 10]), image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"sample 0 .*\(98, 2\).*'300w' needs \(68, 2\)"):
        FaceDataset([sample], "300w")


def test_real_300w_faces_crop_with_landmarks_inside(shared_data):
    samples = read_300w(shared_data / "300w", "common")[:4]
    dataset = FaceDataset(samples, "300w", train=True, seed=0, augment=AugmentConfig(box_shift_std=0, box_scale_std=0))
    for index in range(len(samples)):
        item = dataset[index]
        assert item["image"].shape == (3, 256, 256)
        # zoom <= 1.25 on a 1.25x margin crop, shift <= 5 %, rotation <= 30 deg: the face stays in view
        assert (item["landmarks"] > -10).all() and (item["landmarks"] < 266).all()


def test_unit_scale_crop_is_an_exact_pixel_slice_and_outside_is_black():
    # a box of side 256/1.25 centred at (150.5, 100.5) gives scale 1 and offset 150.5 - 127.5 = 23
    # (x), 100.5 - 127.5 = -27 (y): crop pixel (row i, col j) is source pixel (i - 27, j + 23)
    rng = np.random.default_rng(12)
    image = rng.integers(1, 256, size=(200, 300, 3), dtype=np.uint8)
    half = 256 / 1.25 / 2
    crop, affine = crop_face(image, [150.5 - half, 100.5 - half, 150.5 + half, 100.5 + half], input_size=256, margin=0.125)
    np.testing.assert_allclose(affine, [[1, 0, -23], [0, 1, 27]], atol=1e-5)
    expected = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)[:, 23:279].astype(np.float32) / 255
    np.testing.assert_allclose(crop[27:227], expected, atol=1e-6)
    assert (crop[:27] == 0).all() and (crop[227:] == 0).all()  # BORDER_CONSTANT black above / below


def test_crop_wholly_outside_the_image_is_black():
    crop, _ = crop_face(np.full((50, 50, 3), 200, np.uint8), [500, 500, 600, 600], input_size=32)
    assert crop.shape == (32, 32, 3) and (crop == 0).all()
