"""The run folder of a prompt-training run: keep it on disk so that it resumes exactly, and nothing else resumes.

A run folder holds::

    config.json                          everything needed to reproduce the run (settings, data, model)
    history.json                         the loss and its three terms at every step, each epoch's mean loss
    checkpoints/epoch_NNN.safetensors    prompts + Adam state + the step rows so far (no pickle)
    train.lock                           held while a trainer uses the folder

Every file is written atomically. Fail closed: a run is resumed only when the data, classes,
image size, backbone weights (fingerprint) and training settings recorded in its ``config.json``
match this call's (:func:`open_run`); the folder is locked (:func:`locked_run`, released by the OS
when the trainer exits or dies) so a second trainer is refused; each checkpoint carries the loss
rows of every step so far, so a kill between any two writes loses no step; and a checkpoint with
NaN or inf is neither written nor read.

The training loop (:func:`tipsomaly_lite.method.training.train_prompts`) calls :func:`locked_run`,
:func:`open_run` once and :func:`save_epoch` after every epoch; :func:`load_trained_prompts` reads
the prompts back for evaluation. See docs/method.md §2.3.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

from tipsomaly_lite import __version__, distributed
from tipsomaly_lite.backbones.base import Backbone, attention_of
from tipsomaly_lite.io.atomic import LockedError, atomic_file, file_lock
from tipsomaly_lite.io.jsonfile import read_json
from tipsomaly_lite.method.prompt_learner import PromptLearner

#: A :class:`~tipsomaly_lite.method.training.TrainConfig` (a dataclass; named loosely here because training
#: imports this module, and a module never imports its importer).
TrainSettings = Any

__all__ = ["CHECKPOINT_FORMAT", "Resumed", "checkpoint_path", "latest_checkpoint", "load_trained_prompts",
           "locked_run", "open_run", "save_epoch"]

#: The ``format`` entry of a checkpoint's metadata; any other file is refused.
CHECKPOINT_FORMAT = "tipsomaly_lite.method.prompts/1"
_CKPT = re.compile(r"epoch_(\d+)\.safetensors$")

#: Training settings (:class:`TrainConfig` fields) that must match for a run to be resumed. The epochs
#: may grow, and the cache settings may change freely: they change where features are kept, not the run.
_RESUME_SETTINGS = ("lr", "betas", "batch_size", "seed", "n_tokens", "prompt_set", "class_word", "shuffle")
#: Facts of config.json about the data, the model and the start that must match as well.
_RESUME_FACTS = ("dataset", "dataset_key", "classes", "samples", "n_images", "image_size", "backbone", "variant",
                 "backbone_fingerprint", "dtype", "prompt_sentences", "initial_prompts")
#: What each recorded field is, in words, for the one line that refuses a mismatch.
FIELD_WORDS = {"lr": "the learning rate", "betas": "Adam's betas", "batch_size": "the batch size", "seed": "the seed",
               "n_tokens": "the number of prompt vectors", "prompt_set": "the prompt set's name",
               "class_word": "the class word", "shuffle": "the shuffling", "dataset": "the dataset folder",
               "dataset_key": "the dataset key", "classes": "the classes", "samples": "the training images "
               "(paths, masks, labels)", "n_images": "the number of images", "image_size": "the image size",
               "backbone": "the backbone family", "variant": "the backbone variant",
               "backbone_fingerprint": "the backbone's weights", "dtype": "the vision tower's dtype",
               "prompt_sentences": "the prompt set's sentences", "initial_prompts": "the starting prompts",
               "scoring": "the scoring rule"}
#: Fields recorded as digests or long lists: said to differ, not printed.
_NOT_PRINTED = ("samples", "backbone_fingerprint", "prompt_sentences", "initial_prompts", "classes")
_HOW = "pass --no-resume (resume=False) to start again in this folder, or use a new --out folder"


@dataclass
class Resumed:
    """What :func:`open_run` found in a run folder (all empty for a fresh start)."""

    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # every step row of epochs 1..epochs_done
    epoch_losses: list[float] = field(default_factory=list)  # mean loss of epochs 1..epochs_done
    checkpoints: list[Path] = field(default_factory=list)


# ---- checkpoints ----------------------------------------------------------------------------------

def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    """``run_dir/checkpoints/epoch_NNN.safetensors``, where the checkpoint of ``epoch`` is written."""
    return run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The highest-epoch ``checkpoints/epoch_NNN.safetensors`` of a run folder, or None.

    Taught in notebooks/04_learnable_pixel_prompts.ipynb.
    """
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / "checkpoints").glob("epoch_*.safetensors")
             if (m := _CKPT.search(p.name))]
    return max(found)[1] if found else None


