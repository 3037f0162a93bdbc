"""Fast paths prove themselves (``labfast.ops.backend.self_check_failure``): a broken or
non-compiling fast path is caught on its first use, logged once, and the reference answers.
The checks run the registered operators: a fault planted in the launcher an operator calls
(``labfast.kernels.message_passing.message_passing_forward``) is what they must catch.

Run on the CPU: Triton under ``TRITON_INTERPRET=1``; "automatic" selection, which only CUDA
tensors get, is granted to CPU tensors by patching ``backend._takes_fast_paths``.
"""
from __future__ import annotations

import logging
import subprocess

import pytest
import torch

import labfast.kernels.message_passing as message_passing_kernels
from labfast.ops import backend, message_passing, registry
from labfast.ops.message_passing import message_passing_ref

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
EDGES = ((0, 1), (1, 0))


@pytest.fixture(autouse=True)
def fresh_self_checks(monkeypatch):
    """Each test starts with no check done, no backend forced and the check enabled."""
    monkeypatch.setattr(backend, "_self_checked", {})
    for name in ("LABFAST_BACKEND", "LABFAST_BACKEND_MESSAGE_PASSING", "LABFAST_SELFCHECK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def automatic_on_cpu(monkeypatch):
    monkeypatch.setattr(backend, "_takes_fast_paths", lambda tensor: True)


def inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(1, 8, 5, 5, generator=generator).to(dtype),
            (torch.randn(2, 4, 4, 3, 3, generator=generator) / 6).to(dtype),
            torch.randn(2, 4, generator=generator).to(dtype))


def off_by_one(features, weights, bias, edges, num_branches):
    """A forward launcher that is wrong by O(1): what a miscompiled or mis-indexed kernel gives."""
    return message_passing_ref(features, weights, bias, edges) + 1


def does_not_compile(*arguments):
    raise subprocess.CalledProcessError(255, ["ptxas"], "ptxas fatal: Unresolved extern function")


@pytest.mark.parametrize("op", registry.modules())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_correct_triton_kernels_pass_their_self_check(op, dtype):
    assert backend.self_check_failure(op, "triton", torch.zeros(1, dtype=dtype)) is None


def test_a_wrong_fast_path_is_caught_logged_once_and_the_reference_answers(monkeypatch, caplog, automatic_on_cpu):
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward", off_by_one)
    features, weights, bias = inputs()
    with caplog.at_level(logging.WARNING, logger="labfast.ops"):
        first = message_passing(features, weights, bias, EDGES)
        second = message_passing(features, weights, bias, EDGES)
    torch.testing.assert_close(first, message_passing_ref(features, weights, bias, EDGES), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records if "self-check" in r.getMessage()]
    assert len(warnings) == 1 and "'message_passing'" in warnings[0] and "differs from the reference" in warnings[0]


def test_a_fast_path_that_does_not_compile_falls_back_with_one_line(monkeypatch, caplog, automatic_on_cpu):
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward", does_not_compile)
    features, weights, bias = inputs()
    with caplog.at_level(logging.WARNING, logger="labfast.ops"):
        for _ in range(2):
            out = message_passing(features, weights, bias, EDGES)
    torch.testing.assert_close(out, message_passing_ref(features, weights, bias, EDGES), rtol=0, atol=0)
    assert len(caplog.records) == 1 and "CalledProcessError" in caplog.records[0].getMessage()


def test_a_compile_failure_after_a_passing_check_falls_back_once(monkeypatch, caplog, automatic_on_cpu):
    features, weights, bias = inputs()
    assert backend.self_check_failure("message_passing", "triton", features) is None  # the real kernel passes
    # a new specialisation fails
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward", does_not_compile)
    with caplog.at_level(logging.WARNING, logger="labfast.ops"):
        for _ in range(2):
            out = message_passing(features, weights, bias, EDGES)
    torch.testing.assert_close(out, message_passing_ref(features, weights, bias, EDGES), rtol=0, atol=0)
    assert len(caplog.records) == 1 and "did not compile" in caplog.records[0].getMessage()


def test_a_forced_backend_that_fails_its_self_check_raises(monkeypatch):
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward", off_by_one)
    monkeypatch.setenv("LABFAST_BACKEND_MESSAGE_PASSING", "triton")
    with pytest.raises(RuntimeError, match="forced but it failed its self-check"):
        message_passing(*inputs(), EDGES)


