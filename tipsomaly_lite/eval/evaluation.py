"""Evaluating a detector on a dataset: streamed, per class, written as Markdown + CSV + JSON with its config.

Images are scored batch by batch; each class keeps its image scores (a few numbers per image)
and a :class:`~tipsomaly_lite.eval.metrics.PixelAccumulator` (fixed-size histograms over the
maps' own range, 10 MiB), so memory does not grow with the dataset: a 2,000-image dataset at
518 px needs no more than one batch of maps. Metrics are per class, then averaged over classes,
times 100. Besides the paper's six (:data:`METRICS`) every table, CSV and ``results.json`` carries
:data:`EXTRA_METRICS` (pixel AP, which the authors' code also reports) in a last column.

Under ``torchrun`` the processes take turns at whole batches (:func:`tipsomaly_lite.distributed.shard`),
then gather the image scores back into dataset order and sum the pixel histograms, so every
process ends with the result one process would compute (the scores bit for bit; the pixel metrics
up to the float64 summation order of the PRO weights).

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tipsomaly_lite import __version__, distributed
from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.method.detector import Detector
from tipsomaly_lite.method.mutual import mutual_predictions
from tipsomaly_lite.eval.metrics import AUPRO_MODES, MetricWarning, PixelAccumulator, image_metrics
from tipsomaly_lite.eval.protocol import METRIC_LABELS, METRICS, PAPER_RESULTS, SCORE_KINDS, prompts_trained_on
from tipsomaly_lite.offline import MEANINGLESS_MARKDOWN, warn_caller
from tipsomaly_lite.io.jsonfile import read_json

__all__ = ["METRICS", "METRIC_LABELS", "PAPER_RESULTS", "SCORE_KINDS", "EXTRA_METRICS", "EvaluationResult",
           "evaluate", "paper_table", "benchmark_table", "prompts_trained_on"]

#: Metrics reported after the paper's six, in every table and file (not in the paper's Table 1).
EXTRA_METRICS = ("pixel_ap",)
_LABELS = {**METRIC_LABELS, "pixel_ap": "P-AP"}
_COLUMNS = METRICS + EXTRA_METRICS

def _mean(per_class: dict[str, dict[str, float]], keys: tuple[str, ...], what: str) -> dict[str, float]:
    out = {}
    for key in keys:
        values = {c: m[key] for c, m in per_class.items()}
        nan = sorted(c for c, v in values.items() if math.isnan(v))
        valid = [v for v in values.values() if not math.isnan(v)]
        if nan and valid:
            warn_caller(f"{what} mean {key}: classes {nan} are undefined (NaN) and left out of the mean",
                        MetricWarning)
        out[key] = float(np.mean(valid)) if valid else float("nan")
    return out


def _by_class(scores: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per-image score rows grouped by class, in their order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in scores:
        groups.setdefault(row["class_name"], []).append(row)
    return groups


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"  # a number the source does not have (the paper has no pixel AP)
    return "nan" if math.isnan(v) else f"{v:.1f}"


#: The columns of a score row that are not scores.
_ROW_KEYS = ("path", "class_name", "label")


@dataclass
class EvaluationResult:
    """Per-class and mean metrics (x100) of one dataset, the per-image scores and the exact config.

    Taught in notebooks/06_benchmark.ipynb.
    """

    dataset: str
    per_class: dict[str, dict[str, float]]
    mean: dict[str, float]
    config: dict[str, Any]
    scores: list[dict[str, Any]] = field(default_factory=list)  # one row per image

    @property
    def offline(self) -> bool:
        return bool(self.config.get("offline_model"))

    @property
    def score_kinds(self) -> tuple[str, ...]:
        """The image scores kept per image: :data:`SCORE_KINDS`, then ``global_<token>`` per global token."""
        return tuple(k for k in self.scores[0] if k not in _ROW_KEYS) if self.scores else SCORE_KINDS

    def image_metrics_by_score(self) -> dict[str, dict[str, float]]:
        """Mean image metrics (x100) for each of :attr:`score_kinds` (fused, global only, local only, each token)."""
        out = {}
        by_class = _by_class(self.scores)
        for kind in self.score_kinds:
            per_class = {}
            for cls in self.per_class:
                rows = by_class[cls]
                m = image_metrics([r["label"] for r in rows], [r[kind] for r in rows], name=cls)
                per_class[cls] = {k: 100 * v for k, v in m.items()}
            out[kind] = _mean(per_class, METRICS[:3], kind)
        return out

    def to_markdown(self, paper: bool = False) -> str:
        """A Markdown table, one row per class and a mean row; ``paper`` adds the paper's numbers.

        Taught in notebooks/06_benchmark.ipynb.
        """
        cols = self._columns()
        head = ["class"] + [_LABELS[m] for m in cols]
        lines = []
        if self.offline:
            lines += [MEANINGLESS_MARKDOWN, ""]
        aupro = self.config.get("aupro_mode", "?")
        lines += [f"**{self.dataset}** ({len(self.per_class)} classes, {len(self.scores)} images; "
                  f"AUPRO: {aupro}; x100)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cls, m in self.per_class.items():
            lines.append("| " + " | ".join([cls] + [_fmt(m[k]) for k in cols]) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{_fmt(self.mean[k])}**" for k in cols) + " |")
        if paper and self.dataset in PAPER_RESULTS:
            ref = PAPER_RESULTS[self.dataset]
            lines.append("| paper | " + " | ".join(_fmt(ref.get(k)) for k in cols) + " |")
            lines.append("| ours - paper | " + " | ".join(
                f"{self.mean[k] - ref[k]:+.1f}" if k in ref else "–" for k in cols) + " |")
            lines += ["", "The paper's AUPRO is the ZSAD papers' 200-threshold recipe (`--aupro-mode compat`)."]
        return "\n".join(lines) + "\n"

    def _columns(self) -> tuple[str, ...]:
        """The paper's six, then the extra metrics this result has (older results lack them)."""
        return METRICS + tuple(k for k in EXTRA_METRICS if k in self.mean)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = self._columns()
        writer.writerow(["dataset", "class"] + list(cols))
        for cls, m in list(self.per_class.items()) + [("mean", self.mean)]:
            writer.writerow([self.dataset, cls] + [f"{m[k]:.4f}" for k in cols])
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "per_class": self.per_class, "mean": self.mean, "config": self.config,
                "meaningless": self.offline}

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "EvaluationResult":
        """Read back what :meth:`save` wrote (``results.json`` and ``scores.csv``).

        Raises:
            FileNotFoundError: either file is missing (names it).
            ValueError: a file is not in the format :meth:`save` writes (names it).
        """
        out = Path(out_dir)
        paths = {name: out / name for name in ("results.json", "scores.csv")}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"no saved evaluation here: {path} is missing")
        try:
            saved = read_json(paths["results.json"], what="results.json")
            with open(paths["scores.csv"], encoding="utf-8", newline="") as f:
                scores = [{"path": r["path"], "class_name": r["class_name"], "label": int(r["label"]),
                           **{k: float(v) for k, v in r.items() if k not in _ROW_KEYS}} for r in csv.DictReader(f)]
            return cls(saved["dataset"], saved["per_class"], saved["mean"], saved["config"], scores)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{out}: results.json / scores.csv are not what EvaluationResult.save writes "
                             f"({type(err).__name__}: {err})") from err

    def save(self, out_dir: str | os.PathLike, paper: bool = False) -> dict[str, Path]:
        """Write ``results.md``, ``results.csv``, ``results.json``, ``scores.csv`` and ``config.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        texts = {"results.md": self.to_markdown(paper), "results.csv": self.to_csv(),
                 "results.json": json.dumps(self.to_dict(), indent=1, allow_nan=True) + "\n",
                 "config.json": json.dumps(self.config, indent=1) + "\n"}
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*_ROW_KEYS, *self.score_kinds], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.scores)
        texts["scores.csv"] = buf.getvalue()
        paths = {}
        for name, text in texts.items():
            with atomic_file(out / name, "w", encoding="utf-8") as f:
                f.write(text)
            paths[name] = out / name
        return paths


def _table(rows: list[tuple[str, dict[str, float]]], first: str, cols: tuple[str, ...] = METRICS) -> list[str]:
    head = [first] + [_LABELS[m] for m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([name] + [_fmt(row.get(k)) for k in cols]) + " |" for name, row in rows]
    return lines


def paper_table() -> str:
    """The paper's Table 1 as Markdown (x100).

    Taught in notebooks/06_benchmark.ipynb.
    """
    return "\n".join(_table(list(PAPER_RESULTS.items()), "dataset")) + "\n"


def benchmark_table(results: dict[str, EvaluationResult], paper: bool = True) -> str:
    """One row per dataset (its mean over classes) and the mean over datasets, x100.

    Args:
        results: dataset key -> its :class:`EvaluationResult`, in table order.
        paper: add the paper's row under each dataset and its industrial mean.
    Returns:
        The Markdown table (with the MEANINGLESS banner when a result is offline).
    Taught in notebooks/06_benchmark.ipynb.
    """
    rows: list[tuple[str, dict[str, float]]] = []
    for name, result in results.items():
        rows.append((f"**{name}**", result.mean))
        if paper and name in PAPER_RESULTS:
            rows.append((f"{name} (paper)", PAPER_RESULTS[name]))
    cols = METRICS + tuple(k for k in EXTRA_METRICS if all(k in r.mean for r in results.values()))
    means = {k: float(np.mean([r.mean[k] for r in results.values()])) for k in cols}
    rows.append((f"**mean of {len(results)}**", means))
    if paper:
        rows.append(("industrial mean of 7 (paper)", PAPER_RESULTS["industrial_mean"]))
    lines = []
    if any(r.offline for r in results.values()):
        lines += [MEANINGLESS_MARKDOWN, ""]
    modes = sorted({str(r.config.get("aupro_mode")) for r in results.values()})
    lines += [f"Mean over classes per dataset, x100; AUPRO: {', '.join(modes)} (the paper's is compat).", ""]
    return "\n".join(lines + _table(rows, "dataset", cols)) + "\n"


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items]),
            "label": [i["label"] for i in items], "class_name": [i["class_name"] for i in items],
            "class_word": [i["class_word"] for i in items], "path": [i["path"] for i in items]}


def _check_same_everywhere(detector: Detector, dataset: Any, batch_size: int) -> None:
    """Refuse to combine processes that do not evaluate the same thing (dataset, batch size, model, method)."""
    mine = {"items": len(dataset), "batch_size": batch_size, "weights": detector.model.fingerprint(),
            "detector": json.dumps(detector.config(), sort_keys=True, default=str)}
    everyone = distributed.all_gather_objects(mine)
    differ = sorted({k for other in everyone for k in mine if other[k] != mine[k]})
    if differ:
        raise ValueError(f"the {len(everyone)} processes differ in {differ}; every process must load the same "
                         "dataset, model and settings")


def _gather_scores(mine: list[int], scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every process's score rows, back in dataset order (as one process would have them)."""
    rows = [row for part in distributed.all_gather_objects(list(zip(mine, scores))) for row in part]
    return [row for _, row in sorted(rows, key=lambda pair: pair[0])]


