"""Fit the tracker's re-detection threshold on the landmark confidence: ``python -m labfast.tools.tracking_fit``."""
from __future__ import annotations

import argparse
import datetime
import json
import logging
from pathlib import Path

import numpy as np

from labfast.inference.track import TRACKING_FILE


def perturbed_boxes(box: np.ndarray, shifts: np.ndarray, scales: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``box`` moved by ``shifts`` (fractions of its size, in direction ``angles``) and scaled by ``scales``."""
    centre = (box[:2] + box[2:]) / 2
    size = box[2:] - box[:2]
    centres = centre + shifts[:, None] * size * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    halves = size * scales[:, None] / 2
    return np.concatenate([centres - halves, centres + halves], axis=1).astype(np.float32)


def fit_min_confidence(aligner, samples, seed: int = 0) -> dict:
    """Fit the re-detection threshold on annotated faces (module docstring); returns the record."""
    from labfast import metrics

    generator = np.random.default_rng(seed)
    shifts = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0])
    confidences, nmes = [], []
    for sample in samples:
        scales = generator.uniform(0.7, 1.4, len(shifts))
        scales[0] = 1.0
        boxes = perturbed_boxes(sample.box, shifts, scales, generator.uniform(0, 2 * np.pi, len(shifts)))
        faces = aligner.predict(sample.image_path, boxes=boxes)
        predicted = np.stack([face.landmarks for face in faces])
        truth = np.repeat(sample.landmarks[None], len(faces), axis=0)
        nmes.extend(metrics.nme(predicted, truth, aligner.scheme))
        confidences.extend(face.confidence for face in faces)
    confidences, nmes = np.asarray(confidences), np.asarray(nmes)
    lost = nmes > 0.10
    candidates = np.unique(confidences)
    youden = [((confidences[~lost] >= t).mean() if (~lost).any() else 0) - ((confidences[lost] >= t).mean() if lost.any() else 0)
              for t in candidates]
    best = int(np.argmax(youden))
    threshold = float(candidates[best])
    return {
        "min_confidence": round(threshold, 4),
        "kept_predictions_above": round(float((confidences[~lost] >= threshold).mean()), 4),
        "lost_predictions_below": round(float((confidences[lost] < threshold).mean()), 4),
        "predictions": int(len(nmes)), "lost": int(lost.sum()), "faces": len(samples),
        "shifts": shifts.tolist(), "scales": "uniform 0.7-1.4 (1 for the unshifted box)",
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from labfast.train import presets
    from labfast.inference.aligner import FaceAligner
    from labfast.train.faces import read_training_faces

    parser = argparse.ArgumentParser(description="fit the tracker's re-detection threshold on held-out training faces")
    parser.add_argument("--data-root", required=True, help="300-W in its official layout")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    parser.add_argument("--out", default=str(TRACKING_FILE))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small batches: a second thread only spin-waits on a shared CPU
    aligner = FaceAligner(args.checkpoint, device="cpu")
    logging.getLogger("labfast.inference.aligner").setLevel(logging.ERROR)  # the moved boxes leave the crop on purpose
    config = presets.override(presets.get("300w_cpu"), [f"data_root={args.data_root}"])
    _, held_out = read_training_faces(config)  # the validation split the shipped weights were selected on
    record = fit_min_confidence(aligner, held_out)
    record.update({
        "fitted_on": f"the {len(held_out)} held-out 300-W training faces of the 300w_cpu preset's validation split "
                     f"(val_fraction {config.val_fraction}, seed {config.seed}); never the test faces",
        "checkpoint": Path(aligner.checkpoint).name,
        "script": "python -m labfast.tools.tracking_fit --data-root DATA/300w",
        "date": datetime.date.today().isoformat(),
    })
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
