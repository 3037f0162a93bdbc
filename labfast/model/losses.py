"""LAB's training losses (Sec. 3): heatmap MSE with intermediate supervision, the landmark loss
(L2, or Wing and its kin),
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

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from labfast.data.transforms import rescale_pixel_coordinates
from labfast.model.config import LANDMARK_LOSSES, LABConfig
from labfast.ops.boundary_heatmaps import dense_curves, index_table
from labfast.schemes import Scheme


def heatmap_loss(predicted: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum over stacks of the mean squared error, each ``(N, K, h, w)`` against ``target``."""
    if len(predicted) == 0:
        raise ValueError("heatmap_loss needs the heatmaps of at least one stack")
    target = target.float()
    return sum(F.mse_loss(stack.float(), target) for stack in predicted)


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor, input_size: int, kind: str = "l2",
                  width: float = 0.05, curvature: float = 0.01) -> torch.Tensor:
    """Loss on ``(N, L, 2)`` pixel coordinates measured in crop-normalised units (divided by
    ``input_size``, so that the value does not depend on the crop resolution).

    ``kind`` (``LABConfig.landmark_loss``), on each coordinate difference ``x``:

    - ``"l2"``: the mean over faces of ``Σ_l ||p_l - g_l||² / L`` (squared point distance);
    - ``"l1"``: ``|x|``; ``"smooth_l1"``: ``x²/2w`` inside ``±w`` (``w = width``), ``|x| - w/2`` outside;
    - ``"wing"`` (Feng et al., CVPR 2018, Eq. 5): ``w·ln(1 + |x|/ε)`` inside ``±w``, ``|x| - C``
      outside, ``C = w - w·ln(1 + w/ε)`` (continuous at ``±w``), ``w = width``, ``ε = curvature``:
      the log amplifies small and medium errors, L1 keeps outliers from dominating.

    The per-coordinate kinds are summed over x and y and averaged over landmarks and faces, as
    ``"l2"`` is.
    """
    if predicted.shape != target.shape:
        raise ValueError(f"landmark_loss: predicted {tuple(predicted.shape)} vs target {tuple(target.shape)}")
    difference = (predicted.float() - target.float()) / input_size
    if kind == "l2":
        per_coordinate = difference.pow(2)
    elif kind == "l1":
        per_coordinate = difference.abs()
    elif kind == "smooth_l1":
        per_coordinate = F.smooth_l1_loss(difference, torch.zeros_like(difference), reduction="none", beta=width)
    elif kind == "wing":
        size = difference.abs()
        offset = width - width * math.log1p(width / curvature)
        per_coordinate = torch.where(size < width, width * torch.log1p(size / curvature), size - offset)
    else:
        raise ValueError(f"landmark_loss: kind={kind!r} is not one of {LANDMARK_LOSSES}")
    return per_coordinate.sum(dim=-1).mean()


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


def fake_labels(predicted: torch.Tensor, target: torch.Tensor, scheme: Scheme, config: LABConfig,
                target_curves: torch.Tensor | None = None) -> torch.Tensor:
    """``d_fake`` of LAB Sec. 3.3 for each face: ``0`` if ``Pr_s(Dist(s) < θ) < δ`` else ``1``.

    ``predicted`` and ``target`` are ``(N, L, 2)`` crop pixels (``config.input_size``). ``Dist`` by
    ``config.discriminator_distance``:

    - ``"boundary"`` (the paper: θ is a distance to the ground-truth *boundaries*):
      :func:`boundary_distance` in heatmap pixels, ``θ = config.fake_boundary_threshold`` at 64×64
      scaled by ``heatmap_size / 64``.
    - ``"landmark"``: :func:`landmark_distance`, point to point over the NME normaliser, with
      ``θ = config.fake_distance_threshold`` (an NME: ``0.05`` = 5 %).

    ``δ = config.fake_fraction_threshold``. Returns ``(N,)`` float labels, no gradient.
    ``target_curves``: for the ``"boundary"`` reading, see :func:`boundary_distance`.
    """
    with torch.no_grad():
        if config.discriminator_distance == "boundary":
            size = config.heatmap_size
            distance = boundary_distance(_heatmap_pixels(predicted, config), _heatmap_pixels(target, config),
                                         scheme, size, target_curves)
            threshold = config.fake_boundary_threshold * size / 64
        else:
            distance = landmark_distance(predicted, target, landmark_normalizer(target.float(), scheme))
            threshold = config.fake_distance_threshold
        fraction_close = (distance < threshold).float().mean(dim=-1)
        return (fraction_close >= config.fake_fraction_threshold).float()


