"""Landmark schemes: flip permutations, boundaries and normalisers as specified (../shared/LAB_NOTES.md)."""
from __future__ import annotations

import numpy as np
import pytest

from labfast import schemes

ALL = schemes.names()


def _mirrored(name: str) -> str:
    """``left_x`` <-> ``right_x``; names without a side are their own mirror."""
    if "left" in name:
        return name.replace("left", "right")
    if "right" in name:
        return name.replace("right", "left")
    return name


def _flip(landmarks: np.ndarray, width: float, scheme) -> np.ndarray:
    """Mirror ``(N, L, 2)`` 0-based landmarks in an image of ``width`` pixels and relabel them."""
    flipped = landmarks.copy()
    flipped[..., 0] = width - 1 - flipped[..., 0]
    relabelled = np.empty_like(flipped)
    relabelled[:, list(scheme.flip_permutation)] = flipped  # point i becomes point permutation[i]
    return relabelled


@pytest.mark.parametrize("name", ALL)
def test_flip_permutation_is_an_involution_of_all_points(name):
    scheme = schemes.get(name)
    permutation = np.array(scheme.flip_permutation)
    assert sorted(permutation.tolist()) == list(range(scheme.num_points))
    np.testing.assert_array_equal(permutation[permutation], np.arange(scheme.num_points))


@pytest.mark.parametrize("name", ALL)
def test_flip_maps_each_boundary_onto_its_mirror(name):
    scheme = schemes.get(name)
    for boundary_name, indices in scheme.boundaries.items():
        mirror = _mirrored(boundary_name)
        assert mirror in scheme.boundaries, f"{name}: {boundary_name} has no mirror {mirror}"
        flipped = {scheme.flip_permutation[i] for i in indices}
        assert flipped == set(scheme.boundaries[mirror]), f"{name}: {boundary_name} -> {mirror}"


@pytest.mark.parametrize("name", ALL)
def test_boundaries_are_in_range_and_k_is_their_count(name):
    scheme = schemes.get(name)
    assert scheme.num_boundaries == len(scheme.boundaries) == len(scheme.boundary_names)
    for boundary_name, indices in scheme.boundaries.items():
        assert len(indices) >= 2, boundary_name
        assert all(0 <= i < scheme.num_points for i in indices), boundary_name


@pytest.mark.parametrize(
    ("name", "num_points", "num_boundaries", "normalizer", "points"),
    [
        ("300w", 68, 13, "inter_ocular", (36, 45)),
        ("wflw", 98, 13, "inter_ocular", (60, 72)),
        ("cofw", 29, 11, "inter_pupil", (16, 17)),
        ("aflw", 19, 6, "box", ()),
    ],
)
def test_sizes_and_normalisers_as_specified(name, num_points, num_boundaries, normalizer, points):
    scheme = schemes.get(name)
    assert (scheme.num_points, scheme.num_boundaries) == (num_points, num_boundaries)
    assert (scheme.normalizer, scheme.normalizer_points) == (normalizer, points)
    if points:  # the two normaliser points are each other's mirror image
        assert scheme.flip_permutation[points[0]] == points[1]


def test_300w_boundaries_are_the_lab_split():
    expected = {
        "contour": tuple(range(0, 17)),
        "left_eyebrow": tuple(range(17, 22)),
        "right_eyebrow": tuple(range(22, 27)),
        "nose_bridge": (27, 28, 29, 30),
        "nose_boundary": (31, 32, 33, 34, 35),
        "left_upper_eyelid": (36, 37, 38, 39),
        "left_lower_eyelid": (36, 41, 40, 39),
        "right_upper_eyelid": (42, 43, 44, 45),
        "right_lower_eyelid": (42, 47, 46, 45),
        "upper_lip_upper_side": tuple(range(48, 55)),
        "upper_lip_lower_side": (60, 61, 62, 63, 64),
        "lower_lip_upper_side": (60, 67, 66, 65, 64),
        "lower_lip_lower_side": (48, 59, 58, 57, 56, 55, 54),
    }
    assert dict(schemes.get("300w").boundaries) == expected


