import pytest

from labfast import schemes
from labfast.model import PRESETS, LABConfig, config_by_name
from labfast.model.estimator import boundary_neighbours


def test_presets_exist_and_carry_their_names():
    for name in ("paper", "small", "tiny"):
        assert config_by_name(name).name == name
    assert set(PRESETS) == {"paper", "small", "tiny"}


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="paper"):
        config_by_name("huge")


def test_round_trip_through_a_plain_dict():
    config = config_by_name("small", fusion_stages=(2, 4), message_passing=False)
    data = config.to_dict()
    assert data["fusion_stages"] == [2, 4]
    assert LABConfig.from_dict(data) == config


def test_from_dict_refuses_unknown_fields():
    with pytest.raises(ValueError, match="stackz"):
        LABConfig.from_dict({"stackz": 3})


@pytest.mark.parametrize("overrides, message", [
    ({"stacks": 0}, "stacks"),
    ({"input_size": 200}, "input_size=200"),
    ({"fusion_stages": (0, 5)}, "fusion_stages"),
    ({"message_kernel": 4}, "message_kernel"),
    ({"normalization": "none"}, "normalization"),
    ({"fake_fraction_threshold": 1.5}, "δ"),
])
def test_bad_values_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_by_name("tiny", **overrides)


@pytest.mark.parametrize("overrides, message", [
    # the strings a blind "JSON, else string" parser produced: 'False' is truthy
    ({"message_passing": "False"}, "LABConfig.message_passing must be bool, got 'False'"),
    ({"input_fusion": "no"}, "LABConfig.input_fusion must be bool, got 'no'"),
    ({"discriminator": 0}, "LABConfig.discriminator must be bool, got 0"),
    ({"fusion_stages": "1,2"}, r"LABConfig.fusion_stages must be tuple\[int, \.\.\.\], got '1,2'"),
    ({"fusion_stages": (1.0, 2.0)}, r"LABConfig.fusion_stages\[0\] must be int, got 1.0"),
    ({"stacks": 2.0}, "LABConfig.stacks must be int, got 2.0"),
    ({"stacks": True}, "LABConfig.stacks must be int, got True"),
    ({"heatmap_weight": "1"}, "LABConfig.heatmap_weight must be float, got '1'"),
    ({"normalization": None}, "LABConfig.normalization must be str, got None"),
])
def test_values_of_the_wrong_type_are_refused_by_name(overrides, message):
    with pytest.raises(TypeError, match=message):
        config_by_name("tiny", **overrides)


def test_json_spellings_of_tuples_and_floats_are_normalised():
    config = LABConfig.from_dict({**config_by_name("tiny").to_dict(), "fusion_stages": [4, 2], "heatmap_weight": 2})
    assert config.fusion_stages == (2, 4)
    assert config.heatmap_weight == 2.0 and isinstance(config.heatmap_weight, float)


def test_neighbour_graph_is_symmetric_and_covers_every_boundary():
    for name in schemes.names():
        scheme = schemes.get(name)
        edges = set(boundary_neighbours(scheme))
        assert all((dst, src) in edges for src, dst in edges), name
        assert all(src != dst for src, dst in edges), name
        touched = {src for src, _ in edges}
        assert touched == set(range(scheme.num_boundaries)), f"{name}: isolated boundaries"


def test_neighbour_graph_links_shared_landmarks_and_face_structure():
    scheme = schemes.get("300w")
    index = {name: k for k, name in enumerate(scheme.boundary_names)}
    edges = set(boundary_neighbours(scheme))
    # eyelids share the eye corners 36 and 39
    assert (index["left_upper_eyelid"], index["left_lower_eyelid"]) in edges
    # structural neighbours without a shared point
    assert (index["contour"], index["left_eyebrow"]) in edges
    assert (index["nose_bridge"], index["nose_boundary"]) in edges
    # far-apart boundaries are not linked
    assert (index["contour"], index["nose_bridge"]) not in edges


@pytest.mark.parametrize("key", ["hourglass_depth", "transform_depth", "stacks"])
def test_absurd_structural_sizes_are_refused_before_any_work(key):
    """A damaged checkpoint's config (depth 10**12: 2**depth alone would exhaust memory) fails at once."""
    with pytest.raises(ValueError, match=f"LABConfig.{key} must be an integer from 1 to"):
        LABConfig(**{key: 10**12})
