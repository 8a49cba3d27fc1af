"""Command line: ``tipsomaly <command>`` or ``python -m tipsomaly_lite <command>``.

Commands so far: ``demo`` (similarity maps PNG) and ``fetch`` (download a TIPS variant).
"""

from __future__ import annotations

import argparse
import sys

from tipsomaly_lite import __version__


def _demo(args: argparse.Namespace) -> int:
    from tipsomaly_lite.demo import run_demo

    result = run_demo(args.out, variant=args.variant, size=args.size)
    print(f"wrote {result.figure}")
    for row, p in enumerate(result.probabilities):
        print(f"  image {row}: P(normal)={p[0]:.3f} P(damaged)={p[1]:.3f}")
    if result.offline:
        print("NOTE: offline tiny random model -- these numbers are meaningless.")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from tipsomaly_lite.tips import fetch_variant

    for role, path in fetch_variant(args.variant).items():
        print(f"{role:9s} {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
