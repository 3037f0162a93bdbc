"""``labfast train``: one training loop, readable top to bottom, single process or ``torchrun``.

    labfast train --config 300w --data-root DATA/300w --out runs/300w [--epochs 60] [--set augment.rotation_deg=20]
    torchrun --nproc-per-node 8 -m labfast train --config wflw --data-root DATA/WFLW

One step (LAB Sec. 3): crops -> estimator (K boundary heatmaps per stack) -> regressor (landmarks);
ground-truth heatmaps are made from the crop's landmarks on the model's device
(``labfast.ops.boundary_heatmaps``); losses = heatmap MSE over every stack + landmark loss +
adversarial loss of the boundary effectiveness discriminator, which is updated in its own step.

Run folder: ``config.json`` (the resolved configuration), ``metrics.csv`` and ``tensorboard/``
(scalars), ``last.pt`` and ``best.pt`` (atomic writes; best by validation NME). ``last.pt`` is
written at each epoch's end and inside an epoch every ``checkpoint_every_steps`` steps or
``checkpoint_every_minutes`` minutes. ``--resume`` continues from ``last.pt`` exactly: weights,
optimiser states, epoch, the position inside the epoch and the RNG, so a killed run ends with the
same weights as an uninterrupted one.

A training image that cannot be read is skipped (its batch trains on the rest) and named in the
log; the run stops with an error only when more than ``max_bad_fraction`` of the training images
fail in one epoch.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from labfast import checkpoint, data, metrics, schemes

from labfast.train import presets

from labfast.train import sampling, schedule
from labfast.evaluation.protocols import predict_faces
from labfast.model import LAB, LABConfig, config_by_name, losses
from labfast.ops import boundary_heatmaps

logger = logging.getLogger("labfast.train.loop")

DATASET_SCHEMES = {"300w": "300w", "wflw": "wflw", "cofw": "cofw", "aflw": "aflw"}


# ----------------------------------------------------------------------------- data


def read_training_faces(config: presets.TrainConfig) -> tuple[list, list]:
    """The training faces split into (train, validation); validation is held out by seed."""
    root = Path(config.data_root)
    if not root.exists():
        raise FileNotFoundError(f"--data-root {root} does not exist")
    if config.dataset == "300w":
        samples = data.read_300w(root, subset=config.train_subset)
    elif config.dataset == "wflw":
        samples = data.read_wflw(root, split=config.train_subset)
    elif config.dataset == "cofw":
        samples = data.read_cofw(root / "COFW_train_color.mat" if root.is_dir() else root)
    elif config.dataset == "aflw":
        samples = data.read_aflw(root, split=config.train_subset)
    else:
        raise ValueError(f"unknown dataset {config.dataset!r}; known: {', '.join(DATASET_SCHEMES)}")
    if config.train_limit:
        samples = samples[: config.train_limit]
    order = np.random.default_rng(config.seed).permutation(len(samples))
    num_val = math.ceil(len(samples) * config.val_fraction) if config.val_fraction > 0 and len(samples) > 1 else 0
    val = readable_faces([samples[i] for i in sorted(order[:num_val])], "validation")
    train = [samples[i] for i in sorted(order[num_val:])]
    return train, val


def readable_faces(samples: list, role: str) -> list:
    """``samples`` less those whose image cannot be decoded, each named in a warning.

    Validation runs at every epoch's end outside the training loader's skipping, so one corrupt
    image there would end the run after a whole epoch; the split itself stays the one the seed drew.
    """
    kept = []
    for sample in samples:
        try:
            if sample.image is None:
                data.read_image_bgr(sample.image_path)
        except OSError as error:
            logger.warning("left out of the %s faces: %s", role, error)
            continue
        kept.append(sample)
    return kept


class _ResumeSampler(Sampler[int]):
    """The distributed sampler's order for this epoch, less the samples already trained on."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.skip:])

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


