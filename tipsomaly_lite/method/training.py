"""Training the learnable pixel prompts on an auxiliary dataset, with checkpoints and resume (docs/method.md §2.3).

One step: text features from the :class:`~tipsomaly_lite.method.prompt_learner.PromptLearner` ->
patch probabilities for the (cached, frozen) patch tokens -> bilinear upsampling to the input
size -> ``Focal + Dice(anomalous, mask) + Dice(normal, 1 - mask)`` -> Adam on the prompts only.

A run folder holds ``config.json`` (everything needed to reproduce it), ``history.json`` (the
loss of every step) and ``checkpoints/epoch_NNN.safetensors`` (prompts + Adam state, no pickle),
all written atomically. Calling :func:`train_prompts` again on the same folder resumes after the
last checkpoint; the data order of an epoch depends only on ``(seed, epoch)``, so a resumed run
equals an uninterrupted one.

Taught in notebooks/04_learnable_pixel_prompts.ipynb.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from tipsomaly_lite import __version__
from tipsomaly_lite.data.atomic import atomic_file
from tipsomaly_lite.method.feature_cache import FeatureCache
from tipsomaly_lite.method.losses import fused_segmentation_loss, segmentation_loss
from tipsomaly_lite.method.prompt_learner import PromptLearner
from tipsomaly_lite.method.scoring import patch_probabilities
from tipsomaly_lite.backbones.base import Backbone

__all__ = ["TrainConfig", "TrainResult", "training_loss", "backward_step", "bilinear_matrix", "train_prompts",
           "load_trained_prompts", "latest_checkpoint", "flush_denormals", "CHECKPOINT_FORMAT", "MEMORY_CACHE_LIMIT"]

CHECKPOINT_FORMAT = "tipsomaly_lite.method.prompts/1"
#: ``cache="auto"`` keeps the frozen features in memory up to this many bytes, on disk beyond.
MEMORY_CACHE_LIMIT = 2 * 2**30
_CKPT = re.compile(r"epoch_(\d+)\.safetensors$")


@dataclass
class TrainConfig:
    """Hyper-parameters of a prompt-training run (defaults: the paper's, docs/method.md §2.3).

    ``cache`` is ``"auto"`` (memory when the features fit in :data:`MEMORY_CACHE_LIMIT`, else disk
    under the run folder), ``"memory"``, ``"disk"`` (survives a restart) or ``"none"`` (encode
    every image in every epoch; only for checking the cache).

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """

    epochs: int = 2
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8
    seed: int = 111
    n_tokens: int = 8
    prompt_set: str = "industrial"
    class_word: str = "object"
    cache: str = "auto"
    cache_dtype: str = "float16"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.cache not in ("auto", "memory", "disk", "none"):
            raise ValueError(f"cache must be 'auto', 'memory', 'disk' or 'none', got {self.cache!r}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype must be 'float16' or 'float32', got {self.cache_dtype!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")

    # What must match for a run folder to be resumed (the cache settings may change freely).
    _RESUME_KEYS = ("lr", "betas", "batch_size", "seed", "n_tokens", "prompt_set", "class_word")


@dataclass
class TrainResult:
    """What :func:`train_prompts` returns.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """

    learner: PromptLearner
    history: list[dict[str, float]] = field(default_factory=list)  # one row per step
    epoch_losses: list[float] = field(default_factory=list)  # mean loss per epoch
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch run by this call
    checkpoints: list[Path] = field(default_factory=list)
    resumed_from: int = 0  # epochs already done when this call started
    seconds: float = 0.0

    def prompts(self) -> tuple[Tensor, Tensor]:
        return self.learner.prompts()


def training_loss(learner: PromptLearner, patch_tokens: Tensor, masks: Tensor, temperature: float,
                  grid: tuple[int, int]) -> Tensor:
    """The loss of one batch (differentiable in the prompts).

    Args:
        patch_tokens: ``(B, N, D)`` L2-normalised, frozen.
        masks: ``mask (B, 1, S, S)`` in {0, 1}.
        temperature: the backbone's softmax temperature.
        grid: ``(gh, gw)`` with ``gh * gw = N``.
    Returns:
        scalar ``Focal(P, mask) + Dice(P_anomalous, mask) + Dice(P_normal, 1 - mask)``.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    b, n, _ = patch_tokens.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    probs = patch_probabilities(patch_tokens, learner(), temperature)  # (B, N, 2)
    probs = probs.transpose(1, 2).reshape(b, 2, *grid)
    probs = F.interpolate(probs, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return segmentation_loss(probs, masks)


@functools.lru_cache(maxsize=8)
def bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)`` weights of 1-D linear resizing as ``F.interpolate`` does it (align_corners False).

    Bilinear upsampling is separable: ``up(X) = R @ X @ C.T`` with ``R``, ``C`` such matrices.
    Built by resizing the identity, so the weights are PyTorch's own.
    """
    eye = torch.eye(n_in)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def backward_step(learner: PromptLearner, patch_tokens: Tensor, masks: Tensor, temperature: float,
                  grid: tuple[int, int]) -> float:
    """:func:`training_loss` and its backward pass, image by image; returns the loss.

    The same value and prompt gradients as ``training_loss(...).backward()`` (the loss is a mean
    of per-image terms), but the 518 x 518 maps of one image at a time stay in the CPU cache
    instead of eight at once in memory, the bilinear upsampling is done as two small matrix
    products (whose backward pass is much faster than ``upsample_bilinear2d``'s) and the loss by
    :func:`~tipsomaly_lite.method.losses.fused_segmentation_loss` (same value and gradient, fewer
    passes). The text tower runs once per step; its gradient is collected on a detached copy of
    the text features and pushed through once.
    """
    b, n, _ = patch_tokens.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    rows, cols = (bilinear_matrix(g, s).to(patch_tokens) for g, s in zip(grid, masks.shape[-2:]))
    text = learner()
    text_leaf = text.detach().requires_grad_()
    total = 0.0
    for i in range(b):
        # Only the anomalous channel: the normal one is 1 - it (see fused_segmentation_loss).
        probs = patch_probabilities(patch_tokens[i:i + 1], text_leaf, temperature)[..., 1]
        probs = rows @ probs.reshape(1, *grid) @ cols.T  # = F.interpolate(bilinear), as two GEMMs
        loss = fused_segmentation_loss(probs, masks[i:i + 1]) / b
        loss.backward()
        total += float(loss.detach())
    text.backward(text_leaf.grad)
    return total


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU for the duration (then back to torch's default, off).

    At a temperature near 0.01 the softmax puts probabilities within 1e-38 of 0 or 1; arithmetic on
    such denormal numbers is up to 100x slower on x86 CPUs and made later epochs crawl. Flushing
    them changes values by less than 1e-38.
    """
    changed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if changed:
            torch.set_flush_denormal(False)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-epoch ``checkpoints/epoch_NNN.safetensors`` of a run folder, or None.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / "checkpoints").glob("epoch_*.safetensors")
             if (m := _CKPT.search(p.name))]
    return max(found)[1] if found else None


