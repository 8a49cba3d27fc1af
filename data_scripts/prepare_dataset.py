#!/usr/bin/env python3
"""Convert a downloaded benchmark from its native layout into <data-root>/<key>/ + meta.json.

    python data_scripts/prepare_dataset.py visa --source data/raw/visa --data-root data
    python data_scripts/prepare_dataset.py dagm --source ~/DAGM --data-root data --protocol balanced
    python data_scripts/prepare_dataset.py headct --source ~/head-ct-hemorrhage --data-root data   # medical sets too

The same options and exit codes as `tipsomaly prepare` (this script runs it).
"""

from __future__ import annotations

import sys

from tipsomaly_lite.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    """``tipsomaly prepare ARGS``, with this script's examples under ``--help``."""
    return cli(["prepare", *(sys.argv[1:] if argv is None else argv)], epilog=__doc__)


if __name__ == "__main__":
    sys.exit(main())
