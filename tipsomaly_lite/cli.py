"""Command line: ``tipsomaly <command>`` or ``python -m tipsomaly_lite <command>``.

- ``demo``: a PNG of patch-text similarity maps.
- ``fetch``: download a TIPS variant into the cache.
- ``train``: learn the pixel prompts on an auxiliary dataset (a run folder with checkpoints).
- ``evaluate``: the six metrics per class on a dataset (Markdown, CSV, JSON + config).
- ``benchmark``: the paper's table: every prepared dataset, prompts trained on the other dataset.
- ``predict``: anomaly-map overlays and a CSV of scores for your own images.

All of them run offline on the tiny random model (``TIPSOMALY_OFFLINE=1``), with a warning that
the numbers are meaningless.

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any, Callable

from tipsomaly_lite import __version__
from tipsomaly_lite.data.atomic import atomic_file
from tipsomaly_lite.data.download import DownloadError

#: The paper's input side (37 x 37 patches).
IMAGE_SIZE = 518
#: Errors a user can fix (a path, a name, a setting, a failed download): one line, exit code 2.
#: Any other RuntimeError (torch's) is a bug and keeps its traceback.
_USER_ERRORS = (FileNotFoundError, ValueError, KeyError, DownloadError)


def _demo(args: argparse.Namespace) -> int:
    from tipsomaly_lite.course.demo import run_demo

    result = run_demo(args.out, variant=args.variant, size=args.size)
    print(f"wrote {result.figure}")
    for row, p in enumerate(result.probabilities):
        print(f"  image {row}: P(normal)={p[0]:.3f} P(damaged)={p[1]:.3f}")
    if result.offline:
        print("NOTE: offline tiny random model -- these numbers are meaningless.")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from tipsomaly_lite.backbones.tips.registry import fetch_variant

    for role, path in fetch_variant(args.variant).items():
        print(f"{role:9s} {path}")
    return 0


def _load_model(args: argparse.Namespace):
    from tipsomaly_lite.offline import MEANINGLESS
    from tipsomaly_lite.backbones import load_backbone

    model = load_backbone(args.variant, image_size=args.image_size or IMAGE_SIZE, device=args.device)
    print(repr(model))
    if model.is_offline:
        print(MEANINGLESS)
    return model


def _dataset_root(data_root: str, key: str) -> Path:
    """``<data_root>/<key>`` as prepared by data_scripts/prepare_dataset.py, or ``data_root`` itself."""
    root = Path(data_root)
    for candidate in (root / key, root):
        if (candidate / "meta.json").is_file():
            return candidate
    raise FileNotFoundError(f"no prepared dataset at {root / key} (nor a meta.json in {root}); prepare it with "
                            f"`python data_scripts/prepare_dataset.py {key} --data-root {root}` "
                            "(or make the toy one: `python data_scripts/make_toy_dataset.py`)")


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
                         cache_dtype=args.cache_dtype)
    result = train_prompts(model, dataset, config, args.out, resume=not args.no_resume, progress=not args.quiet)
    if result.resumed_from:
        print(f"resumed after epoch {result.resumed_from}")
    for epoch, loss in enumerate(result.epoch_losses, 1):
        print(f"epoch {epoch}: mean loss {loss:.4f}")
    if result.history:
        from matplotlib import pyplot as plt

        from tipsomaly_lite.course.viz import plot_loss_curve

        title = f"{model.variant} on {args.dataset}" + (" (MEANINGLESS: offline)" if model.is_offline else "")
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
    result = evaluate(detector, dataset, batch_size=args.batch_size, aupro_mode=args.aupro_mode,
                      num_workers=args.workers, progress=not args.quiet, extra_config=_prompts_provenance(args))
    out = Path(args.out or Path("runs") / "eval" / args.dataset)
    paths = result.save(out, paper=args.paper)
    print(result.to_markdown(paper=args.paper))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    """Every prepared dataset under --data-root with the paper's cross-dataset prompts, one table."""
    from tipsomaly_lite.data.datasets import DATASET_KEYS, AnomalyDataset
    from tipsomaly_lite.method.detector import Detector
    from tipsomaly_lite.eval.evaluation import benchmark_table, evaluate, prompts_trained_on
    from tipsomaly_lite.data.released_prompts import load_released_prompts
    from tipsomaly_lite.method.training import load_trained_prompts

    root = Path(args.data_root)
    keys = args.datasets or [k for k in DATASET_KEYS if (root / k / "meta.json").is_file()]
    missing = [k for k in keys if not (root / k / "meta.json").is_file()]
    if missing or not keys:
        raise FileNotFoundError(f"no prepared dataset for {missing or list(DATASET_KEYS)} under {root}; prepare "
                                "them with `python data_scripts/prepare_dataset.py KEY --data-root DATA`")
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
        results[key].save(out / key, paper=True)
    table = benchmark_table(results)
    with atomic_file(out / "benchmark.md", "w", encoding="utf-8") as f:
        f.write(table)
    print("\n" + table)
    print(f"wrote {out / 'benchmark.md'} and one folder per dataset under {out}")
    return 0


