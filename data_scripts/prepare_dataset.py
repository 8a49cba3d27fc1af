#!/usr/bin/env python3
"""Convert a downloaded benchmark from its native layout into <data-root>/<key>/ + meta.json.

    python data_scripts/prepare_dataset.py visa --source data/raw/visa --data-root data
    python data_scripts/prepare_dataset.py dagm --source ~/DAGM --data-root data --protocol balanced

The result is an MVTec-like tree with binarised 0/255 masks, a meta.json (the format AdaCLIP,
AnomalyCLIP and Tipsomaly read) and protocol.json (how the split was made). Per-class test
counts are printed and compared with the published ones (a difference is a warning).
"""

from __future__ import annotations

import argparse
import sys

from tipsomaly_lite.data.datasets import DatasetError
from tipsomaly_lite.data.prepare import prepare_dataset
from tipsomaly_lite.data.registry import DAGM_PROTOCOLS, DATASETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("key", choices=sorted(DATASETS), help="dataset key")
    parser.add_argument("--source", required=True,
                        help="the extracted native dataset, e.g. data/raw/visa")
    parser.add_argument("--data-root", default="data", help="output parent (default: %(default)s)")
    parser.add_argument("--protocol", choices=DAGM_PROTOCOLS, default=None,
                        help="DAGM only: official Test split (default) or balanced Train+Test")
    parser.add_argument("--copy", action="store_true",
                        help="copy images instead of hard-linking them")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    try:
        out = prepare_dataset(args.key, args.source, args.data_root, protocol=args.protocol,
                              link=not args.copy, overwrite=args.overwrite)
    except (DatasetError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"prepared {args.key} at {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
