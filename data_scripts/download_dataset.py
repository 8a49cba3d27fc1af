#!/usr/bin/env python3
"""Download a benchmark from its owners, check its SHA-256 and extract it safely.

    python data_scripts/download_dataset.py visa --data-root data
    python data_scripts/download_dataset.py mvtec --archive ~/mvtec_anomaly_detection.tar.xz
    python data_scripts/download_dataset.py mpdd            # prints how to get it by hand
    python data_scripts/download_dataset.py --list

The archive goes to <data-root>/downloads/ (an interrupted download resumes when you run the
command again) and is extracted into <data-root>/raw/<key>/. Then run prepare_dataset.py.
"""

from __future__ import annotations

import argparse
import sys

from tipsomaly_lite.io.archives import ArchiveError
from tipsomaly_lite.io.download import DownloadError
from tipsomaly_lite.data.prepare import download_dataset, instructions
from tipsomaly_lite.data.registry import DATASETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("key", nargs="?", choices=sorted(DATASETS), help="dataset key")
    parser.add_argument("--data-root", default="data", help="folder for downloads/, raw/ and the "
                        "prepared datasets (default: %(default)s)")
    parser.add_argument("--archive", default=None, help="use an archive you downloaded yourself")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept an --archive whose SHA-256 differs from the published one")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--list", action="store_true", help="describe every dataset and exit")
    args = parser.parse_args(argv)
    if args.list or args.key is None:
        for key in DATASETS:
            print(instructions(key), end="\n\n")
        return 0 if args.list else 2
    try:
        raw = download_dataset(args.key, args.data_root, archive=args.archive,
                               verify=not args.no_verify, progress=not args.no_progress)
    except (DownloadError, ArchiveError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if raw is not None:
        print(f"next: python data_scripts/prepare_dataset.py {args.key} --source {raw} "
              f"--data-root {args.data_root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
