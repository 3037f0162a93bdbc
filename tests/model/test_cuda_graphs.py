"""FaceAligner's CUDA-graph path (labfast.inference.cuda_graphs): what the CPU can check — arguments, the
batch padding and replay bookkeeping (with a stand-in graph that re-runs the recorded forward), and
no host read in the exact callable that is captured; the GPU test compares replay with eager."""
import contextlib

import numpy as np
import pytest
import torch
from test_no_host_sync import HostReads  # tests/model is on sys.path (pytest's prepend import mode)

from labfast.inference import cuda_graphs
from labfast.inference.aligner import FaceAligner
from labfast.inference.core import InferenceCore
from labfast.inference.runtime import TorchModel
from labfast.model import LAB, config_by_name


@pytest.mark.parametrize(("faces", "max_batch", "size"),
                         [(1, 64, 1), (2, 64, 2), (3, 64, 4), (5, 8, 8), (33, 48, 48), (64, 64, 64)])
def test_batches_pad_to_the_next_power_of_two_at_most_the_batch_size(faces, max_batch, size):
    assert cuda_graphs.padded_batch(faces, max_batch) == size


@pytest.mark.parametrize("faces", [0, 65])
def test_a_batch_outside_one_to_the_batch_size_is_refused(faces):
    with pytest.raises(ValueError, match=f"a batch of {faces} faces: CUDA-graph batches hold 1 to 64"):
        cuda_graphs.padded_batch(faces, 64)


def test_cuda_graphs_on_a_cpu_device_or_with_onnxruntime_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device; this model runs on cpu"):
        FaceAligner(tiny_checkpoint, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="runtime 'onnxruntime' is the CPU path"):
        FaceAligner(tiny_checkpoint, device="cpu", runtime="onnxruntime", cuda_graphs=True)


class _ReplayingGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: replay re-runs the recorded forward on the
    static input and writes into the static outputs, as a real graph's replay does."""

    recording = None

    def __init__(self):
        self.forward = None

    def replay(self):
        self.forward()


@pytest.fixture
def cpu_graphs(monkeypatch):
    captures = []

    @contextlib.contextmanager
    def capture(graph, pool=None):
        _ReplayingGraph.recording = graph
        yield
        captures.append(graph)

    monkeypatch.setattr(cuda_graphs, "check_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _ReplayingGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    stream = type("Stream", (), {"wait_stream": lambda self, other: None})()
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: stream)
    return captures


def test_replay_pads_slices_and_returns_copies_one_capture_per_padded_size(cpu_graphs):
    torch.manual_seed(0)
    model = LAB("300w", config_by_name("tiny", input_size=64)).eval()
    eager = TorchModel(model)
    calls = []

    def forward(images):
        calls.append(images.shape[0])
        out = eager(images)
        # what the graph recorded: the static outputs, rewritten in place at each replay
        graph = _ReplayingGraph.recording
        if graph is not None and graph.forward is None:
            graph.forward = lambda: [mine.copy_(new) for mine, new in zip(out, eager(images))]
        return out

    graphed = cuda_graphs.CudaGraphModel(forward, torch.device("cpu"), max_batch=8, warmup=2)
    first, second, single = torch.rand(3, 3, 64, 64), torch.rand(4, 3, 64, 64), torch.rand(1, 3, 64, 64)
    landmarks, heatmaps = graphed(first)
    assert calls == [4, 4, 4]  # 3 faces padded to 4: two warm-up calls, one capture
    assert landmarks.shape == (3, 68, 2) and heatmaps.shape[0] == 3
    # exactly the eager forward of the zero-padded batch (batch 3 itself may round differently)
    padded = torch.cat([first, torch.zeros(1, 3, 64, 64)])
    torch.testing.assert_close(landmarks, eager(padded)[0][:3], rtol=0, atol=0)
    kept = landmarks.clone()
    again, _ = graphed(second)  # the same padded size: replayed, not captured again
    assert calls == [4, 4, 4] and len(cpu_graphs) == 1
    torch.testing.assert_close(again, eager(second)[0], rtol=0, atol=0)
    torch.testing.assert_close(landmarks, kept, rtol=0, atol=0)  # earlier results are copies, not views
    graphed(single)
    assert len(cpu_graphs) == 2 and calls[-3:] == [1, 1, 1]
    # the padded rows of the 4-image buffer are zeros after a 3-face call
    graphed(first)
    static_images = graphed.graphs[(4, torch.float32, (3, 64, 64))][1]
    assert static_images[3].abs().sum() == 0


def test_the_inference_core_replays_its_uint8_batches_as_eager_runs_them(cpu_graphs):
    """What FaceAligner(cuda_graphs=True) runs, with the stand-in graph: the core's uint8 crops go into
    the static input (padded with zero images), and the landmarks come back as eager gives them."""
    torch.manual_seed(0)
    model = LAB("300w", config_by_name("tiny", input_size=64)).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    faces = [(image, np.array([20.0 + 10 * i, 30.0, 120.0 + 10 * i, 140.0])) for i in range(5)]
    eager = InferenceCore(TorchModel(model), 64, "cpu")

    def forward(images):  # the stand-in graph records, at capture, how to replay
        out = eager.forward(images)
        graph = _ReplayingGraph.recording
        if graph is not None and graph.forward is None:
            graph.forward = lambda: [mine.copy_(new) for mine, new in zip(out, eager.forward(images))]
        return out

    graphed = InferenceCore(cuda_graphs.CudaGraphModel(forward, torch.device("cpu"), max_batch=4, warmup=1), 64, "cpu")
    for mine, theirs in zip(graphed.align(faces, batch_size=4), eager.align(faces, batch_size=4)):
        # batch 4, then 1: padded only where the size is not a power of two (none here), so equal
        np.testing.assert_array_equal(mine.landmarks, theirs.landmarks)
        np.testing.assert_array_equal(mine.confidence, theirs.confidence)
    assert sorted(key[:2] for key in graphed.forward.graphs) == [(1, torch.uint8), (4, torch.uint8)]
    three, = graphed.align(faces[:3], batch_size=4)  # 3 faces padded to 4 with zero images
    np.testing.assert_allclose(three.landmarks, next(eager.align(faces[:3], batch_size=4)).landmarks, atol=1e-3, rtol=0)


@pytest.mark.parametrize("config", ["tiny", "paper"])
def test_the_captured_callable_reads_nothing_back_from_the_device(config, monkeypatch):
    monkeypatch.setenv("LABFAST_BACKEND", "reference")
    with torch.device("meta"):
        model = LAB("300w", config_by_name(config)).eval()
        images = torch.zeros(2, 3, model.config.input_size, model.config.input_size)
    with HostReads() as reads:
        landmarks, heatmaps = TorchModel(model)(images)  # what CudaGraphModel captures
    assert reads.seen == []
    assert landmarks.shape == (2, 68, 2) and heatmaps.shape == (2, 13, 64, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replay_gives_the_eager_landmarks_on_the_gpu(tiny_checkpoint):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    eager = FaceAligner(tiny_checkpoint, device="cuda", batch_size=8)
    graphed = FaceAligner(tiny_checkpoint, device="cuda", batch_size=8, cuda_graphs=True)
    for faces in (1, 3, 8, 3):
        boxes = np.array([[100 + 20 * i, 100, 300 + 20 * i, 320] for i in range(faces)], np.float32)
        for mine, theirs in zip(graphed.predict(image, boxes), eager.predict(image, boxes)):
            # same kernels on the same inputs; batch padding may change library algorithm choices
            np.testing.assert_allclose(mine.landmarks, theirs.landmarks, atol=1e-3)
