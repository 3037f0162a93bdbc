"""The recipe's training levers: the landmark loss the step uses, pose-balanced sampling (each copy
augmented anew, exact resume) and the early-stopping rule."""
from collections import Counter

import numpy as np
import pytest
import torch

import labfast.train.loop
from labfast import checkpoint, data
from labfast.train import presets, schedule
from labfast.train.loop import build_model, read_training_faces, train, training_losses
from labfast.train.sampling import BalancedSampler
from test_train import final_weights, tiny_config


def test_the_step_uses_the_configured_landmark_loss(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(tmp_path, "input_size=64")
    model = build_model(config).eval()
    images, landmarks = torch.rand(2, 3, 64, 64), torch.rand(2, 68, 2) * 64
    for kind in ("l2", "wing"):
        weights = model.config.replace(landmark_loss=kind)
        terms, output, _ = training_losses(model, weights, None, images, landmarks, model.boundary_scheme, 64,
                                           config.sigma, True)
        expected = labfast.model.losses.landmark_loss(output.landmarks, landmarks, 64, kind)
        assert terms["landmark"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert build_model(tiny_config(tmp_path, "model.landmark_loss=wing")).config.landmark_loss == "wing"


def test_balanced_sampler_draws_by_weight_seeded_by_epoch_and_shards_like_the_distributed_one():
    weights = np.array([1.0, 1.0, 1.0, 4.0])
    sampler = BalancedSampler(weights, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == len(sampler) == 4 and first == list(sampler)  # a pure function of (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != first
    counts = Counter()
    for epoch in range(500):
        sampler.set_epoch(epoch)
        counts.update(index for index, _ in sampler)
    # face 3 has 4/7 of the probability: 2000 draws, expected 1143, binomial sd 22
    assert abs(counts[3] - 2000 * 4 / 7) < 5 * 22
    shards = [BalancedSampler(weights, num_replicas=2, rank=rank, seed=3) for rank in (0, 1)]
    assert [pair for pairs in zip(*shards) for pair in pairs] == list(BalancedSampler(weights, seed=3))


def test_each_copy_of_a_face_counts_its_earlier_draws_and_is_augmented_anew(tmp_path):
    sampler = BalancedSampler(np.array([0.0, 1.0]), seed=0)  # face 1 drawn twice
    assert list(sampler) == [(1, 0), (1, 1)]
    faces, _ = read_training_faces(tiny_config(tmp_path))
    dataset = data.FaceDataset(faces, "300w", input_size=64, train=True, seed=0)
    torch.testing.assert_close(dataset[(2, 0)]["image"], dataset[2]["image"], rtol=0, atol=0)
    assert not torch.equal(dataset[(2, 1)]["image"], dataset[2]["image"])


def test_pose_balancing_changes_the_order_and_resumes_exactly(tmp_path):
    balanced = tiny_config(tmp_path, "pose_balance_bins=3", "pose_balance_cap=8")
    train(balanced, tmp_path / "straight")
    train(tiny_config(tmp_path, "pose_balance_bins=3", "pose_balance_cap=8", "max_steps=3"), tmp_path / "killed")
    train(balanced, tmp_path / "killed", resume=True)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    train(tiny_config(tmp_path), tmp_path / "uniform")
    uniform = final_weights(tmp_path / "uniform")
    assert any(not torch.equal(uniform[name], straight[name]) for name in straight)


@pytest.mark.parametrize("epochs_done, best_epoch, milestones, fraction, stop", [
    (20, 17, (), 0.1, True),     # 2 stale epochs >= 2.0
    (20, 18, (), 0.1, False),    # 1 stale epoch < 2.0
    (5, 3, (), 0.1, True),       # at least one stale epoch: max(1, 0.5)
    (5, 4, (), 0.1, False),      # the last epoch was the best
    (20, 10, (30,), 0.1, False),  # before the first milestone: never
    (40, 33, (30,), 0.1, True),  # after it: 6 stale >= 4
    (40, 0, (), 0.0, False),     # off
])
def test_early_stop_rule(epochs_done, best_epoch, milestones, fraction, stop):
    config = presets.override(presets.get("300w_cpu"), [f"early_stop_fraction={fraction}",
                                                        "lr_milestones=" + ",".join(map(str, milestones))])
    assert schedule.early_stop_due(config, epochs_done, best_epoch) is stop


def test_training_stops_early_when_validation_stops_improving(tmp_path, monkeypatch):
    nmes = iter([0.5, 0.4, 0.45, 0.46, 0.3, 0.2])
    monkeypatch.setattr(labfast.train.loop, "validation_nme", lambda *args: next(nmes))
    config = tiny_config(tmp_path, "val_fraction=0.2", "train_limit=10", "epochs=6", "early_stop_fraction=0.5")
    summary = train(config, tmp_path / "run")
    # best at epoch 1 (0.4); after epoch 3, 2 stale epochs >= 0.5 * 4
    assert summary["best_val_nme"] == pytest.approx(0.4)
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == 4
