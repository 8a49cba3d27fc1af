"""A small figure vocabulary shared by the demo, the CLI and the notebooks; style is set once here.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
from matplotlib import pyplot as plt
from torch import Tensor

#: Titles containing this word are drawn in red (the offline mode's notices all contain it).
MEANINGLESS_WORD = "MEANINGLESS"

STYLE = {"figure.dpi": 100, "axes.titlesize": 9, "font.size": 9, "image.interpolation": "nearest"}
MAP_CMAP = "jet"


def set_style() -> None:
    """Apply the house plotting style (called by every figure helper)."""
    matplotlib.rcParams.update(STYLE)


def _to_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """``(3,H,W)`` tensor in [0,1] or ``(H,W,3)`` array -> ``(H,W,3)`` float array for imshow."""
    if isinstance(image, Tensor):
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image / 255.0
    return np.clip(image.squeeze(), 0, 1)


def show_images(images: Sequence[Tensor | np.ndarray], titles: Sequence[str] | None = None,
                ncols: int = 4, size: float = 2.4) -> plt.Figure:
    """A grid of images ``(3,H,W)`` in [0,1] (or ``(H,W,3)`` arrays) with optional titles.

    Taught in notebooks/00_setup.ipynb.
    """
    set_style()
    n = len(images)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_to_hwc(images[i]), cmap="gray")
            if titles:
                ax.set_title(titles[i])
    fig.tight_layout()
    return fig


def plot_similarity_maps(images: Tensor, maps: Tensor, prompts: Sequence[str], row_titles: Sequence[str],
                         suptitle: str = "", size: float = 2.4) -> plt.Figure:
    """Each image beside its patch-text similarity map for every prompt.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        maps: ``(B, P, H, W)`` cosine similarities, one map per prompt (already upsampled).
        prompts: ``P`` prompt texts (column titles).
        row_titles: ``B`` titles for the image column.

    Taught in notebooks/01_loading_tips.ipynb.
    """
    set_style()
    b, p = maps.shape[:2]
    fig, axes = plt.subplots(b, p + 1, figsize=(size * (p + 1), size * b), squeeze=False)
    for i in range(b):
        axes[i, 0].imshow(_to_hwc(images[i]))
        axes[i, 0].set_title(row_titles[i])
        for j in range(p):
            m = maps[i, j].detach().cpu().numpy()
            im = axes[i, j + 1].imshow(m, cmap=MAP_CMAP)
            axes[i, j + 1].set_title(f"cos(patch, text)\n'{prompts[j]}'" if i == 0 else "")
            fig.colorbar(im, ax=axes[i, j + 1], fraction=0.046, pad=0.02)
        for ax in axes[i]:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, color="red" if MEANINGLESS_WORD in suptitle else "black")
    fig.tight_layout()
    return fig


def overlay_anomaly_map(image: Tensor | np.ndarray, anomaly_map: Tensor | np.ndarray | None, ax=None,
                        alpha: float = 0.5, title: str = "", vmin: float | None = None,
                        vmax: float | None = None, outline: Tensor | np.ndarray | None = None,
                        colorbar: bool = False) -> plt.Axes:
    """Draw ``anomaly_map (H, W)`` over ``image (3, H, W)`` on ``ax`` (a new figure when None).

    Args:
        image: ``(3, H, W)`` in [0, 1].
        anomaly_map: ``(H, W)`` scores, or None to draw the image (and outline) alone.
        alpha: opacity of the map.
        title: the axes' title.
        vmin, vmax: fix the colour scale (e.g. 0 and 1 for probabilities, so that a normal image
            does not look hot); by default each map is stretched to its own range.
        outline: a ground-truth ``mask (H, W)`` in {0, 1}, drawn as a white contour (the
            defect's edge stays visible under the map).
        colorbar: add a colour bar that says what the colours mean.
    Returns:
        The axes.
    Taught in notebooks/02_spatial_alignment.ipynb.
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(_to_hwc(image))
    if anomaly_map is not None:
        m = anomaly_map.detach().cpu().numpy() if isinstance(anomaly_map, Tensor) else np.asarray(anomaly_map)
        shown = ax.imshow(m, cmap=MAP_CMAP, alpha=alpha, vmin=vmin, vmax=vmax)
        if colorbar:
            ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    if outline is not None:
        mask = outline.detach().cpu().float().numpy() if isinstance(outline, Tensor) else np.asarray(outline, float)
        if mask.max() > 0:
            ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)
    ax.set_title(title)
    ax.axis("off")
    return ax


