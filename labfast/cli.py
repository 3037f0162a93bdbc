"""The ``labfast`` command. Each sub-command lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their
sub-command runs, so ``labfast --help`` stays fast."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = {
    "demo": ("labfast.commands.demo", "the main job: evaluate (or train) LAB on the bundled real faces and write a report"),
    "train": ("labfast.commands.train", "train LAB with a named preset; every field overridable"),
    "eval": ("labfast.commands.eval", "evaluate a checkpoint with the data set's protocol (NME, FR, AUC, CED)"),
    "predict": ("labfast.commands.predict", "landmarks for images, folders or videos"),
    "export": ("labfast.commands.export", "export a checkpoint to ONNX or TorchScript, checked against eager"),
    "bench": ("labfast.commands.bench", "measure training, inference and kernel speed on this device"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labfast", description="Look at Boundary face alignment.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors: no progress, no info lines")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # The chosen command is the first argument that names one (``labfast -v predict ...`` too).
    chosen = next((argument for argument in sys.argv[1:] if argument in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module)
        # -v after the command as well; SUPPRESS keeps a -v given before it when absent here.
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages")
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                         help="only warnings and errors: no progress, no info lines")
        if name == chosen:  # only the chosen command's options
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args.module)
    from labfast.checkpoint import CheckpointError

    try:
        return int(module.run(args) or 0)
    except (CheckpointError, FileNotFoundError) as error:  # bad input: one line, no traceback (-v shows it)
        if args.verbose:
            raise
        print(f"labfast {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
