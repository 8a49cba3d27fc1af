"""``tipsomaly evaluate`` (the six metrics per class on one dataset) and ``tipsomaly benchmark`` (the paper's table)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from tipsomaly_lite import distributed
from tipsomaly_lite.cli.common import (cache_input, command, data_args, detector_args, load_model, make_detector,
                                     map_args, model_args, open_dataset)
from tipsomaly_lite.io import flags


def _protocol(args: argparse.Namespace, key: str, record: dict[str, Any]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """``args`` and the prompts' run ``record`` under the authors' fixed prompt choice for ``key``.

    Without ``--prompt-set``, HeadCT, BrainMRI and Br35H get the ``medical`` sentences
    (:func:`~tipsomaly_lite.eval.protocol.fixed_prompt_set`); the learned prompts, trained inside other
    sentences, are used inside these, as the authors do, so their run's sentences are not compared.
    Every other dataset keeps the run's own set (else ``industrial``), unchanged.
    """
    from tipsomaly_lite.eval.protocol import FIXED_PROMPT_SETS

    if args.prompt_set is not None or key not in FIXED_PROMPT_SETS:
        return args, record
    args = copy.copy(args)
    args.prompt_set = FIXED_PROMPT_SETS[key]
    if "prompt_sentences" in record:
        print(f"{key}: fixed prompts {args.prompt_set!r} (the authors' protocol); the learned prompts were trained "
              "inside other sentences and are used inside these")
        record = {k: v for k, v in record.items() if k != "prompt_sentences"}
    return args, record


def few_shot_args(p: argparse.ArgumentParser, runs: bool = False) -> None:
    """``--shots``, ``--shot-seed`` (and ``--shot-runs`` for benchmark) and ``--mutual-scoring``."""
    p.add_argument("--shots", type=flags.shots, default=0,
                   help=f"K normal reference images per class from the train split (default 0: zero-shot; "
                        f"at most {flags.MAX_SHOTS})")
    p.add_argument("--shot-seed", type=flags.seed, default=0, help="seed of the draw of the references (default: 0)")
    if runs:
        p.add_argument("--shot-runs", type=flags.shot_runs, default=3,
                       help="with --shots: draws (seeds shot-seed, shot-seed+1, ...) reported as mean ± std "
                            "(default: 3)")
    p.add_argument("--mutual-scoring", action="store_true",
                   help="batch zero-shot: score each class's test images against each other (no references)")


def _drawn(args: argparse.Namespace, root: Path, classes: list[str] | None, seed: int) -> dict[str, list[str]]:
    """The references of every evaluated class, drawn before the model loads (cheap checks first)."""
    from tipsomaly_lite.data.datasets import read_meta
    from tipsomaly_lite.method.few_shot import draw_references

    if args.shots and args.mutual_scoring:
        raise ValueError("--shots and --mutual-scoring are two settings (references from the train split, or "
                         "the test batch itself); use one at a time")
    if not args.shots:
        return {}
    test = read_meta(root)["test"]
    unknown = sorted(set(classes or []) - set(test))
    if unknown:
        raise ValueError(f"--classes {unknown} are not in the test split of {root}; available: {sorted(test)}")
    return draw_references(root, classes or sorted(test), args.shots, seed)


def _use_references(detector, root: Path, drawn: dict[str, list[str]], key: str, batch_size: int) -> None:
    from tipsomaly_lite.method.few_shot import ReferenceMemory

    detector.references = ReferenceMemory.from_dataset(detector.model, root, drawn, key=key,
                                                       batch_size=batch_size) if drawn else None
    if drawn:
        print(f"few-shot: {detector.references!r} from the train split of {root}")


def _few_shot_config(args: argparse.Namespace, drawn: dict[str, list[str]], seed: int | None) -> dict:
    return {"shots": args.shots, "shot_seed": seed if args.shots else None, "reference_images": drawn,
            "mutual_scoring": bool(args.mutual_scoring)}


def _evaluate(args: argparse.Namespace) -> int:
    from tipsomaly_lite.data.datasets import find_prepared
    from tipsomaly_lite.data.registry import canonical_key
    from tipsomaly_lite.eval.evaluation import evaluate
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, run_record, run_settings

    args.dataset = canonical_key(args.dataset)  # cvc-colondb -> colondb
    root = find_prepared(args.data_root, args.dataset)  # cheap checks before loading the model
    prompts, source = load_prompts(args.prompts, args.released)
    record = run_record(args.prompts)
    args, record = _protocol(args, args.dataset, record)
    drawn = _drawn(args, root, args.classes, args.shot_seed)
    out = Path(args.out or Path("runs") / "eval" / args.dataset)
    inputs = {"the dataset": root, "--prompts": args.prompts, **cache_input()}
    distributed.main_only(claim_folder, out, command="evaluate", inputs=inputs)  # before the long part
    model = load_model(args)
    dataset = open_dataset(args, root, model)
    detector = make_detector(args, model, prompts, source, record, args.prompts)
    _use_references(detector, root, drawn, args.dataset, args.batch_size)
    train = run_settings(record)  # the prompts' training seed and settings, when they are our run's
    extra = {"seed": train.get("seed"), "prompts_training": train} if train else {"seed": None}
    result = evaluate(detector, dataset, batch_size=args.batch_size, aupro_mode=args.aupro_mode,
                      num_workers=args.workers, progress=not args.quiet, mutual_scoring=args.mutual_scoring,
                      extra_config={**extra, **_few_shot_config(args, drawn, args.shot_seed)})
    print(result.to_markdown(paper=args.paper))  # shown even if writing fails after all (a full disk)
    if distributed.is_main():
        paths = result.save(out, paper=args.paper)
        finish_folder(out, "evaluate")
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    """Every prepared dataset of the suite under --data-root with the paper's cross-dataset prompts, one table."""
    from tipsomaly_lite.data.datasets import AnomalyDataset
    from tipsomaly_lite.data.registry import SUITES, canonical_key
    from tipsomaly_lite.eval.evaluation import benchmark_table, evaluate, prompts_trained_on
    from tipsomaly_lite.eval.seeds import seeds_table
    from tipsomaly_lite.io.atomic import atomic_file
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, run_record

    root = Path(args.data_root)
    suite = SUITES[args.suite]
    keys = [canonical_key(k) for k in args.datasets] if args.datasets else [
        k for k in suite if (root / k / "meta.json").is_file()]
    missing = [k for k in keys if not (root / k / "meta.json").is_file()]
    if missing or not keys:
        raise FileNotFoundError(f"no prepared dataset for {missing or list(suite)} under {root}; prepare "
                                "them with `tipsomaly prepare KEY --source RAW --data-root DATA`")
    runs = {"mvtec": args.mvtec_prompts, "visa": args.visa_prompts}
    plan = {}  # every prompt file is fetched before the long part
    seeds = [args.shot_seed + r for r in range(args.shot_runs)] if args.shots else [None]
    for key in keys:
        source = prompts_trained_on(key)
        run = None if args.training_free else runs[source]
        prompts, where = (None, "none") if args.training_free else load_prompts(run, None if run else source)
        where = f"{run} (trained on {source})" if run else where
        draws = {seed: _drawn(args, root / key, None, seed or 0) for seed in seeds}  # before the long part
        plan[key] = (prompts, where, *_protocol(args, key, run_record(run)), run, draws)
    out = Path(args.out)
    inputs = {"the datasets": [root / k for k in keys], "--mvtec-prompts": args.mvtec_prompts,
              "--visa-prompts": args.visa_prompts, **cache_input()}
    distributed.main_only(claim_folder, out, command="benchmark", inputs=inputs)
    model = load_model(args)
    results, by_seed = {}, {}
    for key, (prompts, source, key_args, record, run, draws) in plan.items():
        dataset = AnomalyDataset(root / key, image_size=model.image_size, key=key)
        print(f"\n== {key}: {dataset}\n   prompts: {source}")
        detector = make_detector(key_args, model, prompts, source, record, run)
        for seed, drawn in draws.items():
            _use_references(detector, root / key, drawn, key, args.batch_size)
            result = evaluate(detector, dataset, batch_size=args.batch_size, aupro_mode=args.aupro_mode,
                              num_workers=args.workers, progress=not args.quiet, mutual_scoring=args.mutual_scoring,
                              extra_config=_few_shot_config(args, drawn, seed))
            by_seed.setdefault(key, []).append(result)
            if distributed.is_main():  # under torchrun rank 0 alone writes
                result.save(out / key / f"shot-seed-{seed}" if args.shots else out / key, paper=True)
        results[key] = by_seed[key][0]
    table = seeds_table(by_seed, args.shots, seeds) if args.shots else benchmark_table(results)
    if distributed.is_main():
        with atomic_file(out / "benchmark.md", "w", encoding="utf-8") as f:
            f.write(table)
        finish_folder(out, "benchmark")
    print("\n" + table)
    print(f"wrote {out / 'benchmark.md'} and one folder per dataset under {out}")
    return 0


