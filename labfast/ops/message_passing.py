"""Message passing between the K boundary branches of the estimator (LAB Sec. 3.2, after
Chu et al., CVPR 2016, "Structured Feature Learning for Pose Estimation").

Branch features are stored side by side: ``features`` is ``(N, K * C, H, W)``, branch ``k`` in
channels ``[k*C, (k+1)*C)``. A directed edge ``e = (src, dst)`` carries a message
``conv(x_src, W_e)`` (a ``k×k`` convolution, same padding) that is added to the destination:

    out_dst = x_dst + Σ_{e=(src, dst)} conv(x_src, W_e) + b_e

``weights`` is ``(E, C, C, k, k)`` (``k`` odd), ``bias`` ``(E, C)``. Intra-level passing uses the
boundary neighbour graph within a stack; inter-level passing is the same op between stacks.

``message_passing`` dispatches through ``labfast.ops.backend`` (fast path: the fused Triton
kernels of ``labfast.kernels.message_passing``, forward and backward); ``message_passing_ref`` is
the plain PyTorch definition it is judged by.
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
    """Reference: one grouped convolution over the gathered sources, summed into destinations.

    The sum over a destination's incoming edges is a product with a constant one-hot routing
    matrix ``(K, E)`` rather than ``index_add``: same arithmetic, and it exports to ONNX correctly
    (``index_add`` with repeated destinations exports as ``ScatterND(add)``, which onnxruntime
    1.32 on CPU sometimes sums wrongly; the legacy exporter drops all but one message).

    ``(N, K*C, H, W)`` -> ``(N, K*C, H, W)``: ``out_dst = x_dst + Σ_{e=(src, dst)} conv(x_src, W_e) + b_e``.
    """
    num_edges, channels = weights.shape[0], weights.shape[1]
    if len(edges) != num_edges:
        raise ValueError(f"{len(edges)} edges but weights hold {num_edges}")
    if num_edges == 0:  # no messages (e.g. K = 1): the identity; F.conv2d rejects groups=0
        return features.clone()
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
    routing = torch.zeros(kc // channels, num_edges, dtype=messages.dtype, device=features.device)
    routing[[dst for _, dst in edges], list(range(num_edges))] = 1
    out = branches + torch.einsum("ke,nechw->nkchw", routing, messages)
    return out.view(n, kc, h, w)


def check_message_passing_arguments(
    features: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    edges,
) -> tuple[tuple[tuple[int, int], ...], int]:
    """Validate the op's arguments; return ``edges`` as a tuple of int pairs and ``K``.

    Raises ``ValueError`` naming the argument and the offending value.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (N, K*C, H, W); got shape {tuple(features.shape)}")
    if weights.dim() != 5 or weights.shape[1] != weights.shape[2] or weights.shape[3] != weights.shape[4]:
        raise ValueError(f"weights must be (E, C, C, k, k); got shape {tuple(weights.shape)}")
    num_edges, channels, ksize = weights.shape[0], weights.shape[1], weights.shape[-1]
    if ksize % 2 == 0:
        raise ValueError(f"kernel size must be odd for same padding; weights have k={ksize}")
    if channels == 0 or features.shape[1] % channels != 0:
        raise ValueError(
            f"features have {features.shape[1]} channels, not a multiple of the {channels} channels per branch in weights")
    num_branches = features.shape[1] // channels
    if bias is not None and tuple(bias.shape) != (num_edges, channels):
        raise ValueError(f"bias must be (E, C) = ({num_edges}, {channels}); got shape {tuple(bias.shape)}")
    for name, tensor in (("weights", weights), ("bias", bias)):
        if tensor is None:
            continue
        if tensor.dtype != features.dtype:
            raise ValueError(f"{name} dtype {tensor.dtype} differs from features dtype {features.dtype}")
        if tensor.device != features.device:
            raise ValueError(f"{name} are on {tensor.device} but features on {features.device}")
    try:
        edges = tuple((int(src), int(dst)) for src, dst in edges)
    except (TypeError, ValueError) as error:
        raise ValueError(f"edges must be (src, dst) integer pairs; got {edges!r}") from error
    if len(edges) != num_edges:
        raise ValueError(f"{len(edges)} edges but weights hold {num_edges}")
    for index, (src, dst) in enumerate(edges):
        if not (0 <= src < num_branches and 0 <= dst < num_branches):
            raise ValueError(f"edge {index} = ({src}, {dst}) names a branch outside 0..{num_branches - 1}")
    return edges, num_branches


def message_passing(
    features: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    edges,
) -> torch.Tensor:
    """``(N, K*C, H, W)`` -> ``(N, K*C, H, W)``: ``out_dst = x_dst + Σ_{e=(src, dst)} conv(x_src, W_e) + b_e``.

    ``edges`` is a sequence of ``(src, dst)`` branch pairs, one per row of ``weights``; the fused
    path caches its routing tables per edge tuple, so pass the same tuple every call.
    """
    edges, _ = check_message_passing_arguments(features, weights, bias, edges)
    if backend.select("message_passing", features, supported=("triton",)) == "triton":
        from labfast.kernels.message_passing import message_passing_triton

        return backend.run_fast("message_passing", "triton", features,
                                lambda: message_passing_triton(features, weights, bias, edges),
                                lambda: message_passing_ref(features, weights, bias, edges))
    return message_passing_ref(features, weights, bias, edges)
