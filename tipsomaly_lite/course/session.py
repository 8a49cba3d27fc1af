"""What every notebook of the course starts with: the model, the data, the seed and the device.

:func:`start` decides the mode once. *Real* mode loads TIPS and
reads the prepared benchmark datasets. *Offline* mode loads the tiny toy TIPS and generated
toy datasets, and says loudly that its numbers are meaningless. Offline is chosen when
``TIPSOMALY_OFFLINE=1`` (CI forces it), when the notebook asks for it, or automatically when
the weights are neither cached nor downloadable.

No surprise downloads: outside Colab, weights that are not cached are downloaded only when asked
(``start(download=True)``, a notebook's ``DOWNLOAD = True``, or ``TIPSOMALY_DOWNLOAD=1``);
otherwise the course starts offline and says how to get them (``tipsomaly fetch l14-hr``).
A real model on a CPU is allowed, with a note on how slow it will be.

A real model with a dataset that is not prepared falls back to the toy data for that dataset
and says so: the figures still teach, the numbers are not the paper's.

Heavy results are kept between notebooks under ``$TIPSOMALY_HOME/course`` (trained prompts), so
a later notebook loads what an earlier one computed instead of recomputing it.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.io.download import DownloadError, cache_dir
from tipsomaly_lite.offline import MEANINGLESS_TAG, offline_forced
from tipsomaly_lite.backbones.base import Backbone
from tipsomaly_lite.backbones import get_family, load_backbone
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.eval.protocol import prompts_trained_on

#: Where the course is published (Colab badges and the pinned install point here). The one place
#: that names it: tests/test_notebooks.py checks every badge and setup cell against it and
#: the package's ``__version__`` (the release tag is ``v<version>``).
REPOSITORY = "tipsomaly-lite/tipsomaly_lite"
DATA_ENV = "TIPSOMALY_DATA"
#: ``1`` allows :func:`start` to download missing weights outside Colab (as ``download=True``).
DOWNLOAD_ENV = "TIPSOMALY_DOWNLOAD"
#: Approximate download sizes of the registry variants (vision + text npz), for the messages.
DOWNLOAD_GB = {"s14-hr": 0.3, "b14-hr": 0.6, "l14-hr": 2.0, "v2-b14": 0.6, "v2-l14": 2.0}


def repository_url() -> str:
    """``https://github.com/<REPOSITORY>``: where the course is published."""
    return f"https://github.com/{REPOSITORY}"


#: The folder under notebooks/ holding the generated student copies (stubs for the solutions).
STUDENT_FOLDER = "student"


def colab_badge_url(notebook: str, student: bool = False) -> str:
    """The Colab address of a course notebook, e.g. ``colab_badge_url("00_setup")``.

    Args:
        notebook: the name without ``.ipynb``.
        student: the student copy (``notebooks/student/``, exercises as stubs) instead of the
            teacher's notebook with the solutions.
    """
    folder = f"notebooks/{STUDENT_FOLDER}" if student else "notebooks"
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/{folder}/{notebook}.ipynb"


def pinned_install() -> str:
    """The pip requirement a notebook installs when the package is missing: this version's release tag."""
    from tipsomaly_lite import __version__

    return f"tipsomaly_lite @ git+{repository_url()}@v{__version__}"


def download_allowed(download: bool | None = None) -> bool:
    """May the course download missing weights now? ``download`` if given, else Colab or ``TIPSOMALY_DOWNLOAD=1``.

    Args:
        download: the notebook's ``DOWNLOAD`` parameter (None: decide from the environment).
    Returns:
        True when a missing checkpoint may be fetched.
    """
    if download is not None:
        return bool(download)
    if os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    return in_colab()
#: The paper's cross-dataset protocol: the dataset a test set's prompts are trained on.
#: Toy stand-ins (seeds differ, so training and test images never coincide).
TOY_SEEDS = {"test": 0, "aux": 1}
TOY_IMAGE_SIZE = 128


def in_colab() -> bool:
    """True inside Google Colab.

    Taught in notebooks/00_setup.ipynb.
    """
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in sys.modules


