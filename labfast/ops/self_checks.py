"""The small random cases on which each fast path proves itself before its first use
(``labfast.ops.backend.self_check_failure``).

``CHECKS[op](backend, device, dtype)`` runs the op's ``backend`` path and its reference on the same
small inputs (fixed seed, a private generator: the caller's random state is untouched) and returns
``(fast results, reference results)``: outputs and input gradients, compared by the backend with
``SELF_CHECK_TOLERANCE[dtype]``. The shapes are tiny (a few programs) but exercise what the model
uses: several branches with two incoming edges, masked channel blocks, a bilinear resize.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Results = list[torch.Tensor | None]


def _random(*shape: int, device: torch.device, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)


def _outputs_and_grads(function: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Results:
    """``[out, d out·g / d input for each input]`` with a fixed upstream gradient ``g``."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = function(*leaves)
    grad_out = _random(*out.shape, device=out.device, dtype=out.dtype, seed=99)
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    return [out.detach(), *grads]


def message_passing(backend: str, device: torch.device, dtype: torch.dtype) -> tuple[Results, Results]:
    from labfast.kernels.message_passing import message_passing_triton
    from labfast.ops.message_passing import message_passing_ref

    edges = ((0, 1), (1, 2), (2, 1), (0, 2))  # branches 1 and 2 have two incoming edges
    channels, ksize = 4, 3
    inputs = [_random(1, 3 * channels, 8, 8, device=device, dtype=dtype, seed=0),
              _random(len(edges), channels, channels, ksize, ksize, device=device, dtype=dtype, seed=1,
                      scale=(channels * ksize * ksize) ** -0.5),
              _random(len(edges), channels, device=device, dtype=dtype, seed=2)]
    fast = {"triton": message_passing_triton}[backend]
    return (_outputs_and_grads(lambda f, w, b: fast(f, w, b, edges), inputs),
            _outputs_and_grads(lambda f, w, b: message_passing_ref(f, w, b, edges), inputs))


def fusion(backend: str, device: torch.device, dtype: torch.dtype) -> tuple[Results, Results]:
    from labfast.ops import fusion as ops

    if backend == "triton":
        from labfast.kernels.fusion import FeatureFusion, HeatmapFeatureConcat, InputFusion

        fast = (InputFusion.apply, HeatmapFeatureConcat.apply, FeatureFusion.apply)
    else:
        fast = (ops._CudaInputFusion.apply, ops._CudaHeatmapFeatureConcat.apply, ops._CudaFeatureFusion.apply)
    image = _random(1, 3, 16, 16, device=device, dtype=dtype, seed=3)
    heatmaps = _random(1, 2, 8, 8, device=device, dtype=dtype, seed=4).sigmoid()  # resized 8 -> 16
    features = _random(1, 5, 8, 8, device=device, dtype=dtype, seed=5)
    gate = _random(1, 5, 8, 8, device=device, dtype=dtype, seed=6).sigmoid()
    input_fusion, concat, feature_fusion = fast
    cases = [(input_fusion, [image, heatmaps], ops.input_fusion_ref),
             *((lambda h, f, area=area: concat(h, f, area), [heatmaps, features[..., :4, :4]],
                lambda h, f, mode=mode: ops.heatmap_feature_concat_ref(h, f, mode))
               for area, mode in ((True, "area"), (False, "bilinear"))),
             (feature_fusion, [features, gate], ops.feature_fusion_ref)]
    mine, theirs = [], []
    for function, inputs, reference in cases:
        mine += _outputs_and_grads(function, inputs)
        theirs += _outputs_and_grads(reference, inputs)
    return mine, theirs


def boundary_heatmaps(backend: str, device: torch.device, dtype: torch.dtype) -> tuple[Results, Results]:
    from labfast.ops.boundary_heatmaps import boundary_heatmaps_ref, dense_curves
    from labfast.schemes import get

    scheme, size, sigma = get("300w"), 16, 1.0
    generator = torch.Generator().manual_seed(7)
    landmarks = (torch.rand(2, scheme.num_points, 2, generator=generator) * (size - 1)).to(device, dtype)
    curves = dense_curves(landmarks, scheme, size).contiguous()
    if backend == "triton":
        from labfast.kernels.boundary_heatmaps import boundary_heatmaps_triton

        heatmaps = boundary_heatmaps_triton(curves, size, size, sigma, torch.float32)
    else:
        from labfast import _cuda  # noqa: F401  (registers torch.ops.labfast_cuda)

        heatmaps = torch.ops.labfast_cuda.boundary_heatmaps(curves, size, size, sigma, torch.float32)
    return [heatmaps], [boundary_heatmaps_ref(landmarks, scheme, size, sigma, torch.float32)]


def batch_norm_act(backend: str, device: torch.device, dtype: torch.dtype) -> tuple[Results, Results]:
    from labfast.ops.batch_norm_act import _batch_norm_act_triton, batch_norm_act_ref

    fast = {"triton": _batch_norm_act_triton}[backend]
    channels = 5  # not a power of two: a masked channel block
    x = _random(2, channels, 6, 6, device=device, dtype=dtype, seed=10, scale=2.0) + 1
    residual = _random(2, channels, 6, 6, device=device, dtype=dtype, seed=11)
    statistics_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weight = _random(channels, device=device, dtype=statistics_dtype, seed=12)
    bias = _random(channels, device=device, dtype=statistics_dtype, seed=13)
    mine, theirs = [], []
    for training in (True, False):
        for function, results in ((fast, mine), (batch_norm_act_ref, theirs)):
            running_mean = torch.zeros(channels, device=device, dtype=statistics_dtype)
            running_var = torch.ones(channels, device=device, dtype=statistics_dtype)
            results += _outputs_and_grads(
                lambda x, w, b, r, function=function, training=training: function(
                    x, w, b, running_mean, running_var, r, training, 0.1, 1e-5, True),
                [x, weight, bias, residual])
            results += [running_mean, running_var]
    return mine, theirs


CHECKS: dict[str, Callable[[str, torch.device, torch.dtype], tuple[Results, Results]]] = {
    "message_passing": message_passing,
    "fusion": fusion,
    "boundary_heatmaps": boundary_heatmaps,
    "batch_norm_act": batch_norm_act,
}
