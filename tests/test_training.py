"""Prompt training on the toy dataset with the tiny model: the feature cache, the loss, checkpoints and resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.method.feature_cache import FeatureCache
from tipsomaly_lite.method.prompt_learner import PromptLearner
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.method.run_folder import latest_checkpoint, load_trained_prompts
from tipsomaly_lite.method.training import TrainConfig, train_prompts, training_loss

SIZE = 112  # 8 x 8 patches: fast, and a real upsampling in the loss


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = make_toy_dataset(tmp_path_factory.mktemp("data") / "toy", classes=["pill", "carpet"], n_train=0,
                            n_normal=3, n_anomalous=4)
    return AnomalyDataset(root, image_size=SIZE)


def _step(learner, tokens, masks, temperature, grid):
    learner.zero_grad()
    loss = training_loss(learner, tokens, masks, temperature, grid)
    loss.backward()
    return float(loss.detach()), learner.normal.grad.clone(), learner.anomalous.grad.clone()


def test_one_step_with_the_cache_equals_one_step_without(tiny, toy):
    idx = [0, 3, 5, 6]
    items = [toy[i] for i in idx]
    images = torch.stack([it["image"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    assert masks.sum() > 0
    learner = PromptLearner(tiny, generator=torch.Generator().manual_seed(111))
    grid = tiny.patch_grid(SIZE)
    direct = _step(learner, tiny.encode_features(images)["patch_tokens"], masks, tiny.temperature, grid)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
        cache = FeatureCache(tiny, SIZE, dtype=dtype, progress=False)
        batch = cache.get(toy, idx)
        torch.testing.assert_close(batch["mask"], masks)
        cached = _step(learner, batch["patch_tokens"], batch["mask"], tiny.temperature, grid)
        assert cached[0] == pytest.approx(direct[0], abs=tol, rel=tol)
        for got, want in zip(cached[1:], direct[1:]):
            torch.testing.assert_close(got, want, atol=tol * float(want.abs().max()), rtol=tol)


def test_cache_computes_each_image_once_and_persists_on_disk(tiny, toy, tmp_path, monkeypatch):
    calls = []
    original = tiny.encode_image
    monkeypatch.setattr(tiny, "encode_image", lambda x, **kw: calls.append(len(x)) or original(x, **kw))
    cache = FeatureCache(tiny, SIZE, folder=tmp_path, progress=False)
    first = cache.get(toy, [0, 1, 2])
    cache.get(toy, [2, 1, 0])
    assert sum(calls) == 3 and cache.hits == 3 and cache.misses == 3
    files = list((tmp_path / cache.fingerprint).glob("*/*.npz"))
    assert len(files) == 3 and len(cache) == 3
    # A new cache on the same folder (a restarted run) reads from disk without encoding.
    again = FeatureCache(tiny, SIZE, folder=tmp_path, progress=False).get(toy, [0, 1, 2])
    assert sum(calls) == 3
    for key in first:
        torch.testing.assert_close(again[key], first[key])
    # A cache made for another input size refuses these images.
    with pytest.raises(ValueError, match="112 px but the cache was made for 56"):
        FeatureCache(tiny, 56, folder=tmp_path, progress=False).get(toy, [0])


def test_cache_key_changes_when_the_image_changes(tiny, tmp_path):
    root = make_toy_dataset(tmp_path / "toy", classes=["pill"], n_train=0, n_normal=1, n_anomalous=1)
    ds = AnomalyDataset(root, image_size=SIZE)
    cache = FeatureCache(tiny, SIZE, progress=False)
    path = ds.root / ds.samples[0]["img_path"]
    before = cache.key(path)
    os.utime(path, ns=(1, 1))
    assert cache.key(path) == before  # the key follows the content, not the modification time
    with Image.open(path) as im:
        Image.fromarray(255 - np.asarray(im)).save(path)
    assert cache.key(path) != before


def test_training_is_seeded_and_lowers_the_loss(tiny, toy):
    cfg = TrainConfig(epochs=3, batch_size=4)
    a = train_prompts(tiny, toy, cfg, progress=False)
    b = train_prompts(tiny, toy, cfg, progress=False)
    torch.testing.assert_close(a.prompts(), b.prompts(), rtol=0, atol=0)
    assert len(a.history) == 3 * 4 and len(a.epoch_losses) == 3
    assert a.epoch_losses[-1] < a.epoch_losses[0]
    # The same run without the cache gives the same prompts (float16 storage: to ~1e-3).
    c = train_prompts(tiny, toy, TrainConfig(epochs=3, batch_size=4, cache="none"), progress=False)
    torch.testing.assert_close(a.prompts(), c.prompts(), atol=2e-3, rtol=0)


def test_checkpoints_resume_and_equal_an_uninterrupted_run(tiny, toy, tmp_path):
    straight = train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=4), tmp_path / "a", progress=False)
    train_prompts(tiny, toy, TrainConfig(epochs=1, batch_size=4), tmp_path / "b", progress=False)
    resumed = train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=4), tmp_path / "b", progress=False)
    assert resumed.resumed_from == 1
    torch.testing.assert_close(resumed.prompts(), straight.prompts(), rtol=0, atol=1e-7)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history], abs=1e-6)
    # Nothing left to do: a third call trains nothing and returns the same prompts.
    again = train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=4), tmp_path / "b", progress=False)
    assert again.resumed_from == 2 and len(again.history) == len(straight.history)
    torch.testing.assert_close(again.prompts(), straight.prompts())

    run = tmp_path / "a"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.safetensors",
                                                                        "epoch_002.safetensors"]
    assert latest_checkpoint(run).name == "epoch_002.safetensors"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["seed"] == 111 and config["variant"] == "tiny" and config["image_size"] == SIZE
    assert json.loads((run / "history.json").read_text())["epoch_losses"] == pytest.approx(straight.epoch_losses)
    # Safetensors: an 8-byte header length then JSON, no pickle anywhere.
    raw = (run / "checkpoints" / "epoch_002.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert {"normal", "anomalous", "adam.0.exp_avg", "adam.1.exp_avg_sq"} <= set(header)
    assert not any(name.endswith(".tmp") or name.startswith(".") for name in os.listdir(run / "checkpoints"))
    normal, anomalous = load_trained_prompts(run)
    torch.testing.assert_close((normal, anomalous), straight.prompts())


def test_resume_refuses_other_settings_and_bad_files(tiny, toy, tmp_path):
    train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=4), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=4, lr=0.01), tmp_path / "r", progress=False)
    fresh = train_prompts(tiny, toy, TrainConfig(epochs=1, batch_size=4, lr=0.01), tmp_path / "r", resume=False,
                          progress=False)
    assert fresh.resumed_from == 0
    assert [p.name for p in (tmp_path / "r" / "checkpoints").iterdir()] == ["epoch_001.safetensors"]
    torch.testing.assert_close(load_trained_prompts(tmp_path / "r"), fresh.prompts())
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        load_trained_prompts(tmp_path)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_trained_prompts(bad)
    with pytest.raises(ValueError, match="cache"):
        TrainConfig(cache="gpu")


def test_disk_cache_in_the_run_folder(tiny, toy, tmp_path, monkeypatch):
    train_prompts(tiny, toy, TrainConfig(epochs=1, batch_size=4, cache="disk"), tmp_path / "d", progress=False)
    assert list((tmp_path / "d" / "feature_cache").glob("*/*/*.npz"))
    train_prompts(tiny, toy, TrainConfig(epochs=1, batch_size=4), tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "feature_cache").exists()  # auto: small enough for memory
    import tipsomaly_lite.method.training as training

    monkeypatch.setattr(training, "MEMORY_CACHE_LIMIT", 1000)
    train_prompts(tiny, toy, TrainConfig(epochs=1, batch_size=4), tmp_path / "a", progress=False)
    assert list((tmp_path / "a" / "feature_cache").glob("*/*/*.npz"))  # auto: too big, so on disk


def test_backward_step_equals_the_plain_loss_backward(tiny, toy):
    import torch.nn.functional as F

    from tipsomaly_lite.method.training import backward_step, bilinear_matrix

    x = torch.rand(2, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bilinear_matrix(8, 112) @ x @ bilinear_matrix(6, 84).T,
                               F.interpolate(x, size=(112, 84), mode="bilinear", align_corners=False))
    cache = FeatureCache(tiny, SIZE, dtype=torch.float32, progress=False)
    batch = cache.get(toy, [0, 1, 4, 6, 7])
    learner = PromptLearner(tiny, generator=torch.Generator().manual_seed(1))
    grid = tiny.patch_grid(SIZE)
    want = _step(learner, batch["patch_tokens"], batch["mask"], tiny.temperature, grid)
    learner.zero_grad()
    got = backward_step(learner, batch["patch_tokens"], batch["mask"], tiny.temperature, grid)
    assert got == pytest.approx(want[0], rel=1e-5)
    torch.testing.assert_close(learner.normal.grad, want[1], rtol=1e-4, atol=1e-5 * float(want[1].abs().max()))
    torch.testing.assert_close(learner.anomalous.grad, want[2], rtol=1e-4, atol=1e-5 * float(want[2].abs().max()))


def test_backward_step_on_shares_of_a_batch_sums_to_the_whole_batch(tiny, toy):
    """What two processes do (tipsomaly_lite.distributed), played in one: share A, then share B plus A's sums."""
    from tipsomaly_lite.method.training import backward_step

    cache = FeatureCache(tiny, SIZE, dtype=torch.float32, progress=False)
    batch = cache.get(toy, [0, 1, 4, 6, 7])
    grid = tiny.patch_grid(SIZE)
    learner = PromptLearner(tiny, generator=torch.Generator().manual_seed(1))
    whole_terms: dict[str, float] = {}
    whole = backward_step(learner, batch["patch_tokens"], batch["mask"], tiny.temperature, grid, whole_terms)
    want = learner.normal.grad.clone(), learner.anomalous.grad.clone()

    sent: list[torch.Tensor] = []  # what share A contributed to each all-reduce, in call order

    def record(t):
        sent.append(t.clone())

    def add_recorded(t):
        t += sent.pop(0)

    a, b = [0, 2, 4], [1, 3]  # rows of the batch each "process" holds
    learner.zero_grad()
    backward_step(learner, batch["patch_tokens"][a], batch["mask"][a], tiny.temperature, grid, batch_size=5,
                  all_reduce=record)
    learner.zero_grad()
    terms: dict[str, float] = {}
    got = backward_step(learner, batch["patch_tokens"][b], batch["mask"][b], tiny.temperature, grid, terms,
                        batch_size=5, all_reduce=add_recorded)
    assert not sent and got == pytest.approx(whole, rel=1e-6)
    assert terms == pytest.approx(whole_terms, rel=1e-6)
    torch.testing.assert_close(learner.normal.grad, want[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(learner.anomalous.grad, want[1], rtol=1e-5, atol=1e-7)
    # A process with no image of the batch still takes part (zeros) and ends with the same step.
    learner.zero_grad()
    sent[:] = []
    backward_step(learner, batch["patch_tokens"], batch["mask"], tiny.temperature, grid, batch_size=5,
                  all_reduce=record)
    learner.zero_grad()
    empty = backward_step(learner, batch["patch_tokens"][:0], batch["mask"][:0], tiny.temperature, grid,
                          batch_size=5, all_reduce=add_recorded)
    assert empty == pytest.approx(whole, rel=1e-6)
    torch.testing.assert_close(learner.normal.grad, want[0], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ data order, loss terms, the start

def _record_order(monkeypatch):
    import tipsomaly_lite.method.training as training

    seen, original = [], training._batch
    monkeypatch.setattr(training, "_batch", lambda model, ds, cache, idx: seen.append(list(idx)) or
                        original(model, ds, cache, idx))
    return seen


def test_default_order_is_the_dataset_order_every_epoch_like_the_authors(tiny, toy, monkeypatch):
    assert TrainConfig().shuffle is False
    seen = _record_order(monkeypatch)
    train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=3), progress=False)
    n = len(toy)
    epoch = [i for batch in seen[:len(seen) // 2] for i in batch]
    assert epoch == list(range(n)) and [i for batch in seen[len(seen) // 2:] for i in batch] == list(range(n))


def test_shuffle_reshuffles_every_epoch_from_the_seed(tiny, toy, monkeypatch, tmp_path):
    seen = _record_order(monkeypatch)
    train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=3, shuffle=True), tmp_path / "s", progress=False)
    half = len(seen) // 2
    first, second = ([i for b in seen[:half] for i in b], [i for b in seen[half:] for i in b])
    assert sorted(first) == sorted(second) == list(range(len(toy)))
    assert first != second and first != list(range(len(toy)))
    assert first == torch.randperm(len(toy), generator=torch.Generator().manual_seed(111 + 1)).tolist()
    assert json.loads((tmp_path / "s" / "config.json").read_text())["train"]["shuffle"] is True
    # The data order is part of the run: resuming with the other setting is refused.
    with pytest.raises(ValueError, match="shuffle"):
        train_prompts(tiny, toy, TrainConfig(epochs=3, batch_size=3), tmp_path / "s", progress=False)


def test_history_records_the_three_loss_terms(tiny, toy, tmp_path):
    result = train_prompts(tiny, toy, TrainConfig(epochs=1, batch_size=4), tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "history.json").read_text())["steps"]
    for rows in (result.history, saved):
        for row in rows:
            assert {"focal", "dice_anomalous", "dice_normal"} <= set(row)
            assert row["focal"] + row["dice_anomalous"] + row["dice_normal"] == pytest.approx(row["loss"], rel=1e-5)
            assert 0 < row["focal"] and 0 <= row["dice_normal"] <= 1 and 0 <= row["dice_anomalous"] <= 1


def test_training_starts_from_given_prompts(tiny, toy, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=4)
    default = train_prompts(tiny, toy, cfg, progress=False)
    # The seeded random start, passed explicitly, gives the very same run.
    seeded = PromptLearner(tiny, generator=torch.Generator().manual_seed(111)).prompts()
    same = train_prompts(tiny, toy, cfg, progress=False, initial_prompts=seeded)
    torch.testing.assert_close(same.prompts(), default.prompts(), rtol=0, atol=0)
    other = PromptLearner(tiny, generator=torch.Generator().manual_seed(5)).prompts()
    moved = train_prompts(tiny, toy, cfg, tmp_path / "g", progress=False, initial_prompts=other)
    assert not torch.equal(moved.prompts()[0], default.prompts()[0])
    assert json.loads((tmp_path / "g" / "config.json").read_text())["initial_prompts"].startswith("given: sha256")
    with pytest.raises(ValueError, match="n_tokens = 8"):
        train_prompts(tiny, toy, cfg, progress=False, initial_prompts=(other[0][:3], other[1][:3]))
    bad = other[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_prompts(tiny, toy, cfg, progress=False, initial_prompts=(bad, other[1]))
    with pytest.raises(ValueError, match="a pair"):
        train_prompts(tiny, toy, cfg, progress=False, initial_prompts=other[0])


def test_cli_train_init_prompts_and_shuffle(tiny, toy, tmp_path, capsys):
    import warnings

    from tipsomaly_lite.cli import main
    from tipsomaly_lite.offline import MeaninglessResultsWarning

    first = tmp_path / "first"
    common = ["--dataset", "toy", "--data-root", str(toy.root.parent), "--image-size", str(SIZE), "--quiet",
              "--epochs", "1", "--batch-size", "4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        assert main(["train", *common, "--out", str(first)]) == 0
        assert main(["train", *common, "--out", str(tmp_path / "second"), "--init-prompts", str(first),
                     "--shuffle"]) == 0
        assert main(["train", *common, "--out", str(tmp_path / "third"), "--init-prompts",
                     str(tmp_path / "nowhere")]) == 2
    config = json.loads((tmp_path / "second" / "config.json").read_text())
    assert config["train"]["shuffle"] is True and config["initial_prompts"].startswith("given")
    assert json.loads((first / "config.json").read_text())["initial_prompts"].startswith("random")
    assert "nowhere" in capsys.readouterr().err
