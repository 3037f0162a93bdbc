"""CPU inference: the thread setting, ONNX Runtime against eager PyTorch, flip averaging in the API."""
import importlib.util

import cv2
import numpy as np
import pytest
import torch

from labfast import cli, schemes
from labfast.inference.aligner import FaceAligner
from labfast.inference.runtime import DEFAULT_THREADS, PARITY_TOLERANCE, set_threads
from labfast.data import crop_face_pixels, read_300w
from labfast.inference.core import model_input
from labfast.commands.demo import BUNDLED_DATA

needs_onnxruntime = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxruntime")),
    reason="onnx / onnxruntime not installed (pip install labfast[export])")


def test_threads_default_to_one_and_are_set_process_wide(tiny_checkpoint):
    torch.set_num_threads(2)
    aligner = FaceAligner(tiny_checkpoint, device="cpu", runtime="torch")
    assert aligner.threads == DEFAULT_THREADS == 1 and torch.get_num_threads() == 1
    FaceAligner(tiny_checkpoint, device="cpu", runtime="torch", threads=2)
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_thread_counts_are_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match=f"threads must be a positive integer, got {bad!r}"):
        set_threads(bad)


@needs_onnxruntime
def test_onnxruntime_gives_the_plain_models_landmarks_on_real_faces():
    """The shipped small model on bundled 300-W faces: ONNX Runtime vs eager float32, crop space.

    Tolerance ``PARITY_TOLERANCE`` (0.01 crop px, 1e-3 heatmap): both compute in float32 with other
    summation orders (measured ~5e-5 px apart); a graph that dropped or doubled a term would be
    px off (labfast.inference.export's docstring: 4.4 px)."""
    optimised = FaceAligner(device="cpu", runtime="onnxruntime")
    plain = FaceAligner(device="cpu", runtime="torch")
    faces = read_300w(BUNDLED_DATA, "common")[:8]
    crops = np.stack([crop_face_pixels(cv2.imread(face.image_path), face.box, input_size=optimised.input_size)[0]
                      for face in faces])
    batch = model_input(torch.from_numpy(crops))
    (fast_landmarks, fast_heatmaps), (landmarks, heatmaps) = optimised.forward(batch), plain.forward(batch)
    assert float((fast_landmarks - landmarks).abs().max()) <= PARITY_TOLERANCE["landmarks"]
    assert float((fast_heatmaps - heatmaps).abs().max()) <= PARITY_TOLERANCE["boundary_heatmaps"]
    assert float(landmarks.std()) > 5  # real landmarks spread over the crop, not a constant


@needs_onnxruntime
def test_auto_runtime_is_onnxruntime_on_the_cpu(tiny_checkpoint):
    assert type(FaceAligner(tiny_checkpoint, device="cpu").forward).__name__ == "OnnxRuntimeModel"


def test_flip_averages_with_the_mirrored_image_prediction(tiny_checkpoint):
    """``flip=True`` equals averaging the plain prediction with the plain prediction on the mirrored
    photo (mirrored box), mirrored back and relabelled: the crop of a mirrored image is exactly the
    mirrored crop, up to ``cv2.warpAffine`` rounding its sample positions to 1/32 px (measured 0.008
    image px here). Tolerance 0.05 image px; a missing relabel or mirror-back is off by many px."""
    face = read_300w(BUNDLED_DATA, "common")[0]
    image = cv2.imread(face.image_path)
    width = image.shape[1]
    x0, y0, x1, y1 = face.box
    mirrored_box = np.array([[width - 1 - x1, y0, width - 1 - x0, y1]], np.float32)
    plain = FaceAligner(tiny_checkpoint, device="cpu", runtime="torch")
    flipped = FaceAligner(tiny_checkpoint, device="cpu", runtime="torch", flip=True)
    direct = plain.predict(image, boxes=face.box[None])[0].landmarks
    mirror = plain.predict(np.ascontiguousarray(image[:, ::-1]), boxes=mirrored_box)[0].landmarks
    unmirrored = np.empty_like(mirror)
    unmirrored[np.asarray(schemes.get("300w").flip_permutation)] = mirror
    unmirrored[:, 0] = width - 1 - unmirrored[:, 0]
    averaged = flipped.predict(image, boxes=face.box[None])[0].landmarks
    np.testing.assert_allclose(averaged, (direct + unmirrored) / 2, atol=0.05)
    assert np.abs(averaged - direct).max() > 0.01  # the random tiny model is not mirror-symmetric


def test_predict_command_takes_flip_and_threads(tiny_checkpoint, tmp_path):
    face = read_300w(BUNDLED_DATA, "common")[0]
    assert cli.main(["predict", face.image_path, "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                     "--flip", "--threads", "1", "--no-overlay", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == 1
