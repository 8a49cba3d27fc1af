"""Training the learnable pixel prompts on an auxiliary dataset, with checkpoints and resume (docs/method.md §2.3).

One step: text features from the :class:`~tipsomaly_lite.method.prompt_learner.PromptLearner` ->
patch probabilities for the (cached, frozen) patch tokens -> bilinear upsampling to the input
size -> ``Focal + Dice(anomalous, mask) + Dice(normal, 1 - mask)`` -> Adam on the prompts only.

A run folder holds ``config.json`` (everything needed to reproduce it), ``history.json`` (the
loss of every step) and ``checkpoints/epoch_NNN.safetensors`` (prompts + Adam state, no pickle),
all written atomically. Calling :func:`train_prompts` again on the same folder resumes after the
last checkpoint; the data order of an epoch depends only on ``(seed, epoch)``, so a resumed run
equals an uninterrupted one.

Fail closed: a run is resumed only when the data, classes, image size, backbone weights
(fingerprint) and settings recorded in its ``config.json`` match; the folder is locked
(``train.lock``, released by the OS when the trainer exits or dies) so a second trainer is refused;
each checkpoint carries the loss rows of every step so far, so a kill at any point loses no step;
and a NaN/inf loss or prompt stops training before anything of that epoch is saved.

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
import hashlib
import json
import math
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

from tipsomaly_lite import __version__, distributed
from tipsomaly_lite.io.atomic import LockedError, atomic_file, file_lock
from tipsomaly_lite.method.feature_cache import FeatureCache
from tipsomaly_lite.method.losses import LOSS_TERMS, fused_segmentation_loss, segmentation_loss
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

    ``shuffle`` False (default) visits the images in dataset order, the same every epoch, as the
    authors' training loader does; True reshuffles every epoch (the order depends only on
    ``(seed, epoch)``, so a resumed run equals an uninterrupted one). See docs/method.md §2.3.

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

    # What must match for a run folder to be resumed (the cache settings may change freely).
    _RESUME_KEYS = ("lr", "betas", "batch_size", "seed", "n_tokens", "prompt_set", "class_word", "shuffle")


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
                  grid: tuple[int, int], terms: dict[str, float] | None = None, *, batch_size: int | None = None,
                  all_reduce: Callable[[Tensor], Any] | None = None) -> float:
    """:func:`training_loss` and its backward pass, image by image; returns the loss.

    The same value and prompt gradients as ``training_loss(...).backward()`` (the loss is a mean
    of per-image terms), but the 518 x 518 maps of one image at a time stay in the CPU cache
    instead of eight at once in memory, the bilinear upsampling is done as two small matrix
    products (whose backward pass is much faster than ``upsample_bilinear2d``'s) and the loss by
    :func:`~tipsomaly_lite.method.losses.fused_segmentation_loss` (same value and gradient, fewer
    passes). The text tower runs once per step; its gradient is collected on a detached copy of
    the text features and pushed through once.

    ``terms``, when given, receives the batch's three loss terms (``focal``, ``dice_anomalous``,
    ``dice_normal``; they add up to the returned loss).

    Several processes (:mod:`tipsomaly_lite.distributed`) each hold a share of one batch: they pass
    the whole batch's ``batch_size`` (the mean's denominator; default: this call's ``B``, which may
    be 0 for a process with no share) and ``all_reduce`` (sums a tensor over the processes in
    place). The ``(2, D)`` gradient of the text features and the loss terms are then summed before
    the text tower's backward pass, so every process gets the whole batch's loss and prompt
    gradient, as one process would (up to float summation order).
    """
    b, n, _ = patch_tokens.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold {n} patches")
    denominator = b if batch_size is None else batch_size
    rows, cols = (bilinear_matrix(g, s).to(patch_tokens) for g, s in zip(grid, masks.shape[-2:]))
    text = learner()
    text_leaf = text.detach().requires_grad_()
    total = 0.0
    per_image = dict.fromkeys(LOSS_TERMS, 0.0)
    for i in range(b):
        # Only the anomalous channel: the normal one is 1 - it (see fused_segmentation_loss).
        probs = patch_probabilities(patch_tokens[i:i + 1], text_leaf, temperature)[..., 1]
        probs = rows @ probs.reshape(1, *grid) @ cols.T  # = F.interpolate(bilinear), as two GEMMs
        loss = fused_segmentation_loss(probs, masks[i:i + 1], terms=per_image) / denominator
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


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-epoch ``checkpoints/epoch_NNN.safetensors`` of a run folder, or None.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / "checkpoints").glob("epoch_*.safetensors")
             if (m := _CKPT.search(p.name))]
    return max(found)[1] if found else None


def _checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors"


def _save_epoch(run_dir: Path, epoch: int, learner: PromptLearner, optimizer: torch.optim.Adam,
                result: TrainResult) -> None:
    """history.json, then the epoch's checkpoint.

    history.json first: a kill between the two leaves it ahead of the checkpoint (a resume drops
    the extra rows), never behind; the checkpoint also carries the rows itself.
    """
    _write_json(run_dir / "history.json", {"steps": result.history, "epoch_losses": result.epoch_losses})
    _save_checkpoint(run_dir, epoch, learner, optimizer, result.history)


def _save_checkpoint(run_dir: Path, epoch: int, learner: PromptLearner, optimizer: torch.optim.Adam,
                     history: list[dict[str, float]] | None = None) -> Path:
    tensors = {"normal": learner.normal.detach().cpu().contiguous(),
               "anomalous": learner.anomalous.detach().cpu().contiguous()}
    for i, param in enumerate((learner.normal, learner.anomalous)):
        for name, value in optimizer.state.get(param, {}).items():
            tensors[f"adam.{i}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    for name, value in tensors.items():  # a NaN checkpoint would poison every later resume
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"epoch {epoch}: {name} is not finite; no checkpoint written")
    metadata = {"format": CHECKPOINT_FORMAT, "epoch": str(epoch)}
    if history is not None:
        # The steps so far travel with the prompts, so a kill between this file and history.json loses none.
        metadata["history"] = json.dumps(history)
    data = save_safetensors_bytes(tensors, metadata=metadata)
    path = _checkpoint_path(run_dir, epoch)
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
    for name in ("normal", "anomalous"):
        if not bool(torch.isfinite(tensors[name].float()).all()):
            raise ValueError(f"{path}: the {name} prompts hold NaN or inf; refused")
    return tensors, int(meta.get("epoch", 0))


def _checkpoint_history(path: Path) -> list[dict[str, float]] | None:
    """The step rows saved inside a checkpoint (None for checkpoints written without them)."""
    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("history")
    return None if text is None else json.loads(text)


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


def _samples_digest(dataset: Any) -> str | None:
    """A short hash of the dataset's item list (image, mask, label), or None for other datasets."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    rows = [[row.get("img_path"), row.get("mask_path"), row.get("anomaly")] for row in samples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _run_config(model: Backbone, dataset: Any, config: TrainConfig) -> dict[str, Any]:
    classes = getattr(dataset, "classes", None)
    return {"train": asdict(config), "backbone": model.family, "variant": model.variant,
            "model_source": model.source, "backbone_fingerprint": model.fingerprint(),
            "offline_model": model.is_offline, "image_size": int(dataset.image_size),
            "dataset": str(getattr(dataset, "root", "?")), "dataset_key": getattr(dataset, "key", None),
            "classes": None if classes is None else list(classes), "samples": _samples_digest(dataset),
            "n_images": len(dataset), "temperature": model.temperature, "tipsomaly_lite": __version__,
            "torch": torch.__version__, "python": platform.python_version()}


