"""From a score to a decision: a threshold from known-good images (or given by hand) and one colour scale.

The rule (:data:`THRESHOLD_RULE`), applied to the known-good images of the object:

- **image threshold** = the 0.99 quantile (linear interpolation) of their image scores + :data:`MARGIN`;
- **pixel threshold** = the same of their maps' per-image maxima (drawn as a contour on the maps).

With fewer than 100 known-good images the 0.99 quantile lies within the top two of their scores (it is their
maximum for one image), so practically none of them is flagged; the margin, 0.01 in score units (half a percent
of the image score's range [0, 2]), keeps an image that scores like the best-known good one from being flagged
for rounding. A photo is ``anomalous`` when ``image_score > threshold``, else ``normal``.

The **colour scale** of one folder's maps comes from the same images: from the lowest value of their maps to
twice the pixel threshold's distance above it (at most 1), so the threshold sits in the middle of the colour bar, normal
images stay in its lower half, and maps are comparable across photos (a scale stretched per image makes
every normal photo look anomalous). Without known-good images the scale is the probability's own [0, 1].

    >>> t = Threshold.from_values([1.0, 1.2, 1.1], map_maxima=[0.4, 0.5, 0.45], map_minima=[0.1, 0.2, 0.15])
    >>> round(t.image_threshold, 4), t.decide(1.3), t.decide(1.0)
    (1.2098, 'anomalous', 'normal')

Taught in notebooks/07_your_own_images.ipynb.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from tipsomaly_lite.io.atomic import atomic_file

__all__ = ["QUANTILE", "MARGIN", "THRESHOLD_RULE", "MAX_THRESHOLD", "Threshold", "check_threshold",
           "threshold_from_normal_images", "score_stats", "draw_decision"]

#: The quantile of the known-good values the thresholds start from.
QUANTILE = 0.99
#: Added to the quantile, in score units (image scores lie in [0, 2], map values in [0, 1]).
MARGIN = 0.01
#: The rule in words, recorded in ``threshold.json``.
THRESHOLD_RULE = (f"quantile {QUANTILE} (linear) of the known-good images' values + {MARGIN}; image threshold on "
                  "their image scores, pixel threshold on their maps' per-image maxima; anomalous when "
                  "image_score > threshold")
#: Image scores lie in [0, global_weight + local_weight] = [0, 2] with the paper's weights.
MAX_THRESHOLD = 2.0


def check_threshold(value: Any, what: str = "--threshold") -> float:
    """A finite image-score threshold in [0, :data:`MAX_THRESHOLD`].

    Raises:
        ValueError: not a number, not finite, or outside the range (named with ``what``).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r}: expected a finite image-score threshold between 0 and "
                         f"{MAX_THRESHOLD:g}") from None
    if not math.isfinite(number) or not 0.0 <= number <= MAX_THRESHOLD:
        raise ValueError(f"{what} {value!r}: expected a finite image-score threshold between 0 and "
                         f"{MAX_THRESHOLD:g}")
    return number


def score_stats(values: Sequence[float]) -> dict[str, float]:
    """``n, min, max, mean, std, median`` and the rule's quantile of ``values`` (std 0 for one value)."""
    v = torch.as_tensor(list(values), dtype=torch.float64)
    return {"n": int(v.numel()), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
            "std": float(v.std()) if v.numel() > 1 else 0.0, "median": float(v.median()),
            f"quantile_{QUANTILE}": float(torch.quantile(v, QUANTILE))}


