"""``labfast predict`` on damaged videos: frames read against the frames the container declares."""
import json
import logging
import sys

import cv2
import numpy as np
import pytest

from labfast import cli

FRAMES = 60
pytestmark = pytest.mark.usefixtures("eager_runtime")


def write_clip(path, fourcc: str) -> None:
    """60 frames of 160 x 120 noise with a moving disc (no face: the detector runs fast on them)."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (160, 120))
    for number in range(FRAMES):
        frame = rng.integers(0, 40, (120, 160, 3), dtype=np.uint8)
        cv2.circle(frame, (20 + 2 * number, 60), 15, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()


@pytest.fixture
def damaged_mp4(tmp_path):
    """An MPEG-4 clip with 40 % of its bytes, from 30 % of the file on, overwritten with zeros."""
    path = tmp_path / "damaged.mp4"
    write_clip(path, "mp4v")
    data = bytearray(path.read_bytes())
    start, end = int(0.3 * len(data)), int(0.7 * len(data))
    data[start:end] = bytes(end - start)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def truncated_avi(tmp_path):
    """A Motion-JPEG AVI cut to its first half (its header still declares 60 frames)."""
    path = tmp_path / "truncated.avi"
    write_clip(path, "MJPG")
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def predict(monkeypatch, *arguments) -> int:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    return cli.main(["predict", *map(str, arguments), "--device", "cpu", "--no-overlay"])


@pytest.mark.parametrize("clip", ["damaged_mp4", "truncated_avi"])
def test_a_video_that_ends_early_says_how_many_frames_of_how_many_and_exits_1(clip, request, monkeypatch, tiny_checkpoint, tmp_path, caplog):
    video = request.getfixturevalue(clip)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert predict(monkeypatch, video, "--checkpoint", tiny_checkpoint, "--out", out) == 1
    record = json.loads((out / f"{video.stem}.json").read_text())  # the frames read are still written
    read = len(record["frames"])
    assert 0 < read < FRAMES and record["frames_declared"] == FRAMES
    errors = [entry.getMessage() for entry in caplog.records if entry.levelno >= logging.ERROR]
    assert any(f"read {read} of {FRAMES} frames the container declares: the video ended early" in line for line in errors)
    assert "1 input(s) failed" in errors[-1] and video.name in errors[-1]


def test_a_whole_video_reports_all_its_frames_and_exits_0(monkeypatch, tiny_checkpoint, tmp_path, caplog):
    video = tmp_path / "whole.avi"
    write_clip(video, "MJPG")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert predict(monkeypatch, video, "--checkpoint", tiny_checkpoint, "--out", out) == 0
    assert len(json.loads((out / "whole.json").read_text())["frames"]) == FRAMES
    assert any(f"read {FRAMES} of {FRAMES} frames" in entry.getMessage() for entry in caplog.records)
