"""Message passing between the K boundary branches of the estimator (LAB Sec. 3.1, after
Chu et al., CVPR 2016, "Structured Feature Learning for Pose Estimation").

Branch features are stored side by side: ``features`` is ``(N, K * C, H, W)``, branch ``k`` in
channels ``[k*C, (k+1)*C)``. A directed edge ``e = (src, dst)`` carries a message
``conv(x_src, W_e)`` (a ``k×k`` convolution, same padding) that is added to the destination:

    out_dst = x_dst + Σ_{e=(src, dst)} conv(x_src, W_e) + b_e

``weights`` is ``(E, C, C, k, k)``, ``bias`` ``(E, C)``. Intra-level passing uses the boundary
neighbour graph within a stack; inter-level passing is the same op between stacks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from labfast.ops import backend


def message_passing_ref(
    features: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    edges: tuple[tuple[int, int], ...],
) -> torch.Tensor:
    """Reference: one grouped convolution over the gathered sources, scatter-added to destinations."""
    num_edges, channels = weights.shape[0], weights.shape[1]
    if len(edges) != num_edges:
        raise ValueError(f"{len(edges)} edges but weights hold {num_edges}")
    n, kc, h, w = features.shape
    branches = features.view(n, kc // channels, channels, h, w)
    sources = branches[:, [src for src, _ in edges]].reshape(n, num_edges * channels, h, w)
    messages = F.conv2d(
        sources,
        weights.reshape(num_edges * channels, channels, *weights.shape[-2:]),
        None if bias is None else bias.reshape(-1),
        padding=weights.shape[-1] // 2,
        groups=num_edges,
    ).view(n, num_edges, channels, h, w)
    destinations = torch.tensor([dst for _, dst in edges], device=features.device)
    out = branches.index_add(1, destinations, messages)
    return out.view(n, kc, h, w)


def message_passing(features, weights, bias, edges):
    backend.select("message_passing", features, supported=())
    return message_passing_ref(features, weights, bias, edges)
