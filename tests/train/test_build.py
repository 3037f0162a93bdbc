"""The model a run trains: a transferred frozen estimator for cross-data-set training (LAB Sec. 4.3)."""
import pytest
import torch

from labfast.train import presets, train
from labfast.train.build import build_model, set_training_mode
from tiny_runs import final_weights, tiny_config


def test_cross_data_set_regressor_trains_on_a_frozen_estimator_of_other_boundaries(tmp_path):
    """LAB Sec. 4.3: 300-W boundaries (estimator from a 300-W run) under the 29 COFW landmarks."""
    train(tiny_config("max_steps=1"), tmp_path / "w300")
    config = presets.override(presets.get("cofw_300w_boundaries"), [
        "model=tiny", f"estimator_checkpoint={tmp_path / 'w300' / 'last.pt'}"])
    model = build_model(config)
    assert model.boundary_scheme.name == "300w" and model.scheme.num_points == 29
    source = final_weights(tmp_path / "w300")
    for name, value in model.estimator.state_dict().items():
        torch.testing.assert_close(value, source["estimator." + name])
    assert not any(p.requires_grad for p in model.estimator.parameters())
    set_training_mode(model)
    assert model.regressor.training and not model.estimator.training
    without_source = presets.override(presets.get("cofw_300w_boundaries"), ["model=tiny"])
    with pytest.raises(ValueError, match="estimator_checkpoint"):
        build_model(without_source)
