#!/usr/bin/env python3
"""Download a TIPS variant (vision + text npz) and the shared tokenizer into the cache.

    python data_scripts/fetch_tips.py l14-hr          # Tipsomaly's backbone, ~2 GB
    python data_scripts/fetch_tips.py --list

The same options and exit codes as `tipsomaly fetch` (this script runs it).
"""

from __future__ import annotations

import sys

from tipsomaly_lite.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    """``tipsomaly fetch ARGS``, with this script's examples under ``--help``."""
    return cli(["fetch", *(sys.argv[1:] if argv is None else argv)], epilog=__doc__)


if __name__ == "__main__":
    sys.exit(main())
