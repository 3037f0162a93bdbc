"""Boundary effectiveness discriminator (LAB Sec. 3.3).

It tells ground-truth boundary heatmaps ("real") from estimated ones, where an estimated heatmap
counts as real only when the landmarks regressed from it are accurate (``losses.fake_labels``:
``d_fake = 0 if Pr_s(Dist(s) < θ) < δ else 1``). The paper does not describe its layers; we use a
DCGAN-style stack (4×4 stride-2 convolutions with LeakyReLU, BN from the second layer), then a
global average pool and a linear layer to one logit per face. Logits, not probabilities, so the
losses use ``binary_cross_entropy_with_logits`` (numerically safe, and allowed under autocast).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class BoundaryDiscriminator(nn.Module):
    """``(N, K, h, w)`` heatmaps -> ``(N,)`` logits of "effective (real) boundary heatmaps"."""

    def __init__(self, num_boundaries: int, channels: int, heatmap_size: int, layers: int = 4) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        in_channels = num_boundaries
        layers = max(1, min(layers, heatmap_size.bit_length() - 2))  # stop at 2×2 or larger
        for index in range(layers):
            out_channels = channels * 2 ** min(index, 3)
            modules.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=index == 0))
            if index > 0:
                modules.append(nn.BatchNorm2d(out_channels))
            modules.append(nn.LeakyReLU(0.2, inplace=True))
            in_channels = out_channels
        self.body = nn.Sequential(*modules)
        self.head = nn.Linear(in_channels, 1)

    def forward(self, heatmaps: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(heatmaps).mean(dim=(2, 3))).squeeze(1)
