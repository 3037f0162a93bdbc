"""``labfast eval``: a checkpoint on a data set's test protocol, as the paper's tables print it.

    labfast eval --checkpoint best.pt --dataset 300w --data-root DATA/300w [--subset common] [--flip]

Prints one row per subset (NME %, FR@10 %, AUC@10) — 300-W common / challenging / full (and the
300-W test set on request), WFLW full and its six attribute subsets, COFW, AFLW full / frontal —
and writes ``metrics.json`` plus a CED plot (``ced.png``) to ``--out``.

Errors are measured in the original image: predictions in crop coordinates are mapped back with
the inverse of the crop's affine transform before the NME is taken against the annotation.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from labfast import checkpoint, data, metrics, plots

logger = logging.getLogger("labfast.evaluate")

DEFAULT_SUBSETS = {
    "300w": ("common", "challenging", "full"),
    "wflw": ("full", "pose", "expression", "illumination", "makeup", "occlusion", "blur"),
    "cofw": ("test",),
    "aflw": ("full", "frontal"),
}


def read_test_faces(dataset: str, root: Path, subset: str) -> list:
    if dataset == "300w":
        return data.read_300w(root, subset=subset)
    if dataset == "wflw":
        return data.read_wflw(root, split="test", subset=None if subset == "full" else subset)
    if dataset == "cofw":
        return data.read_cofw(root / "COFW_test_color.mat" if root.is_dir() else root)
    if dataset == "aflw":
        return data.read_aflw(root, split=subset)
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DEFAULT_SUBSETS)}")


def invert_affine(affine: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of 2×3 affine matrices ``(N, 2, 3)``."""
    linear, offset = affine[:, :, :2], affine[:, :, 2:]
    inverse = torch.linalg.inv(linear)
    return torch.cat([inverse, -inverse @ offset], dim=2)


def apply_affine(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``(N, L, 2)`` points through ``(N, 2, 3)`` matrices."""
    return points @ affine[:, :, :2].transpose(1, 2) + affine[:, :, 2].unsqueeze(1)


@torch.no_grad()
def predict_faces(model, samples: list, device: torch.device, batch_size: int = 32, flip: bool = False,
                  progress: bool = True) -> np.ndarray:
    """Landmarks ``(N, L, 2)`` for annotated faces, in original image coordinates.

    With ``flip``, the prediction is averaged with the one for the mirrored crop, mapped back
    through ``x -> W - 1 - x`` and the scheme's flip permutation (test-time augmentation).
    """
    input_size = model.config.input_size
    dataset = data.FaceDataset(samples, model.scheme, input_size=input_size, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    permutation = torch.tensor(model.scheme.flip_permutation)
    predictions = []
    for batch in tqdm(loader, desc="faces", unit="batch", disable=not progress, leave=False):
        images = batch["image"].to(device)
        landmarks = model(images).landmarks.float().cpu()
        if flip:
            mirrored = model(images.flip(-1)).landmarks.float().cpu()
            unflipped = torch.empty_like(mirrored)
            unflipped[:, permutation] = mirrored  # mirrored point i is the original's permutation[i]
            unflipped[..., 0] = input_size - 1 - unflipped[..., 0]
            landmarks = (landmarks + unflipped) / 2
        predictions.append(apply_affine(landmarks, invert_affine(batch["affine"].double()).float()))
    return torch.cat(predictions).numpy()


def evaluate(model, dataset: str, root: Path, subsets: tuple[str, ...], device: torch.device,
             batch_size: int = 32, flip: bool = False) -> dict[str, Any]:
    """NME / FR / AUC per subset; a subset whose files are absent is reported, not skipped silently."""
    results: dict[str, Any] = {}
    for subset in subsets:
        try:
            samples = read_test_faces(dataset, root, subset)
        except FileNotFoundError as error:
            results[subset] = {"missing": str(error)}
            logger.warning("%s %s: not evaluated (%s)", dataset, subset, error)
            continue
        predicted = predict_faces(model, samples, device, batch_size=batch_size, flip=flip)
        truth = np.stack([sample.landmarks for sample in samples])
        boxes = np.stack([sample.box for sample in samples])
        nmes = metrics.nme(predicted, truth, model.scheme, boxes=boxes)
        results[subset] = {**metrics.summarize(nmes), "faces": len(samples), "nmes": nmes.tolist()}
    return results


def format_table(dataset: str, results: dict[str, Any]) -> str:
    lines = [f"{'subset':<14}{'faces':>7}{'NME %':>9}{'FR@10 %':>10}{'AUC@10':>9}"]
    for subset, row in results.items():
        if "missing" in row:
            lines.append(f"{subset:<14}{'—':>7}  not evaluated: {row['missing']}")
            continue
        lines.append(f"{subset:<14}{row['faces']:>7}{row['nme']:>9.2f}{row['fr']:>10.2f}{row['auc']:>9.4f}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a labfast checkpoint (best.pt / last.pt / shipped weights)")
    parser.add_argument("--dataset", required=True, choices=sorted(DEFAULT_SUBSETS))
    parser.add_argument("--data-root", required=True, help="the data set's root folder (or .mat file for COFW)")
    parser.add_argument("--subset", action="append", help="subset(s) to evaluate (default: all of the protocol's)")
    parser.add_argument("--flip", action="store_true", help="average with the prediction for the mirrored face")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", default=None, help="folder for metrics.json and ced.png (default: beside the checkpoint)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(args) -> int:
    device = resolve_device(args.device)
    model, info = checkpoint.load_model(args.checkpoint, device=device)
    if model.scheme.name != args.dataset:
        raise SystemExit(f"labfast eval: {args.checkpoint} predicts the {model.scheme.name} scheme, not {args.dataset}")
    subsets = tuple(args.subset or DEFAULT_SUBSETS[args.dataset])
    results = evaluate(model, args.dataset, Path(args.data_root), subsets, device, batch_size=args.batch, flip=args.flip)
    print(f"{args.dataset} — {args.checkpoint}{' (flip averaged)' if args.flip else ''}")
    print(format_table(args.dataset, results))
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval_{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"checkpoint": str(args.checkpoint), "dataset": args.dataset,
                                                  "flip": args.flip, "results": results}, indent=2) + "\n")
    curves = {subset: np.asarray(row["nmes"]) for subset, row in results.items() if "nmes" in row}
    if curves:
        plots.plot_ced(curves, out / "ced.png", title=f"{args.dataset}: cumulative error distribution")
    print(f"wrote {out / 'metrics.json'} and {out / 'ced.png'}")
    return 0