def _save_checkpoint(run_dir: Path, epoch: int, learner: PromptLearner, optimizer: torch.optim.Adam,
                     history: list[dict[str, float]] | None = None) -> Path:
    """Write the prompts ``(n, D)`` each and the Adam state of ``epoch``, plus the step rows so far.

    Raises:
        ValueError: a prompt or Adam tensor holds NaN or inf (nothing is written).
    """
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
    path = checkpoint_path(run_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(data)
    return path


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], int]:
    """The tensors of a checkpoint (``normal``, ``anomalous``, ``adam.{i}.{name}``) and its epoch.

    Raises:
        ValueError: not a readable safetensors file, not a prompt checkpoint, or NaN/inf prompts.
    """
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
    """The trained prompts of a run folder (its last epoch) or of one checkpoint file.

    Args:
        path: a run folder or a ``epoch_NNN.safetensors`` file.
    Returns:
        ``(normal (n, D), anomalous (n, D))``, float32.
    Raises:
        FileNotFoundError: no such file, or a folder without checkpoints.
        ValueError: not a prompt checkpoint, or its prompts hold NaN or inf.
    """
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


# ---- history --------------------------------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def save_epoch(run_dir: Path, epoch: int, learner: PromptLearner, optimizer: torch.optim.Adam,
               history: list[dict[str, float]], epoch_losses: list[float]) -> Path:
    """Write history.json, then the epoch's checkpoint; returns the checkpoint's path.

    history.json first: a kill between the two leaves it ahead of the checkpoint (a resume drops
    the extra rows), never behind; the checkpoint also carries the rows itself.
    """
    _write_json(run_dir / "history.json", {"steps": history, "epoch_losses": epoch_losses})
    return _save_checkpoint(run_dir, epoch, learner, optimizer, history)


def _epoch_losses(history: list[dict[str, float]], epochs: int) -> list[float]:
    """Mean loss of each epoch 1..epochs, from the step rows."""
    return [float(np.mean([r["loss"] for r in history if r["epoch"] == e])) for e in range(1, epochs + 1)]


def _resumed_history(run_dir: Path, checkpoint: Path, done: int, n_batches: int) -> list[dict[str, float]]:
    """Every step row of epochs 1..done: from the checkpoint itself, else (older checkpoints) history.json.

    Raises:
        ValueError: some epoch does not have its ``n_batches`` rows.
    """
    rows = _checkpoint_history(checkpoint)
    if rows is None and (run_dir / "history.json").is_file():
        rows = read_json(run_dir / "history.json", what="training history")["steps"]
    rows = [row for row in rows or [] if row["epoch"] <= done]
    counts = [sum(1 for r in rows if r["epoch"] == e) for e in range(1, done + 1)]
    if counts != [n_batches] * done:
        raise ValueError(f"{run_dir / 'history.json'}: the loss history of epochs 1..{done} is incomplete "
                         f"({counts} steps, expected {n_batches} each); pass --no-resume (resume=False) to "
                         "start again, or use a new --out folder")
    return rows


# ---- the run's config and the resume checks -------------------------------------------------------

def _samples_digest(dataset: Any) -> str | None:
    """A short hash of the dataset's item list (image, mask, label), or None for other datasets."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return None
    rows = [[row.get("img_path"), row.get("mask_path"), row.get("anomaly")] for row in samples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _describe_start(start: dict[str, Tensor], seed: int) -> str:
    """How the prompts started, for config.json: the seeded random start or a digest of the given ones."""
    if not start:
        return f"random: randn * 0.02 from torch.Generator().manual_seed({seed})"
    digest = hashlib.sha256(b"".join(start[k].numpy().tobytes() for k in ("normal", "anomalous"))).hexdigest()
    return f"given: sha256 {digest[:16]} of the float32 (normal, anomalous)"


def scoring_kind(record: dict[str, Any]) -> str:
    """The scoring rule's kind a run recorded; runs recorded before rules were (all softmax) count as softmax."""
    rule = record.get("scoring_rule")
    return str(rule.get("kind", "softmax")) if isinstance(rule, dict) else "softmax"


def differences(saved: dict[str, Any], ours: dict[str, Any], fields: Iterable[str]) -> str:
    """The recorded ``fields`` that differ between two records, in words (``""`` when none do).

    Digests and long lists are said to differ; short values are shown as ``then -> now``.
    """
    same = lambda a, b: json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # tuples == lists
    said = []
    for k in fields:
        a, b = saved.get(k, "(not recorded)"), ours.get(k)
        if not same(a, b):
            words = FIELD_WORDS.get(k, k)
            said.append(f"{words} differ" if k in _NOT_PRINTED else f"{words}: {a!r} then, {b!r} now")
    return "; ".join(said)