def test_a_forced_backend_that_does_not_compile_raises(monkeypatch):
    backend._self_checked[("message_passing", "triton", torch.float32, "cpu")] = None  # checked earlier
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward", does_not_compile)
    monkeypatch.setenv("LABFAST_BACKEND_MESSAGE_PASSING", "triton")
    with pytest.raises(subprocess.CalledProcessError):
        message_passing(*inputs(), EDGES)


def test_selfcheck_0_turns_the_check_off(monkeypatch, automatic_on_cpu):
    monkeypatch.setenv("LABFAST_SELFCHECK", "0")
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward", off_by_one)
    features, weights, bias = inputs()
    out = message_passing(features, weights, bias, EDGES)
    torch.testing.assert_close(out, off_by_one(features, weights, bias, EDGES, 2), rtol=0, atol=0)


def test_the_check_is_skipped_not_cached_while_compiling(monkeypatch):
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward", off_by_one)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    features = inputs()[0]
    assert backend.self_check_failure("message_passing", "triton", features) is None
    assert backend._self_checked == {}
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert "differs" in backend.self_check_failure("message_passing", "triton", features)


def test_checked_once_per_op_backend_dtype_and_device(monkeypatch):
    calls = []
    real = message_passing_kernels.message_passing_forward
    monkeypatch.setattr(message_passing_kernels, "message_passing_forward",
                        lambda *args: calls.append(args[0].dtype) or real(*args))
    for dtype in (torch.float32, torch.float32, torch.float64, torch.float64):
        assert backend.self_check_failure("message_passing", "triton", torch.zeros(1, dtype=dtype)) is None
    assert calls == [torch.float32, torch.float64]


def test_the_check_runs_inside_inference_mode_and_autocast():
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert backend.self_check_failure("message_passing", "triton", torch.zeros(1)) is None


def test_fusion_and_heatmap_triton_paths_fall_back_when_a_specialisation_does_not_compile(monkeypatch, caplog):
    import labfast.kernels.boundary_heatmaps as heatmap_kernels
    import labfast.kernels.fusion as fusion_kernels
    from labfast.ops import boundary_heatmaps, boundary_heatmaps_ref, fusion

    for name in ("input_fusion_forward", "heatmap_feature_concat_forward", "feature_fusion_forward"):
        monkeypatch.setattr(fusion_kernels, name, does_not_compile)
    monkeypatch.setattr(heatmap_kernels, "boundary_heatmaps_triton", does_not_compile)
    for op in ("fusion", "boundary_heatmaps"):  # both passed their self-check earlier
        backend._self_checked[(op, "triton", torch.float32, "cpu")] = None
    monkeypatch.setattr(backend, "_takes_fast_paths", lambda tensor: True)
    generator = torch.Generator().manual_seed(0)
    image, heatmaps = torch.rand(1, 3, 16, 16, generator=generator), torch.rand(1, 13, 8, 8, generator=generator)
    features = torch.rand(1, 4, 4, 4, generator=generator)
    landmarks = torch.rand(1, 68, 2, generator=generator) * 40 + 12
    with caplog.at_level(logging.WARNING, logger="labfast.ops"):
        got = [fusion.input_fusion(image, heatmaps), fusion.heatmap_feature_concat(heatmaps, features),
               fusion.feature_fusion(features, features), boundary_heatmaps(landmarks, "300w")]
    expected = [fusion.input_fusion_ref(image, heatmaps), fusion.heatmap_feature_concat_ref(heatmaps, features),
                fusion.feature_fusion_ref(features, features), boundary_heatmaps_ref(landmarks, "300w")]
    for result, reference in zip(got, expected):
        torch.testing.assert_close(result, reference, rtol=0, atol=0)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and all("did not compile" in message for message in logged)


def test_the_check_runs_the_registered_backward_operator(monkeypatch):
    """A fault that only the fusion ops' backward operator reaches (the launcher it calls) fails
    the fusion check: the check differentiates the operator that production runs."""
    import labfast.kernels.fusion as fusion_kernels

    real = fusion_kernels.feature_fusion_backward
    monkeypatch.setattr(fusion_kernels, "feature_fusion_backward",
                        lambda *args: tuple(None if g is None else g + 1 for g in real(*args)))
    assert "differs from the reference" in backend.self_check_failure("fusion", "triton", torch.zeros(1))
