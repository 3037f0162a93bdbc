"""The model a run trains: the preset's (or a resumed run's) LAB, a transferred frozen estimator
for cross-data-set training (LAB Sec. 4.3), train mode and memory format on the training device."""
from __future__ import annotations

import torch

from labfast import checkpoint, schemes
from labfast.model import LAB, LABConfig, config_by_name
from labfast.train.presets import TrainConfig


def build_model(config: TrainConfig, model_config: LABConfig | None = None) -> LAB:
    """The LAB of ``config``; ``model_config`` (a resumed run's saved one) replaces the preset's."""
    scheme = schemes.get(config.dataset)
    boundary_scheme = schemes.get(config.boundary_dataset) if config.boundary_dataset else scheme
    if model_config is None:
        model_config = config_by_name(config.model, input_size=config.input_size, **config.model_overrides)
    model = LAB(scheme, model_config, boundary_scheme=boundary_scheme)
    if config.estimator_checkpoint:
        source = checkpoint.load(config.estimator_checkpoint)
        prefix = "estimator."
        estimator_state = {k[len(prefix):]: v.float() if v.is_floating_point() else v
                           for k, v in source["model"].items() if k.startswith(prefix)}
        try:
            model.estimator.load_state_dict(estimator_state)
        except RuntimeError as error:
            raise checkpoint.CheckpointError(
                f"estimator of {config.estimator_checkpoint} does not fit this model: {error}"
            ) from error
        model.estimator.requires_grad_(False)
    elif boundary_scheme is not scheme:
        raise ValueError(
            f"training the regressor on {scheme.name} with {boundary_scheme.name} boundaries needs "
            "estimator_checkpoint: a run trained on the boundary data set (LAB Sec. 4.3)"
        )
    return model


def set_training_mode(model: LAB) -> None:
    """Train mode, except a frozen (cross-data-set) estimator, whose batch-norm statistics stay fixed."""
    model.train()
    if not any(p.requires_grad for p in model.estimator.parameters()):
        model.estimator.eval()


def to_training_device(model: LAB, config: TrainConfig, device: torch.device) -> LAB:
    """``model`` on ``device`` in training mode, in channels_last memory where ``config`` asks for it."""
    model = model.to(device)
    set_training_mode(model)
    if config.channels_last:
        if device.type == "cpu" and config.amp == "none":
            refuse_cpu_channels_last_hazard(model)
        model = model.to(memory_format=torch.channels_last)
    return model


def refuse_cpu_channels_last_hazard(model: torch.nn.Module) -> None:
    """Refuse fp32 channels_last CPU training of a model with a 1x1 strided convolution of 2-7 input channels.

    The fp32 backward of such a convolution on channels_last CPU tensors corrupts the heap in oneDNN
    3.12 (torch 2.13; reproduced at stride 2 on even input sizes; bf16 and fp16 autocast are not hit):
    the process aborts with "free(): invalid next size" or worse runs on with corrupted memory. The
    'tiny' preset's ResNet projection (4 -> 8 channels) is one. channels_last is a GPU option (tensor
    cores take NHWC); the CPU gains little.
    """
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
                and 2 <= module.in_channels <= 7):
            raise ValueError(
                f"channels_last=true on the CPU: {name} is a 1x1 stride-{module.stride[0]} convolution of "
                f"{module.in_channels} input channels, whose backward corrupts memory in torch {torch.__version__}'s "
                "oneDNN on channels_last CPU tensors; train without channels_last on the CPU (it is a GPU "
                "option) or with a model of at least 8 channels in its ResNet stages")
