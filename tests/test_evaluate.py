"""labfast eval: protocol rows on real faces, errors measured in the original image, flip averaging."""
import json

import numpy as np
import pytest
import torch

from labfast import checkpoint, cli, schemes
from labfast.demo import BUNDLED_DATA
from labfast.evaluate import evaluate, predict_faces
from labfast.data import read_300w
from labfast.model import LABOutput, config_by_name


class CropOracle(torch.nn.Module):
    """Stands in for LAB: returns fixed crop-space landmarks, whatever the image."""

    def __init__(self, crop_landmarks: torch.Tensor):
        super().__init__()
        self.scheme = schemes.get("300w")
        self.config = config_by_name("tiny")
        self.crop_landmarks = crop_landmarks
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return LABOutput(landmarks=self.crop_landmarks[: len(images)].clone(), heatmaps=[])


def test_predictions_are_mapped_back_to_the_original_image():
    """A model that returns each crop's true landmarks gives the annotation back exactly."""
    faces = read_300w(BUNDLED_DATA, "common")[:4]
    from labfast.data import FaceDataset
    crops = torch.stack([FaceDataset(faces, "300w", input_size=256)[i]["landmarks"] for i in range(4)])
    predicted = predict_faces(CropOracle(crops), faces, torch.device("cpu"), batch_size=4, progress=False)
    np.testing.assert_allclose(predicted, np.stack([face.landmarks for face in faces]), atol=1e-3)


def test_flip_averaging_undoes_the_mirror_and_the_relabelling():
    """If the mirrored crop's prediction is the mirror image of the plain one, averaging changes nothing."""
    faces = read_300w(BUNDLED_DATA, "common")[:2]
    plain = torch.rand(2, 68, 2) * 200 + 20
    permutation = torch.tensor(schemes.get("300w").flip_permutation)
    mirrored = plain.clone()
    mirrored[..., 0] = 255 - mirrored[..., 0]
    relabelled = torch.empty_like(mirrored)
    relabelled[:, permutation] = mirrored

    class MirrorAware(CropOracle):
        def forward(self, images):
            self.calls += 1
            return LABOutput(landmarks=(plain if self.calls % 2 else relabelled).clone(), heatmaps=[])

    with_flip = predict_faces(MirrorAware(plain), faces, torch.device("cpu"), batch_size=2, flip=True, progress=False)
    without = predict_faces(CropOracle(plain), faces, torch.device("cpu"), batch_size=2, progress=False)
    np.testing.assert_allclose(with_flip, without, atol=1e-4)


def test_missing_subsets_are_reported_not_skipped(tiny_checkpoint):
    model, _ = checkpoint.load_model(tiny_checkpoint)
    results = evaluate(model, "300w", BUNDLED_DATA, ("common", "challenging"), torch.device("cpu"))
    assert results["common"]["faces"] == 40 and len(results["common"]["nmes"]) == 40
    assert "ibug" in results["challenging"]["missing"]


def test_eval_command_prints_rows_and_writes_json_and_ced(tiny_checkpoint, tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "300w",
                     "--data-root", str(BUNDLED_DATA), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "common" in printed and "not evaluated" in printed
    report = json.loads((tmp_path / "metrics.json").read_text())
    row = report["results"]["common"]
    assert row["nme"] == pytest.approx(100 * np.mean(row["nmes"]))
    assert (tmp_path / "ced.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_refuses_a_checkpoint_of_another_scheme(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="300w scheme, not wflw"):
        cli.main(["eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "wflw", "--data-root", str(tmp_path)])
