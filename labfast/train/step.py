"""One training step (LAB Sec. 3): the losses, the estimator + regressor update, the discriminator's.

crops -> estimator (K boundary heatmaps per stack) -> regressor (landmarks); the ground truth's
dense boundary curves are made on the model's device once a step and serve twice: the
ground-truth heatmaps are drawn from them (``labfast.ops.heatmaps_of_curves``) and the
discriminator's fake labels are measured against them (``losses.fake_labels``). Losses = heatmap
MSE over every stack + landmark loss + adversarial loss of the boundary effectiveness
discriminator, which is then updated in its own step.

The step's knobs are set in one place, :func:`build_trainer`: DistributedDataParallel,
``torch.compile`` (``TrainConfig.compile``), autocast (``TrainConfig.amp``, :func:`autocast`), the
fp16 gradient scaler and the speed switches (``labfast.train.speed``).
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from labfast.model import LAB, LABConfig, losses
from labfast.train import speed
from labfast.train.presets import TrainConfig
from labfast.train.runtime import Runtime, distribute
from labfast.train.targets import BoundaryTargets, boundary_targets


@dataclasses.dataclass
class Trainer:
    """What a training step runs and updates, built once a run by :func:`build_trainer`."""

    config: TrainConfig
    model: LAB  # the bare model: weights, configuration, schemes
    forward: torch.nn.Module  # the model as the step calls it (DistributedDataParallel, torch.compile)
    discriminator: torch.nn.Module | None  # as the step calls it (DistributedDataParallel)
    optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    device: torch.device
    heatmaps_trained: bool  # False for a frozen (cross-data-set) estimator: no heatmap loss, no discriminator
    losses: Callable  # training_losses, or its compiled form (labfast.train.speed)


def build_trainer(model: LAB, config: TrainConfig, runtime: Runtime) -> Trainer:
    """Optimisers, scaler and the wrapped forward of ``model`` (already on ``runtime.device``)."""
    heatmaps_trained = any(p.requires_grad for p in model.estimator.parameters())
    step_losses = speed.apply(model, config, runtime, training_losses)
    generator_parameters = [p for name, p in model.named_parameters()
                            if not name.startswith("discriminator.") and p.requires_grad]
    optimizer = speed.adam(generator_parameters, config, lr=config.lr, weight_decay=config.weight_decay)
    discriminator_optimizer = (speed.adam(model.discriminator.parameters(), config, lr=config.discriminator_lr)
                               if model.discriminator is not None else None)
    forward, discriminator = distribute(model, runtime)
    if config.compile:
        forward = torch.compile(forward)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=config.amp == "fp16")
    return Trainer(config, model, forward, discriminator, optimizer, discriminator_optimizer, scaler,
                   runtime.device, heatmaps_trained, step_losses)


def autocast(config: TrainConfig, device: torch.device):
    if config.amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    if dtype is None:
        raise ValueError(f"amp={config.amp!r} is not one of none, bf16, fp16")
    return torch.autocast(device.type, dtype=dtype)


def training_losses(forward_model, weights: LABConfig, judge, images: torch.Tensor, landmarks: torch.Tensor,
                    boundary_scheme, input_size: int, sigma: float, heatmaps_trained: bool,
                    targets: BoundaryTargets | None = None):
    """The pure part of a training step: images ``(N, 3, S, S)`` (uint8, or float in [0, 1]) and
    landmarks ``(N, L, 2)`` (input pixels) -> ``(loss terms, model output, BoundaryTargets or None)``,
    the ground truth made on the device (``targets``: made already, as ``boundary_targets`` makes
    it). No host sync, so ``torch.compile(fullgraph=True)`` takes it whole, forward and backward
    (``tests/model/test_compile.py``); checks, logging and the optimiser steps stay outside
    (:func:`train_step`). ``judge``: the discriminator, or ``None``."""
    output = forward_model(images)
    terms: dict[str, torch.Tensor] = {}
    if heatmaps_trained:
        if targets is None:
            targets = boundary_targets(landmarks, boundary_scheme, input_size, weights.heatmap_size, sigma)
        terms["heatmap"] = weights.heatmap_weight * losses.heatmap_loss(output.heatmaps, targets.heatmaps)
    terms["landmark"] = weights.landmark_weight * losses.landmark_loss(
        output.landmarks, landmarks, input_size, weights.landmark_loss, weights.landmark_loss_width,
        weights.landmark_loss_curvature)
    if judge is not None and heatmaps_trained:
        terms["adversarial"] = weights.adversarial_weight * losses.adversarial_loss(judge(output.heatmaps[-1]))
    return terms, output, targets


def train_step(trainer: Trainer, images: torch.Tensor, landmarks: torch.Tensor) -> dict[str, float]:
    """One optimiser step of estimator + regressor, then one of the discriminator (LAB Sec. 3.3)."""
    model, config = trainer.model, trainer.config
    # the bare discriminator module: its gradients here are discarded (set to None before the D step)
    judge = model.discriminator if trainer.discriminator is not None else None
    with autocast(config, trainer.device):
        terms, output, targets = trainer.losses(trainer.forward, model.config, judge, images, landmarks,
                                                model.boundary_scheme, config.input_size, config.sigma,
                                                trainer.heatmaps_trained)
        loss = sum(terms.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()} ({ {k: v.item() for k, v in terms.items()} })")
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    logged = {name: value.item() for name, value in terms.items()}
    logged["loss"] = loss.item()
    if trainer.discriminator_optimizer is not None and targets is not None:
        logged["discriminator"] = discriminator_step(trainer, output, landmarks, targets)
    return logged


def discriminator_step(trainer: Trainer, output, landmarks: torch.Tensor, targets: BoundaryTargets) -> float:
    """The discriminator's update on real (ground-truth) and estimated heatmaps; returns its loss.

    d_fake: an estimate that does not lead to accurate landmarks is "fake" (LAB Sec. 3.3). The
    labels are measured on the curves the ground-truth heatmaps were drawn from: the heatmaps are
    trained only with the estimator, which needs the landmarks' own scheme (``build.build_model``).
    """
    model = trainer.model
    fake_targets = losses.fake_labels(output.landmarks.detach(), landmarks, model.scheme, model.config,
                                      target_curves=targets.curves)
    with autocast(trainer.config, trainer.device):
        # real and estimated heatmaps in one forward: DistributedDataParallel expects one per backward
        estimated = output.heatmaps[-1]
        real_logits, fake_logits = trainer.discriminator(
            torch.cat([targets.heatmaps.to(estimated.dtype), estimated.detach()])).chunk(2)
        d_loss = losses.discriminator_loss(real_logits, fake_logits, fake_targets)
    trainer.discriminator_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    trainer.discriminator_optimizer.step()
    return d_loss.item()