def test_wflw_boundaries_are_the_lab_split_with_closed_eyebrows():
    expected = {
        "contour": tuple(range(0, 33)),
        "left_eyebrow": tuple(range(33, 42)) + (33,),
        "right_eyebrow": tuple(range(42, 51)) + (42,),
        "nose_bridge": (51, 52, 53, 54),
        "nose_boundary": (55, 56, 57, 58, 59),
        "left_upper_eyelid": (60, 61, 62, 63, 64),
        "left_lower_eyelid": (60, 67, 66, 65, 64),
        "right_upper_eyelid": (68, 69, 70, 71, 72),
        "right_lower_eyelid": (68, 75, 74, 73, 72),
        "upper_lip_upper_side": tuple(range(76, 83)),
        "upper_lip_lower_side": (88, 89, 90, 91, 92),
        "lower_lip_upper_side": (88, 95, 94, 93, 92),
        "lower_lip_lower_side": (76, 87, 86, 85, 84, 83, 82),
    }
    assert dict(schemes.get("wflw").boundaries) == expected


def test_get_accepts_spellings_and_schemes_and_rejects_unknown_names():
    assert schemes.get("300-W") is schemes.get("300w")
    assert schemes.get("WFLW") is schemes.get("wflw")
    assert schemes.get(schemes.get("cofw")) is schemes.get("cofw")
    with pytest.raises(ValueError, match="unknown landmark scheme 'helen'"):
        schemes.get("helen")


# --- on real annotations: "left" is image-left, and a flipped face is a face ------------------------

def _read_300w(shared_data, count: int) -> np.ndarray:
    paths = sorted((shared_data / "300w" / "lfpw" / "testset").glob("*.pts"))[:count]
    faces = [np.array(p.read_text().split("{")[1].split("}")[0].split(), float).reshape(68, 2) for p in paths]
    return np.stack(faces) - 1.0  # .pts is 1-based


def _read_wflw(shared_data, count: int) -> np.ndarray:
    path = (shared_data / "wflw_test_subset_annotations" / "data" / "WFLW" / "WFLW_annotations"
            / "list_98pt_test" / "list_98pt_test_expression.txt")
    rows = [line.split()[:196] for line in path.read_text().splitlines()[:count]]
    return np.array(rows, float).reshape(-1, 98, 2)


def _assert_left_parts_are_image_left(landmarks: np.ndarray, scheme) -> None:
    x = landmarks[..., 0]
    first, second = scheme.normalizer_points
    assert (x[:, first] < x[:, second]).all()
    for name, indices in scheme.boundaries.items():
        if name.startswith("left"):
            mirror = list(scheme.boundaries[_mirrored(name)])
            assert (x[:, list(indices)].mean(axis=1) < x[:, mirror].mean(axis=1)).all(), name


@pytest.mark.parametrize("name", ["300w", "wflw"])
def test_real_faces_have_left_parts_on_the_image_left_before_and_after_a_flip(shared_data, name):
    scheme = schemes.get(name)
    landmarks = _read_300w(shared_data, 40) if name == "300w" else _read_wflw(shared_data, 40)
    _assert_left_parts_are_image_left(landmarks, scheme)
    flipped = _flip(landmarks, width=4000.0, scheme=scheme)
    _assert_left_parts_are_image_left(flipped, scheme)
    # Flipping twice gives the faces back.
    np.testing.assert_allclose(_flip(flipped, 4000.0, scheme), landmarks, atol=1e-9)


def test_real_wflw_eyebrow_outlines_close_on_their_outer_end(shared_data):
    landmarks = _read_wflw(shared_data, 40)

    def distance(i: int, j: int) -> np.ndarray:
        return np.linalg.norm(landmarks[:, i] - landmarks[:, j], axis=1)

    scheme = schemes.get("wflw")
    for outline in (scheme.boundaries["left_eyebrow"], scheme.boundaries["right_eyebrow"]):
        start, inner_upper, inner_lower, last = outline[0], outline[4], outline[5], outline[-2]
        # The upper edge runs from the outer end to the inner end; the lower edge starts at the
        # inner end and comes back, so its last point is nearer the start than its first point.
        assert (distance(last, start) < distance(inner_lower, start)).all()
        assert (distance(inner_upper, inner_lower) < distance(inner_upper, start)).all()
