"""``labfast train``: a named preset, every field overridable with ``--FIELD VALUE`` or ``--set KEY=VALUE``."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from pathlib import Path

from labfast.train import presets, train

logger = logging.getLogger(__name__)


_SKIPPED_FLAGS = {"augment", "model_overrides"}


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="300w", choices=sorted(presets.PRESETS), help="training preset")
    parser.add_argument("--out", default=None, help="run folder (default runs/<config>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any field, e.g. augment.rotation_deg=20 or model.stacks=2 (repeatable)")
    for config_field in dataclasses.fields(presets.TrainConfig):
        if config_field.name in _SKIPPED_FLAGS:
            continue
        parser.add_argument("--" + config_field.name.replace("_", "-"), dest=f"field_{config_field.name}",
                            default=None, metavar="VALUE", help=f"override {config_field.name}")


def config_from_args(args) -> presets.TrainConfig:
    config = presets.get(args.config)
    assignments = [f"{name[len('field_'):]}={value}" for name, value in vars(args).items()
                   if name.startswith("field_") and value is not None]
    return presets.override(config, assignments + list(args.set))


def run(args) -> int:
    config = config_from_args(args)
    if not config.data_root:
        raise SystemExit("labfast train: --data-root is required (the data set's root folder)")
    out = Path(args.out or Path("runs") / args.config)
    if args.resume:
        saved = presets.from_dict(json.loads((out / "config.json").read_text()))
        if presets.to_dict(saved) != presets.to_dict(config):
            logger.info("resuming with the configuration given now (it differs from %s)", out / "config.json")
    summary = train(config, out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    if "stopped_by" not in summary:
        return 0
    # a run stopped by a signal exits as the shell reports one (128 + its number): not finished
    return 128 + signal.Signals[summary["stopped_by"]].value if summary["stopped_by"] in signal.Signals.__members__ else 1
