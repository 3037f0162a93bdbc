"""Helpers of the training tests: the tiny configuration on the bundled faces and a run's records."""
from pathlib import Path

import torch

from labfast import checkpoint
from labfast.commands.demo import BUNDLED_DATA
from labfast.train import presets

REPOSITORY = Path(__file__).resolve().parents[2]


def tiny_config(*assignments: str) -> presets.TrainConfig:
    """The tiny model on the first 8 bundled real faces, no augmentation, no workers."""
    return presets.override(presets.get("300w"), [
        f"data_root={BUNDLED_DATA}", "train_subset=common", "model=tiny", "val_fraction=0",
        "train_limit=8", "batch_size=4", "epochs=2", "lr_milestones=", "num_workers=0",
        "augment.rotation_deg=0", "augment.zoom_range=1,1", "augment.shift=0", "augment.flip_probability=0",
        "augment.brightness=0", "augment.contrast=0", "augment.saturation=0", "augment.blur_probability=0",
        "augment.occlusion_probability=0", *assignments,
    ])


def scalars(run: Path, name: str) -> list[float]:
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    return [float(value) for _, _, row_name, value in rows if row_name == name]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run / "last.pt")["model"]
