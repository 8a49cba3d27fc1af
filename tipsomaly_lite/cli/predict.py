"""``tipsomaly predict``: anomaly-map overlays and a CSV of scores for your own images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tipsomaly_lite.cli.common import cache_input, command, detector_args, load_model, make_detector, model_args
from tipsomaly_lite.io import flags
from tipsomaly_lite.offline import MEANINGLESS_TAG


def _predict(args: argparse.Namespace) -> int:
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, run_record
    from tipsomaly_lite.deploy.decide import MARGIN, QUANTILE, Threshold, threshold_from_normal_images
    from tipsomaly_lite.predict import image_files, overlay_names, predict_images, reference_files, reference_memory

    files = image_files(args.images)
    names = overlay_names(files, args.images)
    references = reference_files(args.references, files) if args.references else []  # before the model loads
    normal_files = image_files(args.normal_images, "--normal-images") if args.normal_images else []
    prompts, source = load_prompts(args.prompts, args.released)
    claim_folder(args.out, command="predict", inputs={"--images": args.images, "--prompts": args.prompts,
                                                      "--normal-images": args.normal_images,
                                                      "--references": args.references, **cache_input()})
    model = load_model(args)
    detector = make_detector(args, model, prompts, source, run_record(args.prompts), args.prompts)
    if references:
        detector.references = reference_memory(model, references, args.class_name)
        print(f"few-shot: {detector.references!r}")
    threshold = None
    if args.threshold is not None:
        threshold = Threshold.by_hand(args.threshold)
    elif normal_files:
        threshold = threshold_from_normal_images(detector, normal_files, args.class_name, batch_size=args.batch_size)
        print(f"threshold {threshold.image_threshold:.4f} from {threshold.n_normal} known-good images (quantile "
              f"{QUANTILE} of their scores + {MARGIN})")
    stale = Path(args.out) / "threshold.json"
    if threshold is None and stale.is_file():  # a folder we claimed: last run's threshold must not describe this one
        stale.unlink()
    record = {"normal_images": [str(f) for f in normal_files]} if normal_files else {}
    result = predict_images(detector, files, args.class_name, args.out, names=names, batch_size=args.batch_size,
                            threshold=threshold, record=record)
    finish_folder(args.out, "predict")
    print(f"wrote {result.scores_csv} ({len(result.rows)} images scored, {len(result.failed)} failed; scores lie in "
          "[0, 2], higher = more anomalous)")
    if result.threshold_json:
        flagged = sum(r["decision"] == "anomalous" for r in result.rows)
        print(f"decisions: {flagged} anomalous, {len(result.rows) - flagged} normal (image_score > "
              f"{threshold.image_threshold:.4f}); wrote {result.threshold_json}")
    if model.is_offline:
        print(MEANINGLESS_TAG)
    if result.failed:
        print(f"tipsomaly predict: {len(result.failed)} of {len(files)} images could not be read and were skipped: "
              + "; ".join(why for _, why in result.failed), file=sys.stderr)
        return 1  # partly done: the scores are written, but a script should notice
    return 0


def add(sub: Any) -> None:
    """Register ``predict``."""
    pr = sub.add_parser("predict", help="anomaly maps and scores for your own images")
    pr.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    pr.add_argument("--class-name", required=True, help='what the object is, as in a prompt: "metal nut"')
    pr.add_argument("--references", nargs="+", default=None,
                    help="known-good images (files or folders) of the object: few-shot references, fused with "
                         "the zero-shot map")
    pr.add_argument("--out", required=True, help="output folder for overlays and scores.csv (apart from --images)")
    decide = pr.add_mutually_exclusive_group()
    decide.add_argument("--normal-images", nargs="+", default=None, metavar="PATH",
                        help="known-good images of the object (files and/or folders): a threshold from their scores "
                             "(quantile 0.99 + 0.01), a decision column, one colour scale and threshold.json")
    decide.add_argument("--threshold", type=flags.threshold, default=None,
                        help="decide by hand: anomalous when image_score > X (X in [0, 2])")
    model_args(pr)
    detector_args(pr)
    pr.set_defaults(func=command("predict", _predict))
