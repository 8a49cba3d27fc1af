#!/usr/bin/env python3
"""Write the small synthetic toy dataset (MVTec-like tree + meta.json) used offline.

    python data_scripts/make_toy_dataset.py --out data/toy
    python data_scripts/make_toy_dataset.py --out data/toy_big --image-size 256 --n-anomalous 20

Textures and drawn objects with painted defects whose masks are exactly the painted pixels.
Obviously synthetic (see the README.txt it writes): for running the code, not for benchmarking.
"""

from __future__ import annotations

import argparse

from tipsomaly_lite.data import toy_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/toy", help="folder to create (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=toy_data.DEFAULT_SEED)
    parser.add_argument("--image-size", type=int, default=toy_data.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--n-train", type=int, default=toy_data.DEFAULT_N_TRAIN,
                        help="normal training images per class")
    parser.add_argument("--n-normal", type=int, default=toy_data.DEFAULT_N_NORMAL,
                        help="normal test images per class")
    parser.add_argument("--n-anomalous", type=int, default=toy_data.DEFAULT_N_ANOMALOUS,
                        help="anomalous test images per class")
    parser.add_argument("--classes", nargs="+", choices=toy_data.TOY_CLASSES, default=None)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing folder made with other settings")
    args = parser.parse_args(argv)
    out = toy_data.make_toy_dataset(args.out, seed=args.seed, image_size=args.image_size,
                                    n_train=args.n_train, n_normal=args.n_normal,
                                    n_anomalous=args.n_anomalous, classes=args.classes,
                                    overwrite=args.overwrite)
    print(f"toy dataset at {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
