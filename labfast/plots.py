"""Figures: CED curves of several methods, boundary heatmaps of a face.

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas — no ``pyplot`` and
no global backend switch, so importing labfast never changes a user's matplotlib state and works
without a display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from labfast import metrics
from labfast.arrays import as_numpy


def plot_ced(curves: Mapping[str, object], path, threshold: float = 0.10, title: str | None = None,
             normaliser: str = "inter-ocular distance") -> Path:
    """Write a PNG of the CED curves ``{name: (N,) per-face NME as a fraction}`` on ``[0, threshold]``
    (:func:`ced_figure`). Returns the path written."""
    path = Path(path)
    ced_figure(curves, threshold, title, normaliser).savefig(path, bbox_inches="tight")
    return path


def ced_figure(curves: Mapping[str, object], threshold: float = 0.10, title: str | None = None,
               normaliser: str = "inter-ocular distance") -> Figure:
    """The CED figure: each curve the exact step function of :func:`labfast.metrics.ced`, its x axis
    in % of ``normaliser``; the legend (NME %, FR %, AUC at ``threshold`` per curve) sits below the
    axes, so it never hides a curve."""
    if not curves:
        raise ValueError("plot_ced needs at least one curve")
    figure = Figure(figsize=(6, 4.5 + 0.25 * len(curves)), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, nmes in curves.items():
        x, y = metrics.ced(nmes, threshold)
        summary = metrics.summarize(nmes, threshold)
        label = (
            f"{name}: NME {summary['nme']:.2f}%, FR {summary['fr']:.2f}%, "
            f"AUC {summary['auc']:.3f} (n={summary['count']})"
        )
        axes.step(100 * np.asarray(x), y, where="post", label=label)
    axes.set_xlim(0.0, 100 * threshold)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel(f"NME (% of the {normaliser})")
    axes.set_ylabel("proportion of faces with NME ≤ x")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    axes.set_title(title if title is not None else f"Cumulative error distribution (threshold {100 * threshold:g} %)")
    figure.tight_layout()
    return figure


def boundary_image(heatmaps) -> np.ndarray:
    """``(K, H, W)`` boundary heatmaps of one face -> ``(H, W)`` float32, the maximum over the K lines."""
    heatmaps = as_numpy(heatmaps, np.float32)
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps of one face must have shape (K, H, W), got {heatmaps.shape}")
    return heatmaps.max(axis=0)


def plot_boundaries(heatmaps, path, landmarks=None, title: str | None = None) -> Path:
    """Write a PNG of a face's boundary heatmaps (max over K), optionally with ``(L, 2)`` landmarks
    in the same heatmap pixel units drawn on top (pixel centres at integer coordinates). Returns the path."""
    image = boundary_image(heatmaps)
    figure = Figure(figsize=(4, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # extent puts pixel (row i, col j) centred on (x=j, y=i), the convention of the landmarks.
    height, width = image.shape
    axes.imshow(image, cmap="magma", vmin=0.0, vmax=1.0, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    if landmarks is not None:
        landmarks = as_numpy(landmarks)
        if landmarks.ndim != 2 or landmarks.shape[1] != 2:
            raise ValueError(f"landmarks must have shape (L, 2), got {landmarks.shape}")
        axes.scatter(landmarks[:, 0], landmarks[:, 1], s=6, c="cyan")
    axes.set_axis_off()
    if title is not None:
        axes.set_title(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
