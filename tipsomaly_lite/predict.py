"""Your own images: anomaly-map overlays and a CSV of scores (what ``tipsomaly predict`` runs).

:func:`image_files` gathers the images of files and folders (a bounded walk that follows no links),
:func:`overlay_names` gives each a distinct overlay name, and :func:`predict_images` scores them in
batches, draws every map over its photo at the photo's own size and writes ``scores.csv``. One
unreadable image is named and counted as failed; it does not cost the others their scores.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tipsomaly_lite.data.datasets import is_image_file
from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.offline import MEANINGLESS_TAG

__all__ = ["MAX_IMAGES", "PredictResult", "image_files", "overlay_names", "predict_images"]

#: Most images one call scores: a bound on the walk of a folder someone else made.
MAX_IMAGES = 100_000


@dataclass
class PredictResult:
    """What :func:`predict_images` wrote.

    Attributes:
        rows: one dict per scored image (``path``, ``class_word``, ``image_score``, ``global_score``,
            ``local_score``, ``overlay``), as in ``scores.csv``.
        failed: ``(path, why)`` of every image that could not be read.
        scores_csv: path of ``scores.csv``.
    """

    rows: list[dict[str, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    scores_csv: Path | None = None


def _walk_images(folder: Path, limit: int) -> list[Path]:
    """Image files under ``folder``, sorted, without following links to folders (no loops), at most ``limit``."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found += [Path(root, f) for f in files if is_image_file(Path(root, f))]
        if len(found) > limit:
            raise ValueError(f"--images {folder}: more than {limit} images; score a smaller folder at a time")
    return sorted(found)


