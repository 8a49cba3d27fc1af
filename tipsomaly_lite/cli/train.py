"""``tipsomaly train``: learn the pixel prompts on an auxiliary dataset (a run folder with checkpoints)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tipsomaly_lite import distributed
from tipsomaly_lite.cli.common import cache_input, command, data_args, load_model, model_args, open_dataset
from tipsomaly_lite.io import flags
from tipsomaly_lite.offline import MEANINGLESS_TAG


def _train(args: argparse.Namespace) -> int:
    from tipsomaly_lite.data.datasets import find_prepared
    from tipsomaly_lite.io.guard import claim_folder, finish_folder
    from tipsomaly_lite.method.prompt_files import load_prompts, prompt_set_for
    from tipsomaly_lite.method.training import TrainConfig, train_prompts

    root = find_prepared(args.data_root, args.dataset)  # cheap checks before loading the model
    initial, _ = load_prompts(args.init_prompts) if args.init_prompts else (None, "")
    distributed.main_only(claim_folder, args.out, command="train",  # under torchrun rank 0 alone writes
                          inputs={"the dataset": root, "--init-prompts": args.init_prompts, **cache_input()})
    model = load_model(args)
    dataset = open_dataset(args, root, model)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         n_tokens=args.n_tokens, prompt_set=prompt_set_for({}, args.prompt_set), cache=args.cache,
                         cache_dtype=args.cache_dtype, shuffle=args.shuffle)
    result = train_prompts(model, dataset, config, args.out, resume=not args.no_resume, progress=not args.quiet,
                           initial_prompts=initial)
    if result.resumed_from:
        print(f"resumed after epoch {result.resumed_from}")
    for epoch, loss in enumerate(result.epoch_losses, 1):
        print(f"epoch {epoch}: mean loss {loss:.4f}")
    if result.history and distributed.is_main():  # under torchrun rank 0 alone writes
        from tipsomaly_lite.course.viz import save_loss_curve

        title = f"{model.variant} on {args.dataset}" + (f" ({MEANINGLESS_TAG})" if model.is_offline else "")
        print(f"loss curve: {save_loss_curve(result.history, Path(args.out) / 'loss.png', title=title)}")
    if distributed.is_main():
        finish_folder(args.out, "train")
    print(f"prompts: {result.checkpoints[-1] if result.checkpoints else '(none written)'}")
    print(f"evaluate them: tipsomaly evaluate --dataset DATASET --data-root {args.data_root} --prompts {args.out}")
    return 0


def add(sub: Any) -> None:
    """Register ``train``."""
    train = sub.add_parser("train", help="learn the pixel prompts on an auxiliary dataset")
    data_args(train)
    model_args(train)
    train.add_argument("--out", required=True, help="run folder (config, history, checkpoints); resumed if it exists")
    train.add_argument("--epochs", type=flags.epochs, default=2, help="(default: 2, as the released prompts)")
    train.add_argument("--lr", type=flags.learning_rate, default=1e-3, help="Adam learning rate (default: 1e-3)")
    train.add_argument("--seed", type=flags.seed, default=111, help="(default: 111)")
    train.add_argument("--n-tokens", type=flags.tokens, default=8, help="learnable vectors per state (default: 8)")
    train.add_argument("--cache", default="auto", choices=["auto", "memory", "disk", "none"],
                       help="frozen-feature cache (default auto: memory up to 2 GiB, else disk in the run folder)")
    train.add_argument("--cache-dtype", default="float16", choices=["float16", "float32"])
    train.add_argument("--no-resume", action="store_true", help="start again even if the run folder has checkpoints")
    train.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=False,
                       help="reshuffle the images every epoch (default: no, dataset order as the authors' loader)")
    train.add_argument("--init-prompts", metavar="PATH",
                       help="start from these prompts instead of the seeded random start: a run folder, a "
                            ".safetensors/.pth prompt file, or released:<name>")
    train.set_defaults(func=command("train", _train))