def default_data_root() -> Path:
    """``$TIPSOMALY_DATA``, else ``$TIPSOMALY_HOME/data`` (``~/.cache/tipsomaly_lite/data``).

    Taught in notebooks/00_setup.ipynb.
    """
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else cache_dir() / "data"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Taught in notebooks/00_setup.ipynb.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Course:
    """The shared state of a notebook: model, data, seed, device and mode.

    Attributes:
        model: the loaded TIPS (a tiny toy model in offline mode).
        offline: True when numbers are meaningless (tiny model).
        device: where the model runs.
        seed: the seed every notebook starts from.
        image_size: input side in pixels (a multiple of 14).
        data_root: where prepared datasets live.
        test_key, aux_key: the evaluated dataset and the one the prompts train on (``toy`` offline).
        test_root, aux_root: their folders.
        aux_source: the auxiliary dataset the protocol asks for (``visa`` for MVTec AD), even when
            the toy data stands in for it; the released prompts are looked up by this name.
        notes: what was decided and why (printed by ``repr``).
    """

    model: Backbone
    offline: bool
    device: torch.device
    seed: int
    image_size: int
    data_root: Path
    test_key: str
    aux_key: str
    test_root: Path
    aux_root: Path
    aux_source: str = ""
    notes: list[str] = field(default_factory=list)

    def dataset(self, which: str = "test", *, split: str = "test",
                classes: list[str] | tuple[str, ...] | None = None) -> AnomalyDataset:
        """The evaluated (``which="test"``) or auxiliary (``"aux"``) dataset at :attr:`image_size`."""
        if which not in ("test", "aux"):
            raise ValueError(f"which must be 'test' or 'aux', got {which!r}")
        root, key = (self.test_root, self.test_key) if which == "test" else (self.aux_root, self.aux_key)
        return AnomalyDataset(root, split=split, image_size=self.image_size, classes=classes,
                              key=None if key.startswith("toy") else key)

    def with_auxiliary(self, key: str) -> "Course":
        """This course with another auxiliary dataset (prepared under :attr:`data_root`, else the toy stand-in).

        Used to get prompts trained on each source dataset of the cross-dataset protocol.
        """
        notes = list(self.notes)
        aux_key, aux_root = _dataset_root(self.data_root, key, "aux", self.offline, notes)
        return replace(self, aux_key=aux_key, aux_root=aux_root, aux_source=key, notes=notes)

    def with_backbone(self, model: Backbone) -> "Course":
        """This course on another backbone, at that backbone's own input size (same data, seed and device).

        Its prompts train into their own run folder (the folder name holds the weights' fingerprint).
        Taught in notebooks/08_backbones.ipynb.
        """
        return replace(self, model=model, image_size=model.image_size)

    @property
    def work_dir(self) -> Path:
        """Where the course keeps results between notebooks (``$TIPSOMALY_HOME/course/<mode>``)."""
        return cache_dir() / "course" / ("offline" if self.offline else self.model.variant)

    def run_dir(self, name: str = "prompts") -> Path:
        """A training run folder for this model (by weights and scoring rule), auxiliary dataset and size."""
        kind = self.model.scoring_rule.kind
        rule = "" if kind == "softmax" else f"-{kind}"  # SigLIP2's runs from before its sigmoid rule stay apart
        weights = self.model.fingerprint()[:8]
        return self.work_dir / "runs" / f"{name}-{self.aux_key}-{self.image_size}px-{weights}{rule}"

    def training_set(self, train_limit: int | None = None) -> tuple[AnomalyDataset, Path]:
        """The auxiliary images the prompts train on, and the run folder that keeps that training.

        Args:
            train_limit: keep a seeded spread of this many images over all classes (None: all).
        Returns:
            ``(dataset, run_dir)``; the same arguments always give the same images and folder, so
            a later notebook finds the run an earlier one trained.
        """
        data = self.dataset("aux")
        if train_limit is not None and train_limit < len(data):
            # A seeded spread over all classes, not the first class alone.
            keep = np.sort(np.random.default_rng(self.seed).permutation(len(data))[:train_limit])
            data.samples = [data.samples[i] for i in keep]
        return data, self.run_dir("prompts" if train_limit is None else f"prompts-{train_limit}images")

    def learned_prompts(self, *, epochs: int = 2, train_limit: int | None = None, progress: bool = True,
                        prefer_released: bool = True) -> tuple[tuple[Tensor, Tensor], str]:
        """Pixel prompts for the test dataset under the paper's protocol, loaded when they exist.

        Real mode with the paper's L/14 first tries the authors' released prompts (trained on the
        auxiliary dataset, which then need not be prepared here). Otherwise they are trained here on the auxiliary dataset, once: the
        run folder keeps the checkpoints, so the next call (or notebook) just loads them.

        Args:
            epochs: training epochs when training is needed.
            train_limit: train on a seeded spread of this many auxiliary images (None: all).
            progress: progress bars.
            prefer_released: try the released prompts first (real mode, width 1024 only).
        Returns:
            ``((normal (n, D), anomalous (n, D)), source)`` where source says where they came from.
        """
        from tipsomaly_lite.data.released_prompts import RELEASED_PROMPTS, load_released_prompts
        from tipsomaly_lite.method.training import TrainConfig, train_prompts

        source = self.aux_source or self.aux_key
        fits = self.model.family == "tips" and self.model.text_width == 1024  # the released files are (8, 1024)
        if prefer_released and not self.offline and source in RELEASED_PROMPTS and fits:
            try:
                return load_released_prompts(source), f"released:{source}"
            except (DownloadError, FileNotFoundError) as err:
                print(f"Released prompts unavailable ({err}); training our own instead.")
        data, run = self.training_set(train_limit)
        result = train_prompts(self.model, data, TrainConfig(epochs=epochs, seed=self.seed), out_dir=run,
                               progress=progress)
        return result.prompts(), str(run)

    def __repr__(self) -> str:
        mode = "OFFLINE (tiny toy TIPS, toy data)" if self.offline else "real"
        lines = [f"Course(mode={mode}, device={self.device}, seed={self.seed}, image_size={self.image_size},",
                 f"       test={self.test_key} at {self.test_root},",
                 f"       auxiliary={self.aux_key} at {self.aux_root})",
                 *(f"  - {n}" for n in self.notes), repr(self.model)]
        if self.offline:
            lines.append(MEANINGLESS_TAG)
        return "\n".join(lines)