# ----------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime() -> Runtime:
    """Single process, or the process group ``torchrun`` describes in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        use_cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if use_cuda else "gloo")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return Runtime(dist.get_rank(), dist.get_world_size(), device)
    return Runtime(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def heatmap_coordinates(landmarks: torch.Tensor, input_size: int, heatmap_size: int) -> torch.Tensor:
    """Crop pixel coordinates -> heatmap pixel coordinates (pixel centres map onto pixel centres)."""
    scale = heatmap_size / input_size
    return (landmarks + 0.5) * scale - 0.5


def learning_rate(config: presets.TrainConfig, epoch: int, base: float) -> float:
    """Step decay: divided by 10 at each milestone epoch already reached."""
    return base * 0.1 ** sum(epoch >= milestone for milestone in config.lr_milestones)


def planned_steps(config: presets.TrainConfig, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole schedule (``max_steps`` caps it)."""
    return min(config.max_steps, config.epochs * steps_per_epoch) if config.max_steps else config.epochs * steps_per_epoch


def autocast(config: presets.TrainConfig, device: torch.device):
    if config.amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    if dtype is None:
        raise ValueError(f"amp={config.amp!r} is not one of none, bf16, fp16")
    return torch.autocast(device.type, dtype=dtype)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def restore_training_state(path: Path, device: torch.device, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer | None,
                           scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """Load ``last.pt`` into the model, the optimisers and the RNG; returns the checkpoint.

    The file is read onto the CPU: the saved RNG states must stay CPU byte tensors
    (``torch.set_rng_state`` and ``torch.cuda.set_rng_state`` accept nothing else), while
    ``load_state_dict`` of the model and the optimisers copies each tensor to the device of its
    parameter.
    """
    state = checkpoint.load(path, map_location="cpu")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if d_optimizer is not None:
        d_optimizer.load_state_dict(state["discriminator_optimizer"])
    if scaler.is_enabled():
        scaler.load_state_dict(state["grad_scaler"])
    set_rng_state(state["rng"], device)
    return state


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


def _checkpoint_due(config: presets.TrainConfig, step: int, seconds_since_write: float) -> bool:
    """A mid-epoch ``last.pt`` is due every ``checkpoint_every_steps`` steps or ``_minutes`` minutes."""
    by_steps = config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0
    by_time = config.checkpoint_every_minutes > 0 and seconds_since_write >= 60 * config.checkpoint_every_minutes
    return by_steps or by_time


def _count_unreadable(batch: dict[str, Any], runtime: Runtime) -> tuple[int, bool]:
    """``(unreadable items in this step, whether some process has no readable item)``, over all processes.

    Every process must agree on both: the bad-data limit ends all of them together, and a step
    is skipped by all of them together (DistributedDataParallel's gradient all-reduce would
    otherwise wait forever for the process that skipped).
    """
    unreadable, empty = len(batch["unreadable"]), "image" not in batch
    if runtime.world_size == 1:
        return unreadable, empty
    counts = torch.tensor([unreadable, int(empty)], device=runtime.device)
    dist.all_reduce(counts)
    return int(counts[0]), bool(counts[1])


def _past_deadline(deadline: float, runtime: Runtime) -> bool:
    """Whether the clock has passed ``deadline`` on any process.

    Each process reads its own clock; if one stopped while another went on to its next step,
    DistributedDataParallel's gradient all-reduce would wait forever for the one that stopped.
    """
    past = time.monotonic() > deadline
    if runtime.world_size == 1 or deadline == math.inf:  # every process has the same configuration
        return past
    flag = torch.tensor([int(past)], device=runtime.device)
    dist.all_reduce(flag)
    return bool(flag)


def _agreed(runtime: Runtime, flag: bool) -> bool:
    """The main process's ``flag`` on every process (only the main process validates)."""
    if runtime.world_size == 1:
        return flag
    value = torch.tensor([int(flag and runtime.is_main)], device=runtime.device)
    dist.all_reduce(value)
    return bool(value)


def _refuse_cpu_channels_last_hazard(model: torch.nn.Module) -> None:
    """Refuse fp32 channels_last CPU training of a model with a 1x1 strided convolution of 2-7 input channels.

    The fp32 backward of such a convolution on channels_last CPU tensors corrupts the heap in oneDNN
    3.12 (torch 2.13; reproduced at stride 2 on even input sizes; bf16 and fp16 autocast are not hit): the process aborts with "free(): invalid
    next size" or worse runs on with corrupted memory. The 'tiny' preset's ResNet projection (4 -> 8
    channels) is one. channels_last is a GPU option (tensor cores take NHWC); the CPU gains little.
    """
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
                and 2 <= module.in_channels <= 7):
            raise ValueError(
                f"channels_last=true on the CPU: {name} is a 1x1 stride-{module.stride[0]} convolution of "
                f"{module.in_channels} input channels, whose backward corrupts memory in torch {torch.__version__}'s "
                "oneDNN on channels_last CPU tensors; train without channels_last on the CPU (it is a GPU "
                "option) or with a model of at least 8 channels in its ResNet stages")


