"""The shipped weights: found offline by default, and their model card's figures reproduce."""
import json
from pathlib import Path

import pytest
import torch

from labfast import FaceAligner, checkpoint
from labfast.evaluate import evaluate

WEIGHTS = Path(__file__).resolve().parents[1] / "labfast" / "weights"
EVALUATION = WEIGHTS / "lab_300w.eval.json"  # what `labfast eval` wrote for the model card


def test_default_weights_load_offline_through_the_aligner():
    aligner = FaceAligner(device="cpu")
    assert aligner.scheme.name == "300w"
    assert Path(aligner.checkpoint) == WEIGHTS / "lab_300w.pt"


def test_model_card_figures_reproduce_on_the_300w_common_subset(shared_data):
    recorded = json.loads(EVALUATION.read_text())["results"]["common"]
    model, _ = checkpoint.load_model(WEIGHTS / "lab_300w.pt")
    measured = evaluate(model, "300w", shared_data / "300w", ("common",), torch.device("cpu"))["common"]
    assert measured["faces"] == recorded["faces"] == 554
    for key in ("nme", "fr"):  # percentages: within 0.05 percentage points
        assert measured[key] == pytest.approx(recorded[key], abs=0.05), key
    assert measured["auc"] == pytest.approx(recorded["auc"], abs=5e-4)
