"""Every ``torch.ops.labfast`` operator passes ``torch.library.opcheck``: its schema, its fake (shapes,
dtypes and strides the real kernel gives), its autograd registration and its use under AOT dispatch,
on the reference body and with the fast path forced to Triton (``TRITON_INTERPRET=1``,
tests/conftest.py). Every op of the registry has its operators here. The CUDA extension's operators
each have a fake, checked against their schemas in ``csrc/*.cu`` (the extension cannot be built here)."""
import re
from pathlib import Path

import pytest
import torch

from labfast.ops import OPS, cuda_extension

CSRC = Path(__file__).resolve().parents[2] / "csrc"
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# A mutating operator (the running statistics) has no autograd formula: torch.library gives those
# to functional operators only.
MUTATING_CHECKS = ("test_schema", "test_faketensor")


def _cases():
    """``{registry op: [(operator, arguments, checks), ...]}``: every operator the op's public function calls."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).requires_grad_(grad)

    edges = [0, 1, 1, 0, 1, 2]  # (0, 1), (1, 0), (1, 2): flat pairs
    x = rand(2, 5, 3, 3)
    mean, invstd = x.mean(dim=(0, 2, 3)).detach(), (x.var(dim=(0, 2, 3), unbiased=False) + 1e-5).rsqrt().detach()
    statistics = (x.detach(), torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5, 0.1, 1e-5)
    return {
        "input_fusion": [(torch.ops.labfast.input_fusion, (rand(2, 3, 8, 8), rand(2, 2, 4, 4)), ALL_CHECKS)],
        "heatmap_feature_concat": [(torch.ops.labfast.heatmap_feature_concat,
                                    (rand(2, 2, 8, 8), rand(2, 3, 4, 4), True), ALL_CHECKS)],
        "feature_fusion": [(torch.ops.labfast.feature_fusion, (rand(2, 3, 4, 4), rand(2, 3, 4, 4)), ALL_CHECKS)],
        "message_passing": [(torch.ops.labfast.message_passing,
                             (rand(2, 3 * 2, 5, 5), rand(3, 2, 2, 3, 3), rand(3, 2), edges), ALL_CHECKS)],
        "batch_norm_act": [
            (torch.ops.labfast.batch_norm_statistics, statistics, MUTATING_CHECKS),
            (torch.ops.labfast.batch_norm_act, (x, rand(5), rand(5), mean, invstd, rand(2, 5, 3, 3), True, True),
             ALL_CHECKS),
            (torch.ops.labfast.batch_norm_act, (x, rand(5), rand(5), mean, invstd, None, False, False), ALL_CHECKS),
        ],
        "boundary_heatmaps": [(torch.ops.labfast.boundary_heatmaps,
                               (torch.rand(2, 3, 9, 2, generator=generator) * 15, 16, 16, 1.5, torch.float32),
                               ALL_CHECKS)],
    }


def test_every_op_of_the_registry_has_its_operators_checked():
    assert set(_cases()) == set(OPS)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", list(OPS))
def test_operator_passes_opcheck(name, backend, monkeypatch):
    if backend not in ("reference", *OPS[name].fast_paths):
        pytest.skip(f"{name} has no {backend} path")
    monkeypatch.setenv("LABFAST_BACKEND", backend)
    for operator, args, checks in _cases()[name]:
        if backend == "triton" and OPS[name].trains:  # float32 on the kernels, as the model runs them
            args = tuple(a.float().detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                         for a in args)
        results = torch.library.opcheck(operator, args, test_utils=checks)
        assert results == {check: "SUCCESS" for check in checks}, operator


def test_every_cuda_extension_operator_has_a_fake():
    defined = {m.group(1) for source in CSRC.glob("*.cu")
               for m in re.finditer(r'm\.def\("(\w+)\(', source.read_text())}
    assert defined, f"no m.def(...) found in {CSRC}"
    assert set(cuda_extension.FAKES) == defined
