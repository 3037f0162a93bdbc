"""The device and CPU threads a command runs on, from its ``--device`` and ``--threads``."""
from __future__ import annotations

import torch

from labfast.inference.core import resolve_device
from labfast.inference.runtime import set_threads


def device_from_args(args, command: str) -> torch.device:
    """``args.device`` resolved (one clear line for a device this torch cannot use); on the CPU,
    ``args.threads`` torch threads."""
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise SystemExit(f"labfast {command}: {error}") from error
    if device.type == "cpu":
        set_threads(args.threads)
    return device