#: What must match between a run folder's config.json and this call for the run to be resumed
#: (besides the training settings of TrainConfig._RESUME_KEYS; the epochs and cache may change).
_RESUME_FACTS = ("dataset", "dataset_key", "classes", "samples", "n_images", "image_size", "variant",
                 "backbone_fingerprint")


def _check_resumable(run_dir: Path, ours: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose recorded data, model or settings differ from this call's."""
    how = "pass --no-resume (resume=False) to start again in this folder, or use a new --out folder"
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text())
        saved_train = saved["train"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot resume: the run's config is missing or unreadable "
                         f"({type(exc).__name__}: {exc}); {how}") from exc
    same = lambda a, b: json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # tuples == lists
    diff = {k: (saved_train.get(k), ours["train"][k]) for k in TrainConfig._RESUME_KEYS
            if not same(saved_train.get(k), ours["train"][k])}
    diff.update({k: (saved.get(k, "(not recorded)"), ours[k]) for k in _RESUME_FACTS if not same(saved.get(k), ours[k])})
    if diff:
        shown = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"{run_dir}: cannot resume, this run was made with other settings, data or model ({shown}); "
                         f"{how}")


def _epoch_losses(history: list[dict[str, float]], epochs: int) -> list[float]:
    """Mean loss of each epoch 1..epochs, from the step rows."""
    return [float(np.mean([r["loss"] for r in history if r["epoch"] == e])) for e in range(1, epochs + 1)]


