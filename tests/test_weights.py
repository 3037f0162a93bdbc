"""The shipped weights: found offline by default, and their model card's figures reproduce."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labfast import FaceAligner, checkpoint
from labfast.data import read_300w
from labfast.evaluation.protocols import evaluate, predict_faces

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


def _read_pts_with_numpy(path: Path) -> np.ndarray:
    """A 68-point iBUG file without labfast's reader: the 'x y' lines (inside '{ }' where there is
    a header), minus 1 (the files are 1-based, predictions 0-based pixel centres)."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if "{" in lines:
        lines = lines[lines.index("{") + 1: lines.index("}")]
    return np.array([[float(value) for value in line.split()] for line in lines]) - 1.0


def test_recorded_nme_of_the_first_faces_matches_a_numpy_computation_from_the_pts_files(shared_data):
    """The regression check above compares against numbers labfast.metrics wrote; this one measures
    the first 8 common faces again without labfast's reader or metrics: the mean point-to-point
    error over the distance between the outer eye corners (iBUG points 37 and 46, 0-based 36 and
    45; the 300-W inter-ocular normaliser LAB reports).

    Tolerance 1e-5 (NME units): the predictions are recomputed in another batch, which moves them
    by float32 rounding (< 1e-4 px), and the inter-ocular distance of these faces is > 30 px, so
    the NME moves by < 1e-5; a wrong normaliser (inner eye corners, pupils) or an off-by-one
    ground truth moves it by > 1e-3.
    """
    faces_checked = 8
    record = json.loads(EVALUATION.read_text())
    assert record["units"]["nmes"] == "% of the normaliser, per face"  # 4 decimals: 5e-7 of the normaliser
    recorded = np.asarray(record["results"]["common"]["nmes"]) / 100
    root = shared_data / "300w"
    pts_files = sorted((root / "lfpw" / "testset").glob("*.pts"))[:faces_checked]
    faces = read_300w(root, "common")[:faces_checked]  # the order `labfast eval` measured them in
    assert [Path(face.image_path).stem for face in faces] == [path.stem for path in pts_files]
    model, _ = checkpoint.load_model(WEIGHTS / "lab_300w.pt")
    predicted = predict_faces(model, faces, torch.device("cpu"), progress=False).astype(np.float64)
    truth = np.stack([_read_pts_with_numpy(path) for path in pts_files])
    assert truth.shape == (faces_checked, 68, 2)
    inter_ocular = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=1)
    assert inter_ocular.min() > 30
    independent = np.linalg.norm(predicted - truth, axis=2).mean(axis=1) / inter_ocular
    np.testing.assert_allclose(recorded[:faces_checked], independent, rtol=0, atol=1e-5)
