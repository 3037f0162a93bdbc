"""Progress of long jobs: lines every few seconds off a terminal, a bar on one, nothing when quiet."""
import logging
import os
import subprocess
import sys
from pathlib import Path


from labfast.progress import Progress, track

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "300w_sample"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "labfast.progress"]


def test_off_a_terminal_a_line_every_interval_with_done_total_rate_and_eta(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="labfast.progress"):
        with Progress(40, "predict", "image", interval=10, terminal=False, clock=clock) as progress:
            for _ in range(40):
                clock.now += 0.6  # 24 s in all
                progress.update()
    # lines at 10.2 s (17 done) and 20.4 s (34 done), then the closing one
    assert lines(caplog) == [
        "predict: 17/40 images (42 %), 1.67/s, ETA 14 s",
        "predict: 34/40 images (85 %), 1.67/s, ETA 4 s",
        "predict: 40 images done in 24 s (1.67/s)",
    ]


def test_a_job_shorter_than_the_interval_stays_silent_and_an_unknown_total_has_no_eta(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="labfast.progress"):
        with Progress(5, "short", "image", interval=10, terminal=False, clock=clock) as progress:
            clock.now = 3.0
            progress.update(5)
        assert lines(caplog) == []
        with Progress(None, "clip.mp4", "frame", interval=10, terminal=False, clock=clock) as progress:
            clock.now += 12.0
            progress.update(30)
    assert lines(caplog)[0] == "clip.mp4: 30 frames, 2.5/s"


def test_quiet_when_the_logger_is_not_enabled_for_info(caplog):
    clock = Clock()
    with caplog.at_level(logging.WARNING, logger="labfast.progress"):
        progress = Progress(3, "eval", "face", interval=0, terminal=True, clock=clock)
        assert progress.bar is None  # no bar either
        for _ in track(range(3), 3, "eval", "face"):
            clock.now += 100
            progress.update()
        progress.close()
    assert lines(caplog) == []


def test_track_counts_each_item_or_its_size():
    seen = []
    assert list(track([[1, 2], [3]], 3, "faces", "face", step=len)) == [[1, 2], [3]]
    for item in track(range(3), 3, "x", "item"):
        seen.append(item)
    assert seen == [0, 1, 2]


#: ``labfast predict`` twice in one fresh process (a process start costs seconds), quiet then not,
#: the root logger's handlers cleared in between (``logging.basicConfig`` configures once); its
#: ``FaceAligner`` on eager PyTorch (conftest's ``eager_runtime``).
TWICE = """
import logging, sys
from labfast.inference import aligner, runtime
aligner.inference_runtime = lambda model, device, _, threads: runtime.inference_runtime(model, device, "torch", threads)
from labfast import cli
arguments = sys.argv[1:]  # cli.main rewrites sys.argv
quiet = cli.main(["-q", *arguments])
print("=== not quiet", file=sys.stderr)
logging.root.handlers.clear()
sys.exit(quiet or cli.main(arguments))
"""


def test_predict_writes_progress_lines_to_a_pipe_unless_quiet(tiny_checkpoint, tmp_path):
    # stderr a pipe, as in a log file or CI; the interval 0 gives a line per image
    command = [sys.executable, "-c", TWICE, "predict", str(SAMPLE / "fullres"), "--no-overlay",
               "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "LABFAST_PROGRESS_SECONDS": "0"})
    assert result.returncode == 0, result.stderr
    quiet, loud = result.stderr.split("=== not quiet\n")
    assert quiet == ""
    progress = [line for line in loud.splitlines() if "labfast.progress" in line]
    assert "predict: 1/2 images" in progress[0] and "predict: 2 images done" in progress[-1]
