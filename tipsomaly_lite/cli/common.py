"""What every command shares: the error boundary around it, the model, dataset and detector flags.

A command module (``cli/<name>.py``) defines its work and an ``add(sub)`` that registers its parser; the
flags here keep one spelling and one default across commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from tipsomaly_lite import distributed
from tipsomaly_lite.io import flags
from tipsomaly_lite.io.boundary import run_guarded
from tipsomaly_lite.offline import MEANINGLESS_TAG

#: Commands that share their work among the processes torchrun starts (tipsomaly_lite.distributed).
DISTRIBUTED = ("train", "evaluate", "benchmark")


def command(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``func`` behind the one error boundary, in this process's share of a torchrun run."""

    def run(args: argparse.Namespace) -> int:
        def work() -> int:
            if getattr(args, "out", None):
                from tipsomaly_lite.io.guard import check_folder_path

                check_folder_path(args.out)  # a file in the way is refused before any work
            with distributed.command_processes(name, getattr(args, "device", "auto"), DISTRIBUTED) as device:
                if hasattr(args, "device"):
                    args.device = device
                return func(args)
        return run_guarded(name, work, out=getattr(args, "out", None), quiet=(distributed.PeerFailed,))
    return run


def cache_input() -> dict[str, Any]:
    """The downloaded weights and prompts in the cache, which no output may be, hold or lie inside."""
    from tipsomaly_lite.io.download import download_folders

    return {"the download cache": download_folders()}


def model_args(p: argparse.ArgumentParser) -> None:
    from tipsomaly_lite.backbones import DEFAULT_FAMILY, FAMILIES

    p.add_argument("--backbone", default=DEFAULT_FAMILY, choices=list(FAMILIES),
                   help=f"vision-language backbone family (default: {DEFAULT_FAMILY}, the paper's)")
    p.add_argument("--variant", default=None,
                   help="checkpoint of the family (default: the family's; tips: l14-hr, the paper's; or "
                        "hf:<hub id or folder>); 'tiny' = offline")
    p.add_argument("--image-size", type=flags.image_size, default=None,
                   help="input side in px, a multiple of the patch size (default: the family's, 518 for tips)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, as in the notebooks), cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="the vision tower's dtype; the text tower, scores and maps stay fp32; auto = bf16 where "
                        "the CPU (amx_bf16/avx512_bf16) or GPU has fast bf16, else fp32 (default: fp32, exact)")
    p.add_argument("--batch-size", type=flags.batch, default=8, help="images per step (default: 8)")
    p.add_argument("--prompt-set", default=None,
                   help="fixed prompt set name or .json (default: the --prompts run's set, else industrial; "
                        "medical on headct, brainmri, br35h, as the authors)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def data_args(p: argparse.ArgumentParser) -> None:
    from tipsomaly_lite.data.registry import ALL_DATASET_KEYS

    p.add_argument("--dataset", required=True, help=f"dataset key: {', '.join(ALL_DATASET_KEYS)} (or toy)")
    p.add_argument("--data-root", default="data", help="folder holding the prepared <dataset>/ (default: data)")
    p.add_argument("--classes", nargs="+", default=None, help="only these classes")


def map_args(p: argparse.ArgumentParser) -> None:
    from tipsomaly_lite.method.detector import DEFAULT_SIGMA

    p.add_argument("--token", default=None, help="global token of the backbone (TIPS: cls1, the default, or cls2)")
    p.add_argument("--sigma", type=flags.sigma, default=DEFAULT_SIGMA,
                   help=f"Gaussian smoothing of the maps, px (default: {DEFAULT_SIGMA:g})")


def detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None, help="learned prompts: a train run folder, .safetensors or .pth")
    p.add_argument("--released", default=None, choices=["mvtec", "visa"],
                   help="the authors' released prompts trained on this dataset (downloaded once)")
    p.add_argument("--mode", default=None, choices=["decoupled", "coupled", "training_free"],
                   help="default: decoupled with prompts, training_free without")
    map_args(p)


def load_model(args: argparse.Namespace):
    """The backbone the flags name; ``--image-size`` None lets the backbone's family choose (TIPS: 518)."""
    from tipsomaly_lite.backbones import load_backbone

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_backbone(args.variant, family=args.backbone, image_size=args.image_size, device=device,
                          dtype=args.dtype)
    print(repr(model))  # says TINY RANDOM WEIGHTS for the offline model; the banner came as a warning
    from tipsomaly_lite.eval.report import backbone_line, model_facts

    print(backbone_line(model_facts(model)).replace("**", ""))  # family, variant, dtype, scoring rule
    if args.dtype == "auto":
        print(f"--dtype auto -> {str(model.dtype).removeprefix('torch.')} ({model.dtype_choice})")
    if model.is_offline:
        print(MEANINGLESS_TAG)
    return model


def open_dataset(args: argparse.Namespace, root: Path, model):
    from tipsomaly_lite.data.datasets import AnomalyDataset

    dataset = AnomalyDataset(root, image_size=model.image_size, classes=args.classes, key=args.dataset)
    print(dataset)
    return dataset


def make_detector(args: argparse.Namespace, model, prompts: Any, source: str, record: dict[str, Any], run: Any = None):
    """The detector for learned ``prompts`` (None: fixed prompts); ``record`` is their run's, whose
    prompt set is followed unless --prompt-set says otherwise, and whose backbone and sentences must match."""
    from tipsomaly_lite.method.detector import Detector
    from tipsomaly_lite.method.prompt_files import check_trained_with, prompt_set_for, run_settings
    from tipsomaly_lite.method.prompts import get_prompt_set

    prompt_set = get_prompt_set(prompt_set_for(run_settings(record), args.prompt_set))
    check_trained_with(record, model, prompt_set, run)  # before the prompts meet this model
    detector = Detector(model, prompts, prompt_set=prompt_set, mode=getattr(args, "mode", None), token=args.token,
                        sigma=args.sigma, prompts_source=source)
    print(detector)
    return detector
