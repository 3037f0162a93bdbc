"""Batch norm, an optional residual add and an optional ReLU as one op:

    out = relu( (x - E[x]) / sqrt(Var[x] + eps) · weight + bias + residual )

per channel of ``(N, C, H, W)`` ``x``; ``E`` and ``Var`` (biased) over ``N, H, W`` in training, the
running statistics in eval mode. In training the running statistics are updated in place exactly
as ``nn.BatchNorm2d`` does (``r <- (1 - momentum) r + momentum s``, unbiased variance).

Unfused, batch norm, the add and the ReLU each read and write the activation (the predicted
roofline of a paper-preset training step puts batch norm + activation + element-wise at ~45 ms of
an H100's memory time); the fused pass reads ``x`` (+ ``residual``) once more after the statistics
and writes ``out`` once, and its backward reads ``grad`` and ``x`` twice (and ``out``, only where a
residual was added: otherwise the ReLU's mask is recomputed from ``x``).

``batch_norm_act`` dispatches via ``labfast.ops.backend`` (op name ``"batch_norm_act"``, forced by
``LABFAST_BACKEND_BATCH_NORM_ACT``); ``batch_norm_act_ref`` is the plain PyTorch definition it is
judged by (it is also what runs on the CPU and what ONNX export sees: BatchNormalization, Add,
Relu). The fast path (Triton, ``labfast.kernels.batch_norm_act``) is two ``torch.library``
operators: ``labfast::batch_norm_statistics`` (the batch statistics; it declares the running
statistics it mutates) and ``labfast::batch_norm_act`` (the normalisation, with its backward
operator ``labfast::batch_norm_act_backward``), each with a fake, so ``torch.compile(fullgraph=True)``
traces them without a graph break.

Autocast: not an autocast op. It takes activations in any floating dtype with fp32 weights and
running statistics, as autocast gives them, and computes in fp32 (fp64 for fp64 activations).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import labfast.ops.backend as backend

OP = "batch_norm_act"
FAST_PATHS = ("triton",)


def batch_norm_act_ref(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                       residual: torch.Tensor | None = None, training: bool = True, momentum: float = 0.1,
                       eps: float = 1e-5, relu: bool = True) -> torch.Tensor:
    """``relu(batch_norm(x) + residual)`` with ``F.batch_norm``'s arguments (same result, same
    running-statistic update)."""
    out = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        out = out + residual
    return F.relu(out) if relu else out


def _check(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
           running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
           residual: torch.Tensor | None, training: bool) -> None:
    """The op's contract, with an error naming the argument that breaks it."""
    if x.dim() != 4:
        raise ValueError(f"batch_norm_act: x has shape {tuple(x.shape)}; expected (N, C, H, W)")
    if not x.is_floating_point():
        raise TypeError(f"batch_norm_act: x has dtype {x.dtype}; expected a floating dtype")
    channels = x.shape[1]
    for name, tensor in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                         ("running_var", running_var)):
        if tensor is not None and tuple(tensor.shape) != (channels,):
            raise ValueError(f"batch_norm_act: {name} has shape {tuple(tensor.shape)}; expected ({channels},)")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_act: running_mean and running_var must both be given or both be None")
    if not training and running_mean is None:
        raise ValueError("batch_norm_act: eval mode (training=False) needs running_mean and running_var")
    if training and x.numel() // max(channels, 1) <= 1:
        raise ValueError(f"batch_norm_act: expected more than 1 value per channel when training, "
                         f"got x of shape {tuple(x.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"batch_norm_act: residual is {tuple(residual.shape)} {residual.dtype} but x is "
                         f"{tuple(x.shape)} {x.dtype}; they must match")


