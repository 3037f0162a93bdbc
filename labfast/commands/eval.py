"""``labfast eval``: score a checkpoint with a data set's protocol and write ``metrics.json`` and ``ced.png``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from labfast import checkpoint, plots
from labfast.evaluation.protocols import BOX_SOURCES, DEFAULT_SUBSETS, NORMALISER_NAMES, evaluate, format_table
from labfast.inference.core import resolve_device
from labfast.inference.runtime import add_threads_argument, set_threads

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None, help="a labfast checkpoint (default: the weights shipped with labfast)")
    parser.add_argument("--dataset", required=True, choices=sorted(DEFAULT_SUBSETS))
    parser.add_argument("--data-root", required=True, help="the data set's root folder (or .mat file for COFW)")
    parser.add_argument("--subset", action="append", help="subset(s) to evaluate (default: all of the protocol's)")
    parser.add_argument("--flip", action="store_true", help="average with the prediction for the mirrored face")
    parser.add_argument("--boxes", choices=BOX_SOURCES, default="gt",
                        help="crop from the annotated boxes (gt) or from the face detector's (detector; missed faces fail)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", default=None, help="folder for metrics.json and ced.png (default: labfast-eval-DATASET in the working directory)")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed annotation instead of skipping it")
    add_threads_argument(parser)


def run(args) -> int:
    from labfast.data import AnnotationError
    from labfast.inference.weights import default_weights

    device = resolve_device(args.device)
    if device.type == "cpu":
        set_threads(args.threads)
    weights = args.checkpoint or default_weights()
    model, info = checkpoint.load_model(weights, device=device)
    if model.scheme.name != args.dataset:
        raise SystemExit(f"labfast eval: {weights} predicts the {model.scheme.name} scheme, not {args.dataset}")
    subsets = tuple(args.subset or DEFAULT_SUBSETS[args.dataset])
    try:
        results = evaluate(model, args.dataset, Path(args.data_root), subsets, device, batch_size=args.batch,
                           flip=args.flip, boxes=args.boxes, strict=args.strict)
    except AnnotationError as error:
        raise SystemExit(f"labfast eval: {error} (--strict; without it malformed annotations are skipped and counted)") from None
    print(f"{args.dataset} — {weights}, {args.boxes} boxes{' (flip averaged)' if args.flip else ''}")
    print(format_table(args.dataset, results))
    out = Path(args.out) if args.out else Path.cwd() / f"labfast-eval-{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({
        "checkpoint": str(weights), "dataset": args.dataset, "flip": args.flip, "boxes": args.boxes,
        "units": {"nme": "% of the normaliser", "fr": "% of faces", "auc": "fraction (0-1)",
                  "nmes": "% of the normaliser, per face", "normaliser": model.scheme.normalizer,
                  "failure_threshold": "NME 10 %"},
        "results": _in_percent(results)}, indent=2) + "\n")
    written = [out / "metrics.json"]
    curves = {subset: np.asarray(row["nmes"]) for subset, row in results.items() if "nmes" in row}
    if curves:
        plots.plot_ced(curves, out / "ced.png", title=f"{args.dataset}: cumulative error distribution",
                       normaliser=NORMALISER_NAMES[model.scheme.normalizer])
        written.append(out / "ced.png")
    print(f"wrote {' and '.join(str(path) for path in written)}")
    if not curves:
        logger.error("nothing was evaluated: no subset of %s could be read under %s", args.dataset, args.data_root)
        return 1
    return 0


def _in_percent(results: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s one unit: per-face NMEs in % like the summary NME (``metrics.summarize``)."""
    return {subset: {**row, "nmes": [round(100 * value, 4) for value in row["nmes"]]} if "nmes" in row else row
            for subset, row in results.items()}
