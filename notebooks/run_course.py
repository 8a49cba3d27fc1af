"""Run the whole course top to bottom and write an HTML copy of each notebook (``make demo``).

Each notebook is executed in a fresh kernel from the notebooks folder. Offline mode is forced
unless ``--real`` is given, so this works on any machine without downloads; the HTML shows every
figure, so a teacher can read the course without Jupyter. The committed notebooks are not touched.

    python notebooks/run_course.py                       # -> build/course/index.html
    python notebooks/run_course.py --out DIR --only 03 04
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _write_atomic(path: Path, text: str) -> None:
    from tipsomaly_lite.data.atomic import atomic_file

    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def run_notebook(path: Path, out_dir: Path, timeout: int = 600) -> float:
    """Execute one notebook and write ``out_dir/<name>.html``; returns the seconds it took."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    body, _ = HTMLExporter().from_notebook_node(nb)
    _write_atomic(out_dir / f"{path.stem}.html", body)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/course", help="HTML folder (default: build/course)")
    parser.add_argument("--only", nargs="+", default=None, help="notebook numbers to run, e.g. 03 04")
    parser.add_argument("--real", action="store_true", help="do not force the offline mode")
    args = parser.parse_args(argv)
    if not args.real:
        os.environ["TIPSOMALY_OFFLINE"] = "1"  # inherited by every kernel
    os.environ.pop("MPLBACKEND", None)  # figures go inline into the HTML
    os.environ.setdefault("TIPSOMALY_WIDGETS", "static")  # nobody moves a slider in an HTML page
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        paths = [p for p in paths if p.name[:2] in args.only]
    if not paths:
        print("run_course: no notebook matched", file=sys.stderr)
        return 2
    rows, total = [], 0.0
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        seconds = run_notebook(path, out)
        total += seconds
        rows.append((path.stem, seconds))
        print(f"  {seconds:5.1f} s -> {out / (path.stem + '.html')}", flush=True)
    items = "\n".join(f'<li><a href="{html.escape(n)}.html">{html.escape(n)}</a> ({s:.0f} s)</li>' for n, s in rows)
    mode = "real mode" if args.real else "OFFLINE mode: tiny random TIPS and toy data, every number is MEANINGLESS"
    _write_atomic(out / "index.html", f"<html><body><h1>tipsomaly_lite course</h1><p>{mode}</p><ol>{items}</ol>"
                                      f"<p>{total:.0f} s in all</p></body></html>\n")
    print(f"\n{len(rows)} notebooks in {total:.0f} s; open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