# ----------------------------------------------------------------------------- model


def build_model(config: presets.TrainConfig, model_config: LABConfig | None = None) -> LAB:
    """The LAB of ``config``; ``model_config`` (a resumed run's saved one) replaces the preset's."""
    scheme = schemes.get(DATASET_SCHEMES.get(config.dataset, config.dataset))
    boundary_scheme = schemes.get(config.boundary_dataset) if config.boundary_dataset else scheme
    if model_config is None:
        model_config = config_by_name(config.model, input_size=config.input_size, **config.model_overrides)
    model = LAB(scheme, model_config, boundary_scheme=boundary_scheme)
    if config.estimator_checkpoint:
        source = checkpoint.load(config.estimator_checkpoint)
        prefix = "estimator."
        estimator_state = {k[len(prefix):]: v.float() if v.is_floating_point() else v
                           for k, v in source["model"].items() if k.startswith(prefix)}
        try:
            model.estimator.load_state_dict(estimator_state)
        except RuntimeError as error:
            raise checkpoint.CheckpointError(
                f"estimator of {config.estimator_checkpoint} does not fit this model: {error}"
            ) from error
        model.estimator.requires_grad_(False)
    elif boundary_scheme is not scheme:
        raise ValueError(
            f"training the regressor on {scheme.name} with {boundary_scheme.name} boundaries needs "
            "estimator_checkpoint: a run trained on the boundary data set (LAB Sec. 4.3)"
        )
    return model


def set_training_mode(model: LAB) -> None:
    """Train mode, except a frozen (cross-data-set) estimator, whose batch-norm statistics stay fixed."""
    model.train()
    if not any(p.requires_grad for p in model.estimator.parameters()):
        model.estimator.eval()


def validation_nme(model: LAB, faces: list, device: torch.device, batch_size: int) -> float:
    """Mean NME on the held-out training faces, measured as ``labfast eval`` measures it."""
    model.eval()
    predicted = predict_faces(model, faces, device, batch_size=batch_size, progress=False)
    set_training_mode(model)
    truth = np.stack([face.landmarks for face in faces])
    boxes = np.stack([face.box for face in faces])
    return float(metrics.nme(predicted, truth, model.scheme, boxes=boxes).mean())


# ----------------------------------------------------------------------------- training


def train(config: presets.TrainConfig, out_dir: str | os.PathLike, resume: bool = False) -> dict[str, Any]:
    """Train LAB; returns the final summary (best validation NME, steps, run folder)."""
    runtime = init_runtime()
    out = Path(out_dir)
    try:
        return _train(config, out, resume, runtime)
    finally:
        if runtime.world_size > 1:
            dist.destroy_process_group()


