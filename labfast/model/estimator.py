"""Boundary heatmap estimator (LAB Sec. 3.2): stacked hourglass with intra- and inter-level
message passing between the K boundary branches (after Chu et al., CVPR 2016).

Per stack ``s``::

    x_s ─ hourglass ─ residual ─ 1×1 ─ features ─ 1×1 ─ branches (N, K·C, h, w)
                                                           │ inter-level: + conv(branches_{s-1})
                                                           │ intra-level: + Σ_neighbours conv(branch)
                                                           └ grouped 1×1 ─ heatmaps_s (N, K, h, w)
    x_{s+1} = x_s + 1×1(features) + 1×1(heatmaps_s)          (Newell's re-injection)

Every stack's heatmaps are returned for intermediate supervision. Both message passings are one
parallel round of ``labfast.ops.message_passing`` (Chu et al. pass messages sequentially along a
tree in both directions; one parallel round over a graph with both edge directions lets every
boundary hear all its neighbours at the same cost, and is what the fused op computes).
"""
from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn as nn

from labfast import ops
from labfast.model.batch_norm_act import BatchNormAct
from labfast.model.config import LABConfig
from labfast.model.hourglass import Hourglass, ResidualBlock
from labfast.ops.message_passing import message_passing_dense
from labfast.schemes import Scheme

# Boundaries adjacent in face structure, by the boundary names of labfast.schemes (the paper
# shows message passing between boundaries but lists no graph; this is our choice). The eyes
# hang from the eyebrows and the nose bridge, the nose above the upper lip, the lip lines form
# a chain from top to bottom, and the contour meets the eyebrows and the chin.
_FACE_STRUCTURE = (
    ("contour", "left_eyebrow"),
    ("contour", "right_eyebrow"),
    ("contour", "lower_lip_lower_side"),
    ("left_eyebrow", "nose_bridge"),
    ("right_eyebrow", "nose_bridge"),
    ("left_eyebrow", "left_upper_eyelid"),
    ("right_eyebrow", "right_upper_eyelid"),
    ("nose_bridge", "left_upper_eyelid"),
    ("nose_bridge", "right_upper_eyelid"),
    ("nose_bridge", "nose_boundary"),
    ("left_upper_eyelid", "left_lower_eyelid"),
    ("right_upper_eyelid", "right_lower_eyelid"),
    ("left_lower_eyelid", "nose_boundary"),
    ("right_lower_eyelid", "nose_boundary"),
    ("nose_boundary", "upper_lip_upper_side"),
    ("upper_lip_upper_side", "upper_lip_lower_side"),
    ("upper_lip_lower_side", "lower_lip_upper_side"),
    ("lower_lip_upper_side", "lower_lip_lower_side"),
    # AFLW-19 names (one line per eye, one for the mouth)
    ("left_eyebrow", "left_eye"),
    ("right_eyebrow", "right_eye"),
    ("left_eye", "nose_boundary"),
    ("right_eye", "nose_boundary"),
    ("nose_boundary", "mouth"),
)


def boundary_neighbours(scheme: Scheme) -> tuple[tuple[int, int], ...]:
    """Directed edges ``(src, dst)`` of the intra-level graph, both directions of every pair.

    Two boundaries are neighbours when they share a landmark (eyelids meeting at the eye corners,
    lip lines at the mouth corners) or when ``_FACE_STRUCTURE`` lists their names as adjacent.
    Boundaries whose names are not in that table only get the shared-landmark edges.
    """
    names = scheme.boundary_names
    index = {name: k for k, name in enumerate(names)}
    pairs: set[tuple[int, int]] = set()
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if set(scheme.boundaries[names[a]]) & set(scheme.boundaries[names[b]]):
                pairs.add((a, b))
    for first, second in _FACE_STRUCTURE:
        if first in index and second in index:
            pairs.add(tuple(sorted((index[first], index[second]))))
    return tuple(sorted(edge for a, b in pairs for edge in ((a, b), (b, a))))


