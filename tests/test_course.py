"""The course's shared machinery: the start of every notebook, the self-checks, student copies
and the HTML run of ``make demo``."""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tipsomaly_lite.course import checks
from tipsomaly_lite.course import session as course
from tipsomaly_lite.io.download import DownloadError
from tipsomaly_lite.offline import MeaninglessResultsWarning
from tipsomaly_lite.data.toy_data import make_toy_dataset

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "notebooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _quiet_meaningless():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        yield


@pytest.fixture
def real_looking(monkeypatch, tiny):
    """``load_backbone`` returns a small model that is *not* flagged offline: stands in for real TIPS."""
    from tipsomaly_lite.backbones.tips.tiny import tiny_files
    from tipsomaly_lite.backbones.tips.model import load_tips_files

    calls = []

    def fake_load(name=None, **kwargs):
        calls.append(name)
        if name == "tiny":
            return tiny
        v, t, tok = tiny_files()
        return load_tips_files(v, t, tok, variant=name, image_size=kwargs.get("image_size"))

    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setattr(course, "load_backbone", fake_load)
    monkeypatch.setattr("tipsomaly_lite.backbones.tips.registry.variant_is_cached", lambda name: True)
    return calls


# ---------------------------------------------------------------- start()

def test_forced_offline_uses_tiny_model_and_toy_data(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    c = course.start(data_root=tmp_path, image_size=224, seed=5)
    out = capsys.readouterr().out
    assert c.offline and c.model.is_offline and c.device == torch.device("cpu")
    assert (c.test_key, c.aux_key) == ("toy", "toy_aux")
    assert "MEANINGLESS" in out and "forced by TIPSOMALY_OFFLINE" in out
    test, aux = c.dataset("test"), c.dataset("aux")
    assert test.image_size == 224 and test[0]["image"].shape == (3, 224, 224)
    # The auxiliary toy data is a different draw (another seed): same names, other pixels.
    assert test.samples[0]["img_path"] == aux.samples[0]["img_path"]
    assert not torch.equal(test[0]["image"], aux[0]["image"])
    assert torch.initial_seed() == 5
    with pytest.raises(ValueError, match="which"):
        c.dataset("train")


def test_offline_argument_forces_offline_without_the_env(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    c = course.start(offline=True, data_root=tmp_path, image_size=224, verbose=False)
    assert c.offline and "asked for by the notebook" in c.notes[0]
    assert capsys.readouterr().out == ""


def test_unreachable_weights_fall_back_to_offline_unless_forbidden(monkeypatch, tmp_path):
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setenv(course.DOWNLOAD_ENV, "1")  # downloading is allowed, the bucket is not reachable
    real = course.load_backbone

    def unreachable(name=None, **kwargs):
        if name != "tiny":
            raise DownloadError("cannot reach the bucket")
        return real("tiny", **kwargs)

    monkeypatch.setattr(course, "load_backbone", unreachable)
    c = course.start(data_root=tmp_path, image_size=224, verbose=False)
    assert c.offline and "neither cached nor downloadable (DownloadError)" in " ".join(c.notes)
    with pytest.raises(DownloadError):
        course.start(offline=False, data_root=tmp_path, image_size=224, verbose=False)


def test_real_model_reads_prepared_dataset_else_toy_stand_in(real_looking, tmp_path):
    make_toy_dataset(tmp_path / "mvtec", classes=["pill"], image_size=64, n_normal=2, n_anomalous=2)
    c = course.start(variant="l14-hr", data_root=tmp_path, image_size=224, verbose=False)
    assert not c.offline and real_looking == ["l14-hr"]
    assert (c.test_key, c.test_root) == ("mvtec", tmp_path / "mvtec")
    assert c.aux_key == "toy_aux" and "visa is not prepared" in " ".join(c.notes)
    assert c.dataset("test").key == "mvtec"


def test_with_auxiliary_points_the_prompts_at_another_source(real_looking, tmp_path):
    make_toy_dataset(tmp_path / "mvtec", classes=["pill"], image_size=64, n_normal=2, n_anomalous=2)
    c = course.start(variant="l14-hr", data_root=tmp_path, image_size=224, verbose=False)
    other = c.with_auxiliary("mvtec")
    assert (other.aux_key, other.aux_root) == ("mvtec", tmp_path / "mvtec") and other.model is c.model
    assert c.aux_key == "toy_aux"  # the original course is unchanged
    missing = c.with_auxiliary("mpdd")
    assert missing.aux_key == "toy_aux" and "mpdd is not prepared" in missing.notes[-1]
    _, run = other.training_set()
    assert run.name.startswith("prompts-mvtec-224px-")


def test_released_prompts_are_found_by_the_protocols_name_even_without_its_data(monkeypatch, tmp_path):
    """Real L/14 and VisA not prepared (toy stands in): MVTec still gets the released VisA prompts."""
    import types

    wanted = []
    monkeypatch.setattr("tipsomaly_lite.data.released_prompts.load_released_prompts",
                        lambda name: wanted.append(name) or (torch.zeros(8, 1024), torch.ones(8, 1024)))
    model = types.SimpleNamespace(family="tips", text_width=1024, variant="l14-hr")
    c = course.Course(model, False, torch.device("cpu"), 111, 518, tmp_path, "mvtec", "toy_aux",
                      tmp_path / "mvtec", tmp_path / "toy_aux", "visa")
    (normal, _), source = c.learned_prompts()
    assert source == "released:visa" and wanted == ["visa"] and normal.shape == (8, 1024)
    assert c.with_auxiliary("mvtec").learned_prompts()[1] == "released:mvtec"


def test_learned_prompts_train_once_then_load(monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    c = course.start(data_root=tmp_path, image_size=224, verbose=False)
    (normal, anomalous), source = c.learned_prompts(epochs=1, train_limit=10, progress=False)
    run = Path(source)
    assert run.parent == c.work_dir / "runs" and (run / "checkpoints" / "epoch_001.safetensors").is_file()
    assert normal.shape == anomalous.shape == (8, c.model.width)
    stamp = (run / "checkpoints" / "epoch_001.safetensors").stat().st_mtime_ns
    (again, _), source2 = c.learned_prompts(epochs=1, train_limit=10, progress=False)
    assert source2 == source and torch.equal(again, normal)
    assert (run / "checkpoints" / "epoch_001.safetensors").stat().st_mtime_ns == stamp  # loaded, not retrained


def test_train_limit_spreads_over_classes(monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    c = course.start(data_root=tmp_path, image_size=224, verbose=False)
    seen = {}

    def fake_train(model, data, config, out_dir, progress):
        seen["classes"] = {s["cls_name"] for s in data.samples}
        seen["n"] = len(data)
        raise RuntimeError("stop here")

    monkeypatch.setattr("tipsomaly_lite.method.training.train_prompts", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        c.learned_prompts(train_limit=12, progress=False)
    assert seen["n"] == 12 and len(seen["classes"]) >= 3


def test_pick_device_and_data_root(monkeypatch, tmp_path):
    assert course.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert course.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("TIPSOMALY_DATA", str(tmp_path / "d"))
    assert course.default_data_root() == tmp_path / "d"
    monkeypatch.delenv("TIPSOMALY_DATA")
    assert course.default_data_root().name == "data"
    assert course.prompts_trained_on("mvtec") == "visa" and course.prompts_trained_on("btad") == "mvtec"


def test_no_download_outside_colab_unless_asked(monkeypatch, tmp_path, capsys):
    """Weights not cached, no Colab, no opt-in: offline mode with a note on how to get them; never a download."""
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.delenv(course.DOWNLOAD_ENV, raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    real = course.load_backbone
    asked = []

    def spy(name=None, **kwargs):
        asked.append((name, kwargs.get("download", True)))
        if name != "tiny":
            raise AssertionError("a download was started") if kwargs.get("download", True) else \
                FileNotFoundError("not in the cache")
        return real("tiny", **kwargs)

    monkeypatch.setattr(course, "load_backbone", spy)
    c = course.start(data_root=tmp_path, image_size=224)
    out = capsys.readouterr().out
    assert c.offline and asked == [("tiny", True)]
    assert "~2 GB" in out and "tipsomaly fetch l14-hr" in out and "DOWNLOAD = True" in out
    with pytest.raises(FileNotFoundError):  # real mode demanded: the cache's error, still no download
        course.start(offline=False, data_root=tmp_path, image_size=224, verbose=False)
    assert asked[-1] == ("l14-hr", False)
    for opt_in in ({"download": True}, {}):
        if not opt_in:
            monkeypatch.setenv(course.DOWNLOAD_ENV, "1")
        asked.clear()
        with pytest.raises(AssertionError, match="a download was started"):
            course.start(data_root=tmp_path, image_size=224, verbose=False, **opt_in)
        assert asked == [("l14-hr", True)] and "Downloading TIPS l14-hr (~2 GB)" in capsys.readouterr().out
    monkeypatch.delenv(course.DOWNLOAD_ENV)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")  # Colab downloads by default, unless download=False
    assert course.download_allowed() and not course.download_allowed(False)


def test_a_real_large_model_on_the_cpu_gets_a_warning(real_looking, tmp_path, monkeypatch, capsys):
    import types

    big = types.SimpleNamespace(is_offline=False, text_width=1024, variant="l14-hr")
    note = course._cpu_note(big, torch.device("cpu"), 518)
    assert note and "CPU" in note and "seconds per 518-px image" in note and "GPU" in note
    assert course._cpu_note(big, torch.device("cuda"), 518) is None
    assert course._cpu_note(types.SimpleNamespace(is_offline=True, text_width=1024), torch.device("cpu"), 518) is None
    monkeypatch.setattr(course, "_cpu_note", lambda model, device, size: "⚠ slow here")
    c = course.start(variant="l14-hr", data_root=tmp_path, image_size=224, device="cpu")
    assert "⚠ slow here" in c.notes and "⚠ slow here" in capsys.readouterr().out


# ---------------------------------------------------------------- checks core

@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)


def test_checks_print_and_raise_only_when_strict(lenient, monkeypatch, capsys):
    assert checks.check_close("same", torch.ones(3), torch.ones(3)) is True
    assert capsys.readouterr().out == "✅ same\n"
    assert checks.check_close("differs", 2.0, 1.0, hint="look at X") is False
    out = capsys.readouterr().out
    assert out.startswith("❌ differs") and "expected: 1.0" in out and "got:      2.0" in out and "look at X" in out
    for env in ("CI", checks.STRICT_ENV):
        monkeypatch.setenv(env, "true")
        with pytest.raises(checks.CheckFailed, match="differs"):
            checks.check_close("differs", 2.0, 1.0)
        monkeypatch.delenv(env)
    monkeypatch.setenv("CI", "false")
    assert not checks.strict()


def test_check_close_catches_shape_nan_and_none(lenient, capsys):
    assert not checks.check_close("shape", torch.ones(2, 3), torch.ones(3, 2))
    assert "shape (2, 3), expected (3, 2)" in capsys.readouterr().out
    assert checks.check_close("nan", float("nan"), float("nan"))
    assert not checks.check_close("nan vs number", float("nan"), 1.0)
    assert not checks.check_close("none", None, 1.0)
    assert "still `...`" in capsys.readouterr().out
    assert not checks.check_close("text", "abc", 1.0)


def test_check_function_compares_on_every_input(lenient, capsys):
    inputs = [checks.random_inputs(0, (4, 3)), checks.random_inputs(1, (2, 3))]

    def reference(x):
        return x.softmax(-1)

    assert checks.check_function("softmax", lambda x: x.exp() / x.exp().sum(-1, keepdim=True), reference, inputs)
    assert not checks.check_function("wrong axis", lambda x: x.softmax(0), reference, inputs)
    assert not checks.check_function("raises", lambda x: x.nope, reference, inputs)
    assert "AttributeError" in capsys.readouterr().out
    assert not checks.check_function("not callable", None, reference, inputs)
    a, b = checks.random_inputs(3, (5, 4), (5, 4), normalize=True)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(5))
    assert not torch.equal(a, b) and torch.equal(a, checks.random_inputs(3, (5, 4), normalize=True)[0])


def test_check_true_and_in_range(lenient):
    assert checks.check_true("holds", 1 < 2, "1 < 2", True)
    assert not checks.check_true("fails", False, "something", "other")
    assert checks.check_in_range("auroc", 75.0, 0, 100)
    assert not checks.check_in_range("auroc", float("nan"), 0, 100)
    assert not checks.check_in_range("auroc", "high", 0, 100)


# ---------------------------------------------------------------- student copies

def test_strip_solutions_keeps_indentation_and_refuses_bad_markers():
    m = _script("make_student_copies")
    src = "def f(x):\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n    # END SOLUTION\n\nchecks.f(f)"
    assert m.strip_solutions(src) == "def f(x):\n    ...  # YOUR CODE HERE\n\nchecks.f(f)"
    for bad in ("# BEGIN SOLUTION\nx", "# END SOLUTION", "# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION"):
        with pytest.raises(ValueError, match="SOLUTION"):
            m.strip_solutions(bad, "nb cell 3")


def test_student_copies_of_the_course_have_stubs_only(tmp_path, lenient, capsys):
    m = _script("make_student_copies")
    written = m.write_student_copies(tmp_path)
    assert len(written) >= 8
    assert [p.name for p in written] == sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in written:
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "# BEGIN SOLUTION" not in code and "# END SOLUTION" not in code
        assert code.count("...  # YOUR CODE HERE") >= 1, path.name
        assert all(c.get("outputs", []) == [] for c in nb["cells"] if c["cell_type"] == "code")
    # A stubbed exercise returns None, and its check says ❌ (it raises only in CI).
    namespace: dict = {}
    exec(m.strip_solutions("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION"), namespace)
    assert not checks.check_function("stub", namespace["f"], lambda x: x, [(torch.ones(2),)])


# ---------------------------------------------------------------- make demo's HTML run

def test_run_notebook_writes_html_with_the_figure(tmp_path, monkeypatch):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    m = _script("run_course")
    nb = new_notebook(cells=[new_code_cell("import matplotlib.pyplot as plt\n%matplotlib inline\n"
                                           "plt.plot([0, 1], [1, 0]); plt.show()\nprint('done here')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_probe.ipynb"
    nbformat.write(nb, path)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    seconds = m.run_notebook(path, tmp_path)
    html = (tmp_path / "99_probe.html").read_text(encoding="utf-8")
    assert seconds > 0 and "done here" in html and "data:image/png;base64" in html
    assert json.loads(path.read_text())["cells"][0]["outputs"] == []  # the source notebook is untouched


# ---------------------------------------------------------------- graded help, any numeric type, untouched stubs

@pytest.fixture
def fresh_failures(monkeypatch):
    from tipsomaly_lite.course.checks import core

    monkeypatch.setattr(core, "_FAILURES", {})
    return core


def _stub(*args, **kwargs):
    return None


def _exercise_calls(tiny):
    """Every exercise's check called with the untouched stub (a function returning None)."""
    return {"class_counts": lambda f: checks.class_counts(f), "file_sha256": lambda f: checks.file_sha256(f),
            "text_positions": checks.text_positions, "pos_embed_resize": checks.pos_embed_resize,
            "patch_similarity_map": lambda f: checks.patch_similarity_map(f, tiny),
            "delta_for_probability": checks.delta_for_probability,
            "image_scores_by_class": checks.image_scores_by_class, "f1_max_by_hand": checks.f1_max_by_hand,
            "batch_loss": checks.batch_loss, "pixel_f1": checks.pixel_f1, "fused_score": checks.fused_score,
            "per_class_auroc": checks.per_class_auroc, "per_region_overlap": checks.per_region_overlap,
            "aupro_gap": checks.aupro_gap, "normal_threshold": checks.normal_threshold,
            "f1_threshold": checks.f1_threshold, "map_at_photo_size": checks.map_at_photo_size}


def test_every_exercise_is_registered_with_a_hint_that_is_not_code(tiny):
    from tipsomaly_lite.course.checks import core

    assert set(_exercise_calls(tiny)) <= set(core._EXERCISES)  # notebooks 00-07 (later ones test their own)
    for key, ex in core._EXERCISES.items():
        assert ex.hint and not re.search(r"\b(torch|F|np|hashlib|h|f)\.\w+\(", ex.hint), f"{key}: code in the hint"
    assert "torch.cat" not in core._EXERCISES["text_positions"].hint


def test_every_solution_resolves_to_the_packages_code(tiny, capsys):
    from tipsomaly_lite.course.checks import core

    for key, ex in core._EXERCISES.items():
        checks.solution(key)
        out = capsys.readouterr().out
        assert "def " in out and ("checks a property" in out) == (ex.reference is None), key


def test_an_untouched_exercise_ends_with_the_none_line_and_gives_no_hint(tiny, lenient, fresh_failures, capsys):
    for key, call in _exercise_calls(tiny).items():
        for _ in range(fresh_failures.HINT_AFTER + 1):  # an untouched exercise run again and again stays untold
            assert call(_stub) is False, key
            out = capsys.readouterr().out
            assert out.rstrip().splitlines()[-1].strip() == checks.UNANSWERED, f"{key}:\n{out}"
            assert "TypeError" not in out and "hint:" not in out and f'checks.hint("{key}")' in out, f"{key}:\n{out}"
        assert call(lambda *a, **k: ...) is False and checks.UNANSWERED in capsys.readouterr().out, key


def test_help_is_graded_what_is_wrong_then_a_hint_on_request_then_by_itself(lenient, fresh_failures, capsys):
    from tipsomaly_lite.backbones.tips.text import sinusoidal_positions

    hint = fresh_failures._EXERCISES["text_positions"].hint

    def interleaved(length, width):
        return sinusoidal_positions(length, width).reshape(length, 2, -1).transpose(1, 2).reshape(length, width)

    for attempt in range(1, fresh_failures.HINT_AFTER + 1):
        assert checks.text_positions(interleaved) is False
        out = capsys.readouterr().out
        assert "first mismatch at index [" in out
        if attempt < fresh_failures.HINT_AFTER:
            assert hint not in out and 'checks.hint("text_positions")' in out
        else:
            assert f"hint:     {hint}" in out
    assert checks.hint("text_positions") is None and hint in capsys.readouterr().out  # printed once, no echo
    checks.hint(checks.text_positions)
    assert hint in capsys.readouterr().out
    checks.solution("text_positions")  # the package's function has the exercise's signature: it is the solution
    assert "def sinusoidal_positions" in capsys.readouterr().out
    checks.solution("aupro_gap")
    out = capsys.readouterr().out
    assert "A worked solution of checks.aupro_gap" in out and "checks a property" in out
    checks.solution("per_class_auroc")
    out = capsys.readouterr().out
    assert "def _solve_per_class_auroc" in out and "EvaluationResult.image_metrics_by_score" in out
    with pytest.raises(KeyError, match="no exercise named 'nope'"):
        checks.hint("nope")


@pytest.mark.parametrize("wrap", [float, np.float32, np.float64, lambda v: torch.tensor(v),
                                  lambda v: torch.tensor([v], dtype=torch.float64), lambda v: np.array(v)],
                         ids=["float", "np.float32", "np.float64", "0-d tensor", "1-element tensor", "0-d array"])
def test_numeric_answers_of_any_type_are_accepted(wrap, lenient, monkeypatch):
    """Notebook 05 exercise 2 included: a float32 or 0-d tensor AUROC of the right value passes."""
    from tests.test_checks_nb05 import good_per_class

    monkeypatch.setenv(checks.STRICT_ENV, "1")
    assert checks.per_class_auroc(lambda rows, kind: wrap(good_per_class(rows, kind))) is True
    assert checks.check_close("scalar", wrap(0.25), 0.25) is True
    assert checks.check_in_range("auroc", wrap(75.0), 0, 100) is True
    from tests.test_checks_nb07 import _normal_threshold  # float32 may round below a score: still right

    assert checks.normal_threshold(lambda s, a: wrap(_normal_threshold(s, a))) is True


def test_a_non_number_is_told_so(lenient, capsys):
    assert not checks.per_class_auroc(lambda rows, kind: "75")
    assert "not one number" in capsys.readouterr().out
    assert not checks.per_class_auroc(lambda rows, kind: [75.0, 80.0])
    assert "not one number" in capsys.readouterr().out
    assert not checks.per_class_auroc(lambda rows, kind: [75.0])  # a list is not one number, even of one
    assert "not one number" in capsys.readouterr().out


def test_a_diff_shows_the_values_around_the_first_mismatch(lenient, capsys):
    expected = torch.arange(100.0)
    got = expected.clone()
    got[57] = -1.0
    assert not checks.check_close("far", got, expected)
    out = capsys.readouterr().out
    assert "first mismatch at index [57]: expected 57, got -1" in out and "1 of 100 values differ" in out
    assert "[…, 55, 56, >57<, 58, 59, 60, …]" in out and "[…, 55, 56, >-1<, 58, 59, 60, …]" in out
    assert not checks.check_close("2-d", got.reshape(10, 10), expected.reshape(10, 10))
    assert "at index [5, 7]" in capsys.readouterr().out
    assert not checks.check_close("nan", torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    assert "NaN where a number was expected" in capsys.readouterr().out


# ---------------------------------------------------------------- self-contained HTML, the learning path, the hand-out

_PROBE_MARKDOWN = ("# 99 · Probe\n\nThe cosine $$s = \\frac{z}{\\lVert z\\rVert}\\cdot\\big(t\\big)$$ and inline "
                   "$p_t^2$; not maths: `$HOME` and $HOME and $PATH.")
_PROBE_INTERACT = ("import matplotlib.pyplot as plt\n%matplotlib inline\nfrom tipsomaly_lite import interact\n\n"
                   "def draw(k=2):\n    plt.plot(range(k + 2)); plt.title(f'k={k}'); plt.show()\n\n"
                   "interact(draw, k=(0, 5));")
_PROBE_WIDGET = "import ipywidgets\nipywidgets.Button(description='press')"
_PROBE_PROGRESS = "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='steps'):\n    pass"


def _visible_text(page: str) -> str:
    """What a reader sees: the page without scripts, styles, tags and image attributes."""
    page = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S | re.I)
    return re.sub(r"<[^>]+>", " ", page)


@pytest.fixture(scope="module")
def probe_html(tmp_path_factory):
    """A notebook with display and inline maths, an interactive cell and a bare widget, run to HTML."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    m = _script("run_course")
    tmp = tmp_path_factory.mktemp("probe")
    nb = new_notebook(cells=[new_markdown_cell(_PROBE_MARKDOWN), new_code_cell(_PROBE_INTERACT),
                             new_code_cell(_PROBE_WIDGET), new_code_cell(_PROBE_PROGRESS)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp / "99_probe.ipynb"
    nbformat.write(nb, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MPLBACKEND", raising=False)
        mp.setenv("TIPSOMALY_WIDGETS", "static")
        m.run_notebook(path, tmp)
    return m, tmp / "99_probe.html"


def test_html_course_is_self_contained(probe_html):
    m, path = probe_html
    page = path.read_text(encoding="utf-8")
    visible = _visible_text(page)
    assert "$$" not in visible and "\\frac" not in visible and "$p_t" not in visible
    assert page.count('class="math-display"') == 1 and page.count('class="math-inline"') == 1
    assert "data:image/svg+xml;base64," in page and "math-source" not in page  # drawn, not left as source
    assert "$HOME and $PATH" in visible and "<code>$HOME</code>" in page  # dollars that are not maths stay
    assert re.search(r"static preview with k=2.*?data:image/png;base64", page, re.S), "the interactive cell's figure"
    assert m.WIDGET_NOTE in visible and m.WIDGET_VIEW not in page.split("</head>")[1]
    assert not re.search(r'<script[^>]+src="https?://', page), "a script fetched from the internet"
    assert "html-manager" not in page and "steps:" not in visible  # no widget state to fetch a manager for


def test_html_course_in_a_real_browser(probe_html, tmp_path):
    """Chromium (Debian's `chromium`) renders the page: no equation source visible, the figure there."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    _, path = probe_html
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "99 · Probe" in dom and "$$" not in _visible_text(dom)
    assert re.search(r"static preview with k=2.*?<img[^>]+data:image/png", dom, re.S)
    assert not re.search(r'<script[^>]+src="https?://', dom), "the page fetches a script from the internet"
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=900,1400", path.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 900) and (pixels < 128).mean() > 0.002  # text and a figure, not a blank page


def test_math_falls_back_to_readable_source_and_leaves_code_alone():
    m = _script("run_course")
    assert m.latex_to_svg(r"\begin{nosuch}") is None
    out = m.render_math("see $$\\begin{nosuch} x$$ and `$$x$$` and ```\n$a^2$\n```")
    assert '<div class="math-source">\\begin{nosuch} x</div>' in out and "`$$x$$`" in out and "$a^2$" in out


def test_index_is_a_learning_path(tmp_path):
    m = _script("run_course")
    rows = []
    for path in sorted((ROOT / "notebooks").glob("0[0-7]_*.ipynb")):
        info = m.notebook_info(json.loads(path.read_text(encoding="utf-8")))
        assert info["title"].startswith(path.name[:2] + " · ") and 3 <= len(info["outcomes"]) <= 5, path.name
        assert len(info["exercises"]) >= 2 and all(e.startswith("Exercise ") for e in info["exercises"]), path.name
        assert 20 <= info["student_minutes"] <= 240 and info["builds_on"], path.name
        rows.append((path.stem, info, 12.0))
    page = m.index_html(rows, "OFFLINE mode", student=False)
    for name, info, _ in rows:
        assert f'href="{name}.html"' in page and f"about {info['student_minutes']} min for a student" in page
        assert html_escape(info["exercises"][0]) in page
    assert "this page ran in 12 s" in page and "Teacher edition" in page
    assert 'href="01_loading_tips.html">01 · Loading TIPS</a>' in page  # "builds on" links to the page
    assert "Student edition" in m.index_html(rows, "OFFLINE mode", student=True)


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_student_html_runs_the_copies_without_solutions(tmp_path, monkeypatch):
    """`run_course.py --student` executes the student copies (stubs), checks print ❌ and never raise."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    m = _script("run_course")
    src = tmp_path / "src"
    src.mkdir()
    nb = new_notebook(cells=[
        new_markdown_cell("[badge]"), new_markdown_cell("# 98 · Stub\n\nOne line.\n\n**By the end you will be able to**"
                                                        "\n- a\n- b\n- c\n\n**Builds on:** nothing."),
        new_markdown_cell("## Exercises\n\n**Exercise 1 · Twice.** Write it."),
        new_code_cell("from tipsomaly_lite.course import checks\n\ndef twice(x):\n    # BEGIN SOLUTION\n"
                      "    return 2 * x\n    # END SOLUTION\n\nchecks.check_close('twice', twice(3.0), 6.0)"),
        new_code_cell("print('after the exercise')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, src / "98_stub.ipynb")
    monkeypatch.setattr(m, "HERE", src)
    monkeypatch.setenv(checks.STRICT_ENV, "1")  # the hand-out turns strictness off for its kernels
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for var, value in (("TIPSOMALY_OFFLINE", "1"), ("TIPSOMALY_WIDGETS", "static")):
        monkeypatch.setenv(var, value)  # main() sets them for its kernels; restored after this test
    assert m.main(["--student", "--out", str(tmp_path / "html")]) == 0
    page = (tmp_path / "html" / "98_stub.html").read_text(encoding="utf-8")
    assert "BEGIN SOLUTION" not in page and "return 2 * x" not in page and "YOUR CODE HERE" in page
    assert re.search(r'aria-label="failed".*?</svg> twice', page, re.S)  # ❌, drawn without an emoji font
    assert checks.UNANSWERED in page and "after the exercise" in page
    index = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    assert "Student edition" in index and "Exercise 1 · Twice" in index
    assert json.loads((src / "98_stub.ipynb").read_text())["cells"][3]["outputs"] == []


def test_scripts_run_without_the_venv_active(tmp_path):
    """`python3 notebooks/make_student_copies.py` re-runs itself with .venv/bin/python; with no way in, one line."""
    import os
    import subprocess
    import sys

    script = ROOT / "notebooks" / "make_student_copies.py"
    env = {k: v for k, v in os.environ.items() if k not in ("_TIPSOMALY_REEXEC", "PYTHONPATH")}  # not importable
    # -S: no site-packages, so tipsomaly_lite is not importable by this interpreter.
    bare = subprocess.run([sys.executable, "-S", str(script), "--out", str(tmp_path / "s")], capture_output=True,
                          text=True, timeout=120, env=env)
    if (ROOT / ".venv" / "bin" / "python").is_file():
        assert bare.returncode == 0, bare.stderr
        assert len(list((tmp_path / "s").glob("*.ipynb"))) >= 8
    else:
        assert bare.returncode == 1 and "make install" in bare.stderr
    stuck = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True, timeout=60,
                           env={**env, "_TIPSOMALY_REEXEC": "1"})
    assert stuck.returncode == 1 and stuck.stderr.strip().count("\n") == 0
    assert "tipsomaly_lite is not importable" in stuck.stderr and "make install" in stuck.stderr


@pytest.mark.slow
def test_a_notebook_cell_slower_than_the_limit_fails(tmp_path):
    """notebooks/conftest.py fails an nbval cell slower than the offline limit, naming it."""
    import os
    import shutil
    import subprocess
    import sys

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path / "conftest.py")
    # The limit grows with the machine's load: 0.2 s x a load factor up to 15 stays under 3 s.
    nb = new_notebook(cells=[new_code_cell("x = 1"), new_code_cell("import time\ntime.sleep(3)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "slow.ipynb")
    env = {**os.environ, "TIPSOMALY_OFFLINE": "1", "TIPSOMALY_CELL_LIMIT_S": "0.2"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--rootdir", str(tmp_path), str(tmp_path / "slow.ipynb")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert run.returncode == 1, run.stdout[-2000:]
    assert "1 failed, 1 passed" in run.stdout and "more than the offline course's 0.2 s per cell" in run.stdout
    assert "it starts: 'import time'" in run.stdout
    env.pop("TIPSOMALY_OFFLINE")  # real mode: no limit
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path).returncode == 0


def test_the_cell_limit_grows_with_a_shared_cpu_only(monkeypatch):
    spec = importlib.util.spec_from_file_location("nb_conftest", ROOT / "notebooks" / "conftest.py")
    limits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(limits)
    monkeypatch.setattr(limits.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(limits.os, "getloadavg", lambda: (8.0, 1.0, 1.0))
    assert limits.load_factor() == 4.0
    monkeypatch.setattr(limits.os, "getloadavg", lambda: (0.5, 1.0, 1.0))
    assert limits.load_factor() == 1.0  # an idle machine never lowers the limit
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    monkeypatch.delenv(limits.LIMIT_ENV, raising=False)
    assert limits.cell_limit_s() == limits.CELL_LIMIT_S == 20.0
    monkeypatch.delenv("TIPSOMALY_OFFLINE")
    assert limits.cell_limit_s() is None


_PROBE_MACHINE = ("import os, sys, tempfile\nfrom pathlib import Path\n"
                  "from tipsomaly_lite.io.download import cache_dir\n"
                  "print('cwd', os.getcwd()); print('home', Path.home()); print('cache', cache_dir() / 'toy')\n"
                  "print('tmp', Path(tempfile.gettempdir()) / 'tipsomaly_x1y2' / 'map.png'); "
                  "print('venv', sys.prefix)\n"
                  "import warnings; warnings.warn('from a cell')")
_PROBE_CHECKS = ("import os\nos.environ.pop('TIPSOMALY_STRICT_CHECKS', None); os.environ.pop('CI', None)\n"
                 "from tipsomaly_lite.course import checks\n"
                 "checks.check_close('right', 0.5, 0.5)\nchecks.check_close('wrong', 0.4, 0.5)\n"
                 "print('💡 a hint line')")


def test_html_reads_the_same_on_any_machine(tmp_path, monkeypatch):
    """No path of the building machine, no emoji that needs an emoji font, no remote badge: in the page and,
    when Chromium is here (it has no emoji font), on the screen: the ✅/❌ marks are drawn green and red."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    from PIL import Image

    from tipsomaly_lite.course.session import colab_badge_url
    from tipsomaly_lite.io.download import cache_dir

    m = _script("run_course")
    image = "https://colab.research.google.com/assets/colab-badge.svg"
    badge = f"[![Open In Colab]({image})]({colab_badge_url('00_setup')})"
    nb = new_notebook(cells=[new_markdown_cell(badge),
                             new_markdown_cell("# 97 · Marks\n\nSelf-checks print ✅ or ❌."),
                             new_code_cell(_PROBE_MACHINE), new_code_cell(_PROBE_CHECKS)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "97_marks.ipynb"
    nbformat.write(nb, path)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    m.run_notebook(path, tmp_path, cwd=ROOT / "notebooks")
    page = (tmp_path / "97_marks.html").read_text(encoding="utf-8")
    visible = _visible_text(page)
    assert "cwd notebooks" in visible and "home ~" in visible and "cache ~/.cache/tipsomaly_lite/toy" in visible
    assert "tmp &lt;tmp&gt;/map.png" in visible and "venv .venv" in visible
    assert "&lt;cell&gt;:6: UserWarning" in visible  # a warning names its cell, not a temporary file
    for machine in {str(ROOT), str(Path.home()), str(cache_dir()), tempfile.gettempdir() + "/", sys.prefix}:
        assert machine not in visible, f"{machine} is shown in the page"
    for emoji in m.MARKS:
        assert emoji not in page, f"{emoji!r} needs an emoji font"
    assert page.count('aria-label="passed"') >= 2 and page.count('aria-label="failed"') >= 2  # markdown + output
    assert 'aria-label="hint"' in page
    assert not re.search(r'<img[^>]+src="https?://', page) and m.BADGE_URI in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return  # the page itself is checked above; the screen needs a browser
    shot = tmp_path / "marks.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=900,900", (tmp_path / "97_marks.html").as_uri()],
                   capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def near(colour: tuple[int, int, int]) -> int:
        return int((np.abs(rgb - np.array(colour)).sum(-1) < 40).sum())

    assert near((0x2E, 0x7D, 0x32)) > 50 and near((0xC6, 0x28, 0x28)) > 50, "the ✅/❌ marks are not drawn"


def test_nbval_runs_a_notebook_saved_with_outputs_as_a_clean_copy(tmp_path):
    """notebooks/conftest.py clears what a session saved: nbval alone fails a cell whose outputs outlived its count."""
    import os
    import shutil
    import subprocess
    import sys

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    stale = new_output("stream", name="stdout", text="9\n")
    nb = new_notebook(cells=[new_code_cell("x = 1\nprint(x)", outputs=[stale]),
                             new_code_cell("x", execution_count=4,
                                           outputs=[new_output("execute_result", data={"text/plain": "2"},
                                                               execution_count=4)])])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "saved.ipynb")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--rootdir", str(tmp_path), str(tmp_path / "saved.ipynb")]
    env = {**os.environ, "TIPSOMALY_OFFLINE": "1"}
    bare = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert bare.returncode == 1 and "Unrun reference cell has outputs" in bare.stdout  # without the clean copy
    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path / "conftest.py")
    clean = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert clean.returncode == 0 and "2 passed" in clean.stdout, clean.stdout[-2000:]
