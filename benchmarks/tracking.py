"""Tracking by landmarks against detection in every frame, on two clips made from real photos.

    python benchmarks/tracking.py [--frames 120] [--size 720] [--json benchmarks/results/tracking-cpu.json]

- ``drift-zoom``: ``labfast.inference.track.moving_crop_clip``, a window that drifts and zooms over the
  face of ``data/300w_sample/fullres/3083968872_1.jpg``;
- ``pan-zoom-family``: :func:`pan_zoom_clip`, a window that pans across the two children of the
  300-W photo ``helen/testset/3220050079_1.jpg`` (``../shared/data/300w_fullres_samples``; a hand at
  the bottom) while zooming in and out; the annotated face is in full view on part of the frames.

The ground truth moves with each frame. The shipped weights run with ``FaceTracker(redetect_every=1)``
(the detector in every frame) and with the default tracker. Per mode: seconds per frame (median of
``--repeats`` passes), frames that ran the detector and their share, the NME (% inter-ocular) of the
annotated face over the frames where it is wholly in view (the face whose landmark box overlaps the
truth's most, IoU at least 0.3; frames without one are counted as missed), and how many track ids
were handed out. One torch and one OpenCV thread.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from labfast import metrics
from labfast.data import box_from_landmarks, read_image_bgr, read_pts
from labfast.inference import track
from labfast.inference.aligner import FaceAligner
from labfast.inference.detect import box_iou

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "data" / "300w_sample" / "fullres" / "3083968872_1.jpg"
FAMILY = ROOT.parent / "shared" / "data" / "300w_fullres_samples" / "helen" / "testset" / "3220050079_1.jpg"


def pan_zoom_clip(image: np.ndarray, landmarks: np.ndarray, frames: int, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A square window panning left-right-left across the photo (one period) while its side swings
    between 45 % and 85 % of the photo's shorter side (two periods), resized to ``size``; returns
    ``(frames, landmarks)`` like ``labfast.inference.track.window_clip``."""
    height, width = image.shape[:2]
    windows = []
    for index in range(frames):
        angle = 2 * np.pi * index / frames
        side = min(height, width) * (0.65 + 0.2 * np.sin(2 * angle))
        windows.append((np.array([width / 2 - (width - side) / 2 * np.cos(angle),
                                  height / 2 + 0.1 * (height - side) * np.sin(angle)]), side))
    return track.window_clip(image, landmarks, windows, size)


def annotated_face_nme(faces, truth: np.ndarray) -> float:
    """NME of the face that overlaps the truth's landmark box most (IoU >= 0.3), ``inf`` if none does."""
    truth_box = box_from_landmarks(truth)
    if not faces:
        return np.inf
    overlap = box_iou(np.stack([box_from_landmarks(face.landmarks) for face in faces]), truth_box)
    best = int(np.argmax(overlap))
    return metrics.nme(faces[best].landmarks[None], truth[None], "300w")[0] if overlap[best] >= 0.3 else np.inf


def run_mode(aligner, frames, truth, redetect_every: int, repeats: int) -> dict:
    size = frames[0].shape[1]
    in_view = [(t.min() >= 0) and (t.max() <= size - 1) for t in truth]
    seconds, nmes, detections, ids = [], [], 0, set()
    for _ in range(repeats):
        tracker = track.FaceTracker(aligner, redetect_every=redetect_every)
        nmes, ids, start = [], set(), time.perf_counter()
        for frame, landmarks, visible in zip(frames, truth, in_view):
            faces = tracker.update(frame)
            ids.update(face.track_id for face in faces)
            if visible:
                nmes.append(annotated_face_nme(faces, landmarks))
        seconds.append(time.perf_counter() - start)
        detections = tracker.detections
    nmes = np.asarray(nmes)
    return {"ms_per_frame": round(1e3 * float(np.median(seconds)) / len(frames), 1), "detector_frames": detections,
            "detector_share": round(detections / len(frames), 3), "frames_scored": len(nmes),
            "nme": round(100 * float(nmes[np.isfinite(nmes)].mean()), 3), "max_nme": round(100 * float(nmes[np.isfinite(nmes)].max()), 3),
            "frames_missed": int((~np.isfinite(nmes)).sum()), "track_ids": len(ids)}


def clips(frames: int, size: int) -> dict:
    result = {"drift-zoom": track.moving_crop_clip(read_image_bgr(str(PHOTO)), read_pts(PHOTO.with_suffix(".pts")) - 1,
                                                   frames=frames, size=size)}
    if FAMILY.is_file():
        result["pan-zoom-family"] = pan_zoom_clip(read_image_bgr(str(FAMILY)), read_pts(FAMILY.with_suffix(".pts")) - 1, frames, size)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--redetect-every", type=int, default=track.DEFAULT_REDETECT_EVERY)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    aligner = FaceAligner(device="cpu")
    result = {"device": f"{platform.processor() or platform.machine()} CPU, 1 torch thread, 1 OpenCV thread",
              "load_average": [round(value, 1) for value in os.getloadavg()], "torch": torch.__version__,
              "opencv": cv2.__version__, "redetect_every": args.redetect_every,
              "min_confidence": aligner.min_confidence, "clips": {}}
    for name, (frames, truth) in clips(args.frames, args.size).items():
        aligner.predict(frames[0])  # load the detector and warm up before timing
        every = run_mode(aligner, frames, truth, 1, args.repeats)
        tracked = run_mode(aligner, frames, truth, args.redetect_every, args.repeats)
        result["clips"][name] = {"frames": f"{args.frames} of {args.size}x{args.size}", "detect_every_frame": every,
                                 "track": tracked, "speed_up": round(every["ms_per_frame"] / tracked["ms_per_frame"], 2),
                                 "nme_gap_pp": round(tracked["nme"] - every["nme"], 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
