"""The course's shared machinery: the start of every notebook, the self-checks, student copies
and the HTML run of ``make demo``."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

from tipsomaly_lite.course import checks
from tipsomaly_lite.course import session as course
from tipsomaly_lite.data.download import DownloadError
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
    make_toy_dataset(tmp_path / "btad", classes=["pill"], image_size=64, n_normal=2, n_anomalous=2)
    c = course.start(variant="l14-hr", data_root=tmp_path, image_size=224, verbose=False)
    other = c.with_auxiliary("btad")
    assert (other.aux_key, other.aux_root) == ("btad", tmp_path / "btad") and other.model is c.model
    assert c.aux_key == "toy_aux"  # the original course is unchanged
    missing = c.with_auxiliary("mpdd")
    assert missing.aux_key == "toy_aux" and "mpdd is not prepared" in missing.notes[-1]
    _, run = other.training_set()
    assert run.name.startswith("prompts-btad-224px-")


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
    assert len(written) == 8
    assert [p.name for p in written] == sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in written:
        nb = json.loads(path.read_text(encoding="utf-8"))
        code = "\n".join(c["source"] for c in nb["cells"] if c["cell_type"] == "code")
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