def _heatmap_pixels(landmarks: torch.Tensor, config: LABConfig) -> torch.Tensor:
    """Crop pixels -> heatmap pixels, pixel centres onto pixel centres (as the ground truth is made)."""
    return rescale_pixel_coordinates(landmarks.float(), config.heatmap_size / config.input_size)


def landmark_distance(predicted: torch.Tensor, target: torch.Tensor, normalizer: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` distance of each landmark to its ground truth over the face's ``(N,)`` normaliser."""
    return (predicted.float() - target.float()).norm(dim=-1) / normalizer.float().unsqueeze(-1)


def boundary_distance(predicted: torch.Tensor, target: torch.Tensor, scheme: Scheme, size: int,
                      target_curves: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, L)`` distance of each predicted landmark to its ground-truth boundary curve, in pixels.

    The curve is the ground truth's own dense curve (``labfast.ops.boundary_heatmaps.dense_curves``
    of ``target`` at heatmap side ``size``), the polyline whose distance field the heatmaps are
    made of: point-to-segment distance, minimum over its segments. A landmark on several
    boundaries (an eye corner ends an upper and a lower lid) takes the nearest; a landmark on none
    (COFW's pupils, nose tip and chin, AFLW's chin) falls back to the distance to its own ground
    truth point, in the same pixels. Vectorised over faces and landmarks.

    ``target_curves``: those curves when the caller has them already (the training step made them
    for its ground-truth heatmaps), so that they are computed once a step, not twice.
    """
    curves = dense_curves(target.float(), scheme, size) if target_curves is None else target_curves  # (N, K, P, 2)
    members, on_boundary = _landmark_boundaries(scheme, curves.device)  # (L, M), (L, M)
    curves = curves[:, members]  # (N, L, M, P, 2)
    start, segment = curves[..., :-1, :], curves[..., 1:, :] - curves[..., :-1, :]  # (N, L, M, P-1, 2)
    offset = predicted.float()[:, :, None, None, :] - start
    along = ((offset * segment).sum(-1) / (segment * segment).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
    to_curve = (offset - along.unsqueeze(-1) * segment).norm(dim=-1).amin(dim=-1)  # (N, L, M)
    to_curve = torch.where(on_boundary, to_curve, torch.full_like(to_curve, float("inf"))).amin(dim=-1)
    to_point = (predicted.float() - target.float()).norm(dim=-1)
    return torch.where(on_boundary.any(dim=-1), to_curve, to_point)


def _landmark_boundaries(scheme: Scheme, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, M)`` indices of the boundaries each landmark lies on (M: the most any landmark has),
    padded with boundary 0, and the ``(L, M)`` mask of the real entries."""
    lists: list[list[int]] = [[] for _ in range(scheme.num_points)]
    for k, indices in enumerate(scheme.boundaries.values()):
        for landmark in set(indices):
            lists[landmark].append(k)
    width = max(1, max(len(entry) for entry in lists))
    members = index_table(tuple(tuple(entry + [0] * (width - len(entry))) for entry in lists), device)
    on_boundary = index_table(tuple(tuple(i < len(entry) for i in range(width)) for entry in lists), device)
    return members, on_boundary


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
