#!/usr/bin/env python3
"""Install and test the project on every declared Python found here (`make test-pythons`).

The declared versions are the 3.X minors that pyproject.toml's ``requires-python`` admits, up to
the newest ``Programming Language :: Python :: 3.X`` classifier. Each one found (``python3.X`` on
PATH, or under ``$(pyenv root)/versions/3.X*/bin/``) gets a throwaway venv in
``build/pythons/3.X/``, installed by ``make install`` itself with PYTHON and VENV pointed there
(the torch pin first, then ``-e ".[dev...]"``); then the unit tests and one notebook (nbval) run
offline in it, as ``make test`` runs them. A table says
what happened; a failure on one version never stops the others. Exit status 0 only when every
found version installed and passed. Standard library only: this runs before any venv exists.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/03_fixed_prompts.ipynb"
DEFAULT_TORCH_PIN = "torch==2.13.0"

# ---------------------------------------------------------------------------------- pyproject


def read_project_metadata(pyproject: Path) -> tuple[str, list[str]]:
    """``(requires-python, classifiers)`` of ``[project]``; tomllib where there is one (3.11+)."""
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # an older interpreter runs the script: a plain reading is enough here
        spec = re.search(r'^requires-python\s*=\s*"([^"]*)"', text, re.M)
        block = re.search(r"^classifiers\s*=\s*\[(.*?)\]", text, re.M | re.S)
        classifiers = re.findall(r'"([^"]*)"', block.group(1)) if block else []
        return (spec.group(1) if spec else ""), classifiers
    project = tomllib.loads(text).get("project", {})
    return project.get("requires-python", ""), list(project.get("classifiers", []))


def classifier_versions(classifiers: Iterable[str]) -> list[tuple[int, int]]:
    """The ``(3, X)`` minors named by ``Programming Language :: Python :: 3.X`` classifiers."""
    found = set()
    for c in classifiers:
        m = re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c.strip())
        if m:
            found.add((int(m.group(1)), int(m.group(2))))
    return sorted(found)


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _pad(v: tuple[int, ...], n: int) -> tuple[int, ...]:
    return v + (0,) * (n - len(v))


def admits(spec: str, version: tuple[int, ...]) -> bool:
    """Whether a PEP 440 specifier set such as ``">=3.11,<3.14"`` admits the release ``version``.

    Enough for requires-python, whose clauses name plain major.minor(.patch) releases: supports
    ==, !=, <, <=, >, >=, ~= and the ``.*`` wildcard of == and != (no pre/post releases).
    """
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(~=|==|!=|<=|>=|<|>)\s*([0-9]+(?:\.[0-9]+)*)(\.\*)?", clause)
        if not m:
            raise ValueError(f"cannot read the requires-python clause {clause!r}")
        op, rel, wildcard = m.group(1), _release(m.group(2)), bool(m.group(3))
        if wildcard:
            if op not in ("==", "!="):
                raise ValueError(f"a '.*' wildcard only goes with == or != ({clause!r})")
            same = _pad(version, len(rel))[: len(rel)] == rel
            ok = same if op == "==" else not same
        else:
            n = max(len(rel), 3)
            v, r = _pad(version, n), _pad(rel, n)
            if op == "~=":
                if len(rel) < 2:
                    raise ValueError(f"'~=' needs at least two release parts ({clause!r})")
                ok = v >= r and v[: len(rel) - 1] == rel[: len(rel) - 1]
            else:
                ok = {"==": v == r, "!=": v != r, "<": v < r, "<=": v <= r, ">": v > r, ">=": v >= r}[op]
        if not ok:
            return False
    return True


def declared_versions(requires_python: str, classifiers: Iterable[str] = (),
                      newest: tuple[int, int] = (3, 13)) -> list[str]:
    """``["3.11", "3.12", ...]``: the minors that requires-python admits, up to the newest
    classifier (``newest`` when no classifier names a minor). An open-ended ``>=3.11`` thus
    means the versions the project says it supports, not every future Python. A minor counts
    when any of its patch releases is admitted (``>=3.11.2`` declares 3.11)."""
    named = classifier_versions(classifiers)
    top = max(named) if named else newest
    return [f"3.{minor}" for minor in range(0, top[1] + 1)
            if any(admits(requires_python, (3, minor, patch)) for patch in range(50))]


# ---------------------------------------------------------------------------- interpreters


def pyenv_root() -> Optional[Path]:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        try:
            out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    home = Path.home() / ".pyenv"
    return home if home.is_dir() else None


def _patch_key(path: str) -> tuple[int, ...]:
    name = Path(path).parents[1].name  # .../versions/<name>/bin/python3.X
    m = re.fullmatch(r"\d+\.\d+(?:\.(\d+))?", name)
    return (0, int(m.group(1) or 0)) if m else (-1, 0)  # plain releases first, newest patch first


def candidates(version: str, which: Callable[[str], Optional[str]] = shutil.which,
               pyenv: Optional[Path] = None) -> list[str]:
    """Where ``python<version>`` may be: PATH first, then pyenv's versions (newest patch first;
    free-threaded or dev builds such as ``3.13.0t`` last)."""
    out = []
    on_path = which(f"python{version}")
    if on_path:
        out.append(on_path)
    if pyenv is not None:
        pattern = str(pyenv / "versions" / f"{version}*" / "bin" / f"python{version}")
        for p in sorted(glob.glob(pattern), key=_patch_key, reverse=True):
            if re.fullmatch(rf"{re.escape(version)}(?:\.\d+)?\w*", Path(p).parents[1].name) and p not in out:
                out.append(p)
    return out


def probe(python: str) -> Optional[str]:
    """``"3.X"`` when ``python`` runs (a pyenv shim for a version not selected does not)."""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_interpreters(versions: Iterable[str], which: Callable[[str], Optional[str]] = shutil.which,
                      pyenv: Optional[Path] = None,
                      run: Callable[[str], Optional[str]] = probe) -> dict[str, Optional[str]]:
    """``{version: interpreter path or None}``: the first candidate that runs as that version."""
    found: dict[str, Optional[str]] = {}
    for v in versions:
        found[v] = next((c for c in candidates(v, which, pyenv) if run(c) == v), None)
    return found


# --------------------------------------------------------------------------------- results


_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)\b")
_SUMMARY = re.compile(r"\b(?:\d+ \w+(?:, )?)+.* in [0-9.]+s\b|\bno tests ran in [0-9.]+s\b")


def parse_pytest_summary(output: str) -> Optional[dict[str, int]]:
    """The counts on pytest's closing line (``"5 passed, 1 failed, 2 warnings in 3.1s"``), with
    ``error`` and ``warning`` spelled in the plural; ``{}`` for "no tests ran"; ``None`` when
    there is no summary line (pytest never got that far)."""
    for line in reversed(output.splitlines()):
        line = line.strip().strip("=").strip()
        if not _SUMMARY.search(line):
            continue
        counts: dict[str, int] = {}
        for n, word in _COUNT.findall(line.split(" in ")[0] if " in " in line else line):
            key = {"error": "errors", "warning": "warnings"}.get(word, word)
            counts[key] = counts.get(key, 0) + int(n)
        return counts
    return None


def describe_counts(counts: Optional[dict[str, int]]) -> str:
    if counts is None:
        return "no summary"
    if not counts:
        return "no tests ran"
    order = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


@dataclass
class Result:
    version: str
    python: Optional[str] = None
    install: str = "not found"          # "not found", "ok", "failed", "timeout"
    tests: str = "-"
    tests_ok: bool = False
    notebook: str = "-"                 # "-", "ok", "failed", "timeout"
    seconds: float = 0.0

    @property
    def found(self) -> bool:
        return self.python is not None

    @property
    def passed(self) -> bool:
        return self.install == "ok" and self.tests_ok and self.notebook == "ok"


def format_table(results: Iterable[Result]) -> str:
    """A Markdown table, one row per declared version, so it can go into the README as is."""
    rows = [("Python", "install", "unit tests", "notebook 03", "result", "time")]
    for r in results:
        if not r.found:
            rows.append((r.version, "not found", "-", "-", "not tested", "-"))
            continue
        minutes = f"{r.seconds / 60:.1f} min"
        rows.append((r.version, r.install, r.tests, r.notebook, "pass" if r.passed else "FAIL", minutes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ runs


def local_cpu_torch_wheel(version: str, torch_spec: str) -> bool:
    """Whether a find-links folder (PIP_FIND_LINKS) holds a CPU torch wheel for this Python."""
    pinned = torch_spec.split("==", 1)[1] if "==" in torch_spec else "*"
    tag = "cp" + version.replace(".", "")
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        folder = folder[len("file://"):] if folder.startswith("file://") else folder
        if glob.glob(os.path.join(folder, f"torch-{pinned}+cpu-{tag}-{tag}-*.whl")):
            return True
    return False


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(1.0, self.end - time.monotonic())


def step(cmd: list[str], log: Path, deadline: Deadline, env: Optional[dict] = None) -> tuple[str, str]:
    """Runs ``cmd`` in the repo, its output streamed into ``log`` (``tail -f`` shows progress):
    ``("ok"|"failed"|"timeout", output)``. At the deadline its whole process group is killed
    (pip's builds, pytest's kernels), so nothing of it is left running."""
    with log.open("ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        start = fh.tell()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "ok" if proc.wait(timeout=deadline.left()) == 0 else "failed"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            status = "timeout"
    with log.open("rb") as fh:
        fh.seek(start)
        out = fh.read().decode(errors="replace")
    if status == "timeout":
        with log.open("a", encoding="utf-8") as fh:
            fh.write("\n[timed out]\n")
    return status, out


def install_command(python: str, venv: Path, torch_spec: str) -> list[str]:
    """``make install`` with this interpreter, this venv and this torch pin."""
    return [shutil.which("make") or "make", "--no-print-directory", "install", f"PYTHON={python}",
            f"VENV={venv}", f"TORCH_PIN={torch_spec}"]


def run_version(version: str, python: str, build: Path, torch_spec: str, timeout_s: float,
                reuse: bool = False) -> Result:
    res = Result(version, python)
    start = time.monotonic()
    deadline = Deadline(timeout_s)
    root = build / version
    venv = root / "venv"
    vpy = str(venv / "bin" / "python")
    marker = venv / ".installed"  # what `make install` touches when it has finished
    root.mkdir(parents=True, exist_ok=True)
    for name in ("install.log", "tests.log", "notebook.log"):
        (root / name).unlink(missing_ok=True)

    def say(msg: str) -> None:
        print(f"[{version}] {msg}", flush=True)

    if not reuse:
        shutil.rmtree(venv, ignore_errors=True)
    if not marker.exists() and not local_cpu_torch_wheel(version, torch_spec):
        say(f"note: no local CPU torch wheel for Python {version}: pip downloads {torch_spec} from "
            "PyPI, a large CUDA build (several GB)")
    say(f"installing into {venv} with `make install` (log: {root / 'install.log'})")
    # `make install` itself, pointed at this interpreter and venv: the same steps (venv, pip, the
    # torch pin, then the package with its extras) as a contributor's install, kept in step with it.
    # An outer make's flags are not passed on: this is a separate make, not a sub-make of ours.
    make_env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    cmd = install_command(python, venv, torch_spec)
    res.install, out = step(cmd, root / "install.log", deadline, make_env)
    if res.install == "ok" and not marker.exists():
        res.install, out = "failed", f"`make install` left no {marker}"
    if res.install != "ok":
        tail = [line for line in out.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
        say(f"install {res.install}:\n    " + "\n    ".join(tail[-5:]))
    if res.install == "ok":
        # As `make test` runs them: offline, strict self-checks, widgets drawn once, no display.
        env = {**os.environ, "TIPSOMALY_OFFLINE": "1", "MPLBACKEND": "Agg", "TIPSOMALY_STRICT_CHECKS": "1",
               "TIPSOMALY_WIDGETS": "static", "TIPSOMALY_HOME": str(root / "tipsomaly_home")}
        env.pop("VIRTUAL_ENV", None)
        say(f"unit tests (log: {root / 'tests.log'})")
        status, out = step([vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], root / "tests.log",
                           deadline, env)
        counts = parse_pytest_summary(out)
        res.tests = describe_counts(counts) + (" (timeout)" if status == "timeout" else "")
        res.tests_ok = status == "ok" and bool(counts) and counts.get("passed", 0) > 0
        say(f"notebook {NOTEBOOK} (log: {root / 'notebook.log'})")
        status, _ = step([vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
                          "--nbval-cell-timeout=600", NOTEBOOK], root / "notebook.log", deadline, env)
        res.notebook = status
    res.seconds = time.monotonic() - start
    say(f"done in {res.seconds / 60:.1f} min: install {res.install}, tests {res.tests}, notebook {res.notebook}")
    return res


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=40.0, help="minutes per version, install included (40)")
    ap.add_argument("--torch-spec", default=DEFAULT_TORCH_PIN, help=f"installed first ({DEFAULT_TORCH_PIN})")
    ap.add_argument("--build", type=Path, default=REPO / "build" / "pythons", help="where the venvs go")
    ap.add_argument("--versions", nargs="+", help="only these declared versions (e.g. 3.12)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep last time's venvs (`make install` then only updates what pyproject.toml changed)")
    args = ap.parse_args(argv)

    requires, classifiers = read_project_metadata(REPO / "pyproject.toml")
    declared = declared_versions(requires, classifiers)
    if args.versions:
        unknown = sorted(set(args.versions) - set(declared))
        if unknown:
            ap.error(f"not declared by requires-python {requires!r}: {', '.join(unknown)}")
        declared = [v for v in declared if v in args.versions]
    found = find_interpreters(declared, pyenv=pyenv_root())
    print(f"requires-python {requires!r}: declared {', '.join(declared)}; found "
          + (", ".join(f"{v} ({p})" for v, p in found.items() if p) or "none"), flush=True)

    results = []
    for version in declared:
        if found[version] is None:
            results.append(Result(version))
            continue
        results.append(run_version(version, found[version], args.build, args.torch_spec, args.timeout * 60,
                                   reuse=args.reuse))

    print()
    print(f"test-pythons, {time.strftime('%Y-%m-%d')} (logs in {args.build}/<version>/):")
    print(format_table(results), flush=True)
    tested = [r for r in results if r.found]
    if not tested:
        print("test-pythons: none of the declared Python versions was found", file=sys.stderr)
        return 1
    return 0 if all(r.passed for r in tested) else 1


if __name__ == "__main__":
    sys.exit(main())
