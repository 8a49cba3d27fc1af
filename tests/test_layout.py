"""The package's shape: a flat public API, a backbone seam the method keeps to, no test code in the wheel."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import tipsomaly_lite
from tipsomaly_lite.backbones.base import Backbone

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tipsomaly_lite"
SUBPACKAGES = ("backbones", "backbones/tips", "method", "eval", "data", "course", "course/checks", "deploy", "cli")


#: The packages whose faces a notebook or the README may import from.
FACES = ("tipsomaly_lite", "tipsomaly_lite.backbones", "tipsomaly_lite.method", "tipsomaly_lite.eval",
         "tipsomaly_lite.data", "tipsomaly_lite.io", "tipsomaly_lite.course", "tipsomaly_lite.deploy",
         "tipsomaly_lite.offline")


def _imports(text: str) -> list[tuple[str, str]]:
    """``(package, name)`` of every ``from tipsomaly_lite[.x] import a, b as c`` line (parenthesised too)."""
    text = text.replace("\\n", "\n").replace('\\"', '"')  # notebook JSON strings
    found = []
    for m in re.finditer(r"from (tipsomaly_lite[\w.]*) import (\(([^)]*)\)|[^\n#]+)", text):
        body = m.group(3) if m.group(3) is not None else m.group(2)
        body = re.sub(r'[",]\s*$', "", body.replace('"', " ").replace("\n", " "))
        found += [(m.group(1), item.split(" as ")[0].strip()) for item in body.split(",") if item.strip()]
    return found


def test_every_public_name_resolves():
    for name in tipsomaly_lite.__all__:
        assert getattr(tipsomaly_lite, name) is not None, name
    for name in ("checks", "viz"):
        assert getattr(tipsomaly_lite, name).__name__.startswith("tipsomaly_lite"), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tipsomaly_lite.nope  # noqa: B018
    for face in FACES[1:]:
        module = importlib.import_module(face)
        for name in getattr(module, "__all__", []):
            assert getattr(module, name) is not None, f"{face}.{name}"


def test_the_top_level_api_is_what_a_user_needs():
    names = [n for n in tipsomaly_lite.__all__ if n != "__version__"] + list(tipsomaly_lite._MODULES)
    assert len(names) <= 45, len(names)
    assert {"load_backbone", "AnomalyDataset", "Detector", "train_prompts", "evaluate", "checks"} <= set(names)


def test_names_the_readme_and_notebooks_import_are_public_in_a_face():
    texts = {p.name: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "notebooks").glob("*.ipynb"))]}
    for where, text in texts.items():
        for package, name in _imports(text):
            if where.endswith(".ipynb") or package in FACES:
                assert package in FACES, f"{where} imports from {package}, not from a package's face"
                module = importlib.import_module(package)
                is_module = package in FACES[:-1] and importlib.util.find_spec(f"{package}.{name}") is not None
                assert hasattr(module, name) or is_module, f"{where}: {package} has no {name!r}"


def test_the_tree_shows_the_architecture():
    for sub in SUBPACKAGES:
        init = PACKAGE / sub / "__init__.py"
        assert init.is_file(), f"{sub} is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{sub}/__init__.py says what it holds"
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "_api.py", "distributed.py", "offline.py",
                    "predict.py"], flat


#: Floors of the house, lowest first: a module may import only from its own floor or below.
FLOORS = [("tipsomaly_lite._api", "tipsomaly_lite.offline", "tipsomaly_lite.distributed", "tipsomaly_lite.io"),
          ("tipsomaly_lite.backbones", "tipsomaly_lite.data"), ("tipsomaly_lite.method",), ("tipsomaly_lite.eval",),
          ("tipsomaly_lite.course",), ("tipsomaly_lite.predict", "tipsomaly_lite.deploy"),
          ("tipsomaly_lite.cli", "tipsomaly_lite.__main__")]


def _module_imports() -> dict[str, set[str]]:
    """Every package module -> the package modules it imports (top-level and inside functions)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        targets = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: never imported at run time
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tipsomaly_lite"):
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names
                            if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(
                                ".py").exists()}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("tipsomaly_lite")}
        graph[name] = targets - {name}
    return graph


