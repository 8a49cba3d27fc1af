"""`tipsomaly grade`: a solved notebook passes, a student copy's stubs are not attempted, a wrong answer
fails, a foreign notebook and one that runs out of time are one row each; the CSVs go through the guard.

The notebooks graded here are short stand-ins for notebook 07 (its heading and its three exercise
checks), so each costs one kernel start, not a course notebook's run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from tipsomaly_lite.cli import main
from tipsomaly_lite.course import grading

ROOT = Path(__file__).resolve().parents[1]

_HEAD = "# 07 · Your own images (a short stand-in)\n\nThe exercises of notebook 07 only."
_SETUP = "import numpy as np\nimport torch\nimport torch.nn.functional as F\nfrom tipsomaly_lite import checks"
_THRESHOLD = ('def normal_threshold(normal_scores, max_false_alarm):\n    # BEGIN SOLUTION\n'
              '    scores = torch.as_tensor(normal_scores, dtype=torch.float64)\n'
              '    for t in torch.unique(scores):\n'
              '        if (scores > t).double().mean() <= max_false_alarm:\n'
              '            return np.float32(t)  # float32 on purpose: a fair check passes it\n'
              '    return float(scores.max())\n    # END SOLUTION\n\n'
              'checks.normal_threshold(normal_threshold)')
_F1_WRONG = ('def f1_threshold(labels, scores):\n    # BEGIN SOLUTION\n    return float(np.median(scores))\n'
             '    # END SOLUTION\n\nchecks.f1_threshold(f1_threshold)')
_MAP = ('def map_at_photo_size(anomaly_map, size):\n    # BEGIN SOLUTION\n'
        '    return F.interpolate(anomaly_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]\n'
        '    # END SOLUTION\n\nchecks.map_at_photo_size(map_at_photo_size)')


def _notebook(path: Path, *cells: tuple[str, str]) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook(cells=[new_markdown_cell(s) if kind == "md" else new_code_cell(s) for kind, s in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _student_copy(solved: Path, out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("make_student_copies", ROOT / "notebooks" / "make_student_copies.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    copy, stubs = m.student_copy(json.loads(solved.read_text(encoding="utf-8")), solved.name)
    assert stubs == 3
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(copy), encoding="utf-8")
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_class_is_graded_row_by_row_with_a_summary(tmp_path, capsys, monkeypatch):
    from tipsomaly_lite.course import checks

    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)  # the grader sets it for each kernel
    monkeypatch.setenv(checks.STRICT_ENV, "1")  # and turns strictness off there: a ❌ must not stop the run
    probe = tmp_path / "kernel.json"
    where = (f"import json, os\nopen({str(probe)!r}, 'w').write(json.dumps([os.environ.get('TIPSOMALY_OFFLINE'), "
             "os.environ.get('TIPSOMALY_STRICT_CHECKS'), os.getcwd()]))")
    solved = _notebook(tmp_path / "class" / "ada" / "07_your_own_images.ipynb",
                       ("md", "[badge]"), ("md", _HEAD), ("code", where), ("code", _SETUP), ("code", _THRESHOLD),
                       ("code", _F1_WRONG),
                       ("code", "raise RuntimeError('a student error does not stop the grading')"), ("code", _MAP))
    stubbed = _student_copy(solved, tmp_path / "class" / "bo" / "07_your_own_images.ipynb")
    foreign = _notebook(tmp_path / "class" / "cy" / "homework.ipynb", ("md", "# My own notes"), ("code", "x = 1"))
    out = tmp_path / "grades.csv"
    assert main(["grade", str(solved), str(stubbed), str(foreign), "--out", str(out), "--timeout", "240"]) == 0
    rows = _rows(out)
    assert list(rows[0]) == list(grading.GRADE_COLUMNS)
    by = {(r["student"], r["exercise"]): r for r in rows}
    assert by["ada", "normal_threshold"]["passed"] == "yes" and by["ada", "normal_threshold"]["attempts"] == "1"
    assert by["ada", "f1_threshold"]["passed"] == "no" and by["ada", "f1_threshold"]["detail"].startswith("failed:")
    assert by["ada", "map_at_photo_size"]["passed"] == "yes"  # after a cell that raised
    for key in ("normal_threshold", "f1_threshold", "map_at_photo_size"):
        assert by["bo", key]["passed"] == "no" and by["bo", key]["attempts"] == "0"
        assert by["bo", key]["detail"] == "not attempted (the stub still returns None)"
    (cy,) = [r for r in rows if r["student"] == "cy"]
    assert cy["exercise"] == "" and cy["passed"] == "no" and "not a notebook of this course" in cy["detail"]
    summary = {r["student"]: r for r in _rows(tmp_path / "grades_summary.csv")}
    assert summary["ada"]["passed"] == "2" and summary["ada"]["exercises"] == "3" and summary["ada"]["percent"] == "67"
    assert summary["bo"]["passed"] == "0" and summary["cy"]["exercises"] == "0"
    assert "not a security sandbox" in capsys.readouterr().out
    assert json.loads(solved.read_text())["cells"][3]["outputs"] == []  # the submission is never modified
    offline, strict, cwd = json.loads(probe.read_text())
    assert offline == "1" and strict == "0" and Path(cwd).name == "work" and Path(cwd) != solved.parent
    assert not Path(cwd).exists()  # the scratch folder is removed


def test_a_notebook_that_runs_out_of_time_is_one_row(tmp_path):
    slow = _notebook(tmp_path / "07_slow.ipynb", ("md", "[badge]"), ("md", _HEAD), ("code", _SETUP),
                     ("code", "import time\ntime.sleep(120)"), ("code", _THRESHOLD))
    rows = grading.grade_notebook(slow, "dee", timeout_s=8)
    assert len(rows) == 1 and rows[0].exercise == "" and not rows[0].passed
    assert rows[0].detail.startswith("did not finish within 8 s")


def test_what_is_not_a_course_notebook_is_told_without_running_it(tmp_path):
    broken = tmp_path / "07_broken.ipynb"
    broken.write_text("{not json", encoding="utf-8")
    (row,) = grading.grade_notebook(broken, "eve")
    assert row.detail.startswith("cannot be read: not a notebook")
    # a heading of the course, but none of its checks called: not graded as a course notebook
    imposter = _notebook(tmp_path / "07_imposter.ipynb", ("md", "[badge]"), ("md", _HEAD), ("code", "x = 1"))
    assert "not a notebook of this course" in grading.grade_notebook(imposter, "eve")[0].detail
    course_nb = json.loads((ROOT / "notebooks" / "07_your_own_images.ipynb").read_text(encoding="utf-8"))
    assert grading.course_number(course_nb) == "07"


def test_outputs_go_through_the_guard(tmp_path, capsys):
    foreign = _notebook(tmp_path / "notes.ipynb", ("md", "# notes"))
    mine = tmp_path / "grades.csv"
    mine.write_text("name,mark\nann,10\n", encoding="utf-8")  # the teacher's own file
    assert main(["grade", str(foreign), "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not written by this command" in err and mine.read_text().startswith("name")
    assert main(["grade", str(foreign), "--out", str(foreign)]) == 2  # never over a submission
    assert "an output must stay apart" in capsys.readouterr().err
    out = tmp_path / "g" / "grades.csv"
    for _ in range(2):  # our own CSVs are replaced on a second run
        assert main(["grade", str(foreign), "--out", str(out)]) == 0
    assert len(_rows(out)) == 1 and (tmp_path / "g" / "grades_summary.csv").is_file()
    assert main(["grade", str(tmp_path / "missing.ipynb"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["grade", str(foreign), "--out", str(out), "--timeout", "0"])
    assert exit_.value.code == 2 and "argument --timeout" in capsys.readouterr().err


def test_student_names_come_from_folders_or_files():
    assert grading.student_names(["a/ann/07.ipynb", "a/bob/07.ipynb"]) == ["ann", "bob"]
    assert grading.student_names(["a/ann_07.ipynb", "a/bob_07.ipynb"]) == ["ann_07", "bob_07"]
    assert grading.summary_path("x/grades.csv") == Path("x/grades_summary.csv")
    assert grading._cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"


@pytest.mark.slow
def test_the_real_notebook_07_and_its_student_copy(tmp_path):
    """The course's own notebook 07 grades all passed; its generated student copy, all not attempted."""
    from tipsomaly_lite.course.checks import exercises

    solved = ROOT / "notebooks" / "07_your_own_images.ipynb"
    stubbed = tmp_path / "student" / solved.name
    spec = importlib.util.spec_from_file_location("make_student_copies", ROOT / "notebooks" / "make_student_copies.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    copy, _ = m.student_copy(json.loads(solved.read_text(encoding="utf-8")), solved.name)
    stubbed.parent.mkdir()
    stubbed.write_text(json.dumps(copy), encoding="utf-8")
    keys = list(exercises("07"))
    teacher = grading.grade_notebook(solved, "teacher", timeout_s=600)
    assert [r.exercise for r in teacher] == keys and all(r.passed for r in teacher), teacher
    student = grading.grade_notebook(stubbed, "student", timeout_s=600)
    assert [r.exercise for r in student] == keys
    assert all(not r.passed and r.detail.startswith("not attempted") for r in student), student
