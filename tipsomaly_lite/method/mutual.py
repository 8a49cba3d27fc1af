"""Batch zero-shot by mutual scoring: the other test images of a class stand in for normal references.

MuSc (Li et al., ICLR 2024) observes that in a batch of unlabelled test images of one product most
patches are normal and find close look-alikes in the *other* images, while a defect finds none (it
is rare, and it differs from one image to the next). For image ``b`` of a class with ``B`` test
images (docs/method.md §2.9):

    d_{b,c}(i) = min_j (1 - cos(z_{b,i}, z_{c,j})) / 2        for every other image c != b
    m_b(i) = mean of the ceil(X (B - 1)) smallest of d_{b,c}(i) over c     (Eq. 15, X = 30 %)

The mean of the smallest values over the other images (MuSc's *interval average*) is robust: an
image that shares the defect (or is itself anomalous there) lands among the large distances and is
left out, while one lucky look-alike cannot make a defect normal as a plain minimum would. ``m``
is then fused with the zero-shot probabilities like a few-shot score (Eq. 14). No label and no
reference image is read, and the result does not depend on the order of the images (the values over
``c`` are sorted before averaging).

Cost: every pair of images meets once, ``B (B - 1) / 2`` blocks of ``N x N`` dot products of width
``D``, i.e. ``B^2 N^2 D / 2`` multiply-adds, quadratic in the batch (one image meets as many others at
once as fit in a block of ``chunk^2`` distances). Memory: the features ``B N D`` and the table of
per-image minima ``B^2 N`` floats (100 images of 1369 patches: 52 MiB), plus one block of at most
``chunk^2`` floats (64 MiB at the default 4096). ``benchmarks/bench_mutual.py`` prints both for a growing batch.

Taught in notebooks/09_few_normal_images.ipynb.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from tipsomaly_lite.backbones.base import l2_normalize
from tipsomaly_lite.method.few_shot import DEFAULT_CHUNK, pair_min_distances

__all__ = ["DEFAULT_FRACTION", "interval_average", "mutual_scores", "predict_mutual", "mutual_predictions"]

#: X of Eq. 15: the share of the other images whose distances are averaged (MuSc's interval average).
DEFAULT_FRACTION = 0.3


def _check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and 0.0 < float(fraction) <= 1.0):
        raise ValueError(f"fraction must lie in (0, 1] (the share of the other images averaged), got {fraction!r}")
    return float(fraction)


def interval_average(distances: Tensor, fraction: float = DEFAULT_FRACTION) -> Tensor:
    """The mean of the ``ceil(fraction * C)`` smallest values along dim 1 of ``(B, C, N)`` distances.

    Taught in notebooks/09_few_normal_images.ipynb.

    >>> interval_average(torch.tensor([[[4.0], [1.0], [3.0], [2.0]]]), 0.5).tolist()
    [[1.5]]
    """
    k = max(1, math.ceil(_check_fraction(fraction) * distances.shape[1]))
    return distances.sort(dim=1).values[:, :k].mean(dim=1)


def mutual_scores(patch_tokens: Tensor, fraction: float = DEFAULT_FRACTION, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Eq. 15: every patch's interval-averaged distance to its nearest patch in each other image.

    Args:
        patch_tokens: ``(B, N, D)`` of B >= 2 test images of one class.
        fraction: X, the share of the other images averaged (0.3).
        chunk: rows per block of each pair's search (see :func:`~tipsomaly_lite.method.few_shot.pair_min_distances`).
    Returns:
        ``(B, N)`` scores in [0, 1], higher = less like the other images.
    Raises:
        ValueError: fewer than two images (there is no other image to compare with), or not ``(B, N, D)``.
    Taught in notebooks/09_few_normal_images.ipynb.
    """
    if patch_tokens.ndim != 3:
        raise ValueError(f"patch_tokens must be (B, N, D), got {tuple(patch_tokens.shape)}")
    b, n, _ = patch_tokens.shape
    if b < 2:
        raise ValueError(f"mutual scoring needs at least 2 test images of a class (each is scored against the "
                         f"others), got {b}")
    _check_fraction(fraction)
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 rows, got {chunk}")
    x = l2_normalize(patch_tokens.float())
    # minima[b, c] = each patch of image b's distance to image c; the diagonal is dropped below.
    minima = torch.empty(b, b, n, device=x.device)
    group = chunk * chunk // (n * n)  # other images searched at once: a block of n x (group * n) <= chunk^2
    for i in range(b):
        if group == 0:  # a patch grid larger than a block: pair by pair, in chunks
            for j in range(i + 1, b):
                minima[i, j], minima[j, i] = pair_min_distances(x[i], x[j], chunk)
            continue
        for j0 in range(i + 1, b, group):  # each pair once: both directions from one block
            j1 = min(b, j0 + group)
            d = (x[i] @ x[j0:j1].reshape(-1, x.shape[-1]).T).neg_().add_(1.0).mul_(0.5).view(n, j1 - j0, n)
            minima[i, j0:j1] = d.amin(dim=2).T  # each patch of i to its nearest in image j
            minima[j0:j1, i] = d.amin(dim=0)  # each patch of j to its nearest in image i
    minima.clamp_(0.0, 1.0)
    others = minima[~torch.eye(b, dtype=torch.bool, device=minima.device)].reshape(b, b - 1, n)
    return interval_average(others, fraction)


