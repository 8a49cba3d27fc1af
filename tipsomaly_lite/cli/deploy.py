"""``tipsomaly export`` (one class's detector as an ONNX file) and ``tipsomaly app`` (the Gradio demo page)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tipsomaly_lite.cli.common import cache_input, command, detector_args, load_model, make_detector, model_args
from tipsomaly_lite.io import flags
from tipsomaly_lite.offline import MEANINGLESS_TAG


def check_out_file(path: str, overwrite: bool, inputs: dict[str, Any], suffix: str = ".onnx") -> Path:
    """The ``--out`` file of an export: named ``*.onnx``, apart from the inputs, new unless ``--overwrite``.

    Raises:
        OutputError / ValueError: one line naming ``--out`` and what was expected.
    """
    from tipsomaly_lite.io.guard import OutputError, check_apart, check_folder_path

    out = Path(path)
    if out.suffix.lower() != suffix:
        raise ValueError(f"--out {path}: expected a file name ending in {suffix}")
    check_apart(out, inputs)
    check_folder_path(out.parent)  # the folder it goes in is not a file
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise OutputError(f"--out {path} exists and is not a regular file; it is left alone: choose another name")
    if out.exists() and not overwrite:
        raise OutputError(f"--out {path} already exists; it is left alone: pass --overwrite to replace it, or choose "
                          "another name")
    return out


def _export(args: argparse.Namespace) -> int:
    from tipsomaly_lite.deploy.export import check_class_word, export_onnx, require_export_extra
    from tipsomaly_lite.method.prompt_files import load_prompts, run_record

    try:
        require_export_extra()
    except ImportError as exc:  # a missing extra is the user's to install: one line, exit 2
        raise ValueError(str(exc)) from None
    word = check_class_word(args.class_name)
    if args.dtype != "fp32":
        raise ValueError(f"--dtype {args.dtype}: the export is checked against fp32 PyTorch; export with --dtype fp32")
    out = check_out_file(args.out_file, args.overwrite, {"--prompts": args.prompts, **cache_input()})
    if args.device == "auto":
        args.device = "cpu"  # the graph is checked with onnxruntime on the CPU
    prompts, source = load_prompts(args.prompts, args.released)
    model = load_model(args)
    detector = make_detector(args, model, prompts, source, run_record(args.prompts), args.prompts)
    result = export_onnx(detector, word, out)
    size = result.image_size
    print(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB): input image (B, 3, {size}, {size}) "
          f"float32 in [0, 1]; outputs image_score (B,), anomaly_map (B, {size}, {size}); class word {word!r}, "
          f"{detector.prompts_source} prompts; onnxruntime equals Detector.predict to {result.max_error:.1e}")
    if model.is_offline:
        print(MEANINGLESS_TAG)
    return 0


def _app(args: argparse.Namespace) -> int:
    import importlib.util

    from tipsomaly_lite.deploy.app import check_port, launch_app

    if importlib.util.find_spec("gradio") is None:  # a missing extra is the user's to install: one line, exit 2
        raise ValueError("the app needs Gradio, which is not installed: pip install 'tipsomaly_lite[app]'")
    check_port(args.port, args.host)  # before the model is loaded: a port in use is one line, at once
    return launch_app(args)


def add(sub: Any) -> None:
    """Register ``export`` and ``app``."""
    ex = sub.add_parser("export", help="one class's detector as an ONNX file (image in, score and map out)")
    ex.add_argument("--format", default="onnx", choices=["onnx"], help="file format (default: onnx)")
    ex.add_argument("--class-name", required=True, help='the object\'s word baked into the prompts: "metal nut"')
    ex.add_argument("--out", dest="out_file", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    model_args(ex)
    detector_args(ex)
    ex.set_defaults(func=command("export", _export))

    ap = sub.add_parser("app", help="a web page to try the detector on uploaded photos (Gradio)")
    ap.add_argument("--port", type=flags.port, default=7860, help="TCP port (default: 7860; 0: any free one)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ap.add_argument("--share", action="store_true", help="also a public gradio.live link (Colab)")
    model_args(ap)
    detector_args(ap)
    ap.set_defaults(func=command("app", _app))
