"""Pose-balanced sampling: draws by weight, seeded by epoch, sharded like the distributed sampler,
each copy of a face augmented anew, and a balanced run resumes exactly."""
from collections import Counter

import numpy as np
import torch

from labfast import data
from labfast.train import train
from labfast.train.faces import read_training_faces
from labfast.train.sampling import BalancedSampler
from tiny_runs import final_weights, tiny_config


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


def test_each_copy_of_a_face_counts_its_earlier_draws_and_is_augmented_anew():
    sampler = BalancedSampler(np.array([0.0, 1.0]), seed=0)  # face 1 drawn twice
    assert list(sampler) == [(1, 0), (1, 1)]
    faces, _ = read_training_faces(tiny_config())
    dataset = data.FaceDataset(faces, "300w", input_size=64, train=True, seed=0)
    torch.testing.assert_close(dataset[(2, 0)]["image"], dataset[2]["image"], rtol=0, atol=0)
    assert not torch.equal(dataset[(2, 1)]["image"], dataset[2]["image"])


def test_pose_balancing_changes_the_order_and_resumes_exactly(tmp_path):
    balanced = tiny_config("pose_balance_bins=3", "pose_balance_cap=8")
    train(balanced, tmp_path / "straight")
    train(tiny_config("pose_balance_bins=3", "pose_balance_cap=8", "max_steps=3"), tmp_path / "killed")
    train(balanced, tmp_path / "killed", resume=True)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    train(tiny_config(), tmp_path / "uniform")
    uniform = final_weights(tmp_path / "uniform")
    assert any(not torch.equal(uniform[name], straight[name]) for name in straight)
