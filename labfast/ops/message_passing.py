"""Message passing between the K boundary branches of the estimator (LAB Sec. 3.2, after
Chu et al., CVPR 2016, "Structured Feature Learning for Pose Estimation").

Branch features are stored side by side: ``features`` is ``(N, K * C, H, W)``, branch ``k`` in
channels ``[k*C, (k+1)*C)``. A directed edge ``e = (src, dst)`` carries a message
``conv(x_src, W_e)`` (a ``k×k`` convolution, same padding) that is added to the destination:

    out_dst = x_dst + Σ_{e=(src, dst)} conv(x_src, W_e) + b_e

``weights`` is ``(E, C, C, k, k)`` (``k`` odd), ``bias`` ``(E, C)``. Intra-level passing uses the
boundary neighbour graph within a stack; inter-level passing is the same op between stacks.

``message_passing`` dispatches through ``labfast.ops.backend`` (op name ``"message_passing"``,
forced by ``LABFAST_BACKEND_MESSAGE_PASSING``; fast path: the fused Triton kernels of
``labfast.kernels.message_passing``, forward and backward); ``message_passing_ref`` is the plain
PyTorch definition it is judged by.

Autocast: inside an autocast region the op runs in the autocast dtype, like the convolutions it
stands for: features, weights and bias are cast to it first (the op wants one dtype for the three).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import labfast.ops.backend as backend
from labfast.ops.boundary_heatmaps import index_table

OP = "message_passing"
FAST_PATHS = ("triton",)
# Device types that have an autocast mode, found once at import. ``torch.is_autocast_enabled``
# raises for a device type without one (the meta device ``labfast.perf.roofline`` traces on), and torch
# 2.11's Dynamo cannot trace ``torch.amp.is_autocast_available`` (a graph break at every message
# passing: 16 graphs for the paper model; 2.13 traces it), whereas a set of constant strings is
# traced on every version.
_AUTOCAST_DEVICE_TYPES = frozenset(
    device_type
    for device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "maia", "xla", "ipu",
                        torch._C._get_privateuse1_backend_name())
    if torch.amp.is_autocast_available(device_type)
)


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


def message_passing_dense(
    features: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor | None,
    edges,
) -> torch.Tensor:
    """The sum of ``message_passing_ref`` as one dense convolution: a training-speed form for the CPU.

    With ``S`` the branches that send and ``D`` those that receive, the messages are one ``k×k``
    convolution from the ``|S|·C`` source channels to the ``|D|·C`` destination channels whose
    weight holds ``W_e`` in block ``(dst, src)`` of each edge ``e`` and zeros elsewhere, and whose
    bias is the sum of the ``b_e`` into each destination:

        out_dst = x_dst + Σ_{src ∈ S} conv(x_src, W_(src, dst)) + Σ_{e=(src, dst)} b_e

    The same as the reference in exact arithmetic (a zero block adds exact zeros; edges repeated
    between one pair add up); in floating point the terms are summed in another order, so the two
    agree to rounding (``tests/ops/test_message_passing_dense.py``). Why: oneDNN runs a grouped
    convolution of C = 4 channel groups far below the rate of a dense one, so on a dense graph
    the dense convolution wins although it does ``|S|·|D| / E`` times the multiply-adds (4.4x on
    the intra-level graph of 300-W: 13 branches, 38 edges); on a sparse graph (inter-level
    passing: one edge per destination, 13x) it loses (``benchmarks/test_message_passing.py``).
    Plain PyTorch: no fast path, no operator; ``(N, K*C, H, W)`` -> ``(N, K*C, H, W)``.
    """
    features, weights, bias = _autocast(features, weights, bias)
    edges, num_branches = check_message_passing_arguments(features, weights, bias, edges)
    if not edges:
        return features.clone()
    channels, size = weights.shape[1], weights.shape[-1]
    senders, receivers = sorted({src for src, _ in edges}), sorted({dst for _, dst in edges})
    sender_of = [senders.index(src) for src, _ in edges]
    receiver_of = [receivers.index(dst) for _, dst in edges]
    blocks = weights.new_zeros(len(receivers), len(senders), channels, channels, size, size).index_put(
        (_table(receiver_of, features), _table(sender_of, features)), weights, accumulate=True)
    dense_weight = blocks.transpose(1, 2).reshape(len(receivers) * channels, len(senders) * channels, size, size)
    dense_bias = None if bias is None else bias.new_zeros(len(receivers), channels).index_add(
        0, _table(receiver_of, features), bias).flatten()
    n, _, height, width = features.shape
    branches = features.view(n, num_branches, channels, height, width)
    branches_sent = branches if senders == list(range(num_branches)) else branches.index_select(
        1, _table(senders, features))
    messages = F.conv2d(branches_sent.reshape(n, -1, height, width), dense_weight, dense_bias,
                        padding=size // 2).view(n, len(receivers), channels, height, width)
    if receivers == list(range(num_branches)):
        return (branches + messages).view_as(features)
    return branches.index_add(1, _table(receivers, features), messages).view_as(features)


def _table(values: list[int], like: torch.Tensor) -> torch.Tensor:
    """A constant index tensor on ``like``'s device, made once per process (``index_table``)."""
    return index_table(tuple(values), like.device)


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


