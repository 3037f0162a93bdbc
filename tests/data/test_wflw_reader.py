"""WFLW readers: the official rect+attribute lists, the per-subset test lists, errors, real files."""
import logging

import numpy as np
import pytest

from labfast.data import WFLW_ATTRIBUTES, AnnotationError, read_wflw, read_wflw_test_subset

FLAGS = [  # pose expression illumination makeup occlusion blur
    (1, 0, 0, 0, 0, 1),
    (0, 1, 1, 0, 0, 0),
    (0, 0, 0, 0, 0, 0),
    (1, 1, 0, 1, 1, 0),
]


def _line(points, rect, flags, name):
    return " ".join([*(f"{v:.6f}" for v in points.reshape(-1)), *(f"{v:.0f}" for v in rect),
                     *(str(f) for f in flags), name])


@pytest.fixture
def wflw(tmp_path):
    """Official layout: annotation list for the test split, one image file per face."""
    rng = np.random.default_rng(3)
    faces = []
    for index, flags in enumerate(FLAGS):
        points = rng.uniform(10, 200, size=(98, 2))
        name = f"0--Parade/face_{index}.jpg"
        faces.append((points, (5, 6, 210, 220), flags, name))
        image = tmp_path / "WFLW_images" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"")  # the reader checks existence only
    folder = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    folder.mkdir(parents=True)
    (folder / "list_98pt_rect_attr_test.txt").write_text("\n".join(_line(*face) for face in faces) + "\n")
    return tmp_path, faces


def _annotation_file(root):
    return root / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_test.txt"


def test_reads_coordinates_as_written_box_attributes_and_path(wflw):
    root, faces = wflw
    samples = read_wflw(root, "test")
    assert len(samples) == len(faces)
    for sample, (points, rect, flags, name) in zip(samples, faces):
        # WFLW is already 0-based: no shift (6-decimal text -> float32)
        np.testing.assert_allclose(sample.landmarks, points, atol=1e-4)
        np.testing.assert_array_equal(sample.box, rect)
        assert sample.attributes == {n: bool(f) for n, f in zip(WFLW_ATTRIBUTES, flags)}
        assert sample.image_path == str(root / "WFLW_images" / name)


@pytest.mark.parametrize("subset", WFLW_ATTRIBUTES)
def test_subset_selects_faces_whose_flag_is_set(wflw, subset):
    root, _ = wflw
    column = WFLW_ATTRIBUTES.index(subset)
    expected = [f"face_{i}.jpg" for i, flags in enumerate(FLAGS) if flags[column]]
    assert [s.image_path.rsplit("/", 1)[1] for s in read_wflw(root, "test", subset)] == expected


def test_unknown_subset_and_split_are_errors(wflw):
    root, _ = wflw
    with pytest.raises(ValueError, match="unknown WFLW subset 'largepose'"):
        read_wflw(root, "test", "largepose")
    with pytest.raises(ValueError, match="unknown WFLW split 'val'"):
        read_wflw(root, "val")
    with pytest.raises(ValueError, match="unknown WFLW subset 'smile'"):
        read_wflw_test_subset(root, "smile")


def _corrupt(root, line_index, transform):
    path = _annotation_file(root)
    lines = path.read_text().splitlines()
    lines[line_index] = transform(lines[line_index].split())
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda t: " ".join(t[:-2] + t[-1:]), "expected 207 values, got 206"),
        (lambda t: " ".join(["abc"] + t[1:]), "coordinate value 0 is not a number: 'abc'"),
        (lambda t: " ".join(t[:5] + ["nan"] + t[6:]), "coordinate value 5 is 'nan'"),
        (lambda t: " ".join(t[:196] + ["x"] + t[197:]), "rectangle value 0 is not a number"),
        (lambda t: " ".join(t[:200] + ["2"] + t[201:]), "attribute 'pose' must be 0 or 1, got '2'"),
        (lambda t: " ".join(t[:196] + ["300"] + t[197:]), "empty rectangle"),
        (lambda t: " ".join(t[:-1] + ["0--Parade/absent.jpg"]), "absent.jpg does not exist"),
        # finite in float64, infinite in the float32 landmarks (found by tests/fuzz)
        (lambda t: " ".join(["3.5e38"] + t[1:]), r"coordinate value 0 is '3.5e38', beyond ±1e\+08"),
    ],
)
def test_bad_line_raises_naming_file_and_line(wflw, transform, message):
    root, _ = wflw
    path = _corrupt(root, 2, transform)
    with pytest.raises(AnnotationError, match=message) as error:
        read_wflw(root, "test")
    assert f"{path}:3" in str(error.value)


