"""CPU inference that respects the machine: how many threads, and which runtime runs the model.

Threads. ``torch.set_num_threads`` (and ONNX Runtime's ``intra_op_num_threads``) default to every
core; on a CPU that other processes also use, threads that spin-wait for a busy sibling make the
small model many times slower, not faster. Measured on the 2-core development machine (AMD EPYC,
load average 5-14 from other jobs; benchmarks/RESULTS.md, "CPU inference per face"): the shipped
small model at batch 1 took 66-97 ms per face on one thread and 354-1008 ms on two (3.6-10x slower).
A face at batch 1 is too little work to share between cores, so the default is **one thread**
(``DEFAULT_THREADS``); pass more for large batches on a machine of your own.

Runtime. The same model runs 3-4x faster under ONNX Runtime than in eager PyTorch on one core
(18-30 ms against 66-97 ms per face in the same run; ONNX Runtime fuses batch norm into the
convolutions and runs the many small convolutions with less per-op overhead). A TorchScript-frozen
graph (batch norm folded) gained only 1.3x and channels_last nothing beyond it, so ONNX Runtime is
the one optimised path: with ``runtime="auto"`` the CPU aligner exports the model in memory (about
7 s, once per ``FaceAligner``) and checks it against eager on a random batch; without ``onnx`` /
``onnxruntime`` installed (``pip install labfast[export]``), or if the check fails, it runs eager
PyTorch under ``torch.inference_mode`` and logs why, once.
"""
from __future__ import annotations

import importlib.util
import io
import logging
import warnings

import numpy as np
import torch

from labfast.inference.export import OUTPUTS, InferenceModel, reference_ops

logger = logging.getLogger("labfast.inference.runtime")

#: Intra-op threads for CPU inference unless told otherwise (module docstring: why one).
DEFAULT_THREADS = 1
RUNTIMES = ("auto", "torch", "onnxruntime")
#: Largest difference the ONNX Runtime graph may show against eager float32 on the same crops:
#: 0.01 crop px of landmarks (on a 128 px crop of a 300-W face, inter-ocular ~50 px, it moves the
#: NME by 2e-4, below the 0.01 % the papers print) and 1e-3 of a heatmap in [0, 1]. Both are far
#: above float32 reordering noise (measured 5e-5 px) and far below a dropped term (the export
#: docstring's 4.4 px).
PARITY_TOLERANCE = {"landmarks": 1e-2, "boundary_heatmaps": 1e-3}


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` (``None``: ``DEFAULT_THREADS``); returns the number set."""
    threads = DEFAULT_THREADS if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)
    return threads


class OnnxRuntimeModel:
    """The inference graph of a LAB model under ONNX Runtime on the CPU.

    ``model(images)`` with ``images (N, 3, S, S)`` uint8 RGB (``labfast.inference.core.model_input``)
    -> ``(landmarks (N, L, 2), boundary_heatmaps (N, K, S/4, S/4))`` float32 tensors, like
    ``labfast.inference.export.InferenceModel``. The graph is recorded from uint8 images, so the
    model's own conversion to [0, 1] (``LAB.normalize``) runs inside it. Raises ``RuntimeError`` when
    the exported graph disagrees with eager beyond ``PARITY_TOLERANCE``.
    """

    def __init__(self, model: torch.nn.Module, threads: int):
        import onnxruntime

        wrapper = InferenceModel(model).eval()
        size = model.config.input_size
        check = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        graph = io.BytesIO()
        # The TorchScript-based exporter: seconds, where the torch.export one takes minutes on a small
        # CPU; the parity check below guards it as labfast export's check guards the file it writes.
        with reference_ops(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (check,), graph, dynamo=False, input_names=["images"], output_names=list(OUTPUTS),
                              dynamic_axes={name: {0: "batch"} for name in ("images", *OUTPUTS)})
            eager = wrapper(check)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        for name, expected, got in zip(OUTPUTS, eager, self(check)):
            difference = float((expected - got).abs().max())
            if not difference <= PARITY_TOLERANCE[name]:
                raise RuntimeError(f"ONNX Runtime {name} differ from eager by {difference:.3g} "
                                   f"(tolerance {PARITY_TOLERANCE[name]})")

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images.numpy())})
        return tuple(torch.from_numpy(output) for output in outputs)


class TorchModel:
    """Eager PyTorch under ``inference_mode``: the exported graph's outputs (``InferenceModel``) in
    float32, the same call contract as :class:`OnnxRuntimeModel`."""

    def __init__(self, model: torch.nn.Module):
        self.graph = InferenceModel(model)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        landmarks, boundary_heatmaps = self.graph(images)
        return landmarks.float(), boundary_heatmaps.float()


def inference_runtime(model: torch.nn.Module, device: torch.device, runtime: str = "auto",
                      threads: int = DEFAULT_THREADS):
    """The callable that runs ``model`` for inference: ONNX Runtime on the CPU where it is available
    and agrees with eager (``runtime="auto"``), else eager PyTorch; the choice is logged."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch" or (runtime == "auto" and device.type != "cpu"):
        return TorchModel(model)
    if device.type != "cpu":
        raise ValueError(f"runtime 'onnxruntime' runs on the CPU only, not on {device}")
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        if runtime == "onnxruntime":
            raise ImportError(f"runtime 'onnxruntime' needs {', '.join(missing)} (pip install labfast[export])")
        logger.info("CPU inference runs eager PyTorch: %s not installed (pip install labfast[export] "
                    "for ONNX Runtime, 3-4x faster on one core)", " and ".join(missing))
        return TorchModel(model)
    try:
        return OnnxRuntimeModel(model, threads)
    except Exception as error:  # an exporter or runtime failure must not stop inference
        if runtime == "onnxruntime":
            raise
        logger.warning("CPU inference runs eager PyTorch: the ONNX Runtime path failed (%s)", error)
        return TorchModel(model)


def add_threads_argument(parser) -> None:
    """``--threads N`` for the commands that run the model on the CPU."""
    parser.add_argument("--threads", type=int, default=None,
                        help=f"CPU threads (default {DEFAULT_THREADS}: more made batch-1 inference several times "
                             "slower on a shared CPU; labfast.inference.runtime)")
