"""The run's scalars: ``metrics.csv`` in long format, ``learning_curve.png`` drawn from it after each
validation, and, where tensorboard is installed, TensorBoard."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from labfast import plots

logger = logging.getLogger("labfast.train.scalars")


class ScalarLog:
    """Scalars to ``metrics.csv`` (long format) and, where the tensorboard package is installed, TensorBoard."""

    def __init__(self, out: Path):
        self.path = out / "metrics.csv"
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed: scalars go to %s only", self.path)
            self.tensorboard = None
        else:
            self.tensorboard = SummaryWriter(str(out / "tensorboard"))

    def add(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        """One row per scalar (``step,epoch,name,value``): new scalars never break the columns."""
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as stream:
            writer = csv.writer(stream)
            if new_file:
                writer.writerow(["step", "epoch", "name", "value"])
            writer.writerows([step, epoch, name, f"{value:.6g}"] for name, value in scalars.items())
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)

    def plot_learning_curve(self) -> None:
        """``learning_curve.png`` beside ``metrics.csv`` (:func:`labfast.plots.learning_curve_figure`)."""
        plots.plot_learning_curve(self.path, self.path.with_name("learning_curve.png"))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
