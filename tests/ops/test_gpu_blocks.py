"""The interpreter runs the kernels at the block sizes a GPU launch uses, not only at the larger
blocks the interpreter prefers for speed.

``kernels/boundary_heatmaps.py`` takes ``_INTERPRETER_BLOCK_PIXELS`` (1024) under the interpreter
and ``BLOCK_PIXELS`` (128) on a GPU (``tests/ops/test_compile_sm90.py`` checks the GPU launch
specialises 128); here the interpreter is made to launch 128, on the paper preset's heatmap size
(several pixel blocks per curve) and on an odd size (a masked last block). The message-passing and
fusion launchers choose the same blocks on both (``tests/ops/test_message_passing.py`` has a case
at the paper's branch width and kernel).
"""
from __future__ import annotations

import pytest
import torch

import labfast.kernels.boundary_heatmaps as boundary_kernels
from labfast.model import config_by_name
from labfast.ops import backend
from labfast.ops.boundary_heatmaps import dense_curves, gaussian_cut, squared_distance_ref
from labfast.schemes import get

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1")
PAPER = config_by_name("paper")


@pytest.mark.parametrize("size", [PAPER.heatmap_size, 37], ids=["paper_heatmap_size", "odd_size_37"])
def test_boundary_heatmaps_at_the_gpu_pixel_block(monkeypatch, size):
    monkeypatch.setattr(boundary_kernels, "_INTERPRETER_BLOCK_PIXELS", boundary_kernels.BLOCK_PIXELS)
    assert size * size > boundary_kernels.BLOCK_PIXELS and size * size % boundary_kernels.BLOCK_PIXELS in (0, 89)
    generator = torch.Generator().manual_seed(0)
    landmarks = torch.rand(1, 68, 2, generator=generator) * (size - 3) + 1
    curves = dense_curves(landmarks, get("300w"), size)
    expected = gaussian_cut(squared_distance_ref(curves, size, size, 3.0), 1.0)
    got = boundary_kernels.boundary_heatmaps_triton(curves, size, size, 1.0, torch.float32)
    # Pixels whose distance sits within float32 noise of the 3σ cut may fall either side of it.
    squared = squared_distance_ref(curves, size, size, 4.0)
    keep = (squared - 9.0).abs() > 1e-4 * 9.0
    # Same float32 expression; exp and the division may differ by a few ulp: 1e-6 absolute.
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-6, rtol=0)