def _train(config: presets.TrainConfig, out: Path, resume: bool, runtime: Runtime) -> dict[str, Any]:
    device = runtime.device
    torch.manual_seed(config.seed + runtime.rank)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(presets.to_dict(config), indent=2) + "\n")

    train_faces, val_faces = read_training_faces(config)
    if len(train_faces) < config.batch_size * runtime.world_size:
        raise ValueError(
            f"{len(train_faces)} training faces cannot fill one batch of {config.batch_size} on "
            f"{runtime.world_size} process(es); lower batch_size"
        )
    model = build_model(config, resumed_model_config(out / "last.pt", config) if resume else None).to(device)
    set_training_mode(model)
    scheme, boundary_scheme = model.scheme, model.boundary_scheme
    if config.channels_last:
        if device.type == "cpu" and config.amp == "none":
            _refuse_cpu_channels_last_hazard(model)
        model = model.to(memory_format=torch.channels_last)
    train_set = data.FaceDataset(train_faces, scheme, input_size=config.input_size, train=True,
                                 augment=config.augment, seed=config.seed, skip_unreadable=True)
    max_unreadable = config.max_bad_fraction * len(train_set)

    generator_parameters = [p for name, p in model.named_parameters() if not name.startswith("discriminator.") and p.requires_grad]
    optimizer = torch.optim.Adam(generator_parameters, lr=config.lr, weight_decay=config.weight_decay)
    discriminator = model.discriminator
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.discriminator_lr) if discriminator is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")

    start_epoch, skip_batches, step, best_nme, unreadable_in_epoch, best_epoch = 0, 0, 0, math.inf, 0, -1
    if resume:
        state = restore_training_state(out / "last.pt", device, model, optimizer, d_optimizer, scaler)
        start_epoch, skip_batches, step = state["epoch"], state["batches_done"], state["step"]
        best_nme = state.get("best_nme", math.inf)
        best_epoch = checkpoint.load(out / "best.pt")["epoch"] if (out / "best.pt").exists() else -1
        unreadable_in_epoch = state.get("unreadable_in_epoch", 0)
        if runtime.is_main:
            logger.info("resumed %s at epoch %d, batch %d (step %d)", out / "last.pt", start_epoch, skip_batches, step)

    forward_model: torch.nn.Module = model
    if runtime.world_size > 1:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [name for name, _ in model.named_parameters() if name.startswith("discriminator.")]
        )
        frozen = not any(p.requires_grad for p in model.estimator.parameters())
        forward_model = DistributedDataParallel(model, find_unused_parameters=frozen)
        if discriminator is not None:
            discriminator = DistributedDataParallel(discriminator)
    if config.compile:
        forward_model = torch.compile(forward_model)

    sampler = (sampling.BalancedSampler(sampling.pose_weights(train_faces, scheme.name, config), runtime.world_size,
                                        runtime.rank, config.seed) if config.pose_balance_bins else
               DistributedSampler(train_set, num_replicas=runtime.world_size, rank=runtime.rank,
                                  shuffle=True, seed=config.seed, drop_last=True))
    steps_per_epoch = len(sampler) // config.batch_size
    total_steps = planned_steps(config, steps_per_epoch)
    writer = _ScalarLog(out) if runtime.is_main else None

    def save_last(next_epoch: int, next_skip: int, best: float, unreadable: int) -> None:
        """``last.pt``: everything ``--resume`` needs to continue at batch ``next_skip`` of ``next_epoch``."""
        state = {**checkpoint.model_payload(model), "optimizer": optimizer.state_dict(),
                 "epoch": next_epoch, "batches_done": next_skip, "step": step, "best_nme": best,
                 "unreadable_in_epoch": unreadable, "rng": rng_state(device), "train_config": presets.to_dict(config)}
        if d_optimizer is not None:
            state["discriminator_optimizer"] = d_optimizer.state_dict()
        if scaler.is_enabled():
            state["grad_scaler"] = scaler.state_dict()
        checkpoint.save(out / "last.pt", state)

    # under a time limit the step count is unknown (a time budget fixes it after two epochs): show the
    # rate and elapsed time, not a false ETA
    length_unknown = config.time_limit_minutes > 0 or config.time_budget_minutes > 0
    progress = tqdm(total=None if length_unknown else total_steps, initial=step,
                    disable=not runtime.is_main, unit="step", dynamic_ncols=True)
    finished = step >= total_steps
    deadline = time.monotonic() + 60 * config.time_limit_minutes if config.time_limit_minutes > 0 else math.inf
    budget = schedule.TimeBudget(config) if config.time_budget_minutes > 0 else None
    if budget is not None:
        deadline = min(deadline, budget.deadline)
    timed_out = False
    epoch = start_epoch
    last_written = time.monotonic()
    while not finished and epoch < config.epochs:
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=config.batch_size, drop_last=True, num_workers=config.num_workers,
                            sampler=_ResumeSampler(sampler, skip_batches * config.batch_size),
                            collate_fn=data.collate_readable, pin_memory=device.type == "cuda")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, epoch, config.lr)
        batches_done = skip_batches
        tick = time.perf_counter()
        for batch in loader:
            batches_done += 1
            for message in batch["unreadable"]:
                logger.warning("skipped an unreadable training image (epoch %d): %s", epoch, message)
            unreadable, some_empty = _count_unreadable(batch, runtime)
            unreadable_in_epoch += unreadable
            if unreadable_in_epoch > max_unreadable:
                last = f" (last: {batch['unreadable'][-1]})" if batch["unreadable"] else ""
                raise RuntimeError(
                    f"{unreadable_in_epoch} of the {len(train_set)} training images could not be read in epoch "
                    f"{epoch}, more than max_bad_fraction={config.max_bad_fraction} allows; the skipped files "
                    f"are named in the log above{last}")
            if some_empty:
                logger.warning("step skipped: a batch of epoch %d held no readable image", epoch)
                continue
            images = batch["image"].to(device, non_blocking=True)
            landmarks = batch["landmarks"].to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            terms = _train_step(config, forward_model, discriminator, optimizer, d_optimizer, scaler,
                                images, landmarks, scheme, boundary_scheme, device)
            step += 1
            now = time.perf_counter()
            images_per_second = len(images) * runtime.world_size / max(now - tick, 1e-9)
            tick = now
            progress.update(1)
            progress.set_postfix(epoch=epoch, loss=f"{terms['loss']:.4f}", img_s=f"{images_per_second:.1f}")
            if writer is not None and (step % config.log_every == 0 or step == total_steps):
                writer.add(step, epoch, {**terms, "images_per_second": images_per_second,
                                         "lr": optimizer.param_groups[0]["lr"]})
            timed_out = _past_deadline(deadline, runtime)
            if step >= total_steps or timed_out:
                finished = True
                break
            if (runtime.is_main and batches_done < steps_per_epoch
                    and _checkpoint_due(config, step, time.monotonic() - last_written)):
                save_last(epoch, batches_done, best_nme, unreadable_in_epoch)
                last_written = time.monotonic()
        epoch_done = batches_done >= steps_per_epoch
        next_epoch, next_skip = (epoch + 1, 0) if epoch_done else (epoch, batches_done)
        val_nme = math.nan
        if runtime.is_main and (epoch_done or timed_out) and val_faces:  # a run stopped by the clock keeps its best
            val_nme = validation_nme(model, val_faces, device, config.batch_size)
            writer.add(step, epoch, {"val_nme": val_nme})
            progress.write(f"epoch {epoch}: validation NME {100 * val_nme:.2f}% on {len(val_faces)} held-out faces")
        if runtime.is_main and epoch_done and unreadable_in_epoch:
            writer.add(step, epoch, {"unreadable_images": unreadable_in_epoch})
        if runtime.is_main:
            if not math.isnan(val_nme) and val_nme < best_nme:
                best_nme, best_epoch = val_nme, epoch
                checkpoint.save(out / "best.pt", {**checkpoint.model_payload(model), "epoch": epoch, "step": step,
                                                  "metrics": {"val_nme": val_nme}, "train_config": presets.to_dict(config)})
            save_last(next_epoch, next_skip, best_nme, 0 if epoch_done else unreadable_in_epoch)
            last_written = time.monotonic()
        if runtime.world_size > 1:
            dist.barrier()
        if budget is not None and epoch_done:
            sized = budget.epoch_finished(config, epoch, steps_per_epoch * config.batch_size * runtime.world_size)
            if sized is not None:
                config = sized
                total_steps = planned_steps(config, steps_per_epoch)
                progress.total = total_steps if config.time_limit_minutes <= 0 else None
                if runtime.is_main:
                    (out / "config.json").write_text(json.dumps(presets.to_dict(config), indent=2) + "\n")
        if epoch_done and _agreed(runtime, schedule.early_stop_due(config, epoch + 1, best_epoch)):
            if runtime.is_main:
                logger.info("early stop after epoch %d: validation last improved at epoch %d", epoch, best_epoch)
            finished = True
        epoch, skip_batches = next_epoch, next_skip
        if epoch_done:
            unreadable_in_epoch = 0
    progress.close()
    if writer is not None:
        writer.close()
    return {"run": str(out), "steps": step, "best_val_nme": best_nme}


