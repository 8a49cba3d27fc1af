"""The CLI never loses work: predict never overwrites and skips only what it cannot read, evaluate checks
``--out`` first, train refuses a run it cannot resume and stops on NaN."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from tipsomaly_lite.cli import main
from tipsomaly_lite.io.atomic import file_lock
from tipsomaly_lite.io.guard import claim_folder
from tipsomaly_lite.data.toy_data import make_toy_dataset

SIZE = ["--image-size", "56", "--quiet"]
pytestmark = pytest.mark.filterwarnings("ignore::tipsomaly_lite.offline.MeaninglessResultsWarning")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["pill"], n_train=0, n_normal=2, n_anomalous=2)
    return root


def _img(path, colour=(120, 80, 40), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _predict(images, out, *extra):
    return main(["predict", "--images", *map(str, images), "--class-name", "nut", "--out", str(out), *SIZE, *extra])


def _scores(out):
    return list(csv.DictReader((out / "scores.csv").open()))


# ---- predict never overwrites -------------------------------------------------------------------

def test_same_stem_in_different_folders_gets_distinct_overlays(tmp_path):
    a = _img(tmp_path / "imgs" / "a" / "x.png", (255, 0, 0))
    b = _img(tmp_path / "imgs" / "b" / "x.png", (0, 0, 255))
    assert _predict([tmp_path / "imgs"], tmp_path / "out") == 0
    rows = _scores(tmp_path / "out")
    overlays = {r["path"]: r["overlay"] for r in rows}
    assert set(overlays) == {str(a), str(b)} and len(set(overlays.values())) == 2
    assert (tmp_path / "out" / "a" / "x_overlay.png").is_file() and (tmp_path / "out" / "b" / "x_overlay.png").is_file()


def test_same_file_name_under_two_images_folders_gets_distinct_overlays(tmp_path):
    _img(tmp_path / "day1" / "x.png")
    _img(tmp_path / "day2" / "x.png", (0, 200, 0))
    assert _predict([tmp_path / "day1", tmp_path / "day2"], tmp_path / "out") == 0
    overlays = [r["overlay"] for r in _scores(tmp_path / "out")]
    assert len(overlays) == 2 and len({o.lower() for o in overlays}) == 2
    assert all((tmp_path / "out").joinpath(o).is_file() for o in overlays)


def test_same_stem_with_other_extensions_gets_distinct_overlays(tmp_path):
    _img(tmp_path / "imgs" / "x.png")
    _img(tmp_path / "imgs" / "x.jpg", (10, 20, 30))
    _img(tmp_path / "imgs" / "x_png.bmp", (90, 20, 30))  # would collide with x.png's fallback name
    assert _predict([tmp_path / "imgs"], tmp_path / "out") == 0
    overlays = [r["overlay"] for r in _scores(tmp_path / "out")]
    assert len(overlays) == 3 and len({o.lower() for o in overlays}) == 3
    assert {p.name for p in (tmp_path / "out").glob("*_overlay.png")} == {
        "x_png_overlay.png", "x_jpg_overlay.png", "x_png_2_overlay.png"}


def test_names_differing_only_in_case_do_not_collide(tmp_path):
    _img(tmp_path / "imgs" / "x.png")
    _img(tmp_path / "imgs" / "X.png", (1, 2, 3))
    assert _predict([tmp_path / "imgs"], tmp_path / "out") == 0
    overlays = [r["overlay"] for r in _scores(tmp_path / "out")]
    assert len({o.lower() for o in overlays}) == 2


def test_a_file_named_twice_is_scored_once(tmp_path):
    x = _img(tmp_path / "imgs" / "x.png")
    assert _predict([tmp_path / "imgs", x], tmp_path / "out") == 0
    assert len(_scores(tmp_path / "out")) == 1


@pytest.mark.parametrize("where", ["inside", "equal", "holding"])
def test_an_out_that_overlaps_images_is_refused_before_anything_is_written(tmp_path, capsys, where):
    imgs = tmp_path / "imgs"
    _img(imgs / "x.png")
    out = {"inside": imgs / "results", "equal": imgs, "holding": tmp_path}[where]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert _predict([imgs], out) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--images" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("bad", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_one_unreadable_image_is_skipped_and_counted(tmp_path, capsys, bad):
    imgs = tmp_path / "imgs"
    _img(imgs / "a.png")
    (imgs / "b.png").write_bytes(bad)
    _img(imgs / "c.png", (1, 200, 3))
    assert _predict([imgs], tmp_path / "out", "--batch-size", "2") == 1  # partly done: not 0
    captured = capsys.readouterr()
    assert [r["path"].rsplit("/", 1)[-1] for r in _scores(tmp_path / "out")] == ["a.png", "c.png"]
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "skipped" in err[0] and str(imgs / "b.png") in err[0]  # one line, naming it
    assert "2 images scored, 1 failed" in captured.out
    assert not (tmp_path / "out" / "b_overlay.png").exists()


def test_a_truncated_jpeg_is_skipped(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    _img(imgs / "a.png")
    _img(imgs / "t.jpg", size=(200, 200))
    (imgs / "t.jpg").write_bytes((imgs / "t.jpg").read_bytes()[:300])
    assert _predict([imgs], tmp_path / "out") == 1
    assert len(_scores(tmp_path / "out")) == 1 and "t.jpg" in capsys.readouterr().err


def test_no_readable_image_is_one_error_line(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"junk")
    assert _predict([tmp_path / "imgs"], tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "none of the 1 images could be read" in err[-1]
    assert not (tmp_path / "out" / "scores.csv").exists()


# ---- evaluate (and predict) check --out before the work ----------------------------------------

@pytest.fixture
def no_evaluation(monkeypatch):
    import tipsomaly_lite.eval.evaluation as evaluation

    def fail(*args, **kwargs):
        raise AssertionError("the evaluation ran although --out was unusable")

    monkeypatch.setattr(evaluation, "evaluate", fail)


@pytest.mark.parametrize("where", ["a file", "under a file", "in /proc"])
def test_evaluate_refuses_a_bad_out_before_evaluating(data_root, tmp_path, capsys, no_evaluation, where):
    (tmp_path / "f").write_text("x")
    out = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "sub", "in /proc": "/proc/h11b_eval"}[where]
    assert main(["evaluate", "--dataset", "toy", "--data-root", str(data_root), "--out", str(out), *SIZE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and str(out) in err[0]


def test_evaluate_prints_its_table_before_writing(data_root, tmp_path, capsys, monkeypatch):
    from tipsomaly_lite.eval.evaluation import EvaluationResult

    def disk_full(self, *args, **kwargs):
        raise ValueError("no space left (simulated)")

    monkeypatch.setattr(EvaluationResult, "save", disk_full)
    assert main(["evaluate", "--dataset", "toy", "--data-root", str(data_root), "--out", str(tmp_path / "e"),
                 *SIZE]) == 2
    assert "| **mean** |" in capsys.readouterr().out  # the numbers were shown, not thrown away


def test_predict_refuses_a_bad_out_before_loading_anything(tmp_path, capsys, monkeypatch):
    import tipsomaly_lite.cli as cli

    monkeypatch.setattr(cli.predict, "load_model", lambda args: pytest.fail("model loaded despite a bad --out"))
    _img(tmp_path / "imgs" / "x.png")
    (tmp_path / "f").write_text("x")
    assert _predict([tmp_path / "imgs"], tmp_path / "f") == 2
    assert "--out" in capsys.readouterr().err


# ---- 6 and 8 through the CLI -----------------------------------------------------------------------

def _train(data_root, out, *extra):
    return main(["train", "--dataset", "toy", "--data-root", str(data_root), "--out", str(out), "--batch-size", "2",
                 *SIZE, *extra])


def test_train_refuses_to_resume_another_run_then_no_resume_starts_again(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data_root, run, "--epochs", "1") == 0
    capsys.readouterr()
    assert _train(data_root, run, "--epochs", "2", "--image-size", "84") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the image size: 56 then, 84 now" in err[0] and "--no-resume" in err[0]
    assert _train(data_root, run, "--epochs", "1", "--image-size", "84", "--no-resume") == 0
    assert json.loads((run / "config.json").read_text())["image_size"] == 84


def test_train_on_a_locked_run_folder_is_refused(data_root, tmp_path, capsys):
    claim_folder(tmp_path / "run", command="train")  # what the other training process did first
    with file_lock(tmp_path / "run" / "train.lock"):
        assert _train(data_root, tmp_path / "run", "--epochs", "1") == 2
    assert "in use by another process" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_stops_on_a_diverging_loss_with_a_non_zero_exit(data_root, tmp_path, capsys, monkeypatch):
    import tipsomaly_lite.method.training as training

    real = training._batch
    monkeypatch.setattr(training, "_batch", lambda *a: (real(*a)[0] * float("inf"), real(*a)[1]))
    assert _train(data_root, tmp_path / "run", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert "not finite" in err and "--lr" in err
    assert not list((tmp_path / "run").glob("checkpoints/*.safetensors"))


def test_train_prints_the_right_epoch_losses_after_a_lost_history(data_root, tmp_path, capsys):
    straight = tmp_path / "straight"
    assert _train(data_root, straight, "--epochs", "2") == 0
    want = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    run = tmp_path / "run"
    assert _train(data_root, run, "--epochs", "1") == 0
    (run / "history.json").unlink()  # as if killed right after the checkpoint write
    capsys.readouterr()
    assert _train(data_root, run, "--epochs", "2") == 0
    got = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert got == want and len(got) == 2
    assert len(json.loads((run / "history.json").read_text())["steps"]) == 4


def test_a_walk_over_too_many_images_stops_with_one_line(tmp_path, capsys, monkeypatch):
    import tipsomaly_lite.predict as predict

    monkeypatch.setattr(predict, "MAX_IMAGES", 2)
    for name in "abc":
        _img(tmp_path / "imgs" / "sub" / f"{name}.png")
    assert _predict([tmp_path / "imgs"], tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "more than 2 images" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_folder_link_loop_is_not_followed(tmp_path):
    _img(tmp_path / "imgs" / "x.png")
    (tmp_path / "imgs" / "loop").symlink_to(tmp_path / "imgs")
    assert _predict([tmp_path / "imgs"], tmp_path / "out") == 0
    assert len(_scores(tmp_path / "out")) == 1


def test_a_batch_that_would_not_fit_in_memory_is_refused_before_decoding(tmp_path, capsys, monkeypatch):
    import tipsomaly_lite.io.images as images

    monkeypatch.setattr(images, "available_memory", lambda: 40 * 30 * 3 * 4)  # half a 40x30 image's floats
    _img(tmp_path / "imgs" / "a.png")
    assert _predict([tmp_path / "imgs"], tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "--batch-size" in err and "GiB" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "scores.csv").exists()
