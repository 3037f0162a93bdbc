"""``torch.compile(fullgraph=True)`` takes the model's inference forward and the pure part of a
training step (images and landmarks -> ground-truth heatmaps -> loss terms, forward and backward)
with no graph break, and ``torch.export`` takes the inference model; with every op forced onto a
fast path the ``torch.ops.labfast`` operators sit in the graphs as single nodes.

CPU, the tiny preset at input 64, batch 2; ``aot_eager`` runs the traced graphs eagerly, so compiled
and eager results are the same arithmetic: they must agree to float32 rounding (1e-5 relative,
5e-6 absolute covers reassociation across the ~20 layers; a wrong op errs by O(1)). Forced Triton
runs under ``TRITON_INTERPRET=1`` (tests/conftest.py).
"""
import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounter

from labfast.model import LAB, config_by_name
from labfast.train.step import training_losses

BACKENDS = ["reference", "triton"]
FORWARD_OPERATORS = {"labfast.input_fusion.default", "labfast.message_passing.default",
                     "labfast.heatmap_feature_concat.default", "labfast.feature_fusion.default"}
BACKWARD_OPERATORS = {"labfast.input_fusion_backward.default", "labfast.message_passing_backward.default",
                      "labfast.heatmap_feature_concat_backward.default", "labfast.feature_fusion_backward.default"}


class RecordingBackend:
    """aot_eager that records every graph Dynamo hands over and the operators of each AOT graph."""

    def __init__(self):
        self.dynamo_graphs = 0
        self.operators: dict[str, set[str]] = {"forward": set(), "backward": set()}

        def compiler(kind):
            def compile_graph(graph_module, example_inputs):
                self.operators[kind] |= {str(node.target) for node in graph_module.graph.nodes
                                         if node.op == "call_function"}
                return graph_module.forward
            return compile_graph

        self.aot = aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))

    def __call__(self, graph_module, example_inputs):
        self.dynamo_graphs += 1
        return self.aot(graph_module, example_inputs)


@pytest.fixture
def forced(request, monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND", request.param)
    # batch norm + ReLU (130 calls in the tiny model) stays on its reference here: under the
    # interpreter its Triton kernels would double this file's time, and its own fullgraph compile
    # is tested in tests/ops/test_batch_norm_act.py
    monkeypatch.setenv("LABFAST_BACKEND_BATCH_NORM_ACT", "reference")
    torch._dynamo.reset()  # the backend choice is a constant of a compiled graph
    yield request.param
    torch._dynamo.reset()


def _model(seed: int = 0) -> LAB:
    torch.manual_seed(seed)
    return LAB("300w", config_by_name("tiny", input_size=64))


def _inputs(model: LAB):
    generator = torch.Generator().manual_seed(1)
    size = model.config.input_size
    images = torch.rand(2, 3, size, size, generator=generator)
    landmarks = 8 + torch.rand(2, 68, 2, generator=generator) * (size - 16)
    return images, landmarks


@pytest.mark.parametrize("forced", BACKENDS, indirect=True)
def test_inference_forward_compiles_whole(forced):
    model = _model().eval()
    images, _ = _inputs(model)
    recorder = RecordingBackend()
    with torch.no_grad():
        expected = model(images)
        got = torch.compile(model, fullgraph=True, backend=recorder)(images)
    assert recorder.dynamo_graphs == 1
    if forced == "triton":
        assert FORWARD_OPERATORS <= recorder.operators["forward"]
    else:
        assert not any(name.startswith("labfast.") for name in recorder.operators["forward"])
    torch.testing.assert_close(got.landmarks, expected.landmarks, rtol=1e-5, atol=5e-6)
    for mine, theirs in zip(got.heatmaps, expected.heatmaps, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("forced", ["reference"], indirect=True)
def test_inference_forward_under_autocast_compiles_whole(forced):
    """The message passings read the autocast state to cast their inputs (torch 2.11's Dynamo broke
    the graph there at every message passing): one graph under bf16 autocast too."""
    model = _model().eval()
    images, _ = _inputs(model)
    counter = CompileCounter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        heatmaps = torch.compile(model, fullgraph=True, backend=counter)(images).heatmaps
    assert counter.frame_count == 1
    assert heatmaps[-1].dtype == torch.bfloat16


@pytest.mark.parametrize("forced", BACKENDS, indirect=True)
def test_training_losses_compile_whole_forward_and_backward(forced):
    model = _model().train()
    images, landmarks = _inputs(model)
    images = (images * 255).to(torch.uint8)  # crops reach the training step as uint8
    judge = model.discriminator

    def losses_and_grads(function):
        model.zero_grad(set_to_none=True)
        terms, _, targets = function(model, model.config, judge, images, landmarks, model.boundary_scheme,
                                     model.config.input_size, 1.0, True)
        sum(terms.values()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return {name: value.detach() for name, value in terms.items()}, targets, grads

    expected_terms, expected_targets, expected_grads = losses_and_grads(training_losses)
    recorder = RecordingBackend()
    got_terms, got_targets, got_grads = losses_and_grads(torch.compile(training_losses, fullgraph=True,
                                                                       backend=recorder))
    assert recorder.dynamo_graphs == 1
    assert "labfast.boundary_heatmaps.default" in recorder.operators["forward"]  # always an operator
    if forced == "triton":
        assert FORWARD_OPERATORS <= recorder.operators["forward"]
        assert BACKWARD_OPERATORS <= recorder.operators["backward"]
    assert set(got_terms) == {"heatmap", "landmark", "adversarial"}
    torch.testing.assert_close(got_targets, expected_targets, rtol=0, atol=0)  # curves and heatmaps: the same ops
    for name in expected_terms:
        torch.testing.assert_close(got_terms[name], expected_terms[name], rtol=1e-5, atol=5e-6)
    assert got_grads.keys() == expected_grads.keys() and len(got_grads) > 0
    for name in expected_grads:
        torch.testing.assert_close(got_grads[name], expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("forced", ["triton"], indirect=True)
def test_export_keeps_the_operators(forced):
    model = _model().eval()
    images, _ = _inputs(model)
    with torch.no_grad():
        expected = model(images)
        exported = torch.export.export(model, (images,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert FORWARD_OPERATORS <= targets
    got = exported.module()(images)
    torch.testing.assert_close(got.landmarks, expected.landmarks, rtol=1e-5, atol=5e-6)
