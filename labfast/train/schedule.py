"""The training schedule: the learning rate's step decay, the planned step count, and the schedule
sized to a wall-clock budget (``TrainConfig.time_budget_minutes``).

A machine held for a fixed number of minutes fits a number of epochs that is known only once the
model runs on it. With a budget, ``labfast train`` starts on the preset's schedule, times
the second epoch it runs whole (the first one pays for warm-up: CUDA context, kernel selection,
data-loader start), and then fixes the epoch count so that the remaining epochs end inside the
budget: every epoch's cost is in that measurement (data loading, the steps, validation and the
checkpoint write). The learning-rate milestones keep their place as fractions of the schedule
(the preset's ``(40, 55)`` of 60 epochs become ``(20, 28)`` of 30). Epochs never exceed the
preset's: a budget that fits the whole preset changes nothing. The budget is also a hard stop:
the loop ends at it (after a validation and a checkpoint, see ``labfast.train.loop``) whatever the
estimate said.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import torch.distributed as dist

from labfast.train import presets

logger = logging.getLogger("labfast.train.schedule")

#: Share of the remaining time the epochs are planned to fill: epochs vary a little (validation
#: faces, checkpoint writes, the page cache), and a run that meets the hard stop ends mid-epoch.
PLANNED_SHARE = 0.95


def learning_rate(config: presets.TrainConfig, epoch: int, base: float) -> float:
    """Step decay: divided by 10 at each milestone epoch already reached."""
    return base * 0.1 ** sum(epoch >= milestone for milestone in config.lr_milestones)


def planned_steps(config: presets.TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole schedule (``max_steps`` caps it)."""
    planned = config.epochs * steps_per_epoch
    return min(config.max_steps, planned) if config.max_steps else planned


def fitted_epochs(epochs_done: int, seconds_left: float, seconds_per_epoch: float, preset_epochs: int) -> int:
    """The total epoch count: those done plus as many whole epochs as fit in ``PLANNED_SHARE`` of
    ``seconds_left``, at most the preset's ``preset_epochs`` and at least ``epochs_done``."""
    if seconds_per_epoch <= 0:
        raise ValueError(f"seconds_per_epoch must be positive, got {seconds_per_epoch}")
    more = math.floor(max(seconds_left, 0.0) * PLANNED_SHARE / seconds_per_epoch)
    return max(epochs_done, min(preset_epochs, epochs_done + more))


def scaled_milestones(milestones: tuple[int, ...], preset_epochs: int, epochs: int, epochs_done: int) -> tuple[int, ...]:
    """The preset's milestones at the same fractions of ``epochs`` (rounded), none before
    ``epochs_done`` (the learning rate of epochs already trained is history)."""
    return tuple(max(epochs_done, round(milestone / preset_epochs * epochs)) for milestone in milestones)


class TimeBudget:
    """Sizes ``config``'s schedule to ``config.time_budget_minutes`` counted from construction.

    ``epoch_finished`` is called at the end of each whole epoch (after its validation); at the
    second one it returns the sized config (else ``None``). A resumed run passes the seconds of the
    budget its earlier processes used and whether they sized the schedule already (``last.pt``
    records both), so that it goes on with the same schedule and the rest of the same budget.
    """

    def __init__(self, config: presets.TrainConfig, now: float | None = None, used_seconds: float = 0.0,
                 decided: bool = False):
        if config.time_budget_minutes <= 0:
            raise ValueError(f"time_budget_minutes must be positive, got {config.time_budget_minutes}")
        self.start = time.monotonic() if now is None else now
        self.used_before = used_seconds
        self.deadline = self.start + 60.0 * config.time_budget_minutes - used_seconds
        self.epoch_ends: list[float] = []
        self.decided = decided

    def used_seconds(self, now: float | None = None) -> float:
        """Seconds of the budget used so far, by this process and the ones it resumed."""
        return self.used_before + (time.monotonic() if now is None else now) - self.start

    def epoch_finished(self, config: presets.TrainConfig, epoch: int, images: int,
                       now: float | None = None) -> presets.TrainConfig | None:
        """``epoch`` (0-based) ended at ``now`` after training on ``images`` faces; the sized config
        once two epoch ends are known (the later epoch's wall time is the measurement)."""
        now = time.monotonic() if now is None else now
        self.epoch_ends.append(now)
        if self.decided or len(self.epoch_ends) < 2:
            return None
        self.decided = True
        seconds_per_epoch = self.epoch_ends[-1] - self.epoch_ends[-2]
        epochs_done = epoch + 1
        epochs = fitted_epochs(epochs_done, self.deadline - now, seconds_per_epoch, config.epochs)
        if dist.is_available() and dist.is_initialized():  # every process keeps the first one's measurement
            shared = [epochs, seconds_per_epoch]
            dist.broadcast_object_list(shared, src=0)
            epochs, seconds_per_epoch = shared
        milestones = scaled_milestones(config.lr_milestones, config.epochs, epochs, epochs_done)
        logger.info(
            "time budget %.1f min: epoch %d took %.1f s (%.0f images/s with loading, validation and checkpoint), "
            "%.0f s left: %d epochs in all (preset %d), lr milestones %s (preset %s)",
            (self.deadline - self.start) / 60, epoch, seconds_per_epoch, images / seconds_per_epoch,
            self.deadline - now, epochs, config.epochs, milestones, config.lr_milestones)
        return dataclasses.replace(config, epochs=epochs, lr_milestones=milestones)


def early_stop_due(config: presets.TrainConfig, epochs_done: int, best_epoch: int) -> bool:
    """Whether validation has not improved for ``config.early_stop_fraction`` of the ``epochs_done``
    epochs so far (the best was at 0-based ``best_epoch``; -1: none yet), counted only from the first
    learning-rate milestone on: a plateau at the starting rate is what the decay is for, and a run
    stopped there would never see it. ``early_stop_fraction = 0`` never stops."""
    if config.early_stop_fraction <= 0 or epochs_done < min(config.lr_milestones, default=0):
        return False
    return epochs_done - (best_epoch + 1) >= max(1.0, config.early_stop_fraction * epochs_done)
