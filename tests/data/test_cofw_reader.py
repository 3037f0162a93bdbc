"""COFW reader on a small file with the MATLAB v7.3 layout, written here with h5py."""
import h5py
import numpy as np
import pytest

from labfast.data import AnnotationError, read_cofw


def _write_mat(path, images_rgb, phis, boxes, split="test"):
    """MATLAB v7.3 layout: column-major arrays appear transposed; the cell array of images is an
    array of object references into ``#refs#``."""
    suffix = "T" if split == "test" else "Tr"
    with h5py.File(path, "w") as handle:
        refs_group = handle.create_group("#refs#")
        refs = []
        for index, image in enumerate(images_rgb):
            stored = image.T if image.ndim == 2 else image.transpose(2, 1, 0)  # H x W (x 3) -> (3,) W, H
            refs.append(refs_group.create_dataset(f"img{index}", data=stored).ref)
        cell = handle.create_dataset(f"Is{suffix}", (1, len(refs)), dtype=h5py.ref_dtype)
        cell[0, :] = refs
        handle.create_dataset(f"phis{suffix}", data=np.asarray(phis, dtype=np.float64).T)
        handle.create_dataset(f"bboxes{suffix}", data=np.asarray(boxes, dtype=np.float64).T)


@pytest.fixture
def faces():
    rng = np.random.default_rng(7)
    colour = rng.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)  # H != W catches a missed transpose
    grey = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    phis = np.zeros((2, 87))
    phis[:, :58] = rng.uniform(1, 9, size=(2, 58)).round(2)  # 1-based
    phis[:, 58:] = rng.integers(0, 2, size=(2, 29))
    boxes = np.array([[2.0, 3.0, 10.0, 8.0], [1.0, 1.0, 5.0, 6.0]])
    return [colour, grey], phis, boxes


@pytest.mark.parametrize("split", ["train", "test"])
def test_reads_points_occlusion_box_and_images(tmp_path, faces, split):
    images, phis, boxes = faces
    path = tmp_path / f"COFW_{split}_color.mat"
    _write_mat(path, images, phis, boxes, split)
    samples = read_cofw(path)
    assert len(samples) == 2
    for sample, image, phi, box in zip(samples, images, phis, boxes):
        np.testing.assert_allclose(sample.landmarks[:, 0], phi[:29] - 1, atol=1e-5)
        np.testing.assert_allclose(sample.landmarks[:, 1], phi[29:58] - 1, atol=1e-5)
        np.testing.assert_array_equal(sample.occlusion, phi[58:] == 1)
        np.testing.assert_allclose(sample.box, [box[0] - 1, box[1] - 1, box[0] - 1 + box[2], box[1] - 1 + box[3]])
        assert sample.image_path is None and sample.attributes == {}
        assert sample.image.shape == image.shape[:2] + (3,) and sample.image.dtype == np.uint8
    # colour: stored RGB, held BGR like cv2.imread; grey: three equal channels
    np.testing.assert_array_equal(samples[0].image, images[0][:, :, ::-1])
    np.testing.assert_array_equal(samples[1].image, np.repeat(images[1][:, :, None], 3, axis=2))


@pytest.mark.parametrize(
    "array, position, value, message",
    [
        ("phis", (1, 3), np.nan, "face 2: non-finite"),
        ("phis", (0, 60), 2.0, "face 1: occlusion flags must be 0 or 1"),
        ("boxes", (1, 2), 0.0, "face 2: bad box"),
        ("phis", (1, 3), 3.5e38, "face 2: a coordinate beyond"),  # infinite in float32 (found by tests/fuzz)
    ],
)
def test_bad_face_raises_naming_file_and_face(tmp_path, faces, array, position, value, message):
    images, phis, boxes = faces
    arrays = {"phis": phis.copy(), "boxes": boxes.copy()}
    arrays[array][position] = value
    path = tmp_path / "COFW_test_color.mat"
    _write_mat(path, images, arrays["phis"], arrays["boxes"])
    with pytest.raises(AnnotationError, match=message) as error:
        read_cofw(path)
    assert str(path) in str(error.value)
    assert len(read_cofw(path, strict=False)) == 1


def test_wrong_width_and_mismatched_counts_are_errors(tmp_path, faces):
    images, phis, boxes = faces
    path = tmp_path / "a.mat"
    _write_mat(path, images, phis[:, :86], boxes)
    with pytest.raises(AnnotationError, match=r"phisT has shape \(86, 2\)"):
        read_cofw(path)
    _write_mat(path, images[:1], phis, boxes)
    with pytest.raises(AnnotationError, match="IsT has 1 faces, phisT 2"):
        read_cofw(path)


def test_non_hdf5_file_is_a_clear_error(tmp_path):
    path = tmp_path / "COFW_test.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, not v7.3")
    with pytest.raises(AnnotationError, match="not a MATLAB v7.3"):
        read_cofw(path)


def test_arrays_that_are_groups_or_text_are_annotation_errors(tmp_path, faces):
    # found by tests/fuzz: h5py's OSError (text read as numbers) and a group read as an array escaped
    images, phis, boxes = faces
    path = tmp_path / "COFW_test_color.mat"
    _write_mat(path, images, phis, boxes)
    with h5py.File(path, "a") as handle:
        del handle["bboxesT"]
        handle.create_dataset("bboxesT", data=np.array([b"text"]))
    with pytest.raises(AnnotationError, match="'bboxesT' cannot be read as float64"):
        read_cofw(path)
    with h5py.File(path, "a") as handle:
        del handle["phisT"]
        handle.create_group("phisT")
    with pytest.raises(AnnotationError, match="not an array: 'phisT'"):
        read_cofw(path)
