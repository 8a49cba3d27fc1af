#!/usr/bin/env python3
"""Download a benchmark from its owners, check its SHA-256 and extract it into <data-root>/raw/<key>/.

    python data_scripts/download_dataset.py --list
    python data_scripts/download_dataset.py visa --data-root data

The same options and exit codes as `tipsomaly download` (this script runs it).
"""

from __future__ import annotations

import sys

from tipsomaly_lite.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    """``tipsomaly download ARGS``, with this script's examples under ``--help``."""
    return cli(["download", *(sys.argv[1:] if argv is None else argv)], epilog=__doc__)


if __name__ == "__main__":
    sys.exit(main())
