"""Few-shot references and mutual scoring (docs/method.md §2.8-2.9): exact against brute force, K = 0 is
zero-shot bit for bit, order-independent, and every wrong input is one line."""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest
import torch

from tipsomaly_lite.cli import main
from tipsomaly_lite.data.datasets import AnomalyDataset, read_meta, write_meta
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.eval.evaluation import evaluate
from tipsomaly_lite.method.detector import Detector
from tipsomaly_lite.method.few_shot import (ReferenceMemory, draw_references, fuse_patch_scores, nearest_distances,
                                            pair_min_distances)
from tipsomaly_lite.method.maps import anomaly_map
from tipsomaly_lite.method.mutual import interval_average, mutual_predictions, mutual_scores, predict_mutual

SIZE = 56  # 4 x 4 patches of the tiny model


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _brute_nn(queries, memory):
    """Independent oracle: for unit vectors |u - v|^2 = 2 - 2 cos, so (1 - cos) / 2 = |u - v|^2 / 4."""
    return torch.cdist(_unit(queries).double(), _unit(memory).double()).pow(2).div(4)


@pytest.mark.parametrize("chunk", [3, 7, 64, 100, 4096])
def test_chunked_search_equals_brute_force_cdist(chunk):
    g = torch.Generator().manual_seed(chunk)
    q, m = torch.randn(203, 24, generator=g), torch.randn(97, 24, generator=g)  # 7 divides neither 203 nor 97
    row, col = pair_min_distances(q, m, chunk)
    d = _brute_nn(q, m)
    torch.testing.assert_close(row.double(), d.min(1).values, atol=1e-6, rtol=0)
    torch.testing.assert_close(col.double(), d.min(0).values, atol=1e-6, rtol=0)
    batch = nearest_distances(q.reshape(7, 29, 24), m, chunk)
    assert batch.shape == (7, 29)
    torch.testing.assert_close(batch.reshape(-1), row)


def test_search_bounds_and_errors():
    x = torch.randn(5, 8)
    row, _ = pair_min_distances(x, x, chunk=2)
    assert (row >= 0).all() and row.max() < 1e-6  # every row finds itself
    row, _ = pair_min_distances(x, -x)
    assert ((row >= 0) & (row <= 1)).all()
    for a, b, chunk in ((x, torch.randn(5, 9), 4), (x[:0], x, 4), (x, x, 0), (x[0], x, 4)):
        with pytest.raises(ValueError):
            pair_min_distances(a, b, chunk)