def _save_checkpoint(run_dir: Path, epoch: int, learner: PromptLearner, optimizer: torch.optim.Adam) -> Path:
    tensors = {"normal": learner.normal.detach().cpu().contiguous(),
               "anomalous": learner.anomalous.detach().cpu().contiguous()}
    for i, param in enumerate((learner.normal, learner.anomalous)):
        for name, value in optimizer.state.get(param, {}).items():
            tensors[f"adam.{i}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    data = save_safetensors_bytes(tensors, metadata={"format": CHECKPOINT_FORMAT, "epoch": str(epoch)})
    path = run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(data)
    return path


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], int]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or "normal" not in tensors or "anomalous" not in tensors:
        raise ValueError(f"{path}: not a tipsomaly_lite prompt checkpoint (format {meta.get('format')!r})")
    return tensors, int(meta.get("epoch", 0))


def load_trained_prompts(path: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """Prompts ``(normal (n, D), anomalous (n, D))`` from a run folder (its last epoch) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"{path}: no checkpoints/epoch_NNN.safetensors in this run folder")
        path = ckpt
    if not path.is_file():
        raise FileNotFoundError(f"prompt checkpoint not found: {path}")
    tensors, _ = _read_checkpoint(path)
    return tensors["normal"].float(), tensors["anomalous"].float()


def _write_json(path: Path, data: Any) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def _run_config(model: Backbone, dataset: Any, config: TrainConfig) -> dict[str, Any]:
    return {"train": asdict(config), "variant": model.variant, "model_source": model.source,
            "offline_model": model.is_offline, "image_size": int(dataset.image_size),
            "dataset": str(getattr(dataset, "root", "?")), "dataset_key": getattr(dataset, "key", None),
            "n_images": len(dataset), "temperature": model.temperature, "tipsomaly_lite": __version__,
            "torch": torch.__version__, "python": platform.python_version()}


def _check_resumable(run_dir: Path, config: TrainConfig) -> None:
    saved = json.loads((run_dir / "config.json").read_text())["train"]
    ours = asdict(config)
    diff = {k: (saved.get(k), ours[k]) for k in TrainConfig._RESUME_KEYS
            if json.loads(json.dumps(saved.get(k))) != json.loads(json.dumps(ours[k]))}
    if diff:
        raise ValueError(f"{run_dir} was trained with other settings {diff} (saved, now); "
                         "use a new --out folder or resume=False")


def _batch(model: Backbone, dataset: Any, cache: FeatureCache | None, idx: list[int]) -> tuple[Tensor, Tensor]:
    """``patch_tokens (B, N, D)`` and ``mask (B, 1, S, S)`` of dataset items, from the cache or encoded now."""
    if cache is not None:
        batch = cache.get(dataset, idx)
        return batch["patch_tokens"], batch["mask"]
    items = [dataset[i] for i in idx]
    tokens = model.encode_features(torch.stack([it["image"] for it in items]))["patch_tokens"]
    return tokens, torch.stack([it["mask"] for it in items]).to(model.device)


def train_prompts(model: Backbone, dataset: Any, config: TrainConfig | None = None,
                  out_dir: str | os.PathLike | None = None, *, resume: bool = True, cache: FeatureCache | None = None,
                  progress: bool = True, on_step: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train the pixel prompts on a dataset's images and masks (the whole split, normal images included).

    Args:
        model: frozen backbone (only the prompts train).
        dataset: items with ``image (3, S, S)`` and ``mask (1, S, S)``, e.g. an
            :class:`~tipsomaly_lite.data.datasets.AnomalyDataset` (the paper trains on MVTec AD's test split).
        config: hyper-parameters (default: the paper's).
        out_dir: run folder for config, history and per-epoch checkpoints; None keeps nothing on disk.
        resume: continue from the last checkpoint in ``out_dir`` when there is one.
        cache: a :class:`FeatureCache` to reuse (e.g. across runs); by default one is made as
            ``config.cache`` says.
        progress: progress bars.
        on_step: called after every step with ``{"epoch", "step", "loss"}`` (for live plots).
    Returns:
        :class:`TrainResult` with the learner, the loss history and the checkpoint paths.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    config = config or TrainConfig()
    if len(dataset) == 0:
        raise ValueError("train_prompts: the dataset is empty")
    start_time = time.perf_counter()
    size = int(dataset.image_size)
    grid = model.patch_grid(size)
    run_dir = Path(out_dir) if out_dir is not None else None
    learner = PromptLearner(model, config.n_tokens, config.prompt_set, config.class_word,
                            generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.Adam([learner.normal, learner.anomalous], lr=config.lr, betas=config.betas)
    result = TrainResult(learner)
    done = 0
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a fresh start must not leave older epochs that a later resume would pick up
            for old in (run_dir / "checkpoints").glob("epoch_*.safetensors"):
                old.unlink()
        last = latest_checkpoint(run_dir)
        if last is not None:
            _check_resumable(run_dir, config)
            tensors, done = _read_checkpoint(last)
            with torch.no_grad():
                learner.normal.copy_(tensors["normal"])
                learner.anomalous.copy_(tensors["anomalous"])
            for i, param in enumerate((learner.normal, learner.anomalous)):
                state = {k.split(".")[-1]: v if k.endswith(".step") else v.to(param.device)
                         for k, v in tensors.items() if k.startswith(f"adam.{i}.")}
                if state:
                    optimizer.state[param] = state
            if (run_dir / "history.json").is_file():
                saved = json.loads((run_dir / "history.json").read_text())
                result.history = [row for row in saved["steps"] if row["epoch"] <= done]
                result.epoch_losses = saved["epoch_losses"][:done]
            result.checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.safetensors"))
            result.resumed_from = done
        _write_json(run_dir / "config.json", _run_config(model, dataset, config))
    if cache is None and config.cache != "none":
        where = config.cache
        if where == "auto":
            # L/14 at 518 px in fp16 is 2.8 MB per image: MVTec AD's 1,725 test images take 4.8 GB.
            per_image = grid[0] * grid[1] * model.text_width * (2 if config.cache_dtype == "float16" else 4)
            big = per_image * len(dataset) > MEMORY_CACHE_LIMIT
            where = "disk" if big and run_dir is not None else "memory"
        folder = run_dir / "feature_cache" if where == "disk" and run_dir is not None else None
        cache = FeatureCache(model, size, folder=folder, progress=progress,
                             dtype=torch.float16 if config.cache_dtype == "float16" else torch.float32)
    if cache is not None and cache.image_size != size:
        raise ValueError(f"the feature cache is for {cache.image_size} px but the dataset gives {size} px")

    n_batches = (len(dataset) + config.batch_size - 1) // config.batch_size
    with flush_denormals():
        for epoch in range(done + 1, config.epochs + 1):
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed + epoch))
            losses = []
            epoch_start = time.perf_counter()
            bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress)
            for step in bar:
                idx = order[step * config.batch_size:(step + 1) * config.batch_size].tolist()
                tokens, masks = _batch(model, dataset, cache, idx)
                optimizer.zero_grad(set_to_none=True)
                loss = backward_step(learner, tokens, masks, model.temperature, grid)
                optimizer.step()
                row = {"epoch": epoch, "step": len(result.history) + 1, "loss": loss}
                result.history.append(row)
                losses.append(row["loss"])
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if on_step is not None:
                    on_step(row)
            result.epoch_losses.append(float(np.mean(losses)))
            result.epoch_seconds.append(time.perf_counter() - epoch_start)
            if run_dir is not None:
                result.checkpoints.append(_save_checkpoint(run_dir, epoch, learner, optimizer))
                _write_json(run_dir / "history.json", {"steps": result.history, "epoch_losses": result.epoch_losses})
    result.seconds = time.perf_counter() - start_time
    return result
