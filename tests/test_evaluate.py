"""labfast eval: protocol rows on real faces, errors measured in the original image, flip averaging."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labfast import checkpoint, cli, plots, schemes
from labfast.commands.demo import BUNDLED_DATA
from labfast.inference.detect import box_iou
from labfast.evaluation.protocols import MISSED_NME, evaluate, match_detections, predict_faces
from labfast.data import read_300w
from labfast.model import LABOutput, config_by_name


class CropOracle(torch.nn.Module):
    """Stands in for LAB: returns fixed crop-space landmarks, whatever the image (and blank heatmaps)."""

    def __init__(self, crop_landmarks: torch.Tensor):
        super().__init__()
        self.scheme = schemes.get("300w")
        self.config = config_by_name("tiny")
        self.crop_landmarks = crop_landmarks
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return LABOutput(landmarks=self.crop_landmarks[: len(images)].clone(), heatmaps=self.heatmaps(images))

    def heatmaps(self, images):
        size = self.config.heatmap_size
        return [torch.zeros(len(images), self.scheme.num_boundaries, size, size)]


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
            return LABOutput(landmarks=(plain if self.calls % 2 else relabelled).clone(), heatmaps=self.heatmaps(images))

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
    # one unit: per-face NMEs in % like the mean (rounded to 1e-4 % each, so the mean to 5e-5 %)
    assert row["nme"] == pytest.approx(np.mean(row["nmes"]), abs=5e-5)
    assert report["units"]["nme"] == report["units"]["nmes"].split(",")[0] == "% of the normaliser"
    assert report["units"]["normaliser"] == "inter_ocular"
    assert (tmp_path / "ced.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_refuses_a_checkpoint_of_another_scheme(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="300w scheme, not wflw"):
        cli.main(["eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "wflw", "--data-root", str(tmp_path)])


def _annotated_box_detector(faces, drop=()):
    """A stand-in detector that finds each face exactly at its annotated box, except the faces in ``drop``."""
    by_path = {face.image_path: face.box for face in faces}
    dropped = {faces[index].image_path for index in drop}

    def detect(image, calls=iter(faces)):
        face = next(calls)
        return np.zeros((0, 4)) if face.image_path in dropped else by_path[face.image_path][None]
    return detect


def test_detector_boxes_at_the_annotation_give_the_gt_figures(tiny_checkpoint):
    model, _ = checkpoint.load_model(tiny_checkpoint)
    faces = read_300w(BUNDLED_DATA, "common")
    gt = evaluate(model, "300w", BUNDLED_DATA, ("common",), torch.device("cpu"))["common"]
    detected = evaluate(model, "300w", BUNDLED_DATA, ("common",), torch.device("cpu"), boxes="detector",
                        detect=_annotated_box_detector(faces))["common"]
    assert detected["missed"] == 0 and gt["missed"] == 0
    np.testing.assert_allclose(detected["nmes"], gt["nmes"], rtol=1e-6)


def test_missed_faces_count_as_failures_with_the_missed_nme(tiny_checkpoint):
    model, _ = checkpoint.load_model(tiny_checkpoint)
    faces = read_300w(BUNDLED_DATA, "common")
    gt = evaluate(model, "300w", BUNDLED_DATA, ("common",), torch.device("cpu"))["common"]
    row = evaluate(model, "300w", BUNDLED_DATA, ("common",), torch.device("cpu"), boxes="detector",
                   detect=_annotated_box_detector(faces, drop=(0, 7)))["common"]
    assert row["missed"] == 2 and row["faces"] == 40
    nmes = np.array(row["nmes"])
    assert nmes[0] == nmes[7] == MISSED_NME
    kept = np.ones(40, bool)
    kept[[0, 7]] = False
    np.testing.assert_allclose(nmes[kept], np.array(gt["nmes"])[kept], rtol=1e-6)
    # the two missed faces fail on top of whatever failed with the annotated boxes
    assert row["fr"] == pytest.approx(100 * np.mean((np.array(gt["nmes"]) > 0.1) | ~kept))


def test_a_detection_that_misses_the_face_centre_is_a_miss():
    face = read_300w(BUNDLED_DATA, "common")[0]
    x0, y0, x1, y1 = face.box.astype(np.float64)
    beside = np.array([[x1, y0, 2 * x1 - x0, y1]])  # same size, just to the right: IoU 0
    assert match_detections([face], detect=lambda image: beside) == [None]
    overlapping = np.array([beside[0], [x0 + 2, y0, x1 + 2, y1]])
    np.testing.assert_array_equal(match_detections([face], detect=lambda image: overlapping)[0], overlapping[1])


def test_yunet_finds_the_bundled_faces_close_to_their_landmark_boxes():
    faces = read_300w(BUNDLED_DATA, "common")
    matched = match_detections(faces)
    assert all(box is not None for box in matched)
    overlaps = [box_iou(box[None], face.box.astype(np.float64))[0] for box, face in zip(matched, faces)]
    # on the 2012 training faces the converted box had median IoU 0.90 with the landmark box
    assert np.median(overlaps) > 0.8


def test_eval_command_records_the_box_source(tiny_checkpoint, tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "300w", "--subset", "common",
                     "--data-root", str(BUNDLED_DATA), "--boxes", "detector", "--out", str(tmp_path)]) == 0
    assert "detector boxes" in capsys.readouterr().out
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["boxes"] == "detector" and report["results"]["common"]["missed"] == 0


def eval_command(*arguments) -> int:
    return cli.main(["eval", "--dataset", "300w", "--device", "cpu", *map(str, arguments)])


def test_eval_defaults_to_the_shipped_weights_and_writes_to_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert eval_command("--data-root", BUNDLED_DATA, "--subset", "common") == 0
    report = json.loads((tmp_path / "labfast-eval-300w" / "metrics.json").read_text())
    assert report["checkpoint"].endswith("lab_300w.pt") and report["results"]["common"]["faces"] == 40
    assert (tmp_path / "labfast-eval-300w" / "ced.png").is_file()


def test_eval_with_nothing_to_evaluate_fails_and_writes_nothing(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert eval_command("--checkpoint", tiny_checkpoint, "--data-root", tmp_path / "empty", "--out", out) == 1
    assert "wrote" not in capsys.readouterr().out
    assert not out.exists() or not list(out.iterdir())


def test_a_failed_eval_leaves_the_last_good_metrics_and_plot_untouched(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert eval_command("--checkpoint", tiny_checkpoint, "--data-root", BUNDLED_DATA, "--subset", "common", "--out", out) == 0
    good = {name: (out / name).read_bytes() for name in ("metrics.json", "ced.png")}
    assert eval_command("--checkpoint", tiny_checkpoint, "--data-root", tmp_path / "wrong", "--out", out) == 1
    assert {path.name: path.read_bytes() for path in out.iterdir()} == good  # same pair, no temporary left


def test_a_crash_while_writing_results_leaves_the_old_pair_and_no_temporary(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("old metrics")
    (out / "ced.png").write_bytes(b"old plot")

    def fail(curves, path, **kwargs):
        Path(path).write_bytes(b"half a plot")
        raise OSError("disk full")
    monkeypatch.setattr(plots, "plot_ced", fail)
    with pytest.raises(OSError, match="disk full"):
        eval_command("--checkpoint", tiny_checkpoint, "--data-root", BUNDLED_DATA, "--subset", "common", "--out", out)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == {"metrics.json": b"old metrics", "ced.png": b"old plot"}


@pytest.fixture
def one_malformed_annotation(tmp_path):
    """The bundled common subset with one of its 40 .pts files cut to 19 points."""
    import shutil

    root = tmp_path / "300w"
    for folder in ("lfpw/testset", "helen/testset"):
        shutil.copytree(BUNDLED_DATA / folder, root / folder)
    bad = sorted((root / "lfpw" / "testset").glob("*.pts"))[0]
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(["version: 1", "n_points: 19", "{", *lines[3:22], "}"]) + "\n")
    return root, bad


def test_a_malformed_annotation_is_skipped_counted_and_the_rest_evaluated(tiny_checkpoint, one_malformed_annotation, tmp_path, capsys):
    root, bad = one_malformed_annotation
    assert eval_command("--checkpoint", tiny_checkpoint, "--data-root", root, "--subset", "common", "--out", tmp_path / "out") == 0
    assert "(1 malformed annotation(s) skipped)" in capsys.readouterr().out
    row = json.loads((tmp_path / "out" / "metrics.json").read_text())["results"]["common"]
    assert row["faces"] == 39 and row["skipped"] == 1


def test_strict_stops_at_the_malformed_annotation_naming_it(tiny_checkpoint, one_malformed_annotation, tmp_path):
    root, bad = one_malformed_annotation
    with pytest.raises(SystemExit, match=f"{bad.name}.*19.*--strict"):
        eval_command("--checkpoint", tiny_checkpoint, "--data-root", root, "--subset", "common", "--strict", "--out", tmp_path / "out")
