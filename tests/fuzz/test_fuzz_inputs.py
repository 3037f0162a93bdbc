"""Fuzzed user inputs: the ``--boxes`` JSON, checkpoints, image files and video files raise only the
documented error types (docs/errors.md), or are reported as failed inputs."""
import argparse
import json

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ
from labfast import checkpoint
from labfast.commands import predict
from labfast.data import read_image_bgr
from labfast.inference.aligner import FaceAligner


@st.composite
def mutations(draw, data: bytes) -> bytes:
    """``data`` truncated, with byte runs overwritten, or both; sometimes plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(data) - 1))
        data[start:start + draw(st.integers(1, 32))] = draw(st.binary(min_size=1, max_size=32))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(value=st.one_of(st.dictionaries(st.text(max_size=8), JSON, max_size=4), JSON),
       raw=st.one_of(st.none(), st.binary(max_size=64), st.integers(1, 5000).map(lambda depth: b"[" * depth)))
def test_boxes_files(tmp_path, value, raw):
    path = tmp_path / "boxes.json"
    path.write_bytes(json.dumps(value).encode() if raw is None else raw)
    try:
        boxes = predict.read_boxes(str(path))
    except SystemExit as error:  # the command's one line
        assert str(path) in str(error.code)
        return
    for array in boxes.values():
        assert array.ndim == 2 and array.shape[1] == 4 and np.isfinite(array).all()
        assert (array[:, 2] > array[:, 0]).all() and (array[:, 3] > array[:, 1]).all()


@pytest.fixture(scope="module")
def checkpoint_parts(tmp_path_factory):
    from labfast.model import LAB, config_by_name

    model = LAB("300w", config_by_name("tiny"))
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    checkpoint.save(path, checkpoint.model_payload(model))
    return path.read_bytes(), checkpoint.model_payload(model)


CONFIG_VALUES = st.one_of(st.integers(-3, 3), st.integers(10**6, 10**12), st.floats(), st.text(max_size=4), st.none(),
                          st.lists(st.integers(0, 4), max_size=3))


@FUZZ
@given(data=st.data())
def test_checkpoint_files(tmp_path, checkpoint_parts, data):
    raw, payload = checkpoint_parts
    path = tmp_path / "model.pt"
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(mutations(raw)))
    else:  # a well-formed torch file with a broken payload
        payload = {**payload, "config": dict(payload["config"]), "model": dict(payload["model"])}
        for _ in range(data.draw(st.integers(1, 3))):
            part = data.draw(st.sampled_from(["config", "model", "scheme", "boundary_scheme", "top"]))
            if part in ("config", "model") and part not in payload:  # dropped by an earlier "top"
                continue
            if part == "config":
                payload["config"][data.draw(st.sampled_from(sorted(payload["config"])))] = data.draw(CONFIG_VALUES)
            elif part == "model":
                name = data.draw(st.sampled_from(sorted(payload["model"])))
                payload["model"][name] = data.draw(st.sampled_from([torch.zeros(3), torch.zeros(1, 2, 3, 4), torch.zeros(0),
                                                                    torch.zeros(2, dtype=torch.int64), torch.tensor(float("nan"))]))
            elif part == "top":
                payload = {key: value for key, value in payload.items() if key != data.draw(st.sampled_from(sorted(payload)))}
            else:
                payload[part] = data.draw(st.one_of(st.sampled_from(["300w", "wflw", "cofw", "nope"]), st.integers(), st.none()))
        checkpoint.save(path, payload)
    try:
        model, info = checkpoint.load_model(path)
    except checkpoint.CheckpointError as error:
        assert str(path) in str(error)


def small_image_bytes(suffix: str) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    return cv2.imencode(suffix, image)[1].tobytes()


@pytest.fixture(scope="module")
def aligner(tmp_path_factory):
    from labfast.inference import aligner as aligner_module, runtime
    from labfast.model import LAB, config_by_name

    path = tmp_path_factory.mktemp("aligner") / "tiny.pt"
    checkpoint.save(path, checkpoint.model_payload(LAB("300w", config_by_name("tiny"))))
    with pytest.MonkeyPatch.context() as patch:  # eager PyTorch: no ONNX export for this module
        patch.setattr(aligner_module, "inference_runtime",
                      lambda model, device, _runtime, threads: runtime.inference_runtime(model, device, "torch", threads))
        return FaceAligner(path, device="cpu")


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".jpg", ".png", ".bmp", ".webp", ".tif"]))
def test_image_files(tmp_path, aligner, data, suffix):
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(data.draw(mutations(small_image_bytes(suffix))))
    try:
        image = read_image_bgr(str(path))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    except OSError as error:
        assert str(path) in str(error)
    try:
        faces = aligner.predict(path)
        assert isinstance(faces, list)
    except ValueError as error:
        assert str(path) in str(error)


class NoFaces:
    """A stand-in aligner that finds no face: video decoding alone is under test."""

    scheme = argparse.Namespace(name="300w")
    checkpoint = "none"
    detector = "yunet"
    min_confidence = 0.0  # the face-or-not threshold FaceTracker takes from its aligner

    def predict(self, image, boxes=None, heatmaps=False):
        return []


def small_video_bytes(path, fourcc: str) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5, (48, 32))
    for number in range(8):
        writer.write(np.full((32, 48, 3), 30 * number, np.uint8))
    writer.release()
    return path.read_bytes()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {".avi": small_video_bytes(folder / "a.avi", "MJPG"), ".mp4": small_video_bytes(folder / "a.mp4", "mp4v")}


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".avi", ".mp4"]))
def test_video_files(tmp_path, videos, data, suffix, monkeypatch):
    monkeypatch.setenv("OPENCV_FFMPEG_LOGLEVEL", "-8")
    path = tmp_path / f"clip{suffix}"
    path.write_bytes(data.draw(mutations(videos[suffix])))
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    args = parser.parse_args([str(path), "--out", str(tmp_path / "out"), "--no-overlay"])
    failures = []
    item = predict.Item(path, path.stem, str(path))
    written = predict.predict_video(NoFaces(), item, args, failures)
    assert written == (not failures) and all(str(path) in failure for failure in failures)

