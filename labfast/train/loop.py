"""``labfast train``: one training loop, readable top to bottom, single process or ``torchrun``.

    labfast train --config 300w --data-root DATA/300w --out runs/300w [--epochs 60] [--set augment.rotation_deg=20]
    torchrun --nproc-per-node 8 -m labfast train --config wflw --data-root DATA/WFLW

The step itself (LAB Sec. 3: losses, ground truth on the device, both optimiser steps) is
``labfast.train.step``; the run's state on disk (``last.pt``, ``best.pt``, RNG, resume) is
``labfast.train.state``; the faces, their validation split and the epoch's loader are
``labfast.train.faces``; the processes of a ``torchrun`` run are ``labfast.train.runtime``.

Run folder: ``config.json`` (the resolved configuration), ``metrics.csv`` and ``tensorboard/``
(scalars), ``learning_curve.png`` (drawn after each validation), ``last.pt`` and ``best.pt`` (atomic writes; best by validation NME). ``last.pt`` is
written at each epoch's end and inside an epoch every ``checkpoint_every_steps`` steps or
``checkpoint_every_minutes`` minutes. ``--resume`` continues from ``last.pt`` exactly: weights,
optimiser states, epoch, the position inside the epoch and the RNG, so a killed run ends with the
same weights as an uninterrupted one.

A training image that cannot be read is skipped (its batch trains on the rest) and named in the
log; the run stops with an error only when more than ``max_bad_fraction`` of the training images
fail in one epoch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from labfast import data
from labfast.train import build, faces, presets, sampling, schedule, state, step, stopping
from labfast.train.runtime import (Runtime, any_process, barrier, close_runtime, count_unreadable, init_runtime,
                                   main_says)
from labfast.train.scalars import ScalarLog

logger = logging.getLogger("labfast.train.loop")


def train(config: presets.TrainConfig, out_dir: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Train LAB; returns the final summary (best validation NME, steps, run folder)."""
    runtime = init_runtime()
    try:
        with stopping.stop_on_signals() as stop:
            run = _start(config, Path(out_dir), resume, runtime, stop)
            while not run.finished and not run.stopped and run.position.epoch < run.config.epochs:
                epoch_done = _train_epoch(run)
                if not run.stopped:
                    _end_epoch(run, epoch_done)
        run.close()
        summary = {"run": str(run.out), "steps": run.position.step, "best_val_nme": run.position.best_nme}
        if run.stopped:
            summary["stopped_by"] = signal.Signals(stop.signal).name if stop.signal else "another process's signal"
        return summary
    finally:
        close_runtime(runtime)


@dataclasses.dataclass
class _Run:
    """Everything the loop carries from one epoch to the next."""

    out: Path
    runtime: Runtime
    trainer: step.Trainer
    position: state.Position
    train_set: data.FaceDataset
    sampler: DistributedSampler | sampling.BalancedSampler
    val_faces: list
    steps_per_epoch: int
    total_steps: int
    writer: ScalarLog | None  # the main process's
    progress: tqdm
    deadline: float  # time.monotonic() at which the run stops (time limit or budget)
    budget: schedule.TimeBudget | None
    stop: stopping.StopRequest
    finished: bool = False
    stopped: bool = False  # by a signal: last.pt holds the step it stopped at
    timed_out: bool = False
    last_written: float = dataclasses.field(default_factory=time.monotonic)  # of last.pt

    @property
    def config(self) -> presets.TrainConfig:
        return self.trainer.config

    def close(self) -> None:
        self.progress.close()
        if self.writer is not None:
            self.writer.close()


