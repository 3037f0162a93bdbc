"""dlib's 68-point shape predictor behind its own HOG face detector: the CPU reference labfast is judged against.

What CPU users run today: ``dlib.get_frontal_face_detector()`` then ``dlib.shape_predictor`` with
``shape_predictor_68_face_landmarks.dat`` (300-W's 68 points). Importing this module imports dlib,
so it is imported only where :func:`labfast.evaluation.wild.dlib_installed` finds the ``benchmark``
extra (``dlib-bin`` and ``face-recognition-models``, the package that ships the predictor file).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import dlib
import numpy as np

#: The HOG detector looks at the image upsampled once, as dlib's landmark example does: its 80 px
#: window then finds faces down to about 40 px.
UPSAMPLE = 1
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def predictor_file() -> Path:
    """The predictor shipped in ``face_recognition_models``, found without importing that package
    (its ``__init__`` needs ``pkg_resources``, which setuptools 81 and later no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise FileNotFoundError("dlib's 68-point predictor comes from face-recognition-models: "
                                "pip install face-recognition-models (or labfast[benchmark])")
    path = Path(spec.submodule_search_locations[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall face-recognition-models")
    return path


class DlibAligner:
    """dlib's detector and 68-point predictor on BGR images, in labfast's 0-based pixel coordinates."""

    def __init__(self, upsample: int = UPSAMPLE):
        self.upsample = upsample
        self.version = dlib.__version__
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_file()))

    @staticmethod
    def rgb(image_bgr: np.ndarray) -> np.ndarray:
        """dlib reads RGB (its predictor works on the grey image it derives from it)."""
        return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)

    def detect(self, image_rgb: np.ndarray) -> np.ndarray:
        """Faces found by the HOG detector: ``(F, 4)`` float64 ``x0, y0, x1, y1`` (dlib's rectangles,
        the box convention its predictor was trained with)."""
        found = self.detector(image_rgb, self.upsample)
        return np.array([[rect.left(), rect.top(), rect.right(), rect.bottom()] for rect in found],
                        np.float64).reshape(-1, 4)

    def landmarks(self, image_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The 68 points ``(68, 2)`` float32 of the face in ``box`` (``x0, y0, x1, y1``, rounded to
        dlib's integer rectangle); dlib returns whole pixels."""
        rect = dlib.rectangle(*(int(round(value)) for value in box))
        shape = self.predictor(image_rgb, rect)
        return np.array([[point.x, point.y] for point in shape.parts()], np.float32)
