"""The CUDA path's Python side (``labfast.ops.cuda_extension``'s launchers and the operators' ``cuda``
branch), checked without a GPU: a stand-in ``labfast_cuda`` library with the schemas of
``csrc/*.cu``, its kernels the Triton launchers under ``TRITON_INTERPRET=1``, takes the extension's
place. A launcher that passes arguments in the wrong order, forgets a cast or drops a gradient
gives the wrong result here; the CUDA kernels themselves are tested on a GPU (``tests/gpu``).
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import pytest
import torch

import labfast.kernels.boundary_heatmaps as boundary_kernels
import labfast.kernels.fusion as fusion_kernels
from labfast.ops import OPS, backend, cuda_extension

CSRC = Path(__file__).resolve().parents[2] / "csrc"
pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="the stand-in runs Triton on CPU tensors")


def _stand_in_kernels():
    """The extension's operators (``csrc/*.cu``'s ``m.def``), computed by the Triton launchers."""
    return {
        "boundary_heatmaps": boundary_kernels.boundary_heatmaps_triton,
        "input_fusion_forward": fusion_kernels.input_fusion_forward,
        "input_fusion_backward_image": lambda grad, image, heatmaps: fusion_kernels.input_fusion_backward(
            grad, image, heatmaps, True, False)[0],
        "input_fusion_backward_heatmaps": lambda grad, image, heatmaps: fusion_kernels.input_fusion_backward(
            grad, image, heatmaps, False, True)[1],
        "heatmap_feature_concat_forward": fusion_kernels.heatmap_feature_concat_forward,
        "heatmap_feature_concat_backward_heatmaps": lambda grad, heatmaps, area: (
            fusion_kernels.heatmap_feature_concat_backward(grad, heatmaps, None, area, True)[0]),
        "feature_fusion_forward": fusion_kernels.feature_fusion_forward,
        "feature_fusion_backward": lambda grad, features, gate: fusion_kernels.feature_fusion_backward(
            grad, features, gate, True, True),
    }


@pytest.fixture
def stand_in_extension(monkeypatch):
    if cuda_extension.status() is None:
        pytest.skip("the CUDA extension is built here: tests/gpu runs it")
    library = torch.library.Library("labfast_cuda", "DEF")
    schemas = [m.group(1) for source in sorted(CSRC.glob("*.cu"))
               for m in re.finditer(r'm\.def\("([^"]+)"\)', source.read_text())]
    kernels, called = _stand_in_kernels(), []
    assert {schema.split("(")[0] for schema in schemas} == set(kernels)

    def recorded(name):
        def kernel(*args):
            called.append(name)
            return kernels[name](*args)
        return kernel

    for schema in schemas:
        library.define(schema)
        library.impl(schema.split("(")[0], recorded(schema.split("(")[0]), "CPU")
    monkeypatch.setattr(cuda_extension, "status", lambda: None)
    available = backend._unavailable
    monkeypatch.setattr(backend, "_unavailable", lambda name, tensor, supported: None if name == "cuda"
                        else available(name, tensor, supported))
    monkeypatch.setenv("LABFAST_SELFCHECK", "0")  # the self-checks are tests/ops/test_self_check.py's
    yield called
    library._destroy()


def _outputs_and_grads(function, inputs, grad_out):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = function(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out.to(out.dtype))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_fusion_operators_run_the_extension_through_its_launchers(stand_in_extension, monkeypatch, dtype):
    """The public functions forced to ``cuda`` against their references, forward and backward, with
    heatmaps in float32 beside ``dtype`` maps as under autocast (the launchers cast them)."""
    monkeypatch.setenv("LABFAST_BACKEND_FUSION", "cuda")
    generator = torch.Generator().manual_seed(0)
    image, heatmaps = torch.rand(2, 3, 16, 16, generator=generator), torch.rand(2, 4, 8, 8, generator=generator)
    features, gate = torch.randn(2, 5, 4, 4, generator=generator), torch.rand(2, 5, 4, 4, generator=generator)
    cases = {"input_fusion": [image.to(dtype), heatmaps],
             **{f"heatmap_feature_concat {resize}": [heatmaps, features.to(dtype)] for resize in ("area", "bilinear")},
             "feature_fusion": [features.to(dtype), gate.to(dtype)]}
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for case, inputs in cases.items():
        name, _, resize = case.partition(" ")
        public, reference = OPS[name].function, OPS[name].reference
        if resize:
            public, reference = partial(public, resize=resize), partial(reference, resize=resize)
        grad_out = torch.randn(reference(*inputs).shape, generator=generator)
        for mine, theirs in zip(_outputs_and_grads(public, inputs, grad_out),
                                _outputs_and_grads(reference, inputs, grad_out), strict=True):
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, case
            torch.testing.assert_close(mine.float(), theirs.float(), rtol=tolerance, atol=tolerance, msg=case)
    assert set(stand_in_extension) == set(_stand_in_kernels()) - {"boundary_heatmaps"}  # every fusion kernel ran


def test_boundary_heatmaps_run_the_extension_through_its_launcher(stand_in_extension, monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND_BOUNDARY_HEATMAPS", "cuda")
    landmarks = torch.rand(2, 68, 2, generator=torch.Generator().manual_seed(1)) * 12 + 2
    boundary_heatmaps, reference = OPS["boundary_heatmaps"].function, OPS["boundary_heatmaps"].reference
    got = boundary_heatmaps(landmarks, "300w", 16, 1.0, torch.float16)
    expected = reference(landmarks, "300w", 16, 1.0, torch.float16)
    assert got.dtype == torch.float16 and stand_in_extension == ["boundary_heatmaps"]
    # the same float32 value up to rounding, stored in float16: one ulp (2**-10 relative) where they round apart
    torch.testing.assert_close(got.float(), expected.float(), rtol=2**-10, atol=0)
