"""Checkpoint loading: whatever a file holds, ``CheckpointError`` naming it, and memory bounded by its weights."""
import resource

import pytest

from labfast import checkpoint


@pytest.fixture
def payload(tiny_checkpoint):
    return checkpoint.load(tiny_checkpoint)


def test_a_config_naming_a_huge_model_is_refused_before_building_it(payload, tmp_path):
    # found by tests/fuzz: regressor_width 5000 built gigabytes of weights (the process was killed)
    # before the state dict mismatch was noticed; now the shapes are compared on the meta device
    payload["config"] = {**payload["config"], "regressor_width": 4000, "hourglass_channels": 3000}
    path = tmp_path / "huge.pt"
    checkpoint.save(path, payload)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoint {path} does not match .* of another shape"):
        checkpoint.load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < 200  # MB; the real model needs several GB


@pytest.mark.parametrize("key, value", [("scheme", None), ("boundary_scheme", 7), ("config", "tiny"), ("model", [1, 2])])
def test_a_payload_of_the_wrong_kind_is_a_checkpoint_error(payload, tmp_path, key, value):
    # found by tests/fuzz: AttributeError escaped for a scheme that is not a string
    payload[key] = value
    path = tmp_path / "odd.pt"
    checkpoint.save(path, payload)
    with pytest.raises(checkpoint.CheckpointError, match=str(path)):
        checkpoint.load_model(path)
