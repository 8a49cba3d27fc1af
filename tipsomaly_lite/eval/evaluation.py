"""Evaluating a detector on a dataset: streamed, per class, written as Markdown + CSV + JSON with its config.

Images are scored batch by batch; each class keeps its image scores (a few numbers per image)
and a :class:`~tipsomaly_lite.eval.metrics.PixelAccumulator` (fixed-size histograms over the
maps' own range, 10 MiB), so memory does not grow with the dataset: a 2,000-image dataset at
518 px needs no more than one batch of maps. Metrics are per class, then averaged over classes,
times 100. Besides the paper's six (:data:`METRICS`) every table, CSV and ``results.json`` carries
:data:`EXTRA_METRICS` (pixel AP, which the authors' code also reports) in a last column.

A metric the data cannot define (image metrics when every test image is anomalous, as in ISIC; pixel
metrics on a set without masks, as in HeadCT) is *missing*, never 0: ``nan`` in memory, ``–`` in
``results.md`` (with one line saying why), ``null`` in JSON, an empty CSV cell, and left out of every mean.

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
from tipsomaly_lite.eval.metrics import AUPRO_MODES, PIXEL_METRICS, MetricWarning, PixelAccumulator, image_metrics
from tipsomaly_lite.data.registry import MEDICAL_KEYS
from tipsomaly_lite.method.mutual import mutual_predictions
from tipsomaly_lite.eval.protocol import METRIC_LABELS, METRICS, PAPER_RESULTS, SCORE_KINDS, prompts_trained_on
from tipsomaly_lite.eval.report import backbone_line, meaningless_line, paper_applies, paper_note
from tipsomaly_lite.offline import warn_caller
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
    if v is None or math.isnan(v):
        return "–"  # missing: a number the source does not have (the paper has no pixel AP) or an undefined one
    return f"{v:.1f}"


def _missing(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _null_missing(obj: Any) -> Any:
    """``obj`` with every NaN float replaced by None, so that JSON holds ``null``, never ``NaN``."""
    if isinstance(obj, dict):
        return {k: _null_missing(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_null_missing(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def _nan_missing(table: dict[str, Any]) -> dict[str, Any]:
    """A saved metric table (``{name: value}`` or ``{class: {name: value}}``) with ``null`` read back as NaN."""
    return {k: _nan_missing(v) if isinstance(v, dict) else (math.nan if v is None else v) for k, v in table.items()}


def _image_reason(labels: list[int]) -> str | None:
    n, anomalous = len(labels), sum(labels)
    if 0 < anomalous < n:
        return None
    return f"all {n} images are anomalous" if anomalous == n else f"all {n} images are normal"


def _missing_line(per_class: dict[str, dict[str, float]], reasons: dict[str, str], cols: tuple[str, ...]) -> str:
    """One line naming each class's missing metrics and why, or "" when nothing is missing."""
    parts = []
    for cls, m in per_class.items():
        gone = [_LABELS[k] for k in cols if _missing(m.get(k))]
        if gone:
            parts.append(f"{cls}: {', '.join(gone)} ({reasons.get(cls, 'see the warnings')})")
    if not parts:
        return ""
    return ("`–` = undefined (the metric functions return nan and warn), left out of every mean: "
            + "; ".join(parts) + ".")


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
        """A Markdown table under a line naming the backbone, one row per class and a mean row; ``paper`` adds
        the paper's numbers when the paper reports this backbone (TIPS), else a line saying why not.

        Taught in notebooks/06_benchmark.ipynb.
        """
        cols = self._columns()
        head = ["class"] + [_LABELS[m] for m in cols]
        lines = [meaningless_line(self.config), ""] if self.offline else []
        lines += [backbone_line(self.config), ""]  # what ran: family, variant, dtype, scoring rule
        aupro = self.config.get("aupro_mode", "?")
        lines += [f"**{self.dataset}** ({len(self.per_class)} classes, {len(self.scores)} images; "
                  f"AUPRO: {aupro}; x100)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cls, m in self.per_class.items():
            lines.append("| " + " | ".join([cls] + [_fmt(m[k]) for k in cols]) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{_fmt(self.mean[k])}**" for k in cols) + " |")
        if paper and not paper_applies(self.config):
            lines += ["", paper_note([self.config])]
        elif paper and self.dataset in PAPER_RESULTS:
            ref = PAPER_RESULTS[self.dataset]
            lines.append("| paper | " + " | ".join(_fmt(ref.get(k)) for k in cols) + " |")
            lines.append("| ours - paper | " + " | ".join(
                f"{self.mean[k] - ref[k]:+.1f}" if k in ref and not _missing(self.mean[k]) else "–"
                for k in cols) + " |")
            lines += ["", "The paper's AUPRO is the ZSAD papers' 200-threshold recipe (`--aupro-mode compat`)."]
        why = _missing_line(self.per_class, self.config.get("undefined_metrics") or {}, cols)
        if why:
            lines += ["", why]
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
            writer.writerow([self.dataset, cls] + ["" if _missing(m[k]) else f"{m[k]:.4f}" for k in cols])
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return _null_missing({"dataset": self.dataset, "per_class": self.per_class, "mean": self.mean,
                              "config": self.config, "meaningless": self.offline})

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
            config = saved["config"]
            if isinstance(config.get("pixel_error_bounds"), dict):
                config["pixel_error_bounds"] = _nan_missing(config["pixel_error_bounds"])
            return cls(saved["dataset"], _nan_missing(saved["per_class"]), _nan_missing(saved["mean"]), config, scores)
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{out}: results.json / scores.csv are not what EvaluationResult.save writes "
                             f"({type(err).__name__}: {err})") from err

    def save(self, out_dir: str | os.PathLike, paper: bool = False) -> dict[str, Path]:
        """Write ``results.md``, ``results.csv``, ``results.json``, ``scores.csv`` and ``config.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        texts = {"results.md": self.to_markdown(paper), "results.csv": self.to_csv(),
                 "results.json": json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n",
                 "config.json": json.dumps(_null_missing(self.config), indent=1, allow_nan=False) + "\n"}
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

    A metric a dataset cannot define (missing, ``–``) is left out of the mean over datasets, and a line
    under the table says over how many datasets each such mean is.

    Args:
        results: dataset key -> its :class:`EvaluationResult`, in table order.
        paper: add the paper's row under each dataset and its mean (industrial, medical, or both), only when every
            result's backbone is one the paper reports (otherwise a line says why they are absent).
    Returns:
        The Markdown table, headed by the backbone(s) that ran (and the MEANINGLESS banner when a result is offline).
    Taught in notebooks/06_benchmark.ipynb.
    """
    rows: list[tuple[str, dict[str, float]]] = []
    configs = [r.config for r in results.values()]
    refused = paper and not all(paper_applies(c) for c in configs)
    paper = paper and not refused  # the paper's rows never stand under another backbone's header
    for name, result in results.items():
        rows.append((f"**{name}**", result.mean))
        if paper and name in PAPER_RESULTS:
            rows.append((f"{name} (paper)", PAPER_RESULTS[name]))
    cols = METRICS + tuple(k for k in EXTRA_METRICS if all(k in r.mean for r in results.values()))
    defined = {k: [r.mean[k] for r in results.values() if not _missing(r.mean[k])] for k in cols}
    means = {k: float(np.mean(v)) if v else math.nan for k, v in defined.items()}
    rows.append((f"**mean of {len(results)}**", means))
    if paper:
        medical = [name in MEDICAL_KEYS for name in results]
        if not all(medical):
            rows.append(("industrial mean of 7 (paper)", PAPER_RESULTS["industrial_mean"]))
        if any(medical):
            rows.append(("medical mean of 7 (paper)", PAPER_RESULTS["medical_mean"]))
    partial = [f"{_LABELS[k]} over {len(v)}" for k, v in defined.items() if len(v) < len(results)]
    lines = []
    offline = [r.config for r in results.values() if r.offline]
    if offline:
        lines += [meaningless_line(offline[0]), ""]
    lines += sorted({backbone_line(c) for c in configs}) + [""]
    if refused:
        lines += [paper_note(configs), ""]
    modes = sorted({str(r.config.get("aupro_mode")) for r in results.values()})
    lines += [f"Mean over classes per dataset, x100; AUPRO: {', '.join(modes)} (the paper's is compat).", ""]
    lines += _table(rows, "dataset", cols)
    if partial:
        lines += ["", f"`–` = undefined for that dataset (every test image anomalous: no image metric; no masks: no "
                      f"pixel metric), left out of the mean of {len(results)}: {', '.join(partial)} datasets."]
    return "\n".join(lines) + "\n"


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
    pixel_level = bool(getattr(dataset, "pixel_level", True))  # False: no masks (HeadCT...), pixel metrics missing
    bar = tqdm(loader, desc=f"evaluating {name}" + (f" ({world_size} processes)" if world_size > 1 else ""),
               unit="batch", disable=not progress or rank != 0)
    predictions = ((batch, detector.predict(batch["image"], batch["class_word"])) for batch in bar)
    if mutual_scoring:  # each class scored once all its images are in (method/mutual.py)
        predictions = mutual_predictions(detector, bar)
    for batch, pred in predictions:
        maps, masks = pred.anomaly_map.cpu(), batch["mask"][:, 0] > 0.5
        for i, cls in enumerate(batch["class_name"]):
            if pixel_level:
                pixels.setdefault(cls, PixelAccumulator(name=cls)).add(maps[i:i + 1], masks[i:i + 1])
            scores.append({"path": batch["path"][i], "class_name": cls, "label": int(batch["label"][i]),
                           "image_score": float(pred.image_score[i]), "global_score": float(pred.global_score[i]),
                           "local_score": float(pred.local_score[i]),
                           **{f"global_{t}": float(v[i]) for t, v in pred.global_by_token.items()}})
    if world_size > 1:
        scores = _gather_scores(mine, scores)
        pixels = _reduce_pixels(pixels)
    per_class, bounds, reasons = {}, {}, {}
    by_class = _by_class(scores)
    if not pixel_level:
        warn_caller(f"{name}: pixel AUROC, AP, F1-max and AUPRO are undefined: the set has no masks (image level "
                    "only); they are reported as missing", MetricWarning)
    for cls in sorted(by_class):
        rows = by_class[cls]
        labels = [r["label"] for r in rows]
        m = image_metrics(labels, [r["image_score"] for r in rows], name=cls)
        if pixel_level:
            m.update(pixels[cls].compute(aupro_mode))
            bounds[cls] = {k: 100 * v for k, v in pixels[cls].error_bounds(aupro_mode).items()}
        else:
            m.update({k: math.nan for k in PIXEL_METRICS})
            bounds[cls] = {k: math.nan for k in PIXEL_METRICS}
        per_class[cls] = {k: 100 * m[k] for k in _COLUMNS}
        why = [f"image: {_image_reason(labels)}"] if _image_reason(labels) else []
        pixel_why = "the set has no masks" if not pixel_level else pixels[cls].undefined_reason()
        why += [f"pixel: {pixel_why}"] if pixel_why else []
        if why:
            reasons[cls] = "; ".join(why)
    root = Path(getattr(dataset, "root", "."))
    protocol = read_json(root / "protocol.json", what="protocol.json") if (root / "protocol.json").is_file() else None
    config = {"dataset": name, "dataset_root": str(root), "protocol": protocol, "n_images": len(scores),
              "image_size": int(getattr(dataset, "image_size", 0)), "aupro_mode": aupro_mode,
              "aupro_max_fpr": 0.3, "aupro_connectivity": 8,
              "pixel_metrics_on": "the anomaly maps' own values (histogram bins over their range)",
              "pixel_error_bounds": bounds,  # per class, x100: 0 = exact (PixelAccumulator.error_bounds)
              "world_size": world_size,  # processes that shared the images (torchrun); the results do not depend on it
              **({"undefined_metrics": reasons} if reasons else {}),  # class -> why its missing metrics are missing
              "tipsomaly_lite": __version__, "torch": torch.__version__,
              "python": platform.python_version(), **detector.config(), "mutual_scoring": bool(mutual_scoring),
              **(extra_config or {})}
    return EvaluationResult(name, per_class, _mean(per_class, _COLUMNS, name), config, scores)