def _run_config(model: Backbone, dataset: Any, config: TrainSettings, start: dict[str, Tensor]) -> dict[str, Any]:
    """config.json: the training settings, the data, the model, the prompt sentences (by content) and the
    versions."""
    from tipsomaly_lite.method.prompts import get_prompt_set

    classes = getattr(dataset, "classes", None)
    sentences = {k: v for k, v in get_prompt_set(config.prompt_set).to_dict().items() if k != "name"}
    return {"train": asdict(config), "backbone": model.family, "variant": model.variant,
            "dtype": str(model.dtype).removeprefix("torch."), "prompt_sentences": sentences,
            "model_source": model.source, "backbone_fingerprint": model.fingerprint(),
            "offline_model": model.is_offline, "image_size": int(dataset.image_size),
            "dataset": str(getattr(dataset, "root", "?")), "dataset_key": getattr(dataset, "key", None),
            "classes": None if classes is None else list(classes), "samples": _samples_digest(dataset),
            "n_images": len(dataset), "temperature": model.temperature,
            "scoring_rule": model.scoring_rule.describe(), "tipsomaly_lite": __version__,
            "torch": torch.__version__, "python": platform.python_version(),
            "initial_prompts": _describe_start(start, config.seed),
            "world_size": distributed.world()[1],  # processes sharing each batch (may change on resume)
            "attention": attention_of(model)}  # chosen per machine (backbones/tips/vision.py); not compared on resume


def _check_resumable(run_dir: Path, ours: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose recorded data, model or settings differ from this call's."""
    path = run_dir / "config.json"
    try:
        saved = read_json(path, what="run config")
        saved_train = saved["train"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot resume: the run's config is missing or unreadable "
                         f"({type(exc).__name__}: {exc}); {_HOW}") from exc
    rules = differences({"scoring": scoring_kind(saved)}, {"scoring": scoring_kind(ours)}, ["scoring"])
    shown = "; ".join(d for d in (differences(saved_train, ours["train"], _RESUME_SETTINGS),
                                  differences(saved, ours, _RESUME_FACTS), rules) if d)
    if shown:
        raise ValueError(f"{run_dir}: cannot resume, this run was made with other settings, data or model ({shown}); "
                         f"{_HOW}")


# ---- opening and locking the folder ---------------------------------------------------------------

@contextlib.contextmanager
def locked_run(run_dir: Path | None) -> Iterator[None]:
    """Hold the run folder's ``train.lock`` (nothing for None): a second trainer is refused, not interleaved.

    Raises:
        ValueError: another process holds the lock.
    """
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


def open_run(run_dir: Path, model: Backbone, dataset: Any, config: TrainSettings, start: dict[str, Tensor], *,
             resume: bool, learner: PromptLearner, optimizer: torch.optim.Adam) -> Resumed:
    """Prepare the run folder: clear it (``resume=False``) or resume its last checkpoint; write config.json.

    Args:
        run_dir: the run folder (created when missing).
        model: the frozen backbone (its variant and weight fingerprint are recorded and checked).
        dataset: the training items (their root, classes and item list are recorded and checked).
        config: the run's settings.
        start: the given initial prompts ``{"normal" (n, D), "anomalous" (n, D)}``, or empty for the
            seeded random start (recorded in config.json).
        resume: continue from the last checkpoint when there is one; False deletes the old ones.
        learner: receives the resumed prompts.
        optimizer: receives the resumed Adam state.
    Returns:
        The epochs already done and their step rows (empty for a fresh start).
    Raises:
        ValueError: the folder holds a run made with other data, model or settings, or a damaged
            checkpoint, config or history.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh start must not leave older epochs that a later resume would pick up
        for old in (run_dir / "checkpoints").glob("epoch_*.safetensors"):
            old.unlink()
        (run_dir / "history.json").unlink(missing_ok=True)
    last = latest_checkpoint(run_dir)
    run_config = _run_config(model, dataset, config, start)
    resumed = Resumed()
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
        history = _resumed_history(run_dir, last, done, n_batches=-(-len(dataset) // config.batch_size))
        resumed = Resumed(done, history, _epoch_losses(history, done),
                          sorted((run_dir / "checkpoints").glob("epoch_*.safetensors")))
    _write_json(run_dir / "config.json", run_config)
    return resumed
