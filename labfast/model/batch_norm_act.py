"""``BatchNormAct``: an ``nn.BatchNorm2d`` that also adds a residual and applies ReLU, in one op.

It *is* an ``nn.BatchNorm2d`` (a subclass, same parameters and buffers: ``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), so checkpoints of the unfused model
load unchanged and code that looks for batch norms (initialisation, the ONNX exporter) still finds
it. Its forward replaces ``relu(bn(x) + residual)`` with ``labfast.ops.batch_norm_act``: the
plain PyTorch reference on the CPU (the same arithmetic as the modules it replaces), the fused
Triton kernels on a GPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from labfast import ops


class BatchNormAct(nn.BatchNorm2d):
    """``(N, C, H, W)`` ``x`` (and optional ``residual`` of the same shape) -> ``relu(bn(x) + residual)``
    (``relu=False``: no ReLU). Training and eval behave as ``nn.BatchNorm2d``'s: batch statistics
    and a running-statistic update (``momentum``, or the cumulative average when ``momentum=None``)
    in training, the running statistics in eval mode."""

    def __init__(self, num_features: int, relu: bool = True, **batch_norm_arguments) -> None:
        super().__init__(num_features, **batch_norm_arguments)
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input_dim(x)
        # nn.BatchNorm2d.forward's bookkeeping, unchanged
        average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            average_factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_statistics = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return ops.batch_norm_act(
            x, self.weight, self.bias, self.running_mean if keep_running else None,
            self.running_var if keep_running else None, residual, batch_statistics, average_factor, self.eps,
            self.relu,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, relu={self.relu}"
