"""What the benchmarks and the roofline feed the model: synthetic 300-W faces, random images and
the model on the ``meta`` device (shapes only).

Synthetic inputs, so that a measurement needs no data set and every run sees the same tensors.
"""
from __future__ import annotations

import math

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SCHEME = "300w"  # the synthetic faces are 300-W shaped (68 points), the paper's main benchmark
INPUT_SIZE = 256
HEATMAP_SIZE = 64
SIGMA = 1.0


def _ellipse(centre_x: float, centre_y: float, a: float, b: float, degrees: list[float]) -> np.ndarray:
    angles = np.radians(degrees)
    return np.stack([centre_x + a * np.cos(angles), centre_y - b * np.sin(angles)], axis=1)


def _face_template() -> np.ndarray:
    """A frontal 300-W shaped face, ``(68, 2)`` in units of half the face width (x right, y down).

    Contour, brows, nose, eyes and lips as arcs and ellipses in the 300-W point order: a plausible
    face, so that curve lengths (which set the OpenCV baseline's cost) are those of real faces.
    """
    points = np.zeros((68, 2))
    t = np.linspace(0.0, math.pi, 17)  # contour: left temple, chin, right temple
    points[0:17] = np.stack([-0.8 * np.cos(t), -0.15 + 0.95 * np.sin(t)], axis=1)
    s = np.linspace(0.0, 1.0, 5)
    points[17:22] = np.stack([-0.65 + 0.5 * s, -0.45 - 0.08 * np.sin(math.pi * s)], axis=1)
    points[22:27] = np.stack([0.15 + 0.5 * s, -0.45 - 0.08 * np.sin(math.pi * s)], axis=1)
    points[27:31] = np.stack([np.zeros(4), np.linspace(-0.3, 0.15, 4)], axis=1)
    points[31:36] = np.stack([np.linspace(-0.18, 0.18, 5), 0.22 + 0.05 * np.cos(np.linspace(-1.2, 1.2, 5))], axis=1)
    eye = [180, 120, 60, 0, -60, -120]
    points[36:42] = _ellipse(-0.38, -0.22, 0.15, 0.06, eye)
    points[42:48] = _ellipse(0.38, -0.22, 0.15, 0.06, eye)
    points[48:60] = _ellipse(0.0, 0.5, 0.35, 0.15, [180, 150, 120, 90, 60, 30, 0, -30, -60, -90, -120, -150])
    points[60:68] = _ellipse(0.0, 0.5, 0.25, 0.05, [180, 135, 90, 45, 0, -45, -90, -135])
    return points


def synthetic_faces(count: int, size: float, seed: int = 0) -> torch.Tensor:
    """``(count, 68, 2)`` float32 300-W landmarks in a ``size`` x ``size`` crop (pixel coordinates).

    The template scaled to about 80 % of the crop, rotated by up to 15 degrees, scaled by +-10 %,
    shifted by up to 5 % of the crop, each point jittered by 0.5 % of the crop.
    """
    rng = np.random.default_rng(seed)
    template = _face_template()
    angle = np.radians(rng.uniform(-15, 15, count))
    scale = 0.4 * size * rng.uniform(0.9, 1.1, count)
    rotation = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    faces = np.einsum("nij,pj->npi", rotation, template) * scale[:, None, None]
    faces += (size - 1) / 2 + rng.uniform(-0.05, 0.05, (count, 1, 2)) * size
    faces += rng.normal(0.0, 0.005 * size, faces.shape)
    return torch.from_numpy(faces.astype(np.float32))


def random_images(count: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``(count, 3, 256, 256)`` float32 uniform in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, INPUT_SIZE, INPUT_SIZE, generator=generator).to(device)


def meta_model(config_name: str, scheme: str, dtype: str, train: bool):
    """``LAB(scheme, preset)`` on the ``meta`` device in ``dtype``: every operator runs, none computes."""
    from labfast.model import LAB, config_by_name

    with torch.device("meta"):
        model = LAB(scheme, config_by_name(config_name)).to(DTYPES[dtype])
    return model.train(train)


def meta_images(model, batch: int, dtype: str) -> torch.Tensor:
    """``(batch, 3, S, S)`` meta images at the model's input size ``S``."""
    size = model.config.input_size
    return torch.zeros(batch, 3, size, size, device="meta", dtype=DTYPES[dtype])