class MessagePassing(nn.Module):
    """Learnable messages along fixed directed edges between branches of ``channels`` channels.

    ``(N, B·C, h, w) -> (N, B·C, h, w)``: ``out_dst = x_dst + Σ_{(src, dst)} conv_k×k(x_src, W_e) + b_e``,
    computed by ``labfast.ops.message_passing`` (its fast path when one exists).

    The weights are stored as ``(E·C, C, k, k)`` and viewed as the op's ``(E, C, C, k, k)``: a 5-D
    parameter would make ``model.to(memory_format=torch.channels_last)`` fail ("required rank 4").

    ``dense``: compute the same sum as one dense convolution (``message_passing_dense``, faster on
    the CPU for a dense graph); a setting of the computation, not of the model (not saved).
    """

    dense = False

    def __init__(self, edges: tuple[tuple[int, int], ...], channels: int, kernel_size: int) -> None:
        super().__init__()
        self.edges = tuple(edges)
        self.channels = channels
        self.weight = nn.Parameter(torch.empty(len(edges) * channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(len(edges), channels))
        # nn.Conv2d's default scale, shrunk by the largest in-degree so that a branch with many
        # neighbours does not start with messages far louder than its own features.
        in_degree = max(Counter(dst for _, dst in self.edges).values(), default=1)
        bound = 1.0 / math.sqrt(channels * kernel_size * kernel_size * in_degree)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, branches: torch.Tensor) -> torch.Tensor:
        # The op wants one dtype for features, weights and bias (under autocast it casts the three
        # to the autocast dtype itself).
        weight = self.weight.view(len(self.edges), self.channels, *self.weight.shape[1:])
        passing = message_passing_dense if self.dense else ops.message_passing
        return passing(
            branches, weight.to(branches.dtype), self.bias.to(branches.dtype), self.edges
        )

    def extra_repr(self) -> str:
        return f"edges={len(self.edges)}, channels={self.channels}, kernel={self.weight.shape[-1]}"


class InterLevelPassing(nn.Module):
    """Messages from each boundary branch of stack ``s-1`` to the same boundary of stack ``s``.

    Implemented with the same op over the ``2K`` branches ``[previous, current]`` and the edges
    ``(k, K + k)``; the current half of the result is ``current_k + conv(previous_k) + b_k``.
    """

    def __init__(self, num_boundaries: int, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.num_boundaries = num_boundaries
        edges = tuple((k, num_boundaries + k) for k in range(num_boundaries))
        self.passing = MessagePassing(edges, channels, kernel_size)

    def forward(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        out = self.passing(torch.cat([previous.to(current.dtype), current], dim=1))
        return out[:, previous.shape[1]:]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """1×1 conv, then BN-ReLU as one ``BatchNormAct``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        BatchNormAct(out_channels),
    )


class BoundaryHeatmapEstimator(nn.Module):
    """``(N, 3, S, S)`` normalised images -> list of ``stacks`` heatmaps ``(N, K, S/4, S/4)``."""

    def __init__(self, boundary_scheme: Scheme, config: LABConfig) -> None:
        super().__init__()
        width, branch = config.hourglass_channels, config.boundary_channels
        self.num_boundaries = k = boundary_scheme.num_boundaries
        self.message_passing = config.message_passing
        # Newell's stem: 7×7 stride 2, residuals, max-pool -> a quarter of the input resolution.
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
            BatchNormAct(width),
            nn.Identity(),  # the ReLU's slot (fused above): later indices, hence state-dict keys, unchanged
            ResidualBlock(width, width),
            nn.MaxPool2d(2),
            ResidualBlock(width, width),
            ResidualBlock(width, width),
        )
        self.hourglasses = nn.ModuleList(Hourglass(config.hourglass_depth, width) for _ in range(config.stacks))
        self.features = nn.ModuleList(
            nn.Sequential(ResidualBlock(width, width), _conv_bn_relu(width, width))
            for _ in range(config.stacks)
        )
        self.branches = nn.ModuleList(_conv_bn_relu(width, k * branch) for _ in range(config.stacks))
        self.heads = nn.ModuleList(nn.Conv2d(k * branch, k, 1, groups=k) for _ in range(config.stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(config.stacks - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(k, width, 1) for _ in range(config.stacks - 1))
        if config.message_passing:
            edges = boundary_neighbours(boundary_scheme)
            self.intra = nn.ModuleList(
                MessagePassing(edges, branch, config.message_kernel) for _ in range(config.stacks)
            )
            self.inter = nn.ModuleList(
                InterLevelPassing(k, branch, config.message_kernel) for _ in range(config.stacks - 1)
            )

    def use_dense_message_passing(self, enabled: bool = True) -> None:
        """Intra-level message passing as one dense convolution (``MessagePassing.dense``): the same
        sums in another order, about 3x faster forward and backward on one CPU thread at the small
        preset's training shapes. Inter-level passing keeps the op: one edge per destination, where
        the dense form does 13x the multiply-adds and is slower (``benchmarks/test_message_passing.py``).
        """
        for passing in getattr(self, "intra", ()):
            passing.dense = enabled

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        heatmaps: list[torch.Tensor] = []
        previous = None
        for s, hourglass in enumerate(self.hourglasses):
            features = self.features[s](hourglass(x))
            branches = self.branches[s](features)
            if self.message_passing:
                if previous is not None:
                    branches = self.inter[s - 1](previous, branches)
                branches = self.intra[s](branches)
                previous = branches
            heatmaps.append(self.heads[s](branches))
            if s + 1 < len(self.hourglasses):
                x = x + self.merge_features[s](features) + self.merge_heatmaps[s](heatmaps[-1])
        return heatmaps
