"""The data and download commands: ``demo``, ``fetch``, ``download``, ``prepare``, ``toy-data``."""

from __future__ import annotations

import argparse
from typing import Any

from tipsomaly_lite.cli.common import cache_input, command
from tipsomaly_lite.io import flags
from tipsomaly_lite.offline import MEANINGLESS_TAG


def _demo(args: argparse.Namespace) -> int:
    from tipsomaly_lite.course.demo import run_demo
    from tipsomaly_lite.io.guard import claim_folder, finish_folder

    claim_folder(args.out, command="demo", inputs=cache_input())
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


def add(sub: Any) -> None:
    """Register the data sub-commands a pip user needs without a repository checkout (the data_scripts' options)."""
    from tipsomaly_lite.data import toy_data
    from tipsomaly_lite.data.registry import DAGM_PROTOCOLS, DATASET_ALIASES, DATASETS

    keys = sorted(DATASETS) + sorted(DATASET_ALIASES)  # the authors' spellings (cvc-colondb) too

    demo = sub.add_parser("demo", help="write a PNG of patch-text similarity maps")
    demo.add_argument("--out", default="build/demo", help="output folder (default: build/demo)")
    demo.add_argument("--variant", default=None,
                      help="TIPS variant (default: l14-hr when its weights are in the cache, else the offline tiny "
                           "model, said loudly); a named variant loads or downloads as in every command")
    demo.add_argument("--size", type=flags.image_size, default=None,
                      help="input side, a multiple of 14 (default: the model's)")
    demo.set_defaults(func=command("demo", _demo))
    fetch = sub.add_parser("fetch", help="download a TIPS variant + tokenizer into the cache")
    fetch.add_argument("variant", nargs="?", help="e.g. l14-hr, b14-hr, v2-b14")
    fetch.add_argument("--list", action="store_true", help="list the variants and where they come from")
    fetch.set_defaults(func=command("fetch", _fetch))

    dl = sub.add_parser("download", aliases=["download-dataset"],
                        help="download a benchmark from its owners, check its SHA-256 and extract it")
    dl.add_argument("key", nargs="?", choices=keys, help="dataset key")
    dl.add_argument("--data-root", default="data", help="folder for downloads/, raw/ and the prepared datasets "
                    "(default: data)")
    dl.add_argument("--archive", default=None, help="use an archive you downloaded yourself")
    dl.add_argument("--no-verify", action="store_true",
                    help="accept an --archive whose SHA-256 differs from the published one")
    dl.add_argument("--no-progress", action="store_true", help="hide progress bars")
    dl.add_argument("--list", action="store_true", help="describe every dataset (licence, size, link) and exit")
    dl.set_defaults(func=command("download", _download_dataset))

    prep = sub.add_parser("prepare", aliases=["prepare-dataset"],
                          help="convert a downloaded benchmark into <data-root>/<key>/ + meta.json")
    prep.add_argument("key", choices=keys, help="dataset key")
    prep.add_argument("--source", required=True, help="the extracted native dataset, e.g. data/raw/visa")
    prep.add_argument("--data-root", default="data", help="output parent (default: data)")
    prep.add_argument("--protocol", choices=DAGM_PROTOCOLS, default=None,
                      help="DAGM only: official Test split (default) or balanced Train+Test")
    prep.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing output")
    prep.set_defaults(func=command("prepare", _prepare_dataset))

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
    toy.set_defaults(func=command("toy-data", _toy_data))
