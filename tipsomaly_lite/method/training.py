"""Training the learnable pixel prompts on an auxiliary dataset (docs/method.md §2.3).

One step (:func:`backward_step`): text features from the
:class:`~tipsomaly_lite.method.prompt_learner.PromptLearner` -> patch probabilities for the
(cached, frozen) patch tokens (Eq. 3) -> bilinear upsampling to the input size ->
``Focal + Dice(anomalous, mask) + Dice(normal, 1 - mask)`` (Eq. 7,
:func:`~tipsomaly_lite.method.losses.segmentation_loss`) -> Adam on the prompts only.
:func:`train_prompts` repeats it over the batches of every epoch. The data order of an epoch
depends only on ``(seed, epoch)``, so a resumed run equals an uninterrupted one; a NaN/inf loss or
prompt stops training before anything of that epoch is saved.

The run folder (config, history, checkpoints, lock, resume checks) is
:mod:`tipsomaly_lite.method.run_folder`'s job; this module only calls it.

Several processes (``torchrun``, :mod:`tipsomaly_lite.distributed`) share each batch: every process
encodes its share of the batch's images and sums the prompt gradient with the others
(:func:`backward_step`), so all of them take the step one process would take with the same
(global) batch. Rank 0 alone writes the run folder (and holds its lock); the processes start from
rank 0's prompts and optimizer state, so a run may be resumed on another number of processes.

Taught in notebooks/04_learnable_pixel_prompts.ipynb.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from tipsomaly_lite import distributed
from tipsomaly_lite.backbones.base import Backbone
from tipsomaly_lite.method import run_folder
from tipsomaly_lite.method.feature_cache import FeatureCache
from tipsomaly_lite.method.losses import LOSS_TERMS, fused_segmentation_loss, segmentation_loss
from tipsomaly_lite.method.prompt_learner import PromptLearner
from tipsomaly_lite.backbones.scoring_rule import ScoringRule, as_rule
from tipsomaly_lite.method.scoring import patch_probabilities

__all__ = ["TrainConfig", "TrainResult", "training_loss", "backward_step", "bilinear_matrix", "train_prompts",
           "flush_denormals", "FUSED_GRADIENT", "MEMORY_CACHE_LIMIT"]

#: ``cache="auto"`` keeps the frozen features in memory up to this many bytes, on disk beyond.
MEMORY_CACHE_LIMIT = 2 * 2**30
#: The one switch of the loss's gradient in training. True (default): the hand-derived gradient of
#: :func:`~tipsomaly_lite.method.losses.fused_segmentation_loss`, several times faster per step
#: (``benchmarks/bench_training.py`` measures it) and what every released run was trained with.
#: False: autograd through the readable definition,
#: :func:`~tipsomaly_lite.method.losses.segmentation_loss`. The two give the same loss and gradient
#: up to float rounding (tests/test_losses.py), so prompts differ only in the last bits. The
#: hand-derived gradient assumes ``p_normal = 1 - p_anomalous`` (the softmax); a backbone scored with
#: sigmoids (SigLIP2) always takes autograd.
FUSED_GRADIENT = True


@dataclass
class TrainConfig:
    """Hyper-parameters of a prompt-training run (defaults: the paper's, docs/method.md §2.3).

    ``cache`` is ``"auto"`` (memory when the features fit in :data:`MEMORY_CACHE_LIMIT`, else disk
    under the run folder), ``"memory"``, ``"disk"`` (survives a restart) or ``"none"`` (encode
    every image in every epoch; only for checking the cache).

    ``shuffle`` False (default) visits the images in dataset order, the same every epoch, as the
    authors' training loader does; True reshuffles every epoch (the order depends only on
    ``(seed, epoch)``, so a resumed run equals an uninterrupted one). See docs/method.md §2.3.

    A run folder is resumed only with the same settings, except ``epochs`` and the cache ones
    (:mod:`tipsomaly_lite.method.run_folder`).

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
    shuffle: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.cache not in ("auto", "memory", "disk", "none"):
            raise ValueError(f"cache must be 'auto', 'memory', 'disk' or 'none', got {self.cache!r}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"cache_dtype must be 'float16' or 'float32', got {self.cache_dtype!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")


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
        """The trained ``(normal (n, D), anomalous (n, D))``."""
        return self.learner.prompts()


def training_loss(learner: PromptLearner, patch_tokens: Tensor, masks: Tensor, rule: ScoringRule | float,
                  grid: tuple[int, int]) -> Tensor:
    """The loss of one batch (differentiable in the prompts), written as the paper states it.

    :func:`backward_step` computes the same loss and gradient faster; this is its reference.

    Args:
        learner: returns the text features ``(2, D)`` (normal, anomalous).
        patch_tokens: ``(B, N, D)`` L2-normalised, frozen.
        masks: ``mask (B, 1, S, S)`` in {0, 1}.
        rule: the backbone's ``scoring_rule`` (or a softmax temperature); its two channels are the loss's ``P``.
        grid: ``(gh, gw)`` with ``gh * gw = N``.
    Returns:
        scalar ``Focal(P, mask) + Dice(P_anomalous, mask) + Dice(P_normal, 1 - mask)``.
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    b, n, _ = patch_tokens.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    probs = patch_probabilities(patch_tokens, learner(), rule)  # (B, N, 2)
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


def backward_step(learner: PromptLearner, patch_tokens: Tensor, masks: Tensor, rule: ScoringRule | float,
                  grid: tuple[int, int], terms: dict[str, float] | None = None, *, batch_size: int | None = None,
                  all_reduce: Callable[[Tensor], Any] | None = None) -> float:
    """:func:`training_loss` and its backward pass, image by image; returns the loss.

    The same value and prompt gradients as ``training_loss(...).backward()`` (the loss is a mean
    of per-image terms), but the 518 x 518 maps of one image at a time stay in the CPU cache
    instead of eight at once in memory, and the bilinear upsampling is done as two small matrix
    products (whose backward pass is much faster than ``upsample_bilinear2d``'s). The loss's
    gradient is hand-derived or autograd's as :data:`FUSED_GRADIENT` says (the hand-derived one assumes
    ``p_normal = 1 - p_anomalous``, so a sigmoid rule always takes autograd). The text tower runs
    once per step; its gradient is collected on a detached copy of the text features and pushed
    through once.

    Several processes (:mod:`tipsomaly_lite.distributed`) each hold a share of one batch: they pass
    the whole batch's ``batch_size`` and ``all_reduce``. The ``(2, D)`` gradient of the text
    features and the loss terms are then summed before the text tower's backward pass, so every
    process gets the whole batch's loss and prompt gradient, as one process would (up to float
    summation order).

    Args:
        learner: returns the text features ``(2, D)``; its prompts receive the gradient.
        patch_tokens: ``(B, N, D)`` L2-normalised, frozen (``B`` may be 0 for a process with no share).
        masks: ``(B, 1, S, S)`` in {0, 1}.
        rule: the backbone's ``scoring_rule`` (or a softmax temperature).
        grid: ``(gh, gw)`` with ``gh * gw = N``.
        terms: when given, receives the batch's three loss terms (``focal``, ``dice_anomalous``,
            ``dice_normal``; they add up to the returned loss).
        batch_size: the whole batch's size, the mean's denominator (default: ``B``).
        all_reduce: sums a tensor over the processes in place (default: one process).
    Returns:
        The batch's loss, a Python float.
    """
    b, n, _ = patch_tokens.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    denominator = b if batch_size is None else batch_size
    rows, cols = (bilinear_matrix(g, s).to(patch_tokens) for g, s in zip(grid, masks.shape[-2:]))
    rule = as_rule(rule)
    fused = FUSED_GRADIENT and rule.complementary
    text = learner()
    text_leaf = text.detach().requires_grad_()
    total = 0.0
    per_image = dict.fromkeys(LOSS_TERMS, 0.0)
    for i in range(b):
        probs = patch_probabilities(patch_tokens[i:i + 1], text_leaf, rule)  # (1, N, 2)
        if rule.complementary:
            # Only the anomalous channel u: the normal one is 1 - u (the softmax's two outputs sum to 1,
            # and bilinear upsampling keeps that).
            u = rows @ probs[..., 1].reshape(1, *grid) @ cols.T  # (1, S, S) = F.interpolate(bilinear), as two GEMMs
            pair = None if fused else torch.stack([1 - u, u], dim=1)
        else:  # independent sigmoids: both channels, each upsampled
            pair = rows @ probs[0].T.reshape(2, *grid) @ cols.T  # (2, S, S)
            pair = pair[None]
        if fused:
            loss = fused_segmentation_loss(u, masks[i:i + 1], terms=per_image)
        else:
            loss = segmentation_loss(pair, masks[i:i + 1], terms=per_image)
        loss = loss / denominator
        loss.backward()
        total += float(loss.detach())
    grad = text_leaf.grad if text_leaf.grad is not None else torch.zeros_like(text_leaf)
    if all_reduce is not None:
        sums = torch.tensor([total, *per_image.values()], dtype=torch.float64)
        all_reduce(grad)
        all_reduce(sums)
        total, per_image = float(sums[0]), dict(zip(per_image, sums[1:].tolist()))
    text.backward(grad)
    if terms is not None:
        terms.update({k: v / denominator for k, v in per_image.items()})
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


def _stop_if_not_finite(what: str, value: float | Tensor, epoch: int, step: int, run_dir: Path | None) -> None:
    """Stop training with a clear error when a loss or the prompts hold NaN or inf (nothing is saved)."""
    ok = math.isfinite(value) if isinstance(value, float) else bool(torch.isfinite(value).all())
    if ok:
        return
    last = run_folder.latest_checkpoint(run_dir) if run_dir is not None else None
    kept = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written"
    raise ValueError(f"training diverged at epoch {epoch}, step {step + 1}: {what} is not finite (NaN or inf); "
                     f"stopped, {kept}. Lower the learning rate (--lr) or check the images and masks")


def _initial_prompts(prompts: Any, n_tokens: int) -> dict[str, Tensor]:
    """``{"normal", "anomalous"}`` for :class:`PromptLearner` from ``initial_prompts`` (empty: random start)."""
    if prompts is None:
        return {}
    if not isinstance(prompts, (tuple, list)) or len(prompts) != 2:
        raise ValueError("initial_prompts must be a pair (normal (n, D), anomalous (n, D)) of tensors")
    normal, anomalous = (torch.as_tensor(p).detach().float().cpu() for p in prompts)
    if normal.ndim != 2 or normal.shape[0] != n_tokens:
        raise ValueError(f"initial_prompts must hold n_tokens = {n_tokens} vectors each (TrainConfig.n_tokens), "
                         f"got normal {tuple(normal.shape)} and anomalous {tuple(anomalous.shape)}")
    if not (bool(torch.isfinite(normal).all()) and bool(torch.isfinite(anomalous).all())):
        raise ValueError("initial_prompts hold NaN or inf")
    return {"normal": normal, "anomalous": anomalous}


def _share_start(learner: PromptLearner, optimizer: torch.optim.Adam, result: TrainResult, model: Backbone) -> None:
    """Every process starts where rank 0 starts (its seeded or given prompts, or its resumed checkpoint)."""
    mine = {"fingerprint": model.fingerprint(),
            "prompts": (learner.normal.detach().cpu(), learner.anomalous.detach().cpu()),
            "adam": optimizer.state_dict(), "history": result.history, "epoch_losses": result.epoch_losses,
            "checkpoints": result.checkpoints, "resumed_from": result.resumed_from}
    start = distributed.broadcast_object(mine)
    differs = start["fingerprint"] != mine["fingerprint"]
    distributed.agree(ValueError(f"rank {distributed.world()[0]} loaded other backbone weights than rank 0 "
                                 f"({mine['fingerprint']} vs {start['fingerprint']}); every process must load the "
                                 "same model") if differs else None)
    with torch.no_grad():
        learner.normal.copy_(start["prompts"][0])
        learner.anomalous.copy_(start["prompts"][1])
    optimizer.load_state_dict(start["adam"])
    result.history, result.epoch_losses = start["history"], start["epoch_losses"]
    result.checkpoints, result.resumed_from = start["checkpoints"], start["resumed_from"]


def _no_batch(model: Backbone, grid: tuple[int, int], size: int) -> tuple[Tensor, Tensor]:
    """Empty ``(0, N, D)`` tokens and ``(0, 1, S, S)`` masks: a process with no share of a short last batch."""
    return (torch.zeros(0, grid[0] * grid[1], model.text_width, device=model.device),
            torch.zeros(0, 1, size, size, device=model.device))


def _batch(model: Backbone, dataset: Any, cache: FeatureCache | None, idx: list[int]) -> tuple[Tensor, Tensor]:
    """``patch_tokens (B, N, D)`` and ``mask (B, 1, S, S)`` of dataset items, from the cache or encoded now."""
    if cache is not None:
        batch = cache.get(dataset, idx)
        return batch["patch_tokens"], batch["mask"]
    items = [dataset[i] for i in idx]
    tokens = model.encode_features(torch.stack([it["image"] for it in items]))["patch_tokens"]
    return tokens, torch.stack([it["mask"] for it in items]).to(model.device)


def _start(folder: Path | None, model: Backbone, dataset: Any, config: TrainConfig, start: dict[str, Tensor],
           resume: bool, learner: PromptLearner, optimizer: torch.optim.Adam) -> TrainResult:
    """Fresh or resumed from the run folder's last checkpoint (into ``learner`` and ``optimizer``).

    Under torchrun rank 0 opens the run folder (a refusal there stops every process) and every
    process then starts from rank 0's state.
    """
    resumed = None
    if folder is not None:
        resumed = distributed.main_only(run_folder.open_run, folder, model, dataset, config, start, resume=resume,
                                        learner=learner, optimizer=optimizer)
    resumed = resumed or run_folder.Resumed()
    result = TrainResult(learner, history=resumed.history, epoch_losses=resumed.epoch_losses,
                         checkpoints=resumed.checkpoints, resumed_from=resumed.epochs_done)
    if distributed.world()[1] > 1:
        _share_start(learner, optimizer, result, model)
    return result


def _feature_cache(model: Backbone, dataset: Any, config: TrainConfig, folder: Path | None,
                   progress: bool) -> FeatureCache | None:
    """The frozen-feature cache ``config.cache`` asks for (None for ``"none"``)."""
    if config.cache == "none":
        return None
    where = config.cache
    grid = model.patch_grid(int(dataset.image_size))
    if where == "auto":
        # L/14 at 518 px in fp16 is 2.8 MB per image: MVTec AD's 1,725 test images take 4.8 GB.
        per_image = grid[0] * grid[1] * model.text_width * (2 if config.cache_dtype == "float16" else 4)
        big = per_image * len(dataset) > MEMORY_CACHE_LIMIT
        where = "disk" if big and folder is not None else "memory"
    # Every process encodes and caches its own images (content-keyed files, written atomically).
    return FeatureCache(model, int(dataset.image_size),
                        folder=folder / "feature_cache" if where == "disk" and folder else None, progress=progress,
                        dtype=torch.float16 if config.cache_dtype == "float16" else torch.float32)


def _epoch_order(n: int, config: TrainConfig, epoch: int) -> Tensor:
    """The ``(n,)`` item order of an epoch; a shuffle depends only on ``(seed, epoch)``, so resumes repeat it."""
    if config.shuffle:
        return torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
    return torch.arange(n)  # the authors' loader: dataset order, the same every epoch


def train_prompts(model: Backbone, dataset: Any, config: TrainConfig | None = None,
                  out_dir: str | os.PathLike | None = None, *, resume: bool = True, cache: FeatureCache | None = None,
                  progress: bool = True, on_step: Callable[[dict[str, float]], None] | None = None,
                  initial_prompts: tuple[Tensor, Tensor] | None = None) -> TrainResult:
    """Train the pixel prompts on a dataset's images and masks (the whole split, normal images included).

    Args:
        model: frozen backbone (only the prompts train).
        dataset: items with ``image (3, S, S)`` and ``mask (1, S, S)``, e.g. an
            :class:`~tipsomaly_lite.data.datasets.AnomalyDataset` (the paper trains on MVTec AD's test split).
        config: hyper-parameters (default: the paper's).
        out_dir: run folder for config, history and per-epoch checkpoints
            (:mod:`~tipsomaly_lite.method.run_folder`); None keeps nothing on disk.
        resume: continue from the last checkpoint in ``out_dir`` when there is one.
        cache: a :class:`FeatureCache` to reuse (e.g. across runs); by default one is made as
            ``config.cache`` says.
        progress: progress bars.
        on_step: called after every step with ``{"epoch", "step", "loss", "focal", "dice_anomalous",
            "dice_normal"}`` (the loss and its three terms; for live plots).
        initial_prompts: ``(normal (n, D), anomalous (n, D))`` to start from instead of the seeded
            random start (e.g. the authors' starting prompts, or another run's; ``n`` must equal
            ``config.n_tokens``). Ignored when resuming from a checkpoint.
    Returns:
        :class:`TrainResult` with the learner, the loss history (the loss and its terms per step)
        and the checkpoint paths.
    Raises:
        ValueError: the run folder is being trained by another process (it is locked while
            training), or it holds a run made with other data, classes, image size, backbone
            weights or settings (pass ``resume=False`` or use another folder), or the loss or the
            prompts became NaN/inf (nothing of that epoch is saved).
    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    # Under torchrun only rank 0 writes the run folder (and holds its lock); see _train_prompts.
    with run_folder.locked_run(None if out_dir is None or not distributed.is_main() else Path(out_dir)):
        return _train_prompts(model, dataset, config, out_dir, resume=resume, cache=cache, progress=progress,
                              on_step=on_step, initial_prompts=initial_prompts)


def _train_prompts(model: Backbone, dataset: Any, config: TrainConfig | None = None,
                   out_dir: str | os.PathLike | None = None, *, resume: bool = True, cache: FeatureCache | None = None,
                   progress: bool = True, on_step: Callable[[dict[str, float]], None] | None = None,
                   initial_prompts: tuple[Tensor, Tensor] | None = None) -> TrainResult:
    """:func:`train_prompts` once the run folder is locked."""
    config = config or TrainConfig()
    if len(dataset) == 0:
        raise ValueError("train_prompts: the dataset is empty")
    start_time = time.perf_counter()
    size = int(dataset.image_size)
    grid = model.patch_grid(size)
    rank, world_size = distributed.world()
    folder = Path(out_dir) if out_dir is not None else None
    # The learnable prompts (Eq. 4) are the only parameters; the backbone stays frozen.
    start = _initial_prompts(initial_prompts, config.n_tokens)
    learner = PromptLearner(model, config.n_tokens, config.prompt_set, config.class_word,
                            generator=torch.Generator().manual_seed(config.seed), **start)
    optimizer = torch.optim.Adam([learner.normal, learner.anomalous], lr=config.lr, betas=config.betas)
    result = _start(folder, model, dataset, config, start, resume, learner, optimizer)
    if cache is None:
        cache = _feature_cache(model, dataset, config, folder, progress and rank == 0)
    if cache is not None and cache.image_size != size:
        raise ValueError(f"the feature cache is for {cache.image_size} px but the dataset gives {size} px")

    n_batches = (len(dataset) + config.batch_size - 1) // config.batch_size
    with flush_denormals():
        for epoch in range(result.resumed_from + 1, config.epochs + 1):
            order = _epoch_order(len(dataset), config, epoch)
            losses = []
            epoch_start = time.perf_counter()
            bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                       disable=not progress or rank != 0)
            for step in bar:
                batch = order[step * config.batch_size:(step + 1) * config.batch_size].tolist()
                idx = batch[rank::world_size]  # this process's share of the batch (all of it in one process)
                tokens, masks = _batch(model, dataset, cache, idx) if idx else _no_batch(model, grid, size)
                # docs/method.md §2.3: the batch's loss (Eq. 7), its gradient in the prompts, one Adam step.
                optimizer.zero_grad(set_to_none=True)
                terms: dict[str, float] = {}
                shared = {"batch_size": len(batch), "all_reduce": distributed.all_reduce} if world_size > 1 else {}
                loss = backward_step(learner, tokens, masks, model.scoring_rule, grid, terms, **shared)
                _stop_if_not_finite(f"the loss ({loss})", loss, epoch, step, folder)
                optimizer.step()
                _stop_if_not_finite("the prompts", torch.cat([learner.normal.detach(), learner.anomalous.detach()]),
                                    epoch, step, folder)
                row = {"epoch": epoch, "step": len(result.history) + 1, "loss": loss, **terms}
                result.history.append(row)
                losses.append(row["loss"])
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if on_step is not None:
                    on_step(row)
            result.epoch_losses.append(float(np.mean(losses)))
            result.epoch_seconds.append(time.perf_counter() - epoch_start)
            if folder is not None:  # rank 0 writes; a failure there (a full disk) stops every process
                distributed.main_only(run_folder.save_epoch, folder, epoch, learner, optimizer, result.history,
                                      result.epoch_losses)
                result.checkpoints.append(run_folder.checkpoint_path(folder, epoch))
    result.seconds = time.perf_counter() - start_time
    return result
