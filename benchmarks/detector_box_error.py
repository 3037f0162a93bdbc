"""Measure YuNet's face-box error against the 68-point landmark box on the 300-W training faces.

    python benchmarks/detector_box_error.py [../shared/data/300w]

Runs ``cv2.FaceDetectorYN`` (the model in ``../shared/models/yunet``) on every training crop
(``read_300w(root, "train")``: lfpw/trainset, helen/trainset, afw — never the test faces), keeps
the detection whose box overlaps the landmark-extent box most (IoU >= 0.3, else the face counts as
missed), fits the detector-box -> landmark-box conversion (median centre offset and size ratios,
relative to the detector box) and prints what remains after it: the landmark box's centre error as a
fraction of its crop side ``max(w, h)`` and the log of the side ratio. Those are the figures behind
``AugmentConfig.box_shift_std`` / ``box_scale_std``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from labfast.data import read_300w, read_image_bgr

MODEL = Path(__file__).resolve().parents[2] / "shared" / "models" / "yunet" / "face_detection_yunet_2026may.onnx"


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (F, 4) with box ``b`` (4,), all ``x0, y0, x1, y1``."""
    x0, y0 = np.maximum(a[:, 0], b[0]), np.maximum(a[:, 1], b[1])
    x1, y1 = np.minimum(a[:, 2], b[2]), np.minimum(a[:, 3], b[3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def main(root: str) -> None:
    detector = cv2.FaceDetectorYN.create(str(MODEL), "", (256, 256), 0.6, 0.3, 50)
    rows, missed = [], 0
    for sample in read_300w(root, "train"):
        image = read_image_bgr(sample.image_path)
        detector.setInputSize((image.shape[1], image.shape[0]))
        _, found = detector.detect(image)
        if found is None:
            missed += 1
            continue
        boxes = np.concatenate([found[:, :2], found[:, :2] + found[:, 2:4]], axis=1)
        overlaps = iou(boxes, sample.box)
        if overlaps.max() < 0.3:
            missed += 1
            continue
        rows.append((boxes[overlaps.argmax()], sample.box))
    detected = np.array([r[0] for r in rows], np.float64)
    truth = np.array([r[1] for r in rows], np.float64)
    det_w, det_h = detected[:, 2] - detected[:, 0], detected[:, 3] - detected[:, 1]
    det_cx, det_cy = (detected[:, 0] + detected[:, 2]) / 2, (detected[:, 1] + detected[:, 3]) / 2
    gt_w, gt_h = truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1]
    gt_cx, gt_cy = (truth[:, 0] + truth[:, 2]) / 2, (truth[:, 1] + truth[:, 3]) / 2
    # conversion: landmark box = detector centre + (dx w, dy h), size (sw w, sh h); medians
    dx, dy = np.median((gt_cx - det_cx) / det_w), np.median((gt_cy - det_cy) / det_h)
    sw, sh = np.median(gt_w / det_w), np.median(gt_h / det_h)
    conv_cx, conv_cy = det_cx + dx * det_w, det_cy + dy * det_h
    conv_w, conv_h = sw * det_w, sh * det_h
    converted = np.stack([conv_cx - conv_w / 2, conv_cy - conv_h / 2, conv_cx + conv_w / 2, conv_cy + conv_h / 2], 1)
    ious = np.array([iou(c[None], t)[0] for c, t in zip(converted, truth)])
    side_gt = np.maximum(gt_w, gt_h)  # the crop follows the box centre and its longer side
    side_conv = np.maximum(conv_w, conv_h)
    shift_x, shift_y = (conv_cx - gt_cx) / side_gt, (conv_cy - gt_cy) / side_gt
    log_scale = np.log(side_conv / side_gt)
    robust = lambda v: 1.4826 * np.median(np.abs(v - np.median(v)))  # noqa: E731  (std of a normal from its MAD)
    print(f"faces {len(rows) + missed}, detected {len(rows)}, missed {missed}")
    print(f"conversion: centre dx {dx:+.4f} w, dy {dy:+.4f} h; width {sw:.4f} w, height {sh:.4f} h")
    print(f"converted vs landmark box IoU: median {np.median(ious):.3f}, 10th percentile {np.percentile(ious, 10):.3f}")
    for name, values in (("shift x / side", shift_x), ("shift y / side", shift_y), ("log side ratio", log_scale)):
        print(f"{name:>15}: mean {values.mean():+.4f} std {values.std():.4f} robust std {robust(values):.4f} "
              f"p5 {np.percentile(values, 5):+.4f} p95 {np.percentile(values, 95):+.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared" / "data" / "300w"))