def _features(tiny, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tiny.encode_features(torch.rand(n, 3, SIZE, SIZE, generator=g))


def test_k0_is_todays_zero_shot_bit_for_bit(tiny):
    """No references: the zero-shot pipeline step by step (Eq. 2, 3, 8, 9), compared with torch.equal."""
    from tipsomaly_lite.method.fusion import fuse_scores, local_score
    from tipsomaly_lite.method.scoring import global_score, patch_probabilities

    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    zero = Detector(tiny)
    assert zero.references is None
    pred = zero.predict(images, "bottle")
    feats = tiny.encode_features(images)
    image_text, pixel_text = zero.text_features(["bottle"] * 4)
    g = global_score(feats[zero.token], image_text, tiny.temperature)
    p = patch_probabilities(feats["patch_tokens"], pixel_text, tiny.temperature)[..., 1]
    expected = {"image_score": fuse_scores(g, p), "global_score": g, "local_score": local_score(p), "patch_scores": p,
                "anomaly_map": anomaly_map(p, tiny.patch_grid(SIZE), SIZE, sigma=zero.sigma)}
    for field, value in expected.items():
        assert torch.equal(getattr(pred, field), value), field
    assert "few_shot" not in zero.config()


def test_few_shot_map_is_the_zero_shot_map_fused_with_the_nn_map(tiny):
    refs = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    zero = Detector(tiny, sigma=2.0).predict(images, "bottle")
    det = Detector(tiny, sigma=2.0)
    det.references = ReferenceMemory.from_images(tiny, {"bottle": refs}, batch_size=2)
    few = det.predict(images, "bottle")
    feats = tiny.encode_features(images)["patch_tokens"]
    memory = tiny.encode_features(refs)["patch_tokens"].reshape(-1, feats.shape[-1])
    nn = _brute_nn(feats.reshape(-1, feats.shape[-1]), memory).min(1).values.reshape(4, -1).float()
    torch.testing.assert_close(few.patch_scores, 0.5 * zero.patch_scores + 0.5 * nn, atol=1e-6, rtol=0)
    # The map: the NN map upsampled and smoothed exactly like the zero-shot one, then averaged with it.
    nn_map = anomaly_map(nn, tiny.patch_grid(SIZE), SIZE, sigma=2.0)
    torch.testing.assert_close(few.anomaly_map, 0.5 * zero.anomaly_map + 0.5 * nn_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(few.image_score, zero.global_score + few.patch_scores.amax(1))
    assert det.config()["few_shot"]["shots"] == {"bottle": 3}


def test_a_reference_scores_itself_normal_and_cached_features_equal_images(tiny):
    refs = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    from_images = ReferenceMemory.from_images(tiny, {"nut": refs})
    from_features = ReferenceMemory.from_features({"nut": tiny.encode_features(refs)["patch_tokens"]}, model=tiny)
    feats = tiny.encode_features(refs)["patch_tokens"]
    assert from_images.scores(feats, ["nut", "nut"]).max() < 1e-6
    torch.testing.assert_close(from_features.scores(feats, ["nut"] * 2), from_images.scores(feats, ["nut"] * 2))


def test_references_fail_closed(tiny):
    feats = _features(tiny, 2)["patch_tokens"]
    memory = ReferenceMemory.from_features({"nut": feats}, model=tiny)
    with pytest.raises(ValueError, match=r"no references for \['screw'\]"):
        memory.scores(feats, ["nut", "screw"])
    with pytest.raises(ValueError, match="patches of width"):
        memory.scores(feats[:, :5], ["nut", "nut"])
    with pytest.raises(ValueError, match="between 0 and 64"):
        ReferenceMemory.from_features({"nut": torch.randn(65, 16, 64)})
    with pytest.raises(ValueError, match=r"\(K, N, D\)"):
        ReferenceMemory.from_features({"nut": torch.randn(16, 64)})
    with pytest.raises(ValueError, match="NaN"):
        ReferenceMemory.from_features({"nut": torch.full((1, 16, 64), float("nan"))})
    with pytest.raises(ValueError, match="same \\(N, D\\)"):
        ReferenceMemory.from_features({"a": torch.randn(1, 16, 64), "b": torch.randn(1, 9, 64)})
    other = ReferenceMemory.from_features({"nut": feats}, model=tiny)
    other.fingerprint = "0" * 16
    with pytest.raises(ValueError, match="other weights"):
        other.scores(feats, ["nut", "nut"], tiny)


# ---------------------------------------------------------------------------------------------- mutual

def _mutual_oracle(x, fraction):
    """A slow loop: each image against each other image, brute-force cdist, then the interval average."""
    b = len(x)
    out = torch.empty(b, x.shape[1], dtype=torch.float64)
    k = max(1, math.ceil(fraction * (b - 1)))
    for i in range(b):
        per_other = torch.stack([_brute_nn(x[i], x[j]).min(1).values for j in range(b) if j != i])  # (B-1, N)
        out[i] = per_other.sort(0).values[:k].mean(0)
    return out


@pytest.mark.parametrize("b, fraction", [(2, 0.3), (5, 0.3), (6, 1.0), (7, 0.5)])
def test_mutual_scores_equal_a_slow_loop(b, fraction):
    x = torch.randn(b, 13, 16, generator=torch.Generator().manual_seed(b))
    torch.testing.assert_close(mutual_scores(x, fraction, chunk=5).double(), _mutual_oracle(x, fraction),
                               atol=1e-6, rtol=0)


def test_mutual_scores_do_not_depend_on_the_order_of_the_images():
    x = torch.randn(9, 20, 32, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mutual_scores(x[perm]), mutual_scores(x)[perm], atol=1e-7, rtol=0)


def test_mutual_scoring_finds_a_patch_no_other_image_has():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(8, 16, generator=g)  # the normal look of each patch position, shared by the batch
    x = normal.expand(6, 8, 16) + 0.05 * torch.randn(6, 8, 16, generator=g)
    x[2, 5] = torch.randn(16, generator=g)  # one defect patch, in one image only
    scores = mutual_scores(x)
    assert scores.argmax() == 2 * 8 + 5
    assert interval_average(torch.tensor([[[4.0], [1.0], [3.0], [2.0]]]), 0.5).item() == 1.5


def test_mutual_needs_two_images_and_a_sane_fraction(tiny):
    with pytest.raises(ValueError, match="at least 2 test images"):
        mutual_scores(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="fraction"):
        mutual_scores(torch.randn(3, 4, 8), fraction=0.0)
    images = torch.rand(3, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="one image of 'screw'"):
        predict_mutual(Detector(tiny), images, ["nut", "nut", "screw"])


def test_predict_mutual_fuses_per_class_and_reads_no_labels(tiny):
    images = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    det = Detector(tiny)
    words = ["nut", "screw", "nut", "screw", "nut"]
    pred = predict_mutual(det, images, words)
    zero = det.predict(images, words)
    feats = tiny.encode_features(images)["patch_tokens"]
    expected = torch.empty_like(zero.patch_scores)
    for word in ("nut", "screw"):
        idx = [i for i, w in enumerate(words) if w == word]
        expected[idx] = fuse_patch_scores(zero.patch_scores[idx], mutual_scores(feats[idx]))
    torch.testing.assert_close(pred.patch_scores, expected)
    assert pred.anomaly_map.shape == (5, SIZE, SIZE)


# ----------------------------------------------------------------------------------------- with data

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "toy"
    make_toy_dataset(root, classes=["hex_nut", "carpet"], image_size=SIZE, n_train=3, n_normal=2, n_anomalous=3)
    return root


def test_references_come_from_the_train_split_seeded(toy):
    a = draw_references(toy, ["hex_nut", "carpet"], 2, seed=0)
    assert a == draw_references(toy, ["carpet", "hex_nut"], 2, seed=0)
    assert {c: len(v) for c, v in a.items()} == {"carpet": 2, "hex_nut": 2}
    train = {r["img_path"] for rows in read_meta(toy)["train"].values() for r in rows}
    assert all(p in train and "/train/" in p for v in a.values() for p in v)
    seeds = {tuple(draw_references(toy, ["carpet"], 1, seed=s)["carpet"]) for s in range(12)}
    assert len(seeds) > 1  # the seed changes the draw
    assert draw_references(toy, ["carpet"], 0) == {}


def test_draws_that_are_not_normal_train_images_are_refused(toy, tmp_path):
    with pytest.raises(ValueError, match=r"class 'carpet' has 3 normal images in the train split.*--shots 3 or fewer"):
        draw_references(toy, ["carpet"], 4)
    with pytest.raises(ValueError, match="between 0 and 64"):
        draw_references(toy, ["carpet"], 65)
    import shutil

    leak = tmp_path / "leak"
    shutil.copytree(toy, leak)
    meta = read_meta(leak)
    test_row = meta["test"]["carpet"][0]
    meta["train"]["carpet"] = [dict(test_row, specie_name="good", anomaly=0, mask_path="")]
    write_meta(leak, meta)
    with pytest.raises(ValueError, match="is also in the test split"):
        draw_references(leak, ["carpet"], 1)
    anomalous = next(r for r in read_meta(toy)["test"]["carpet"] if r["anomaly"])
    meta["train"]["carpet"] = [dict(anomalous, anomaly=0)]  # an image with a mask is not a normal reference
    write_meta(leak, meta)
    with pytest.raises(ValueError, match="no normal image in the train split"):
        draw_references(leak, ["carpet"], 1)


def test_mutual_evaluation_is_order_independent_and_matches_predict_mutual(tiny, toy):
    data = AnomalyDataset(toy, image_size=SIZE)
    det = Detector(tiny)
    result = evaluate(det, data, batch_size=3, progress=False, mutual_scoring=True)
    assert result.config["mutual_scoring"] is True
    by_path = {r["path"]: r["image_score"] for r in result.scores}
    for cls in data.classes:
        items = [data[i] for i in range(len(data)) if data.samples[i]["cls_name"] == cls]
        pred = predict_mutual(det, torch.stack([it["image"] for it in items]), items[0]["class_word"], maps=False)
        for it, score in zip(items, pred.image_score.tolist()):
            assert by_path[it["path"]] == pytest.approx(score, abs=1e-6)
    shuffled = AnomalyDataset(toy, image_size=SIZE)
    g = torch.Generator().manual_seed(0)
    for cls in shuffled.classes:  # shuffle within each class (classes stay together, as the dataset keeps them)
        idx = [i for i, r in enumerate(shuffled.samples) if r["cls_name"] == cls]
        perm = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        for i, j in zip(idx, perm):
            shuffled.samples[i] = data.samples[j]
    again = evaluate(det, shuffled, batch_size=2, progress=False, mutual_scoring=True)
    for r in again.scores:
        assert r["image_score"] == pytest.approx(by_path[r["path"]], abs=1e-6)


def test_mutual_predictions_refuse_a_class_of_one_or_split_classes(tiny):
    one = {"image": torch.rand(3, 3, SIZE, SIZE), "class_name": ["a", "a", "b"], "class_word": ["a", "a", "b"],
           "mask": torch.zeros(3, 1, SIZE, SIZE)}
    with pytest.raises(ValueError, match="class 'b' has one test image"):
        list(mutual_predictions(Detector(tiny), [one]))
    split = [{**one, "class_name": ["a", "b", "b"], "class_word": ["a", "b", "b"]},
             {**one, "class_name": ["a", "a", "a"], "class_word": ["a", "a", "a"]}]
    with pytest.raises(ValueError, match="one test image|not together"):
        list(mutual_predictions(Detector(tiny), split))


# ----------------------------------------------------------------------------------------------- CLI

@pytest.fixture
def _offline(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")


def _run(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(args)


COMMON = ["--image-size", str(SIZE), "--quiet", "--batch-size", "3"]


def test_evaluate_shots_0_is_zero_shot_and_shots_k_records_its_references(toy, tmp_path, _offline):
    base = ["evaluate", "--dataset", "toy", "--data-root", str(toy.parent), *COMMON]
    assert _run([*base, "--out", str(tmp_path / "plain")]) == 0
    assert _run([*base, "--shots", "0", "--out", str(tmp_path / "k0")]) == 0
    assert (tmp_path / "plain" / "scores.csv").read_bytes() == (tmp_path / "k0" / "scores.csv").read_bytes()
    config = json.loads((tmp_path / "k0" / "config.json").read_text())
    assert config["shots"] == 0 and config["reference_images"] == {} and config["mutual_scoring"] is False
    assert _run([*base, "--shots", "2", "--shot-seed", "7", "--out", str(tmp_path / "k2")]) == 0
    config = json.loads((tmp_path / "k2" / "config.json").read_text())
    assert config["shots"] == 2 and config["shot_seed"] == 7
    assert config["reference_images"] == draw_references(toy, ["carpet", "hex_nut"], 2, seed=7)
    assert config["few_shot"]["shots"] == {"carpet": 2, "hex nut": 2}
    plain = list(csv.DictReader((tmp_path / "plain" / "scores.csv").open()))
    few = list(csv.DictReader((tmp_path / "k2" / "scores.csv").open()))
    assert [r["global_score"] for r in plain] == [r["global_score"] for r in few]  # the global level is untouched
    assert [r["local_score"] for r in plain] != [r["local_score"] for r in few]
    assert _run([*base, "--mutual-scoring", "--out", str(tmp_path / "mutual")]) == 0
    assert json.loads((tmp_path / "mutual" / "config.json").read_text())["mutual_scoring"] is True


@pytest.mark.parametrize("extra, message", [
    (["--shots", "4"], "has 3 normal images in the train split"),
    (["--shots", "65"], "between 0 and 64"),
    (["--shots", "1", "--mutual-scoring"], "use one at a time"),
    (["--shots", "1", "--classes", "nope"], "not in the test split"),
])
def test_evaluate_refuses_in_one_line_and_writes_nothing(toy, tmp_path, capsys, _offline, extra, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if "64" in message else _no_exit():
        code = _run(["evaluate", "--dataset", "toy", "--data-root", str(toy.parent), *COMMON, *extra,
                     "--out", str(out)])
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_mutual_scoring_of_a_class_with_one_test_image_is_one_line(tmp_path, capsys, _offline):
    root = tmp_path / "toy"
    make_toy_dataset(root, classes=["carpet"], image_size=SIZE, n_train=0, n_normal=1, n_anomalous=0)
    assert _run(["evaluate", "--dataset", "toy", "--data-root", str(tmp_path), *COMMON, "--mutual-scoring",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "class 'carpet' has one test image" in err and len(err.splitlines()) == 1


def test_benchmark_shots_reports_mean_and_std_over_seeds(toy, tmp_path, capsys, _offline):
    out = tmp_path / "bench"
    assert _run(["benchmark", "--data-root", str(toy.parent), "--datasets", "toy", "--training-free", *COMMON,
                 "--shots", "1", "--shot-runs", "2", "--shot-seed", "5", "--out", str(out)]) == 0
    table = (out / "benchmark.md").read_text()
    assert "1-shot: mean ± std over 2 draws" in table and "seeds 5, 6" in table and " ± " in table
    assert "MEANINGLESS" in table
    for seed in (5, 6):
        config = json.loads((out / "toy" / f"shot-seed-{seed}" / "config.json").read_text())
        assert config["shot_seed"] == seed
        assert config["reference_images"] == draw_references(toy, ["carpet", "hex_nut"], 1, seed=seed)


def test_predict_with_references(toy, tmp_path, capsys, _offline):
    images = [str(toy / "carpet" / "test" / "good"), str(toy / "carpet" / "test")]
    refs = str(toy / "carpet" / "train" / "good")
    args = ["predict", "--images", images[1], "--class-name", "carpet", *COMMON]
    assert _run([*args, "--out", str(tmp_path / "zero")]) == 0
    assert _run([*args, "--references", refs, "--out", str(tmp_path / "few")]) == 0
    assert "few-shot: ReferenceMemory(1 classes, shots={'carpet': 3}" in capsys.readouterr().out
    zero = list(csv.DictReader((tmp_path / "zero" / "scores.csv").open()))
    few = list(csv.DictReader((tmp_path / "few" / "scores.csv").open()))
    assert [r["global_score"] for r in zero] == [r["global_score"] for r in few]
    assert [r["local_score"] for r in zero] != [r["local_score"] for r in few]
    # A reference that is also scored, or a missing one: one line, nothing written.
    for bad, message in ((images[0], "is also in --images"), (str(tmp_path / "none"), "--references")):
        assert _run([*args, "--references", bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


def test_mutual_scoring_refuses_torchrun_and_words_shared_by_two_classes_are_refused(tiny, toy, monkeypatch):
    from tipsomaly_lite import distributed

    with pytest.raises(ValueError, match="two classes share|share the prompt word"):
        ReferenceMemory.from_dataset(tiny, toy, {"hex_nut": ["a.png"], "hex-nut": ["b.png"]})
    monkeypatch.setattr(distributed, "world", lambda: (0, 2))
    with pytest.raises(ValueError, match="without torchrun"):
        evaluate(Detector(tiny), AnomalyDataset(toy, image_size=SIZE), progress=False, mutual_scoring=True)
