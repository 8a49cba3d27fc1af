"""Write the student copies of the course: every exercise solution replaced by a stub.

The notebooks hold each exercise once, with its solution between ``# BEGIN SOLUTION`` and
``# END SOLUTION``. This script writes copies where that block becomes ``...  # YOUR CODE HERE``
(at the block's indentation), so the student's function returns None and its self-check shows ❌
until it is written. Outputs are cleared; the Colab badge points at the student copy
(``notebooks/student/``), and a line under it says what the copy is. Nothing is kept by hand.

    python3 notebooks/make_student_copies.py           # -> notebooks/student/*.ipynb (runs itself in .venv)
    python3 notebooks/make_student_copies.py --out DIR
    python3 notebooks/make_student_copies.py --out lab --keep-existing   # make lab: a student's work is kept
    make student                                        # the copies, then their HTML (no solutions)

``notebooks/student/`` is committed (Colab opens the student badges from GitHub);
``tests/test_notebooks.py`` fails when it differs from what this script writes.
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
#: The folder, under notebooks/, of the committed copies (session.STUDENT_FOLDER).
STUDENT_FOLDER = "student"
#: The line added under the badge of every student copy.
STUDENT_NOTE = ("*Student copy: the exercises are yours to write (`...  # YOUR CODE HERE`); a ❌ says what is "
                "wrong, `checks.hint(\"name\")` gives a hint, `checks.solution(\"name\")` a worked solution. "
                "Generated from `notebooks/{name}` by `notebooks/make_student_copies.py`.*")


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
    """A student copy of a notebook (parsed JSON): stubs for solutions, no outputs, the student badge.

    Returns ``(copy, n_stubs)``.
    """
    copy = json.loads(json.dumps(notebook))
    copy.get("metadata", {}).pop("widgets", None)  # a saved session's widget state is not the course
    stubs = 0
    stem = name[:-len(".ipynb")] if name.endswith(".ipynb") else name
    for i, cell in enumerate(copy["cells"]):
        if i == 0 and cell["cell_type"] == "markdown":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            # The teacher's badge opens notebooks/NN.ipynb; the copy's opens notebooks/student/NN.ipynb
            # (session.colab_badge_url(name, student=True); a test keeps the two in step).
            teacher = f"/blob/main/notebooks/{stem}.ipynb"
            if teacher in source:
                source = source.replace(teacher, f"/blob/main/notebooks/{STUDENT_FOLDER}/{stem}.ipynb")
                cell["source"] = source.rstrip("\n") + "\n\n" + STUDENT_NOTE.format(name=name)
            continue
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if BEGIN in source:
            stubs += len(re.findall(rf"^\s*{re.escape(BEGIN)}\s*$", source, re.M))
            source = strip_solutions(source, f"{name} cell {i}")
        cell["source"] = source
        cell["outputs"], cell["execution_count"] = [], None
    for cell in copy["cells"]:  # lines as a list, as Jupyter saves them: readable diffs of the committed copies
        if isinstance(cell["source"], str):
            cell["source"] = cell["source"].splitlines(keepends=True)
    return copy, stubs


def student_copy_text(path: Path) -> tuple[str, int]:
    """The student copy of the notebook at ``path`` as the file text this script writes, and its stub count."""
    copy, stubs = student_copy(json.loads(path.read_text(encoding="utf-8")), path.name)
    return json.dumps(copy, indent=1, ensure_ascii=False) + "\n", stubs


def write_student_copies(out_dir: str | os.PathLike, notebooks_dir: str | os.PathLike = HERE, *,
                         keep_existing: bool = False) -> list[Path]:
    """Write a student copy of every ``NN_*.ipynb`` into ``out_dir`` (each file written atomically).

    Args:
        keep_existing: leave a copy that is already there untouched (``make lab``: it holds a
            student's work); only missing ones are written. Every copy's path is returned either way.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb")):
        target = out / path.name
        if keep_existing and target.exists():
            print(f"{path.name}: kept your copy in {out.name}/ (delete it to get a fresh one)")
            written.append(target)
            continue
        text, stubs = student_copy_text(path)
        with atomic_file(target, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(target)
        print(f"{path.name}: {stubs} exercise stub(s)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / STUDENT_FOLDER),
                        help="output folder (default: notebooks/student, the copies Colab opens)")
    parser.add_argument("--keep-existing", action="store_true",
                        help="write only the copies that are missing (make lab: never overwrite a student's work)")
    args = parser.parse_args(argv)
    written = write_student_copies(args.out, keep_existing=args.keep_existing)
    print(f"{len(written)} student notebooks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
