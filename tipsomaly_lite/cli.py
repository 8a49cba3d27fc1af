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
(``torchrun --nproc_per_node 4 -m tipsomaly_lite evaluate ...``); rank 0 alone prints and writes, and
the results equal one process's (:mod:`tipsomaly_lite.distributed`). Every command writes only through
the output guard (:mod:`tipsomaly_lite.io.guard`) and fails behind one boundary (:mod:`tipsomaly_lite.io.boundary`).

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from tipsomaly_lite import __version__, distributed
from tipsomaly_lite.io import flags
from tipsomaly_lite.io.boundary import run_guarded
from tipsomaly_lite.offline import MEANINGLESS_TAG

#: Commands that share their work among the processes torchrun starts (tipsomaly_lite.distributed).
_DISTRIBUTED = ("train", "evaluate", "benchmark")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``tipsomaly train: error: argument --batch-size: ...``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cache_input() -> dict[str, Any]:
    """The downloaded weights and prompts in the cache, which no output may be, hold or lie inside."""
    from tipsomaly_lite.io.download import download_folders

    return {"the download cache": download_folders()}


def _demo(args: argparse.Namespace) -> int:
    from tipsomaly_lite.course.demo import run_demo
    from tipsomaly_lite.io.guard import claim_folder, finish_folder

    claim_folder(args.out, command="demo", inputs=_cache_input())
    result = run_demo(args.out, variant=args.variant, size=args.size)
    finish_folder(args.out, "demo")
    print(f"wrote {result.figure}")
    for row, p in enumerate(result.probabilities):
        print(f"  image {row}: P(normal)={p[0]:.3f} P(damaged)={p[1]:.3f}")
    if result.offline:
        print(MEANINGLESS_TAG)
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from tipsomaly_lite.backbones.tips.registry import BUCKET, VARIANTS, fetch_variant

    if args.list or not args.variant:
        from tipsomaly_lite.io.download import cache_dir

        for v in VARIANTS.values():
            print(f"{v.name:12s} {v.native_size}px  {BUCKET}{v.stem}_{{vision,text}}.npz")
        print(f"cache: {cache_dir() / 'tips'}")
        if not args.variant and not args.list:
            raise ValueError("name a variant (e.g. l14-hr) or pass --list")
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
            raise ValueError("name a dataset or pass --list")
        return 0
    raw = download_dataset(args.key, args.data_root, archive=args.archive, verify=not args.no_verify,
                           progress=not args.no_progress)
    if raw is not None:
        print(f"next: tipsomaly prepare {args.key} --source {raw} --data-root {args.data_root}")
    return 0


def _prepare_dataset(args: argparse.Namespace) -> int:
    """``tipsomaly prepare``: what data_scripts/prepare_dataset.py does, from the installed package."""
    from tipsomaly_lite.data.prepare import prepare_dataset

    out = prepare_dataset(args.key, args.source, args.data_root, protocol=args.protocol, link=not args.copy,
                          overwrite=args.overwrite)
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
    dl.set_defaults(func=_command("download", _download_dataset))

    prep = sub.add_parser("prepare", aliases=["prepare-dataset"],
                          help="convert a downloaded benchmark into <data-root>/<key>/ + meta.json")
    prep.add_argument("key", choices=sorted(DATASETS), help="dataset key")
    prep.add_argument("--source", required=True, help="the extracted native dataset, e.g. data/raw/visa")
    prep.add_argument("--data-root", default="data", help="output parent (default: data)")
    prep.add_argument("--protocol", choices=DAGM_PROTOCOLS, default=None,
                      help="DAGM only: official Test split (default) or balanced Train+Test")
    prep.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing output")
    prep.set_defaults(func=_command("prepare", _prepare_dataset))

    toy = sub.add_parser("toy-data", aliases=["make-toy"], help="write the synthetic toy dataset used offline")
    toy.add_argument("--out", default="data/toy", help="folder to create (default: data/toy)")
    toy.add_argument("--seed", type=flags.seed, default=toy_data.DEFAULT_SEED)
    toy.add_argument("--image-size", type=flags.toy_size, default=toy_data.DEFAULT_IMAGE_SIZE)
    toy.add_argument("--n-train", type=flags.toy_count, default=toy_data.DEFAULT_N_TRAIN,
                     help="normal training images per class")
    toy.add_argument("--n-normal", type=flags.toy_count, default=toy_data.DEFAULT_N_NORMAL,
                     help="normal test images per class")
    toy.add_argument("--n-anomalous", type=flags.toy_count, default=toy_data.DEFAULT_N_ANOMALOUS,
                     help="anomalous test images per class")
    toy.add_argument("--classes", nargs="+", choices=toy_data.TOY_CLASSES, default=None)
    toy.add_argument("--overwrite", action="store_true", help="replace an existing folder made with other settings")
    toy.set_defaults(func=_command("toy-data", _toy_data))


