"""``labfast.perf.op_calls``: the one recording of the model's fused-op calls (bench kernel cases,
roofline rows, offline compile)."""
import os

import pytest
import torch

import labfast.ops
from labfast.model import LAB, config_by_name
from labfast.perf import op_calls


def tiny_forward(batch=1):
    model = LAB("300w", config_by_name("tiny")).to("meta").eval()

    def forward():
        with torch.no_grad():
            model(torch.zeros(batch, 3, 256, 256, device="meta"))
    return forward


def test_model_ops_are_exactly_the_fused_ops_the_model_calls():
    every_op = tuple(name for name in labfast.ops.__all__ if not name.endswith("_ref"))
    called = {call.op for call in op_calls.record(tiny_forward(), every_op)}
    assert called == set(op_calls.MODEL_OPS)


def test_calls_keep_their_order_and_record_tensors_as_specs():
    calls = op_calls.record(tiny_forward(batch=2), ("input_fusion", "feature_fusion"))
    assert [call.op for call in calls] == ["input_fusion"] + ["feature_fusion"] * 4  # one per ResNet stage
    image, heatmaps = calls[0].args
    assert image == op_calls.TensorSpec((2, 3, 256, 256), (3 * 256 * 256, 256 * 256, 256, 1), torch.float32)
    assert heatmaps.shape == (2, 13, 64, 64)


def test_recording_runs_the_reference_and_restores_labfast_ops_even_when_the_forward_raises(monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND", "triton")
    originals = {name: getattr(labfast.ops, name) for name in op_calls.MODEL_OPS}
    seen = []

    def forward():
        seen.append(os.environ.get("LABFAST_BACKEND"))
        labfast.ops.feature_fusion(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed"):
        op_calls.record(forward)
    assert seen == ["reference"]
    assert {name: getattr(labfast.ops, name) for name in op_calls.MODEL_OPS} == originals
    assert os.environ["LABFAST_BACKEND"] == "triton"