def _floor(module: str) -> int:
    for i, floor in enumerate(FLOORS):
        if any(module == f or module.startswith(f + ".") for f in floor):
            return i
    return len(FLOORS)  # the top-level face (tipsomaly_lite) stands above everything


def test_no_import_runs_upward_and_no_module_imports_in_a_circle():
    graph = _module_imports()
    upward = [(a, b) for a, targets in graph.items() for b in targets
              if a != "tipsomaly_lite" and b != "tipsomaly_lite" and not a.endswith("__init__")
              and _floor(b) > _floor(a)]
    assert not upward, upward
    # circles between modules (a package face importing its own modules lazily is not one)
    faces = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    edges = {a: {b for b in t if b not in faces} for a, t in graph.items() if a not in faces}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(stack + [node, nxt])}"
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2
    for node in edges:
        if node not in state:
            visit(node, [])


def test_tips_implements_the_backbone_seam(tiny):
    assert isinstance(tiny, Backbone)
    images = torch.rand(2, 3, 56, 84)
    feats = tiny.encode_features(images)
    assert tuple(feats) == ("patch_tokens", *tiny.global_tokens)
    assert feats["patch_tokens"].shape == (2, 4 * 6, tiny.text_width)
    assert tiny.patch_grid((56, 84)) == (4, 6)
    for name in tiny.global_tokens:
        assert feats[name].shape == (2, tiny.text_width) and feats[name].dtype == torch.float32
        torch.testing.assert_close(feats[name].norm(dim=-1), torch.ones(2))
    assert tiny.default_global_token in tiny.global_tokens
    # Prompted text: n vectors in front of the sentence; zero-length prompts are refused.
    inputs = tiny.prompted_text_inputs(["a photo of a object."], 3)
    out = tiny.encode_prompted_text(torch.zeros(1, 3, tiny.text_width, requires_grad=True), inputs)
    assert out.shape == (1, tiny.text_width) and out.requires_grad
    with pytest.raises(ValueError, match="no room"):
        tiny.prompted_text_inputs(["x"], 64)


def test_fingerprint_covers_every_weight_and_notices_in_place_edits(tiny):
    from tipsomaly_lite.backbones.tips.model import load_tips

    twin = load_tips("tiny")
    assert twin.fingerprint() == tiny.fingerprint()
    # A transformer block deep in the vision tower, then the text tower's last norm: both count.
    for param in (twin.vision.blocks[-1].mlp.fc2.bias, twin.text.ln_final.weight):
        before = twin.fingerprint()
        with torch.no_grad():
            param.add_(1e-3)
        assert twin.fingerprint() != before
    assert twin.fingerprint() != tiny.fingerprint()


def _code_without_docstrings(path: Path) -> ast.AST:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return tree


