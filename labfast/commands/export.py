"""``labfast export``: a checkpoint to ONNX, TorchScript or a release checkpoint, checked against eager."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from labfast.inference.export import EXAMPLE_BATCH, FORMATS, SUFFIXES, export, parity, release

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="labfast checkpoint to export (default: the weights shipped with labfast)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, help="output file (default: CHECKPOINT-NAME.onnx / .torchscript.pt / .weights.pt "
                                                    "in the working directory)")
    parser.add_argument("--batch", type=int, default=EXAMPLE_BATCH,
                        help=f"batch size of the example input and the parity check (default {EXAMPLE_BATCH}; ONNX "
                             f"keeps the batch axis dynamic and is traced with at least {EXAMPLE_BATCH})")
    parser.add_argument("--half", action="store_true", help="checkpoint format: store the weights in float16")


def run(args: argparse.Namespace) -> int:
    from labfast.checkpoint import load_model
    from labfast.inference.weights import default_weights

    if args.batch < 1:
        raise SystemExit(f"labfast export: --batch must be at least 1, got {args.batch}")
    args.checkpoint = args.checkpoint or default_weights()
    model, info = load_model(args.checkpoint, "cpu")
    out = args.out or str(Path.cwd() / Path(args.checkpoint).with_suffix("").name) + SUFFIXES[args.format]
    if args.format == "checkpoint":
        change = release(model, info, out, half=args.half)
        print(f"wrote {out} ({'float16' if args.half else 'float32'} weights, no training state); "
              f"largest landmark change on a random batch: {change:.3g} px")
        return 0
    path = export(model, args.format, out, batch=args.batch)
    checks = parity(model, args.format, path, batch=args.batch)
    print(f"exported {args.checkpoint} ({info['scheme']}, {info['config'].name}) to {path} as {args.format}")
    print(f"parity against eager PyTorch on a random batch of {args.batch} (max |difference|; eager float32 vs float64 in brackets):")
    for name, check in checks.items():
        unit = " px" if name == "landmarks" else ""
        print(f"  {name}: {check.difference:.3g}{unit} (float32 error {check.float32_error:.3g}{unit}), "
              f"tolerance {check.tolerance:.3g}{unit}: {'ok' if check.passed else 'FAILED'}")
    failed = [name for name, check in checks.items() if not check.passed]
    if failed:
        logger.error("the exported %s differs from eager beyond the tolerance on: %s", args.format, ", ".join(failed))
        return 1
    return 0
