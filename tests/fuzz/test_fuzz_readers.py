"""Fuzzed annotation files: every reader raises only ``AnnotationError`` (docs/errors.md), or, with
``strict=False``, skips the bad entries and returns the good ones.

Each reader gets raw bytes and mutations of a valid file (tokens replaced by arbitrary text,
deleted or repeated; lines dropped or duplicated), which reach far deeper into the parser than
random bytes alone.
"""
import h5py
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ
from labfast.data import AnnotationError, read_aflw, read_cofw, read_pts, read_wflw
from labfast.data.aflw import AFLW_SPLITS
from labfast.data.wflw import wflw_annotation_path

TOKEN = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e999", "", "0", "1", "2", "-1", "{", "}", ":", "n_points:", "version:", "\x00", "１"]),
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@st.composite
def mutated(draw, lines: list[list[str]], separator: str) -> bytes:
    """``lines`` of tokens with a few tokens replaced, deleted or inserted and lines dropped or
    repeated, joined by ``separator``; or plain random bytes."""
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(st.binary(max_size=600))
    lines = [list(line) for line in lines]
    for _ in range(draw(st.integers(0, 4))):
        row = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["replace", "delete", "insert", "drop line", "repeat line"]))
        if action in ("replace", "delete", "insert") and lines[row]:
            column = draw(st.integers(0, len(lines[row]) - 1))
            if action == "replace":
                lines[row][column] = draw(TOKEN)
            elif action == "delete":
                del lines[row][column]
            else:
                lines[row].insert(column, draw(TOKEN))
        elif action == "drop line" and len(lines) > 1:
            del lines[row]
        elif action == "repeat line":
            lines.insert(row, list(lines[row]))
    text = "\n".join(separator.join(line) for line in lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


def read_or_annotation_error(read, *arguments, **keywords):
    """Call ``read``; return its result, or ``None`` for the one documented error type."""
    try:
        return read(*arguments, **keywords)
    except AnnotationError:
        return None


PTS = [["version:", "1"], ["n_points:", "3"], ["{"], ["1.5", "2.5"], ["3", "4"], ["5.25", "6"], ["}"]]


@FUZZ
@given(content=mutated(PTS, " "))
def test_pts_files(tmp_path, content):
    path = tmp_path / "face.pts"
    path.write_bytes(content)
    points = read_or_annotation_error(read_pts, path)
    if points is not None:
        assert points.ndim == 2 and points.shape[1] == 2 and len(points) > 0 and np.isfinite(points).all()


def wflw_line(name: str) -> list[str]:
    coordinates = [f"{10 + index % 50:.2f}" for index in range(196)]
    return [*coordinates, "5", "6", "90", "95", "0", "1", "0", "0", "1", "0", name]


@FUZZ
@given(content=mutated([wflw_line("a/b.jpg"), wflw_line("a/c.jpg")], " "), strict=st.booleans())
def test_wflw_lists(tmp_path, content, strict):
    for name in ("b.jpg", "c.jpg"):
        (tmp_path / "WFLW_images" / "a").mkdir(parents=True, exist_ok=True)
        (tmp_path / "WFLW_images" / "a" / name).touch()
    path = wflw_annotation_path(tmp_path, "test")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    samples = read_or_annotation_error(read_wflw, tmp_path, split="test", strict=strict)
    if samples is not None:
        for sample in samples:
            assert sample.landmarks.shape == (98, 2) and np.isfinite(sample.landmarks).all()
            assert sample.box[2] > sample.box[0] and sample.box[3] > sample.box[1]


AFLW_HEADER = ["image_name", "scale", "box_size", "center_w", "center_h", *(f"p{index}" for index in range(38))]


def aflw_line(name: str) -> list[str]:
    return [name, "0.8", "150", "100.5", "110.25", *(f"{20 + index:.3f}" for index in range(38))]


@FUZZ
@given(content=mutated([AFLW_HEADER, aflw_line("0/a.jpg"), aflw_line("0/b.jpg")], ","), strict=st.booleans())
def test_aflw_files(tmp_path, content, strict):
    (tmp_path / "images" / "0").mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "images" / "0" / name).touch()
    (tmp_path / AFLW_SPLITS["full"]).write_bytes(content)
    samples = read_or_annotation_error(read_aflw, tmp_path, "full", strict=strict)
    if samples is not None:
        for sample in samples:
            assert sample.landmarks.shape == (19, 2) and np.isfinite(sample.landmarks).all()


ARRAYS = st.one_of(
    st.builds(lambda shape, fill: np.full(shape, fill), st.sampled_from([(87, 2), (2, 87), (4, 2), (2, 4), (3,), (0, 87), (87, 2, 1)]),
              st.sampled_from([0.0, 1.0, 5.0, -3.0, np.nan, np.inf, 2.0])),
    st.sampled_from([np.zeros((2, 3), np.uint8), np.array([b"text"]), np.zeros((3, 4, 5), np.uint8), np.zeros((17, 12), np.uint8)]),
)


@st.composite
def cofw_layouts(draw) -> dict:
    """Which keys exist and what each holds: the real layout's pieces, shuffled and broken."""
    return {
        "IsT": draw(st.sampled_from(["references", "array", "group", "missing"])),
        "phisT": draw(st.one_of(st.just("valid"), ARRAYS, st.just("group"), st.just("missing"))),
        "bboxesT": draw(st.one_of(st.just("valid"), ARRAYS, st.just("group"), st.just("missing"))),
        "image": draw(st.sampled_from(["colour", "grey", "float", "1-d", "text"])),
        "faces": draw(st.integers(0, 3)),
    }


def write_cofw(path, layout: dict) -> None:
    faces = layout["faces"]
    images = {"colour": np.zeros((3, 11, 9), np.uint8), "grey": np.zeros((11, 9), np.uint8), "float": np.zeros((3, 11, 9)),
              "1-d": np.zeros(5, np.uint8), "text": np.array([b"abc"])}
    phis = np.zeros((87, faces))
    phis[:58] = 4.0
    valid = {"phisT": phis, "bboxesT": np.tile([[2.0], [3.0], [5.0], [5.0]], (1, faces))}
    with h5py.File(path, "w") as handle:
        group = handle.create_group("#refs#")
        for key in ("IsT", "phisT", "bboxesT"):
            value = layout[key]
            if isinstance(value, str) and value == "missing":
                continue
            if isinstance(value, str) and value == "group":
                handle.create_group(key)
            elif key == "IsT" and value == "references":
                references = [group.create_dataset(f"image{index}", data=images[layout["image"]]).ref for index in range(faces)]
                cell = handle.create_dataset(key, (1, faces), dtype=h5py.ref_dtype)
                if faces:
                    cell[0, :] = references
            elif key == "IsT":
                handle.create_dataset(key, data=np.zeros((1, faces)))
            else:
                handle.create_dataset(key, data=valid[key] if isinstance(value, str) else value)


@FUZZ
@given(layout=cofw_layouts(), raw=st.one_of(st.none(), st.binary(max_size=300)), strict=st.booleans())
def test_cofw_mat_files(tmp_path, layout, raw, strict):
    path = tmp_path / "COFW_test_color.mat"
    if raw is None:
        write_cofw(path, layout)
    else:
        path.write_bytes(raw)
    samples = read_or_annotation_error(read_cofw, path, strict=strict)
    if samples is not None:
        for sample in samples:
            assert sample.image.ndim == 3 and sample.image.shape[2] == 3 and sample.landmarks.shape == (29, 2)
