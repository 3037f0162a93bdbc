"""300-W reader: official folder layout, 1-based .pts -> 0-based, subsets, errors, real data."""
import logging

import cv2
import numpy as np
import pytest

from labfast.data import AnnotationError, W300_SUBSETS, read_300w, read_pts, read_pts_folder, write_pts


def _face(folder, name, rng, suffix=".jpg", header=True):
    folder.mkdir(parents=True, exist_ok=True)
    points = rng.uniform(5, 90, size=(68, 2)).round(3)  # 1-based file values
    write_pts(folder / f"{name}.pts", points, header=header)
    cv2.imwrite(str(folder / f"{name}{suffix}"), np.zeros((100, 100, 3), np.uint8))
    return points


@pytest.fixture
def tree(tmp_path):
    """A miniature 300-W: every official folder, two faces each (LFPW as .png, HELEN headerless)."""
    rng = np.random.default_rng(0)
    written = {}
    for folders in W300_SUBSETS.values():
        for folder in folders:
            if folder in written:
                continue
            suffix = ".png" if folder.startswith("lfpw") else ".jpg"
            header = not folder.startswith("helen")
            written[folder] = [_face(tmp_path / folder, f"face_{i}", rng, suffix, header) for i in range(2)]
    return tmp_path, written


def test_landmarks_are_the_file_values_minus_one(tree):
    root, written = tree
    samples = read_300w(root, "common")
    assert [s.image_path.rsplit("/", 2)[-2:] for s in samples] == [
        ["testset", "face_0.png"], ["testset", "face_1.png"], ["testset", "face_0.jpg"], ["testset", "face_1.jpg"]]
    expected = written["lfpw/testset"] + written["helen/testset"]
    for sample, points in zip(samples, expected):
        assert sample.landmarks.dtype == np.float32 and sample.landmarks.shape == (68, 2)
        np.testing.assert_allclose(sample.landmarks, points - 1.0, atol=1e-4)  # float32 of 3-decimal values
        np.testing.assert_array_equal(sample.box, [*sample.landmarks.min(0), *sample.landmarks.max(0)])
        assert sample.attributes == {} and sample.image is None and sample.occlusion is None


@pytest.mark.parametrize("subset, count", [("train", 6), ("common", 4), ("challenging", 2), ("full", 6), ("test", 4)])
def test_each_subset_reads_its_folders(tree, subset, count):
    root, _ = tree
    samples = read_300w(root, subset)
    assert len(samples) == count
    folders = {s.image_path[len(str(root)) + 1:].rsplit("/", 1)[0] for s in samples}
    assert folders == set(W300_SUBSETS[subset])


def test_missing_folder_is_named(tree):
    root, _ = tree
    for path in (root / "ibug").iterdir():
        path.unlink()
    (root / "ibug").rmdir()
    with pytest.raises(FileNotFoundError, match=r"ibug"):
        read_300w(root, "full")
    assert len(read_300w(root, "common")) == 4


def test_unknown_subset_is_an_error(tree):
    with pytest.raises(ValueError, match="unknown 300-W subset 'commons'"):
        read_300w(tree[0], "commons")


def test_pts_without_image_is_an_error_naming_the_pts(tree):
    root, _ = tree
    (root / "afw" / "face_1.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"afw/face_1.pts: no image"):
        read_300w(root, "train")


def test_wrong_point_count_is_an_error(tree):
    root, _ = tree
    write_pts(root / "ibug" / "face_0.pts", np.ones((67, 2)))
    with pytest.raises(AnnotationError, match=r"ibug/face_0.pts: expected 68 points, got 67"):
        read_300w(root, "challenging")


def test_non_strict_skips_bad_files_and_logs_the_count(tree, caplog):
    root, _ = tree
    (root / "ibug" / "face_0.pts").write_text("1 2\n3 nan\n")
    with caplog.at_level(logging.WARNING, logger="labfast.data"):
        samples = read_300w(root, "challenging", strict=False)
    assert len(samples) == 1 and samples[0].image_path.endswith("face_1.jpg")
    assert "skipped 1 bad entries" in caplog.text and "face_0.pts:2" in caplog.text


def test_non_utf8_pts_is_an_annotation_error_naming_the_file_and_line(tree):
    root, _ = tree
    (root / "ibug" / "face_0.pts").write_bytes(b"version: 1\nn_points: 68\n{\n1 2 \xe9\xff\n}\n")
    with pytest.raises(AnnotationError, match=r"ibug/face_0.pts:4: not UTF-8 text"):
        read_300w(root, "challenging")


def test_non_strict_skips_a_non_utf8_pts_with_a_warning(tree, caplog):
    root, _ = tree
    (root / "ibug" / "face_0.pts").write_bytes(b"\xff\xfe1 2\n")  # a UTF-16 byte-order mark
    with caplog.at_level(logging.WARNING, logger="labfast.data"):
        samples = read_300w(root, "challenging", strict=False)
    assert [s.image_path.rsplit("/", 1)[-1] for s in samples] == ["face_1.jpg"]
    assert "skipped 1 bad entries" in caplog.text and "face_0.pts:1: not UTF-8" in caplog.text


# --- the real files in ../shared/data/300w (README there: 2012 train faces, 554 common) ---

def test_real_300w_counts(shared_data):
    root = shared_data / "300w"
    assert len(read_300w(root, "train")) == 2012
    assert len(read_300w(root, "common")) == 554


def test_real_300w_first_point_is_the_file_value_minus_one(shared_data):
    pts_path = shared_data / "300w" / "afw" / "1051618982_1.pts"
    first_line = pts_path.read_text().splitlines()[3]  # after "version", "n_points", "{"
    file_x, file_y = (float(v) for v in first_line.split())
    sample = next(s for s in read_300w(shared_data / "300w", "train") if "1051618982_1" in s.image_path)
    assert sample.landmarks[0].tolist() == pytest.approx([file_x - 1, file_y - 1], abs=1e-4)


def test_real_300w_has_no_ibug_so_challenging_and_full_fail_clearly(shared_data):
    for subset in ("challenging", "full"):
        with pytest.raises(FileNotFoundError, match=r"300w/ibug"):
            read_300w(shared_data / "300w", subset)


def test_real_full_resolution_headerless_helen_and_headered_lfpw(shared_data):
    root = shared_data / "300w_fullres_samples"
    helen = read_pts(root / "helen" / "testset" / "2986008801_1.pts")
    lfpw = read_pts(root / "lfpw" / "testset" / "image_0018.pts")
    assert helen.shape == lfpw.shape == (68, 2)
    first = (root / "helen" / "testset" / "2986008801_1.pts").read_text().split()[:2]
    assert helen[0].tolist() == pytest.approx([float(v) for v in first], abs=1e-3)


def test_a_folder_of_crops_reads_like_a_300w_subset_folder(tree):
    """``read_pts_folder``: any folder in 300-W's layout (the wild protocol's), sorted by name, 0-based."""
    root, written = tree
    samples = read_pts_folder(root / "afw")
    assert [s.image_path.rsplit("/", 1)[-1] for s in samples] == ["face_0.jpg", "face_1.jpg"]
    np.testing.assert_allclose(samples[1].landmarks, written["afw"][1] - 1, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="no folder .*absent"):
        read_pts_folder(root / "absent")


def test_real_wild_crops_read_as_68_points(shared_data):
    folder = shared_data / "wflw_wild_dev"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    samples = read_pts_folder(folder)
    assert len(samples) == 100 and all(s.landmarks.shape == (68, 2) for s in samples)
