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
from labfast.evaluation.protocols import BOX_SOURCES, DEFAULT_SUBSETS, MISSED_NME, NORMALISER_NAMES, evaluate, format_table
from labfast.commands.device import device_from_args
from labfast.inference.runtime import add_threads_argument

logger = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None, help="a labfast checkpoint (default: the weights shipped with labfast)")
    parser.add_argument("--dataset", required=True, choices=sorted([*DEFAULT_SUBSETS, "wild"]),
                        help="a data set's test protocol, or wild: a folder of images with .pts files, end to end "
                             "with the detector, against dlib where installed (labfast.evaluation.wild)")
    parser.add_argument("--data-root", required=True, help="the data set's root folder (or .mat file for COFW)")
    parser.add_argument("--subset", action="append", help="subset(s) to evaluate (default: all of the protocol's)")
    parser.add_argument("--flip", action="store_true", help="average with the prediction for the mirrored face")
    parser.add_argument("--boxes", choices=BOX_SOURCES, default=None,
                        help="crop from the annotated boxes (gt, the default) or from the face detector's (detector; "
                             "missed faces fail); wild always uses the detector")
    parser.add_argument("--batch", type=int, default=32, help="faces per forward pass (default 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", default=None, help="folder for metrics.json and ced.png (default: labfast-eval-DATASET in the working directory)")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed annotation instead of skipping it")
    parser.add_argument("--latency", type=int, nargs="?", const=60, default=0, metavar="ROUNDS",
                        help="wild: also time each method per face given a box, median of ROUNDS rounds (default 60)")
    add_threads_argument(parser)


def run(args) -> int:
    from labfast.data import AnnotationError
    from labfast.inference.weights import default_weights

    if args.dataset == "wild":
        return _run_wild(args)
    if args.latency:
        raise SystemExit("labfast eval: --latency times labfast against dlib in the wild protocol (--dataset wild)")
    args.boxes = args.boxes or "gt"
    device = device_from_args(args, "eval")
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


def _run_wild(args) -> int:
    """``--dataset wild`` (``labfast.evaluation.wild``): labfast, and dlib where installed, on the folder's faces."""
    from labfast.evaluation import wild
    from labfast.inference.aligner import FaceAligner

    if args.boxes == "gt" or args.subset:
        raise SystemExit("labfast eval --dataset wild: faces come from the detector, end to end; --boxes gt and --subset do not apply")
    # every detection is scored, as the protocol (and dlib beside it) does: no face-or-not filter
    aligner = FaceAligner(args.checkpoint, device=args.device, batch_size=args.batch, threads=args.threads, flip=args.flip,
                          min_confidence=0)
    reference = wild.dlib_aligner()
    if reference is None:
        logger.warning("dlib is not installed: labfast alone (pip install labfast[benchmark] adds dlib's predictor)")
    try:
        report = wild.evaluate(aligner, Path(args.data_root), reference, latency_rounds=args.latency, strict=args.strict)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"labfast eval: {error}") from None
    print(f"wild — {args.data_root}: {len(report.names)} faces; labfast {aligner.checkpoint} with {aligner.detector}"
          f"{f', dlib {reference.version} with its HOG detector' if reference else ''}; inter-ocular NME")
    print(wild.format_table(report))
    out = Path(args.out) if args.out else Path.cwd() / "labfast-eval-wild"
    if not report.names:
        logger.error("nothing was evaluated: no readable face under %s; %s is left as it was", args.data_root, out)
        return 1
    _write_results(out, {"checkpoint": aligner.checkpoint, "dataset": "wild", "data_root": str(args.data_root),
                         "flip": args.flip, "boxes": "detector", "detector": aligner.detector,
                         "units": {"nme": "% of the inter-ocular distance", "fr": "% of faces, a miss fails",
                                   "auc": "fraction (0-1)", "differences": "percentage points, labfast - dlib"},
                         "results": wild.to_json(report)},
                   wild.curves(report), "wild", NORMALISER_NAMES["inter_ocular"], missed_nme=MISSED_NME)
    print(f"wrote {out / 'metrics.json'} and {out / 'ced.png'}")
    return 0


def _write_results(out: Path, metrics: dict, curves: dict[str, np.ndarray], dataset: str, normaliser: str,
                   missed_nme: float | None = None) -> None:
    """``ced.png`` then ``metrics.json``, each replaced whole (``labfast.atomic``) and only once both
    are drawn, so a failure leaves the last good pair, and ``metrics.json`` (replaced last) is never
    newer than the plot beside it."""
    with replaced_atomically(out / "metrics.json") as metrics_file, replaced_atomically(out / "ced.png") as plot_file:
        plots.plot_ced(curves, plot_file, title=f"{dataset}: cumulative error distribution", normaliser=normaliser,
                       missed_nme=missed_nme)
        metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")


def _in_percent(results: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s one unit: per-face NMEs in % like the summary NME (``metrics.summarize``)."""
    return {subset: {**row, "nmes": [round(100 * value, 4) for value in row["nmes"]]} if "nmes" in row else row
            for subset, row in results.items()}
