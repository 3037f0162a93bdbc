"""Issue 19 item 6: each of these careless inputs gives one clear line (an error naming the input),
never a traceback from deep inside or a silently wrong result. A test per input.

The command-line ones also have their row in ``docs/errors.md``'s table (``tests/test_errors_table.py``:
``--threads 0``, an unknown device, a box wholly outside or far larger than its image, a ``--boxes`` key
naming no input); here are the API ones, ``--device cuda`` on a torch without CUDA (faked), and what
the table cannot show: which outputs are written."""
import json
import re
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from labfast import cli
from labfast.inference.aligner import FaceAligner

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "300w_sample"
PHOTO = SAMPLE / "fullres" / "image_0067.png"  # 320 x 441, one face


def predict(monkeypatch, *arguments) -> int:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv
    return cli.main(["predict", *map(str, arguments)])


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_cuda_on_a_torch_without_cuda_is_one_line(monkeypatch, tiny_checkpoint, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as error:
        predict(monkeypatch, PHOTO, "--checkpoint", tiny_checkpoint, "--device", "cuda", "--out", tmp_path)
    assert re.fullmatch(r"labfast predict: device 'cuda' asked for, but this torch \S+ is .*; use --device cpu \(or auto\)",
                        one_line(error))
    with pytest.raises(SystemExit, match="unknown device 'gpu': use auto, cpu, cuda or cuda:N"):
        predict(monkeypatch, PHOTO, "--checkpoint", tiny_checkpoint, "--device", "gpu", "--out", tmp_path)


@pytest.fixture(scope="module")
def aligner(tiny_checkpoint):
    return FaceAligner(tiny_checkpoint, device="cpu")


def test_an_empty_image_is_named(aligner):
    with pytest.raises(ValueError) as error:
        aligner.predict(np.zeros((0, 0, 3), np.uint8))
    assert one_line(error) == "image 0 is empty: 0x0 pixels"


def test_a_huge_box_is_refused_at_once(aligner):
    image = cv2.imread(str(PHOTO))
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        aligner.predict(image, boxes=[[0, 0, 1e9, 1e9]])
    assert time.perf_counter() - start < 1.0  # was an OpenCV bad_array_new_length after 9 s
    assert one_line(error).startswith("image 0: box 0 [0, 0, 1e+09, 1e+09] is over 4 times the 320x441 image's size")


def test_a_folder_is_named_as_a_folder(aligner, tmp_path):
    with pytest.raises(ValueError) as error:
        aligner.predict(tmp_path)
    assert one_line(error).startswith(f"image 0: {tmp_path} is a folder; pass its image files")


def test_a_bgra_array_is_accepted_like_an_rgba_file(aligner, tmp_path):
    bgr = cv2.imread(str(PHOTO))
    alpha = np.random.default_rng(0).integers(0, 256, bgr.shape[:2], dtype=np.uint8)
    bgra = np.dstack([bgr, alpha])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)  # a 4-channel PNG: RGBA on disk
    box = [[100, 150, 220, 290]]
    expected = aligner.predict(bgr, boxes=box)[0].landmarks
    np.testing.assert_array_equal(aligner.predict(bgra, boxes=box)[0].landmarks, expected)
    np.testing.assert_array_equal(aligner.predict(tmp_path / "rgba.png", boxes=box)[0].landmarks, expected)


def test_a_box_wholly_outside_its_image_is_named_that_image_skipped_and_the_exit_status_1(monkeypatch, tiny_checkpoint, tmp_path, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "a.png")
    shutil.copy(PHOTO, folder / "b.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"a.png": [[1000, 1000, 1100, 1100]], "b.png": [[100, 150, 220, 290]]}))
    out = tmp_path / "out"
    assert predict(monkeypatch, folder, "--checkpoint", tiny_checkpoint, "--boxes", boxes, "--device", "cpu",
                   "--out", out, "--no-overlay") == 1
    assert f"{folder / 'a.png'}: --boxes entry skipped: box 0 [1000, 1000, 1100, 1100] lies wholly outside the 320x441 image" in caplog.text
    assert not (out / "a.json").exists() and len(json.loads((out / "b.json").read_text())["faces"]) == 1


def test_same_name_different_suffix_writes_two_outputs(monkeypatch, tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "x.png")
    cv2.imwrite(str(folder / "x.jpg"), cv2.imread(str(PHOTO)))
    cv2.imwrite(str(folder / "y.v2.png"), cv2.imread(str(PHOTO)))  # a dot in the name is kept too
    out = tmp_path / "out"
    assert predict(monkeypatch, folder, "--checkpoint", tiny_checkpoint, "--device", "cpu", "--out", out, "--pts") == 0
    assert json.loads((out / "x.jpg.json").read_text())["image"].endswith("x.jpg")
    assert json.loads((out / "x.png.json").read_text())["image"].endswith("x.png")
    assert (out / "x.jpg.jpg").is_file() and (out / "x.png.png").is_file() and (out / "y.v2.json").is_file()  # overlays