def _reduce_pixels(pixels: dict[str, PixelAccumulator]) -> dict[str, PixelAccumulator]:
    """Every process's per-class pixel histograms summed (:meth:`PixelAccumulator.all_reduce`), classes united."""
    classes = sorted({c for part in distributed.all_gather_objects(sorted(pixels)) for c in part})
    return {cls: (pixels.get(cls) or PixelAccumulator(name=cls)).all_reduce(distributed.all_reduce)
            for cls in classes}


def evaluate(detector: Detector, dataset: Any, *, batch_size: int = 8, aupro_mode: str = "standard",
             num_workers: int = 0, progress: bool = True, dataset_name: str | None = None,
             extra_config: dict[str, Any] | None = None, mutual_scoring: bool = False) -> EvaluationResult:
    """Score every image of a dataset and compute the six metrics (and pixel AP) per class (x100).

    Args:
        detector: the method (model, prompts, mode, token).
        dataset: an :class:`~tipsomaly_lite.data.datasets.AnomalyDataset` (items with ``image``, ``mask``,
            ``label``, ``class_name``, ``class_word``, ``path``).
        batch_size: images per forward pass.
        aupro_mode: ``standard`` (integral over FPR in [0, 0.3] / 0.3) or ``compat`` (the ZSAD papers').
        num_workers: DataLoader workers for image decoding.
        progress: a progress bar.
        dataset_name: the name in the table (default: the dataset's key).
        extra_config: recorded in the config as well (e.g. the prompts' training run and seed).
        mutual_scoring: score each class's test images against each other (docs/method.md §2.9,
            :func:`~tipsomaly_lite.method.mutual.mutual_predictions`); one process only.
    Returns:
        :class:`EvaluationResult`; its ``config`` records variant, size, prompts, protocol, AUPRO
        mode, seed, versions and ``world_size``. Under ``torchrun`` each process scores its share of
        the batches and every process returns the whole dataset's result (the caller lets rank 0 save it).
    Raises:
        ValueError: unknown ``aupro_mode``; under torchrun, processes with other data, batch size,
            weights or settings; mutual scoring under torchrun or with a class of one test image.
    Taught in notebooks/06_benchmark.ipynb.
    """
    if aupro_mode not in AUPRO_MODES:
        raise ValueError(f"aupro_mode must be one of {AUPRO_MODES}, got {aupro_mode!r}")
    name = dataset_name or getattr(dataset, "key", None) or "dataset"
    rank, world_size = distributed.world()
    if world_size > 1:
        if mutual_scoring:
            raise ValueError("mutual scoring needs every test image of a class in one process; run it "
                             "without torchrun")
        _check_same_everywhere(detector, dataset, batch_size)
    mine = distributed.shard(len(dataset), batch_size)  # everything in one process
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, collate_fn=_collate)
    pixels: dict[str, PixelAccumulator] = {}
    scores: list[dict[str, Any]] = []
    bar = tqdm(loader, desc=f"evaluating {name}" + (f" ({world_size} processes)" if world_size > 1 else ""),
               unit="batch", disable=not progress or rank != 0)
    predictions = ((batch, detector.predict(batch["image"], batch["class_word"])) for batch in bar)
    if mutual_scoring:  # each class scored once all its images are in (method/mutual.py)
        predictions = mutual_predictions(detector, bar)
    for batch, pred in predictions:
        maps, masks = pred.anomaly_map.cpu(), batch["mask"][:, 0] > 0.5
        for i, cls in enumerate(batch["class_name"]):
            pixels.setdefault(cls, PixelAccumulator(name=cls)).add(maps[i:i + 1], masks[i:i + 1])
            scores.append({"path": batch["path"][i], "class_name": cls, "label": int(batch["label"][i]),
                           "image_score": float(pred.image_score[i]), "global_score": float(pred.global_score[i]),
                           "local_score": float(pred.local_score[i]),
                           **{f"global_{t}": float(v[i]) for t, v in pred.global_by_token.items()}})
    if world_size > 1:
        scores = _gather_scores(mine, scores)
        pixels = _reduce_pixels(pixels)
    per_class, bounds = {}, {}
    by_class = _by_class(scores)
    for cls in sorted(pixels):
        rows = by_class[cls]
        m = image_metrics([r["label"] for r in rows], [r["image_score"] for r in rows], name=cls)
        m.update(pixels[cls].compute(aupro_mode))
        per_class[cls] = {k: 100 * m[k] for k in _COLUMNS}
        bounds[cls] = {k: 100 * v for k, v in pixels[cls].error_bounds(aupro_mode).items()}
    root = Path(getattr(dataset, "root", "."))
    protocol = read_json(root / "protocol.json", what="protocol.json") if (root / "protocol.json").is_file() else None
    config = {"dataset": name, "dataset_root": str(root), "protocol": protocol, "n_images": len(scores),
              "image_size": int(getattr(dataset, "image_size", 0)), "aupro_mode": aupro_mode,
              "aupro_max_fpr": 0.3, "aupro_connectivity": 8,
              "pixel_metrics_on": "the anomaly maps' own values (histogram bins over their range)",
              "pixel_error_bounds": bounds,  # per class, x100: 0 = exact (PixelAccumulator.error_bounds)
              "world_size": world_size,  # processes that shared the images (torchrun); the results do not depend on it
              "tipsomaly_lite": __version__, "torch": torch.__version__,
              "python": platform.python_version(), **detector.config(), "mutual_scoring": bool(mutual_scoring),
              **(extra_config or {})}
    return EvaluationResult(name, per_class, _mean(per_class, _COLUMNS, name), config, scores)
