"""``LABConfig.fusion_resize``: area for new models, bilinear for configs saved before the field."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from labfast import checkpoint, ops
from labfast.model import LAB, LABConfig, config_by_name

ROOT = Path(__file__).resolve().parents[2]
# the weights shipped until 2026-12-06, trained before fusion_resize existed (the same git blob they shipped as)
BILINEAR_WEIGHTS = Path(__file__).resolve().parent / "data" / "lab_300w_2026-11-25.pt"
RECORDED = Path(__file__).resolve().parent / "data" / "lab_300w_bilinear_landmarks.json"


def test_new_configs_resize_by_area():
    assert LABConfig().fusion_resize == "area"
    assert all(config_by_name(name).fusion_resize == "area" for name in ("paper", "small", "tiny"))


def test_a_config_dict_without_the_field_means_bilinear():
    data = config_by_name("tiny").to_dict()
    assert LABConfig.from_dict(data).fusion_resize == "area"  # a saved value is kept
    del data["fusion_resize"]  # as written before the field existed
    assert LABConfig.from_dict(data).fusion_resize == "bilinear"


def test_the_regressor_passes_the_configured_mode_to_the_op(monkeypatch):
    seen = []
    concat = ops.heatmap_feature_concat

    def spy(heatmaps, features, resize):
        seen.append(resize)
        return concat(heatmaps, features, resize)

    monkeypatch.setattr(ops, "heatmap_feature_concat", spy)
    for mode in ("bilinear", "area"):
        seen.clear()
        model = LAB("300w", config_by_name("tiny", input_size=64, fusion_resize=mode)).eval()
        with torch.no_grad():
            model(torch.rand(1, 3, 64, 64))
        assert seen == [mode] * 4  # one call per fused ResNet stage


def test_an_unknown_mode_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="LABConfig.fusion_resize='nearest'"):
        LAB("300w", config_by_name("tiny", fusion_resize="nearest"))


def _bundled_face(name: str) -> torch.Tensor:
    image = cv2.imread(str(ROOT / name))[:, :, ::-1]
    image = cv2.resize(np.ascontiguousarray(image), (128, 128), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255


def test_weights_saved_before_the_field_load_as_bilinear_and_predict_as_before():
    """The previous ``lab_300w.pt`` was trained with bilinear resizing and its saved config has no
    ``fusion_resize``: it must load as bilinear and give the landmarks recorded before the field
    existed. Tolerance 1e-3 crop pixels: the recording is rounded to 1e-4 and the same float32 CPU
    ops run again (reduction order may differ by a few ulp, ~1e-5 px). The area mode moves these
    landmarks by 0.024 px at most (measured: this small model leans little on feature fusion);
    asserting more than 10x the tolerance shows the tolerance tells the two modes apart."""
    recorded = json.loads(RECORDED.read_text())
    model, info = checkpoint.load_model(BILINEAR_WEIGHTS)
    assert info["config"].fusion_resize == "bilinear"
    assert {fusion.resize for fusion in model.regressor.fusions.values()} == {"bilinear"}
    image = _bundled_face(recorded["image"])
    expected = torch.tensor(recorded["landmarks"])
    with torch.no_grad():
        landmarks = model(image).landmarks[0]
    tolerance = 1e-3
    torch.testing.assert_close(landmarks, expected, rtol=0, atol=tolerance)

    area = LAB(model.scheme, model.config.replace(fusion_resize="area"), model.boundary_scheme).eval()
    area.load_state_dict(model.state_dict())
    with torch.no_grad():
        moved = (area(image).landmarks[0] - expected).abs().max().item()
    assert moved > 10 * tolerance, f"area resizing moved the landmarks by only {moved:.3g} px"
