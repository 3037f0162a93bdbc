"""Tracking by landmarks against detection in every frame, on a clip made from a bundled photo.

    python benchmarks/tracking.py [--frames 120] [--size 720] [--json benchmarks/results/tracking-cpu.json]

The clip (``labfast.inference.track.moving_crop_clip``) drifts and zooms over the face of
``data/300w_sample/fullres/3083968872_1.jpg`` with the ground truth moved along; the shipped weights
run with ``FaceTracker(redetect_every=1)`` (the detector in every frame) and with the default
tracker. Per mode: seconds per frame (median of ``--repeats`` passes over the clip), frames that
ran the detector, and the NME (% inter-ocular) against the moved annotation. One torch and one
OpenCV thread.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from labfast import metrics

from labfast.inference import track
from labfast.inference.aligner import FaceAligner
from labfast.data import read_image_bgr, read_pts

PHOTO = Path(__file__).resolve().parents[1] / "data" / "300w_sample" / "fullres" / "3083968872_1.jpg"


def run_mode(aligner, frames, truth, redetect_every: int, repeats: int) -> dict:
    seconds, nmes, detections = [], [], 0
    for _ in range(repeats):
        tracker = track.FaceTracker(aligner, redetect_every=redetect_every)
        nmes, start = [], time.perf_counter()
        for frame, landmarks in zip(frames, truth):
            faces = tracker.update(frame)
            nmes.append(metrics.nme(faces[0].landmarks[None], landmarks[None], "300w")[0] if faces else np.inf)
        seconds.append(time.perf_counter() - start)
        detections = tracker.detections
    nmes = np.asarray(nmes)
    return {"ms_per_frame": round(1e3 * float(np.median(seconds)) / len(frames), 1), "detector_frames": detections,
            "nme": round(100 * float(nmes[np.isfinite(nmes)].mean()), 3), "max_nme": round(100 * float(nmes.max()), 3),
            "frames_without_face": int((~np.isfinite(nmes)).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    frames, truth = track.moving_crop_clip(read_image_bgr(str(PHOTO)), read_pts(PHOTO.with_suffix(".pts")) - 1,
                                           frames=args.frames, size=args.size)
    aligner = FaceAligner(device="cpu")
    aligner.predict(frames[0])  # load the detector and warm up before timing
    result = {
        "device": f"{platform.processor() or platform.machine()} CPU, 1 torch thread, 1 OpenCV thread",
        "clip": f"{args.frames} frames of {args.size}x{args.size} from {PHOTO.name}", "torch": torch.__version__,
        "opencv": cv2.__version__,
        "detect_every_frame": run_mode(aligner, frames, truth, 1, args.repeats),
        "track": run_mode(aligner, frames, truth, track.DEFAULT_REDETECT_EVERY, args.repeats),
    }
    result["speed_up"] = round(result["detect_every_frame"]["ms_per_frame"] / result["track"]["ms_per_frame"], 2)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