def plot_loss_curve(history: Sequence[dict], title: str = "prompt training", ax=None) -> plt.Axes:
    """Loss per step (``history`` rows ``{"epoch", "step", "loss"}``, as ``train_prompts`` records) with epoch means.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3), layout="constrained")
    steps = [row["step"] for row in history]
    ax.plot(steps, [row["loss"] for row in history], lw=1, color="tab:blue", label="step")
    for epoch in sorted({row["epoch"] for row in history}):
        rows = [row for row in history if row["epoch"] == epoch]
        mean = float(np.mean([row["loss"] for row in rows]))
        ax.hlines(mean, rows[0]["step"], rows[-1]["step"], color="tab:orange", lw=2,
                  label="epoch mean" if epoch == history[0]["epoch"] else None)
        ax.axvline(rows[-1]["step"] + 0.5, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("Focal + Dice + Dice")
    ax.set_title(title)
    ax.legend(loc="upper right")
    return ax


def save_loss_curve(history: Sequence[dict], path, title: str = "prompt training"):
    """:func:`plot_loss_curve` written to ``path`` as a PNG (atomically); returns ``path``."""
    from pathlib import Path

    from tipsomaly_lite.io.atomic import atomic_file

    ax = plot_loss_curve(history, title=title)
    with atomic_file(Path(path)) as fh:
        ax.figure.savefig(fh, format="png")
    plt.close(ax.figure)
    return Path(path)


def _curve_axes(ax, title: str, xlabel: str, ylabel: str) -> plt.Axes:
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.4), layout="constrained")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.02))
    return ax


def plot_roc(labels, scores: dict[str, Sequence[float]] | Sequence[float], title: str = "ROC", ax=None) -> plt.Axes:
    """ROC curves: ``labels (M,)`` in {0,1} and one ``(M,)`` score array per name, AUROC in the legend.

    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    ax = _curve_axes(ax, title, "false positive rate", "true positive rate")
    scores = scores if isinstance(scores, dict) else {"score": scores}
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(s, dtype=float))
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {100 * roc_auc_score(labels, s):.1f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.legend(loc="lower right", fontsize=7)
    return ax


def plot_pr(labels, scores: dict[str, Sequence[float]] | Sequence[float], title: str = "precision-recall",
            ax=None) -> plt.Axes:
    """Precision-recall curves, AP in the legend; the dashed line is the share of anomalies.

    Taught in notebooks/03_fixed_prompts.ipynb.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    ax = _curve_axes(ax, title, "recall", "precision")
    scores = scores if isinstance(scores, dict) else {"score": scores}
    for name, s in scores.items():
        precision, recall, _ = precision_recall_curve(np.asarray(labels), np.asarray(s, dtype=float))
        ax.plot(recall, precision, lw=1.5, label=f"{name} (AP {100 * average_precision_score(labels, s):.1f})")
    ax.axhline(float(np.mean(labels)), color="grey", lw=0.8, ls="--")
    ax.legend(loc="lower left", fontsize=7)
    return ax


def plot_histograms(values: dict[str, Sequence[float]], title: str = "", xlabel: str = "", bins: int = 40,
                    ax=None) -> plt.Axes:
    """Overlaid density histograms, one per name (e.g. normal vs anomalous scores).

    Taught in notebooks/02_spatial_alignment.ipynb.
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3), layout="constrained")
    for name, v in values.items():
        ax.hist(np.asarray(v, dtype=float).ravel(), bins=bins, density=True, alpha=0.5, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    ax.legend(fontsize=7)
    return ax


def plot_projection(features: dict[str, Tensor | np.ndarray], title: str = "PCA of features", ax=None,
                    max_points: int = 2000) -> plt.Axes:
    """2-D PCA of several feature sets ``(M_i, D)`` fitted on all of them together, one colour each.

    Taught in notebooks/02_spatial_alignment.ipynb.
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.6), layout="constrained")
    arrays = {k: (v.detach().float().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v, dtype=float))
              for k, v in features.items()}
    rng = np.random.default_rng(0)
    arrays = {k: a[rng.permutation(len(a))[:max_points]] if len(a) > max_points else a for k, a in arrays.items()}
    stacked = np.concatenate(list(arrays.values()))
    mean = stacked.mean(0)
    _, _, vt = np.linalg.svd(stacked - mean, full_matrices=False)
    for name, a in arrays.items():
        xy = (a - mean) @ vt[:2].T
        ax.scatter(xy[:, 0], xy[:, 1], s=6 if len(a) > 50 else 30, alpha=0.6, label=name)
    ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7, markerscale=2)
    return ax


def plot_metric_bars(rows: dict[str, dict[str, float]], metrics: Sequence[str],
                     labels: dict[str, str] | None = None, title: str = "", ax=None,
                     ylim: tuple[float, float] = (0.0, 105.0)) -> plt.Axes:
    """Grouped bars: one group per metric, one bar per row (e.g. ``{"ours": mean, "paper": row}``).

    Args:
        rows: row name -> ``{metric: value}`` (x100 numbers, as the evaluation tables hold);
            a missing or NaN value leaves its bar out and writes "n/a".
        metrics: the metric keys to draw, in order (e.g. ``evaluation.METRICS``).
        labels: metric key -> axis label (e.g. ``evaluation.METRIC_LABELS``); default the keys.
        title: drawn in red when it says MEANINGLESS.
        ax: where to draw (a new figure when None).
        ylim: value axis range.
    Returns:
        The axes, with each bar's value written above it.

    Taught in notebooks/06_benchmark.ipynb.
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.9 * len(metrics), 3), layout="constrained")
    names = list(rows)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(metrics))
    for j, name in enumerate(names):
        values = np.array([float(rows[name].get(m, float("nan"))) for m in metrics])
        pos = x - 0.4 + width * (j + 0.5)
        ok = np.isfinite(values)
        bars = ax.bar(pos[ok], values[ok], width * 0.95, label=name)
        for p, v in zip(pos, values):
            text = f"{v:.1f}" if np.isfinite(v) else "n/a"
            y = v if np.isfinite(v) else ylim[0]
            ax.text(p, y, text, ha="center", va="bottom", fontsize=6, rotation=90 if len(names) > 2 else 0,
                    color=bars.patches[0].get_facecolor() if ok.any() else "grey")
    ax.set_xticks(x, [(labels or {}).get(m, m) for m in metrics], fontsize=7)
    ax.set_ylim(*ylim)
    ax.set_title(title, color="red" if MEANINGLESS_WORD in title else "black")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(names), 3), frameon=False)
    return ax


