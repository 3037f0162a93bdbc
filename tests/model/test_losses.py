import math

import pytest
import torch

from labfast import schemes
from labfast.model import LABConfig, losses
from labfast.schemes import Scheme


def _line_and_dot() -> Scheme:
    """Points 0-4 on one straight boundary, point 5 on none (like COFW's pupils); box normaliser."""
    return Scheme("line_and_dot", 6, {"line": (0, 1, 2, 3, 4)}, tuple(range(6)), "box")


def _line_face() -> torch.Tensor:
    """``(1, 6, 2)`` crop pixels at 256: the line y = 128 from x = 40 to 200, the dot at (120, 48).
    Box normaliser sqrt(160 * 80) = 113.1 px."""
    face = torch.tensor([[40.0, 128.0], [80.0, 128.0], [120.0, 128.0], [160.0, 128.0], [200.0, 128.0], [120.0, 48.0]])
    return face[None]


LANDMARK = LABConfig(discriminator_distance="landmark", fake_distance_threshold=0.1, fake_fraction_threshold=0.8)


def test_fake_label_counts_the_share_of_close_landmarks():
    # 10 landmarks on no boundary, box normaliser 1 (a unit square), θ = 0.1, δ = 0.8:
    # 8 within θ -> 1 ("real"), 7 within θ -> 0 ("fake").
    scheme = Scheme("dots", 10, {}, tuple(range(10)), "box")
    target = torch.zeros(3, 10, 2)
    target[:, 1] = 1.0  # the box of the ground truth is the unit square
    predicted = target.clone()
    predicted[0, 8:, 0] += 0.5   # 8 close
    predicted[1, 7:, 0] += 0.5   # 7 close
    predicted[2, :, 1] += 0.1    # all exactly at θ: "< θ" is strict, so none close
    assert losses.fake_labels(predicted, target, scheme, LANDMARK).tolist() == [1.0, 0.0, 0.0]


def test_landmark_distance_is_normalised_per_face():
    target = torch.zeros(2, 4, 2)
    predicted = torch.full((2, 4, 2), 0.0)
    predicted[..., 0] = 3.0  # 3 px off: 3 / 40 = 0.075 and 3 / 20 = 0.15
    distance = losses.landmark_distance(predicted, target, torch.tensor([40.0, 20.0]))
    torch.testing.assert_close(distance, torch.tensor([[0.075] * 4, [0.15] * 4]))


def test_landmarks_slid_along_their_boundary_are_real_for_the_boundary_reading_only():
    # Points 0-3 slid 12 px along the line, point 4 12 px back along it: on the curve (distance 0)
    # but 12 / 113.1 = 0.106 of the normaliser from their own points (> θ = 0.1). The dot is exact.
    target = _line_face()
    predicted = target.clone()
    predicted[0, :4, 0] += 12.0
    predicted[0, 4, 0] -= 12.0
    scheme = _line_and_dot()
    distance = losses.boundary_distance(predicted / 4, target / 4, scheme, 64)  # heatmap pixels
    # Samples of a straight spline lie on the line to float32 rounding (~1e-5 px at 64).
    assert distance.abs().max() <= 1e-4
    assert losses.fake_labels(predicted, target, scheme, LABConfig()).tolist() == [1.0]
    assert losses.fake_labels(predicted, target, scheme, LANDMARK).tolist() == [0.0]


def test_boundary_distance_is_to_the_curve_and_off_boundary_points_fall_back_to_their_point():
    # Heatmap pixels: each point of the line moved perpendicular by d_i (distance to the line d_i,
    # also past the end: point 4 moves 2 px beyond it, along x, distance 2); the dot moved 1.5 px.
    target = _line_face() / 4
    predicted = target.clone()
    predicted[0, :4, 1] += torch.tensor([0.5, -1.0, 2.0, 3.0])
    predicted[0, 4, 0] += 2.0
    predicted[0, 5] += torch.tensor([0.9, 1.2])
    distance = losses.boundary_distance(predicted, target, _line_and_dot(), 64)
    torch.testing.assert_close(distance, torch.tensor([[0.5, 1.0, 2.0, 3.0, 2.0, 1.5]]), atol=1e-4, rtol=0)


