#!/usr/bin/env python
"""Download a TIPS variant (vision + text npz) and the shared tokenizer into the cache.

    python data_scripts/fetch_tips.py l14-hr          # Tipsomaly's backbone, ~2 GB
    python data_scripts/fetch_tips.py --list

Files go to $TIPSOMALY_HOME/tips/ (default ~/.cache/tipsomaly_lite/tips/), keeping the bucket's
paths. An interrupted download resumes where it stopped when you run the command again.
"""

from __future__ import annotations

import argparse
import sys

from tipsomaly_lite.io.download import DownloadError, cache_dir
from tipsomaly_lite.backbones.tips.registry import BUCKET, VARIANTS, fetch_variant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", nargs="?", help=f"one of: {', '.join(VARIANTS)}")
    parser.add_argument("--list", action="store_true", help="list the variants and where they come from")
    args = parser.parse_args(argv)
    if args.list or not args.variant:
        for v in VARIANTS.values():
            print(f"{v.name:12s} {v.native_size}px  {BUCKET}{v.stem}_{{vision,text}}.npz")
        print(f"cache: {cache_dir() / 'tips'}")
        return 0 if args.list else 2
    try:
        for role, path in fetch_variant(args.variant).items():
            print(f"{role:9s} {path}")
    except (KeyError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