def _image_files(specs: list[str]) -> list[Path]:
    from tipsomaly_lite.data.datasets import is_image_file

    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file() and is_image_file(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--images {spec}: not an image file or a folder of images")
    if not files:
        raise FileNotFoundError(f"--images {' '.join(specs)}: no images found (png, jpg, bmp, tif)")
    return files


def _predict(args: argparse.Namespace) -> int:
    from matplotlib import pyplot as plt

    from tipsomaly_lite.backbones.preprocess import to_float_rgb
    from tipsomaly_lite.course.viz import overlay_anomaly_map
    from tipsomaly_lite.method.maps import upsample_map

    files = _image_files(args.images)
    prompts, source = _prompts(args)
    model = _load_model(args)
    detector = _detector(args, model, prompts, source)
    size = model.image_size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(files), args.batch_size):
        chunk = files[start:start + args.batch_size]
        originals = [to_float_rgb(f) for f in chunk]  # names the file when it cannot be read
        pred = detector.predict(model.preprocess(originals, size), args.class_name)
        for i, (path, original) in enumerate(zip(chunk, originals)):
            # The map is drawn over the photo at its own size, not over the squashed model input.
            amap = upsample_map(pred.anomaly_map[i:i + 1], tuple(original.shape[-2:]))[0]
            fig, axes = plt.subplots(1, 2, figsize=(6, 3))
            axes[0].imshow(original.permute(1, 2, 0).numpy())
            axes[0].set_title(path.name)
            axes[0].axis("off")
            title = f"score {float(pred.image_score[i]):.3f}"
            if model.is_offline:
                title += " (MEANINGLESS)"
            overlay_anomaly_map(original, amap, ax=axes[1], title=title, vmin=0.0, vmax=1.0)  # probabilities
            fig.tight_layout()
            target = out / f"{path.stem}_overlay.png"
            with atomic_file(target) as fh:
                fig.savefig(fh, format="png")
            plt.close(fig)
            rows.append({"path": str(path), "class_word": args.class_name,
                         "image_score": f"{float(pred.image_score[i]):.6f}",
                         "global_score": f"{float(pred.global_score[i]):.6f}",
                         "local_score": f"{float(pred.local_score[i]):.6f}",
                         "overlay": str(target)})
            print(f"{path.name}: score {rows[-1]['image_score']} -> {target}")
    with atomic_file(out / "scores.csv", "w", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out / 'scores.csv'} ({len(rows)} images; scores lie in [0, 2], higher = more anomalous)")
    if model.is_offline:
        print("NOTE: offline tiny random model -- these scores and maps are meaningless.")
    return 0


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", default="l14-hr", help="TIPS variant (default: l14-hr, the paper's); 'tiny' = offline")
    p.add_argument("--image-size", type=int, default=None, help="input side in px, a multiple of 14 (default: 518)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (default: 8)")
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
    p.add_argument("--sigma", type=float, default=4.0, help="Gaussian smoothing of the maps, px (default: 4)")


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except _USER_ERRORS as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"tipsomaly {args.command}: error: {message}", file=sys.stderr)
            return 2
    return run


def build_parser() -> argparse.ArgumentParser:
    """The ``tipsomaly`` argument parser; each sub-command's ``func`` runs it (``args.func(args)``).

    Taught in notebooks/06_benchmark.ipynb.
    """
    parser = argparse.ArgumentParser(prog="tipsomaly", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tipsomaly_lite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="write a PNG of patch-text similarity maps")
    demo.add_argument("--out", default="build/demo", help="output folder (default: build/demo)")
    demo.add_argument("--variant", default="l14-hr",
                      help="TIPS variant, used when its weights are in the cache; else the offline tiny model")
    demo.add_argument("--size", type=int, default=None, help="input side, a multiple of 14 (default: native)")
    demo.set_defaults(func=_demo)
    fetch = sub.add_parser("fetch", help="download a TIPS variant + tokenizer into the cache")
    fetch.add_argument("variant", help="e.g. l14-hr, b14-hr, v2-b14")
    fetch.set_defaults(func=_fetch)

    train = sub.add_parser("train", help="learn the pixel prompts on an auxiliary dataset")
    _data_args(train)
    _model_args(train)
    train.add_argument("--out", required=True, help="run folder (config, history, checkpoints); resumed if it exists")
    train.add_argument("--epochs", type=int, default=2, help="(default: 2, as the released prompts)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--seed", type=int, default=111, help="(default: 111)")
    train.add_argument("--n-tokens", type=int, default=8, help="learnable vectors per state (default: 8)")
    train.add_argument("--cache", default="auto", choices=["auto", "memory", "disk", "none"],
                       help="frozen-feature cache (default auto: memory up to 2 GiB, else disk in the run folder)")
    train.add_argument("--cache-dtype", default="float16", choices=["float16", "float32"])
    train.add_argument("--no-resume", action="store_true", help="start again even if the run folder has checkpoints")
    train.set_defaults(func=_guarded(_train))

    ev = sub.add_parser("evaluate", help="per-class metrics on a dataset -> results.md/.csv/.json")
    _data_args(ev)
    _model_args(ev)
    _detector_args(ev)
    ev.add_argument("--aupro-mode", default="standard", choices=["standard", "compat"],
                    help="standard (exact, FPR <= 0.3) or compat (the ZSAD papers' 200 thresholds)")
    ev.add_argument("--paper", action="store_true", help="print the paper's numbers beside ours")
    ev.add_argument("--out", default=None, help="output folder (default: runs/eval/<dataset>)")
    ev.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: 0)")
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
    bench.add_argument("--sigma", type=float, default=4.0, help="Gaussian smoothing of the maps, px (default: 4)")
    bench.add_argument("--aupro-mode", default="compat", choices=["standard", "compat"],
                       help="compat (default here: the paper's recipe) or standard")
    bench.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: 0)")
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
