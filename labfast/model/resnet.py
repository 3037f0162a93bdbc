"""ResNet-18 (He et al., CVPR 2016) written out by hand (torchvision does not import beside the
CPU torch build used here). LAB's regressor (Sec. 3.1) is a ResNet-18 whose stem takes the fused
input and whose four stages are each followed by feature fusion, so the stem and the stages are
exposed separately instead of as one ``forward``."""
from __future__ import annotations

import torch
import torch.nn as nn

from labfast.model.batch_norm_act import BatchNormAct

RESNET18_BLOCKS = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """``relu(x + bn(conv3×3(relu(bn(conv3×3(x))))))``, with a strided 1×1 projection on the skip
    path when the stride or width changes. ``(N, in, H, W) -> (N, out, H/stride, W/stride)``.
    Both ``relu(bn(·))`` and ``relu(bn(·) + identity)`` are one ``BatchNormAct`` each."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNormAct(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNormAct(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), identity)


def resnet_stem(in_channels: int, width: int, kernel_size: int = 7) -> nn.Sequential:
    """``k×k`` (7×7 in ResNet-18) stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool:
    ``(N, in, H, W) -> (N, width, H/4, W/4)``. BN-ReLU is one ``BatchNormAct``; the ReLU's slot
    stays as an ``nn.Identity`` so that the max-pool keeps its index."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
        BatchNormAct(width),
        nn.Identity(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


def resnet_stages(width: int, blocks: tuple[int, ...] = RESNET18_BLOCKS) -> nn.ModuleList:
    """The four stages; stage ``s`` (1-based) has ``width * 2**(s-1)`` channels and, from stage 2
    on, halves the resolution."""
    stages = nn.ModuleList()
    in_channels = width
    for index, count in enumerate(blocks):
        out_channels = width * 2 ** index
        stride = 1 if index == 0 else 2
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(count - 1)]
        stages.append(nn.Sequential(*layers))
        in_channels = out_channels
    return stages


def init_resnet_(module: nn.Module) -> None:
    """He (fan-out) initialisation of convolutions, BN to identity — the usual ResNet start."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
