"""Command line: ``tipsomaly <command>`` or ``python -m tipsomaly_lite <command>``.

- ``demo``: a PNG of patch-text similarity maps.
- ``fetch``: download a TIPS variant into the cache (``--list``: every variant and its URL).
- ``download``: download a benchmark from its owners, check it and extract it (``--list``: all seven).
- ``prepare``: turn a downloaded benchmark into the one prepared format (MVTec-like tree + meta.json).
- ``toy-data``: write the small synthetic toy dataset the offline mode uses.
- ``train``: learn the pixel prompts on an auxiliary dataset (a run folder with checkpoints).
- ``evaluate``: the six metrics per class on a dataset (Markdown, CSV, JSON + config).
- ``benchmark``: the paper's table: every prepared dataset, prompts trained on the other dataset.
- ``predict``: anomaly-map overlays and a CSV of scores for your own images.

All of them run offline on the tiny random model (``TIPSOMALY_OFFLINE=1``), with a warning that
the numbers are meaningless.

``train``, ``evaluate`` and ``benchmark`` also run on several processes started by ``torchrun``
(one per GPU, ``nccl``; or CPU processes, ``gloo``), e.g.
``torchrun --nproc_per_node 4 -m tipsomaly_lite evaluate ...``: evaluation deals whole batches of
``--batch-size`` images to the processes, training splits each batch of ``--batch-size`` images
among them; rank 0 alone prints and writes, and the results equal one process's
(:mod:`tipsomaly_lite.distributed`).

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from tipsomaly_lite import __version__
from tipsomaly_lite.io.atomic import atomic_file
from PIL.Image import DecompressionBombError
from safetensors import SafetensorError

from tipsomaly_lite.io.archives import ArchiveError
from tipsomaly_lite.io.download import DownloadError
from tipsomaly_lite import distributed
from tipsomaly_lite.distributed import PeerFailed
from tipsomaly_lite.offline import MEANINGLESS_TAG

#: The paper's input side (37 x 37 patches).
IMAGE_SIZE = 518
#: Errors a user can fix (a path, a name, a setting, a failed download, a damaged archive or weights
#: file, a pixel bomb, a path that is a file or not writable): one line, exit code 2.
#: Any other RuntimeError (torch's) is a bug and keeps its traceback.
_USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
                ValueError, KeyError, DownloadError, ArchiveError, SafetensorError, DecompressionBombError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``tipsomaly train: error: argument --batch-size: ...``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            what: str = "") -> Callable[[str], Any]:
    """An argparse ``type`` accepting a finite ``kind`` in [low, high] (``(low, high]`` if ``low_open``)."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or (low is not None and (
                value < low or (low_open and value == low))) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, low=1, what="a positive integer")
_count = _number(int, low=0, what="an integer >= 0")
#: Smoothing in pixels of the maps: 0 (none) up to a quarter of the largest input anyone uses.
_sigma = _number(float, low=0.0, high=256.0, what="a smoothing width in px between 0 and 256")
_learning_rate = _number(float, low=0.0, low_open=True, what="a positive finite learning rate")


