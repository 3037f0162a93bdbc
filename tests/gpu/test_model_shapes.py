"""GPU parity of every fast path at the paper preset's real shapes, forward and backward.

Shapes come from the model config, not from constants here: ``LABConfig`` "paper" (8 stacks,
``boundary_channels`` C = 4 per branch, ``message_kernel`` 7×7, 256 input, 64×64 heatmaps) with the
300-W boundaries (K = 13, the 38-edge graph of ``boundary_neighbours``); the fusion ops' shapes and
dtypes are those the model itself passes (``labfast.perf.offline_compile.record_model_op_calls``, fp32
and under bf16 autocast). Batches 1, 32 and 256 per op; the whole model at 1 and 32.

Kernels are compiled (``tests/conftest.py`` leaves ``TRITON_INTERPRET`` unset where CUDA exists):
this is the GPU's path, including bf16 ``tl.dot`` on bf16 operands (the interpreter upcasts them)
and fp32 convolutions in TF32 (``torch.backends.cudnn.allow_tf32``, on by default, which the
reference's ``F.conv2d`` and the kernels' ``tl.dot`` both follow).

Tolerance (flash-attention's rule), for every output and gradient of a fast path run in dtype d:

    max |fast_d - ref_64| <= 2 max |ref_d - ref_64| + eps_d · max |ref_64|

``ref_64`` is the reference in float64 on the same d-rounded inputs, ``ref_d`` the reference in d
(for fp32 with TF32 where the reference's convolutions take it). A fast path may err at most
twice as much as the reference does in the same precision, plus one ulp of d at the top of the
range (eps: fp32 2**-23, bf16 2**-7) for outputs the reference happens to get exact. A wrong tap,
branch, channel or block errs by O(max |ref_64|) and fails.

Run on a GPU machine: ``pytest -m gpu tests/gpu`` (CUDA paths need ``LABFAST_BUILD_CUDA=1``).
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from labfast.model import LAB, config_by_name
from labfast.model.estimator import boundary_neighbours
from labfast.ops import OPS, backend, cuda_extension
from labfast.schemes import get

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PAPER = config_by_name("paper")
SCHEME = get("300w")
K = SCHEME.num_boundaries
EDGES = boundary_neighbours(SCHEME)
BATCHES = (1, 32, 256)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7}
DEVICE = "cuda"


def assert_within_reference_error(fast, low, exact, dtype, what):
    exact = exact.double()
    fast_error = (fast.double() - exact).abs().max().item()
    reference_error = (low.double() - exact).abs().max().item()
    bound = 2 * reference_error + EPS[dtype] * exact.abs().max().item()
    assert fast_error <= bound, f"{what} ({dtype}): error {fast_error:.3g} > bound {bound:.3g}"


def outputs_and_grads(function, inputs, grad_out_seed=1):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = function(*leaves)
    generator = torch.Generator(device=out.device).manual_seed(grad_out_seed)
    grad_out = torch.randn(out.shape, generator=generator, device=out.device).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return [out.detach(), *grads]


def check_op(fast, reference, inputs, dtype, what):
    """``fast`` in ``dtype`` against ``reference`` in float64 and in ``dtype`` (module docstring)."""
    low_inputs = [x.to(dtype) for x in inputs]  # .to keeps channels_last
    exact = outputs_and_grads(reference, [x.double() for x in low_inputs])
    low = outputs_and_grads(reference, low_inputs)
    mine = outputs_and_grads(fast, low_inputs)
    names = ["output"] + [f"grad of input {i}" for i in range(len(inputs))]
    for name, m, lo, ex in zip(names, mine, low, exact, strict=True):
        assert m.shape == ex.shape and m.dtype == lo.dtype, name
        assert_within_reference_error(m, lo, ex, dtype, f"{what}: {name}")


def randn(*shape, seed, scale=1.0):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(*shape, generator=generator, device=DEVICE) * scale


# --- message passing: intra-level (K branches, 38 edges) and inter-level (2K branches, K edges) ---

GRAPHS = {"intra_38_edges": (K, EDGES), "inter_level": (2 * K, tuple((k, K + k) for k in range(K)))}


@pytest.fixture(autouse=True)
def tf32_as_the_model_runs():
    """TF32 on for convolutions (PyTorch's default), which both paths follow."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("graph", GRAPHS, ids=GRAPHS.keys())
def test_message_passing_triton(graph, dtype, batch, channels_last, monkeypatch):
    from labfast.ops.message_passing import message_passing, message_passing_ref

    branches, edges = GRAPHS[graph]
    c, k, size = PAPER.boundary_channels, PAPER.message_kernel, PAPER.heatmap_size
    features = randn(batch, branches * c, size, size, seed=0)
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    weights = randn(len(edges), c, c, k, k, seed=1, scale=(c * k * k) ** -0.5)
    bias = randn(len(edges), c, seed=2)
    monkeypatch.setenv("LABFAST_BACKEND_MESSAGE_PASSING", "triton")
    check_op(lambda f, w, b: message_passing(f, w, b, edges),
             lambda f, w, b: message_passing_ref(f, w, b, edges),
             [features, weights, bias], dtype, f"message passing {graph}")


# --- boundary heatmaps (forward only), Triton and CUDA ---

def fast_paths():
    paths = ["triton"]
    if cuda_extension.status() is None:
        paths.append("cuda")
    return paths


@pytest.mark.parametrize("path", ["triton", "cuda"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_boundary_heatmaps(path, dtype, batch, monkeypatch):
    """Per pixel within one ulp of ``dtype`` of the float32 reference (+2e-6 float32 disagreement),
    away from the 3σ cut where float32 noise may put a pixel either side."""
    if path not in fast_paths():
        pytest.skip(f"{path}: {cuda_extension.status()}")
    from labfast.ops.boundary_heatmaps import boundary_heatmaps, dense_curves, gaussian_cut, squared_distance_ref

    size = PAPER.heatmap_size
    generator = torch.Generator(device=DEVICE).manual_seed(3)
    landmarks = torch.rand(batch, SCHEME.num_points, 2, generator=generator, device=DEVICE) * (size - 1)
    monkeypatch.setenv("LABFAST_BACKEND_BOUNDARY_HEATMAPS", path)
    got = boundary_heatmaps(landmarks, SCHEME, size=size, dtype=dtype)
    curves = dense_curves(landmarks, SCHEME, size)
    expected = gaussian_cut(squared_distance_ref(curves, size, size, 3.0), 1.0)
    keep = (squared_distance_ref(curves, size, size, 4.0) - 9.0).abs() > 1e-4 * 9.0
    mantissa_bits = {torch.float32: 23, torch.bfloat16: 7}[dtype]
    _, exponent = torch.frexp(expected)
    ulp = torch.where(expected > 0, torch.ldexp(torch.ones_like(expected), exponent - 1 - mantissa_bits), 0.0)
    error = (got.float() - expected).abs()
    assert got.dtype == dtype and got.shape == (batch, K, size, size)
    assert (error[keep] <= ulp[keep] + 2e-6).all(), f"max excess {(error - ulp)[keep].max():.3g}"


# --- fusion: the calls the model makes, at its shapes and dtypes (fp32, bf16 autocast) ---

@pytest.fixture(scope="module")
def fusion_calls():
    """``{phase: [(op, ((shape, stride, dtype), ...)), ...]}`` recorded from the paper model at batch 1."""
    from labfast.perf.offline_compile import record_model_op_calls

    return {phase: [call for call in record_model_op_calls("300w", "paper", 1, phase) if call[0] != "message_passing"]
            for phase in DTYPES}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("phase", DTYPES)
@pytest.mark.parametrize("path", ["triton", "cuda"])
def test_fusion(path, phase, batch, channels_last, fusion_calls, monkeypatch):
    """The public functions with ``path`` forced (their operators run it) against the references."""
    if path not in fast_paths():
        pytest.skip(f"{path}: {cuda_extension.status()}")
    monkeypatch.setenv("LABFAST_BACKEND_FUSION", path)
    fast = {name: op.function for name, op in OPS.items() if op.module == "fusion"}
    reference = {name: op.reference for name, op in OPS.items() if op.module == "fusion"}
    for index, (op, specs) in enumerate(fusion_calls[phase]):
        tensors = [spec for spec in specs if isinstance(spec, tuple)]
        options = [spec for spec in specs if not isinstance(spec, tuple)]  # heatmap_feature_concat's resize mode
        inputs = []
        for seed, (shape, _, tensor_dtype) in enumerate(tensors):
            x = randn(batch, *shape[1:], seed=10 * index + seed).sigmoid().to(tensor_dtype)  # maps, gates in (0, 1)
            inputs.append(x.to(memory_format=torch.channels_last) if channels_last else x)
        # each input keeps the dtype the model gives it (bf16 autocast feeds input fusion an fp32 image)
        check_mixed(lambda *xs: fast[op](*xs, *options), lambda *xs: reference[op](*xs, *options), inputs,
                    f"{path} {op} call {index} {[tuple(x.shape) for x in inputs]} {options}")


def check_mixed(fast, reference, inputs, what):
    """``check_op`` for inputs that keep their own dtypes; eps follows each result's dtype."""
    exact = outputs_and_grads(reference, [x.double() for x in inputs])
    low = outputs_and_grads(reference, inputs)
    mine = outputs_and_grads(fast, inputs)
    for name, m, lo, ex in zip(["output"] + [f"grad {i}" for i in range(len(inputs))], mine, low, exact, strict=True):
        assert m.shape == ex.shape and m.dtype == lo.dtype, f"{what}: {name}"
        assert_within_reference_error(m, lo, ex, lo.dtype, f"{what}: {name}")


# --- the whole model: fast paths (automatic selection) against the reference model ---

def model_outputs_and_grads(model, images, dtype, backend_name, monkeypatch):
    if backend_name is None:
        monkeypatch.delenv("LABFAST_BACKEND", raising=False)
    else:
        monkeypatch.setenv("LABFAST_BACKEND", backend_name)
    model.zero_grad(set_to_none=True)
    autocast = torch.autocast("cuda", dtype=dtype) if dtype == torch.bfloat16 else contextlib.nullcontext()
    with autocast:
        output = model(images)
    generator = torch.Generator(device=DEVICE).manual_seed(5)
    heatmaps_grad = torch.randn(output.heatmaps[-1].shape, generator=generator, device=DEVICE)
    landmarks_grad = torch.randn(output.landmarks.shape, generator=generator, device=DEVICE)
    loss = (output.heatmaps[-1].double() * heatmaps_grad).sum() + (output.landmarks.double() * landmarks_grad).sum()
    loss.backward()
    grads = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])
    return [output.landmarks.detach(), output.heatmaps[-1].detach(), grads]


@pytest.mark.parametrize("batch", BATCHES[:2])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_whole_model_against_the_reference_model(dtype, batch, monkeypatch):
    """Landmarks, last heatmaps and every parameter gradient, fast paths vs reference; the
    model in eval mode (BatchNorm's running statistics: the three models see the same affine maps)."""
    torch.manual_seed(0)
    model = LAB(SCHEME, PAPER).to(DEVICE).eval()
    exact_model = copy.deepcopy(model).double()
    images = torch.rand(batch, 3, PAPER.input_size, PAPER.input_size, device=DEVICE)
    exact = model_outputs_and_grads(exact_model, images.double(), torch.float64, "reference", monkeypatch)
    low = model_outputs_and_grads(model, images, dtype, "reference", monkeypatch)
    fast = model_outputs_and_grads(model, images, dtype, None, monkeypatch)
    assert backend.select("message_passing", images, ("triton",)) == "triton"  # the fast path was taken
    for name, m, lo, ex in zip(("landmarks", "heatmaps", "parameter grads"), fast, low, exact, strict=True):
        assert_within_reference_error(m, lo, ex, dtype, f"LAB {name}")
