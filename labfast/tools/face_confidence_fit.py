"""Fit the face-or-not threshold on the landmark confidence: ``python -m labfast.tools.face_confidence_fit``.

:attr:`labfast.inference.aligner.Face.confidence` is high when the predicted landmarks sit on the
predicted facial boundaries, which happens on faces; on a box that holds no face the boundaries and
the landmarks disagree. The threshold is fitted on two sets the shipped weights never trained on:

- **faces**: the 300-W training faces that training holds out for validation (``val_fraction`` and
  ``seed`` of the ``300w_cpu`` preset: 101 faces of LFPW, HELEN and AFW), each from the YuNet box
  that matches its annotation (the box a user's photo gets; faces YuNet misses are counted, not
  scored). Never the in-the-wild development faces: they judge the weights and this threshold;
- **non-faces**: boxes on photos that overlap no face: random squares of 8-35 % of the shorter side
  on the 300-W whole photos (``300w_fullres_samples`` and AFW), away from every annotated face and
  every YuNet detection down to score 0.3, plus YuNet's own detections of score 0.3-0.6 that overlap
  no face (its false detections below its default threshold).

The threshold is the smaller of two: the confidence under which ``NON_FACE_DROP`` of the non-face
boxes fall, and the largest that drops at most ``FALSE_DROP`` of the faces (a real face lost is
worse than a false one kept: the detector's score, ``--min-score``, is the other filter). The
non-face rule leads: the held-out faces come from the photos the weights were trained on (LFPW,
HELEN, AFW) and score higher than faces in the wild, so a threshold set close under them would
drop many faces in the wild. The record, with both rates, goes to
``labfast/detectors/face_confidence.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import cv2
import numpy as np

from labfast.data import box_from_landmarks, read_image_bgr, read_pts
from labfast.inference import detect
from labfast.inference.aligner import FACE_CONFIDENCE_FILE

#: The training preset whose held-out validation faces are the faces.
PRESET = "300w_cpu"
#: At most this share of the faces may fall below the threshold.
FALSE_DROP = 0.02
#: The share of the non-face boxes the threshold drops, where it drops no more than FALSE_DROP of the faces.
NON_FACE_DROP = 0.8
#: YuNet score down to which detections count as possible faces when placing the non-face boxes.
LOW_SCORE = 0.3


def face_confidences(aligner, faces: list) -> tuple[np.ndarray, int]:
    """Confidences of the annotated ``faces`` (``labfast.data.Sample``) from their matching YuNet
    boxes, and how many faces YuNet missed."""
    confidences, missed = [], 0
    for face in faces:
        image = read_image_bgr(face.image_path)
        truth = box_from_landmarks(face.landmarks)
        found = detect.detect_landmark_boxes(image)
        index = detect.match(found.boxes, truth) if len(found) else None
        if index is None:
            missed += 1
            continue
        confidences.append(aligner.predict(image, boxes=found.boxes[index:index + 1])[0].confidence)
    return np.asarray(confidences), missed


def annotated_boxes(image_path: Path) -> list[np.ndarray]:
    """Every annotated face of a 300-W whole photo (``NAME_1.pts``, ``NAME_2.pts`` ... beside it)."""
    stem = image_path.stem.rsplit("_", 1)[0]
    return [box_from_landmarks(read_pts(path) - 1) for path in sorted(image_path.parent.glob(f"{stem}_*.pts"))]


def non_face_confidences(aligner, photos: list[Path], per_photo: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences on random boxes away from every face, and on YuNet's low-score detections that overlap no face."""
    generator = np.random.default_rng(seed)
    random_boxes, low_scores = [], []
    for path in photos:
        image = cv2.imread(str(path))
        height, width = image.shape[:2]
        found = detect.detect_landmark_boxes(image, min_score=LOW_SCORE)
        faces = np.array(annotated_boxes(path) + list(found.boxes[found.scores >= detect.YUNET_SCORE_THRESHOLD]),
                         np.float64).reshape(-1, 4)
        for box, score in zip(found.boxes, found.scores):
            if score < detect.YUNET_SCORE_THRESHOLD and not _overlaps(faces, box):
                low_scores.append(aligner.predict(image, boxes=box[None])[0].confidence)
        faces = np.concatenate([faces, found.boxes]).reshape(-1, 4)  # random boxes keep off low-score ones too
        boxes = []
        for _ in range(50 * per_photo):
            side = generator.uniform(0.08, 0.35) * min(height, width)
            x0, y0 = generator.uniform(0, width - side), generator.uniform(0, height - 1.2 * side)
            box = np.array([x0, y0, x0 + side, y0 + side * generator.uniform(0.9, 1.2)])
            if not _overlaps(faces, box):
                boxes.append(box)
            if len(boxes) == per_photo:
                break
        if boxes:
            random_boxes.extend(face.confidence for face in aligner.predict(image, boxes=np.array(boxes)))
    return np.asarray(random_boxes), np.asarray(low_scores)


