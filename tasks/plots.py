"""PNG plots of the stages (matplotlib, Agg backend): loss curves, PR curves, recall vs IoU.

PNG rather than DVC's vega templates: ``dvc plots show`` loads vega from a CDN, so its
HTML is blank offline; dvc.yaml declares these files as image plots. Metadata that
would change between identical runs (software version, dates) is left out of the
files, so an unchanged stage gives byte-identical plots.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.atomic import atomic_path  # noqa: E402

_PNG_METADATA = {"Software": None}


def save_figure(fig: plt.Figure, target: Path | str) -> Path:
    """Write ``fig`` as PNG to ``target`` atomically (no varying metadata), then close it."""
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=_PNG_METADATA)
    plt.close(fig)
    return Path(target)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def loss_curves(history: Sequence[Mapping[str, float]], target: Path | str, title: str) -> Path:
    """One line per loss term over the iterations (raw faint, moving average solid); lr on a twin axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    iterations = np.arange(1, len(history) + 1)
    keys = [k for k in (history[0] if history else {}) if k != "lr"]
    window = max(1, len(history) // 50)
    for key in keys:
        values = np.array([float(h.get(key, np.nan)) for h in history])
        (line,) = ax.plot(iterations, values, alpha=0.25, linewidth=0.8)
        ax.plot(iterations, _smooth(values, window), color=line.get_color(), label=key, linewidth=1.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if keys:
        ax.legend(loc="upper right", fontsize=8)
    if history and "lr" in history[0]:
        twin = ax.twinx()
        twin.plot(iterations, [h["lr"] for h in history], color="grey", linestyle=":", linewidth=1)
        twin.set_ylabel("learning rate", color="grey")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, target)


def pr_curves(curves: Mapping[str, object], target: Path | str, title: str) -> Path:
    """Precision against recall per class (``VOCResult.curves``), AP in the legend."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, result in curves.items():
        recall = np.asarray(getattr(result, "recall"))
        precision = np.asarray(getattr(result, "precision"))
        ap = float(getattr(result, "ap"))
        label = f"{name} (AP {ap:.3f})" if np.isfinite(ap) else f"{name} (AP n/a)"
        if recall.size:
            ax.plot(recall, precision, label=label, linewidth=1.3)
        else:
            ax.plot([], [], label=label)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, target)


def recall_vs_iou(
    top_ns: Sequence[int], iou_thresholds: Sequence[float], recall: np.ndarray, target: Path | str, title: str
) -> Path:
    """Recall ``[N, T]`` against the IoU threshold, one line per number of proposals (paper fig. 4)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, n in enumerate(top_ns):
        ax.plot(iou_thresholds, recall[i], marker="o", markersize=3, label=f"{n} proposals")
    ax.set_xlim(min(iou_thresholds), max(iou_thresholds))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("recall")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, target)


def recall_vs_iou_by_method(
    curves: Mapping[str, tuple[Sequence[float], np.ndarray]], top_ns: Sequence[int], target: Path | str
) -> Path:
    """One panel per number of proposals, one line per method (the paper's figure 4).

    ``curves``: label -> (IoU thresholds ``[T]``, recall ``[N, T]`` in ``top_ns`` order).
    """
    fig, axes = plt.subplots(1, len(top_ns), figsize=(4.2 * len(top_ns), 4), sharey=True, squeeze=False)
    for i, (ax, n) in enumerate(zip(axes[0], top_ns)):
        for label, (ious, recall) in curves.items():
            ax.plot(ious, recall[i], marker="o", markersize=3, label=label)
        ax.set_title(f"{n} proposals")
        ax.set_xlabel("IoU")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("recall")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, target)
