#!/usr/bin/env python3
"""Write the small synthetic toy dataset (MVTec-like tree + meta.json) used offline.

    python data_scripts/make_toy_dataset.py --out data/toy
    python data_scripts/make_toy_dataset.py --out data/toy_big --image-size 256 --n-anomalous 20

The same options and exit codes as `tipsomaly toy-data` (this script runs it).
"""

from __future__ import annotations

import sys

from tipsomaly_lite.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    """``tipsomaly toy-data ARGS``, with this script's examples under ``--help``."""
    return cli(["toy-data", *(sys.argv[1:] if argv is None else argv)], epilog=__doc__)


if __name__ == "__main__":
    sys.exit(main())
