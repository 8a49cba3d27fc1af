"""``tipsomaly grade``: run a class's notebooks offline and write what each exercise's self-check said.

A grading aid, not a security sandbox: each notebook runs as you, in a fresh kernel in a scratch
folder, with a time limit (:mod:`tipsomaly_lite.course.grading`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tipsomaly_lite.cli.common import command
from tipsomaly_lite.io import flags


def _grade(args: argparse.Namespace) -> int:
    from tipsomaly_lite.course.grading import (GRADE_COLUMNS, SUMMARY_COLUMNS, grade_notebooks, grades_csv,
                                               summary_csv, summary_path)
    from tipsomaly_lite.io.atomic import atomic_file
    from tipsomaly_lite.io.guard import check_file_output

    notebooks = [Path(p) for p in args.notebooks]
    for p in notebooks:
        if not p.is_file():
            raise FileNotFoundError(f"NOTEBOOK {p}: no such file (give the .ipynb files to grade)")
        if p.suffix != ".ipynb":
            raise ValueError(f"NOTEBOOK {p}: expected a .ipynb file")
    try:
        import nbclient  # noqa: F401
    except ImportError:
        raise ValueError('tipsomaly grade runs notebooks with nbclient, which is not installed: '
                         'pip install "tipsomaly_lite[course]" (or pip install nbclient ipykernel)') from None
    out, summary = Path(args.out_csv), summary_path(args.out_csv)
    inputs = {"NOTEBOOK": [str(p) for p in notebooks]}
    check_file_output(out, header=",".join(GRADE_COLUMNS), inputs=inputs)
    check_file_output(summary, header=",".join(SUMMARY_COLUMNS), inputs=inputs)
    rows = grade_notebooks(notebooks, timeout_s=args.timeout)
    for path, text in ((out, grades_csv(rows)), (summary, summary_csv(rows))):
        with atomic_file(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    graded = sum(1 for r in rows if r.exercise)
    print(f"wrote {out} ({len(rows)} rows: {sum(r.passed for r in rows)} of {graded} exercises passed) and {summary}")
    print("tipsomaly grade: a grading aid, not a security sandbox (each notebook ran as you, offline, on the tiny "
          "model: its numbers are meaningless, its self-checks are not)")
    return 0


def add(sub: Any) -> None:
    """Register ``grade``."""
    from tipsomaly_lite.course.grading import DEFAULT_TIMEOUT_S

    gr = sub.add_parser("grade", help="run notebooks offline and grade their self-checked exercises (a CSV)",
                        description="Run each notebook offline in a fresh kernel and write one row per notebook "
                                    "and exercise, plus a summary per student (<out>_summary.csv). A grading aid, "
                                    "not a security sandbox: the notebooks run as you.")
    gr.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="the submitted .ipynb files (one folder per "
                    "student, named after them; or all in one folder, named after the student)")
    gr.add_argument("--out", dest="out_csv", required=True,
                    help="the grades CSV (the summary goes beside it as <name>_summary.csv)")
    gr.add_argument("--timeout", type=flags.grade_timeout, default=DEFAULT_TIMEOUT_S,
                    help=f"seconds one notebook may run, kernel start included (default: {DEFAULT_TIMEOUT_S})")
    gr.set_defaults(func=command("grade", _grade))
