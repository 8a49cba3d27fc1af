"""Write the student copies of the course: every exercise solution replaced by a stub.

The notebooks hold each exercise once, with its solution between ``# BEGIN SOLUTION`` and
``# END SOLUTION``. This script writes copies where that block becomes ``...  # YOUR CODE HERE``
(at the block's indentation), so the student's function returns None and its self-check shows ❌
until it is written. Outputs are cleared. Nothing is kept by hand.

    python3 notebooks/make_student_copies.py           # -> build/student/*.ipynb (runs itself in .venv)
    python3 notebooks/make_student_copies.py --out DIR
    make student                                        # the copies, then their HTML (no solutions)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path


try:
    from tipsomaly_lite.io.atomic import atomic_file
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _venv import reexec_in_venv

    reexec_in_venv(__file__, __name__ == "__main__", "tipsomaly_lite")

HERE = Path(__file__).resolve().parent
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = "...  # YOUR CODE HERE"


def strip_solutions(source: str, where: str = "cell") -> str:
    """Replace each ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` block of ``source`` by a stub line.

    Raises:
        ValueError: an unmatched or nested marker (names ``where``).
    """
    out, inside, indent = [], False, ""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}: nested {BEGIN!r}")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.append(indent + STUB)
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}: {END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN!r} is never closed")
    return "\n".join(out)


def student_copy(notebook: dict, name: str = "notebook") -> tuple[dict, int]:
    """A student copy of a notebook (parsed JSON): stubs for solutions, no outputs. Returns ``(copy, n_stubs)``."""
    copy = json.loads(json.dumps(notebook))
    stubs = 0
    for i, cell in enumerate(copy["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if BEGIN in source:
            stubs += len(re.findall(rf"^\s*{re.escape(BEGIN)}\s*$", source, re.M))
            source = strip_solutions(source, f"{name} cell {i}")
        cell["source"] = source
        cell["outputs"], cell["execution_count"] = [], None
    return copy, stubs


def write_student_copies(out_dir: str | os.PathLike, notebooks_dir: str | os.PathLike = HERE) -> list[Path]:
    """Write a student copy of every ``NN_*.ipynb`` into ``out_dir`` (each file written atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb")):
        copy, stubs = student_copy(json.loads(path.read_text(encoding="utf-8")), path.name)
        with atomic_file(out / path.name, "w", encoding="utf-8") as fh:
            json.dump(copy, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
        written.append(out / path.name)
        print(f"{path.name}: {stubs} exercise stub(s)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/student", help="output folder (default: build/student)")
    args = parser.parse_args(argv)
    written = write_student_copies(args.out)
    print(f"{len(written)} student notebooks in {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