def plot_pro_curve(fpr: Sequence[float], pro: Sequence[float], max_fpr: float | None = 0.3, label: str = "",
                   title: str = "PRO curve", xlabel: str = "false positive rate", ax=None) -> plt.Axes:
    """A per-region-overlap curve with the area AUPRO integrates shaded.

    Args:
        fpr: ``(K,)`` false positive rates of K thresholds, any order.
        pro: ``(K,)`` per-region overlaps at the same thresholds.
        max_fpr: shade the area up to this FPR and mark it (0.3 for AUPRO); None shades
            the whole curve (e.g. the ZSAD papers' rescaled FPR axis).
        label: legend entry.
        title, xlabel: axis texts.
        ax: where to draw (a new figure when None); call again on the same axes to overlay.
    Returns:
        The axes.

    Taught in notebooks/06_benchmark.ipynb.
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(3.8, 3.2), layout="constrained")
    fpr, pro = np.asarray(fpr, dtype=float), np.asarray(pro, dtype=float)
    order = np.lexsort((pro, fpr))  # FPR ascending; at equal FPR the PRO jump is drawn upwards
    fpr, pro = fpr[order], pro[order]
    line, = ax.plot(fpr, pro, lw=1.5, marker=".", ms=3, label=label or None)
    limit = fpr.max() if max_fpr is None else max_fpr
    keep = fpr < limit
    xs = np.r_[fpr[keep], limit]
    ys = np.r_[pro[keep], np.interp(limit, fpr, pro)]
    ax.fill_between(xs, 0, ys, color=line.get_color(), alpha=0.2)
    if max_fpr is not None:
        ax.axvline(max_fpr, color="grey", lw=0.8, ls="--")
    ax.set(xlabel=xlabel, ylabel="per-region overlap", title=title, xlim=(0, 1), ylim=(0, 1.02))
    if label:
        ax.legend(fontsize=7, loc="lower right")
    return ax
