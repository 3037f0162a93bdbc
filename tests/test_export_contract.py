"""Exported files carry their contract (issue 19 item 7), and the README's onnxruntime-only snippet
gives the landmarks labfast gives."""
import importlib.util
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from labfast import checkpoint
from labfast.data import read_300w
from labfast.inference import export
from labfast.inference.aligner import FaceAligner

ROOT = Path(__file__).resolve().parents[1]
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
needs_onnx = pytest.mark.skipif(any(importlib.util.find_spec(name) is None for name in ONNX_PACKAGES),
                                reason="ONNX export needs onnx, onnxscript and onnxruntime (pip install 'labfast[export]')")


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- onnx-snippet:begin -->")[1].split("<!-- onnx-snippet:end -->")[0]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    loaded, _ = checkpoint.load_model(tiny_checkpoint, "cpu")
    return loaded.eval()


def test_torchscript_file_carries_the_contract(model, tmp_path):
    path = export.export(model, "torchscript", tmp_path / "model.torchscript.pt")
    extra = {export.CONTRACT_FILE: ""}
    torch.jit.load(str(path), _extra_files=extra)
    contract = json.loads(extra[export.CONTRACT_FILE])
    assert contract == export.contract(model)
    assert contract["input_size"] == str(model.config.input_size) and contract["landmark_scheme"] == "300w"
    assert contract["channel_order"] == "RGB" and contract["input_dtype"] == "float32"


@pytest.mark.slow  # the ONNX export: about 40 s on a busy 2-core CPU
@needs_onnx
def test_the_readme_snippet_runs_the_onnx_file_with_onnxruntime_alone(model, tiny_checkpoint, tmp_path, monkeypatch):
    export.export(model, "onnx", tmp_path / "lab_300w.onnx")
    monkeypatch.chdir(tmp_path)  # the snippet opens "lab_300w.onnx"
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    session = namespace["session"]
    assert session.get_modelmeta().custom_metadata_map == export.contract(model)
    aligner = FaceAligner(tiny_checkpoint, device="cpu", runtime="torch")
    for sample in read_300w(ROOT / "data" / "300w_sample", "common")[:2]:
        image = cv2.imread(sample.image_path)
        box = np.asarray(sample.box, np.float64)
        got = namespace["onnx_landmarks"](session, image, box)
        expected = aligner.predict(image, boxes=box[None])[0].landmarks
        # export parity allows 1e-2 crop px (export.PARITY_FLOOR); mapped to the image that is
        # 1e-2 / scale px, and the crop differs from labfast's only in where the blur's region ends
        scale = model.config.input_size / (max(box[2:] - box[:2]) * 1.25)
        assert np.abs(got - expected).max() <= 1e-2 / scale + 1e-3