def _toy_root(data_root: Path, role: str) -> Path:
    name = "toy" if role == "test" else "toy_aux"
    return make_toy_dataset(data_root / name, seed=TOY_SEEDS[role], image_size=TOY_IMAGE_SIZE)


def _dataset_root(data_root: Path, key: str, role: str, offline: bool, notes: list[str]) -> tuple[str, Path]:
    """The prepared dataset, else the toy stand-in (with a note saying why)."""
    if not offline:
        root = data_root / key
        if (root / "meta.json").is_file():
            return key, root
        notes.append(f"{key} is not prepared at {root} (see 00_setup); the toy dataset stands in for it")
    return ("toy" if role == "test" else "toy_aux"), _toy_root(data_root, role)


def _size(variant: str) -> str:
    gb = DOWNLOAD_GB.get(variant)
    return f"~{gb:g} GB" if gb else "several GB"


def _load_model(variant: str, offline: bool | None, image_size: int | None, device: torch.device,
                notes: list[str], download: bool | None = None, family: str = "tips") -> Backbone:
    from tipsomaly_lite.backbones.tips.registry import VARIANTS, variant_is_cached

    if offline or (offline is None and offline_forced()):
        notes.append("offline mode " + ("asked for by the notebook" if offline else "forced by TIPSOMALY_OFFLINE"))
        return load_backbone("tiny", family=family, image_size=image_size, device=device)
    # The download and cache notes below know TIPS's files; other families go straight to their loader.
    missing = family == "tips" and variant in VARIANTS and not variant_is_cached(variant)
    kwargs: dict = {}
    if missing and not download_allowed(download):
        if offline is False:
            kwargs["download"] = False  # real mode was demanded: fail with the cache's message, never download
        else:
            notes.append(f"TIPS {variant} ({_size(variant)}) is not in the cache and downloading was not asked for: "
                         f"offline mode. To use it, run `tipsomaly fetch {variant}` in a terminal, or set "
                         f"DOWNLOAD = True in the parameters cell (start(download=True), or {DOWNLOAD_ENV}=1)")
            return load_backbone("tiny", family=family, image_size=image_size, device=device)
    elif missing:
        print(f"Downloading TIPS {variant} ({_size(variant)}) into the cache, once ...", flush=True)
    try:
        return load_backbone(variant, family=family, image_size=image_size, device=device, **kwargs)
    except (FileNotFoundError, DownloadError) as err:
        if offline is False:
            raise
        notes.append(f"{family.upper()} {variant} is neither cached nor downloadable ({type(err).__name__}); "
                     "offline mode")
        return load_backbone("tiny", family=family, image_size=image_size, device=device)


