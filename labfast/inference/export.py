"""``labfast export``: a checkpoint's inference model as TorchScript or ONNX, checked against eager,
with its contract inside, or as the weights-only labfast checkpoint that ships (``--format checkpoint [--half]``).

The exported graph maps ``images (N, 3, S, S)`` float32 RGB in [0, 1] (the crops of
``labfast.data.crop_face``) to ``landmarks (N, L, 2)`` in crop pixel coordinates and
``boundary_heatmaps (N, K, S/4, S/4)`` of the last estimator stack; the discriminator and the
earlier stacks' heatmaps are training-time parts and are left out.

Both files carry their contract (:func:`contract`): the input size, dtype, range, layout and channel
order, where normalisation happens, the crop, the landmark scheme and the coordinate convention, as
ONNX ``metadata_props`` (``session.get_modelmeta().custom_metadata_map`` in onnxruntime) and as the
TorchScript extra file ``labfast_contract.json`` (``torch.jit.load(path, _extra_files=...)``), so a
file that travels without labfast still says how to feed it. The README shows the ONNX file run
with onnxruntime, OpenCV and numpy alone.

The graph is recorded with every labfast op on its plain PyTorch reference
(``LABFAST_BACKEND=reference`` for the duration of the export), so no Triton or CUDA-extension
kernel enters it: the file runs wherever TorchScript / ONNX Runtime runs.

ONNX uses torch's ``torch.export``-based exporter (``dynamo=True``), which needs the ``onnx`` and
``onnxscript`` packages. Message passing sums each boundary's incoming
messages through a constant routing matrix (``labfast.ops.message_passing_ref``): with
``index_add`` instead, the older exporter kept one message of several (4.4 px off on a tiny model)
and onnxruntime 1.32 on CPU sometimes summed the dynamo exporter's ``ScatterND(add)`` wrongly
(3 of 12 sessions, 0.3-4.3 px; measured 2026-11). The parity check below would catch such a file
(exit status 1). The parity check needs ``onnxruntime``. All three come with ``pip install labfast[export]``.

After writing the file, the command loads it back, runs it and eager PyTorch (float32 and float64)
on the same random batch, prints the largest absolute difference of each output next to eager's
own float32 error, and exits with status 1 when a difference is beyond the tolerance that error
sets (``PARITY_FACTOR``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

logger = logging.getLogger("labfast.inference.export")

FORMATS = ("torchscript", "onnx", "checkpoint")
SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx", "checkpoint": ".weights.pt"}
#: What a ``checkpoint`` export keeps of the training record besides the weights.
RELEASE_FIELDS = ("metrics", "epoch", "step", "best_nme", "train_config")

#: The parity check, in the manner of flash-attention's tests: the exported model computes in float32
#: like eager, only with its own kernels (other summation orders), so it may differ from eager by about
#: as much as eager float32 differs from the same model run in float64. A difference passes when it is
#: at most ``PARITY_FACTOR`` times eager's own float32 error, or below ``PARITY_FLOOR`` (what cannot
#: matter: 0.01 px on a 256 px crop moves a 300-W NME, inter-ocular ~100 px, by 1e-4 -- below the
#: 0.01 % the papers print; 1e-3 on a heatmap in [0, 1] is a quarter of an 8-bit grey level).
#: Factor 4: exported and eager errors add (2x) and the exported kernels may round a little worse.
#: Why the relative part: an untrained "paper" model outputs landmarks of +-6000 px, where eager
#: float32 itself is 1.2 px off float64 (ONNX Runtime: 1.7 px off eager); a trained model's outputs
#: lie in the crop and its differences fall under the floor (tiny preset, random: ONNX 4e-4 px).
#: An exporter that drops terms (e.g. the repeated-index ``index_add`` above: 4.4 px on a tiny model
#: whose float32 error is ~1e-4 px) fails by orders of magnitude.
PARITY_FACTOR = 4.0
PARITY_FLOOR = {"landmarks": 1e-2, "boundary_heatmaps": 1e-3}
OUTPUTS = ("landmarks", "boundary_heatmaps")
#: The smallest example batch an ONNX export is traced with: ``torch.export`` specialises a
#: dimension of size 1 to the constant 1, so an example batch of 1 fixes the batch axis of the file.
EXAMPLE_BATCH = 2


class InferenceModel(torch.nn.Module):
    """``images (N, 3, S, S)`` -> ``(landmarks (N, L, 2), boundary_heatmaps (N, K, S/4, S/4))``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images)
        return output.landmarks, output.heatmaps[-1]


#: The TorchScript extra file holding :func:`contract`.
CONTRACT_FILE = "labfast_contract.json"


