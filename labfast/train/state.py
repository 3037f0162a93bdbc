"""A run's state on disk: ``last.pt`` (everything ``--resume`` needs), ``best.pt``, and the RNG.

``last.pt`` holds the model, both optimisers (and the fp16 gradient scaler), the position in the
schedule (epoch, batches of it done, optimiser steps), the best validation NME so far, the
unreadable images counted in the epoch, the RNG and the training configuration, so a killed
run resumed from it ends with the same weights as an uninterrupted one. It is written at each
epoch's end and inside an epoch when :func:`checkpoint_due` says so.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from labfast import checkpoint
from labfast.model import LABConfig, config_by_name
from labfast.train import presets
from labfast.train.step import Trainer

logger = logging.getLogger("labfast.train.state")


@dataclasses.dataclass
class Position:
    """Where a run stands, as ``last.pt`` records it."""

    epoch: int = 0  # the epoch in progress
    batches_done: int = 0  # batches of that epoch already trained on (a resumed run skips them)
    step: int = 0  # optimiser steps so far
    best_nme: float = math.inf  # the best validation NME so far
    unreadable_in_epoch: int = 0  # training images of this epoch that could not be read
    best_epoch: int = -1  # the epoch of best_nme (-1: none yet), for the early-stopping rule
    budget_seconds_used: float = 0.0  # of a time budget (TrainConfig.time_budget_minutes), by all processes
    fitted_epochs: int = 0  # the schedule a time budget sized (0: not sized yet)
    fitted_milestones: tuple[int, ...] = ()


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_last(path: Path, trainer: Trainer, position: Position) -> None:
    """``last.pt``: everything ``--resume`` needs to continue at ``position``."""
    state = {**checkpoint.model_payload(trainer.model), "optimizer": trainer.optimizer.state_dict(),
             **dataclasses.asdict(position), "rng": rng_state(trainer.device),
             "train_config": presets.to_dict(trainer.config)}
    if trainer.discriminator_optimizer is not None:
        state["discriminator_optimizer"] = trainer.discriminator_optimizer.state_dict()
    if trainer.scaler.is_enabled():
        state["grad_scaler"] = trainer.scaler.state_dict()
    checkpoint.save(path, state)


def save_best(path: Path, trainer: Trainer, epoch: int, step: int, val_nme: float) -> None:
    """``best.pt``: the weights of the best validation NME."""
    checkpoint.save(path, {**checkpoint.model_payload(trainer.model), "epoch": epoch, "step": step,
                           "metrics": {"val_nme": val_nme}, "train_config": presets.to_dict(trainer.config)})


def restore_training_state(path: Path, trainer: Trainer) -> Position:
    """Load ``last.pt`` into the model, the optimisers, the scaler and the RNG; returns its position.

    The file is read onto the CPU: the saved RNG states must stay CPU byte tensors
    (``torch.set_rng_state`` and ``torch.cuda.set_rng_state`` accept nothing else), while
    ``load_state_dict`` of the model and the optimisers copies each tensor to the device of its
    parameter.
    """
    state = checkpoint.load(path, map_location="cpu")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.discriminator_optimizer is not None:
        trainer.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
    if trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(state["grad_scaler"])
    set_rng_state(state["rng"], trainer.device)
    # checkpoints from before the best NME, the unreadable count and the budget were saved lack them
    return Position(state["epoch"], state["batches_done"], state["step"], state.get("best_nme", math.inf),
                    state.get("unreadable_in_epoch", 0), state.get("best_epoch", -1),
                    state.get("budget_seconds_used", 0.0), state.get("fitted_epochs", 0),
                    tuple(state.get("fitted_milestones", ())))


def resumed_model_config(path: Path, config: presets.TrainConfig) -> LABConfig:
    """The model configuration ``last.pt`` was trained with: a resumed run goes on with it.

    Rebuilding it from the preset instead would silently change what a run trains whenever a
    default changed since it started (``LABConfig.from_dict`` gives fields a checkpoint predates
    their old meaning, e.g. bilinear ``fusion_resize``).
    """
    saved = LABConfig.from_dict(checkpoint.load(path, map_location="cpu")["config"])
    given = config_by_name(config.model, input_size=config.input_size, **config.model_overrides)
    changed = {k: v for k, v in given.to_dict().items() if saved.to_dict().get(k) != v and k != "name"}
    if changed:
        logger.warning("resuming %s with the model configuration it was trained with; the given one differs in %s",
                       path, ", ".join(f"{k}={v!r} (saved {getattr(saved, k)!r})" for k, v in changed.items()))
    return saved


def checkpoint_due(config: presets.TrainConfig, step: int, seconds_since_write: float) -> bool:
    """A mid-epoch ``last.pt`` is due every ``checkpoint_every_steps`` steps or ``_minutes`` minutes."""
    by_steps = config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0
    by_time = config.checkpoint_every_minutes > 0 and seconds_since_write >= 60 * config.checkpoint_every_minutes
    return by_steps or by_time
