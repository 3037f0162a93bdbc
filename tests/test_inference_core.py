"""The batched inference core (labfast.inference.core): the model's input from uint8 crops, what
comes back to the host, and one path for FaceAligner and evaluation."""
import numpy as np
import torch

from labfast import checkpoint
from labfast.commands.demo import BUNDLED_DATA
from labfast.data import crop_face, crop_face_pixels, read_300w, read_image_bgr
from labfast.evaluation.protocols import predict_faces
from labfast.inference.aligner import FaceAligner
from labfast.inference.core import InferenceCore, model_input
from labfast.inference.runtime import TorchModel


def test_model_input_from_uint8_crops_is_crop_faces_float_crop_bit_for_bit():
    """The uint8 crops the core uploads, once the model divides them by 255 (``LAB.normalize``), must be
    the very numbers the float crop gives: another channel order or layout would move every landmark."""
    faces = read_300w(BUNDLED_DATA, "common")[:3]
    images = [read_image_bgr(face.image_path) for face in faces]
    pixels = np.stack([crop_face_pixels(image, face.box, input_size=128)[0] for image, face in zip(images, faces)])
    floats = np.stack([crop_face(image, face.box, input_size=128)[0] for image, face in zip(images, faces)])
    made = model_input(torch.from_numpy(pixels))
    assert made.dtype == torch.uint8 and made.is_contiguous() and made.shape == (3, 3, 128, 128)
    assert torch.equal(made.float() / 255, torch.from_numpy(floats).permute(0, 3, 1, 2))


class HostCopies(torch.Tensor):
    """A tensor that records the shape of every copy of it, or of what is computed from it, to the host."""

    shapes: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.cpu, torch.Tensor.numpy):
            cls.shapes.append(tuple(args[0].shape))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_heatmaps_come_back_to_the_host_only_when_asked(tiny_checkpoint):
    model, _ = checkpoint.load_model(tiny_checkpoint)
    eager = TorchModel(model)

    def forward(images):
        landmarks, heatmaps = eager(images)
        return landmarks, heatmaps.as_subclass(HostCopies)

    core = InferenceCore(forward, model.config.input_size, "cpu")
    face = read_300w(BUNDLED_DATA, "common")[0]
    faces = [(read_image_bgr(face.image_path), face.box)] * 2
    HostCopies.shapes = []
    plain, = core.align(faces, batch_size=2)
    # the confidences (2,) are computed from the heatmaps and come back; the heatmaps (2, 13, 64, 64) do not
    assert plain.boundary_heatmaps is None and all(len(shape) == 1 for shape in HostCopies.shapes)
    with_heatmaps, = core.align(faces, batch_size=2, heatmaps=True)
    assert (2, 13, 64, 64) in HostCopies.shapes and with_heatmaps.boundary_heatmaps.shape == (2, 13, 64, 64)
    np.testing.assert_array_equal(plain.landmarks, with_heatmaps.landmarks)


def test_evaluation_and_the_aligner_predict_a_face_the_same_way(tiny_checkpoint):
    """Both run the core: the same crops in the same batches give the same landmarks, bit for bit."""
    faces = read_300w(BUNDLED_DATA, "common")[:6]
    model, _ = checkpoint.load_model(tiny_checkpoint)
    for flip in (False, True):
        evaluated = predict_faces(model, faces, torch.device("cpu"), batch_size=4, flip=flip, progress=False)
        aligner = FaceAligner(tiny_checkpoint, device="cpu", batch_size=4, runtime="torch", flip=flip)
        aligned = aligner.predict([read_image_bgr(face.image_path) for face in faces], boxes=[face.box[None] for face in faces])
        np.testing.assert_array_equal(evaluated, np.stack([face.landmarks for face, in aligned]))