def batch_norm_act(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                   residual: torch.Tensor | None = None, training: bool = True, momentum: float = 0.1,
                   eps: float = 1e-5, relu: bool = True) -> torch.Tensor:
    """``relu(batch_norm(x) + residual)``; see ``batch_norm_act_ref`` (same signature and result).

    The fast path: the batch statistics (training; the running ones in eval mode), then the fused pass."""
    _check(x, weight, bias, running_mean, running_var, residual, training)
    if backend.select_for(OP, x.device, x.dtype, FAST_PATHS) == "reference":
        return batch_norm_act_ref(x, weight, bias, running_mean, running_var, residual, training, momentum, eps, relu)
    channels, statistics = x.shape[1], _stat_dtype(x)
    if weight is None:  # affine=False: the identity affine map, constant (no gradient asked)
        weight = torch.ones(channels, device=x.device, dtype=statistics)
    if bias is None:
        bias = torch.zeros(channels, device=x.device, dtype=statistics)
    if training:
        mean, invstd = torch.ops.labfast.batch_norm_statistics(x.detach(), running_mean, running_var, momentum, eps)
    else:
        mean = running_mean.to(statistics)
        invstd = torch.rsqrt(running_var.to(statistics) + eps)
    return torch.ops.labfast.batch_norm_act(x, weight, bias, mean, invstd, residual, training, relu)


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` as NCHW-contiguous or channels_last (the kernels' two layouts), copying only if neither."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels run ``x`` in: channels_last if it is (and is not also contiguous), else NCHW."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _like(tensor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``tensor`` in the strides of ``x`` (``x`` NCHW-contiguous or channels_last)."""
    return tensor.contiguous(memory_format=_layout_of(x))


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    return values.view(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------
# The operators. Their bodies run eagerly (never traced) and pick the path with ``backend.run``:
# the Triton launchers, or (a fast path that fails its self-check or does not compile) the same
# formulas in plain PyTorch (``_*_ref``), in the dtype and layout the kernels give.


def _kernels():
    from labfast.kernels import batch_norm_act as kernels

    return kernels


def _statistics_ref(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                    momentum: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``(mean, 1 / sqrt(biased var + eps))`` per channel; the running statistics updated in
    place as ``nn.BatchNorm2d`` does (``r <- (1 - momentum) r + momentum s``, unbiased variance)."""
    var, mean = torch.var_mean(x.to(_stat_dtype(x)), dim=(0, 2, 3), correction=0)
    if running_mean is not None:
        count = x.numel() // x.shape[1]
        running_mean.copy_((1 - momentum) * running_mean.to(mean.dtype) + momentum * mean)
        running_var.copy_((1 - momentum) * running_var.to(var.dtype) + momentum * var * (count / (count - 1)))
    return mean, torch.rsqrt(var + eps)


@torch.library.custom_op("labfast::batch_norm_statistics", mutates_args=("running_mean", "running_var"))
def _batch_norm_statistics_op(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                              momentum: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``(mean, invstd)`` per channel, updating the running statistics in place when given.

    A separate op from the normalisation because ``torch.library`` gives autograd formulas to
    functional ops only: this one mutates and is called on ``x.detach()``; the gradient through
    the statistics is part of ``labfast::batch_norm_act``'s backward."""
    return backend.run(
        OP, x,
        {"triton": lambda: _kernels().batch_norm_statistics(_dense(x), running_mean, running_var, momentum, eps)},
        lambda: _statistics_ref(x, running_mean, running_var, momentum, eps))


@_batch_norm_statistics_op.register_fake
def _(x, running_mean, running_var, momentum, eps):
    channels = x.shape[1]
    return x.new_empty(channels, dtype=_stat_dtype(x)), x.new_empty(channels, dtype=_stat_dtype(x))


def _act_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
             residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """``relu((x - mean) · invstd · weight + bias + residual)`` in the statistics' dtype, stored in
    ``x``'s dtype and layout."""
    y = (x.to(mean.dtype) - _per_channel(mean)) * _per_channel(invstd * weight) + _per_channel(bias.to(mean.dtype))
    if residual is not None:
        y = y + residual.to(mean.dtype)
    return _like((torch.relu(y) if relu else y).to(x.dtype), x)


@torch.library.custom_op("labfast::batch_norm_act", mutates_args=())
def _batch_norm_act_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                       invstd: torch.Tensor, residual: torch.Tensor | None, training: bool,
                       relu: bool) -> torch.Tensor:
    """``relu((x - mean) · invstd · weight + bias + residual)``. ``training``: ``mean`` and ``invstd``
    are ``x``'s batch statistics, and the backward differentiates through them."""
    x = _dense(x)
    return backend.run(
        OP, x,
        {"triton": lambda: _kernels().batch_norm_act_apply(
            x, None if residual is None else _like(residual, x), mean, invstd, weight, bias, relu)},
        lambda: _act_ref(x, weight, bias, mean, invstd, residual, relu))


@_batch_norm_act_op.register_fake
def _(x, weight, bias, mean, invstd, residual, training, relu):
    return torch.empty_like(x, memory_format=_layout_of(x))


def _act_backward_ref(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None, weight: torch.Tensor,
                      bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, training: bool,
                      relu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward formulas of ``labfast.kernels.batch_norm_act`` (its module docstring), with
    ``g = grad · [out > 0]`` and ``x̂ = (x - mean) · invstd``."""
    accumulate, count = mean.dtype, x.numel() // x.shape[1]
    scale, shift = _per_channel(invstd * weight), _per_channel(bias.to(accumulate))
    centred = x.to(accumulate) - _per_channel(mean)
    g = grad.to(accumulate)
    if relu:
        g = torch.where((out > 0) if out is not None else (centred * scale + shift > 0), g, 0.0)
    xhat = centred * _per_channel(invstd)
    sum_g, sum_g_xhat = g.sum(dim=(0, 2, 3)), (g * xhat).sum(dim=(0, 2, 3))
    if training:
        g_x = (g - _per_channel(sum_g / count) - xhat * _per_channel(sum_g_xhat / count)) * scale
    else:
        g_x = g * scale
    masked = _like(g.to(x.dtype), x) if out is not None and relu else x.new_empty(0)
    return _like(g_x.to(x.dtype), x), sum_g_xhat.to(weight.dtype), sum_g.to(weight.dtype), masked


@torch.library.custom_op("labfast::batch_norm_act_backward", mutates_args=())
def _batch_norm_act_backward_op(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None, weight: torch.Tensor,
                                bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, training: bool,
                                relu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_weight, grad_bias, grad · [out > 0])``. ``out`` is given when a residual was
    added (the last result is then the residual's gradient under ReLU, else it is empty)."""
    x = _dense(x)
    return backend.run(
        OP, x,
        {"triton": lambda: _kernels().batch_norm_act_backward(
            _like(grad, x), x, None if out is None else _like(out, x), weight, bias, mean, invstd, training, relu)},
        lambda: _act_backward_ref(grad, x, out, weight, bias, mean, invstd, training, relu))


@_batch_norm_act_backward_op.register_fake
def _(grad, x, out, weight, bias, mean, invstd, training, relu):
    grad_x = torch.empty_like(x, memory_format=_layout_of(x))
    masked = torch.empty_like(x, memory_format=_layout_of(x)) if out is not None and relu else x.new_empty(0)
    return grad_x, torch.empty_like(weight), torch.empty_like(weight), masked


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, mean, invstd, residual, training, relu = inputs
    # out is kept only when a residual was added: without one the backward recomputes the ReLU's mask from x
    ctx.save_for_backward(x, output if residual is not None else None, weight, bias, mean, invstd)
    ctx.training, ctx.relu, ctx.has_residual = training, relu, residual is not None


def _backward(ctx, grad):
    x, out, weight, bias, mean, invstd = ctx.saved_tensors
    grad_x, grad_weight, grad_bias, masked = torch.ops.labfast.batch_norm_act_backward(
        grad, x, out, weight, bias, mean, invstd, ctx.training, ctx.relu)
    grad_residual = None
    if ctx.has_residual:
        grad_residual = masked if ctx.relu else grad
    return grad_x, grad_weight, grad_bias, None, None, grad_residual, None, None


_batch_norm_act_op.register_autograd(_backward, setup_context=_setup_context)


def _self_check(device: torch.device, dtype: torch.dtype) -> tuple[backend.Results, backend.Results]:
    """The public function against the reference, with a residual, in training and eval mode:
    outputs, the gradients of x, weight, bias and residual, and the running statistics after."""
    channels = 5  # not a power of two: a masked channel block
    x = backend.random_tensor(2, channels, 6, 6, device=device, dtype=dtype, seed=10, scale=2.0) + 1
    residual = backend.random_tensor(2, channels, 6, 6, device=device, dtype=dtype, seed=11)
    statistics = _stat_dtype(x)
    weight = backend.random_tensor(channels, device=device, dtype=statistics, seed=12)
    bias = backend.random_tensor(channels, device=device, dtype=statistics, seed=13)
    fast, reference = [], []
    for training in (True, False):
        for function, results in ((batch_norm_act, fast), (batch_norm_act_ref, reference)):
            running_mean = torch.zeros(channels, device=device, dtype=statistics)
            running_var = torch.ones(channels, device=device, dtype=statistics)
            results += backend.outputs_and_grads(
                lambda x, w, b, r, function=function, training=training: function(
                    x, w, b, running_mean, running_var, r, training, 0.1, 1e-5, True),
                [x, weight, bias, residual])
            results += [running_mean, running_var]
    return fast, reference


backend.register_self_check(OP, _self_check)