def test_non_strict_skips_bad_lines_and_logs_the_count(wflw, caplog):
    root, _ = wflw
    _corrupt(root, 0, lambda t: " ".join(t[:-3]))
    _corrupt(root, 3, lambda t: " ".join(["nan"] + t[1:]))
    with caplog.at_level(logging.WARNING, logger="labfast.data"):
        samples = read_wflw(root, "test", strict=False)
    assert [s.image_path.rsplit("/", 1)[1] for s in samples] == ["face_1.jpg", "face_2.jpg"]
    assert "skipped 2 bad entries" in caplog.text


def test_a_line_that_is_not_utf8_is_one_bad_entry_naming_its_line(wflw):
    # found by tests/fuzz: a UnicodeDecodeError escaped the reader
    root, _ = wflw
    path = _annotation_file(root)
    lines = path.read_bytes().splitlines()
    lines[1] = lines[1][:-4] + b"\xff.jpg"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(AnnotationError, match=f"{path}:2: not UTF-8 text"):
        read_wflw(root, "test")
    assert len(read_wflw(root, "test", strict=False)) == len(FLAGS) - 1


def test_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="list_98pt_rect_attr_train.txt"):
        read_wflw(tmp_path, "train")


def test_subset_list_reader_uses_largepose_for_pose_and_box_from_extent(tmp_path):
    rng = np.random.default_rng(5)
    points = rng.uniform(0, 50, size=(2, 98, 2))
    folder = tmp_path / "WFLW_annotations" / "list_98pt_test"
    folder.mkdir(parents=True)
    (folder / "list_98pt_test_largepose.txt").write_text(
        "".join(" ".join([*(f"{v:.6f}" for v in p.reshape(-1)), f"a/{i}.jpg"]) + "\n" for i, p in enumerate(points)))
    samples = read_wflw_test_subset(tmp_path, "pose", check_images=False)
    assert len(samples) == 2
    np.testing.assert_allclose(samples[1].landmarks, points[1], atol=1e-5)
    np.testing.assert_allclose(samples[1].box, [*points[1].min(0), *points[1].max(0)], atol=1e-5)
    assert samples[0].attributes == {"pose": True}
    with pytest.raises(AnnotationError, match=r"list_98pt_test_largepose.txt:1: image .*a/0.jpg does not exist"):
        read_wflw_test_subset(tmp_path, "pose")


# --- the real official per-subset lists in ../shared/data (no images there) ---

@pytest.mark.parametrize(
    "subset, count",
    [("pose", 326), ("expression", 314), ("illumination", 698), ("makeup", 206), ("occlusion", 736), ("blur", 773)],
)
def test_real_wflw_subset_counts(shared_data, subset, count):
    root = shared_data / "wflw_test_subset_annotations" / "data" / "WFLW"
    samples = read_wflw_test_subset(root, subset, check_images=False)
    assert len(samples) == count
    assert all(s.landmarks.shape == (98, 2) and np.isfinite(s.landmarks).all() for s in samples)


def test_real_wflw_subset_first_face_matches_the_file_text(shared_data):
    root = shared_data / "wflw_test_subset_annotations" / "data" / "WFLW"
    path = root / "WFLW_annotations" / "list_98pt_test" / "list_98pt_test_largepose.txt"
    tokens = path.read_text().splitlines()[0].split()
    sample = read_wflw_test_subset(root, "pose", check_images=False)[0]
    np.testing.assert_allclose(sample.landmarks.reshape(-1), [float(t) for t in tokens[:196]], atol=1e-4)
    assert sample.image_path == str(root / "WFLW_images" / tokens[196])