def image_files(specs: list[str]) -> list[Path]:
    """The image files of ``--images`` (files and folders, recursively), each once, in the order given.

    Raises:
        FileNotFoundError: a spec is neither an image file nor a folder, or no image is found.
        ValueError: more than :data:`MAX_IMAGES` images.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = _walk_images(path, MAX_IMAGES)
        elif path.is_file() and is_image_file(path):
            found = [path]
        else:
            raise FileNotFoundError(f"--images {spec}: not an image file or a folder of images")
        for p in found:
            if p.resolve() not in seen:  # the same file named twice is scored once
                seen.add(p.resolve())
                files.append(p)
        if len(files) > MAX_IMAGES:
            raise ValueError(f"--images: more than {MAX_IMAGES} images; score fewer at a time")
    if not files:
        raise FileNotFoundError(f"--images {' '.join(specs)}: no images found (png, jpg, bmp, tif)")
    return files


def overlay_names(files: list[Path], specs: list[str]) -> dict[Path, Path]:
    """A distinct overlay path (relative to ``--out``) for every input file.

    A file found in an ``--images`` folder keeps its sub-folders below it (``a/x.png`` and
    ``b/x.png`` give ``a/x_overlay.png`` and ``b/x_overlay.png``); files that share a stem in one
    folder keep their extension in the name (``x_png_overlay.png``, ``x_jpg_overlay.png``); any
    name still taken gets a number. Names are compared ignoring case, as macOS and Windows do.
    """
    folders = [Path(spec) for spec in specs if Path(spec).is_dir()]

    def relative(f: Path) -> Path:
        for folder in folders:
            try:
                return f.relative_to(folder)
            except ValueError:
                continue
        return Path(f.name)

    rel = [relative(f) for f in files]
    stems: dict[str, int] = {}
    for r in rel:
        key = str(r.parent / r.stem).lower()
        stems[key] = stems.get(key, 0) + 1
    names: dict[Path, Path] = {}
    taken: set[str] = set()
    for f, r in zip(files, rel):
        stem = f"{r.stem}_{r.suffix.lstrip('.')}" if stems[str(r.parent / r.stem).lower()] > 1 else r.stem
        name, n = r.parent / f"{stem}_overlay.png", 1
        while str(name).lower() in taken:  # the same relative name under two --images folders
            n += 1
            name = r.parent / f"{stem}_{n}_overlay.png"
        taken.add(str(name).lower())
        names[f] = name
    return names


#: Characters per title line over one 3-inch panel at the course's 9-pt font.
_TITLE_CHARS = 34


def _overlay_figure(original: Any, amap: Any, title: str, score_title: str) -> Any:
    """The photo ``(3, H, W)`` beside its anomaly map ``(H, W)`` (probabilities on a fixed [0, 1] scale).

    Long titles (a score and the offline tag, say) are wrapped to the panel's width, and the
    constrained layout makes room for them and for the colour bar, so no title is cut off.
    """
    import textwrap

    from matplotlib import pyplot as plt

    from tipsomaly_lite.course.viz import overlay_anomaly_map, set_style

    def wrap(text: str) -> str:
        return "\n".join(textwrap.fill(line, _TITLE_CHARS) for line in text.splitlines() or [""])

    set_style()  # before the figure, so both panels' titles get the same font
    fig, axes = plt.subplots(1, 2, figsize=(6.6, 3.3), layout="constrained")
    axes[0].imshow(original.permute(1, 2, 0).numpy())
    axes[0].set_title(wrap(title))
    axes[0].axis("off")
    overlay_anomaly_map(original, amap, ax=axes[1], title=wrap(score_title), vmin=0.0, vmax=1.0, colorbar=True)
    return fig


def _draw(original: Any, amap: Any, title: str, score_title: str, target: Path) -> None:
    """:func:`_overlay_figure`, written atomically to ``target`` (PNG)."""
    from matplotlib import pyplot as plt

    fig = _overlay_figure(original, amap, title, score_title)
    with atomic_file(target) as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def predict_images(detector: Any, files: list[Path], class_name: str, out: str | os.PathLike, *,
                   names: dict[Path, Path], batch_size: int = 8, verbose: bool = True) -> PredictResult:
    """Score ``files`` with ``detector``, write one overlay each under ``out`` and ``out/scores.csv``.

    Args:
        detector: a :class:`~tipsomaly_lite.method.detector.Detector`.
        files: image files (see :func:`image_files`).
        class_name: the object's word in the prompts (``"metal nut"``).
        out: an existing output folder.
        names: overlay path relative to ``out`` per file (see :func:`overlay_names`).
        batch_size: images per forward pass.
        verbose: print one line per image.
    Returns:
        The :class:`PredictResult`.
    Raises:
        ValueError: none of the images could be read (the first reason is named).
    """
    from tipsomaly_lite.io.images import check_batch_memory, to_float_rgb
    from tipsomaly_lite.method.maps import upsample_map

    model, out, result = detector.model, Path(out), PredictResult()
    for start in range(0, len(files), batch_size):
        check_batch_memory(files[start:start + batch_size])  # from the headers, before anything is decoded
        readable, originals = [], []
        for f in files[start:start + batch_size]:
            try:
                originals.append(to_float_rgb(f))  # names the file when it cannot be read
                readable.append(f)
            except (ValueError, OSError) as exc:  # one bad image must not cost the others their scores
                result.failed.append((f, str(exc)))  # named once, in the run's one summary line
        if not readable:
            continue
        pred = detector.predict(model.preprocess(originals, model.image_size), class_name)
        for i, (path, original) in enumerate(zip(readable, originals)):
            # The map is drawn over the photo at its own size, not over the squashed model input.
            amap = upsample_map(pred.anomaly_map[i:i + 1], tuple(original.shape[-2:]))[0]
            score = f"score {float(pred.image_score[i]):.3f}"
            target = out / names[path]
            _draw(original, amap, path.name, score + (f" ({MEANINGLESS_TAG})" if model.is_offline else ""), target)
            result.rows.append({"path": str(path), "class_word": class_name,
                                "image_score": f"{float(pred.image_score[i]):.6f}",
                                "global_score": f"{float(pred.global_score[i]):.6f}",
                                "local_score": f"{float(pred.local_score[i]):.6f}", "overlay": str(target)})
            if verbose:
                print(f"{path.name}: score {result.rows[-1]['image_score']} -> {target}")
    if not result.rows:
        raise ValueError(f"--images: none of the {len(files)} images could be read (first: {result.failed[0][1]})")
    result.scores_csv = out / "scores.csv"
    with atomic_file(result.scores_csv, "w", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.rows)
    return result
