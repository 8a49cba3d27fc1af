"""A few normal images per class: a memory of their patch tokens, and each test patch's distance to it.

Few-shot anomaly detection (docs/method.md §2.8), as WinCLIP+ and AnomalyDINO do it on their backbones:
K normal reference images of a class are encoded by the same frozen backbone, at the same size and
dtype as the test images, and all their patch tokens form the class's memory ``M_c`` (``K * N`` rows).
A test patch that looks like some normal patch is normal; one that looks like none is not:

    a_i = min_{m in M_c} (1 - cos(z_i, m)) / 2                       (Eq. 13, in [0, 1])
    P'_i = (1 - λ) P_{i,a} + λ a_i,   λ = 1/2                         (Eq. 14)

``P'`` replaces the zero-shot patch probabilities ``P_{i,a}`` in the map (Eq. 9) and in the image
score (Eq. 8). The map is linear in the patch scores (bilinear upsampling and a Gaussian), so the
fused map equals ``(1 - λ) A + λ A_few`` with ``A_few`` the few-shot map upsampled and smoothed
exactly like the zero-shot one (a test checks it). With no references (K = 0) nothing is fused:
the detector is today's zero-shot one, bit for bit.

The nearest-neighbour search runs in blocks of ``chunk`` rows of the test patches and of the memory,
so it needs ``chunk * chunk`` floats beside its inputs whatever K is (:func:`pair_min_distances`).

Taught in notebooks/09_few_normal_images.ipynb.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from tipsomaly_lite.backbones.base import Backbone, l2_normalize
from tipsomaly_lite.data.datasets import DatasetError, load_image, read_meta
from tipsomaly_lite.data.registry import class_word
from tipsomaly_lite.io.flags import MAX_SHOTS

__all__ = ["DEFAULT_CHUNK", "NN_WEIGHT", "MAX_SHOTS", "pair_min_distances", "nearest_distances",
           "fuse_patch_scores", "draw_references", "ReferenceMemory"]

#: Rows of each block of the nearest-neighbour search: a block of distances is ``chunk * chunk`` floats (64 MiB).
DEFAULT_CHUNK = 4096
#: λ of Eq. 14: the weight of the nearest-neighbour score beside the zero-shot probability (WinCLIP+ averages).
NN_WEIGHT = 0.5


def pair_min_distances(a: Tensor, b: Tensor, chunk: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """Nearest-neighbour cosine distances between two sets of features, both ways, in bounded memory.

    ``d(u, v) = (1 - cos(u, v)) / 2`` lies in [0, 1]. The ``(Na, Nb)`` matrix of distances is never
    built: blocks of ``chunk`` rows of ``a`` meet blocks of ``chunk`` rows of ``b``, and each keeps a
    running minimum along both axes.

    Args:
        a: ``(Na, D)`` features (normalised here).
        b: ``(Nb, D)`` features (normalised here).
        chunk: rows per block, >= 1; memory beside the inputs is ``chunk * chunk`` floats.
    Returns:
        ``(Na,)`` each row of ``a``'s distance to its nearest row of ``b``, and ``(Nb,)`` the reverse.
    Raises:
        ValueError: not 2-D, widths differ, an empty set, or ``chunk < 1``.
    Taught in notebooks/09_few_normal_images.ipynb.

    >>> row, col = pair_min_distances(torch.eye(3), torch.eye(3)[:2])
    >>> row.tolist(), col.tolist()
    ([0.0, 0.0, 0.5], [0.0, 0.0])
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected features (Na, D) and (Nb, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"nearest neighbours need non-empty sets, got {len(a)} and {len(b)} rows")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1 rows, got {chunk}")
    a, b, chunk = l2_normalize(a.float()), l2_normalize(b.float()).to(a.device), int(chunk)
    row = torch.full((len(a),), float("inf"), device=a.device)
    col = torch.full((len(b),), float("inf"), device=a.device)
    for i in range(0, len(a), chunk):
        for j in range(0, len(b), chunk):
            d = (a[i:i + chunk] @ b[j:j + chunk].T).neg_().add_(1.0).mul_(0.5)  # in place: one block
            row[i:i + chunk] = torch.minimum(row[i:i + chunk], d.amin(dim=1))
            col[j:j + chunk] = torch.minimum(col[j:j + chunk], d.amin(dim=0))
    return row.clamp_(0.0, 1.0), col.clamp_(0.0, 1.0)  # rounding can step a hair outside