def _load_model(args: argparse.Namespace):
    """The backbone the flags name; ``--image-size`` None lets the backbone's family choose (TIPS: 518)."""
    from tipsomaly_lite.backbones import load_backbone

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(args.variant, family=args.backbone, image_size=args.image_size, device=device,
                          dtype=args.dtype)
    print(repr(model))  # says TINY RANDOM WEIGHTS for the offline model; the banner came as a warning
    if model.is_offline:
        print(MEANINGLESS_TAG)
    return model


def _dataset(args: argparse.Namespace, root: Path, model):
    from tipsomaly_lite.data.datasets import AnomalyDataset

    dataset = AnomalyDataset(root, image_size=model.image_size, classes=args.classes, key=args.dataset)
    print(dataset)
    return dataset


def _train(args: argparse.Namespace) -> int:
    from tipsomaly_lite.data.datasets import find_prepared
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, prompt_set_for
    from tipsomaly_lite.method.training import TrainConfig, train_prompts

    root = find_prepared(args.data_root, args.dataset)  # cheap checks before loading the model
    initial, _ = load_prompts(args.init_prompts) if args.init_prompts else (None, "")
    distributed.main_only(claim_folder, args.out, command="train",  # under torchrun rank 0 alone writes
                          inputs={"the dataset": root, "--init-prompts": args.init_prompts, **_cache_input()})
    model = _load_model(args)
    dataset = _dataset(args, root, model)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         n_tokens=args.n_tokens, prompt_set=prompt_set_for({}, args.prompt_set), cache=args.cache,
                         cache_dtype=args.cache_dtype, shuffle=args.shuffle)
    result = train_prompts(model, dataset, config, args.out, resume=not args.no_resume, progress=not args.quiet,
                           initial_prompts=initial)
    if result.resumed_from:
        print(f"resumed after epoch {result.resumed_from}")
    for epoch, loss in enumerate(result.epoch_losses, 1):
        print(f"epoch {epoch}: mean loss {loss:.4f}")
    if result.history and distributed.is_main():  # under torchrun rank 0 alone writes
        from tipsomaly_lite.course.viz import save_loss_curve

        title = f"{model.variant} on {args.dataset}" + (f" ({MEANINGLESS_TAG})" if model.is_offline else "")
        print(f"loss curve: {save_loss_curve(result.history, Path(args.out) / 'loss.png', title=title)}")
    if distributed.is_main():
        finish_folder(args.out, "train")
    print(f"prompts: {result.checkpoints[-1] if result.checkpoints else '(none written)'}")
    print(f"evaluate them: tipsomaly evaluate --dataset DATASET --data-root {args.data_root} --prompts {args.out}")
    return 0


def _detector(args: argparse.Namespace, model, prompts: Any, source: str, record: dict[str, Any], run: Any = None):
    """The detector for learned ``prompts`` (None: fixed prompts); ``record`` is their run's, whose
    prompt set is followed unless --prompt-set says otherwise, and whose backbone and sentences must match."""
    from tipsomaly_lite.method.detector import Detector
    from tipsomaly_lite.method.prompt_files import check_trained_with, prompt_set_for, run_settings
    from tipsomaly_lite.method.prompts import get_prompt_set

    prompt_set = get_prompt_set(prompt_set_for(run_settings(record), args.prompt_set))
    check_trained_with(record, model, prompt_set, run)  # before the prompts meet this model
    detector = Detector(model, prompts, prompt_set=prompt_set, mode=getattr(args, "mode", None), token=args.token,
                        sigma=args.sigma, prompts_source=source)
    print(detector)
    return detector


