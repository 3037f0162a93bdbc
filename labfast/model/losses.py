"""LAB's training losses (Sec. 3): heatmap MSE with intermediate supervision, landmark L2,
the boundary effectiveness discriminator's loss and the estimator's adversarial loss.

Discriminator and adversarial losses (Sec. 3.3)::

    L_D = -( E[log D(M)] + E[log(1 - |D(M̂) - d_fake|)] )       M ground truth, M̂ = G(I) estimated
    L_A =    E[log(1 - D(M̂))]                                  minimised by the estimator

``log(1 - |D - d|)`` for a label ``d ∈ {0, 1}`` is the log-likelihood of ``d``, so ``L_D`` is the
binary cross-entropy of ``D(M)`` against 1 plus that of ``D(M̂)`` against ``d_fake``. For the
estimator we use the non-saturating form ``-log D(M̂)`` (Goodfellow et al. 2014) of ``L_A``: the
same fixed point with useful gradients while ``D`` still rejects the estimates.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from labfast.schemes import Scheme


def heatmap_loss(predicted: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum over stacks of the mean squared error, each ``(N, K, h, w)`` against ``target``."""
    if len(predicted) == 0:
        raise ValueError("heatmap_loss needs the heatmaps of at least one stack")
    target = target.float()
    return sum(F.mse_loss(stack.float(), target) for stack in predicted)


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor, input_size: int) -> torch.Tensor:
    """L2 loss on ``(N, L, 2)`` pixel coordinates measured in crop-normalised units.

    The mean over faces of ``Σ_l ||p_l - g_l||² / L`` with coordinates divided by ``input_size``, so
    that the value does not depend on the crop resolution.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"landmark_loss: predicted {tuple(predicted.shape)} vs target {tuple(target.shape)}")
    difference = (predicted.float() - target.float()) / input_size
    return difference.pow(2).sum(dim=-1).mean()


def landmark_normalizer(landmarks: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Per-face NME normaliser ``(N,)`` from ground-truth ``(N, L, 2)`` landmarks.

    Inter-ocular / inter-pupil: the distance between ``scheme.normalizer_points``. ``"box"``: the
    ``sqrt(w·h)`` of the landmarks' bounding box (the AFLW protocol uses the annotated face box,
    which the training loss does not see; the landmark box is its stand-in here).
    """
    if landmarks.shape[-2] != scheme.num_points:
        raise ValueError(
            f"landmark_normalizer: {landmarks.shape[-2]} points for scheme {scheme.name!r} of {scheme.num_points}"
        )
    if scheme.normalizer == "box":
        extent = landmarks.amax(dim=-2) - landmarks.amin(dim=-2)
        return extent.clamp_min(0).prod(dim=-1).sqrt()
    first, second = scheme.normalizer_points
    return (landmarks[..., first, :] - landmarks[..., second, :]).norm(dim=-1)


def fake_labels(
    predicted: torch.Tensor,
    target: torch.Tensor,
    normalizer: torch.Tensor,
    distance_threshold: float,
    fraction_threshold: float,
) -> torch.Tensor:
    """``d_fake`` of LAB Sec. 3.3 for each face: ``0`` if ``Pr_s(Dist(s) < θ) < δ`` else ``1``.

    ``Dist(s)`` is the point-to-point distance of landmark ``s`` to its ground truth divided by the
    face's NME normaliser (``normalizer``, ``(N,)``), so ``θ`` reads like an NME (``0.05`` = 5 %).
    Returns ``(N,)`` float labels, no gradient.
    """
    with torch.no_grad():
        distance = (predicted.float() - target.float()).norm(dim=-1) / normalizer.float().unsqueeze(-1)
        fraction_close = (distance < distance_threshold).float().mean(dim=-1)
        return (fraction_close >= fraction_threshold).float()


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, fake_targets: torch.Tensor
) -> torch.Tensor:
    """``L_D``: BCE of ``D(M)`` against 1 plus BCE of ``D(M̂)`` against ``d_fake`` (logits ``(N,)``).

    Call it with the estimated heatmaps detached, so that only the discriminator learns from it.
    """
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), fake_targets.float())
    return real + fake


def adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``L_A`` in its non-saturating form ``-log D(M̂)``, for the estimator (weight it by
    ``LABConfig.adversarial_weight``)."""
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits, dtype=torch.float32))
