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
from labfast.inference.aligner import FaceAligner
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
        # a JPEG input gets a JPEG overlay (a PNG of a photo is several times its size), others a PNG
        overlay = cv2.imread(str(out / (name + (".jpg" if image_path.suffix == ".jpg" else ".png"))))
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
    for name, suffix in (("3083968872_1", ".jpg"), ("image_0067", ".png"), ("crops/image_0001", ".jpg")):
        assert (out / f"{name}.json").is_file() and (out / f"{name}{suffix}").is_file()
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


def test_video_frames_are_predicted_with_the_detector_on_every_frame(monkeypatch, tiny_checkpoint, tmp_path):
    frame = cv2.imread(str(SAMPLE / "fullres" / "image_0067.png"))  # 320 x 441
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (frame.shape[1], frame.shape[0]))
    for shift in range(3):
        writer.write(np.roll(frame, 4 * shift, axis=1))
    writer.write(np.full_like(frame, 128))  # a frame without a face
    writer.release()
    out = tmp_path / "out"
    # the detector on every frame: the tiny random model's confidence means nothing to the tracker
    assert predict(monkeypatch, video, "--checkpoint", tiny_checkpoint, "--out", out, "--redetect-every", "1", "--pts") == 0
    record = json.loads((out / "clip.json").read_text())
    assert [entry["frame"] for entry in record["frames"]] == [0, 1, 2, 3]
    assert [len(entry["faces"]) for entry in record["frames"]] == [1, 1, 1, 0]
    faces = [face for entry in record["frames"] for face in entry["faces"]]
    assert [face["track"] for face in faces] == [0, 0, 0] and all(face["score"] > 0 for face in faces)  # one face, one id
    assert (out / "clip" / "000002_1.pts").is_file() and not (out / "clip" / "000003_1.pts").exists()
    capture = cv2.VideoCapture(str(out / "clip.overlay.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 4


def test_wrong_inputs_are_refused_with_their_name(monkeypatch, tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="does_not_exist.jpg does not exist"):
        predict(monkeypatch, tmp_path / "does_not_exist.jpg", "--checkpoint", tiny_checkpoint)
    image = shutil.copy(SAMPLE / "fullres" / "image_0067.png", tmp_path)
    with pytest.raises(SystemExit, match="predicts scheme '300w', not 'wflw'"):
        predict(monkeypatch, image, "--checkpoint", tiny_checkpoint, "--scheme", "wflw", "--out", tmp_path / "out")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"image_0067.png": [[10, 10, 5, 20]]}))
    with pytest.raises(SystemExit, match="entry 'image_0067.png'"):
        predict(monkeypatch, image, "--checkpoint", tiny_checkpoint, "--boxes", boxes)


def test_a_file_that_is_neither_image_nor_video_is_named_and_the_others_go_on(monkeypatch, tiny_checkpoint, tmp_path, caplog):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    image = shutil.copy(SAMPLE / "fullres" / "image_0067.png", tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        assert predict(monkeypatch, notes, image, "--checkpoint", tiny_checkpoint, "--out", out, "--no-overlay") == 1
    assert any("notes.txt: neither an image" in record.getMessage() for record in caplog.records)
    assert (out / "image_0067.json").is_file()


@pytest.mark.parametrize("suffix", [".ppm", ".pgm", ".tif"])
def test_every_format_opencv_reads_is_an_image(monkeypatch, tiny_checkpoint, tmp_path, suffix):
    photo = cv2.imread(str(SAMPLE / "fullres" / "image_0067.png"))
    if suffix == ".pgm":  # grey only
        photo = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    folder = tmp_path / "in"
    folder.mkdir()
    assert cv2.imwrite(str(folder / f"face{suffix}"), photo) and cv2.imwrite(str(tmp_path / f"given{suffix}"), photo)
    out = tmp_path / "out"
    assert predict(monkeypatch, folder, tmp_path / f"given{suffix}", "--checkpoint", tiny_checkpoint, "--out", out, "--no-overlay") == 0
    for name in ("face", "given"):
        record = json.loads((out / f"{name}.json").read_text())
        assert (record["width"], record["height"]) == (320, 441) and len(record["faces"]) == 1


def test_images_are_read_in_chunks_bounded_by_megapixels_whatever_the_batch(tmp_path):
    from labfast.commands.predict import Item, read_image_chunks

    sizes = [(600, 800), (441, 320), (256, 256), (1000, 1000), (100, 100), (100, 100)]  # (h, w): 0.48, 0.14, 0.066, 1.0, 0.01, 0.01 MP
    items = []
    for number, (height, width) in enumerate(sizes):
        path = tmp_path / f"{number}.png"
        cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))
        items.append(Item(path, path.stem, path.name))

    class Progress:
        def update(self, count):
            pass

    chunks = [[image.shape[:2] for image in pixels] for _, pixels in read_image_chunks(items, 64, 0.5, [], Progress())]
    # greedy: 0.48 | 0.14 + 0.066 (+1.0 would pass 0.5) | 1.0 alone (larger than the bound) | 0.01 + 0.01
    assert chunks == [[sizes[0]], [sizes[1], sizes[2]], [sizes[3]], [sizes[4], sizes[5]]]
    assert [len(pixels) for _, pixels in read_image_chunks(items, 2, 100.0, [], Progress())] == [2, 2, 2]  # --batch still bounds


def test_haar_detector_is_a_choice(monkeypatch, tiny_checkpoint, tmp_path):
    image = shutil.copy(SAMPLE / "fullres" / "image_0067.png", tmp_path)
    out = tmp_path / "out"
    assert predict(monkeypatch, image, "--checkpoint", tiny_checkpoint, "--out", out, "--detector", "haar", "--no-overlay") == 0
    face, = json.loads((out / "image_0067.json").read_text())["faces"]
    assert face["score"] is not None and face["score"] > 1  # Haar's level weight, not YuNet's [0, 1] score


@pytest.mark.parametrize("content", [
    b"\xff\xfe not UTF-8",  # UnicodeDecodeError escaped (found by tests/fuzz)
    b"[" * 5000,  # RecursionError escaped
    b'{"a.jpg": [[0, 0, 10, ""]]}',  # ValueError from numpy escaped
    b'{"a.jpg": [{"x0": 0}]}',  # TypeError escaped
    b'{"a.jpg": [[0, 0, 10, 1' + b"0" * 400 + b"]]}",  # OverflowError escaped
    b'{"a.jpg": [[0, 0, 10, 10], [1, 2]]}',  # ragged
])
def test_a_malformed_boxes_file_is_one_line_naming_it(tmp_path, content):
    from labfast.commands.predict import read_boxes

    path = tmp_path / "boxes.json"
    path.write_bytes(content)
    with pytest.raises(SystemExit, match=f"labfast predict: (cannot read )?boxes file {path}"):
        read_boxes(str(path))