@contextlib.contextmanager
def _locked_run(run_dir: Path | None) -> Iterator[None]:
    """Hold the run folder's lock: a second training on the same folder is refused, not interleaved."""
    if run_dir is None:
        yield
        return
    try:
        lock = file_lock(run_dir / "train.lock", wait=False, what="this run folder")
        lock.__enter__()
    except LockedError as exc:
        raise ValueError(f"{exc.args[0]} (another `tipsomaly train` on the same --out?)") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _stop_if_not_finite(what: str, value: float | Tensor, epoch: int, step: int, run_dir: Path | None) -> None:
    """Stop training with a clear error when a loss or the prompts hold NaN or inf (nothing is saved)."""
    ok = math.isfinite(value) if isinstance(value, float) else bool(torch.isfinite(value).all())
    if ok:
        return
    last = latest_checkpoint(run_dir) if run_dir is not None else None
    kept = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written"
    raise ValueError(f"training diverged at epoch {epoch}, step {step + 1}: {what} is not finite (NaN or inf); "
                     f"stopped, {kept}. Lower the learning rate (--lr) or check the images and masks")


def _resumed_history(run_dir: Path, checkpoint: Path, done: int, n_batches: int) -> list[dict[str, float]]:
    """Every step row of epochs 1..done: from the checkpoint itself, else (older checkpoints) history.json."""
    rows = _checkpoint_history(checkpoint)
    if rows is None and (run_dir / "history.json").is_file():
        rows = json.loads((run_dir / "history.json").read_text())["steps"]
    rows = [row for row in rows or [] if row["epoch"] <= done]
    counts = [sum(1 for r in rows if r["epoch"] == e) for e in range(1, done + 1)]
    if counts != [n_batches] * done:
        raise ValueError(f"{run_dir / 'history.json'}: the loss history of epochs 1..{done} is incomplete "
                         f"({counts} steps, expected {n_batches} each); pass --no-resume (resume=False) to "
                         "start again, or use a new --out folder")
    return rows


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


def _describe_start(start: dict[str, Tensor], seed: int) -> str:
    """How the prompts started, for config.json: the seeded random start or a digest of the given ones."""
    if not start:
        return f"random: randn * 0.02 from torch.Generator().manual_seed({seed})"
    digest = hashlib.sha256(b"".join(start[k].numpy().tobytes() for k in ("normal", "anomalous"))).hexdigest()
    return f"given: sha256 {digest[:16]} of the float32 (normal, anomalous)"


