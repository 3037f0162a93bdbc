"""The faces a run trains and validates on: the training subset split by seed into training and
held-out validation faces, the epoch's loader (resumable mid-epoch) and the validation NME."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from labfast import data, metrics
from labfast.evaluation.protocols import predict_faces
from labfast.model import LAB
from labfast.train import presets, stopping
from labfast.train.build import set_training_mode
from labfast.train.presets import TrainConfig
from labfast.train.sampling import BalancedSampler

logger = logging.getLogger("labfast.train.faces")


def read_training_faces(config: TrainConfig) -> tuple[list, list]:
    """The training faces split into (train, validation); validation is held out by seed."""
    root = Path(config.data_root)
    if not root.exists():
        raise FileNotFoundError(f"--data-root {root} does not exist")
    samples = data.read_faces(config.dataset, root, config.train_subset)
    if config.train_limit:
        samples = samples[: config.train_limit]
    order = np.random.default_rng(config.seed).permutation(len(samples))
    num_val = math.ceil(len(samples) * config.val_fraction) if config.val_fraction > 0 and len(samples) > 1 else 0
    val = readable_faces([samples[i] for i in sorted(order[:num_val])], "validation")
    train = [samples[i] for i in sorted(order[num_val:])]
    return train, val


def held_out_faces(preset: str, data_root) -> list:
    """The validation faces ``labfast train --config PRESET --data-root DATA_ROOT`` holds out."""
    return read_training_faces(presets.override(presets.get(preset), [f"data_root={data_root}"]))[1]


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


class ResumeSampler(Sampler[int]):
    """The distributed (or balanced) sampler's order for this epoch, less the samples already trained on."""

    def __init__(self, sampler: DistributedSampler | BalancedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.skip:])

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def epoch_loader(train_set: data.FaceDataset, sampler: DistributedSampler | BalancedSampler, config: TrainConfig, epoch: int,
                 batches_done: int, device: torch.device) -> DataLoader:
    """The batches of ``epoch`` after the first ``batches_done``; unreadable images are listed, not raised.

    Crops stay uint8 until the model's device (``LAB.normalize``).
    """
    sampler.set_epoch(epoch)
    train_set.set_epoch(epoch)
    return DataLoader(train_set, batch_size=config.batch_size, drop_last=True, num_workers=config.num_workers,
                      sampler=ResumeSampler(sampler, batches_done * config.batch_size),
                      collate_fn=data.collate_readable, pin_memory=device.type == "cuda",
                      worker_init_fn=stopping.ignore_in_worker if config.num_workers else None)


def validation_nme(model: LAB, faces: list, device: torch.device, batch_size: int) -> float:
    """Mean NME on the held-out training faces, measured as ``labfast eval`` measures it."""
    model.eval()
    predicted = predict_faces(model, faces, device, batch_size=batch_size, progress=False)
    set_training_mode(model)
    truth = np.stack([face.landmarks for face in faces])
    boxes = np.stack([face.box for face in faces])
    return float(metrics.nme(predicted, truth, model.scheme, boxes=boxes).mean())