def training_losses(forward_model, weights: LABConfig, judge, images: torch.Tensor, landmarks: torch.Tensor,
                    boundary_scheme, input_size: int, sigma: float, heatmaps_trained: bool):
    """The pure part of a training step: images ``(N, 3, S, S)`` and landmarks ``(N, L, 2)`` (input
    pixels) -> ``(loss terms, model output, ground-truth heatmaps or None)``, the ground-truth
    boundary heatmaps made on the device. No host sync, so ``torch.compile(fullgraph=True)`` takes
    it whole, forward and backward (``tests/model/test_compile.py``); checks, logging and the
    optimiser steps stay outside (``_train_step``). ``judge``: the discriminator, or ``None``."""
    output = forward_model(images)
    terms: dict[str, torch.Tensor] = {}
    target_heatmaps = None
    if heatmaps_trained:
        target_heatmaps = boundary_heatmaps(
            heatmap_coordinates(landmarks, input_size, weights.heatmap_size).float(),
            boundary_scheme, size=weights.heatmap_size, sigma=sigma)
        terms["heatmap"] = weights.heatmap_weight * losses.heatmap_loss(output.heatmaps, target_heatmaps)
    terms["landmark"] = weights.landmark_weight * losses.landmark_loss(
        output.landmarks, landmarks, input_size, weights.landmark_loss, weights.landmark_loss_width,
        weights.landmark_loss_curvature)
    if judge is not None and heatmaps_trained:
        terms["adversarial"] = weights.adversarial_weight * losses.adversarial_loss(judge(output.heatmaps[-1]))
    return terms, output, target_heatmaps


