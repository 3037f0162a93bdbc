"""Low-latency CUDA inference: each batch size's forward captured once as a CUDA graph, then replayed.

At batch 1 the GPU work of a forward is small (the paper model: about 0.2 ms of roofline time on an
H100, ``labfast bench --predict``) while eager PyTorch launches every one of its ~2,300 operators
from the host, a few microseconds each: launch overhead, not FLOPs, decides batch-1 latency. A CUDA
graph replays the whole recorded forward with one launch.

- Batches are padded with zero images up to the next power of two (at most ``max_batch``), so at
  most ``log2(max_batch) + 1`` graphs exist; padded rows are dropped from the outputs (in eval mode
  the faces of a batch do not interact). Each size is captured on first use; all share one memory
  pool.
- Before a capture the forward runs eagerly ``warmup`` times on a side stream, as capture requires
  (library workspaces and algorithm choices are made outside the graph); those eager calls are also
  where each fast path runs its self-check (``labfast.ops.backend`` skips it while capturing).
- The captured forward must not read a tensor back to the host (tests/model/test_no_host_sync.py
  checks the model's forward; tests/test_cuda_graphs.py the callable captured here).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device; this model runs on {device}")


def padded_batch(faces: int, max_batch: int) -> int:
    """The captured batch size that serves ``faces`` faces: the next power of two, at most ``max_batch``."""
    if not 1 <= faces <= max_batch:
        raise ValueError(f"a batch of {faces} faces: CUDA-graph batches hold 1 to {max_batch} faces")
    return min(1 << (faces - 1).bit_length(), max_batch)


class CudaGraphModel:
    """``forward`` (images -> landmarks, heatmaps, as ``labfast.inference.runtime.TorchModel``) replayed from
    CUDA graphs; same call contract. Outputs are fresh tensors (copies of the graph's static outputs)."""

    def __init__(self, forward: Forward, device: torch.device, max_batch: int, warmup: int = 3):
        check_device(device)
        self.forward = forward
        self.device = device
        self.max_batch = max_batch
        self.warmup = warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        faces = images.shape[0]
        size = padded_batch(faces, self.max_batch)
        key = (size, images.dtype, tuple(images.shape[1:]))
        if key not in self.graphs:
            self.graphs[key] = self._capture(size, images)
        graph, static_images, (landmarks, heatmaps) = self.graphs[key]
        static_images[:faces].copy_(images)
        static_images[faces:].zero_()
        graph.replay()
        return landmarks[:faces].clone(), heatmaps[:faces].clone()

    def _capture(self, size: int, images: torch.Tensor):
        static_images = torch.zeros((size, *images.shape[1:]), dtype=images.dtype, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.forward(static_images)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.forward(static_images)
        return graph, static_images, outputs
