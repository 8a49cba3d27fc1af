"""Command line: ``tipsomaly <command>`` or ``python -m tipsomaly_lite <command>``.

- ``demo``: a PNG of patch-text similarity maps.
- ``fetch``: download a TIPS variant into the cache (``--list``: every variant and its URL).
- ``download``: download a benchmark from its owners, check it and extract it (``--list``: all seven).
- ``prepare``: turn a downloaded benchmark into the one prepared format (MVTec-like tree + meta.json).
- ``toy-data``: write the small synthetic toy dataset the offline mode uses.
- ``train``: learn the pixel prompts on an auxiliary dataset (a run folder with checkpoints).
- ``evaluate``: the six metrics per class on a dataset (Markdown, CSV, JSON + config).
- ``benchmark``: the paper's table: every prepared dataset, prompts trained on the other dataset.
- ``predict``: anomaly-map overlays and a CSV of scores for your own images (``--normal-images`` or
  ``--threshold``: a decision per image and ``threshold.json``).
- ``export``: one class's detector as an ONNX file (image in, score and map out).
- ``app``: a web page (Gradio) to try the detector on uploaded photos.
- ``grade``: run a class's notebooks offline and write what each exercise's self-check said (a CSV).

All of them run offline on the tiny offline model, a toy TIPS (``TIPSOMALY_OFFLINE=1``), with a warning that
the numbers are meaningless.

``train``, ``evaluate`` and ``benchmark`` also run on several processes started by ``torchrun``
(``torchrun --nproc_per_node 4 -m tipsomaly_lite evaluate ...``); rank 0 alone prints and writes, and
the results equal one process's (:mod:`tipsomaly_lite.distributed`). Every command writes only through
the output guard (:mod:`tipsomaly_lite.io.guard`) and fails behind one boundary (:mod:`tipsomaly_lite.io.boundary`).

One module per command group (``cli/<group>.py``, each with an ``add(sub)``), sharing the flags and the
error boundary of :mod:`tipsomaly_lite.cli.common`.

Taught in notebooks/06_benchmark.ipynb.
"""

from __future__ import annotations

import argparse
import sys

from tipsomaly_lite import __version__
from tipsomaly_lite.cli import data_commands, deploy, evaluate, grade, predict, train

#: The command groups in the order ``tipsomaly --help`` lists them; a new group is one module and one entry.
GROUPS = (data_commands, train, evaluate, predict, deploy, grade)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``tipsomaly train: error: argument --batch-size: ...``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``tipsomaly`` argument parser; each sub-command's ``func`` runs it (``args.func(args)``).

    Taught in notebooks/06_benchmark.ipynb.
    """
    parser = _Parser(prog="tipsomaly", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tipsomaly_lite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add(sub)
    return parser


def main(argv: list[str] | None = None, epilog: str | None = None) -> int:
    """Run ``tipsomaly <command> ...`` (``argv`` defaults to the command line).

    Args:
        argv: the arguments after ``tipsomaly``.
        epilog: text shown under the command's ``--help`` (the data_scripts' examples).
    Returns:
        The exit code: 0 on success, 2 for an error the user can fix (printed as one line), 1 for a bug
        (one line naming the log file that holds the traceback).
    Taught in notebooks/07_your_own_images.ipynb.
    """
    parser = build_parser()
    if epilog and argv:
        command = parser._subparsers._group_actions[0].choices.get(argv[0])  # the sub-command's own parser
        command.epilog, command.formatter_class = epilog, argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