def _start(config: presets.TrainConfig, out: Path, resume: bool, runtime: Runtime, stop: stopping.StopRequest) -> _Run:
    """Faces, model, optimisers (restored from ``last.pt`` with ``resume``), sampler, clock and logs."""
    torch.manual_seed(config.seed + runtime.rank)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out, config)
    train_faces, val_faces = faces.read_training_faces(config)
    if len(train_faces) < config.batch_size * runtime.world_size:
        raise ValueError(
            f"{len(train_faces)} training faces cannot fill one batch of {config.batch_size} on "
            f"{runtime.world_size} process(es); lower batch_size"
        )
    model_config = state.resumed_model_config(out / "last.pt", config) if resume else None
    model = build.to_training_device(build.build_model(config, model_config), config, runtime.device)
    trainer = step.build_trainer(model, config, runtime)
    position = state.Position()
    if resume:
        position = state.restore_training_state(out / "last.pt", trainer)
        if runtime.is_main:
            logger.info("resumed %s at epoch %d, batch %d (step %d)", out / "last.pt", position.epoch,
                        position.batches_done, position.step)
        if position.fitted_epochs:  # the schedule a time budget sized before the stop
            config = trainer.config = dataclasses.replace(config, epochs=position.fitted_epochs,
                                                          lr_milestones=position.fitted_milestones)
    train_set = data.FaceDataset(train_faces, model.scheme, input_size=config.input_size, train=True,
                                 augment=config.augment, seed=config.seed, skip_unreadable=True)
    sampler = (sampling.BalancedSampler(sampling.pose_weights(train_faces, model.scheme.name, config),
                                        runtime.world_size, runtime.rank, config.seed) if config.pose_balance_bins else
               DistributedSampler(train_set, num_replicas=runtime.world_size, rank=runtime.rank,
                                  shuffle=True, seed=config.seed, drop_last=True))
    steps_per_epoch = len(sampler) // config.batch_size
    total_steps = schedule.planned_steps(config, steps_per_epoch)
    # under a time limit the step count is unknown (a time budget fixes it after two epochs): show the
    # rate and elapsed time, not a false ETA
    length_unknown = config.time_limit_minutes > 0 or config.time_budget_minutes > 0
    progress = tqdm(total=None if length_unknown else total_steps, initial=position.step,
                    disable=not runtime.is_main, unit="step", dynamic_ncols=True)
    deadline = time.monotonic() + 60 * config.time_limit_minutes if config.time_limit_minutes > 0 else math.inf
    budget = (schedule.TimeBudget(config, used_seconds=position.budget_seconds_used,
                                  decided=position.fitted_epochs > 0) if config.time_budget_minutes > 0 else None)
    if budget is not None:
        deadline = min(deadline, budget.deadline)
    return _Run(out, runtime, trainer, position, train_set, sampler, val_faces, steps_per_epoch, total_steps,
                ScalarLog(out) if runtime.is_main else None, progress, deadline, budget, stop,
                finished=position.step >= total_steps)


