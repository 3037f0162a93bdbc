"""``read_faces``: the one dispatch from a data set's name and subset to its reader, for training and
the test protocols alike."""
from pathlib import Path

import pytest

from labfast.commands.demo import BUNDLED_DATA
from labfast.data import read_300w, read_faces


@pytest.fixture
def calls(monkeypatch):
    """Each reader replaced by a recorder of its arguments."""
    from labfast.data import readers

    recorded = []
    for name in ("read_300w", "read_wflw", "read_cofw", "read_aflw"):
        monkeypatch.setattr(readers, name, lambda *args, name=name, **kwargs: recorded.append((name, args, kwargs)))
    return recorded


@pytest.mark.parametrize("dataset, subset, expected", [
    ("300w", "common", ("read_300w", (Path("root"),), {"subset": "common", "strict": False})),
    ("wflw", "train", ("read_wflw", (Path("root"),), {"split": "train", "strict": False})),
    ("wflw", "test", ("read_wflw", (Path("root"),), {"split": "test", "strict": False})),
    ("wflw", "full", ("read_wflw", (Path("root"),), {"split": "test", "subset": None, "strict": False})),
    ("wflw", "pose", ("read_wflw", (Path("root"),), {"split": "test", "subset": "pose", "strict": False})),
    ("aflw", "frontal", ("read_aflw", (Path("root"),), {"split": "frontal", "strict": False})),
])
def test_each_data_set_and_subset_goes_to_its_reader(calls, dataset, subset, expected):
    read_faces(dataset, "root", subset, strict=False)
    assert calls == [expected]


@pytest.mark.parametrize("subset", ["train", "test"])
def test_cofw_reads_the_mat_file_of_its_subset_or_the_file_given(calls, tmp_path, subset):
    read_faces("cofw", tmp_path, subset)
    given = tmp_path / "mine.mat"
    given.write_bytes(b"")
    read_faces("cofw", given, subset)
    assert [args[0] for _, args, _ in calls] == [tmp_path / f"COFW_{subset}_color.mat", given]


def test_unknown_names_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'lfw'; known: 300w, wflw, cofw, aflw"):
        read_faces("lfw", "root", "test")
    with pytest.raises(ValueError, match="unknown COFW subset 'full'; known: train, test"):
        read_faces("cofw", "root", "full")


def test_it_returns_the_readers_faces():
    got, expected = read_faces("300w", BUNDLED_DATA, "common"), read_300w(BUNDLED_DATA, "common")
    assert len(got) == len(expected) == 40
    assert all(a.image_path == b.image_path and (a.landmarks == b.landmarks).all() for a, b in zip(got, expected))
