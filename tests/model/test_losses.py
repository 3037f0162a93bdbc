import math

import pytest
import torch

from labfast import schemes
from labfast.model import losses


def test_fake_label_counts_the_share_of_close_landmarks():
    # 10 landmarks, θ = 0.1, δ = 0.8: 8 within θ -> 1 ("real"), 7 within θ -> 0 ("fake").
    target = torch.zeros(3, 10, 2)
    predicted = torch.zeros(3, 10, 2)
    predicted[0, 8:, 0] = 0.5   # 8 close
    predicted[1, 7:, 0] = 0.5   # 7 close
    predicted[2, :, 1] = 0.1    # all exactly at θ: "< θ" is strict, so none close
    labels = losses.fake_labels(predicted, target, torch.ones(3), 0.1, 0.8)
    assert labels.tolist() == [1.0, 0.0, 0.0]


def test_fake_label_distance_is_normalised_per_face():
    target = torch.zeros(2, 4, 2)
    predicted = torch.full((2, 4, 2), 0.0)
    predicted[..., 0] = 3.0  # 3 px off
    # normaliser 40 px -> 0.075 < 0.1: close; normaliser 20 px -> 0.15: not close
    labels = losses.fake_labels(predicted, target, torch.tensor([40.0, 20.0]), 0.1, 1.0)
    assert labels.tolist() == [1.0, 0.0]


def test_landmark_normalizer_inter_ocular_and_box():
    scheme = schemes.get("300w")
    landmarks = torch.zeros(1, 68, 2)
    landmarks[0, 36] = torch.tensor([10.0, 20.0])
    landmarks[0, 45] = torch.tensor([40.0, 60.0])
    assert losses.landmark_normalizer(landmarks, scheme).item() == pytest.approx(50.0)
    aflw = schemes.get("aflw")
    points = torch.zeros(1, 19, 2)
    points[0, 0] = torch.tensor([0.0, 0.0])
    points[0, 1] = torch.tensor([16.0, 4.0])
    assert losses.landmark_normalizer(points, aflw).item() == pytest.approx(8.0)  # sqrt(16·4)
    with pytest.raises(ValueError, match="68"):
        losses.landmark_normalizer(points, scheme)


def test_heatmap_loss_sums_the_mse_of_every_stack():
    target = torch.zeros(1, 2, 4, 4)
    stacks = [torch.full((1, 2, 4, 4), 1.0), torch.full((1, 2, 4, 4), 2.0)]
    assert losses.heatmap_loss(stacks, target).item() == pytest.approx(1.0 + 4.0)


def test_landmark_loss_is_squared_distance_in_crop_units():
    target = torch.zeros(2, 3, 2)
    predicted = torch.zeros(2, 3, 2)
    predicted[0, 0] = torch.tensor([3.0, 4.0])  # 5 px = 5/100 of a 100-px crop
    # mean over faces of (Σ_l d_l² / L): face 0 -> 0.05² / 3, face 1 -> 0
    expected = (0.05 ** 2 / 3) / 2
    assert losses.landmark_loss(predicted, target, 100).item() == pytest.approx(expected)


def test_discriminator_and_adversarial_losses_by_hand():
    zero = torch.zeros(4)
    # D = 1/2 everywhere: each BCE term is log 2
    assert losses.discriminator_loss(zero, zero, torch.ones(4)).item() == pytest.approx(2 * math.log(2))
    # A confident, correct discriminator: real logit +5 vs label 1, fake logit -5 vs d_fake 0;
    # each term log(1 + e^-5) ≈ 6.7e-3, computed in fp32 as log(1 + x): absolute error ~1e-7.
    confident = losses.discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0), torch.zeros(4))
    assert confident.item() == pytest.approx(2 * math.log1p(math.exp(-5)), rel=1e-4)
    # ... and d_fake = 1 turns the same fake logit into a mistake: log(1 + e^5) ≈ 5.0067
    wrong = losses.discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0), torch.ones(4))
    assert wrong.item() == pytest.approx(math.log1p(math.exp(-5)) + math.log1p(math.exp(5)), rel=1e-5)
    # Non-saturating adversarial loss -log D(M̂): log 2 at D = 1/2, large when D rejects
    assert losses.adversarial_loss(zero).item() == pytest.approx(math.log(2))
    assert losses.adversarial_loss(torch.full((4,), -10.0)).item() == pytest.approx(10.0, abs=1e-3)