def contract(model: torch.nn.Module) -> dict[str, str]:
    """What an exported file of ``model`` (a ``labfast.model.LAB``) expects and returns, as strings (ONNX
    metadata is string to string): everything needed to crop, feed it and map its landmarks back."""
    from labfast.data import DEFAULT_MARGIN

    size = int(model.config.input_size)
    scheme = model.scheme
    return {
        "labfast.contract": "1",
        "input_name": "images",
        "input_shape": f"N,3,{size},{size}",
        "input_size": str(size),
        "input_dtype": "float32",
        "input_range": "0..1 (uint8 pixel / 255)",
        "input_layout": "NCHW",
        "channel_order": "RGB",
        "normalisation": ("inside the graph: (x - mean) / std with ImageNet mean 0.485,0.456,0.406 and std 0.229,0.224,0.225"
                          if model.config.normalization == "imagenet" else "inside the graph: each image's own mean and std"),
        "crop": (f"square of side max(w, h) * (1 + 2 * {DEFAULT_MARGIN}) around the centre of the landmark-extent face box "
                 f"(x0, y0, x1, y1), scaled to {size}x{size} with the box centre at pixel ({size - 1}/2, {size - 1}/2), "
                 "Gaussian-smoothed with sigma (1/scale - 1)/2 source px first when scale < 1, bilinear, black outside"),
        "crop_margin": str(DEFAULT_MARGIN),
        "landmark_scheme": scheme.name,
        "num_landmarks": str(scheme.num_points),
        "outputs": f"landmarks (N,{scheme.num_points},2) x,y in crop pixels; boundary_heatmaps (N,K,{size // 4},{size // 4}) "
                   "of the last stack, in [0, 1]",
        "coordinate_convention": "0-based pixel centres: pixel (row i, column j) has its centre at (x=j, y=i), in the crop "
                                 "for the outputs; map back to the image through the inverse of the crop's affine",
    }


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Force every labfast op onto its reference path (``labfast.ops.backend``'s switch) for a block."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("LABFAST_BACKEND")}
    for key in saved:
        del os.environ[key]
    os.environ["LABFAST_BACKEND"] = "reference"
    try:
        yield
    finally:
        del os.environ["LABFAST_BACKEND"]
        os.environ.update(saved)


def _require(*modules: str) -> None:
    """Fail with the install command when an optional ONNX package is missing."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"ONNX export needs {', '.join(missing)}: pip install 'labfast[export]' "
                         "(onnx, onnxscript, onnxruntime)")


def export(model: torch.nn.Module, fmt: str, path: str | os.PathLike, batch: int = 1) -> Path:
    """Write ``model`` (a ``labfast.model.LAB`` in eval mode, on the CPU) to ``path`` in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = InferenceModel(model).eval()
    size = model.config.input_size
    example = torch.rand(max(batch, EXAMPLE_BATCH) if fmt == "onnx" else batch, 3, size, size)
    with reference_ops(), torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            traced.save(str(path), _extra_files={CONTRACT_FILE: json.dumps(contract(model), indent=2)})
        else:
            _require("onnx", "onnxscript")
            import onnx

            # the exporter's optimiser logs every pass at INFO; keep the command's output readable
            logging.getLogger("onnx_ir").setLevel(logging.WARNING)
            logging.getLogger("onnxscript").setLevel(logging.WARNING)
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                input_names=["images"], output_names=["landmarks", "boundary_heatmaps"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )
            graph = onnx.load(str(path))
            onnx.helper.set_model_props(graph, contract(model))
            onnx.checker.check_model(graph)
            onnx.save(graph, str(path))
    return path


@dataclass
class Parity:
    """One output's parity: ``difference`` = max |exported - eager float32|, ``float32_error`` =
    max |eager float32 - eager float64|, and the ``tolerance`` the difference is held to."""

    difference: float
    float32_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.difference <= self.tolerance


def parity(model: torch.nn.Module, fmt: str, path: str | os.PathLike, batch: int = 1, seed: int = 0) -> dict[str, Parity]:
    """Run the exported file, eager float32 and eager float64 on one random batch; per output (``OUTPUTS``)
    the differences and tolerance described at ``PARITY_FACTOR``. Eager runs the reference ops too."""
    size = model.config.input_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with reference_ops(), torch.no_grad():
        expected = InferenceModel(model).eval()(images)
        exact = InferenceModel(copy.deepcopy(model).double()).eval()(images.double())
        if fmt == "torchscript":
            got = [tensor.numpy() for tensor in torch.jit.load(str(path))(images)]
        else:
            _require("onnxruntime")
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {"images": images.numpy()})
    result = {}
    for name, value, reference, reference64 in zip(OUTPUTS, got, expected, exact):
        float32_error = float((reference.double() - reference64).abs().max())
        result[name] = Parity(
            difference=float(np.abs(np.asarray(value, np.float64) - reference.double().numpy()).max()),
            float32_error=float32_error,
            tolerance=max(PARITY_FLOOR[name], PARITY_FACTOR * float32_error),
        )
    return result


def release(model: torch.nn.Module, info: dict, path: str | os.PathLike, half: bool) -> float:
    """Write the weights-only labfast checkpoint that ships (no optimiser state), optionally in
    float16; returns the largest landmark change (px) the stored precision causes on a random batch."""
    from labfast import checkpoint

    payload = checkpoint.model_payload(model, half=half)
    payload.update({key: info[key] for key in RELEASE_FIELDS if key in info})
    checkpoint.save(path, payload)
    reloaded, _ = checkpoint.load_model(path)
    size = model.config.input_size
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((reloaded(images).landmarks - model(images).landmarks).abs().max())
