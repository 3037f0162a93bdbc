"""Face detectors on 300-W test faces: recall, box overlap, speed, and the landmarks' NME from their boxes.

    python benchmarks/detectors.py --data ../shared/data [--json benchmarks/results/detectors-cpu.json]

For YuNet and Haar (``labfast.inference.detect``), on the 300-W common test subset (554 crops, 256x256) and on
the 12 whole photos of ``300w_fullres_samples``: a face counts as found when a detection contains the
centre of its annotated landmark box (``labfast.inference.detect.match``); per detector the recall, the
median IoU of the converted box with the landmark box, the mean detection time per image, and on
the common subset the shipped weights' NME / FR@10 from the detector's boxes (a missed face counts
as a failure with its NME left out of the mean) next to the same from the annotated landmark boxes.
Single-threaded (``cv2.setNumThreads(1)``, one torch thread), so the times do not depend on a
neighbour's load as much.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import cv2
import numpy as np
import torch

from labfast import metrics

from labfast.inference import detect
from labfast.inference.aligner import FaceAligner
from labfast.data import read_300w
from labfast.inference.detect import box_iou
from labfast.tools.detector_fit import run_detector


def detector_rows(samples, aligner: FaceAligner | None) -> dict:
    rows = {}
    for detector in detect.DETECTORS:
        matched = run_detector(samples, detector)
        found = [index for index, box in enumerate(matched.boxes) if box is not None]
        ious = [box_iou(detect.to_landmark_box(matched.boxes[index][None], detector), samples[index].box)[0] for index in found]
        row = {
            "faces": len(samples), "found": len(found), "recall": round(len(found) / len(samples), 4),
            "median_iou": round(float(np.median(ious)), 3) if ious else None,
            "mean_ms": round(1e3 * float(np.mean(matched.seconds)), 1),
            "median_ms": round(1e3 * float(np.median(matched.seconds)), 1),
        }
        if aligner is not None:
            nmes = np.full(len(samples), np.inf)
            for index in found:
                face, = aligner.predict(samples[index].image_path, boxes=detect.to_landmark_box(matched.boxes[index][None], detector))
                nmes[index] = metrics.nme(face.landmarks[None], samples[index].landmarks[None], aligner.scheme)[0]
            row["nme_found"] = round(100 * float(nmes[np.isfinite(nmes)].mean()), 3)
            row["fr10"] = round(100 * float((nmes > 0.10).mean()), 2)
        rows[detector] = row
    return rows


def annotated_box_row(samples, aligner: FaceAligner) -> dict:
    nmes = np.array([
        metrics.nme(aligner.predict(sample.image_path, boxes=sample.box[None])[0].landmarks[None], sample.landmarks[None], aligner.scheme)[0]
        for sample in samples])
    return {"faces": len(samples), "nme": round(100 * float(nmes.mean()), 3), "fr10": round(100 * float((nmes > 0.10).mean()), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="../shared/data (holds 300w and 300w_fullres_samples)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    data = Path(args.data)
    aligner = FaceAligner(device="cpu")
    common = read_300w(data / "300w", "common")
    fullres = read_300w(data / "300w_fullres_samples", "common")
    result = {
        "device": f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread, cv2 threads 1",
        "opencv": cv2.__version__, "torch": torch.__version__, "yunet_max_side": detect.MAX_SIDE,
        "common": {**detector_rows(common, aligner), "annotated_boxes": annotated_box_row(common, aligner)},
        "fullres": detector_rows(fullres, None),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