def _disk_full(exc: OSError, args: argparse.Namespace) -> str:
    """One line for ENOSPC/EDQUOT: which file and folder, how much is free there."""
    import shutil

    target = Path(exc.filename) if exc.filename else Path(getattr(args, "out", None) or ".")
    folder = target if target.is_dir() else target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    what = f"while writing {exc.filename}" if exc.filename else "while writing results"
    return (f"disk full ({exc.strerror or exc}) {what}: the folder {folder} has {free}; free some space "
            "there or choose another --out / --data-root")


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` that is, or lies under, an existing file, before any work is done."""
    out = getattr(args, "out", None)
    if not out:
        return
    for path in [Path(out), *Path(out).parents]:
        if path.exists() and not path.is_dir():
            where = "is" if path == Path(out) else f"lies under {path}, which is"
            raise FileExistsError(f"--out {out} {where} an existing file, not a folder; give a folder for "
                                  "the results")


def _demo(args: argparse.Namespace) -> int:
    from tipsomaly_lite.course.demo import run_demo

    result = run_demo(args.out, variant=args.variant, size=args.size)
    print(f"wrote {result.figure}")
    for row, p in enumerate(result.probabilities):
        print(f"  image {row}: P(normal)={p[0]:.3f} P(damaged)={p[1]:.3f}")
    if result.offline:
        print(MEANINGLESS_TAG)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from tipsomaly_lite.backbones.tips.registry import BUCKET, VARIANTS, fetch_variant

    if getattr(args, "list", False) or not args.variant:
        from tipsomaly_lite.io.download import cache_dir

        for v in VARIANTS.values():
            print(f"{v.name:12s} {v.native_size}px  {BUCKET}{v.stem}_{{vision,text}}.npz")
        print(f"cache: {cache_dir() / 'tips'}")
        if not args.variant and not getattr(args, "list", False):
            print("tipsomaly fetch: error: name a variant (e.g. l14-hr) or pass --list", file=sys.stderr)
            return 2
        return 0
    for role, path in fetch_variant(args.variant).items():
        print(f"{role:9s} {path}")
    return 0


def _download_dataset(args: argparse.Namespace) -> int:
    """``tipsomaly download``: what data_scripts/download_dataset.py does, from the installed package."""
    from tipsomaly_lite.data.prepare import download_dataset, instructions
    from tipsomaly_lite.data.registry import DATASETS

    if args.list or args.key is None:
        for key in DATASETS:
            print(instructions(key), end="\n\n")
        if args.key is None and not args.list:
            print("tipsomaly download: error: name a dataset or pass --list", file=sys.stderr)
            return 2
        return 0
    from tipsomaly_lite.io.archives import ArchiveError

    try:
        raw = download_dataset(args.key, args.data_root, archive=args.archive, verify=not args.no_verify,
                               progress=not args.no_progress)
    except ArchiveError as exc:  # a bad archive is the user's to replace: one line, not a traceback
        print(f"tipsomaly download: error: {exc}", file=sys.stderr)
        return 2
    if raw is not None:
        print(f"next: tipsomaly prepare {args.key} --source {raw} --data-root {args.data_root}")
    return 0


def _prepare_dataset(args: argparse.Namespace) -> int:
    """``tipsomaly prepare``: what data_scripts/prepare_dataset.py does, from the installed package."""
    from tipsomaly_lite.data.prepare import prepare_dataset

    try:
        out = prepare_dataset(args.key, args.source, args.data_root, protocol=args.protocol, link=not args.copy,
                              overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"tipsomaly prepare: error: {exc}", file=sys.stderr)
        return 2
    print(f"prepared {args.key} at {out}")
    return 0


def _toy_data(args: argparse.Namespace) -> int:
    """``tipsomaly toy-data``: what data_scripts/make_toy_dataset.py does, from the installed package."""
    from tipsomaly_lite.data import toy_data

    out = toy_data.make_toy_dataset(args.out, seed=args.seed, image_size=args.image_size, n_train=args.n_train,
                                    n_normal=args.n_normal, n_anomalous=args.n_anomalous, classes=args.classes,
                                    overwrite=args.overwrite)
    print(f"toy dataset at {out}")
    return 0


def _add_data_commands(sub: Any) -> None:
    """The data sub-commands a pip user needs without a repository checkout (the data_scripts' options)."""
    from tipsomaly_lite.data import toy_data
    from tipsomaly_lite.data.registry import DAGM_PROTOCOLS, DATASETS

    dl = sub.add_parser("download", aliases=["download-dataset"],
                        help="download a benchmark from its owners, check its SHA-256 and extract it")
    dl.add_argument("key", nargs="?", choices=sorted(DATASETS), help="dataset key")
    dl.add_argument("--data-root", default="data", help="folder for downloads/, raw/ and the prepared datasets "
                    "(default: data)")
    dl.add_argument("--archive", default=None, help="use an archive you downloaded yourself")
    dl.add_argument("--no-verify", action="store_true",
                    help="accept an --archive whose SHA-256 differs from the published one")
    dl.add_argument("--no-progress", action="store_true", help="hide progress bars")
    dl.add_argument("--list", action="store_true", help="describe every dataset (licence, size, link) and exit")
    dl.set_defaults(func=_guarded(_download_dataset), command="download")

    prep = sub.add_parser("prepare", aliases=["prepare-dataset"],
                          help="convert a downloaded benchmark into <data-root>/<key>/ + meta.json")
    prep.add_argument("key", choices=sorted(DATASETS), help="dataset key")
    prep.add_argument("--source", required=True, help="the extracted native dataset, e.g. data/raw/visa")
    prep.add_argument("--data-root", default="data", help="output parent (default: data)")
    prep.add_argument("--protocol", choices=DAGM_PROTOCOLS, default=None,
                      help="DAGM only: official Test split (default) or balanced Train+Test")
    prep.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing output")
    prep.set_defaults(func=_guarded(_prepare_dataset), command="prepare")

    toy = sub.add_parser("toy-data", aliases=["make-toy"], help="write the synthetic toy dataset used offline")
    toy.add_argument("--out", default="data/toy", help="folder to create (default: data/toy)")
    toy.add_argument("--seed", type=int, default=toy_data.DEFAULT_SEED)
    toy.add_argument("--image-size", type=_positive_int, default=toy_data.DEFAULT_IMAGE_SIZE)
    toy.add_argument("--n-train", type=int, default=toy_data.DEFAULT_N_TRAIN, help="normal training images per class")
    toy.add_argument("--n-normal", type=int, default=toy_data.DEFAULT_N_NORMAL, help="normal test images per class")
    toy.add_argument("--n-anomalous", type=int, default=toy_data.DEFAULT_N_ANOMALOUS,
                     help="anomalous test images per class")
    toy.add_argument("--classes", nargs="+", choices=toy_data.TOY_CLASSES, default=None)
    toy.add_argument("--overwrite", action="store_true", help="replace an existing folder made with other settings")
    toy.set_defaults(func=_guarded(_toy_data), command="toy-data")


def _load_model(args: argparse.Namespace):
    from tipsomaly_lite.backbones import load_backbone

    family = getattr(args, "backbone", "tips")
    # TIPS runs at the paper's 518 px by default; CLIP and SigLIP2 at their checkpoints' native size.
    size = args.image_size or (IMAGE_SIZE if family == "tips" else None)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(args.variant, family=family, image_size=size, device=device,
                          dtype=getattr(args, "dtype", "fp32"))
    print(repr(model))  # says TINY RANDOM WEIGHTS for the offline model; the banner came as a warning
    if model.is_offline:
        print(MEANINGLESS_TAG)
    return model


def _dataset_root(data_root: str, key: str) -> Path:
    """``<data_root>/<key>`` as prepared by ``tipsomaly prepare``, or ``data_root`` itself."""
    root = Path(data_root)
    for candidate in (root / key, root):
        if (candidate / "meta.json").is_file():
            return candidate
    raise FileNotFoundError(f"no prepared dataset at {root / key} (nor a meta.json in {root}); prepare it with "
                            f"`tipsomaly prepare {key} --data-root {root}` "
                            "(or make the toy one: `tipsomaly toy-data`)")


def _open_dataset(args: argparse.Namespace, root: Path, model):
    from tipsomaly_lite.data.datasets import AnomalyDataset

    return AnomalyDataset(root, image_size=model.image_size, classes=args.classes, key=args.dataset)


def _prompts(args: argparse.Namespace) -> tuple[Any, str]:
    """Learned prompts from --prompts (run folder, .safetensors or .pth) or --released, else None."""
    from tipsomaly_lite.data.released_prompts import load_prompt_file, load_released_prompts
    from tipsomaly_lite.method.training import load_trained_prompts

    if args.prompts and args.released:
        raise ValueError("give --prompts or --released, not both")
    if args.released:
        return load_released_prompts(args.released), f"released:{args.released}"
    if args.prompts:
        path = Path(args.prompts)
        if path.is_dir():
            return load_trained_prompts(path), str(path)
        if path.suffix == ".safetensors":
            try:
                return load_trained_prompts(path), str(path)
            except ValueError:
                pass  # a plain {normal, anomalous} safetensors file, not one of our checkpoints
        return load_prompt_file(path), str(path)
    return None, "none"


def _train(args: argparse.Namespace) -> int:
    from tipsomaly_lite.method.training import TrainConfig, train_prompts

    root = _dataset_root(args.data_root, args.dataset)  # cheap checks before loading the model
    model = _load_model(args)
    dataset = _open_dataset(args, root, model)
    print(dataset)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         n_tokens=args.n_tokens, prompt_set=args.prompt_set or "industrial", cache=args.cache,
                         cache_dtype=args.cache_dtype, shuffle=args.shuffle)
    initial = None
    if args.init_prompts:  # a run folder, a prompt file, or released:<name>
        released = args.init_prompts.startswith("released:")
        initial, _ = _prompts(argparse.Namespace(prompts=None if released else args.init_prompts,
                                                 released=args.init_prompts[9:] if released else None))
    result = train_prompts(model, dataset, config, args.out, resume=not args.no_resume, progress=not args.quiet,
                           initial_prompts=initial)
    if result.resumed_from:
        print(f"resumed after epoch {result.resumed_from}")
    for epoch, loss in enumerate(result.epoch_losses, 1):
        print(f"epoch {epoch}: mean loss {loss:.4f}")
    if result.history and distributed.is_main():  # under torchrun rank 0 alone writes
        from matplotlib import pyplot as plt

        from tipsomaly_lite.course.viz import plot_loss_curve

        title = f"{model.variant} on {args.dataset}" + (f" ({MEANINGLESS_TAG})" if model.is_offline else "")
        ax = plot_loss_curve(result.history, title=title)
        with atomic_file(Path(args.out) / "loss.png") as fh:
            ax.figure.savefig(fh, format="png")
        plt.close(ax.figure)
        print(f"loss curve: {Path(args.out) / 'loss.png'}")
    print(f"prompts: {result.checkpoints[-1] if result.checkpoints else '(none written)'}")
    print(f"evaluate them: tipsomaly evaluate --dataset DATASET --data-root {args.data_root} --prompts {args.out}")
    return 0


def _run_train_config(path: str | None) -> dict[str, Any]:
    """The ``train`` settings saved in a run folder's config.json ({} for anything else)."""
    import json

    config = Path(path or "") / "config.json"
    return json.loads(config.read_text()).get("train", {}) if path and config.is_file() else {}


def _prompt_set(args: argparse.Namespace) -> str:
    # Learned prompts belong to the sentences they were trained with: follow the run unless told.
    return args.prompt_set or _run_train_config(args.prompts).get("prompt_set") or "industrial"


def _detector(args: argparse.Namespace, model, prompts: Any, source: str):
    from tipsomaly_lite.method.detector import Detector

    return Detector(model, prompts, prompt_set=_prompt_set(args), mode=args.mode, token=args.token,
                    sigma=args.sigma, prompts_source=source)


def _prompts_provenance(args: argparse.Namespace) -> dict[str, Any]:
    """The training seed and settings of --prompts when it is one of our run folders (else seed None)."""
    train = _run_train_config(args.prompts)
    if train:
        return {"seed": train.get("seed"), "prompts_training": train}
    return {"seed": None}  # evaluation itself draws no random numbers


def _evaluate(args: argparse.Namespace) -> int:
    from tipsomaly_lite.eval.evaluation import evaluate

    root = _dataset_root(args.data_root, args.dataset)  # cheap checks before loading the model
    prompts, source = _prompts(args)
    model = _load_model(args)
    dataset = _open_dataset(args, root, model)
    print(dataset)
    detector = _detector(args, model, prompts, source)
    print(detector)
    out = Path(args.out or Path("runs") / "eval" / args.dataset)
    distributed.main_only(_output_folder, out)  # before the long part; under torchrun rank 0 alone writes
    result = evaluate(detector, dataset, batch_size=args.batch_size, aupro_mode=args.aupro_mode,
                      num_workers=args.workers, progress=not args.quiet, extra_config=_prompts_provenance(args))
    print(result.to_markdown(paper=args.paper))  # shown even if writing fails after all (a full disk)
    if distributed.is_main():
        paths = result.save(out, paper=args.paper)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    """Every prepared dataset under --data-root with the paper's cross-dataset prompts, one table."""
    from tipsomaly_lite.data.datasets import AnomalyDataset
    from tipsomaly_lite.data.registry import DATASET_KEYS
    from tipsomaly_lite.method.detector import Detector
    from tipsomaly_lite.eval.evaluation import benchmark_table, evaluate, prompts_trained_on
    from tipsomaly_lite.data.released_prompts import load_released_prompts
    from tipsomaly_lite.method.training import load_trained_prompts

    root = Path(args.data_root)
    keys = args.datasets or [k for k in DATASET_KEYS if (root / k / "meta.json").is_file()]
    missing = [k for k in keys if not (root / k / "meta.json").is_file()]
    if missing or not keys:
        raise FileNotFoundError(f"no prepared dataset for {missing or list(DATASET_KEYS)} under {root}; prepare "
                                "them with `tipsomaly prepare KEY --data-root DATA`")
    runs = {"mvtec": args.mvtec_prompts, "visa": args.visa_prompts}

    def prompts_for(key: str) -> tuple[Any, str, str]:
        """(prompts, where they come from, the prompt set they go with) for one dataset."""
        if args.training_free:
            return None, "none", args.prompt_set or "industrial"
        source = prompts_trained_on(key)
        if runs[source]:
            prompt_set = args.prompt_set or _run_train_config(runs[source]).get("prompt_set") or "industrial"
            return load_trained_prompts(runs[source]), f"{runs[source]} (trained on {source})", prompt_set
        return load_released_prompts(source), f"released:{source}", args.prompt_set or "industrial"

    plan = {key: prompts_for(key) for key in keys}  # fetch every prompt file before the long part
    model = _load_model(args)
    out = Path(args.out)
    results = {}
    for key, (prompts, source, prompt_set) in plan.items():
        dataset = AnomalyDataset(root / key, image_size=model.image_size, key=key)
        print(f"\n== {key}: {dataset}\n   prompts: {source}")
        detector = Detector(model, prompts, prompt_set=prompt_set, token=args.token, sigma=args.sigma,
                            prompts_source=source)
        results[key] = evaluate(detector, dataset, batch_size=args.batch_size, aupro_mode=args.aupro_mode,
                                num_workers=args.workers, progress=not args.quiet)
        if distributed.is_main():  # under torchrun rank 0 alone writes
            results[key].save(out / key, paper=True)
    table = benchmark_table(results)
    if distributed.is_main():
        with atomic_file(out / "benchmark.md", "w", encoding="utf-8") as f:
            f.write(table)
    print("\n" + table)
    print(f"wrote {out / 'benchmark.md'} and one folder per dataset under {out}")
    return 0


def _output_folder(path: Path, flag: str = "--out") -> Path:
    """Create an output folder and check that files can be written in it, before any long work.

    Raises:
        ValueError: ``path`` is a file, lies under a file, or cannot be created or written (names it).
    """
    import tempfile

    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: exists and is not a folder; give a folder for the results")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write results there ({exc.strerror or exc})") from exc
    return path


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _image_files(specs: list[str], exclude: Path | None = None) -> list[Path]:
    """The image files of ``--images`` (files and folders, recursively), each once.

    Files under ``exclude`` (the ``--out`` folder) are left out of folder scans, so a second run
    does not score the first run's overlays.
    """
    from tipsomaly_lite.data.datasets import is_image_file

    exclude = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        path = Path(spec)
        if path.is_dir() and exclude is not None and path.resolve() == exclude:
            raise ValueError(f"--out {spec} is also an --images folder: the overlays would mix with the images; "
                             "give --out a folder of its own (a sub-folder is fine)")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)
                           and not (exclude is not None and _inside(p.resolve(), exclude)))
        elif path.is_file() and is_image_file(path):
            found = [path]
        else:
            raise FileNotFoundError(f"--images {spec}: not an image file or a folder of images")
        for p in found:
            if p.resolve() not in seen:  # the same file named twice is scored once
                seen.add(p.resolve())
                files.append(p)
    if not files:
        where = f" (outside --out {exclude})" if exclude is not None else ""
        raise FileNotFoundError(f"--images {' '.join(specs)}: no images found{where} (png, jpg, bmp, tif)")
    return files


def _overlay_names(files: list[Path], specs: list[str]) -> dict[Path, Path]:
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


def _predict(args: argparse.Namespace) -> int:
    from matplotlib import pyplot as plt

    from tipsomaly_lite.io.images import to_float_rgb
    from tipsomaly_lite.course.viz import overlay_anomaly_map
    from tipsomaly_lite.method.maps import upsample_map

    out = Path(args.out)
    files = _image_files(args.images, exclude=out)
    names = _overlay_names(files, args.images)
    _output_folder(out)
    prompts, source = _prompts(args)
    model = _load_model(args)
    detector = _detector(args, model, prompts, source)
    size = model.image_size
    rows = []
    failed: list[tuple[Path, str]] = []
    for start in range(0, len(files), args.batch_size):
        readable, originals = [], []
        for f in files[start:start + args.batch_size]:
            try:
                originals.append(to_float_rgb(f))  # names the file when it cannot be read
                readable.append(f)
            except (ValueError, OSError) as exc:  # one bad image must not cost the others their scores
                failed.append((f, str(exc)))
                print(f"tipsomaly predict: skipped {f}: {exc}", file=sys.stderr)
        chunk = readable
        if not chunk:
            continue
        pred = detector.predict(model.preprocess(originals, size), args.class_name)
        for i, (path, original) in enumerate(zip(chunk, originals)):
            # The map is drawn over the photo at its own size, not over the squashed model input.
            amap = upsample_map(pred.anomaly_map[i:i + 1], tuple(original.shape[-2:]))[0]
            fig, axes = plt.subplots(1, 2, figsize=(6.6, 3))
            axes[0].imshow(original.permute(1, 2, 0).numpy())
            axes[0].set_title(path.name)
            axes[0].axis("off")
            title = f"score {float(pred.image_score[i]):.3f}"
            if model.is_offline:
                title += f" ({MEANINGLESS_TAG})"
            overlay_anomaly_map(original, amap, ax=axes[1], title=title, vmin=0.0, vmax=1.0,  # probabilities
                                colorbar=True)
            fig.tight_layout()
            target = out / names[path]
            with atomic_file(target) as fh:
                fig.savefig(fh, format="png")
            plt.close(fig)
            rows.append({"path": str(path), "class_word": args.class_name,
                         "image_score": f"{float(pred.image_score[i]):.6f}",
                         "global_score": f"{float(pred.global_score[i]):.6f}",
                         "local_score": f"{float(pred.local_score[i]):.6f}",
                         "overlay": str(target)})
            print(f"{path.name}: score {rows[-1]['image_score']} -> {target}")
    if not rows:
        raise ValueError(f"--images: none of the {len(files)} images could be read (first: {failed[0][1]})")
    with atomic_file(out / "scores.csv", "w", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'scores.csv'} ({len(rows)} images scored, {len(failed)} failed; scores lie in [0, 2], "
          "higher = more anomalous)")
    if model.is_offline:
        print(MEANINGLESS_TAG)
    if failed:
        print(f"tipsomaly predict: {len(failed)} of {len(files)} images could not be read and were skipped: "
              + ", ".join(str(f) for f, _ in failed), file=sys.stderr)
        return 1  # partly done: the scores are written, but a script should notice
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="tips", choices=["tips", "clip", "siglip2"],
                   help="vision-language backbone family (default: tips, the paper's)")
    p.add_argument("--variant", default=None,
                   help="checkpoint of the family (tips: l14-hr, the paper's, default; clip: l14-336; siglip2: "
                        "so400m-256; or hf:<hub id or folder>); 'tiny' = offline")
    p.add_argument("--image-size", type=_positive_int, default=None,
                   help="input side in px, a multiple of the patch size (default: 518 for tips, native otherwise)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, as in the notebooks), cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="the vision tower's dtype; the text tower, scores and maps stay fp32 (default: fp32)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per step (default: 8)")
    p.add_argument("--prompt-set", default=None,
                   help="fixed prompt set name or .json (default: the --prompts run's set, else industrial)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset key: mvtec, visa, mpdd, btad, sdd, dagm, dtd (or toy)")
    p.add_argument("--data-root", default="data", help="folder holding the prepared <dataset>/ (default: data)")
    p.add_argument("--classes", nargs="+", default=None, help="only these classes")


def _detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None, help="learned prompts: a train run folder, .safetensors or .pth")
    p.add_argument("--released", default=None, choices=["mvtec", "visa"],
                   help="the authors' released prompts trained on this dataset (downloaded once)")
    p.add_argument("--mode", default=None, choices=["decoupled", "coupled", "training_free"],
                   help="default: decoupled with prompts, training_free without")
    p.add_argument("--token", default=None, help="global token of the backbone (TIPS: cls1, the default, or cls2)")
    p.add_argument("--sigma", type=_sigma, default=4.0, help="Gaussian smoothing of the maps, px (default: 4)")


#: Commands that share their work among the processes torchrun starts (tipsomaly_lite.distributed).
_DISTRIBUTED = ("train", "evaluate", "benchmark")


@contextlib.contextmanager
def _processes(args: argparse.Namespace) -> Iterator[None]:
    """Under torchrun: join the process group, take this process's device, and let only rank 0 print."""
    if not distributed.launched_by_torchrun():
        yield
        return
    if args.command not in _DISTRIBUTED:
        raise ValueError(f"{args.command} runs in one process; start it without torchrun (only "
                         f"{', '.join(_DISTRIBUTED)} share their work among processes)")
    args.device = str(distributed.init_from_env(args.device))
    try:
        with open(os.devnull, "w") as quiet, \
                contextlib.redirect_stdout(quiet) if not distributed.is_main() else contextlib.nullcontext():
            yield
    finally:
        distributed.shutdown()


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            _check_out(args)
            with _processes(args):
                return func(args)
        except PeerFailed:
            return 2  # another process of the torchrun failed and printed why; this one stops quietly
        except _USER_ERRORS as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"tipsomaly {args.command}: error: {_one_line(message)}", file=sys.stderr)
            return 2
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            print(f"tipsomaly {args.command}: error: {_disk_full(exc, args)}", file=sys.stderr)
            return 2
    return run


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def build_parser() -> argparse.ArgumentParser:
    """The ``tipsomaly`` argument parser; each sub-command's ``func`` runs it (``args.func(args)``).

    Taught in notebooks/06_benchmark.ipynb.
    """
    parser = _Parser(prog="tipsomaly", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tipsomaly_lite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write a PNG of patch-text similarity maps")
    demo.add_argument("--out", default="build/demo", help="output folder (default: build/demo)")
    demo.add_argument("--variant", default="l14-hr",
                      help="TIPS variant, used when its weights are in the cache; else the offline tiny model")
    demo.add_argument("--size", type=_positive_int, default=None,
                      help="input side, a multiple of 14 (default: native)")
    demo.set_defaults(func=_guarded(_demo))
    fetch = sub.add_parser("fetch", help="download a TIPS variant + tokenizer into the cache")
    fetch.add_argument("variant", nargs="?", help="e.g. l14-hr, b14-hr, v2-b14")
    fetch.add_argument("--list", action="store_true", help="list the variants and where they come from")
    fetch.set_defaults(func=_guarded(_fetch))
    _add_data_commands(sub)

    train = sub.add_parser("train", help="learn the pixel prompts on an auxiliary dataset")
    _data_args(train)
    _model_args(train)
    train.add_argument("--out", required=True, help="run folder (config, history, checkpoints); resumed if it exists")
    train.add_argument("--epochs", type=_positive_int, default=2, help="(default: 2, as the released prompts)")
    train.add_argument("--lr", type=_learning_rate, default=1e-3, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--seed", type=int, default=111, help="(default: 111)")
    train.add_argument("--n-tokens", type=_positive_int, default=8, help="learnable vectors per state (default: 8)")
    train.add_argument("--cache", default="auto", choices=["auto", "memory", "disk", "none"],
                       help="frozen-feature cache (default auto: memory up to 2 GiB, else disk in the run folder)")
    train.add_argument("--cache-dtype", default="float16", choices=["float16", "float32"])
    train.add_argument("--no-resume", action="store_true", help="start again even if the run folder has checkpoints")
    train.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=False,
                       help="reshuffle the images every epoch (default: no, dataset order as the authors' loader)")
    train.add_argument("--init-prompts", metavar="PATH",
                       help="start from these prompts instead of the seeded random start: a run folder, a "
                            ".safetensors/.pth prompt file, or released:<name>")
    train.set_defaults(func=_guarded(_train))

    ev = sub.add_parser("evaluate", help="per-class metrics on a dataset -> results.md/.csv/.json")
    _data_args(ev)
    _model_args(ev)
    _detector_args(ev)
    ev.add_argument("--aupro-mode", default="standard", choices=["standard", "compat"],
                    help="standard (exact, FPR <= 0.3) or compat (the ZSAD papers' 200 thresholds)")
    ev.add_argument("--paper", action="store_true", help="print the paper's numbers beside ours")
    ev.add_argument("--out", default=None, help="output folder (default: runs/eval/<dataset>)")
    ev.add_argument("--workers", type=_count, default=0, help="DataLoader workers (default: 0)")
    ev.set_defaults(func=_guarded(_evaluate))

    bench = sub.add_parser("benchmark", help="the paper's table: every prepared dataset, cross-dataset prompts")
    bench.add_argument("--data-root", default="data", help="folder holding the prepared datasets (default: data)")
    bench.add_argument("--datasets", nargs="+", default=None, help="default: every prepared one of the seven")
    _model_args(bench)
    bench.add_argument("--mvtec-prompts", default=None,
                       help="run folder of prompts trained on MVTec AD (evaluate the others); default: released")
    bench.add_argument("--visa-prompts", default=None,
                       help="run folder of prompts trained on VisA (evaluate MVTec AD); default: released")
    bench.add_argument("--training-free", action="store_true", help="fixed prompts only, no learned ones")
    bench.add_argument("--token", default=None, help="global token of the backbone (TIPS: cls1, the default, or cls2)")
    bench.add_argument("--sigma", type=_sigma, default=4.0, help="Gaussian smoothing of the maps, px (default: 4)")
    bench.add_argument("--aupro-mode", default="compat", choices=["standard", "compat"],
                       help="compat (default here: the paper's recipe) or standard")
    bench.add_argument("--workers", type=_count, default=0, help="DataLoader workers (default: 0)")
    bench.add_argument("--out", default="runs/benchmark", help="output folder (default: runs/benchmark)")
    bench.set_defaults(func=_guarded(_benchmark))

    pr = sub.add_parser("predict", help="anomaly maps and scores for your own images")
    pr.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    pr.add_argument("--class-name", required=True, help='what the object is, as in a prompt: "metal nut"')
    pr.add_argument("--out", required=True, help="output folder for overlays and scores.csv")
    _model_args(pr)
    _detector_args(pr)
    pr.set_defaults(func=_guarded(_predict))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``tipsomaly <command> ...`` (``argv`` defaults to the command line).

    Returns:
        The exit code: 0 on success, 2 for an error the user can fix (printed as one line).
    Taught in notebooks/07_your_own_images.ipynb.
    """
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