def _cpu_note(model: Backbone, device: torch.device, image_size: int) -> str | None:
    """A note when a real, large model will run on the CPU: how slow, and where a GPU is."""
    if model.is_offline or device.type != "cpu" or getattr(model, "text_width", 0) < 768:
        return None
    family = getattr(model, "family", "tips").upper()
    return (f"⚠ real {family} {model.variant} on the CPU: expect several seconds per {image_size}-px image (a "
            "64-image evaluation takes minutes, training far longer); a GPU is ~100x faster (Colab: Runtime → "
            "Change runtime type → GPU), or use a smaller IMAGE_SIZE or a smaller variant")


def start(*, offline: bool | None = None, variant: str | None = None, image_size: int | None = None,
          backbone: str = "tips",
          dataset: str = "mvtec", auxiliary: str | None = None, data_root: str | os.PathLike | None = None,
          seed: int = 111, device: str | torch.device = "auto", download: bool | None = None,
          verbose: bool = True) -> Course:
    """Set up a notebook: seed, device, model (real or offline) and datasets.

    Args:
        offline: True forces the offline mode, False forbids it (an error instead of a fallback),
            None decides: offline when ``TIPSOMALY_OFFLINE`` is set or the weights cannot be had.
        download: may missing weights be downloaded? None: only in Colab or with
            ``TIPSOMALY_DOWNLOAD=1`` (otherwise offline mode, with a note on how to get them).
        variant: TIPS variant (default the paper's ``l14-hr``).
        image_size: input side in pixels; None: the backbone's default (TIPS: 518, the paper's).
        backbone: the backbone family (``"tips"``, ``"clip"``, ``"siglip2"``...), default the paper's TIPS.
        dataset: the evaluated dataset key (``mvtec``, ``visa``...).
        auxiliary: the dataset the prompts train on (default: the paper's protocol).
        data_root: prepared datasets (default :func:`default_data_root`).
        seed: seeds Python, NumPy and torch.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        verbose: print the resulting :class:`Course`.
    Returns:
        The :class:`Course`.
    Taught in notebooks/00_setup.ipynb.
    """
    seed_everything(seed)
    if in_colab():  # Colab draws ipywidgets 8 only through its custom widget manager
        from google.colab import output

        output.enable_custom_widget_manager()
    dev = pick_device(device)
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    notes: list[str] = []
    variant = variant or get_family(backbone).default_variant
    model = _load_model(variant, offline, image_size, dev, notes, download, family=backbone)
    image_size = model.image_size  # the backbone owns its input side
    is_offline = model.is_offline
    cpu = _cpu_note(model, dev, image_size)
    if cpu:
        notes.append(cpu)
    aux = auxiliary or prompts_trained_on(dataset)
    test_key, test_root = _dataset_root(root, dataset, "test", is_offline, notes)
    aux_key, aux_root = _dataset_root(root, aux, "aux", is_offline, notes)
    course = Course(model, is_offline, dev, seed, image_size, root, test_key, aux_key, test_root, aux_root, aux, notes)
    if verbose:
        print(repr(course))
    return course
