"""The training step's speed switches, each a ``TrainConfig`` field.

The step computes the same losses and gradients with or without them, up to floating-point
rounding (``tests/train/test_speed.py`` bounds the difference by the plain step's own rounding
error); ``benchmarks/test_train_step_cpu.py`` measures each against the plain step in one run.

- ``threads``: torch's intra-op threads. On a CPU shared with other work, OpenMP threads that
  spin-wait at every operator for a descheduled partner cost far more than a second thread gains
  (on 2 cores beside another busy process, 2 threads made the step 34x slower than 1); a CPU run
  whose threads and the work already running outnumber the cores says so, once.
- ``compile_step``: Inductor compiles the step's pure parts, each a single graph:
  ``training_losses`` (forward, losses and backward: batch norm, ReLU and the element-wise work
  fused into generated loops, every convolution in oneDNN's channels-last layout) and the ground
  truth (``labfast.train.targets.boundary_targets_compiled``). Single
  process only (``DistributedDataParallel`` splits a compiled graph at its buckets; ``compile``
  compiles the model's forward for ``torchrun``). The first step compiles: minutes on a 2-core
  CPU, then Inductor's on-disk cache serves later runs.
- ``inductor_threads``: threads of the compiled step's generated loops (Inductor's ``cpp.threads``),
  apart from ``threads``, which oneDNN's convolutions and the eager operators use. End to end on an
  idle 2-core CPU, the loops on one thread or on both make no measurable difference
  (``benchmarks/RESULTS.md``); the CPU presets keep them on one.
- ``dense_message_passing``: intra-level message passing as one dense convolution
  (``BoundaryHeatmapEstimator.use_dense_message_passing``).
- ``fused_adam``: ``torch.optim.Adam(fused=True)``, one kernel over all parameters instead of
  about ten operators per parameter tensor (the small model has 706).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from labfast.model import LAB
from labfast.train.presets import TrainConfig
from labfast.train.runtime import Runtime
from labfast.train.targets import boundary_targets_compiled

logger = logging.getLogger("labfast.train.speed")


def apply(model: LAB, config: TrainConfig, runtime: Runtime, training_losses: Callable) -> Callable:
    """Set ``config``'s threads and message passing on ``model``; returns the losses function the
    step calls: ``training_losses`` itself, or its compiled graph given the compiled ground truth
    (``labfast.train.targets.boundary_targets_compiled``)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if runtime.device.type == "cpu":
        _warn_if_oversubscribed(torch.get_num_threads())
    model.estimator.use_dense_message_passing(config.dense_message_passing)
    if not config.compile_step:
        return training_losses
    if runtime.distributed:
        raise ValueError("compile_step=true compiles a single process's step; for torchrun use compile=true")
    logger.info("compile_step: the first step compiles the training step (minutes on a small CPU)")
    options = {"cpp.threads": config.inductor_threads} if config.inductor_threads else None
    compiled = torch.compile(training_losses, fullgraph=True, options=options)

    def step_losses(forward_model, weights, judge, images, landmarks, boundary_scheme, input_size: int,
                    sigma: float, heatmaps_trained: bool):
        targets = (boundary_targets_compiled(landmarks, boundary_scheme, input_size, weights.heatmap_size, sigma)
                   if heatmaps_trained else None)
        return compiled(forward_model, weights, judge, images, landmarks, boundary_scheme, input_size, sigma,
                        heatmaps_trained, targets)

    return step_losses


def _warn_if_oversubscribed(threads: int) -> None:
    """One warning where the step's threads and the work already running (the 1-minute load
    average, rounded) outnumber the cores: some thread will be descheduled while the others wait."""
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    if threads > 1 and round(load) + threads > cores:
        logger.warning("the CPU is busy (load average %.1f on %d cores) and the step runs on %d threads, which "
                       "wait for each other whenever one is descheduled: if steps are slow, --set threads=1",
                       load, cores, threads)


def adam(parameters, config: TrainConfig, **arguments) -> torch.optim.Adam:
    """``torch.optim.Adam(parameters, **arguments)``, fused where ``config.fused_adam`` asks for it."""
    return torch.optim.Adam(parameters, fused=config.fused_adam or None, **arguments)