def nearest_distances(queries: Tensor, memory: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Eq. 13: every query's cosine distance ``(1 - cos) / 2`` to its nearest memory row.

    Args:
        queries: ``(M, D)`` or ``patch_tokens (B, N, D)``.
        memory: ``(R, D)`` reference patch tokens.
        chunk: rows per block of the search (see :func:`pair_min_distances`).
    Returns:
        ``(M,)`` or ``(B, N)`` distances in [0, 1], the shape of ``queries`` without ``D``.
    Taught in notebooks/09_few_normal_images.ipynb.
    """
    flat = queries.reshape(-1, queries.shape[-1])
    return pair_min_distances(flat, memory, chunk)[0].reshape(queries.shape[:-1])


def fuse_patch_scores(zero_shot: Tensor, nearest: Tensor, weight: float = NN_WEIGHT) -> Tensor:
    """Eq. 14: ``(1 - weight) * zero_shot + weight * nearest``, both ``(B, N)`` in [0, 1].

    Taught in notebooks/09_few_normal_images.ipynb.
    """
    if zero_shot.shape != nearest.shape:
        raise ValueError(f"zero-shot patch scores {tuple(zero_shot.shape)} and nearest-neighbour scores "
                         f"{tuple(nearest.shape)} must have the same (B, N) shape")
    return (1.0 - weight) * zero_shot + weight * nearest.to(zero_shot)


# ---------------------------------------------------------------------------------------- references

def _check_shots(shots: int, what: str) -> int:
    if isinstance(shots, bool) or not isinstance(shots, int) or not 0 <= shots <= MAX_SHOTS:
        raise ValueError(f"{what}: expected a number of reference images per class between 0 and {MAX_SHOTS} "
                         f"(the memory budget), got {shots!r}")
    return shots


def draw_references(root: str | os.PathLike, classes: Sequence[str], shots: int,
                    seed: int = 0) -> dict[str, list[str]]:
    """K normal reference images per class from the **train** split of a prepared dataset, seeded.

    A candidate is a train row with ``anomaly`` 0 and no mask (rows with a mask or an anomaly label are
    never candidates). Candidates are sorted by path, then a ``random.Random(seed)`` draws K of them per
    class (classes in sorted order), so a seed always gives the same images. A drawn image that is
    also listed in the test split, or that resolves (through links) outside ``root``, is refused.

    Args:
        root: the prepared dataset folder (holding ``meta.json``).
        classes: class names (folder names, as in ``meta.json``).
        shots: K, 0 to :data:`MAX_SHOTS`; 0 returns ``{}``.
        seed: the draw's seed (``--shot-seed``).
    Returns:
        ``{class name: [K paths relative to root]}``.
    Raises:
        ValueError: ``shots`` out of range; a class with fewer than K normal train images (names it and
            how many it has); a drawn image that is also in the test split or lies outside ``root``.
    Taught in notebooks/09_few_normal_images.ipynb.
    """
    _check_shots(shots, "shots (--shots)")
    if shots == 0:
        return {}
    root = Path(root)
    meta = read_meta(root)
    test_files = {os.path.realpath(root / row["img_path"]) for rows in meta["test"].values() for row in rows}
    inside = os.path.realpath(root) + os.sep
    rng = random.Random(seed)
    drawn: dict[str, list[str]] = {}
    for cls in sorted(classes):
        rows = sorted(meta["train"].get(cls, []), key=lambda r: r["img_path"])
        normal = [r for r in rows if r["anomaly"] == 0 and not r["mask_path"]]
        if len(normal) < shots:
            raise ValueError(f"--shots {shots}: class {cls!r} has {len(normal)} normal images in the train split of "
                             f"{root / 'meta.json'}; references come from the train split only, so use --shots "
                             f"{len(normal)} or fewer" if normal else
                             f"--shots {shots}: class {cls!r} has no normal image in the train split of "
                             f"{root / 'meta.json'}; references come from the train split only (never from test)")
        picked = sorted(rng.sample(range(len(normal)), shots))
        for i in picked:
            path = normal[i]["img_path"]
            real = os.path.realpath(root / path)
            if real in test_files:
                raise ValueError(f"{root / 'meta.json'}: the train image {path} of class {cls!r} is also in the test "
                                 "split; a reference must never be a test image (prepare the dataset again)")
            if not real.startswith(inside):
                raise ValueError(f"{root / 'meta.json'}: the train image {path} of class {cls!r} resolves to {real}, "
                                 f"outside {root}; refusing")
        drawn[cls] = [normal[i]["img_path"] for i in picked]
    return drawn


@dataclass
class ReferenceMemory:
    """The patch tokens of K normal images per class, and the nearest-neighbour score of test patches.

    Keys are the names the detector is given per image (the class words, ``"metal nut"``). Build it
    with :meth:`from_images` (the backbone encodes the references) or :meth:`from_features` (cached
    ``patch_tokens``), then give it to a detector: ``detector.references = memory``.

    Attributes:
        tokens: key -> ``(K * N, D)`` unit-length reference patch tokens.
        shots: key -> K, the images behind each memory.
        patches: N, patches per reference image (test images must have as many).
        sources: key -> where each reference came from (paths), for the record.
        fingerprint: the weights the references were encoded with (:meth:`Backbone.fingerprint`), or
            None when unknown (features given without a model).
        chunk: rows per block of the search.
        weight: λ of Eq. 14.
    Taught in notebooks/09_few_normal_images.ipynb.
    """

    tokens: dict[str, Tensor]
    shots: dict[str, int]
    patches: int
    sources: dict[str, list[str]] = field(default_factory=dict)
    fingerprint: str | None = None
    chunk: int = DEFAULT_CHUNK
    weight: float = NN_WEIGHT

    @classmethod
    def from_features(cls, features: Mapping[str, Tensor], *, model: Backbone | None = None,
                      sources: Mapping[str, Sequence[str]] | None = None, chunk: int = DEFAULT_CHUNK,
                      weight: float = NN_WEIGHT) -> "ReferenceMemory":
        """A memory from cached reference features.

        Args:
            features: key -> ``patch_tokens (K, N, D)`` of its K reference images (as
                ``model.encode_features`` returns them), 1 <= K <= :data:`MAX_SHOTS`.
            model: the backbone they came from; when given, a detector with other weights refuses them.
            sources: key -> a name per reference image (recorded, not read).
            chunk, weight: see the attributes.
        Raises:
            ValueError: no key, a tensor that is not ``(K, N, D)``, K out of range, N or D that differ
                between keys, values that are not finite, or a weight outside [0, 1].
        """
        if not features:
            raise ValueError("references: no class given (K = 0 is zero-shot: leave detector.references None)")
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"references: weight must lie in [0, 1], got {weight}")
        if int(chunk) < 1:
            raise ValueError(f"references: chunk must be >= 1 rows, got {chunk}")
        tokens, shots, shapes = {}, {}, set()
        for key, feats in features.items():
            if not torch.is_tensor(feats) or feats.ndim != 3 or 0 in feats.shape:
                raise ValueError(f"references[{key!r}]: expected patch_tokens (K, N, D), got "
                                 f"{tuple(feats.shape) if torch.is_tensor(feats) else type(feats).__name__}")
            _check_shots(int(feats.shape[0]), f"references[{key!r}]")
            if not torch.isfinite(feats).all():
                raise ValueError(f"references[{key!r}]: the features hold NaN or infinite values")
            shapes.add(tuple(feats.shape[1:]))
            tokens[str(key)] = l2_normalize(feats.detach().float()).reshape(-1, feats.shape[-1])
            shots[str(key)] = int(feats.shape[0])
        if len(shapes) > 1:
            raise ValueError(f"references: every class needs the same (N, D) patch tokens, got {sorted(shapes)}")
        (n, _), = shapes
        return cls(tokens, shots, int(n), {str(k): [str(p) for p in v] for k, v in (sources or {}).items()},
                   model.fingerprint() if model is not None else None, int(chunk), float(weight))

    @classmethod
    @torch.no_grad()
    def from_images(cls, model: Backbone, images: Mapping[str, Tensor], *, batch_size: int = 8,
                    sources: Mapping[str, Sequence[str]] | None = None, chunk: int = DEFAULT_CHUNK,
                    weight: float = NN_WEIGHT) -> "ReferenceMemory":
        """A memory from reference images, encoded by ``model`` (the detector's backbone, size and dtype).

        Args:
            model: the backbone.
            images: key -> ``image (K, 3, S, S)`` in [0, 1] at the test images' size ``S``.
            batch_size: images per forward pass.
            sources, chunk, weight: as in :meth:`from_features`.
        """
        features = {}
        for key, imgs in images.items():
            if not torch.is_tensor(imgs) or imgs.ndim != 4:
                raise ValueError(f"references[{key!r}]: expected images (K, 3, S, S), got "
                                 f"{tuple(imgs.shape) if torch.is_tensor(imgs) else type(imgs).__name__}")
            _check_shots(len(imgs), f"references[{key!r}]")
            parts = [model.encode_features(imgs[i:i + batch_size].to(model.device))["patch_tokens"]
                     for i in range(0, len(imgs), batch_size)]
            features[key] = torch.cat(parts)
        return cls.from_features(features, model=model, sources=sources, chunk=chunk, weight=weight)

    @classmethod
    def from_dataset(cls, model: Backbone, root: str | os.PathLike, drawn: Mapping[str, Sequence[str]], *,
                     key: str | None = None, image_size: int | None = None, batch_size: int = 8,
                     chunk: int = DEFAULT_CHUNK) -> "ReferenceMemory":
        """A memory from :func:`draw_references`' paths, read like the dataset's test images.

        Args:
            model: the backbone.
            root: the dataset folder the paths are relative to.
            drawn: class name -> paths relative to ``root``.
            key: the dataset key for the class words (default: the folder name, as AnomalyDataset).
            image_size: the side the images are read at, the test images' (default ``model.image_size``).
        Raises:
            ValueError: two classes share a prompt word (the memory is kept per word).
        """
        root = Path(root)
        words: dict[str, str] = {}
        for cls_name in drawn:
            word = class_word(key if key is not None else root.resolve().name, cls_name)
            if word in words:
                raise ValueError(f"classes {words[word]!r} and {cls_name!r} share the prompt word {word!r}; "
                                 "few-shot references are kept per word, so they cannot be told apart")
            words[word] = cls_name
        try:
            size = int(image_size or model.image_size)
            images = {w: torch.stack([load_image(root / p, size) for p in drawn[c]])
                      for w, c in words.items()}
        except DatasetError as err:
            raise ValueError(f"a reference image: {err}") from None
        return cls.from_images(model, images, batch_size=batch_size, chunk=chunk,
                               sources={w: list(drawn[c]) for w, c in words.items()})

    def scores(self, patch_tokens: Tensor, keys: Sequence[str], model: Backbone | None = None) -> Tensor:
        """Eq. 13 for a batch: every patch's distance to its class's memory.

        Args:
            patch_tokens: ``(B, N, D)`` test patch tokens.
            keys: one key (class word) per image.
            model: the detector's backbone, checked against the references' weights when both are known.
        Returns:
            ``(B, N)`` nearest-neighbour distances in [0, 1].
        Raises:
            ValueError: a key without references, other weights, or another N or D than the references'.
        """
        b, n, d = patch_tokens.shape
        if len(keys) != b:
            raise ValueError(f"got {len(keys)} class words for {b} images")
        if model is not None and self.fingerprint is not None and model.fingerprint() != self.fingerprint:
            raise ValueError(f"the references were encoded by other weights ({self.fingerprint}) than the "
                             f"detector's ({model.fingerprint()}); encode them with the same backbone and dtype")
        width = next(iter(self.tokens.values())).shape[1]
        if (n, d) != (self.patches, width):
            raise ValueError(f"test images give {n} patches of width {d}, the references {self.patches} of width "
                             f"{width}; read both at the same size with the same backbone")
        missing = sorted({k for k in keys if k not in self.tokens})
        if missing:
            raise ValueError(f"no references for {missing}; the references cover {sorted(self.tokens)}")
        out = torch.empty(b, n, device=patch_tokens.device)
        for key in dict.fromkeys(keys):  # each class's images searched at once, in first-seen order
            idx = torch.tensor([i for i, k in enumerate(keys) if k == key], device=patch_tokens.device)
            memory = self.tokens[key].to(patch_tokens.device)
            out[idx] = nearest_distances(patch_tokens[idx], memory, self.chunk)
        return out

    def config(self) -> dict[str, Any]:
        """What a result's config records about the references."""
        return {"shots": self.shots, "reference_sources": self.sources, "nn_weight": self.weight,
                "nn_distance": "min over reference patches of (1 - cos) / 2", "nn_chunk": self.chunk}

    def __repr__(self) -> str:
        return (f"ReferenceMemory({len(self.tokens)} classes, shots={self.shots}, patches={self.patches}, "
                f"weight={self.weight})")
