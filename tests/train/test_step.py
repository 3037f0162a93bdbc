"""The training step: its ground truth is checked, made once and from constants made once; crops
reach it as uint8."""
import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DistributedSampler

from labfast import schemes
from labfast.data import FaceDataset
from labfast.model import config_by_name, losses
from labfast.ops.boundary_heatmaps import dense_curves
from labfast.train import faces
from labfast.train.build import build_model, to_training_device
from labfast.train.runtime import Runtime
from labfast.train.step import build_trainer, train_step, training_losses
from tiny_runs import tiny_config

#: every module that calls the curve function by a name of its own (labfast.ops exports a function
#: named boundary_heatmaps, which hides the module of that name as an attribute)
CURVE_USERS = [importlib.import_module(name) for name in
               ("labfast.ops.boundary_heatmaps", "labfast.model.losses", "labfast.train.targets")]


def _trainer(*assignments: str):
    config = tiny_config("input_size=64", *assignments)
    model = to_training_device(build_model(config), config, torch.device("cpu"))
    return build_trainer(model, config, Runtime())


def _batch(size: int = 64, count: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    landmarks = size * (0.15 + 0.7 * torch.rand(count, 68, 2, generator=generator))
    return images, landmarks


def test_train_step_rejects_a_non_finite_landmark_naming_the_sample():
    # The step's ground truth names the sample and the landmark, before any optimiser step; it used
    # to surface only as "training loss is nan".
    trainer = _trainer()
    images, landmarks = _batch()
    landmarks[1, 30, 0] = float("nan")
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    with pytest.raises(ValueError, match=r"sample 1 \(batch index\), landmark 30"):
        train_step(trainer, images, landmarks)
    assert all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())


def test_the_boundary_curves_are_made_once_a_step_for_heatmaps_and_fake_labels(monkeypatch):
    """The ground-truth heatmaps and the discriminator's "boundary" labels read the same curves."""
    trainer = _trainer()
    assert trainer.model.config.discriminator_distance == "boundary" and trainer.discriminator is not None
    train_step(trainer, *_batch())  # the first step may run the ops' one-time self-checks, curves included
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return dense_curves(*args, **kwargs)

    for module in CURVE_USERS:
        monkeypatch.setattr(module, "dense_curves", counted)
    terms = train_step(trainer, *_batch())
    assert "discriminator" in terms and len(calls) == 1


def test_shared_curves_give_the_fake_labels_of_the_targets_own_curves():
    scheme, config = schemes.get("300w"), config_by_name("tiny", input_size=64)
    _, target = _batch()
    predicted = target + torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    curves = dense_curves((target + 0.5) * (config.heatmap_size / 64) - 0.5, scheme, config.heatmap_size)
    shared = losses.fake_labels(predicted, target, scheme, config, target_curves=curves)
    assert torch.equal(shared, losses.fake_labels(predicted, target, scheme, config))


def test_a_step_makes_no_tensor_from_python_values_after_the_first(monkeypatch):
    """A scheme's index tables are made (uploaded, on a GPU) once, not at every step."""
    trainer = _trainer()
    images, landmarks = _batch()
    train_step(trainer, images, landmarks)  # the first step: tables and optimiser state are made
    made = []
    tensor = torch.tensor

    def counted(*args, **kwargs):
        made.append(args[0] if args else kwargs)
        return tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counted)
    train_step(trainer, images, landmarks)
    assert made == []


class HostToDevice(TorchDispatchMode):
    """Records every operator that takes a host (CPU) tensor and gives one on another device."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in inputs) and any(t.device.type != "cpu" for t in outputs):
            self.seen.append(str(func))
        return out


def test_curves_and_fake_labels_upload_nothing_to_the_device(monkeypatch):
    """On the meta device, standing in for a GPU: after the first call, the curves and the boundary
    distance of the fake labels copy nothing from the host and make no tensor from Python values."""
    scheme, config = schemes.get("300w"), config_by_name("tiny", input_size=64)
    target = _batch()[1].to("meta")

    def labels():
        curves = dense_curves(target, scheme, config.heatmap_size)
        return losses.fake_labels(target, target, scheme, config, target_curves=curves)

    labels()
    made = []
    tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *args, **kwargs: made.append(args) or tensor(*args, **kwargs))
    with HostToDevice() as copies:
        assert labels().shape == (2,)
    assert copies.seen == [] and made == []


def test_training_batches_reach_the_step_as_uint8():
    config = tiny_config()
    train_faces, _ = faces.read_training_faces(config)
    train_set = FaceDataset(train_faces, "300w", input_size=config.input_size, train=True, augment=config.augment,
                            skip_unreadable=True)
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    batch = next(iter(faces.epoch_loader(train_set, sampler, config, 0, 0, torch.device("cpu"))))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 256, 256)


def test_the_step_uses_the_configured_landmark_loss():
    torch.manual_seed(0)
    config = tiny_config("input_size=64")
    model = build_model(config).eval()
    images, landmarks = torch.rand(2, 3, 64, 64), torch.rand(2, 68, 2) * 64
    for kind in ("l2", "wing"):
        weights = model.config.replace(landmark_loss=kind)
        terms, output, _ = training_losses(model, weights, None, images, landmarks, model.boundary_scheme, 64,
                                           config.sigma, True)
        expected = losses.landmark_loss(output.landmarks, landmarks, 64, kind)
        assert terms["landmark"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert build_model(tiny_config("model.landmark_loss=wing")).config.landmark_loss == "wing"
