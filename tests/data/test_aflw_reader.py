"""AFLW-19 reader on HRNet-layout CSV files written here."""
import logging

import numpy as np
import pytest

from labfast.data import AnnotationError, read_aflw

HEADER = "image_name,scale,box_size,center_w,center_h," + ",".join(
    f"original_{i}_x,original_{i}_y" for i in range(1, 20))


@pytest.fixture
def aflw(tmp_path):
    rng = np.random.default_rng(11)
    rows = []
    for index in range(3):
        points = rng.uniform(20, 180, size=(19, 2)).round(3)
        name = f"0/image{index:05d}.jpg"
        rows.append((name, 0.8, 150.0 + index, 100.5, 110.25, points))
        (tmp_path / "images" / "0").mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / name).write_bytes(b"")
    text = "\n".join([HEADER] + [
        ",".join([name, str(scale), str(size), str(cx), str(cy), *(f"{v:.3f}" for v in points.reshape(-1))])
        for name, scale, size, cx, cy, points in rows])
    for file in ("face_landmarks_aflw_train.csv", "face_landmarks_aflw_test.csv"):
        (tmp_path / file).write_text(text + "\n")
    return tmp_path, rows


def test_reads_interleaved_points_and_square_box_of_box_size(aflw):
    root, rows = aflw
    samples = read_aflw(root, "full")
    assert len(samples) == 3
    for sample, (name, _, size, cx, cy, points) in zip(samples, rows):
        np.testing.assert_allclose(sample.landmarks, points, atol=1e-4)  # x1, y1, x2, y2, ... pairs
        np.testing.assert_allclose(sample.box, [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
        box_w, box_h = sample.box[2] - sample.box[0], sample.box[3] - sample.box[1]
        assert np.sqrt(box_w * box_h) == pytest.approx(size)  # the protocol's NME normaliser
        assert sample.image_path == str(root / "images" / name)


def test_unknown_split_and_missing_file(aflw):
    root, _ = aflw
    with pytest.raises(ValueError, match="unknown AFLW split 'test'"):
        read_aflw(root, "test")
    with pytest.raises(FileNotFoundError, match="face_landmarks_aflw_test_frontal.csv"):
        read_aflw(root, "frontal")


def _corrupt(root, line_index, transform):
    path = root / "face_landmarks_aflw_train.csv"
    lines = path.read_text().splitlines()
    lines[line_index] = ",".join(transform(lines[line_index].split(",")))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda f: f[:-1], "expected 43 values, got 42"),
        (lambda f: f[:7] + ["NaN"] + f[8:], "coordinate value 2 is 'NaN'"),
        (lambda f: f[:2] + ["big"] + f[3:], "box value 1 is not a number: 'big'"),
        (lambda f: f[:2] + ["-3"] + f[3:], "box_size must be positive"),
        (lambda f: ["0/gone.jpg"] + f[1:], "gone.jpg does not exist"),
        # finite in float64, infinite in the float32 landmarks (found by tests/fuzz)
        (lambda f: f[:5] + ["-3.5e38"] + f[6:], r"coordinate value 0 is '-3.5e38', beyond ±1e\+08"),
    ],
)
def test_bad_line_raises_naming_file_and_line(aflw, transform, message):
    root, _ = aflw
    path = _corrupt(root, 2, transform)  # the 2nd face, line 3 of the file
    with pytest.raises(AnnotationError, match=message) as error:
        read_aflw(root, "train")
    assert f"{path}:3" in str(error.value)


def test_non_strict_skips_and_logs(aflw, caplog):
    root, _ = aflw
    _corrupt(root, 1, lambda f: f[:-2])
    with caplog.at_level(logging.WARNING, logger="labfast.data"):
        assert len(read_aflw(root, "train", strict=False)) == 2
    assert "skipped 1 bad entries" in caplog.text


def test_a_line_that_is_not_utf8_is_one_bad_entry_naming_its_line(aflw):
    # found by tests/fuzz: a UnicodeDecodeError escaped the reader
    root, _ = aflw
    path = root / "face_landmarks_aflw_train.csv"
    lines = path.read_bytes().splitlines()
    lines[2] = b"0/\xe9" + lines[2][1:]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(AnnotationError, match=f"{path}:3: not UTF-8 text"):
        read_aflw(root, "train")
    assert len(read_aflw(root, "train", strict=False)) == 2


def test_missing_header_is_an_error(aflw):
    root, _ = aflw
    path = root / "face_landmarks_aflw_train.csv"
    path.write_text("\n".join(path.read_text().splitlines()[1:]))
    with pytest.raises(AnnotationError, match=f"{path}:1: expected the header"):
        read_aflw(root, "train")