@torch.no_grad()
def predict_mutual(detector: Any, images: Tensor | None, class_words: str | Sequence[str], maps: bool = True, *,
                   fraction: float = DEFAULT_FRACTION, features: dict[str, Tensor] | None = None,
                   image_size: int | tuple[int, int] | None = None) -> Any:
    """The detector's prediction with mutual scores fused in (Eq. 14 with ``m`` for ``a``), per class word.

    Args:
        detector: a :class:`~tipsomaly_lite.method.detector.Detector` (its references, if any, are not used).
        images: ``image (B, 3, S, S)`` in [0, 1]; at least two per class word (None with ``features``).
        class_words: per image, or one for all; images of a word are scored against each other only.
        maps: also compute the anomaly maps.
        fraction: X of Eq. 15.
        features: the images' features when already computed (``encode_features``), else encoded here.
        image_size: the maps' side (default: the images'; needed for maps from ``features`` alone).
    Returns:
        A :class:`~tipsomaly_lite.method.detector.Prediction`.
    Raises:
        ValueError: a class word with a single image.
    Taught in notebooks/09_few_normal_images.ipynb.
    """
    feats = features if features is not None else detector.model.encode_features(images)
    b = feats["patch_tokens"].shape[0]
    words = [class_words] * b if isinstance(class_words, str) else list(class_words)
    if len(words) != b:
        raise ValueError(f"got {len(words)} class words for {b} images")
    nearest = torch.empty(feats["patch_tokens"].shape[:2], device=feats["patch_tokens"].device)
    for word in dict.fromkeys(words):
        idx = torch.tensor([i for i, w in enumerate(words) if w == word], device=nearest.device)
        if len(idx) < 2:
            raise ValueError(f"mutual scoring: the batch has one image of {word!r}; it needs at least 2 test "
                             "images of each class to score them against each other")
        nearest[idx] = mutual_scores(feats["patch_tokens"][idx], fraction, detector.references.chunk
                                     if detector.references is not None else DEFAULT_CHUNK)
    size = image_size if image_size is not None else tuple(images.shape[-2:]) if images is not None else None
    if maps and size is None:
        raise ValueError("predict_mutual: maps from features alone need image_size")
    return detector.predict_features(feats, words, size if maps else None, nearest_scores=nearest)


def _take(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    return {k: v[rows] for k, v in batch.items()}


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in parts[0]:
        values = [p[k] for p in parts]
        out[k] = torch.cat(values) if torch.is_tensor(values[0]) else [x for v in values for x in v]
    return out


def mutual_predictions(detector: Any, batches: Iterable[dict[str, Any]], *, fraction: float = DEFAULT_FRACTION,
                       ) -> Iterator[tuple[dict[str, Any], Any]]:
    """Evaluation batches with mutual scoring: each class is scored once all its test images are in.

    The batches must hold each class's images together (an
    :class:`~tipsomaly_lite.data.datasets.AnomalyDataset` is sorted by class). Images are encoded as
    they come; their features wait until the class is complete, then the class is scored and its
    images are handed back in batches of the size they came in.

    Args:
        detector: the detector.
        batches: dicts with ``image (b, 3, S, S)``, ``class_name`` and ``class_word`` lists, and any other
            per-image entries (tensors or lists), as the evaluation's DataLoader gives them.
        fraction: X of Eq. 15.
    Yields:
        ``(batch without its images, Prediction)`` in the order of the images.
    Raises:
        ValueError: a class with one test image, or a class whose images are not together.
    Taught in notebooks/09_few_normal_images.ipynb.
    """
    pending: list[tuple[dict[str, Any], dict[str, Tensor]]] = []  # one class's rows and features so far
    done: set[str] = set()
    size, image_size = 1, None

    def flush() -> Iterator[tuple[dict[str, Any], Any]]:
        rows = _join([r for r, _ in pending])
        feats = {k: torch.cat([f[k] for _, f in pending]) for k in pending[0][1]}
        cls = rows["class_name"][0]
        if len(rows["class_name"]) < 2:
            raise ValueError(f"mutual scoring: class {cls!r} has one test image; it needs at least 2 to score "
                             "them against each other")
        nearest = mutual_scores(feats["patch_tokens"], fraction)
        for start in range(0, len(rows["class_name"]), size):
            part = slice(start, start + size)
            pred = detector.predict_features({k: v[part] for k, v in feats.items()}, rows["class_word"][part],
                                             image_size, nearest_scores=nearest[part])
            yield _take(rows, part), pred

    for batch in batches:
        size, image_size = max(size, len(batch["class_name"])), tuple(batch["image"].shape[-2:])
        with torch.no_grad():
            feats = detector.model.encode_features(batch["image"])
        rows = {k: v for k, v in batch.items() if k != "image"}
        names = batch["class_name"]
        start = 0
        for i in range(1, len(names) + 1):  # split the batch where the class changes
            if i == len(names) or names[i] != names[start]:
                cls = names[start]
                if pending and pending[0][0]["class_name"][0] != cls:
                    yield from flush()
                    done.add(pending[0][0]["class_name"][0])
                    pending = []
                if cls in done:
                    raise ValueError(f"mutual scoring: the images of class {cls!r} are not together in the dataset "
                                     "order; each class must be complete before the next begins")
                pending.append((_take(rows, slice(start, i)), {k: v[start:i] for k, v in feats.items()}))
                start = i
    if pending:
        yield from flush()
