"""Fit each face detector's box -> landmark-box conversion on the 300-W **training** faces only.

    python -m labfast.tools.detector_fit --data-root ../shared/data/300w [--out labfast/detectors/box_conversion.json]

For every training face (``lfpw/trainset``, ``helen/trainset``, ``afw``: the 300-W ``train``
subset, never the test faces) the detector runs on the image; the detection that contains the
centre of the annotated landmark box (the box around the 68 points) and overlaps it most is the
face's match (faces with none are counted as missed). With a matched detector box of width ``w``,
height ``h`` and the landmark box of width ``W``, height ``H``, the conversion is the median over
the matched faces of

    shift_x = (landmark centre x - detector centre x) / w     scale_x = W / w
    shift_y = (landmark centre y - detector centre y) / h     scale_y = H / h

(medians: a few wrong matches must not pull the numbers). The error that remains after the
conversion is recorded too (``labfast.inference.detect.box_error``), as mean and standard deviation of what
box-jitter augmentation draws (``AugmentConfig.box_shift_std`` / ``box_scale_std``): the centre
error per axis over the landmark box's longer side ``S``, ``(converted centre - landmark centre) / S``,
and the log ratio of the longer sides, ``log(converted side / S)``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from labfast.inference import detect
from labfast.inference.detect import box_iou, match

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "detectors" / detect.CONVERSION_FILE






@dataclass
class Matched:
    """Per face: the matched raw detector box (``None`` where missed), and the detection time (s)."""

    boxes: list
    seconds: list


def run_detector(samples, detector: str) -> Matched:
    """Detect faces in each sample's image and match them to its annotated face."""
    boxes, seconds = [], []
    for sample in samples:
        image = cv2.imread(sample.image_path, cv2.IMREAD_COLOR)
        start = time.perf_counter()
        found = detect.detect_faces(image, detector)
        seconds.append(time.perf_counter() - start)
        index = match(found.boxes, sample.box) if len(found) else None
        boxes.append(None if index is None else found.boxes[index])
    return Matched(boxes, seconds)


def _centres_and_sizes(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]


def fit_conversion(detector_boxes: np.ndarray, landmark_boxes: np.ndarray) -> detect.BoxConversion:
    """Median conversion (module docstring) from matched ``(N, 4)`` detector and landmark boxes."""
    detector_centre, detector_size = _centres_and_sizes(np.asarray(detector_boxes, np.float64))
    landmark_centre, landmark_size = _centres_and_sizes(np.asarray(landmark_boxes, np.float64))
    shift = np.median((landmark_centre - detector_centre) / detector_size, axis=0)
    scale = np.median(landmark_size / detector_size, axis=0)
    return detect.BoxConversion(shift_x=round(float(shift[0]), 4), shift_y=round(float(shift[1]), 4),
                                scale_x=round(float(scale[0]), 4), scale_y=round(float(scale[1]), 4))


def converted_error(converted_boxes: np.ndarray, landmark_boxes: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of the converted boxes' error, in the terms box-jitter augmentation
    draws it (``labfast.data.transforms.jitter_box``): the centre shift per axis as a fraction of the
    landmark box's longer side, and the log of the ratio of the longer sides."""
    centre, size = _centres_and_sizes(np.asarray(converted_boxes, np.float64))
    landmark_centre, landmark_size = _centres_and_sizes(np.asarray(landmark_boxes, np.float64))
    landmark_side = landmark_size.max(axis=1, keepdims=True)
    shift = (centre - landmark_centre) / landmark_side
    log_side = np.log(size.max(axis=1) / landmark_side[:, 0])
    columns = {"shift_x": shift[:, 0], "shift_y": shift[:, 1], "log_side": log_side}
    return {name: {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4)} for name, values in columns.items()}


def fit(samples, detector: str) -> dict:
    """The conversion, its remaining error and the match counts of ``detector`` on ``samples``."""
    matched = run_detector(samples, detector)
    found = [index for index, box in enumerate(matched.boxes) if box is not None]
    detector_boxes = np.stack([matched.boxes[index] for index in found])
    landmark_boxes = np.stack([samples[index].box for index in found])
    fitted = fit_conversion(detector_boxes, landmark_boxes)
    converted = detect.convert_boxes(detector_boxes, fitted)
    ious = np.array([box_iou(box[None], truth)[0] for box, truth in zip(converted, landmark_boxes)])
    return {
        "conversion": fitted.__dict__,
        "box_error": converted_error(converted, landmark_boxes),
        "faces": len(samples),
        "matched": len(found),
        "converted_iou": {"median": round(float(np.median(ious)), 3), "p10": round(float(np.percentile(ious, 10)), 3)},
    }


def main(argv: list[str] | None = None) -> int:
    from labfast.data import read_300w

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="300-W in its official layout (its train subset is used)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--detector", action="append", choices=detect.DETECTORS, help="default: all")
    args = parser.parse_args(argv)
    samples = read_300w(args.data_root, "train")
    record = {
        "fitted_on": f"300-W train subset ({', '.join(('lfpw/trainset', 'helen/trainset', 'afw'))}) of "
                     f"{Path(args.data_root).name}: {len(samples)} faces, 256x256 crops; never the test faces",
        "script": "python -m labfast.tools.detector_fit --data-root DATA/300w",
        "opencv": cv2.__version__,
        "date": datetime.date.today().isoformat(),
        "detectors": {},
    }
    for detector in args.detector or detect.DETECTORS:
        record["detectors"][detector] = fit(samples, detector)
        print(detector, json.dumps(record["detectors"][detector]))
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
