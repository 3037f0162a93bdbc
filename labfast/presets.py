"""Training configurations as data: one named preset per published experiment.

Loss weights and the discriminator's θ / δ are model settings (``labfast.model.LABConfig``,
overridden as ``model.<field>``). Every field can be overridden from the command line (``labfast train --config 300w --set
epochs=60 --set model.num_stacks=2``) and the resolved configuration is saved beside each run.

Where LAB (Wu et al., CVPR 2018) states a training detail the preset follows it; where it is
silent (the paper gives no optimiser, learning rate or epoch count for its landmark regressor),
the values are ours and are marked so.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from labfast.data import AugmentConfig


@dataclass
class TrainConfig:
    """Everything one training run needs. Paths are strings so the config round-trips as JSON."""

    dataset: str = "300w"
    data_root: str = ""
    train_subset: str = "train"
    val_fraction: float = 0.05  # held out from the training faces; the test set is never used to tune
    model: str = "paper"  # a labfast.model preset name
    model_overrides: dict[str, Any] = field(default_factory=dict)
    boundary_dataset: str = ""  # cross-data-set: the scheme whose boundaries the estimator predicts
    estimator_checkpoint: str = ""  # cross-data-set: a run whose (frozen) estimator is reused
    input_size: int = 256
    sigma: float = 1.0  # Gaussian of the ground-truth boundary heatmaps, in heatmap pixels (LAB_NOTES)
    epochs: int = 60  # ours: the paper gives no schedule
    batch_size: int = 16
    lr: float = 2e-4  # ours (Adam)
    weight_decay: float = 0.0
    lr_milestones: tuple[int, ...] = (40, 55)  # ours: step decay by 10x
    discriminator_lr: float = 2e-4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 2
    seed: int = 0
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs); for smoke runs
    time_limit_minutes: float = 0.0  # stop (with a checkpoint) after this much training time (0: no limit)
    # size epochs and lr milestones to this wall-clock budget, and stop at it (labfast.schedule; 0: off)
    time_budget_minutes: float = 0.0
    log_every: int = 10
    train_limit: int = 0  # use only the first N training faces (0: all); for tests and demos


PRESETS: dict[str, TrainConfig] = {
    "300w": TrainConfig(dataset="300w"),
    "wflw": TrainConfig(dataset="wflw", epochs=60),
    "cofw": TrainConfig(dataset="cofw", epochs=100, lr_milestones=(70, 90)),
    "aflw": TrainConfig(dataset="aflw", epochs=60),
    # LAB Sec. 4.3: COFW / AFLW with boundaries learnt on 300-W (pass estimator_checkpoint).
    "cofw_300w_boundaries": TrainConfig(dataset="cofw", boundary_dataset="300w", epochs=100, lr_milestones=(70, 90)),
    "aflw_300w_boundaries": TrainConfig(dataset="aflw", boundary_dataset="300w"),
    # CPU-sized: the small model, used for the CPU-trained shipped weights and the demo.
    # 128x128 crops (32x32 heatmaps): 4x cheaper than 256, ~30 images/s on 2 CPU cores.
    "300w_cpu": TrainConfig(dataset="300w", model="small", input_size=128, epochs=30, batch_size=16, lr=1e-3,
                            lr_milestones=(20, 26), num_workers=1),
}


def get(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], model_overrides=dict(PRESETS[name].model_overrides))


def _parse_value(text: str, current: Any) -> Any:
    """Parse ``text`` as the type of ``current`` (JSON for tuples, dicts and bools)."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, tuple):
        kind = float if any(isinstance(item, float) for item in current) else int
        return tuple(kind(part) for part in text.replace(",", " ").split())
    return text


def _parse(key: str, text: str, current: Any) -> Any:
    try:
        return _parse_value(text, current)
    except ValueError as error:
        raise ValueError(f"bad value for {key}: {error}") from error


def override(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply ``key=value`` assignments; ``augment.<field>`` and ``model.<field>`` reach nested settings."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ValueError(f"override {assignment!r} is not of the form key=value")
        if key.startswith("model."):
            try:
                config.model_overrides[key[len("model."):]] = json.loads(value)
            except json.JSONDecodeError:
                config.model_overrides[key[len("model."):]] = value
            continue
        if key.startswith("augment."):
            name = key[len("augment."):]
            if not hasattr(config.augment, name):
                raise ValueError(f"unknown augmentation field {key!r}")
            parsed = _parse(key, value, getattr(config.augment, name))
            config.augment = dataclasses.replace(config.augment, **{name: parsed})  # AugmentConfig is frozen
            continue
        if not hasattr(config, key) or key in ("augment", "model_overrides"):
            raise ValueError(f"unknown config field {key!r}")
        setattr(config, key, _parse(key, value, getattr(config, key)))
    return config


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    data = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
    augment = {key: tuple(value) if isinstance(value, list) else value for key, value in data.pop("augment", {}).items()}
    return TrainConfig(augment=AugmentConfig(**augment), **data)