def _overlaps(boxes: np.ndarray, box: np.ndarray) -> bool:
    return bool(len(boxes)) and bool((detect.box_iou(boxes, box) > 0).any())


def fit(faces: np.ndarray, non_faces: np.ndarray) -> dict:
    """The threshold (module docstring) and its rates on ``faces`` and ``non_faces``."""
    allowed = int(np.floor(FALSE_DROP * len(faces)))
    threshold = min(float(np.quantile(non_faces, NON_FACE_DROP)), float(np.sort(faces)[allowed]))
    return {"min_confidence": round(threshold, 4),
            "false_drop": round(float((faces < threshold).mean()), 4),
            "non_faces_dropped": round(float((non_faces < threshold).mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    import torch

    from labfast.inference.aligner import FaceAligner

    parser = argparse.ArgumentParser(description="fit the face-or-not threshold on the landmark confidence")
    parser.add_argument("--data-root", required=True, help="the shared data folder (300w, 300w_fullres_samples)")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    parser.add_argument("--afw-photos", type=int, default=40, help="AFW whole photos to place non-face boxes on")
    parser.add_argument("--per-photo", type=int, default=8, help="random non-face boxes per photo")
    parser.add_argument("--out", default=str(FACE_CONFIDENCE_FILE))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small batches: a second thread only spin-waits on a shared CPU
    root = Path(args.data_root)
    aligner = FaceAligner(args.checkpoint, device="cpu")
    from labfast.train.faces import held_out_faces

    faces, missed = face_confidences(aligner, held_out_faces(PRESET, root / "300w"))
    photos = sorted((root / "300w_fullres_samples").glob("*/testset/*.[jp][pn]g")) + \
        sorted((root / "300w" / "afw").glob("*.jpg"))[: args.afw_photos]
    random_boxes, low_scores = non_face_confidences(aligner, photos, args.per_photo, seed=0)
    record = fit(faces, np.concatenate([random_boxes, low_scores]))
    record.update({
        "faces": len(faces), "faces_missed_by_yunet": missed,
        "face_percentiles_1_5_50": np.percentile(faces, [1, 5, 50]).round(4).tolist(),
        "random_boxes": len(random_boxes), "low_score_detections": len(low_scores),
        "random_box_percentiles_50_95_99": np.percentile(random_boxes, [50, 95, 99]).round(4).tolist(),
        "rule": f"the confidence under which {NON_FACE_DROP:.0%} of the non-face boxes fall, or lower where "
                f"that would drop more than {FALSE_DROP:.0%} of the faces",
        "fitted_on": f"the {PRESET} preset's held-out 300-W validation faces (YuNet boxes); random boxes away "
                     f"from faces and YuNet detections of score {LOW_SCORE}-0.6 overlapping no face, on "
                     f"{len(photos)} 300-W whole photos",
        "checkpoint": Path(aligner.checkpoint).name,
        "script": "python -m labfast.tools.face_confidence_fit --data-root DATA",
        "date": datetime.date.today().isoformat(),
    })
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