def test_the_method_never_reaches_into_tips():
    """method/, eval/, the course plumbing and the CLI use the Backbone seam, not TIPS's towers or token names."""
    files = [*(PACKAGE / "method").glob("*.py"), *(PACKAGE / "eval").glob("*.py"), *(PACKAGE / "course").glob("*.py"),
             *(PACKAGE / "cli").glob("*.py")]
    internals = {"vision", "text", "tokenizer", "arch", "encode_image", "width"}
    for path in files:
        where = path.relative_to(ROOT)
        for node in ast.walk(_code_without_docstrings(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tipsomaly_lite.backbones.tips"):
                # Downloading a TIPS variant (the CLI's `fetch`, the course's real mode) uses the public registry of
                # checkpoints, not the model's internals.
                assert path.parent.name == "cli" or path.name == "session.py" and node.module.endswith(".registry"), \
                    f"{where} imports {node.module}"
            if isinstance(node, ast.Attribute) and node.attr in internals and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "model" or isinstance(node, ast.Attribute) and node.attr in internals \
                    and isinstance(node.value, ast.Name) and node.value.id == "model":
                pytest.fail(f"{where}:{node.lineno} reaches into the model (.{node.attr})")
            if isinstance(node, ast.Constant) and node.value in ("cls1", "cls2"):
                pytest.fail(f"{where}:{node.lineno} names TIPS's token {node.value!r}")


def test_the_repository_cites_only_what_it_carries():
    word = re.compile(r"\b" + "SP" + r"EC\b")  # spelled in two halves so this file does not cite it either
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = [f for f in files if (ROOT / f).is_file() and word.search((ROOT / f).read_text(encoding="utf-8", errors="ignore"))]
    assert not offenders, f"these files cite a document users do not have: {offenders}"


def test_method_notes_citations_point_at_real_sections_and_equations():
    notes = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\b", notes, re.M))
    equations = {int(n) for n in re.findall(r"\\tag\{(\d+)\}", notes)}
    headings = {h.strip() for h in re.findall(r"^#{2,3} (?:\d+(?:\.\d+)? )?(.+)$", notes, re.M)}
    assert {"1.1", "1.3", "2.3", "2.5", "2.7"} <= sections and equations >= set(range(1, 13))
    files = subprocess.run(["git", "ls-files", "*.py", "*.ipynb", "*.md"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    cited = 0
    for f in files:
        text = (ROOT / f).read_text(encoding="utf-8")
        for sec in re.findall(r"docs/method\.md §(\d+(?:\.\d+)?)", text):
            assert sec in sections, f"{f} cites docs/method.md §{sec}, which does not exist"
            cited += 1
        for name in re.findall(r'docs/method\.md, "([^"]+)"', text):
            assert name in headings, f"{f} cites the heading {name!r}, which docs/method.md does not have"
            cited += 1
        for eq in re.findall(r"docs/method\.md,? Eq\. (\d+)", text):
            assert int(eq) in equations, f"{f} cites Eq. {eq}, which docs/method.md does not number"
            cited += 1
    assert cited >= 20


def test_the_wheel_holds_the_package_and_no_test_code(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if n.endswith(".py")]
    for sub in SUBPACKAGES:
        assert f"tipsomaly_lite/{sub}/__init__.py" in code, sub
    assert all(n.startswith("tipsomaly_lite/") for n in code), [n for n in code if not n.startswith("tipsomaly_lite/")]
    assert "tipsomaly_lite/backbones/tips/tiny_toy.npz" in names  # the offline toy model ships as package data
    for test_only in ("native", "reference", "fixtures", "conftest", "helpers", "with_depth"):
        assert not [n for n in code if test_only in n], test_only
    packaged = "".join(zipfile.ZipFile(wheel).read(n).decode() for n in code)
    assert "def with_depth" not in packaged and "def random_reference" not in packaged


def test_interactive_cells_draw_once_with_the_defaults_when_nobody_can_move_a_control(monkeypatch, capsys):
    import ipywidgets

    from tipsomaly_lite.course import widgets

    calls = []

    def draw(level, kind, scale=2.0):
        calls.append((level, kind, scale))
        return "drawn"

    monkeypatch.delenv(widgets.WIDGETS_ENV, raising=False)
    assert widgets.live_frontend() is False  # plain Python: no frontend
    monkeypatch.setenv(widgets.WIDGETS_ENV, "live")
    assert widgets.live_frontend() is True
    monkeypatch.setenv(widgets.WIDGETS_ENV, "static")
    out = widgets.interact(draw, level=ipywidgets.FloatSlider(value=0.3, min=0, max=1), kind=["b", "a"])
    assert out == "drawn" and calls == [(0.3, "b", 2.0)]
    assert "static preview with level=0.3, kind='b', scale=2.0" in capsys.readouterr().out