def _autocast(features: torch.Tensor, weights: torch.Tensor,
              bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The three in the autocast dtype inside an autocast region, else unchanged."""
    device = features.device.type
    if not (device in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device)):
        return features, weights, bias
    dtype = torch.get_autocast_dtype(device)
    return features.to(dtype), weights.to(dtype), None if bias is None else bias.to(dtype)


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
    features, weights, bias = _autocast(features, weights, bias)
    edges, _ = check_message_passing_arguments(features, weights, bias, edges)
    if backend.select_for(OP, features.device, features.dtype, FAST_PATHS) == "reference":
        return message_passing_ref(features, weights, bias, edges)
    return torch.ops.labfast.message_passing(features, weights, bias, [index for edge in edges for index in edge])


# ---------------------------------------------------------------------------------------------
# The operators: ``edges`` travel flat, ``[src_0, dst_0, src_1, dst_1, ...]``. Their bodies run
# eagerly (never traced) and pick the path with ``backend.run``; one that falls back to the
# reference (failed self-check, compile error) is differentiated with ``torch.func.vjp``.


def _pairs(edges: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple(zip(edges[0::2], edges[1::2]))


def _kernels():
    from labfast.kernels import message_passing as kernels

    return kernels


@torch.library.custom_op("labfast::message_passing", mutates_args=())
def _message_passing_op(features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None,
                        edges: list[int]) -> torch.Tensor:
    pairs, num_branches = _pairs(edges), features.shape[1] // weights.shape[1]
    return backend.run(
        OP, features,
        {"triton": lambda: _kernels().message_passing_forward(features, weights, bias, pairs, num_branches)},
        lambda: message_passing_ref(features, weights, bias, pairs).contiguous())


@_message_passing_op.register_fake
def _(features, weights, bias, edges):
    return torch.empty(features.shape, dtype=features.dtype, device=features.device)


@torch.library.custom_op("labfast::message_passing_backward", mutates_args=())
def _message_passing_backward_op(
    grad: torch.Tensor, features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None,
    edges: list[int], needs_input_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dL/dfeatures, dL/dweights, dL/dbias)``; an empty tensor where not needed (or no bias)."""
    pairs, num_branches = _pairs(edges), features.shape[1] // weights.shape[1]
    needs = _needs(needs_input_grad, bias)

    def reference():
        inputs = (features, weights) if bias is None else (features, weights, bias)
        grads = torch.func.vjp(lambda f, w, b=None: message_passing_ref(f, w, b, pairs), *inputs)[1](grad)
        # never a view of grad (with no edges dL/dfeatures is grad itself)
        return (*(g.clone(memory_format=torch.contiguous_format) for g in grads), None)[:3]

    grads = backend.run(
        OP, features,
        {"triton": lambda: _kernels().message_passing_backward(grad, features, weights, pairs, num_branches, needs)},
        reference)
    return tuple(g.contiguous() if need else x.new_empty(0)
                 for g, need, x in zip(grads, needs, _like(features, weights, bias)))


def _needs(needs_input_grad: list[bool], bias: torch.Tensor | None) -> tuple[bool, bool, bool]:
    return needs_input_grad[0], needs_input_grad[1], needs_input_grad[2] and bias is not None


def _like(features: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The tensors whose shapes and dtypes the three gradients take (weights' for an absent bias)."""
    return features, weights, weights if bias is None else bias


@_message_passing_backward_op.register_fake
def _(grad, features, weights, bias, edges, needs_input_grad):
    return tuple(torch.empty(x.shape if need else (0,), dtype=x.dtype, device=x.device)
                 for need, x in zip(_needs(needs_input_grad, bias), _like(features, weights, bias)))


def _message_passing_setup(ctx, inputs, output):
    features, weights, bias, edges = inputs
    ctx.save_for_backward(features, weights, bias)
    ctx.edges = edges


def _message_passing_backward(ctx, grad):
    features, weights, bias = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:3])
    grads = torch.ops.labfast.message_passing_backward(grad, features, weights, bias, ctx.edges, needs)
    return (*(g if need else None for g, need in zip(grads, needs)), None)


_message_passing_op.register_autograd(_message_passing_backward, setup_context=_message_passing_setup)


def _self_check(device: torch.device, dtype: torch.dtype) -> tuple[backend.Results, backend.Results]:
    """The public function against the reference on a small graph: branches 1 and 2 have two
    incoming edges, 4 channels per branch, 3×3 messages."""
    edges = ((0, 1), (1, 2), (2, 1), (0, 2))
    channels, ksize = 4, 3
    inputs = [backend.random_tensor(1, 3 * channels, 8, 8, device=device, dtype=dtype, seed=0),
              backend.random_tensor(len(edges), channels, channels, ksize, ksize, device=device, dtype=dtype,
                                    seed=1, scale=(channels * ksize * ksize) ** -0.5),
              backend.random_tensor(len(edges), channels, device=device, dtype=dtype, seed=2)]
    return (backend.outputs_and_grads(lambda f, w, b: message_passing(f, w, b, edges), inputs),
            backend.outputs_and_grads(lambda f, w, b: message_passing_ref(f, w, b, edges), inputs))


backend.register_self_check(OP, _self_check)