def _train_epoch(run: _Run) -> bool:
    """Train the rest of the current epoch; returns whether it ran to its end (not stopped early)."""
    config, position, device = run.config, run.position, run.runtime.device
    loader = faces.epoch_loader(run.train_set, run.sampler, config, position.epoch, position.batches_done, device)
    for group in run.trainer.optimizer.param_groups:
        group["lr"] = schedule.learning_rate(config, position.epoch, config.lr)
    tick = time.perf_counter()
    for batch in loader:
        position.batches_done += 1
        if _skip(run, batch):
            continue
        images = batch["image"].to(device, non_blocking=True)  # uint8: the model normalises on the device
        landmarks = batch["landmarks"].to(device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        terms = step.train_step(run.trainer, images, landmarks)
        position.step += 1
        now = time.perf_counter()
        images_per_second = len(images) * run.runtime.world_size / max(now - tick, 1e-9)
        tick = now
        _log_step(run, terms, images_per_second)
        # each process reads its own clock and receives its own signals: all act on any one's
        run.timed_out, stop_requested = any_process(
            [time.monotonic() > run.deadline, run.stop.signal is not None], run.runtime)
        if position.step >= run.total_steps or run.timed_out:
            run.finished = True
            break
        if stop_requested:
            run.stopped = True
            if run.runtime.is_main:
                _save_last(run)
                logger.info("stopped at step %d; last.pt written: --resume continues from it", position.step)
            break
        if (run.runtime.is_main and position.batches_done < run.steps_per_epoch
                and state.checkpoint_due(config, position.step, time.monotonic() - run.last_written)):
            _save_last(run)
    return position.batches_done >= run.steps_per_epoch


def _skip(run: _Run, batch: dict[str, Any]) -> bool:
    """Count and name the batch's unreadable images; whether the step is skipped (some process has none).

    Raises ``RuntimeError`` once the epoch's unreadable images pass ``max_bad_fraction``.
    """
    position = run.position
    for message in batch["unreadable"]:
        logger.warning("skipped an unreadable training image (epoch %d): %s", position.epoch, message)
    unreadable, some_empty = count_unreadable(batch, run.runtime)
    position.unreadable_in_epoch += unreadable
    if position.unreadable_in_epoch > run.config.max_bad_fraction * len(run.train_set):
        last = f" (last: {batch['unreadable'][-1]})" if batch["unreadable"] else ""
        raise RuntimeError(
            f"{position.unreadable_in_epoch} of the {len(run.train_set)} training images could not be read in "
            f"epoch {position.epoch}, more than max_bad_fraction={run.config.max_bad_fraction} allows; the "
            f"skipped files are named in the log above{last}")
    if some_empty:
        logger.warning("step skipped: a batch of epoch %d held no readable image", position.epoch)
    return some_empty


def _log_step(run: _Run, terms: dict[str, float], images_per_second: float) -> None:
    position = run.position
    run.progress.update(1)
    run.progress.set_postfix(epoch=position.epoch, loss=f"{terms['loss']:.4f}", img_s=f"{images_per_second:.1f}")
    if run.writer is not None and (position.step % run.config.log_every == 0 or position.step == run.total_steps):
        run.writer.add(position.step, position.epoch, {**terms, "images_per_second": images_per_second,
                                                        "lr": run.trainer.optimizer.param_groups[0]["lr"]})


def _end_epoch(run: _Run, epoch_done: bool) -> None:
    """Validate, keep ``best.pt``, stop early where due, write ``last.pt`` at the next position, size a
    budgeted schedule."""
    position, epoch = run.position, run.position.epoch
    if run.runtime.is_main:
        val_nme = math.nan
        if (epoch_done or run.timed_out) and run.val_faces:  # a run stopped by the clock keeps its best
            val_nme = faces.validation_nme(run.trainer.model, run.val_faces, run.runtime.device, run.config.batch_size)
            run.writer.add(position.step, epoch, {"val_nme": val_nme})
            run.writer.plot_learning_curve()
            run.progress.write(f"epoch {epoch}: validation NME {100 * val_nme:.2f}% on {len(run.val_faces)} "
                               "held-out faces")
        if epoch_done and position.unreadable_in_epoch:
            run.writer.add(position.step, epoch, {"unreadable_images": position.unreadable_in_epoch})
        if not math.isnan(val_nme) and val_nme < position.best_nme:
            position.best_nme, position.best_epoch = val_nme, epoch
            state.save_best(run.out / "best.pt", run.trainer, epoch, position.step, val_nme)
    if epoch_done:
        position.epoch, position.batches_done, position.unreadable_in_epoch = epoch + 1, 0, 0
        if main_says(schedule.early_stop_due(run.config, epoch + 1, position.best_epoch), run.runtime):
            logger.info("early stop after epoch %d: validation last improved at epoch %d", epoch, position.best_epoch)
            run.finished = True
    if run.budget is not None and epoch_done:
        _size_to_budget(run, epoch)
    if run.runtime.is_main:
        _save_last(run)
    barrier(run.runtime)


def _size_to_budget(run: _Run, epoch: int) -> None:
    """Size the schedule once the budget has measured an epoch; ``last.pt`` then records it."""
    images = run.steps_per_epoch * run.config.batch_size * run.runtime.world_size
    sized = run.budget.epoch_finished(run.config, epoch, images)
    if sized is None:
        return
    run.trainer.config = sized
    run.position.fitted_epochs, run.position.fitted_milestones = sized.epochs, sized.lr_milestones
    run.total_steps = schedule.planned_steps(sized, run.steps_per_epoch)
    run.progress.total = run.total_steps if sized.time_limit_minutes <= 0 else None
    if run.runtime.is_main:
        _write_config(run.out, sized)


def _save_last(run: _Run) -> None:
    if run.budget is not None:
        run.position.budget_seconds_used = run.budget.used_seconds()
    state.save_last(run.out / "last.pt", run.trainer, run.position)
    run.last_written = time.monotonic()


def _write_config(out: Path, config: presets.TrainConfig) -> None:
    (out / "config.json").write_text(json.dumps(presets.to_dict(config), indent=2) + "\n")
