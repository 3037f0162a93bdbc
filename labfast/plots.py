"""Figures: CED curves of several methods, a training run's learning curve.

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas — no ``pyplot`` and
no global backend switch, so importing labfast never changes a user's matplotlib state and works
without a display.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from labfast import metrics


def plot_ced(curves: Mapping[str, object], path, threshold: float = 0.10, title: str | None = None,
             normaliser: str = "inter-ocular distance", missed_nme: float | None = None) -> Path:
    """Write a PNG of the CED curves ``{name: (N,) per-face NME as a fraction}`` on ``[0, threshold]``
    (:func:`ced_figure`). Returns the path written."""
    path = Path(path)
    ced_figure(curves, threshold, title, normaliser, missed_nme).savefig(path, bbox_inches="tight")
    return path


def ced_figure(curves: Mapping[str, object], threshold: float = 0.10, title: str | None = None,
               normaliser: str = "inter-ocular distance", missed_nme: float | None = None) -> Figure:
    """The CED figure: each curve the exact step function of :func:`labfast.metrics.ced`, its x axis
    in % of ``normaliser``; the legend (NME %, FR %, AUC at ``threshold`` per curve) sits below the
    axes, so it never hides a curve.

    ``missed_nme``: the NME given to the faces a detector missed. They stay in each curve (they
    never reach it: failures, as in FR and AUC), but the legend's mean NME is over the faces found,
    which it counts, not a mean dominated by the stand-in value."""
    if not curves:
        raise ValueError("plot_ced needs at least one curve")
    figure = Figure(figsize=(6, 4.5 + 0.25 * len(curves)), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, nmes in curves.items():
        x, y = metrics.ced(nmes, threshold)
        summary = metrics.summarize(nmes, threshold)
        mean_nme = f"NME {summary['nme']:.2f}%"
        if missed_nme is not None:
            values = np.asarray(nmes, dtype=np.float64)
            found = values[values != missed_nme]
            mean_nme = f"NME {100 * found.mean():.2f}% on {len(found)} found" if len(found) else "no face found"
        label = f"{name}: {mean_nme}, FR {summary['fr']:.2f}%, AUC {summary['auc']:.3f} (n={summary['count']})"
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


#: The training losses a learning curve draws, where a run logged them (``labfast.train.step``).
CURVE_LOSSES = ("landmark", "heatmap", "adversarial", "discriminator")


def plot_learning_curve(metrics_csv, path, title: str | None = None) -> Path:
    """Write a PNG of the learning curve of a run's ``metrics.csv`` (:func:`learning_curve_figure`).
    Returns the path written."""
    path = Path(path)
    learning_curve_figure(metrics_csv, title).savefig(path, bbox_inches="tight")
    return path


def learning_curve_figure(metrics_csv, title: str | None = None) -> Figure:
    """Two panels over the epochs of a run's ``metrics.csv`` (``step,epoch,name,value`` rows, as
    ``labfast.train.scalars.ScalarLog`` writes them): above, each training loss's mean over the
    epoch's logged steps (log scale); below, the validation NME with its best epoch marked. Dotted
    lines mark the epochs where the learning rate changed."""
    epochs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with Path(metrics_csv).open(newline="") as stream:
        for row in csv.DictReader(stream):
            epochs[row["name"]][int(row["epoch"])].append(float(row["value"]))
    if not epochs:
        raise ValueError(f"{metrics_csv} holds no scalars yet")
    figure = Figure(figsize=(7, 6), dpi=120)
    FigureCanvasAgg(figure)
    losses, validation = figure.subplots(2, 1, sharex=True)
    for name in CURVE_LOSSES:
        if name in epochs:
            x = sorted(epochs[name])
            losses.plot(x, [np.mean(epochs[name][epoch]) for epoch in x], label=name)
    losses.set_yscale("log")
    losses.set_ylabel("training loss (epoch mean)")
    losses.legend(fontsize=8, frameon=False, ncol=len(CURVE_LOSSES), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    if "val_nme" in epochs:
        x = sorted(epochs["val_nme"])
        nme = [100 * epochs["val_nme"][epoch][-1] for epoch in x]
        best = int(np.argmin(nme))
        validation.plot(x, nme, marker=".", label="validation NME")
        validation.plot([x[best]], [nme[best]], "r*", markersize=12, label=f"best: {nme[best]:.2f} % (epoch {x[best]})")
        validation.legend(fontsize=8, frameon=False)
    validation.set_ylabel("validation NME (%)")
    validation.set_xlabel("epoch")
    lr = {epoch: values[-1] for epoch, values in sorted(epochs.get("lr", {}).items())}
    for before, after in zip(list(lr), list(lr)[1:]):
        if not np.isclose(lr[before], lr[after]):
            for axes in (losses, validation):
                axes.axvline(after, color="grey", linestyle=":", linewidth=1)
    for axes in (losses, validation):
        axes.grid(alpha=0.3)
    figure.suptitle(title if title is not None else "Learning curve (dotted: learning-rate changes)")
    figure.tight_layout()
    return figure