@dataclass
class Threshold:
    """A decision rule for one object: ``anomalous`` when ``image_score > image_threshold``.

    Attributes:
        image_threshold: on the fused image score, in [0, 2].
        rule: how it was chosen, in words (:data:`THRESHOLD_RULE`, or ``given by hand``).
        n_normal: how many known-good images it comes from (0 when given by hand).
        pixel_threshold: on map values in [0, 1] (the maps' contour); None when given by hand.
        colour_scale: ``(low, high)`` of the maps' colours for every photo of the folder.
        image_stats, pixel_stats: :func:`score_stats` of the known-good image scores and map maxima.
    Taught in notebooks/07_your_own_images.ipynb.
    """

    image_threshold: float
    rule: str
    n_normal: int = 0
    pixel_threshold: float | None = None
    colour_scale: tuple[float, float] = (0.0, 1.0)
    image_stats: dict[str, float] = field(default_factory=dict)
    pixel_stats: dict[str, float] = field(default_factory=dict)

    @classmethod
    def by_hand(cls, value: float) -> "Threshold":
        """A threshold given by hand (``--threshold``): no pixel threshold, the [0, 1] colour scale."""
        return cls(check_threshold(value), rule="given by hand")

    @classmethod
    def from_values(cls, image_scores: Sequence[float], map_maxima: Sequence[float],
                    map_minima: Sequence[float]) -> "Threshold":
        """The rule (:data:`THRESHOLD_RULE`) applied to the known-good images' values.

        Args:
            image_scores: ``(K,)`` their image scores.
            map_maxima, map_minima: ``(K,)`` the largest and smallest value of each one's map.
        Raises:
            ValueError: no values, lengths that differ, or a value that is not finite.
        """
        scores, maxima, minima = (torch.as_tensor(list(v), dtype=torch.float64)
                                  for v in (image_scores, map_maxima, map_minima))
        if scores.numel() == 0 or not scores.numel() == maxima.numel() == minima.numel():
            raise ValueError("known-good images: expected one image score, map maximum and map minimum per image")
        if not all(bool(torch.isfinite(v).all()) for v in (scores, maxima, minima)):
            raise ValueError("known-good images: their scores are not finite; is the model's output sound?")
        image_t = float(torch.quantile(scores, QUANTILE)) + MARGIN
        pixel_t = min(float(torch.quantile(maxima, QUANTILE)) + MARGIN, 1.0)
        low = float(minima.min())
        high = min(max(2 * pixel_t - low, pixel_t + 1e-3), 1.0)
        return cls(image_t, THRESHOLD_RULE, int(scores.numel()), pixel_t, (low, high), score_stats(scores.tolist()),
                   score_stats(maxima.tolist()))

    def decide(self, image_score: float) -> str:
        """``"anomalous"`` when ``image_score > image_threshold``, else ``"normal"``."""
        return "anomalous" if float(image_score) > self.image_threshold else "normal"

    def to_dict(self) -> dict[str, Any]:
        """What ``threshold.json`` holds: ``threshold``, ``rule``, ``n_normal_images`` and the statistics."""
        d = asdict(self)
        return {"threshold": d.pop("image_threshold"), "rule": d.pop("rule"), "n_normal_images": d.pop("n_normal"),
                "decision": "anomalous when image_score > threshold, else normal", **d,
                "colour_scale": list(self.colour_scale)}

    def write(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write :meth:`to_dict` (and ``extra``, e.g. the class word and the model) as JSON, atomically."""
        path = Path(path)
        with atomic_file(path, "w", encoding="utf-8") as f:
            json.dump({**self.to_dict(), **extra}, f, indent=1)
            f.write("\n")
        return path


#: Characters per title line over one 3-inch panel at the course's 9-pt font.
_TITLE_CHARS = 34


def draw_decision(original: Any, amap: Any, title: str, score_title: str, threshold: Threshold | None = None) -> Any:
    """The photo beside its anomaly map on the folder's one colour scale, the pixel threshold as a contour.

    Args:
        original: ``image (3, H, W)`` in [0, 1].
        amap: ``anomaly_map (H, W)`` at the photo's size.
        title, score_title: the two panels' titles.
        threshold: its colour scale and pixel threshold; None: the fixed [0, 1] scale, no contour.
    Returns:
        The matplotlib figure (the caller saves or shows and closes it).
    Taught in notebooks/07_your_own_images.ipynb.
    """
    import textwrap

    from matplotlib import pyplot as plt

    from tipsomaly_lite.course.viz import overlay_anomaly_map, set_style

    def wrap(text: str) -> str:  # long titles (a score and the offline tag) wrap to the panel, never cut
        return "\n".join(textwrap.fill(line, _TITLE_CHARS) for line in text.splitlines() or [""])

    low, high = threshold.colour_scale if threshold is not None else (0.0, 1.0)
    set_style()  # before the figure, so both panels' titles get the same font
    fig, axes = plt.subplots(1, 2, figsize=(6.6, 3.3), layout="constrained")  # room for titles and colour bar
    axes[0].imshow(original.permute(1, 2, 0).numpy())
    axes[0].set_title(wrap(title))
    axes[0].axis("off")
    overlay_anomaly_map(original, amap, ax=axes[1], title=wrap(score_title), vmin=low, vmax=high, colorbar=True)
    if threshold is not None and threshold.pixel_threshold is not None:
        values = amap.detach().cpu().numpy()
        if values.min() < threshold.pixel_threshold < values.max():  # a contour needs both sides present
            axes[1].contour(values, levels=[threshold.pixel_threshold], colors="white", linewidths=1.2)
    return fig


def threshold_from_normal_images(detector: Any, images: Sequence[Any], class_word: str, *,
                                 batch_size: int = 8, flag: str = "--normal-images") -> Threshold:
    """Score known-good images and apply the rule (:data:`THRESHOLD_RULE`).

    Args:
        detector: a :class:`~tipsomaly_lite.method.detector.Detector`.
        images: paths or images (PIL, arrays, ``(3, H, W)`` tensors in [0, 1]) of the object in good condition.
        class_word: the object's word in the prompts, the same as for the photos judged.
        batch_size: images per forward pass.
        flag: how the images are named in errors.
    Returns:
        The :class:`Threshold`.
    Raises:
        ValueError: no images, or one that cannot be read (named: a threshold from fewer images than given
            would be silently different).
    Taught in notebooks/07_your_own_images.ipynb.
    """
    from tipsomaly_lite.io.images import check_batch_memory, to_float_rgb

    images = list(images)
    if not images:
        raise ValueError(f"{flag}: no known-good images given")
    model = detector.model
    scores: list[float] = []
    maxima: list[float] = []
    minima: list[float] = []
    for start in range(0, len(images), batch_size):
        batch = []
        chunk = images[start:start + batch_size]
        if all(isinstance(item, (str, os.PathLike)) for item in chunk):
            check_batch_memory(chunk)  # from the headers, before anything is decoded
        for item in chunk:
            try:
                batch.append(to_float_rgb(item))
            except (ValueError, OSError) as exc:
                raise ValueError(f"{flag}: a known-good image cannot be read, so no threshold is made from them: "
                                 f"{exc}") from None
        pred = detector.predict(model.preprocess(batch, model.image_size), class_word)
        flat = pred.anomaly_map.flatten(1)
        scores += pred.image_score.tolist()
        maxima += flat.amax(dim=1).tolist()
        minima += flat.amin(dim=1).tolist()
    return Threshold.from_values(scores, maxima, minima)