def _evaluate(args: argparse.Namespace) -> int:
    from tipsomaly_lite.data.datasets import find_prepared
    from tipsomaly_lite.eval.evaluation import evaluate
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, run_record, run_settings

    root = find_prepared(args.data_root, args.dataset)  # cheap checks before loading the model
    prompts, source = load_prompts(args.prompts, args.released)
    record = run_record(args.prompts)
    out = Path(args.out or Path("runs") / "eval" / args.dataset)
    inputs = {"the dataset": root, "--prompts": args.prompts, **_cache_input()}
    distributed.main_only(claim_folder, out, command="evaluate", inputs=inputs)  # before the long part
    model = _load_model(args)
    dataset = _dataset(args, root, model)
    detector = _detector(args, model, prompts, source, record, args.prompts)
    train = run_settings(record)  # the prompts' training seed and settings, when they are our run's
    result = evaluate(detector, dataset, batch_size=args.batch_size, aupro_mode=args.aupro_mode,
                      num_workers=args.workers, progress=not args.quiet,
                      extra_config={"seed": train.get("seed"), "prompts_training": train} if train else {"seed": None})
    print(result.to_markdown(paper=args.paper))  # shown even if writing fails after all (a full disk)
    if distributed.is_main():
        paths = result.save(out, paper=args.paper)
        finish_folder(out, "evaluate")
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    """Every prepared dataset under --data-root with the paper's cross-dataset prompts, one table."""
    from tipsomaly_lite.data.datasets import AnomalyDataset
    from tipsomaly_lite.data.registry import DATASET_KEYS
    from tipsomaly_lite.eval.evaluation import benchmark_table, evaluate, prompts_trained_on
    from tipsomaly_lite.io.atomic import atomic_file
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, run_record

    root = Path(args.data_root)
    keys = args.datasets or [k for k in DATASET_KEYS if (root / k / "meta.json").is_file()]
    missing = [k for k in keys if not (root / k / "meta.json").is_file()]
    if missing or not keys:
        raise FileNotFoundError(f"no prepared dataset for {missing or list(DATASET_KEYS)} under {root}; prepare "
                                "them with `tipsomaly prepare KEY --source RAW --data-root DATA`")
    runs = {"mvtec": args.mvtec_prompts, "visa": args.visa_prompts}
    plan = {}  # every prompt file is fetched before the long part
    for key in keys:
        source = prompts_trained_on(key)
        run = None if args.training_free else runs[source]
        prompts, where = (None, "none") if args.training_free else load_prompts(run, None if run else source)
        where = f"{run} (trained on {source})" if run else where
        plan[key] = (prompts, where, run_record(run), run)
    out = Path(args.out)
    inputs = {"the datasets": [root / k for k in keys], "--mvtec-prompts": args.mvtec_prompts,
              "--visa-prompts": args.visa_prompts, **_cache_input()}
    distributed.main_only(claim_folder, out, command="benchmark", inputs=inputs)
    model = _load_model(args)
    results = {}
    for key, (prompts, source, record, run) in plan.items():
        dataset = AnomalyDataset(root / key, image_size=model.image_size, key=key)
        print(f"\n== {key}: {dataset}\n   prompts: {source}")
        detector = _detector(args, model, prompts, source, record, run)
        results[key] = evaluate(detector, dataset, batch_size=args.batch_size, aupro_mode=args.aupro_mode,
                                num_workers=args.workers, progress=not args.quiet)
        if distributed.is_main():  # under torchrun rank 0 alone writes
            results[key].save(out / key, paper=True)
    table = benchmark_table(results)
    if distributed.is_main():
        with atomic_file(out / "benchmark.md", "w", encoding="utf-8") as f:
            f.write(table)
        finish_folder(out, "benchmark")
    print("\n" + table)
    print(f"wrote {out / 'benchmark.md'} and one folder per dataset under {out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, run_record
    from tipsomaly_lite.predict import image_files, overlay_names, predict_images

    files = image_files(args.images)
    names = overlay_names(files, args.images)
    prompts, source = load_prompts(args.prompts, args.released)
    claim_folder(args.out, command="predict", inputs={"--images": args.images, "--prompts": args.prompts,
                                                      **_cache_input()})
    model = _load_model(args)
    detector = _detector(args, model, prompts, source, run_record(args.prompts), args.prompts)
    result = predict_images(detector, files, args.class_name, args.out, names=names, batch_size=args.batch_size)
    finish_folder(args.out, "predict")
    print(f"wrote {result.scores_csv} ({len(result.rows)} images scored, {len(result.failed)} failed; scores lie in "
          "[0, 2], higher = more anomalous)")
    if model.is_offline:
        print(MEANINGLESS_TAG)
    if result.failed:
        print(f"tipsomaly predict: {len(result.failed)} of {len(files)} images could not be read and were skipped: "
              + "; ".join(why for _, why in result.failed), file=sys.stderr)
        return 1  # partly done: the scores are written, but a script should notice
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    from tipsomaly_lite.backbones import DEFAULT_FAMILY, FAMILIES

    p.add_argument("--backbone", default=DEFAULT_FAMILY, choices=list(FAMILIES),
                   help=f"vision-language backbone family (default: {DEFAULT_FAMILY}, the paper's)")
    p.add_argument("--variant", default=None,
                   help="checkpoint of the family (default: the family's; tips: l14-hr, the paper's; or "
                        "hf:<hub id or folder>); 'tiny' = offline")
    p.add_argument("--image-size", type=flags.image_size, default=None,
                   help="input side in px, a multiple of the patch size (default: the family's, 518 for tips)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, as in the notebooks), cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                   help="the vision tower's dtype; the text tower, scores and maps stay fp32 (default: fp32)")
    p.add_argument("--batch-size", type=flags.batch, default=8, help="images per step (default: 8)")
    p.add_argument("--prompt-set", default=None,
                   help="fixed prompt set name or .json (default: the --prompts run's set, else industrial)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_args(p: argparse.ArgumentParser) -> None:
    from tipsomaly_lite.data.registry import DATASET_KEYS

    p.add_argument("--dataset", required=True, help=f"dataset key: {', '.join(DATASET_KEYS)} (or toy)")
    p.add_argument("--data-root", default="data", help="folder holding the prepared <dataset>/ (default: data)")
    p.add_argument("--classes", nargs="+", default=None, help="only these classes")


def _map_args(p: argparse.ArgumentParser) -> None:
    from tipsomaly_lite.method.detector import DEFAULT_SIGMA

    p.add_argument("--token", default=None, help="global token of the backbone (TIPS: cls1, the default, or cls2)")
    p.add_argument("--sigma", type=flags.sigma, default=DEFAULT_SIGMA,
                   help=f"Gaussian smoothing of the maps, px (default: {DEFAULT_SIGMA:g})")


def _detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None, help="learned prompts: a train run folder, .safetensors or .pth")
    p.add_argument("--released", default=None, choices=["mvtec", "visa"],
                   help="the authors' released prompts trained on this dataset (downloaded once)")
    p.add_argument("--mode", default=None, choices=["decoupled", "coupled", "training_free"],
                   help="default: decoupled with prompts, training_free without")
    _map_args(p)


def _command(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``func`` behind the one error boundary, in this process's share of a torchrun run."""

    def run(args: argparse.Namespace) -> int:
        def work() -> int:
            if getattr(args, "out", None):
                from tipsomaly_lite.io.guard import check_folder_path

                check_folder_path(args.out)  # a file in the way is refused before any work
            with distributed.command_processes(name, getattr(args, "device", "auto"), _DISTRIBUTED) as device:
                if hasattr(args, "device"):
                    args.device = device
                return func(args)
        return run_guarded(name, work, out=getattr(args, "out", None), quiet=(distributed.PeerFailed,))
    return run


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
    demo.add_argument("--size", type=flags.image_size, default=None,
                      help="input side, a multiple of 14 (default: the model's)")
    demo.set_defaults(func=_command("demo", _demo))
    fetch = sub.add_parser("fetch", help="download a TIPS variant + tokenizer into the cache")
    fetch.add_argument("variant", nargs="?", help="e.g. l14-hr, b14-hr, v2-b14")
    fetch.add_argument("--list", action="store_true", help="list the variants and where they come from")
    fetch.set_defaults(func=_command("fetch", _fetch))
    _add_data_commands(sub)

    train = sub.add_parser("train", help="learn the pixel prompts on an auxiliary dataset")
    _data_args(train)
    _model_args(train)
    train.add_argument("--out", required=True, help="run folder (config, history, checkpoints); resumed if it exists")
    train.add_argument("--epochs", type=flags.epochs, default=2, help="(default: 2, as the released prompts)")
    train.add_argument("--lr", type=flags.learning_rate, default=1e-3, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--seed", type=flags.seed, default=111, help="(default: 111)")
    train.add_argument("--n-tokens", type=flags.tokens, default=8, help="learnable vectors per state (default: 8)")
    train.add_argument("--cache", default="auto", choices=["auto", "memory", "disk", "none"],
                       help="frozen-feature cache (default auto: memory up to 2 GiB, else disk in the run folder)")
    train.add_argument("--cache-dtype", default="float16", choices=["float16", "float32"])
    train.add_argument("--no-resume", action="store_true", help="start again even if the run folder has checkpoints")
    train.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=False,
                       help="reshuffle the images every epoch (default: no, dataset order as the authors' loader)")
    train.add_argument("--init-prompts", metavar="PATH",
                       help="start from these prompts instead of the seeded random start: a run folder, a "
                            ".safetensors/.pth prompt file, or released:<name>")
    train.set_defaults(func=_command("train", _train))

    ev = sub.add_parser("evaluate", help="per-class metrics on a dataset -> results.md/.csv/.json")
    _data_args(ev)
    _model_args(ev)
    _detector_args(ev)
    ev.add_argument("--aupro-mode", default="standard", choices=["standard", "compat"],
                    help="standard (exact, FPR <= 0.3) or compat (the ZSAD papers' 200 thresholds)")
    ev.add_argument("--paper", action="store_true", help="print the paper's numbers beside ours")
    ev.add_argument("--out", default=None, help="output folder (default: runs/eval/<dataset>)")
    ev.add_argument("--workers", type=flags.workers, default=0, help="DataLoader workers (default: 0)")
    ev.set_defaults(func=_command("evaluate", _evaluate))

    bench = sub.add_parser("benchmark", help="the paper's table: every prepared dataset, cross-dataset prompts")
    bench.add_argument("--data-root", default="data", help="folder holding the prepared datasets (default: data)")
    bench.add_argument("--datasets", nargs="+", default=None, help="default: every prepared one of the seven")
    _model_args(bench)
    bench.add_argument("--mvtec-prompts", default=None,
                       help="run folder of prompts trained on MVTec AD (evaluate the others); default: released")
    bench.add_argument("--visa-prompts", default=None,
                       help="run folder of prompts trained on VisA (evaluate MVTec AD); default: released")
    bench.add_argument("--training-free", action="store_true", help="fixed prompts only, no learned ones")
    _map_args(bench)
    bench.add_argument("--aupro-mode", default="compat", choices=["standard", "compat"],
                       help="compat (default here: the paper's recipe) or standard")
    bench.add_argument("--workers", type=flags.workers, default=0, help="DataLoader workers (default: 0)")
    bench.add_argument("--out", default="runs/benchmark", help="output folder (default: runs/benchmark)")
    bench.set_defaults(func=_command("benchmark", _benchmark))

    pr = sub.add_parser("predict", help="anomaly maps and scores for your own images")
    pr.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    pr.add_argument("--class-name", required=True, help='what the object is, as in a prompt: "metal nut"')
    pr.add_argument("--out", required=True, help="output folder for overlays and scores.csv (apart from --images)")
    _model_args(pr)
    _detector_args(pr)
    pr.set_defaults(func=_command("predict", _predict))
    return parser


def main(argv: list[str] | None = None, epilog: str | None = None) -> int:
    """Run ``tipsomaly <command> ...`` (``argv`` defaults to the command line).

    Args:
        argv: the arguments after ``tipsomaly``.
        epilog: text shown under the command's ``--help`` (the data_scripts' examples).
    Returns:
        The exit code: 0 on success, 2 for an error the user can fix (printed as one line), 1 for a bug
        (one line naming the log file that holds the traceback).
    Taught in notebooks/07_your_own_images.ipynb.
    """
    parser = build_parser()
    if epilog and argv:
        command = parser._subparsers._group_actions[0].choices.get(argv[0])  # the sub-command's own parser
        command.epilog, command.formatter_class = epilog, argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
