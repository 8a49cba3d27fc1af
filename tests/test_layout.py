"""The package's shape: a flat public API, a backbone seam the method keeps to, no test code in the wheel."""

from __future__ import annotations

import ast
import json
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
SUBPACKAGES = ("backbones", "backbones/tips", "method", "eval", "data", "course", "course/checks")


def _imports_of_flat_api(text: str) -> set[str]:
    """Names in ``from tipsomaly_lite import a, b as c`` lines (parenthesised ones too) of a text."""
    text = text.replace("\\n", "\n").replace('\\"', '"')  # notebook JSON strings
    names = set()
    for m in re.finditer(r"from tipsomaly_lite import (\(([^)]*)\)|[^\n#]+)", text):
        body = m.group(2) if m.group(2) is not None else m.group(1)
        body = re.sub(r'[",]\s*$', "", body.replace('"', " ").replace("\n", " "))
        names |= {item.split(" as ")[0].strip() for item in body.split(",") if item.strip()}
    return names


def test_every_public_name_resolves():
    for name in tipsomaly_lite.__all__:
        assert getattr(tipsomaly_lite, name) is not None, name
    for name in ("checks", "viz", "metrics", "course", "offline", "cli"):
        assert getattr(tipsomaly_lite, name).__name__.startswith("tipsomaly_lite"), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tipsomaly_lite.nope  # noqa: B018


def test_names_the_readme_and_notebooks_import_are_public():
    texts = {p.name: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "notebooks").glob("*.ipynb"))]}
    seen = set()
    for where, text in texts.items():
        for name in _imports_of_flat_api(text):
            seen.add(name)
            assert hasattr(tipsomaly_lite, name), f"{where} imports {name!r} from tipsomaly_lite, which has no such name"
    # The README's quick start and the course's core names are among them.
    assert {"load_tips", "AnomalyDataset", "Detector", "train_prompts", "evaluate", "checks"} <= seen


def test_notebooks_import_only_the_flat_api_or_the_course_start():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            for line in "".join(cell["source"]).splitlines():
                m = re.match(r"\s*from (tipsomaly_lite[\w.]*) import", line)
                if m:
                    assert m.group(1) in ("tipsomaly_lite", "tipsomaly_lite.course"), f"{path.name}: {line.strip()}"


def test_the_tree_shows_the_architecture():
    for sub in SUBPACKAGES:
        init = PACKAGE / sub / "__init__.py"
        assert init.is_file(), f"{sub} is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{sub}/__init__.py says what it holds"
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "cli.py", "distributed.py", "offline.py"], flat


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
             PACKAGE / "cli.py"]
    internals = {"vision", "text", "tokenizer", "arch", "encode_image", "width"}
    for path in files:
        where = path.relative_to(ROOT)
        for node in ast.walk(_code_without_docstrings(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tipsomaly_lite.backbones.tips"):
                # Downloading a TIPS variant (the CLI's `fetch`, the course's real mode) uses the public registry of
                # checkpoints, not the model's internals.
                assert path.name in ("cli.py", "session.py") and node.module.endswith(".registry"), \
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
