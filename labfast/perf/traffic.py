"""FLOPs and bytes, and the time a device's peaks allow for them: recorded operator by operator
from eager PyTorch (``Traffic``), or stated for one row of the predicted table (``Prediction``).

A dispatch mode sees every aten operator eager PyTorch would launch (run it on the ``meta``
device: shapes only, nothing computed). For each operator it records

- FLOPs: ``torch.utils.flop_counter``'s formulas (2 per multiply-accumulate of convolutions and
  matrix products; element-wise work counts 0 there), with grouped convolutions' backward fixed;
- bytes: the operator's tensor inputs and outputs (views move nothing and count 0). This is what
  an *unfused* eager step must move at least; a fused kernel moves less.

The predicted time of one operator is ``max(FLOPs / peak FLOP/s, bytes / bandwidth)``; of a
stretch of eager code, the sum over its operators (no overlap, no launch overhead).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import conv_flop_count, flop_registry

from labfast.perf import devices


@dataclasses.dataclass
class Traffic:
    """What a stretch of eager PyTorch asks of the device, operator by operator."""

    calls: int = 0
    flops: int = 0
    bytes: int = 0
    per_operator: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (name, flops, bytes)

    def operator_seconds(self, ceiling: devices.Ceiling, dtype: str) -> list[tuple[str, float]]:
        """Per operator, ``(name, max(FLOPs / peak, bytes / bandwidth))``."""
        peak = ceiling.flops(dtype)
        return [(name, max(flops / peak, moved / ceiling.bandwidth)) for name, flops, moved in self.per_operator]

    def seconds(self, ceiling: devices.Ceiling, dtype: str) -> float:
        """The eager prediction: the sum of ``operator_seconds``."""
        return sum(seconds for _, seconds in self.operator_seconds(ceiling, dtype))

    def by_group(self) -> dict[str, tuple[int, int, int]]:
        """``group -> (calls, FLOPs, bytes)``, groups from ``operator_group``."""
        groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for name, flops, moved in self.per_operator:
            group = groups[operator_group(name)]
            group[0] += 1
            group[1] += flops
            group[2] += moved
        return {name: tuple(values) for name, values in groups.items()}


_GROUPS = (
    ("convolution", ("convolution",)),
    ("matrix product", ("mm", "addmm", "bmm", "matmul", "einsum")),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("activation", ("relu", "sigmoid", "threshold_backward", "leaky_relu", "hardtanh")),
    ("resampling", ("upsample", "max_pool", "avg_pool", "adaptive_avg_pool", "grid_sampler", "pixel_shuffle")),
    ("concatenation and copies", ("cat", "copy", "clone", "contiguous", "_to_copy", "stack", "slice_backward",
                                  "select_backward", "index", "gather", "scatter", "zeros", "ones", "full",
                                  "fill", "empty", "new_", "zero")),
    ("optimizer", ("_foreach",)),
    ("reduction and loss", ("sum", "mean", "mse_loss", "binary_cross_entropy", "norm", "amax", "amin", "max", "min")),
    ("element-wise arithmetic", ("add", "sub", "mul", "div", "exp", "sqrt", "rsqrt", "pow", "neg", "where",
                                 "clamp", "lerp", "addcmul", "addcdiv", "reciprocal", "abs", "sign", "lt", "gt",
                                 "ge", "le", "eq", "ne", "logical")),
)


def operator_group(name: str) -> str:
    """A coarse family of an aten operator name (``aten.native_batch_norm.default`` -> ``batch norm``)."""
    base = name.split(".")[1] if name.startswith("aten.") else name
    for group, stems in _GROUPS:
        if any(base.startswith(stem) or base.startswith(f"{stem}_") for stem in stems):
            return group
    return "other"


_NOT_KERNELS = {"aten._local_scalar_dense.default", "aten.detach.default", "aten._unsafe_view.default",
                "aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default",
                "aten.new_empty.default", "aten.new_empty_strided.default"}
"""Operators that launch no device kernel: a host read of a scalar (Adam's step count on the meta
device; on a GPU it lives on the host), autograd's detach and ``_unsafe_view`` (views whose schema
does not say so), and allocations (``empty*``: memory from the caching allocator, nothing written)."""


def operator_flops(func, args, kwargs, out) -> int:
    """FLOPs of one aten call: ``flop_registry``'s formulas, with grouped convolutions' backward fixed.

    torch's formula for ``convolution_backward`` ignores ``groups`` and over-counts a grouped
    convolution's backward about ``groups``-fold (13 groups: 14x; the message-passing convolutions are
    grouped). Here it is the forward's FLOPs once per gradient asked for (input, weight), as for any
    convolution: the same multiply-accumulates, read in another order.
    """
    if func is torch.ops.aten.convolution_backward.default:
        grad_output, inputs, weight = args[:3]
        transposed, output_mask = args[7], args[10]
        forward = conv_flop_count(inputs.shape, weight.shape, grad_output.shape, transposed)
        return int(forward) * (int(output_mask[0]) + int(output_mask[1]))
    packet = func._overloadpacket
    return int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0


def _aliases(func) -> bool:
    """True when every output of ``func`` is a view of an input (nothing moves)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def tensor_bytes(values) -> int:
    """Bytes held by the tensors and NumPy arrays in ``values`` (nested lists, tuples, dicts)."""
    leaves, _ = tree_flatten(values)
    return sum(leaf.numel() * leaf.element_size() if isinstance(leaf, torch.Tensor)
               else leaf.nbytes if isinstance(leaf, np.ndarray) else 0 for leaf in leaves)


class _TrafficMode(TorchDispatchMode):
    def __init__(self, traffic: Traffic):
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket not in flop_registry:
            # a composite operator (``conv2d`` under inference_mode reaches a mode undecomposed):
            # record the operators it is made of, as the kernels that run are theirs
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        name = str(func)
        if name in _NOT_KERNELS or name.startswith("profiler.") or _aliases(func):
            return out
        flops = operator_flops(func, args, kwargs, out)
        moved = tensor_bytes((args, kwargs)) + tensor_bytes(out)
        self.traffic.calls += 1
        self.traffic.flops += flops
        self.traffic.bytes += moved
        self.traffic.per_operator.append((name, flops, moved))
        return out


@contextlib.contextmanager
def recording() -> Iterator[Traffic]:
    """Record every aten operator run inside the block (use meta tensors: nothing is computed)."""
    traffic = Traffic()
    with _TrafficMode(traffic):
        yield traffic


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One row: a fused op call, a whole inference or a training step, at one batch and dtype."""

    name: str
    kind: str  # "fused op" | "model"
    flops: int
    bytes: int  # the minimum (fused op) or the unfused eager traffic (model)
    calls: int | None = None  # aten operators (model rows): a proxy for kernel launches
    eager_seconds: dict[str, float] | None = None  # per ceiling name, model rows (per-operator sum)
    compute: str = "tensor"  # the peak that bounds it: "tensor" cores or "cuda cores" (fp32)
    note: str = ""

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes if self.bytes else float("inf")

    def bound_seconds(self, ceiling: devices.Ceiling, dtype: str) -> float:
        """``max(FLOPs / peak, bytes / bandwidth)``: the least time the whole row could take."""
        peak = ceiling.fp32_flops if self.compute == "cuda cores" else ceiling.flops(dtype)
        return max(self.flops / peak, self.bytes / ceiling.bandwidth)
