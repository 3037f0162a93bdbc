"""Training configurations as data: one named preset per published experiment.

Loss weights and the discriminator's θ / δ are model settings (``labfast.model.LABConfig``,
overridden as ``model.<field>``). Every field can be overridden from the command line (``labfast train --config 300w --set
epochs=60 --set model.stacks=2``) and the resolved configuration is saved beside each run.

Where LAB (Wu et al., CVPR 2018) states a training detail the preset follows it; where it is
silent (the paper gives no optimiser, learning rate or epoch count for its landmark regressor),
the values are ours and are marked so.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from labfast import config_fields
from labfast.data import AugmentConfig
from labfast.model import LABConfig

_NESTED = ("augment", "model_overrides")


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
    # size epochs and lr milestones to this wall-clock budget, and stop at it (labfast.train.schedule; 0: off)
    time_budget_minutes: float = 0.0
    log_every: int = 10
    train_limit: int = 0  # use only the first N training faces (0: all); for tests and demos
    max_bad_fraction: float = 0.01  # unreadable training images are skipped; more than this share ends the run
    checkpoint_every_steps: int = 0  # also write last.pt every N steps inside an epoch (0: off)
    checkpoint_every_minutes: float = 10.0  # also write last.pt after this much time since the last write (0: off)
    # pose-based data balancing (labfast.data.pose, Feng et al. 2018): draw each training face with a weight
    # inversely proportional to its |yaw| bin's size, at most pose_balance_cap times a frontal face's (0 bins: off)
    pose_balance_bins: int = 0
    pose_balance_cap: float = 4.0
    # stop once validation has not improved for this fraction of the epochs so far, counted from the
    # first lr milestone on (a plateau at the starting rate is what the decay is for; 0: off)
    early_stop_fraction: float = 0.0
    # the step's speed switches (labfast.train.speed; benchmarks/test_train_step_cpu.py measures them)
    threads: int = 0  # torch intra-op threads of the training process (0: torch's default, one per core)
    compile_step: bool = False  # Inductor compiles the step's losses whole, forward and backward (one process)
    inductor_threads: int = 0  # threads of the compiled step's generated loops (0: torch's threads)
    dense_message_passing: bool = False  # intra-level message passing as one dense convolution
    fused_adam: bool = False  # both Adam optimisers as one fused kernel each

    def __post_init__(self) -> None:
        config_fields.check(self)
        self.model_overrides = {
            name: config_fields.coerce(value, config_fields.field_type(LABConfig, name, "model."), f"model.{name}")
            for name, value in self.model_overrides.items()}
        if self.pose_balance_bins < 0 or self.pose_balance_cap < 1:
            raise ValueError(f"TrainConfig.pose_balance_bins must be >= 0 and pose_balance_cap >= 1, got "
                             f"{self.pose_balance_bins} and {self.pose_balance_cap}")
        if not 0.0 <= self.early_stop_fraction < 1.0:
            raise ValueError(f"TrainConfig.early_stop_fraction must be in [0, 1), got {self.early_stop_fraction}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"TrainConfig.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.threads < 0:
            raise ValueError(f"TrainConfig.threads must be 0 (torch's default) or positive, got {self.threads}")
        if self.inductor_threads < 0:
            raise ValueError(f"TrainConfig.inductor_threads must be 0 (torch's threads) or positive, got "
                             f"{self.inductor_threads}")


PRESETS: dict[str, TrainConfig] = {
    "300w": TrainConfig(dataset="300w"),
    "wflw": TrainConfig(dataset="wflw", epochs=60),
    "cofw": TrainConfig(dataset="cofw", epochs=100, lr_milestones=(70, 90)),
    "aflw": TrainConfig(dataset="aflw", epochs=60),
    # LAB Sec. 4.3: COFW / AFLW with boundaries learnt on 300-W (pass estimator_checkpoint).
    "cofw_300w_boundaries": TrainConfig(dataset="cofw", boundary_dataset="300w", epochs=100, lr_milestones=(70, 90)),
    "aflw_300w_boundaries": TrainConfig(dataset="aflw", boundary_dataset="300w"),
    # CPU-sized: the small model, used for the CPU-trained shipped weights and the demo.
    # 128x128 crops (32x32 heatmaps): 4x cheaper than 256. The step's speed switches on: the convolutions
    # on torch's threads, the compiled step's generated loops on one (a second made no measurable difference);
    # benchmarks/test_train_step_cpu.py measures each switch, benchmarks/train_end_to_end_cpu.py the run.
    "300w_cpu": TrainConfig(dataset="300w", model="small", input_size=128, epochs=30, batch_size=16, lr=1e-3,
                            lr_milestones=(20, 26), num_workers=1, compile_step=True, inductor_threads=1,
                            dense_message_passing=True, fused_adam=True),
    # 300w_cpu for faces in the wild (benchmarks/RESULTS.md, "Ablations of the CPU recipe"): pose-based data
    # balancing (the lever that helped in the two-epoch ablations; Wing loss did not), an 8-hour wall-clock
    # budget (epochs and milestones sized to it after two epochs; 300 is the most it may use), stopped early
    # once validation stalls for a tenth of its epochs after the first milestone; the speed switches of 300w_cpu.
    "300w_cpu_wild": TrainConfig(dataset="300w", model="small", input_size=128, epochs=300, batch_size=16, lr=1e-3,
                                 lr_milestones=(200, 260), num_workers=1, time_budget_minutes=480.0,
                                 early_stop_fraction=0.1, pose_balance_bins=5, compile_step=True,
                                 inductor_threads=1, dense_message_passing=True, fused_adam=True),
}


def get(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], model_overrides=dict(PRESETS[name].model_overrides))


def override(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """A copy of ``config`` with ``key=value`` assignments applied, each parsed by its field's type.

    ``augment.<field>`` and ``model.<field>`` (``labfast.model.LABConfig``) reach the nested
    settings; an unknown field raises ``ValueError`` listing the known ones, a value of the wrong
    type one naming the field (``labfast.config_fields.parse``).
    """
    changes: dict[str, Any] = {}
    augment: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"override {assignment!r} is not of the form key=value")
        section, dot, name = key.partition(".")
        if dot and section == "model":
            model[name] = config_fields.parse(text, config_fields.field_type(LABConfig, name, "model."), key)
        elif dot and section == "augment":
            augment[name] = config_fields.parse(text, config_fields.field_type(AugmentConfig, name, "augment."), key)
        elif key in _NESTED:
            raise ValueError(f"{key} is set field by field: {key.split('_')[0]}.<field>=value")
        else:
            changes[key] = config_fields.parse(text, config_fields.field_type(TrainConfig, key), key)
    return dataclasses.replace(config, **changes, augment=dataclasses.replace(config.augment, **augment),
                               model_overrides={**config.model_overrides, **model})


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """The inverse of :func:`to_dict` (JSON lists become tuples through the fields' types)."""
    data = dict(data)
    return TrainConfig(augment=AugmentConfig(**data.pop("augment", {})), **data)
