"""The declared Python versions: pyproject.toml is consistent, and `make test-pythons`'s script
(.ci/test_pythons.py) finds, runs and reports them. Fast and offline: no venv is ever built here."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tp():
    spec = importlib.util.spec_from_file_location("test_pythons_script", REPO / ".ci" / "test_pythons.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


CLASSIFIERS = ["Programming Language :: Python :: 3", "Programming Language :: Python :: 3 :: Only",
               "Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12",
               "Programming Language :: Python :: 3.13", "License :: OSI Approved"]


# ------------------------------------------------------------------------ pyproject itself


def test_requires_python_matches_the_classifiers(tp):
    requires, classifiers = tp.read_project_metadata(REPO / "pyproject.toml")
    assert requires == ">=3.11"  # transformers 5.x, the reference the TIPS port is tested against
    named = [f"{a}.{b}" for a, b in tp.classifier_versions(classifiers)]
    assert named == ["3.11", "3.12", "3.13"]
    # Every minor that requires-python admits up to the newest classifier has its classifier, and
    # no classifier names a version that requires-python refuses.
    assert tp.declared_versions(requires, classifiers) == named
    assert "Programming Language :: Python :: 3 :: Only" in classifiers


def test_metadata_reader_without_tomllib_agrees(tp, monkeypatch, tmp_path):
    """The script may run under an interpreter older than tomllib (3.10): the plain reading agrees."""
    with_toml = tp.read_project_metadata(REPO / "pyproject.toml")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now raises ImportError
    assert tp.read_project_metadata(REPO / "pyproject.toml") == with_toml


# ---------------------------------------------------------------------- declared versions


@pytest.mark.parametrize("spec, expected", [
    (">=3.11", ["3.11", "3.12", "3.13"]),
    (">=3.11,<3.13", ["3.11", "3.12"]),
    (">= 3.11, != 3.12.*", ["3.11", "3.13"]),
    ("==3.12.*", ["3.12"]),
    ("~=3.12", ["3.12", "3.13"]),
    (">=3.11.2", ["3.11", "3.12", "3.13"]),  # 3.11 counts: its later patch releases qualify
    (">3.12", ["3.12", "3.13"]),             # 3.12.1 > 3.12
    ("<3.11", [f"3.{m}" for m in range(11)]),
    ("", [f"3.{m}" for m in range(14)]),
])
def test_declared_versions_parse_requires_python(tp, spec, expected):
    assert tp.declared_versions(spec, CLASSIFIERS) == expected


def test_declared_versions_stop_at_the_newest_classifier(tp):
    assert tp.declared_versions(">=3.11", ["Programming Language :: Python :: 3.12"]) == ["3.11", "3.12"]
    assert tp.declared_versions(">=3.11", [], newest=(3, 14)) == ["3.11", "3.12", "3.13", "3.14"]


@pytest.mark.parametrize("bad", [">=three", "=>3.11", ">=3.11.*", "~=3"])
def test_unreadable_requires_python_is_an_error(tp, bad):
    with pytest.raises(ValueError):
        tp.declared_versions(bad, CLASSIFIERS)


def _fake_python(root: Path, folder: str, version: str) -> str:
    path = root / "versions" / folder / "bin" / f"python{version}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return str(path)


def test_discovery_checks_each_candidate_runs_as_its_version(tp, tmp_path):
    """PATH first, then pyenv (newest patch first); a pyenv shim for an unselected version fails
    to run and is skipped; a declared version with no interpreter maps to None."""
    old_312 = _fake_python(tmp_path, "3.12.1", "3.12")
    new_312 = _fake_python(tmp_path, "3.12.4", "3.12")
    _fake_python(tmp_path, "3.10.13", "3.10")      # found, but not declared by ">=3.11"
    shims = {"python3.11": "/usr/bin/python3.11", "python3.12": "/shims/python3.12", "python3.10": "/usr/bin/python3.10"}
    runs = {"/usr/bin/python3.11": "3.11", "/shims/python3.12": None, old_312: "3.12", new_312: "3.12",
            "/usr/bin/python3.10": "3.10"}
    tried = []

    def run(python):
        tried.append(python)
        return runs.get(python)

    declared = tp.declared_versions(">=3.11", CLASSIFIERS)
    found = tp.find_interpreters(declared, which=shims.get, pyenv=tmp_path, run=run)
    assert found == {"3.11": "/usr/bin/python3.11", "3.12": new_312, "3.13": None}
    assert tried.index("/shims/python3.12") < tried.index(new_312)
    assert old_312 not in tried and "/usr/bin/python3.10" not in tried


def test_discovery_rejects_an_interpreter_of_another_version(tp):
    found = tp.find_interpreters(["3.12"], which=lambda name: "/usr/bin/" + name, pyenv=None,
                                 run=lambda python: "3.11")
    assert found == {"3.12": None}


def test_local_cpu_torch_wheel(tp, tmp_path, monkeypatch):
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_text("")
    monkeypatch.setenv("PIP_FIND_LINKS", f"file://{tmp_path}")
    assert tp.local_cpu_torch_wheel("3.11", "torch==2.13.0")
    assert not tp.local_cpu_torch_wheel("3.12", "torch==2.13.0")
    assert not tp.local_cpu_torch_wheel("3.11", "torch==2.14.0")
    monkeypatch.delenv("PIP_FIND_LINKS")
    assert not tp.local_cpu_torch_wheel("3.11", "torch==2.13.0")


# --------------------------------------------------------------------- pytest summaries


@pytest.mark.parametrize("output, counts", [
    ("....s.\n812 passed, 3 skipped, 5 warnings in 300.51s (0:05:00)\n",
     {"passed": 812, "skipped": 3, "warnings": 5}),
    ("FAILED tests/test_a.py::test_x - assert 1 == 2\n"
     "=========== 2 failed, 40 passed, 1 error, 1 warning in 12.03s ===========\n",
     {"failed": 2, "passed": 40, "errors": 1, "warnings": 1}),
    ("========================== 7 passed in 0.52s ==========================\n", {"passed": 7}),
    ("1 passed, 2 xfailed, 1 xpassed, 3 deselected in 1.00s\n",
     {"passed": 1, "xfailed": 2, "xpassed": 1, "deselected": 3}),
    ("no tests ran in 0.01s\n", {}),
    ("ImportError while loading conftest\n", None),
    ("...\n[timed out]\n", None),
])
def test_parse_pytest_summary(tp, output, counts):
    assert tp.parse_pytest_summary(output) == counts


def test_describe_counts(tp):
    assert tp.describe_counts({"passed": 812, "skipped": 3, "warnings": 5}) == "812 passed, 3 skipped"
    assert tp.describe_counts({"failed": 2, "passed": 40, "errors": 1}) == "40 passed, 2 failed, 1 errors"
    assert tp.describe_counts({}) == "no tests ran"
    assert tp.describe_counts(None) == "no summary"


# ------------------------------------------------------------------------------ the table


def test_table_lists_every_declared_version(tp):
    results = [
        tp.Result("3.11", "/usr/bin/python3.11", "ok", "812 passed, 3 skipped", True, "ok", 600.0),
        tp.Result("3.12", "/p/python3.12", "ok", "810 passed, 2 failed", False, "ok", 90.0),
        tp.Result("3.13"),
    ]
    table = tp.format_table(results).splitlines()
    assert len(table) == 5 and len({len(line) for line in table}) == 1  # aligned Markdown
    assert [c.strip() for c in table[0].strip("|").split("|")] == [
        "Python", "install", "unit tests", "notebook 03", "result", "time"]
    assert set(table[1]) == {"|", "-"}
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert cells[0] == ["3.11", "ok", "812 passed, 3 skipped", "ok", "pass", "10.0 min"]
    assert cells[1] == ["3.12", "ok", "810 passed, 2 failed", "ok", "FAIL", "1.5 min"]
    assert cells[2] == ["3.13", "not found", "-", "-", "not tested", "-"]


def test_result_passes_only_when_everything_passed(tp):
    assert tp.Result("3.11", "p", "ok", "1 passed", True, "ok").passed
    assert not tp.Result("3.11", "p", "ok", "1 passed", True, "failed").passed
    assert not tp.Result("3.11", "p", "failed").passed
    assert not tp.Result("3.11").passed and not tp.Result("3.11").found


# ------------------------------------------------------------------- one version's run


def test_install_is_make_install_pointed_at_the_venv(tp, tmp_path):
    """The script installs with `make install` itself; its dry run shows the CPU torch pin going
    in before the package and its dev extra, with this interpreter and into this venv."""
    cmd = tp.install_command("/opt/py/bin/python3.12", tmp_path / "venv", "torch==2.13.0")
    assert cmd[-4:] == ["install", "PYTHON=/opt/py/bin/python3.12", f"VENV={tmp_path / 'venv'}",
                        "TORCH_PIN=torch==2.13.0"]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run([cmd[0], "-n", *cmd[1:]], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL")})
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    venv_py = f"{tmp_path / 'venv'}/bin/python"
    assert lines[0] == f"/opt/py/bin/python3.12 -m venv {tmp_path / 'venv'}"
    torch_line = next(i for i, line in enumerate(lines) if '"torch==2.13.0"' in line)
    package_line = next(i for i, line in enumerate(lines) if '-e ".[dev' in line)
    assert torch_line < package_line and lines[package_line].startswith(f"{venv_py} -m pip install")
    assert lines[-1] == f"touch {tmp_path / 'venv'}/.installed"
    assert not (tmp_path / "venv").exists()


def test_run_version_installs_then_runs_the_tests_and_the_notebook(tp, tmp_path, monkeypatch):
    calls = []

    def step(cmd, log, deadline, env=None):
        calls.append((cmd, log.name, env))
        if "install" in cmd:  # what `make install` leaves behind
            (tmp_path / "3.12" / "venv").mkdir(parents=True)
            (tmp_path / "3.12" / "venv" / ".installed").touch()
        if "pytest" in cmd and "tests" in cmd:
            return "ok", "....\n12 passed, 1 skipped in 3.20s\n"
        return "ok", ""

    monkeypatch.setattr(tp, "step", step)
    monkeypatch.setenv("MAKEFLAGS", "-j4 -- PYTHON=python3")   # an outer make's flags stay out
    res = tp.run_version("3.12", "/usr/bin/python3.12", tmp_path, "torch==2.13.0", 60)
    venv_py = str(tmp_path / "3.12" / "venv" / "bin" / "python")
    cmds = [c for c, _, _ in calls]
    assert cmds[0] == tp.install_command("/usr/bin/python3.12", tmp_path / "3.12" / "venv", "torch==2.13.0")
    assert "MAKEFLAGS" not in calls[0][2]
    assert cmds[1][:3] == [venv_py, "-m", "pytest"] and cmds[1][-1] == "tests"
    assert cmds[2][-1] == "notebooks/03_fixed_prompts.ipynb"
    assert {"--nbval-lax", "--nbval-current-env"} <= set(cmds[2])
    for _, log, env in calls[1:]:
        assert env["TIPSOMALY_OFFLINE"] == "1" and env["MPLBACKEND"] == "Agg"
        assert env["TIPSOMALY_HOME"].startswith(str(tmp_path / "3.12"))
    assert [log for _, log, _ in calls] == ["install.log", "tests.log", "notebook.log"]
    assert (res.install, res.tests, res.tests_ok, res.notebook, res.passed) == (
        "ok", "12 passed, 1 skipped", True, "ok", True)


def test_run_version_stops_after_a_failed_install(tp, tmp_path, monkeypatch, capsys):
    calls = []

    def step(cmd, log, deadline, env=None):
        calls.append(cmd)
        return "failed", "ERROR: No matching distribution found for transformers==5.24.0\nmake: *** Error 1"

    monkeypatch.setattr(tp, "step", step)
    old = tmp_path / "3.10" / "venv" / "stale"
    old.parent.mkdir(parents=True)
    old.touch()
    res = tp.run_version("3.10", "/usr/bin/python3.10", tmp_path, "torch==2.13.0", 60)
    assert len(calls) == 1 and (res.install, res.tests, res.notebook, res.passed) == ("failed", "-", "-", False)
    assert not old.exists()  # a throwaway venv: last time's is removed first
    assert "No matching distribution found for transformers==5.24.0" in capsys.readouterr().out


def test_run_version_without_the_installed_marker_is_a_failed_install(tp, tmp_path, monkeypatch):
    monkeypatch.setattr(tp, "step", lambda cmd, log, deadline, env=None: ("ok", ""))
    res = tp.run_version("3.13", "/usr/bin/python3.13", tmp_path, "torch==2.13.0", 60)
    assert res.install == "failed" and not res.passed


def _gone(pid: int) -> bool:
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_step_reports_a_timeout_and_ends_the_whole_process_group(tp, tmp_path):
    """At the deadline the step and its children (pip's builds, pytest's kernels) are killed."""
    child = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(p.pid, flush=True); time.sleep(60)"
    status, out = tp.step([sys.executable, "-c", child], tmp_path / "x.log", tp.Deadline(3))
    assert status == "timeout" and "[timed out]" in (tmp_path / "x.log").read_text()
    assert _gone(int(out.split()[0]))
    status, out = tp.step([sys.executable, "-c", "print('hi')"], tmp_path / "x.log", tp.Deadline(60))
    assert (status, out.strip()) == ("ok", "hi")


# ------------------------------------------------------------------------- the whole run


def test_main_goes_on_after_a_failure_and_lists_what_is_missing(tp, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tp, "find_interpreters", lambda versions, pyenv=None: {
        "3.11": "/py/3.11", "3.12": "/py/3.12", "3.13": None})
    ran = []

    def run_version(version, python, build, torch_spec, timeout_s, reuse=False):
        ran.append((version, torch_spec, timeout_s))
        ok = version == "3.12"
        return tp.Result(version, python, "ok" if ok else "failed", "5 passed" if ok else "-", ok,
                         "ok" if ok else "-", 1.0)

    monkeypatch.setattr(tp, "run_version", run_version)
    assert tp.main(["--build", str(tmp_path), "--timeout", "2", "--torch-spec", "torch==9"]) == 1
    assert ran == [("3.11", "torch==9", 120.0), ("3.12", "torch==9", 120.0)]
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| 3.")}
    assert set(rows) == {"3.11", "3.12", "3.13"}
    assert "FAIL" in rows["3.11"] and "pass" in rows["3.12"] and "not found" in rows["3.13"]

    monkeypatch.setattr(tp, "find_interpreters", lambda versions, pyenv=None: {v: None for v in versions})
    assert tp.main(["--build", str(tmp_path)]) == 1   # nothing tested is no success
    with pytest.raises(SystemExit):
        tp.main(["--versions", "3.10"])              # not declared