def _train_step(config, forward_model, discriminator, optimizer, d_optimizer, scaler,
                images, landmarks, scheme, boundary_scheme, device) -> dict[str, float]:
    """One optimiser step of estimator + regressor, then one of the discriminator (LAB Sec. 3.3)."""
    model = forward_model.module if hasattr(forward_model, "module") else forward_model
    model = getattr(model, "_orig_mod", model)
    heatmaps_trained = any(p.requires_grad for p in model.estimator.parameters())
    # the bare discriminator module: its gradients here are discarded (set to None before the D step)
    judge = None if discriminator is None else getattr(discriminator, "module", discriminator)
    with autocast(config, device):
        terms, output, target_heatmaps = training_losses(forward_model, model.config, judge, images, landmarks,
                                                         boundary_scheme, config.input_size, config.sigma,
                                                         heatmaps_trained)
        loss = sum(terms.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()} ({ {k: v.item() for k, v in terms.items()} })")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    logged = {name: value.item() for name, value in terms.items()}
    logged["loss"] = loss.item()
    if d_optimizer is not None and target_heatmaps is not None:
        # d_fake: an estimate that does not lead to accurate landmarks is "fake" (LAB Sec. 3.3).
        fake_targets = losses.fake_labels(output.landmarks.detach(), landmarks, scheme, model.config)
        with autocast(config, device):
            # real and estimated heatmaps in one forward: DistributedDataParallel expects one per backward
            real_logits, fake_logits = discriminator(
                torch.cat([target_heatmaps.to(output.heatmaps[-1].dtype), output.heatmaps[-1].detach()])).chunk(2)
            d_loss = losses.discriminator_loss(real_logits, fake_logits, fake_targets)
        d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimizer.step()
        logged["discriminator"] = d_loss.item()
    return logged


class _ScalarLog:
    """Scalars to ``metrics.csv`` (long format) and, where the tensorboard package is installed, TensorBoard."""

    def __init__(self, out: Path):
        self.path = out / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed: scalars go to %s only", self.path)
            self.tensorboard = None
        else:
            self.tensorboard = SummaryWriter(str(out / "tensorboard"))

    def add(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        """One row per scalar (``step,epoch,name,value``): new scalars never break the columns."""
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as stream:
            writer = csv.writer(stream)
            if new_file:
                writer.writerow(["step", "epoch", "name", "value"])
            writer.writerows([step, epoch, name, f"{value:.6g}"] for name, value in scalars.items())
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
