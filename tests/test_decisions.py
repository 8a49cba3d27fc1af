"""Decisions: a threshold from known-good images by the documented rule (or by hand), a decision column,
threshold.json, one colour scale for a folder's maps with the threshold as a contour; fails closed."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly_lite.cli import main
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.deploy import THRESHOLD_RULE, Threshold, threshold_from_normal_images
from tipsomaly_lite.deploy.decide import MARGIN, QUANTILE, check_threshold
from tipsomaly_lite.offline import MeaninglessResultsWarning

SIZE = ["--image-size", "84", "--quiet", "--variant", "tiny"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["hex_nut"], n_train=0, n_normal=4, n_anomalous=3, seed=3)
    return root / "toy" / "hex_nut" / "test"


def test_the_rule_is_the_quantile_plus_the_margin_against_numpy():
    rng = np.random.default_rng(0)
    scores, maxima, minima = rng.uniform(0.8, 1.4, 7), rng.uniform(0.3, 0.5, 7), rng.uniform(0.0, 0.3, 7)
    t = Threshold.from_values(scores, maxima, minima)
    assert t.image_threshold == pytest.approx(np.quantile(scores, QUANTILE) + MARGIN, abs=1e-12)
    assert t.pixel_threshold == pytest.approx(np.quantile(maxima, QUANTILE) + MARGIN, abs=1e-12)
    assert t.n_normal == 7 and t.rule == THRESHOLD_RULE
    assert t.image_stats["max"] == pytest.approx(scores.max()) and t.image_stats["std"] == pytest.approx(
        scores.std(ddof=1))
    # the colour scale starts at the lowest normal map value and puts the pixel threshold in its middle
    low, high = t.colour_scale
    assert low == pytest.approx(minima.min()) and (low + high) / 2 == pytest.approx(t.pixel_threshold)
    # no known-good image is flagged; a score above the threshold is
    assert all(t.decide(s) == "normal" for s in scores)
    assert t.decide(t.image_threshold + 1e-6) == "anomalous" and t.decide(t.image_threshold) == "normal"


def test_one_known_good_image_gives_its_own_score_plus_the_margin():
    t = Threshold.from_values([1.25], [0.6], [0.1])
    assert t.image_threshold == pytest.approx(1.25 + MARGIN) and t.image_stats["std"] == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 2.5, "abc", None])
def test_a_threshold_that_is_not_a_finite_score_is_refused(bad):
    with pytest.raises(ValueError, match="finite image-score threshold"):
        check_threshold(bad)
    with pytest.raises(ValueError, match="finite image-score threshold"):
        Threshold.by_hand(bad)
    assert Threshold.by_hand("1.5").image_threshold == 1.5


def test_known_good_values_that_are_not_finite_or_missing_are_refused():
    with pytest.raises(ValueError, match="not finite"):
        Threshold.from_values([1.0, math.nan], [0.5, 0.5], [0.1, 0.1])
    with pytest.raises(ValueError, match="one image score"):
        Threshold.from_values([], [], [])


def _predict(args, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        code = main(["predict", *args, *SIZE])
    return code, capsys.readouterr()


def test_predict_with_normal_images_decides_and_records_the_threshold(toy, tmp_path, capsys):
    out = tmp_path / "out"
    code, captured = _predict(["--images", str(toy / "good" / "003.png"), *map(str, sorted(toy.glob("[!g]*/*.png"))),
                               "--normal-images", *map(str, sorted(toy.glob("good/00[0-2].png"))),
                               "--class-name", "hex nut", "--out", str(out)], capsys)
    assert code == 0, captured.err
    rows = list(csv.DictReader((out / "scores.csv").open()))
    record = json.loads((out / "threshold.json").read_text())
    t = record["threshold"]
    assert record["rule"] == THRESHOLD_RULE and record["n_normal_images"] == 3
    assert {"min", "max", "mean", "std", "median", f"quantile_{QUANTILE}"} <= set(record["image_stats"])
    assert record["image_stats"]["n"] == 3 and record["class_word"] == "hex nut" and record["meaningless"] is True
    assert len(record["normal_images"]) == 3 and len(rows) == 4
    for r in rows:
        assert r["decision"] == ("anomalous" if float(r["image_score"]) > t else "normal")
    assert "decisions:" in captured.out and "threshold.json" in captured.out
    # the same from Python: the detector and the rule give the CLI's threshold
    from tipsomaly_lite import Detector, load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        model = load_backbone("tiny", image_size=84)
    ours = threshold_from_normal_images(Detector(model), sorted(toy.glob("good/00[0-2].png")), "hex nut")
    assert ours.image_threshold == pytest.approx(t, abs=1e-5)
    assert ours.pixel_threshold == pytest.approx(record["pixel_threshold"], abs=1e-5)


def test_predict_with_a_threshold_by_hand(toy, tmp_path, capsys):
    out = tmp_path / "out"
    code, captured = _predict(["--images", str(toy), "--threshold", "0", "--class-name", "hex nut", "--out", str(out)],
                              capsys)
    assert code == 0, captured.err
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert rows and all(r["decision"] == "anomalous" for r in rows)  # every score is above 0
    record = json.loads((out / "threshold.json").read_text())
    assert record["threshold"] == 0.0 and record["rule"] == "given by hand" and record["n_normal_images"] == 0


def test_predict_without_a_threshold_has_no_decision_column(toy, tmp_path, capsys):
    code, _ = _predict(["--images", str(toy / "good"), "--threshold", "1", "--class-name", "hex nut", "--out",
                        str(tmp_path / "o")], capsys)
    assert code == 0 and (tmp_path / "o" / "threshold.json").is_file()
    code, _ = _predict(["--images", str(toy / "good"), "--class-name", "hex nut", "--out", str(tmp_path / "o")], capsys)
    assert code == 0  # the same folder again, without a threshold: last run's threshold.json is not left behind
    assert "decision" not in (tmp_path / "o" / "scores.csv").read_text()
    assert not (tmp_path / "o" / "threshold.json").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "3", "x"])
def test_a_threshold_flag_that_is_not_finite_is_one_line(value, toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "--images", str(toy), "--threshold", value, "--class-name", "x", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threshold" in err[0] and "finite" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_unreadable_known_good_images_are_one_line_and_no_threshold(bad, toy, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    Image.open(toy / "good" / "000.png").save(good / "a.png")
    (good / "b.png").write_bytes(bad)
    code, captured = _predict(["--images", str(toy / "good" / "003.png"), "--normal-images", str(good),
                               "--class-name", "hex nut", "--out", str(tmp_path / "o")], capsys)
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1, captured.err
    assert "--normal-images" in err[0] and str(good / "b.png") in err[0] and "Traceback" not in captured.err
    assert not (tmp_path / "o" / "scores.csv").exists() and not (tmp_path / "o" / "threshold.json").exists()


def test_missing_known_good_images_and_both_flags_are_one_line(toy, tmp_path, capsys):
    code, captured = _predict(["--images", str(toy), "--normal-images", str(tmp_path / "nowhere"), "--class-name", "x",
                               "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--normal-images" in captured.err and len(captured.err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["predict", "--images", str(toy), "--normal-images", str(toy), "--threshold", "1", "--class-name", "x",
              "--out", str(tmp_path / "o")])
    assert "not allowed with" in capsys.readouterr().err


def test_maps_share_the_threshold_colour_scale_and_draw_its_contour():
    from tipsomaly_lite.deploy.decide import draw_decision

    t = Threshold.from_values([1.0, 1.1], [0.5, 0.55], [0.2, 0.25])
    image = torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(0))
    amap = torch.linspace(0.1, 0.9, 60).expand(40, 60)  # crosses the pixel threshold
    fig = draw_decision(image, amap, "a", "b", t)
    panel = fig.axes[1]
    assert panel.images[-1].get_clim() == pytest.approx(t.colour_scale)
    assert len(panel.collections) >= 1  # the contour at the pixel threshold
    flat = draw_decision(image, torch.full((40, 60), 0.3), "a", "b", t)
    assert flat.axes[1].images[-1].get_clim() == pytest.approx(t.colour_scale)  # not stretched per image
    assert draw_decision(image, amap, "a", "b", None).axes[1].images[-1].get_clim() == (0.0, 1.0)
