"""``train``: images/s of one full LAB step (``labfast.train.step.train_step``: estimator +
regressor forward/backward, ground-truth heatmaps made on the device by
``labfast.ops.boundary_heatmaps``, the discriminator's step, both optimiser steps) on random
256x256 uint8 images and synthetic 300-W faces."""
from __future__ import annotations

from collections.abc import Callable

import torch

from labfast.perf import backends
from labfast.perf.backends import Unavailable
from labfast.perf.inputs import HEATMAP_SIZE, INPUT_SIZE, SIGMA, random_images, synthetic_faces
from labfast.perf.measure import Row, Rows


def _train_config(config_name: str, batch: int, dtype: str):
    from labfast.train import presets

    config = presets.get("300w")
    config.model = config_name
    config.batch_size = batch
    config.amp = "bf16" if dtype == "bf16" else "none"
    config.input_size, config.heatmap_size, config.sigma = INPUT_SIZE, HEATMAP_SIZE, SIGMA
    return config


def prepare(config_name: str, batch: int, dtype: str, backend: str,
            device: torch.device, seed: int = 0) -> Callable[[], dict]:
    """A callable running one full LAB training step (``labfast.train.step.train_step``) per call.

    Raises ``Unavailable`` when ``backend`` cannot run on ``device``.
    """
    from labfast.train.build import build_model
    from labfast.train.runtime import Runtime
    from labfast.train.step import build_trainer, train_step

    backends.check_fast(backend, device)
    if backend == "fast+cudagraphs":
        raise Unavailable("CUDA graphs are measured for inference only")
    config = _train_config(config_name, batch, dtype)
    torch.manual_seed(seed)
    model = build_model(config).to(device)
    if model.discriminator is None:
        raise Unavailable(f"config {config_name!r} has no discriminator; the LAB step needs one")
    trainer = build_trainer(model, config, Runtime(device=device))
    if "compile" in backend:
        trainer.forward = backends.compiled(model)
    images = (random_images(batch, device, seed) * 255).to(torch.uint8)  # crops reach the step as uint8
    landmarks = synthetic_faces(batch, INPUT_SIZE, seed).to(device)

    def step() -> dict:
        return train_step(trainer, images, landmarks)

    return backends.under(backends.dispatch(backend), step)


def measure(rows: Rows, config: str, batch: int, dtype: str, names: list[str]) -> None:
    """The rows of the ``names`` backends at ``batch``."""
    rows.measure(names, lambda backend: Row("train", f"LAB {config} step", backend, dtype, batch, "images/s"),
                 lambda backend: prepare(config, batch, dtype, backend, rows.device), batch)
