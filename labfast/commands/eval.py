"""``labfast eval``: score a checkpoint with a data set's protocol and write ``metrics.json`` and ``ced.png``.

Both files are written only when at least one subset was evaluated, and each is replaced whole: a
failed evaluation (a wrong ``--data-root``, an interrupted run) leaves the last good pair in ``--out``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from labfast import checkpoint, plots
from labfast.atomic import replaced_atomically
from labfast.evaluation.protocols import BOX_SOURCES, DEFAULT_SUBSETS, NORMALISER_NAMES, evaluate, format_table
from labfast.inference.aligner import resolve_device
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
    parser.add_argument("--batch", type=int, default=32, help="faces per forward pass (default 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", default=None, help="folder for metrics.json and ced.png (default: labfast-eval-DATASET in the working directory)")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed annotation instead of skipping it")
    add_threads_argument(parser)


def run(args) -> int:
    from labfast.inference.aligner import default_weights
    from labfast.data import AnnotationError

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
    curves = {subset: np.asarray(row["nmes"]) for subset, row in results.items() if "nmes" in row}
    if not curves:
        logger.error("nothing was evaluated: no subset of %s could be read under %s; %s is left as it was",
                     args.dataset, args.data_root, out)
        return 1
    _write_results(out, {
        "checkpoint": str(weights), "dataset": args.dataset, "flip": args.flip, "boxes": args.boxes,
        "units": {"nme": "% of the normaliser", "fr": "% of faces", "auc": "fraction (0-1)",
                  "nmes": "% of the normaliser, per face", "normaliser": model.scheme.normalizer,
                  "failure_threshold": "NME 10 %"},
        "results": _in_percent(results)}, curves, args.dataset, NORMALISER_NAMES[model.scheme.normalizer])
    print(f"wrote {out / 'metrics.json'} and {out / 'ced.png'}")
    return 0


def _write_results(out: Path, metrics: dict, curves: dict[str, np.ndarray], dataset: str, normaliser: str) -> None:
    """``ced.png`` then ``metrics.json``, each replaced whole (``labfast.atomic``) and only once both
    are drawn, so a failure leaves the last good pair, and ``metrics.json`` (written last) is never
    newer than the plot beside it."""
    with replaced_atomically(out / "metrics.json") as metrics_file, replaced_atomically(out / "ced.png") as plot_file:
        plots.plot_ced(curves, plot_file, title=f"{dataset}: cumulative error distribution", normaliser=normaliser)
        metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")


def _in_percent(results: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s one unit: per-face NMEs in % like the summary NME (``metrics.summarize``)."""
    return {subset: {**row, "nmes": [round(100 * value, 4) for value in row["nmes"]]} if "nmes" in row else row
            for subset, row in results.items()}
