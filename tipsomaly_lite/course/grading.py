"""Grade a class's notebooks with the self-checks: what ``tipsomaly grade`` runs.

Each submitted notebook is copied into a scratch folder and run top to bottom in a fresh Jupyter
kernel (nbclient), offline (``TIPSOMALY_OFFLINE=1``: the tiny model and the toy data, nothing
downloaded), with the checks lenient (a ❌ prints, the run goes on) and with one time limit for the
whole notebook. Every exercise check appends its verdict to a log (:data:`~.checks.core.GRADE_LOG_ENV`);
the verdicts become one row per notebook and exercise of the notebook's own (``checks/nbNN.py``):

- ``passed``: ``yes`` when the last call of the check passed;
- ``attempts``: how many calls of the check had an answer (an untouched stub is not an attempt);
- ``detail``: ``passed``; ``not attempted (the stub still returns None)``; the failing check's line;
  or ``never checked`` (the cell was deleted, or an error stopped it).

A notebook that is not from this course, cannot be read, or does not finish in time is one row
saying so. A summary per student (the notebook's folder name; the file name when all notebooks
share one folder) counts the exercises passed.

**A grading aid, not a security sandbox**: a submitted notebook runs as the teacher's user, with
the teacher's files and network, and can write to the verdict log itself. Grade work you would run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["GRADE_COLUMNS", "SUMMARY_COLUMNS", "DEFAULT_TIMEOUT_S", "GradeRow", "course_number", "grade_notebook",
           "grade_notebooks", "student_names", "summarize", "grades_csv", "summary_csv", "summary_path"]

GRADE_COLUMNS = ("student", "notebook", "exercise", "passed", "attempts", "detail")
SUMMARY_COLUMNS = ("student", "notebooks", "exercises", "passed", "percent")
#: Seconds one notebook may run (kernel start included) before it is stopped and graded as unfinished.
DEFAULT_TIMEOUT_S = 300
#: A notebook file larger than this is refused unread (a course notebook without outputs is < 200 kB).
MAX_NOTEBOOK_BYTES = 64 * 2**20
_HEADING = re.compile(r"^#\s+(\d\d)\s+·\s+\S")


@dataclass(frozen=True)
class GradeRow:
    """One row of the grades: a notebook's exercise, or the notebook itself (``exercise == ""``)."""
    student: str
    notebook: str
    exercise: str
    passed: bool
    attempts: int
    detail: str


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def course_number(nb: dict) -> str | None:
    """The two-digit number of the course notebook ``nb`` is a copy of, or None when it is not one.

    A course notebook opens with ``# NN · Title`` (in one of its first three cells), ``NN`` has
    registered exercises, and its code calls at least one of them (``checks.<name>(``).
    """
    from tipsomaly_lite.course.checks import exercises

    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        return None
    for cell in cells[:3]:
        if isinstance(cell, dict) and cell.get("cell_type") == "markdown":
            m = _HEADING.match(_source(cell).lstrip())
            if m:
                number = m.group(1)
                own = exercises(number)
                code = "\n".join(_source(c) for c in cells if isinstance(c, dict) and c.get("cell_type") == "code")
                if own and any(re.search(rf"\bchecks\.{key}\(", code) for key in own):
                    return number
                return None
    return None


def _read_notebook(path: Path) -> dict:
    """The notebook's JSON (size-capped), or ValueError saying why it is not one."""
    if path.stat().st_size > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB")
    try:
        nb = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not a notebook (not JSON: {err})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        raise ValueError("not a Jupyter notebook of format 4")
    return nb


