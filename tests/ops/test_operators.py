"""Every ``torch.ops.labfast`` operator passes ``torch.library.opcheck``: its schema, its fake (shapes,
dtypes and strides the real kernel gives), its autograd registration and its use under AOT dispatch,
on the reference body and with the fast path forced to Triton (``TRITON_INTERPRET=1``,
tests/conftest.py). The CUDA extension's operators each have a fake, checked against their schemas
in ``csrc/*.cu`` (the extension cannot be built here)."""
import re
from pathlib import Path

import pytest
import torch

import labfast.ops  # noqa: F401  (registers the operators)
from labfast.ops import cuda_fakes

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _cases():
    generator = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).requires_grad_(grad)

    edges = [0, 1, 1, 0, 1, 2]  # (0, 1), (1, 0), (1, 2): flat pairs
    return {
        "input_fusion": (torch.ops.labfast.input_fusion, (rand(2, 3, 8, 8), rand(2, 2, 4, 4))),
        "heatmap_feature_concat": (torch.ops.labfast.heatmap_feature_concat, (rand(2, 2, 8, 8), rand(2, 3, 4, 4), True)),
        "feature_fusion": (torch.ops.labfast.feature_fusion, (rand(2, 3, 4, 4), rand(2, 3, 4, 4))),
        "message_passing": (torch.ops.labfast.message_passing,
                            (rand(2, 3 * 2, 5, 5), rand(3, 2, 2, 3, 3), rand(3, 2), edges)),
        "boundary_heatmaps": (torch.ops.labfast.boundary_heatmaps,
                              (torch.rand(2, 3, 9, 2, generator=generator) * 15, 16, 16, 1.5, torch.float32)),
    }


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", list(_cases()))
def test_operator_passes_opcheck(name, backend, monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND", backend)
    op, args = _cases()[name]
    if backend == "triton" and name != "boundary_heatmaps":
        args = tuple(a.float().detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    results = torch.library.opcheck(op, args, test_utils=CHECKS)
    assert results == {check: "SUCCESS" for check in CHECKS}


def test_every_cuda_extension_operator_has_a_fake():
    defined = {m.group(1) for source in CSRC.glob("*.cu")
               for m in re.finditer(r'm\.def\("(\w+)\(', source.read_text())}
    assert defined, f"no m.def(...) found in {CSRC}"
    assert set(cuda_fakes.FAKES) == defined
