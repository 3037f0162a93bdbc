"""Training LAB: ``train(config, out_dir)`` with a ``TrainConfig`` (``presets.get(name)``).

Modules: ``loop`` (the loop), ``step`` (losses and the optimiser steps), ``state`` (``last.pt``,
``best.pt``, resume), ``faces`` (training faces, validation split, loader), ``build`` (the model a
run trains), ``runtime`` (single process or ``torchrun``), ``schedule``, ``presets``, ``scalars``.
"""
from labfast.train.loop import train
from labfast.train.presets import PRESETS, TrainConfig

__all__ = ["PRESETS", "TrainConfig", "train"]
