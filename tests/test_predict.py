"""``labfast predict`` on the bundled faces: outputs, round trips, bad and face-less inputs, videos."""
import json
import logging
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from labfast import cli
from labfast.aligner import FaceAligner
from labfast.data import box_from_landmarks, read_pts

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "300w_sample"


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with a nested sub-folder: two whole photos and one 300-W crop."""
    folder = tmp_path / "photos"
    (folder / "crops").mkdir(parents=True)
    shutil.copy(SAMPLE / "fullres" / "3083968872_1.jpg", folder)
    shutil.copy(SAMPLE / "fullres" / "image_0067.png", folder)
    shutil.copy(SAMPLE / "lfpw" / "testset" / "image_0001.jpg", folder / "crops")
    return folder


def predict(monkeypatch, *arguments) -> int:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv
    return cli.main(["predict", *map(str, arguments), "--device", "cpu"])


def test_folder_gives_json_pts_and_overlays_that_round_trip(monkeypatch, tiny_checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    assert predict(monkeypatch, photos, "--checkpoint", tiny_checkpoint, "--out", out, "--pts") == 0
    names = ["3083968872_1", "crops/image_0001", "image_0067"]  # the command's order: sorted paths
    image_paths = [next(photos.glob(f"{name}.*")) for name in names]
    images = [cv2.imread(str(path)) for path in image_paths]
    # the same batch as the command's (one batch of 3 images), so the same float32 sums
    expected_faces = FaceAligner(tiny_checkpoint, device="cpu").predict(images)
    for name, image_path, image, expected in zip(names, image_paths, images, expected_faces):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["scheme"] == "300w" and record["image"] == str(image_path)
        assert (record["width"], record["height"]) == (image.shape[1], image.shape[0])
        assert len(record["faces"]) == 1  # the detector finds the one face of each
        face = record["faces"][0]
        landmarks = np.asarray(face["landmarks"], np.float32)
        assert landmarks.shape == (68, 2)
        # JSON holds the aligner's float32 values exactly (float32 -> Python float -> float32 is lossless)
        np.testing.assert_array_equal(landmarks, expected[0].landmarks)
        np.testing.assert_array_equal(np.asarray(face["box"], np.float32), expected[0].box)
        # .pts is 1-based with 3 decimals: back within half a unit of the last decimal (+ float32 rounding)
        np.testing.assert_allclose(read_pts(out / f"{name}_1.pts") - 1, landmarks, atol=5e-4 + 1e-4, rtol=0)
        assert not (out / f"{name}_2.pts").exists()
        overlay = cv2.imread(str(out / f"{name}.png"))
        assert overlay is not None and overlay.shape == image.shape
        assert np.abs(overlay.astype(int) - image).max() > 0  # something was drawn


def test_boxes_file_is_used_and_unlisted_images_fall_back_to_the_detector(monkeypatch, tiny_checkpoint, photos, tmp_path):
    given = box_from_landmarks(read_pts(SAMPLE / "fullres" / "3083968872_1.pts") - 1)
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({
        "3083968872_1.jpg": [given.tolist(), (given + 30).tolist()],  # keyed by file name
        "crops/image_0001.jpg": [],  # keyed by the path inside the folder: no face on purpose
    }))
    out = tmp_path / "out"
    assert predict(monkeypatch, photos, "--checkpoint", tiny_checkpoint, "--out", out, "--boxes", boxes_file, "--no-overlay") == 0
    faces = json.loads((out / "3083968872_1.json").read_text())["faces"]
    np.testing.assert_array_equal(np.asarray([face["box"] for face in faces], np.float32), np.stack([given, given + 30]))
    assert json.loads((out / "crops" / "image_0001.json").read_text())["faces"] == []
    assert len(json.loads((out / "image_0067.json").read_text())["faces"]) == 1  # detector
    assert not list(out.rglob("*.png"))


def test_unreadable_image_is_named_the_rest_go_on_and_the_exit_code_says_so(monkeypatch, tiny_checkpoint, photos, tmp_path, caplog):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = predict(monkeypatch, photos, "--checkpoint", tiny_checkpoint, "--out", out, "--batch", "2")
    assert code == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert any("broken.jpg" in message and "cannot read" in message for message in errors)
    assert "1 input(s) failed" in errors[-1] and "broken.jpg" in errors[-1]
    for name in ("3083968872_1", "image_0067", "crops/image_0001"):
        assert (out / f"{name}.json").is_file() and (out / f"{name}.png").is_file()
    assert not (out / "broken.json").exists()


def test_image_without_a_face_gives_an_empty_result_and_a_log_line(monkeypatch, tiny_checkpoint, tmp_path, caplog):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert predict(monkeypatch, blank, "--checkpoint", tiny_checkpoint, "--out", out, "--pts") == 0
    assert json.loads((out / "blank.json").read_text())["faces"] == []
    assert cv2.imread(str(out / "blank.png")).shape == (240, 320, 3)
    assert not list(out.glob("*.pts"))
    assert any("blank.png: no face found" in record.getMessage() for record in caplog.records)


def test_video_frames_are_predicted_in_batches(monkeypatch, tiny_checkpoint, tmp_path):
    frame = cv2.imread(str(SAMPLE / "fullres" / "image_0067.png"))  # 320 x 441
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frame.shape[1], frame.shape[0]))
    for shift in range(3):
        writer.write(np.roll(frame, 4 * shift, axis=1))
    writer.write(np.full_like(frame, 128))  # a frame without a face
    writer.release()
    out = tmp_path / "out"
    assert predict(monkeypatch, video, "--checkpoint", tiny_checkpoint, "--out", out, "--batch", "3", "--pts") == 0
    record = json.loads((out / "clip.json").read_text())
    assert [entry["frame"] for entry in record["frames"]] == [0, 1, 2, 3]
    assert [len(entry["faces"]) for entry in record["frames"]] == [1, 1, 1, 0]
    assert (out / "clip" / "000002_1.pts").is_file() and not (out / "clip" / "000003_1.pts").exists()
    capture = cv2.VideoCapture(str(out / "clip.overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 4


def test_wrong_inputs_are_refused_with_their_name(monkeypatch, tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="does_not_exist.jpg does not exist"):
        predict(monkeypatch, tmp_path / "does_not_exist.jpg", "--checkpoint", tiny_checkpoint)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(SystemExit, match="notes.txt is neither an image"):
        predict(monkeypatch, notes, "--checkpoint", tiny_checkpoint)
    image = shutil.copy(SAMPLE / "fullres" / "image_0067.png", tmp_path)
    with pytest.raises(SystemExit, match="predicts scheme '300w', not 'wflw'"):
        predict(monkeypatch, image, "--checkpoint", tiny_checkpoint, "--scheme", "wflw", "--out", tmp_path / "out")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"image_0067.png": [[10, 10, 5, 20]]}))
    with pytest.raises(SystemExit, match="entry 'image_0067.png'"):
        predict(monkeypatch, image, "--checkpoint", tiny_checkpoint, "--boxes", boxes)