def add(sub: Any) -> None:
    """Register ``evaluate`` and ``benchmark``."""
    ev = sub.add_parser("evaluate", help="per-class metrics on a dataset -> results.md/.csv/.json")
    data_args(ev)
    model_args(ev)
    detector_args(ev)
    ev.add_argument("--aupro-mode", default="standard", choices=["standard", "compat"],
                    help="standard (exact, FPR <= 0.3) or compat (the ZSAD papers' 200 thresholds)")
    ev.add_argument("--paper", action="store_true", help="print the paper's numbers beside ours")
    ev.add_argument("--out", default=None, help="output folder (default: runs/eval/<dataset>)")
    ev.add_argument("--workers", type=flags.workers, default=0, help="DataLoader workers (default: 0)")
    few_shot_args(ev)
    ev.set_defaults(func=command("evaluate", _evaluate))


    bench = sub.add_parser("benchmark", help="the paper's table: every prepared dataset of a suite, cross-dataset "
                                             "prompts")
    bench.add_argument("--data-root", default="data", help="folder holding the prepared datasets (default: data)")
    bench.add_argument("--suite", default="industrial", choices=["industrial", "medical"],
                       help="industrial (default: the paper's seven) or medical (the authors' seven more: HeadCT, "
                            "BrainMRI, Br35H with the medical fixed prompts; ISIC, CVC-ColonDB, CVC-ClinicDB, TN3K)")
    bench.add_argument("--datasets", nargs="+", default=None,
                       help="these keys instead (default: every prepared one of the --suite)")
    model_args(bench)
    bench.add_argument("--mvtec-prompts", default=None,
                       help="run folder of prompts trained on MVTec AD (evaluate the others); default: released")
    bench.add_argument("--visa-prompts", default=None,
                       help="run folder of prompts trained on VisA (evaluate MVTec AD); default: released")
    bench.add_argument("--training-free", action="store_true", help="fixed prompts only, no learned ones")
    map_args(bench)
    bench.add_argument("--aupro-mode", default="compat", choices=["standard", "compat"],
                       help="compat (default here: the paper's recipe) or standard")
    bench.add_argument("--workers", type=flags.workers, default=0, help="DataLoader workers (default: 0)")
    bench.add_argument("--out", default="runs/benchmark", help="output folder (default: runs/benchmark)")
    few_shot_args(bench, runs=True)
    bench.set_defaults(func=command("benchmark", _benchmark))

