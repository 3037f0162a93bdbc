"""The .pts reader: both header forms, values as written, and file:line errors."""
import numpy as np
import pytest

from labfast.data import AnnotationError, read_pts, write_pts


def _write(path, text):
    path.write_text(text)
    return path


def test_headered_and_headerless_files_give_the_same_points(tmp_path):
    points = np.array([[10.5, 20.25], [-3.0, 4.125], [100.0, 0.5]], dtype=np.float32)
    write_pts(tmp_path / "a.pts", points)
    write_pts(tmp_path / "b.pts", points, header=False)
    assert (tmp_path / "a.pts").read_text().startswith("version: 1\nn_points: 3\n{\n")
    assert "{" not in (tmp_path / "b.pts").read_text()
    np.testing.assert_array_equal(read_pts(tmp_path / "a.pts"), points)
    np.testing.assert_array_equal(read_pts(tmp_path / "b.pts"), points)


def test_values_are_returned_as_written_not_shifted(tmp_path):
    # the 1 -> 0 based shift belongs to the 300-W reader; read_pts must not do it twice
    path = _write(tmp_path / "p.pts", "version: 1\nn_points:  2\n{\n1.000 1.000\n 5.5  7.25 \n}\n")
    np.testing.assert_array_equal(read_pts(path), [[1.0, 1.0], [5.5, 7.25]])


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("version: 1\nn_points: 2\n{\n1 2\n3\n}\n", 5, "expected 2 values"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 abc\n}\n", 5, "not a number: 'abc'"),
        ("1 2\nnan 4\n", 2, "'nan'"),
        ("1 2\n3 inf\n", 2, "'inf'"),
        ("1 2 3\n", 1, "expected 2 values"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\nextra\n", 7, "after '}'"),
        ("1 2\n3.4028235677973366e+38 4\n", 2, "beyond"),  # infinite as float32 (found by tests/fuzz)
    ],
)
def test_bad_lines_raise_naming_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path / "bad.pts", text)
    with pytest.raises(AnnotationError, match=message) as error:
        read_pts(path)
    assert f"{path}:{line}" in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", "n_points 3 but 2"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", "no closing"),
        ("", "empty"),
    ],
)
def test_inconsistent_files_raise_naming_the_file(tmp_path, text, message):
    path = _write(tmp_path / "bad.pts", text)
    with pytest.raises(AnnotationError, match=message) as error:
        read_pts(path)
    assert str(path) in str(error.value)
