"""The training order of an epoch with pose-based data balancing (``TrainConfig.pose_balance_bins``)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from labfast.data import pose
from labfast.train import presets


class BalancedSampler(Sampler[tuple[int, int]]):
    """Each epoch, ``len(weights)`` faces drawn with replacement with probability ∝ ``weights``,
    seeded by ``(seed, epoch)``, this process's share (every ``num_replicas``-th draw from ``rank``).

    It yields ``(index, copy)``: ``copy`` counts the earlier draws of the same face in this epoch,
    so that ``FaceDataset`` augments every copy anew (Feng et al. perturb each duplicate). The
    order is a pure function of ``(seed, epoch)``, so ``--resume`` skips into it exactly like into
    ``DistributedSampler``'s. An epoch has as many draws as the uniform sampler's (``len(weights)``
    rounded down to a multiple of ``num_replicas``): the schedule and the time budget see the same
    epoch length either way.
    """

    def __init__(self, weights: np.ndarray, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("BalancedSampler: weights must be a non-empty 1-D array of non-negative numbers")
        self.probabilities = weights / weights.sum()
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.total = len(weights) // num_replicas * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = rng.choice(len(self.probabilities), size=self.total, replace=True, p=self.probabilities)
        seen: dict[int, int] = {}
        pairs = []
        for index in drawn.tolist():
            pairs.append((index, seen.get(index, 0)))
            seen[index] = pairs[-1][1] + 1
        return iter(pairs[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.total // self.num_replicas


def pose_weights(faces: list, scheme: str, config: presets.TrainConfig) -> np.ndarray:
    """The training faces' sampling weights for ``config``'s pose balancing (``labfast.data.pose``)."""
    return pose.balance_weights(np.stack([face.landmarks for face in faces]), scheme,
                                config.pose_balance_bins, config.pose_balance_cap)