def test_a_landmark_on_two_boundaries_takes_the_nearest():
    # An eye: upper lid 0-1-2 (through y = 8), lower lid 0-3-2 (through y = 12), sharing the
    # corners. Corner 0 predicted at the lower lid's middle is on the lower lid (distance 0) and
    # about 4 px from the upper one: the nearest of its two boundaries counts.
    scheme = Scheme("eye", 4, {"upper": (0, 1, 2), "lower": (0, 3, 2)}, tuple(range(4)), "box")
    target = torch.tensor([[[10.0, 10.0], [14.0, 8.0], [18.0, 10.0], [14.0, 12.0]]])
    predicted = target.clone()
    predicted[0, 0] = target[0, 3]  # corner slid along the lower lid to its middle
    distance = losses.boundary_distance(predicted, target, scheme, 64)
    assert distance[0, 0].abs() <= 1e-4
    assert distance[0, 1:].abs().max() <= 1e-4


@pytest.mark.parametrize("input_size", [128, 256, 512])
def test_boundary_threshold_is_1_5_heatmap_pixels_at_64_scaled_with_the_heatmap(input_size):
    # θ = 1.5 px at 64x64 is 1.5 / 64 of the heatmap side at every size: all five line points
    # moved off the line by 1.4 / 64 of the side are close, by 1.6 / 64 far (δ = 0.8, the dot exact).
    scheme = _line_and_dot()
    target = _line_face() * input_size / 256
    config = LABConfig(input_size=input_size)
    for fraction, label in [(1.4 / 64, 1.0), (1.6 / 64, 0.0)]:
        predicted = target.clone()
        predicted[0, :5, 1] += fraction * input_size
        assert losses.fake_labels(predicted, target, scheme, config).tolist() == [label]


def test_config_saved_before_the_reading_existed_keeps_the_landmark_reading():
    # A checkpoint's config dict from before the field: it was trained with the point-to-point
    # reading, so it loads as "landmark"; new configs default to (and save) "boundary".
    old = LABConfig().to_dict()
    del old["discriminator_distance"]
    assert LABConfig.from_dict(old).discriminator_distance == "landmark"
    assert LABConfig().discriminator_distance == "boundary"
    assert LABConfig.from_dict(LABConfig().to_dict()).discriminator_distance == "boundary"
    with pytest.raises(ValueError, match="discriminator_distance"):
        LABConfig(discriminator_distance="points")


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


def _one_error(size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One face, one landmark, off by ``size`` of a 100-px crop in x only (y exact)."""
    predicted = torch.zeros(1, 1, 2)
    predicted[0, 0, 0] = 100 * size
    return predicted, torch.zeros(1, 1, 2)


@pytest.mark.parametrize("size", [0.0, 0.01, 0.049, 0.051, 0.3])
def test_wing_loss_by_hand_inside_and_outside_its_width(size):
    w, eps = 0.05, 0.01  # the defaults, fractions of the crop
    expected = w * math.log(1 + size / eps) if size < w else size - (w - w * math.log(1 + w / eps))
    assert losses.landmark_loss(*_one_error(size), 100, "wing", w, eps).item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_wing_loss_is_continuous_at_its_width_and_steeper_than_l1_for_small_errors():
    inside = losses.landmark_loss(*_one_error(0.05 - 1e-6), 100, "wing")
    outside = losses.landmark_loss(*_one_error(0.05 + 1e-6), 100, "wing")
    assert abs(inside - outside).item() < 1e-5
    predicted, target = _one_error(0.005)
    predicted.requires_grad_(True)
    losses.landmark_loss(predicted, target, 100, "wing").backward()
    # d/dx w·ln(1 + x/ε) = w / (ε + x) per crop unit = 0.05 / 0.015 ≈ 3.3, L1's is 1 (both / 100 px)
    assert predicted.grad[0, 0, 0].item() * 100 == pytest.approx(0.05 / 0.015, rel=1e-4)


@pytest.mark.parametrize("kind, size, expected", [
    ("l1", 0.02, 0.02), ("smooth_l1", 0.02, 0.02 ** 2 / (2 * 0.05)), ("smooth_l1", 0.2, 0.2 - 0.05 / 2),
    ("l2", 0.02, 0.02 ** 2)])
def test_l1_and_smooth_l1_by_hand(kind, size, expected):
    assert losses.landmark_loss(*_one_error(size), 100, kind).item() == pytest.approx(expected, rel=1e-5)


def test_landmark_loss_refuses_an_unknown_kind_and_config_an_unknown_name():
    with pytest.raises(ValueError, match="huber"):
        losses.landmark_loss(*_one_error(0.1), 100, "huber")
    with pytest.raises(ValueError, match="landmark_loss"):
        LABConfig(landmark_loss="huber")
    assert LABConfig.from_dict({k: v for k, v in LABConfig().to_dict().items()
                                if not k.startswith("landmark_loss")}).landmark_loss == "l2"


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
