"""The course keeps its shape: every notebook opens and closes the same way, has no outputs,
pins this version, and the package's "Taught in" links point at notebooks that use the name.

(The notebooks themselves are executed by nbval in ``make test``; this file checks their form.)
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import tipsomaly_lite
from tipsomaly_lite.course.session import REPOSITORY

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE = ["00_setup", "01_loading_tips", "02_spatial_alignment", "03_fixed_prompts",
          "04_learnable_pixel_prompts", "05_local_to_global_fusion", "06_benchmark", "07_your_own_images",
          "08_backbones", "09_few_normal_images"]
VIZ_NAMES = re.compile(r"\b(show_images|plot_\w+|overlay_anomaly_map)\(")


def _load(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


def _committed_text(path: Path, root: Path = ROOT) -> str:
    """What git holds for ``path`` (the index: committed, or staged to be), so that a notebook a teacher saved
    from JupyterLab with outputs does not fail the suite; the working file where git does not know it."""
    import subprocess

    rel = path.relative_to(root).as_posix()
    try:
        shown = subprocess.run(["git", "-C", str(root), "show", f":{rel}"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        shown = None
    if shown is not None and shown.returncode == 0:
        return shown.stdout.decode("utf-8")
    return path.read_text(encoding="utf-8")


def _src(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def test_the_course_is_the_numbered_sequence():
    found = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == COURSE, f"notebooks/ should hold exactly {COURSE}, found {found}"
    for i, name in enumerate(COURSE):
        assert name.startswith(f"{i:02d}_")


@pytest.fixture(params=COURSE)
def notebook(request) -> tuple[str, dict]:
    return request.param, _load(request.param)


def test_committed_without_outputs(notebook):
    name, _ = notebook
    nb = json.loads(_committed_text(NOTEBOOKS / f"{name}.ipynb"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{name}.ipynb cell {i} keeps outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{name}.ipynb cell {i} keeps an execution count"


def test_opening_pattern(notebook):
    name, nb = notebook
    cells = nb["cells"]
    nn = name[:2]
    badge = f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/notebooks/{name}.ipynb"
    assert cells[0]["cell_type"] == "markdown" and badge in _src(cells[0]), f"{name}: first cell is the Colab badge"
    head = _src(cells[1])
    assert head.startswith(f"# {nn} · "), f"{name}: second cell starts with '# {nn} · Title'"
    summary = head.split("\n\n")[1] if "\n\n" in head else ""
    assert summary and not summary.startswith(("#", "-", "**")), f"{name}: a one-line summary follows the title"
    assert "By the end you will be able to" in head and "**Builds on:**" in head
    outcomes = head.split("By the end you will be able to")[1].split("**Builds on:**")[0]
    n_bullets = sum(line.startswith("- ") for line in outcomes.splitlines())
    assert 3 <= n_bullets <= 5, f"{name}: 3-5 outcome bullets, found {n_bullets}"
    setup = [c for c in cells if "setup" in _tags(c)]
    assert len(setup) == 1, f"{name}: one setup cell tagged 'setup'"
    s = _src(setup[0])
    version = tipsomaly_lite.__version__
    assert f'COURSE_VERSION = "{version}"' in s and f"{REPOSITORY}@v{version}" in s, \
        f"{name}: the setup cell pins tipsomaly_lite {version}"
    assert "except ImportError" in s and "%pip install" in s, f"{name}: the setup cell imports, else installs"
    params = [i for i, c in enumerate(cells) if "parameters" in _tags(c)]
    assert len(params) == 1, f"{name}: exactly one cell tagged 'parameters'"
    p = _src(cells[params[0]])
    for var in ("OFFLINE", "SEED", "DEVICE"):
        assert re.search(rf"^{var}\s*=", p, re.M), f"{name}: the parameters cell sets {var}"
    after = "\n".join(_src(c) for c in cells[params[0] + 1:params[0] + 3])
    assert "start(" in after and "seed=SEED" in after and "device=DEVICE" in after, \
        f"{name}: the cell after the parameters seeds and picks the device (course.start)"


def test_closing_pattern(notebook):
    name, nb = notebook
    heads = [(i, _src(c).splitlines()[0]) for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "markdown" and _src(c).startswith("## ")]
    titles = [h for _, h in heads]
    assert titles[-3:] == ["## Summary", "## Exercises", "## Going further"], \
        f"{name}: ends with Summary, Exercises, Going further (found {titles[-3:]})"
    ex_start, ex_end = heads[-2][0], heads[-1][0]
    exercise_code = "\n".join(_src(c) for c in nb["cells"][ex_start:ex_end] if c["cell_type"] == "code")
    n_checks = len(re.findall(r"\bchecks\.\w+\(", exercise_code))
    assert n_checks >= 2, f"{name}: at least two self-checked exercises, found {n_checks}"
    assert exercise_code.count("# BEGIN SOLUTION") == exercise_code.count("# END SOLUTION") >= 1, \
        f"{name}: exercise solutions are marked with # BEGIN SOLUTION / # END SOLUTION"


def test_every_notebook_draws_with_viz(notebook):
    name, nb = notebook
    code = "\n".join(_src(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert VIZ_NAMES.search(code), f"{name}: at least one figure from tipsomaly_lite.course.viz"
    assert "def plot_" not in code and "def show_" not in code, f"{name}: figure helpers live in viz, not here"


def test_code_cells_parse(notebook):
    name, nb = notebook
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            src = "\n".join(line[:len(line) - len(line.lstrip())] + "pass  # magic"
                            if line.lstrip().startswith(("%", "!")) else line for line in _src(cell).splitlines())
            try:
                ast.parse(src)
            except SyntaxError as err:
                pytest.fail(f"{name}.ipynb cell {i}: {err}")


def test_readme_table_lists_every_notebook():
    """The README (what a learner reads) badges the student copies; notebooks/README (a teacher's) the solutions."""
    from tipsomaly_lite.course.session import colab_badge_url

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    notes = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    for name in COURSE:
        assert f"({name}.ipynb)" in notes + readme or f"notebooks/{name}.ipynb" in readme, f"README lists {name}"
        assert colab_badge_url(name, student=True) in readme, f"README has {name}'s student Colab badge"
        assert colab_badge_url(name) not in readme, f"README's badge for {name} opens the solutions"
        assert colab_badge_url(name) in notes, f"notebooks/README has {name}'s teacher (solutions) Colab badge"


# ---------------------------------------------------------------- the student copies: generated, committed, no answers

def _student_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_student_copies", NOTEBOOKS / "make_student_copies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_student_copies_are_what_the_script_writes(notebook):
    """notebooks/student/ (which the student badges open) is generated: never edited, never stale."""
    from tipsomaly_lite.course.session import colab_badge_url

    name, _ = notebook
    path = NOTEBOOKS / "student" / f"{name}.ipynb"
    fix = "run `python3 notebooks/make_student_copies.py` (or `make student`) and commit notebooks/student/"
    assert path.is_file(), f"notebooks/student/{name}.ipynb is missing: {fix}"
    expected, stubs = _student_script().student_copy_text(NOTEBOOKS / f"{name}.ipynb")
    assert path.read_text(encoding="utf-8") == expected, f"notebooks/student/{name}.ipynb is stale: {fix}"
    copy = json.loads(expected)
    code = "\n".join(_src(c) for c in copy["cells"] if c["cell_type"] == "code")
    assert stubs >= 1 and code.count("...  # YOUR CODE HERE") == stubs and "BEGIN SOLUTION" not in code
    assert colab_badge_url(name, student=True) in _src(copy["cells"][0])
    assert colab_badge_url(name) not in json.dumps(copy), f"{name}'s student copy links the solutions"


def test_no_student_copy_holds_a_solution_line(notebook):
    """Every line between the markers in the teacher's notebook is gone from the student copy (unless the
    notebook also shows it outside an exercise, where it is taught)."""
    name, nb = notebook
    copy = json.loads((NOTEBOOKS / "student" / f"{name}.ipynb").read_text(encoding="utf-8"))
    student_code = "\n".join(_src(c) for c in copy["cells"] if c["cell_type"] == "code")
    teacher_code = "\n".join(_src(c) for c in nb["cells"] if c["cell_type"] == "code")
    taught = re.sub(r"# BEGIN SOLUTION\n.*?# END SOLUTION", "", teacher_code, flags=re.S)
    for block in re.findall(r"# BEGIN SOLUTION\n(.*?)# END SOLUTION", teacher_code, re.S):
        for line in block.splitlines():
            if len(line.strip()) > 12 and line.strip() not in taught:  # short lines (`return x`) may appear elsewhere
                assert line.strip() not in student_code, f"{name}: {line.strip()!r} in the copy"


def test_a_saved_notebook_with_outputs_does_not_fail_the_suite(tmp_path):
    """What is checked is what git holds: outputs saved in the working file (JupyterLab's Save) are not."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    clean = NOTEBOOKS / "00_setup.ipynb"
    shutil.copy(clean, repo / "notebooks" / clean.name)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "clean"], check=True)
    saved = json.loads(clean.read_text(encoding="utf-8"))
    first_code = next(i for i, c in enumerate(saved["cells"]) if c["cell_type"] == "code")
    saved["cells"][first_code]["execution_count"] = 7
    saved["cells"][first_code]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["x\n"]}]
    (repo / "notebooks" / clean.name).write_text(json.dumps(saved), encoding="utf-8")
    assert json.loads(_committed_text(repo / "notebooks" / clean.name, repo))["cells"][first_code]["outputs"] == []
    subprocess.run([*git, "add", "-A"], check=True)  # staged: about to be committed, so it counts
    staged = json.loads(_committed_text(repo / "notebooks" / clean.name, repo))
    assert staged["cells"][first_code]["execution_count"] == 7


def test_make_lab_opens_the_student_copies_and_says_when_it_runs_as_root():
    import subprocess

    def dry_run(uid: str) -> str:
        return subprocess.run(["make", "-n", "-C", str(ROOT), "lab", "VENV=/nonexistent/venv", f"LAB_USER_ID={uid}"],
                              capture_output=True, text=True, timeout=60).stdout

    root = dry_run("0")
    lines = root.splitlines()
    copies = next(i for i, ln in enumerate(lines) if "make_student_copies.py --out lab --keep-existing" in ln)
    lab = next(i for i, ln in enumerate(lines) if "jupyter lab" in ln)
    assert copies < lab and "--allow-root" in lines[lab] and lines[lab].rstrip().endswith("lab/")
    assert "running as root" in root and "--allow-root" in root
    user = dry_run("1000")
    assert "--allow-root" not in user and "running as root" not in user and "jupyter lab" in user


def test_make_lab_keeps_a_students_work(tmp_path, capsys):
    m = _student_script()
    first = m.write_student_copies(tmp_path)
    first[0].write_text("my work", encoding="utf-8")
    again = m.write_student_copies(tmp_path, keep_existing=True)
    assert again == first and first[0].read_text(encoding="utf-8") == "my work"
    assert "kept your copy" in capsys.readouterr().out
    m.write_student_copies(tmp_path)  # without --keep-existing (make student): regenerated
    assert first[0].read_text(encoding="utf-8") != "my work"


def test_no_suggested_prepare_command_lacks_its_source():
    """Every `tipsomaly prepare KEY ...` the course, the READMEs or the package suggests names --source."""
    from tipsomaly_lite.data.registry import DATASET_KEYS

    texts = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in
             [ROOT / "README.md", NOTEBOOKS / "README.md", *NOTEBOOKS.glob("*.ipynb"),
              *(ROOT / "tipsomaly_lite").rglob("*.py"), *(ROOT / "docs").rglob("*.md")]}
    keys = "|".join([*DATASET_KEYS, "KEY", r"\{[\w.]+\}"])
    for where, text in texts.items():
        for command in re.findall(rf"tipsomaly prepare\s+(?:{keys})\b[^`\n\"]*", text):
            assert "--source" in command, f"{where}: `{command.strip()}` lacks --source"


def _package_docstrings(modules: dict[str, list[str]] | None = None) -> dict[str, str]:
    """``module.qualname -> docstring`` for every module, class and function of the package.

    ``modules``, when given, is filled with each module's top-level function and class names.
    """
    out = {}
    for info in pkgutil.walk_packages(tipsomaly_lite.__path__, "tipsomaly_lite."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the CLI
        module = importlib.import_module(info.name)
        out[info.name] = module.__doc__ or ""
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out[f"{info.name}.{node.name}"] = ast.get_docstring(node) or ""
        if modules is not None:
            modules[info.name] = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                                  and not n.name.startswith("_")]
    return out


def test_taught_in_links_are_true():
    links, modules = {}, {}
    for where, doc in _package_docstrings(modules).items():
        for target in re.findall(r"Taught in (notebooks/[^\s]+?\.ipynb)", doc):
            links.setdefault(target, []).append(where)
    assert links, "no 'Taught in notebooks/...' lines in the package"
    for target, names in links.items():
        path = ROOT / target
        assert path.is_file(), f"{names} say 'Taught in {target}', which does not exist"
        code = path.read_text(encoding="utf-8")
        for where in names:
            leaf = where.rsplit(".", 1)[-1]
            # A module is taught where the notebook uses one of its functions or classes (flat imports).
            named = [leaf, *modules.get(where, [])]
            assert any(n in code for n in named), \
                f"{where} says it is taught in {target}, but the notebook never names {named}"
    taught = {Path(t).stem for t in links}
    assert taught == set(COURSE), f"every notebook teaches some package name; none points at {set(COURSE) - taught}"


# ---------------------------------------------------------------- one place names the repository and release

def test_the_repository_is_named_in_one_place():
    """pyproject's [project.urls], the badges, the setup cells and the READMEs all follow session.REPOSITORY."""
    import tomllib

    from tipsomaly_lite.course.session import pinned_install, repository_url

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    assert urls["Repository"] == repository_url()
    assert pinned_install() == f"tipsomaly_lite @ git+https://github.com/{REPOSITORY}@v{tipsomaly_lite.__version__}"
    texts = {f"{n}.ipynb": (NOTEBOOKS / f"{n}.ipynb").read_text(encoding="utf-8") for n in COURSE}
    texts.update({f"student/{n}.ipynb": (NOTEBOOKS / "student" / f"{n}.ipynb").read_text(encoding="utf-8")
                  for n in COURSE})
    texts["README.md"] = (ROOT / "README.md").read_text(encoding="utf-8")
    texts["notebooks/README.md"] = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    for where, text in texts.items():
        for repo in re.findall(r"(?:colab\.research\.google\.com/github|github\.com)/([\w.-]+/[\w.-]+)", text):
            assert repo == REPOSITORY, f"{where} points at {repo}, not {REPOSITORY} (session.REPOSITORY)"
        for tag in re.findall(rf"{re.escape(REPOSITORY)}@(v[\w.]+)", text):
            assert tag == f"v{tipsomaly_lite.__version__}", f"{where} pins {tag}, not v{tipsomaly_lite.__version__}"


def test_setup_cells_install_the_pinned_release_and_say_so_when_it_fails(notebook):
    from tipsomaly_lite.course.session import colab_badge_url, pinned_install

    name, nb = notebook
    assert colab_badge_url(name) in _src(nb["cells"][0])
    (setup,) = [c for c in nb["cells"] if "setup" in _tags(c)]
    s = _src(setup)
    assert f'COURSE_RELEASE = "{pinned_install()}"' in s and '%pip install -q "{COURSE_RELEASE}"' in s
    assert "[dev" not in s, f"{name}: the setup cell installs dev extras"
    assert "Could not install" in s and "SystemExit" in s, f"{name}: a failed install says what to do"


def test_no_notebook_downloads_without_being_asked(notebook):
    """Every notebook passes its DOWNLOAD parameter to start(), which downloads only in Colab or when asked."""
    name, nb = notebook
    (params,) = [c for c in nb["cells"] if "parameters" in _tags(c)]
    assert re.search(r"^DOWNLOAD\s*=\s*None\b", _src(params), re.M), f"{name}: DOWNLOAD = None in the parameters"
    code = "\n".join(_src(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert "download=DOWNLOAD" in code, f"{name}: start(..., download=DOWNLOAD)"


def test_what_the_course_tells_a_user_to_run_comes_with_the_package(notebook):
    """A pip user has no data_scripts/: every `tipsomaly <command>` named in a notebook exists."""
    from tipsomaly_lite.cli import build_parser

    name, nb = notebook
    text = "\n".join(_src(c) for c in nb["cells"])
    assert "data_scripts" not in text, f"{name} tells a user to run data_scripts/, which a pip install lacks"
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for command in re.findall(r"\btipsomaly (\w[\w-]*)", text):
        assert command in commands, f"{name} names `tipsomaly {command}`, which the CLI lacks"


def test_readmes_tell_a_user_how_to_open_the_course_and_colab_installs_no_dev_extras():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    notes = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    assert "data_scripts" not in notes
    assert "make lab" in notes and "make student" in notes and "checks.hint" in notes
    assert "git tag" in notes and "git push" in notes, "notebooks/README.md says how to publish so badges work"
    colab = readme.split("## Colab")[1].split("\n## ")[0] if "## Colab" in readme else ""
    assert "[dev" not in colab, "README's Colab snippet installs the dev extras"
