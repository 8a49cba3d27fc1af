"""A small figure vocabulary shared by the demo, the CLI and the notebooks; style is set once here.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib import pyplot as plt
from torch import Tensor

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
    """A grid of images ``(3,H,W)`` in [0,1] (or ``(H,W,3)`` arrays) with optional titles."""
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


def upsample_map(values: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, gh, gw)`` patch values -> ``(B, H, W)`` by bilinear upsampling (align_corners False)."""
    return torch.nn.functional.interpolate(values[:, None].float(), size=size, mode="bilinear",
                                           align_corners=False)[:, 0]


def plot_similarity_maps(images: Tensor, maps: Tensor, prompts: Sequence[str], row_titles: Sequence[str],
                         suptitle: str = "", size: float = 2.4) -> plt.Figure:
    """Each image beside its patch-text similarity map for every prompt.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        maps: ``(B, P, H, W)`` cosine similarities, one map per prompt (already upsampled).
        prompts: ``P`` prompt texts (column titles).
        row_titles: ``B`` titles for the image column.
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
        fig.suptitle(suptitle, color="red" if "MEANINGLESS" in suptitle else "black")
    fig.tight_layout()
    return fig


def overlay_anomaly_map(image: Tensor | np.ndarray, anomaly_map: Tensor | np.ndarray, ax=None,
                        alpha: float = 0.5, title: str = "", vmin: float | None = None,
                        vmax: float | None = None) -> plt.Axes:
    """Draw ``anomaly_map (H, W)`` over ``image (3, H, W)`` on ``ax`` (a new figure when None).

    ``vmin``/``vmax`` fix the colour scale (e.g. 0 and 1 for probabilities, so that a normal
    image does not look hot); by default each map is stretched to its own range.
    """
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(_to_hwc(image))
    m = anomaly_map.detach().cpu().numpy() if isinstance(anomaly_map, Tensor) else np.asarray(anomaly_map)
    ax.imshow(m, cmap=MAP_CMAP, alpha=alpha, vmin=vmin, vmax=vmax)
    ax.set_title(title)
    ax.axis("off")
    return ax


def plot_loss_curve(history: Sequence[dict], title: str = "prompt training", ax=None) -> plt.Axes:
    """Loss per step (``history`` rows ``{"epoch", "step", "loss"}``, as ``train_prompts`` records) with epoch means."""
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


def _curve_axes(ax, title: str, xlabel: str, ylabel: str) -> plt.Axes:
    set_style()
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.4), layout="constrained")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.02))
    return ax


def plot_roc(labels, scores: dict[str, Sequence[float]] | Sequence[float], title: str = "ROC", ax=None) -> plt.Axes:
    """ROC curves: ``labels (M,)`` in {0,1} and one ``(M,)`` score array per name, AUROC in the legend."""
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
    """Precision-recall curves, AP in the legend; the dashed line is the share of anomalies."""
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
    """Overlaid density histograms, one per name (e.g. normal vs anomalous scores)."""
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
    """2-D PCA of several feature sets ``(M_i, D)`` fitted on all of them together, one colour each."""
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
