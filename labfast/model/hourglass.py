"""Residual block and hourglass of Newell et al., "Stacked Hourglass Networks for Human Pose
Estimation" (ECCV 2016), the building blocks of LAB's boundary heatmap estimator (Sec. 3.2) and of
the small transform T of its feature fusion (Sec. 3.1)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from labfast.model.batch_norm_act import BatchNormAct


class ResidualBlock(nn.Module):
    """Pre-activation bottleneck ``x + f(x)``: BN-ReLU-1×1 (out/2), BN-ReLU-3×3, BN-ReLU-1×1 (out).

    ``(N, in_channels, H, W) -> (N, out_channels, H, W)``; a 1×1 projection on the skip path when
    the widths differ (Newell et al. 2016, Fig. 4). Each BN-ReLU pair is one ``BatchNormAct``; the
    ReLU's slot of ``body`` is kept as an ``nn.Identity`` so that the state-dict keys (the
    ``body.<index>`` of every convolution and batch norm) are those of the unfused block.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        middle = max(out_channels // 2, 1)
        self.body = nn.Sequential(
            BatchNormAct(in_channels), nn.Identity(),
            nn.Conv2d(in_channels, middle, 1, bias=False),
            BatchNormAct(middle), nn.Identity(),
            nn.Conv2d(middle, middle, 3, padding=1, bias=False),
            BatchNormAct(middle), nn.Identity(),
            nn.Conv2d(middle, out_channels, 1),
        )
        self.skip = (
            nn.Identity() if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Hourglass(nn.Module):
    """Recursive hourglass of ``depth`` down-sampling steps, ``(N, C, H, W) -> (N, C, H, W)``.

    At each level: a skip branch of one residual block at the current resolution, and a lower
    branch (max-pool, residual, the next level, residual, nearest up-sampling); their sum is the
    output. ``H`` and ``W`` must be divisible by ``2**depth``.
    """

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.skip = ResidualBlock(channels, channels)
        self.down = ResidualBlock(channels, channels)
        self.inner = Hourglass(depth - 1, channels) if depth > 1 else ResidualBlock(channels, channels)
        self.up = ResidualBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lower = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(lower, size=x.shape[-2:], mode="nearest")