def _kernel_env(log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TIPSOMALY_STRICT_CHECKS", "MPLBACKEND")}
    env.update({"TIPSOMALY_OFFLINE": "1", "TIPSOMALY_WIDGETS": "static", "MPLBACKEND": "Agg",
                "TIPSOMALY_STRICT_CHECKS": "0", "PYTHONHASHSEED": "0"})
    env["TIPSOMALY_GRADE_LOG"] = str(log)
    return env


def _run(nb: dict, folder: Path, log: Path, timeout_s: float) -> tuple[bool, str]:
    """Run ``nb`` in a fresh kernel in ``folder``; ``(finished, what stopped or went wrong)``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    node = nbformat.reads(json.dumps(nb), as_version=4)  # sources as text, as nbclient expects
    for cell in node.cells:  # a saved run's outputs are not the grade
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    deadline = time.monotonic() + timeout_s
    client = NotebookClient(node, timeout=max(1, int(timeout_s)), startup_timeout=max(1, int(timeout_s)),
                            kernel_name="python3", allow_errors=True, interrupt_on_timeout=False,
                            resources={"metadata": {"path": str(folder)}})
    first_error = ""
    try:
        with client.setup_kernel(env=_kernel_env(log), cwd=str(folder)):
            for index, cell in enumerate(node.cells):
                if cell.cell_type != "code":
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, f"did not finish within {timeout_s:g} s (stopped before cell {index})"
                client.timeout = max(1, int(left))
                client.execute_cell(cell, index)
                if not first_error:
                    for out in cell.get("outputs", []):
                        if out.get("output_type") == "error":
                            first_error = f"cell {index} raised {out.get('ename', 'an error')}"
                            break
    except CellTimeoutError:
        return False, f"did not finish within {timeout_s:g} s"
    except (DeadKernelError, RuntimeError, OSError) as err:
        if time.monotonic() >= deadline:
            return False, f"did not finish within {timeout_s:g} s"
        return False, f"the kernel stopped: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
    return True, first_error


def _verdicts(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("exercise"), str):
            out.append(record)
    return out


def grade_notebook(path: str | os.PathLike, student: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[GradeRow]:
    """Run one submitted notebook offline in a fresh kernel and grade each of its exercises.

    Args:
        path: the notebook (never modified: a copy runs in a scratch folder that is removed after).
        student: the name its rows carry.
        timeout_s: seconds the whole notebook may take, kernel start included.
    Returns:
        One :class:`GradeRow` per exercise of the notebook's course number, in the order they are
        registered; or one row for the notebook (``exercise == ""``) when it is not a course
        notebook, cannot be read, or did not finish in time.
    """
    from tipsomaly_lite.course.checks import exercises

    path = Path(path)
    name = path.name

    def whole(detail: str) -> list[GradeRow]:
        return [GradeRow(student, name, "", False, 0, detail)]

    try:
        nb = _read_notebook(path)
    except (OSError, ValueError) as err:
        return whole(f"cannot be read: {err}")
    number = course_number(nb)
    if number is None:
        return whole("not a notebook of this course (no '# NN · Title' heading of a course notebook whose "
                     "exercise checks it calls)")
    with tempfile.TemporaryDirectory(prefix="tipsomaly_grade_") as tmp:
        folder = Path(tmp) / "work"
        folder.mkdir()
        log = Path(tmp) / "verdicts.jsonl"
        shutil.copyfile(path, folder / name)  # what the notebook sees as its own file
        finished, problem = _run(nb, folder, log, timeout_s)
        verdicts = _verdicts(log)
    if not finished:
        return whole(problem)
    rows = []
    for key in exercises(number):
        mine = [v for v in verdicts if v["exercise"] == key]
        answered = [v for v in mine if v.get("answered")]
        if not mine:
            detail = "never checked (its check cell was removed, or an error stopped it" + \
                     (f"; {problem})" if problem else ")")
            rows.append(GradeRow(student, name, key, False, 0, detail))
        elif not answered:
            rows.append(GradeRow(student, name, key, False, 0, "not attempted (the stub still returns None)"))
        else:
            last = answered[-1]
            passed = bool(last.get("passed"))
            detail = "passed" if passed else f"failed: {str(last.get('what', '')).lstrip('❌ ').strip()}"
            rows.append(GradeRow(student, name, key, passed, len(answered), detail))
    return rows


def student_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Who each notebook belongs to: its folder's name; its file name (stem) when all share one folder."""
    resolved = [Path(p).resolve() for p in paths]
    if len({p.parent for p in resolved}) <= 1:
        return [p.stem for p in resolved]
    return [p.parent.name for p in resolved]


def grade_notebooks(paths: Sequence[str | os.PathLike], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                    progress: bool = True) -> list[GradeRow]:
    """Grade every notebook (:func:`grade_notebook`), each in its own fresh kernel, one after the other."""
    rows = []
    for path, student in zip(paths, student_names(paths)):
        if progress:
            print(f"grading {path} ({student}) ...", flush=True)
        start = time.perf_counter()
        mine = grade_notebook(path, student, timeout_s=timeout_s)
        if progress:
            passed = sum(r.passed for r in mine if r.exercise)
            total = sum(bool(r.exercise) for r in mine)
            what = f"{passed} of {total} exercises passed" if total else mine[0].detail
            print(f"  {time.perf_counter() - start:.0f} s: {what}", flush=True)
        rows += mine
    return rows


def summarize(rows: Iterable[GradeRow]) -> list[dict[str, object]]:
    """Per student (in order of appearance): notebooks, exercises, exercises passed, percent passed."""
    out: dict[str, dict[str, object]] = {}
    for r in rows:
        s = out.setdefault(r.student, {"student": r.student, "notebooks": set(), "exercises": 0, "passed": 0})
        s["notebooks"].add(r.notebook)  # type: ignore[union-attr]
        if r.exercise:
            s["exercises"] = int(s["exercises"]) + 1  # type: ignore[arg-type]
            s["passed"] = int(s["passed"]) + int(r.passed)  # type: ignore[arg-type]
    for s in out.values():
        s["notebooks"] = len(s["notebooks"])  # type: ignore[arg-type]
        n = int(s["exercises"])  # type: ignore[arg-type]
        s["percent"] = f"{100 * int(s['passed']) / n:.0f}" if n else "0"  # type: ignore[arg-type]
    return list(out.values())


def _cell(value: object) -> str:
    """A CSV field that a spreadsheet shows as text, never runs as a formula."""
    text = " ".join(str(value).split())
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buf.getvalue()


def grades_csv(rows: Iterable[GradeRow]) -> str:
    """The grades as CSV text, header :data:`GRADE_COLUMNS`."""
    return _csv(GRADE_COLUMNS, ((r.student, r.notebook, r.exercise, "yes" if r.passed else "no", r.attempts,
                                 r.detail) for r in rows))


def summary_csv(rows: Iterable[GradeRow]) -> str:
    """The summary per student as CSV text, header :data:`SUMMARY_COLUMNS`."""
    return _csv(SUMMARY_COLUMNS, ([s[c] for c in SUMMARY_COLUMNS] for s in summarize(rows)))


def summary_path(out: str | os.PathLike) -> Path:
    """Where the summary goes beside ``--out``: ``grades.csv`` -> ``grades_summary.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_summary{out.suffix or '.csv'}")