def _open_run(run_dir: Path, model: Backbone, dataset: Any, config: TrainConfig, start: dict[str, Tensor],
              resume: bool, learner: PromptLearner, optimizer: torch.optim.Adam, result: TrainResult) -> int:
    """Prepare the run folder: clear it (``resume=False``) or resume its last checkpoint; write config.json.

    Returns:
        The epochs already done (0 for a fresh start); ``learner``, ``optimizer`` and ``result``
        hold the resumed state.
    """
    done = 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh start must not leave older epochs that a later resume would pick up
        for old in (run_dir / "checkpoints").glob("epoch_*.safetensors"):
            old.unlink()
        (run_dir / "history.json").unlink(missing_ok=True)
    last = latest_checkpoint(run_dir)
    run_config = _run_config(model, dataset, config)
    run_config["initial_prompts"] = _describe_start(start, config.seed)
    run_config["world_size"] = distributed.world()[1]  # processes sharing each batch (may change on resume)
    if last is not None:
        _check_resumable(run_dir, run_config)
        tensors, done = _read_checkpoint(last)
        with torch.no_grad():
            learner.normal.copy_(tensors["normal"])
            learner.anomalous.copy_(tensors["anomalous"])
        for i, param in enumerate((learner.normal, learner.anomalous)):
            state = {k.split(".")[-1]: v if k.endswith(".step") else v.to(param.device)
                     for k, v in tensors.items() if k.startswith(f"adam.{i}.")}
            if state:
                optimizer.state[param] = state
        result.history = _resumed_history(run_dir, last, done, n_batches=-(-len(dataset) // config.batch_size))
        result.epoch_losses = _epoch_losses(result.history, done)
        result.checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.safetensors"))
        result.resumed_from = done
    _write_json(run_dir / "config.json", run_config)
    return done


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
        out_dir: run folder for config, history and per-epoch checkpoints; None keeps nothing on disk.
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
    with _locked_run(None if out_dir is None or not distributed.is_main() else Path(out_dir)):
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
    start = _initial_prompts(initial_prompts, config.n_tokens)
    learner = PromptLearner(model, config.n_tokens, config.prompt_set, config.class_word,
                            generator=torch.Generator().manual_seed(config.seed), **start)
    optimizer = torch.optim.Adam([learner.normal, learner.anomalous], lr=config.lr, betas=config.betas)
    result = TrainResult(learner)
    done = 0
    if folder is not None:  # rank 0 opens the run folder; a refusal there stops every process
        done = distributed.main_only(_open_run, folder, model, dataset, config, start, resume, learner, optimizer,
                                     result) or 0
    if world_size > 1:
        _share_start(learner, optimizer, result, model)
        done = result.resumed_from
    if cache is None and config.cache != "none":
        where = config.cache
        if where == "auto":
            # L/14 at 518 px in fp16 is 2.8 MB per image: MVTec AD's 1,725 test images take 4.8 GB.
            per_image = grid[0] * grid[1] * model.text_width * (2 if config.cache_dtype == "float16" else 4)
            big = per_image * len(dataset) > MEMORY_CACHE_LIMIT
            where = "disk" if big and folder is not None else "memory"
        # Every process encodes and caches its own images (content-keyed files, written atomically).
        cache = FeatureCache(model, size, folder=folder / "feature_cache" if where == "disk" and folder else None,
                             progress=progress and rank == 0,
                             dtype=torch.float16 if config.cache_dtype == "float16" else torch.float32)
    if cache is not None and cache.image_size != size:
        raise ValueError(f"the feature cache is for {cache.image_size} px but the dataset gives {size} px")

    n_batches = (len(dataset) + config.batch_size - 1) // config.batch_size
    with flush_denormals():
        for epoch in range(done + 1, config.epochs + 1):
            if config.shuffle:
                order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed + epoch))
            else:  # the authors' loader: dataset order, the same every epoch
                order = torch.arange(len(dataset))
            losses = []
            epoch_start = time.perf_counter()
            bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                       disable=not progress or rank != 0)
            for step in bar:
                batch = order[step * config.batch_size:(step + 1) * config.batch_size].tolist()
                idx = batch[rank::world_size]  # this process's share of the batch (all of it in one process)
                tokens, masks = _batch(model, dataset, cache, idx) if idx else _no_batch(model, grid, size)
                optimizer.zero_grad(set_to_none=True)
                terms: dict[str, float] = {}
                shared = {"batch_size": len(batch), "all_reduce": distributed.all_reduce} if world_size > 1 else {}
                loss = backward_step(learner, tokens, masks, model.temperature, grid, terms, **shared)
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
                distributed.main_only(_save_epoch, folder, epoch, learner, optimizer, result)
                result.checkpoints.append(_checkpoint_path(folder, epoch))
    result.seconds = time.perf_counter() - start_time
    return result
