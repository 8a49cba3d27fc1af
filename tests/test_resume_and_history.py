"""Resuming a training run: only the same run is resumed, one trainer per folder, no step is lost, NaN stops it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import tipsomaly_lite.method.run_folder as run_folder
import tipsomaly_lite.method.training as training
from tipsomaly_lite.backbones.tips.model import load_tips_files
from tipsomaly_lite.backbones.tips.tiny import TINY_ARCH, random_tips_arrays, write_npz
from tipsomaly_lite.io.atomic import file_lock
from tipsomaly_lite.data.datasets import AnomalyDataset
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.method.run_folder import latest_checkpoint
from tipsomaly_lite.method.training import TrainConfig, train_prompts

SIZE = 56
CFG = dict(batch_size=3, cache="memory")  # 7 images: 3 steps per epoch, the last one short


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["pill", "carpet"], n_train=0, n_normal=2, n_anomalous=2)
    return root / "toy"


@pytest.fixture(scope="module")
def toy(data):
    ds = AnomalyDataset(data, image_size=SIZE)
    ds.samples = ds.samples[:7]
    return ds


@pytest.fixture(scope="module")
def straight(tiny, toy, tmp_path_factory):
    return train_prompts(tiny, toy, TrainConfig(epochs=3, **CFG), tmp_path_factory.mktemp("s") / "run",
                         progress=False)


def _same_history(got, want):
    assert [(r["epoch"], r["step"]) for r in got.history] == [(r["epoch"], r["step"]) for r in want.history]
    assert [r["loss"] for r in got.history] == pytest.approx([r["loss"] for r in want.history], abs=1e-6)
    assert got.epoch_losses == pytest.approx(want.epoch_losses, abs=1e-6)


def _saved_history(run):
    return json.loads((run / "history.json").read_text())


# ---- 6. only the same run is resumed --------------------------------------------------------------

@pytest.fixture
def one_epoch(tiny, toy, tmp_path):
    run = tmp_path / "run"
    train_prompts(tiny, toy, TrainConfig(epochs=1, **CFG), run, progress=False)
    return run


def _refused(field, *args, **kwargs):
    """Training refuses to resume, naming ``field`` in words (a recorded key, or a regex)."""
    from tipsomaly_lite.method.run_folder import FIELD_WORDS

    match = re.escape(FIELD_WORDS[field]) if field in FIELD_WORDS else field
    with pytest.raises(ValueError, match=match) as info:
        train_prompts(*args, **kwargs)
    assert "--no-resume" in str(info.value) and "--out" in str(info.value)
    return str(info.value)


def test_resume_refuses_another_dataset(tiny, toy, one_epoch, tmp_path):
    other_root = make_toy_dataset(tmp_path / "other", classes=["pill", "carpet"], n_train=0, n_normal=2,
                                  n_anomalous=2, seed=5)
    other = AnomalyDataset(other_root, image_size=SIZE)
    other.samples = other.samples[:7]
    _refused("dataset", tiny, other, TrainConfig(epochs=2, **CFG), one_epoch, progress=False)


def test_resume_refuses_other_classes_or_items(tiny, data, one_epoch):
    pill = AnomalyDataset(data, image_size=SIZE, classes=["pill"])
    _refused("classes", tiny, pill, TrainConfig(epochs=2, **CFG), one_epoch, progress=False)
    relabelled = AnomalyDataset(data, image_size=SIZE)
    relabelled.samples = relabelled.samples[:6] + relabelled.samples[7:8]  # same count, another item
    _refused("samples", tiny, relabelled, TrainConfig(epochs=2, **CFG), one_epoch, progress=False)


def test_resume_refuses_another_image_size(tiny, data, one_epoch):
    big = AnomalyDataset(data, image_size=84)
    big.samples = big.samples[:7]
    _refused("image_size", tiny, big, TrainConfig(epochs=2, **CFG), one_epoch, progress=False)


def test_resume_refuses_other_backbone_weights(toy, one_epoch, tmp_path, tiny_tokenizer_path):
    vision, text = random_tips_arrays(TINY_ARCH)
    vision["blocks.0.attn.proj.weight"] = vision["blocks.0.attn.proj.weight"] + np.float32(1e-3)
    write_npz(tmp_path / "v.npz", vision)
    write_npz(tmp_path / "t.npz", text)
    other = load_tips_files(tmp_path / "v.npz", tmp_path / "t.npz", tiny_tokenizer_path, variant="tiny")
    _refused("backbone_fingerprint", other, toy, TrainConfig(epochs=2, **CFG), one_epoch, progress=False)


@pytest.mark.parametrize("change", [dict(lr=0.01), dict(seed=1), dict(n_tokens=4), dict(betas=(0.9, 0.999)),
                                    dict(prompt_set="industrial_v0")])
def test_resume_refuses_other_training_settings(tiny, toy, one_epoch, change):
    _refused(next(iter(change)), tiny, toy, TrainConfig(epochs=2, **{**CFG, **change}), one_epoch, progress=False)


@pytest.mark.parametrize("damage", ["missing", "garbage", "old version"])
def test_resume_refuses_a_run_config_it_cannot_check(tiny, toy, one_epoch, damage):
    path = one_epoch / "config.json"
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_text("{not json")
    else:
        config = json.loads(path.read_text())
        del config["backbone_fingerprint"]
        path.write_text(json.dumps(config))
    _refused("config|not recorded|differ", tiny, toy, TrainConfig(epochs=2, **CFG), one_epoch, progress=False)


def test_resume_compares_the_prompt_sentences_by_content_not_by_name(tiny, toy, tmp_path):
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"normal_states": ["{}"], "anomalous_states": ["broken {}"],
                                  "templates": ["a photo of a {}."]}))
    run = tmp_path / "run"
    train_prompts(tiny, toy, TrainConfig(epochs=1, **{**CFG, "prompt_set": str(custom)}), run, progress=False)
    custom.write_text(json.dumps({"normal_states": ["{}"], "anomalous_states": ["cracked {}"],  # same name
                                  "templates": ["a photo of a {}."]}))
    said = _refused("prompt_sentences", tiny, toy, TrainConfig(epochs=2, **{**CFG, "prompt_set": str(custom)}), run,
                    progress=False)
    assert "sha256" not in said and "the prompt set's sentences differ" in said


def test_resume_refuses_other_starting_prompts(tiny, toy, one_epoch):
    start = (torch.zeros(8, tiny.text_width), torch.ones(8, tiny.text_width))  # 8 vectors, the default
    _refused("initial_prompts", tiny, toy, TrainConfig(epochs=2, **CFG), one_epoch, progress=False,
             initial_prompts=start)


def test_more_epochs_and_another_cache_still_resume(tiny, toy, one_epoch):
    got = train_prompts(tiny, toy, TrainConfig(epochs=2, batch_size=3, cache="none"), one_epoch, progress=False)
    assert got.resumed_from == 1 and len(got.history) == 6


def test_no_resume_starts_again_after_a_refusal(tiny, toy, one_epoch):
    got = train_prompts(tiny, toy, TrainConfig(epochs=1, batch_size=3, lr=0.01), one_epoch, resume=False,
                        progress=False)
    assert got.resumed_from == 0 and len(_saved_history(one_epoch)["steps"]) == 3


# ---- 6. one trainer per run folder ----------------------------------------------------------------

def test_a_second_training_on_a_locked_folder_is_refused(tiny, toy, tmp_path):
    refused = []

    def second(row):
        if not refused:
            with pytest.raises(ValueError, match="train.lock.*in use") as info:
                train_prompts(tiny, toy, TrainConfig(epochs=1, **CFG), tmp_path / "run", progress=False)
            refused.append(str(info.value))

    result = train_prompts(tiny, toy, TrainConfig(epochs=2, **CFG), tmp_path / "run", progress=False,
                           on_step=second)
    assert refused and len(result.history) == 6
    assert len(_saved_history(tmp_path / "run")["steps"]) == 6  # not interleaved with the refused one
    with file_lock(tmp_path / "run" / "train.lock", wait=False):  # released on return
        pass


def test_a_lock_held_elsewhere_refuses_before_touching_the_folder(tiny, toy, one_epoch):
    before = {p.name: p.stat().st_mtime_ns for p in one_epoch.rglob("*") if p.is_file() and p.name != "train.lock"}
    with file_lock(one_epoch / "train.lock"):
        with pytest.raises(ValueError, match="in use"):
            train_prompts(tiny, toy, TrainConfig(epochs=2, **CFG), one_epoch, resume=False, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in one_epoch.rglob("*") if p.is_file() and p.name != "train.lock"}
    assert after == before  # --no-resume did not delete the other trainer's checkpoints


def test_the_lock_is_released_when_training_fails(tiny, toy, tmp_path):
    def boom(row):
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        train_prompts(tiny, toy, TrainConfig(epochs=1, **CFG), tmp_path / "run", progress=False, on_step=boom)
    assert train_prompts(tiny, toy, TrainConfig(epochs=1, **CFG), tmp_path / "run", progress=False).history


# ---- 8. a kill at any point loses no step ---------------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the package may swallow it."""


def _kill_on(monkeypatch, name, *, after: bool, when=lambda *a: True):
    real = getattr(run_folder, name)

    def wrapped(*args, **kwargs):
        if not after and when(*args):
            raise Killed
        out = real(*args, **kwargs)
        if after and when(*args):
            raise Killed
        return out

    monkeypatch.setattr(run_folder, name, wrapped)


KILL_POINTS = {
    "right after the checkpoint write": dict(name="_save_checkpoint", after=True, when=lambda d, e, *a: e == 2),
    "before the checkpoint write": dict(name="_save_checkpoint", after=False, when=lambda d, e, *a: e == 2),
    "right after the history write": dict(name="_write_json", after=True,
                                          when=lambda p, d: p.name == "history.json" and d["steps"][-1]["epoch"] == 2),
    "before the history write": dict(name="_write_json", after=False,
                                     when=lambda p, d: p.name == "history.json" and d["steps"][-1]["epoch"] == 2),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_kill_at_a_write_then_resume_keeps_every_step(tiny, toy, straight, tmp_path, monkeypatch, point):
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_on(m, **KILL_POINTS[point])
        with pytest.raises(Killed):
            train_prompts(tiny, toy, TrainConfig(epochs=3, **CFG), run, progress=False)
    resumed = train_prompts(tiny, toy, TrainConfig(epochs=3, **CFG), run, progress=False)
    _same_history(resumed, straight)
    saved = _saved_history(run)
    assert len(saved["steps"]) == 9 and saved["epoch_losses"] == pytest.approx(straight.epoch_losses, abs=1e-6)


def test_kill_mid_epoch_then_resume_keeps_every_step(tiny, toy, straight, tmp_path):
    def kill(row):
        if row["epoch"] == 2 and row["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        train_prompts(tiny, toy, TrainConfig(epochs=3, **CFG), tmp_path / "run", progress=False, on_step=kill)
    resumed = train_prompts(tiny, toy, TrainConfig(epochs=3, **CFG), tmp_path / "run", progress=False)
    assert resumed.resumed_from == 1
    _same_history(resumed, straight)


@pytest.mark.parametrize("damage", ["deleted", "stale", "garbage"])
def test_a_lost_history_file_is_rebuilt_from_the_checkpoint(tiny, toy, straight, tmp_path, damage):
    run = tmp_path / "run"
    train_prompts(tiny, toy, TrainConfig(epochs=2, **CFG), run, progress=False)
    if damage == "deleted":
        (run / "history.json").unlink()
    elif damage == "stale":
        (run / "history.json").write_text(json.dumps({"steps": [{"epoch": 1, "step": 1, "loss": 9.0}],
                                                      "epoch_losses": [9.0]}))
    else:
        (run / "history.json").write_text("{")
    resumed = train_prompts(tiny, toy, TrainConfig(epochs=3, **CFG), run, progress=False)
    _same_history(resumed, straight)


def test_an_old_checkpoint_with_an_incomplete_history_is_refused(tiny, toy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = run_folder._save_checkpoint
    monkeypatch.setattr(run_folder, "_save_checkpoint", lambda d, e, l, o, h=None: real(d, e, l, o))  # no rows inside
    train_prompts(tiny, toy, TrainConfig(epochs=1, **CFG), run, progress=False)
    (run / "history.json").write_text(json.dumps({"steps": [{"epoch": 1, "step": 1, "loss": 1.0}],
                                                  "epoch_losses": [1.0]}))
    with pytest.raises(ValueError, match="history of epochs 1..1 is incomplete"):
        train_prompts(tiny, toy, TrainConfig(epochs=2, **CFG), run, progress=False)


# ---- 8. non-finite losses or prompts stop training ------------------------------------------------

def test_a_nan_loss_stops_training_and_writes_no_checkpoint(tiny, toy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_prompts(tiny, toy, TrainConfig(epochs=1, **CFG), run, progress=False)
    good = latest_checkpoint(run).read_bytes()
    real = training._batch
    monkeypatch.setattr(training, "_batch", lambda *a: (real(*a)[0] * float("nan"), real(*a)[1]))
    with pytest.raises(ValueError, match=r"epoch 2, step 1: the loss \(nan\) is not finite.*epoch_001"):
        train_prompts(tiny, toy, TrainConfig(epochs=2, **CFG), run, progress=False)
    assert latest_checkpoint(run).name == "epoch_001.safetensors" and latest_checkpoint(run).read_bytes() == good
    assert len(_saved_history(run)["steps"]) == 3


def test_non_finite_prompts_stop_training(tiny, toy, tmp_path, monkeypatch):
    real = training.backward_step

    def inf_gradient(learner, *args):
        loss = real(learner, *args)
        learner.normal.grad.fill_(float("inf"))  # Adam turns it into NaN prompts
        return loss

    monkeypatch.setattr(training, "backward_step", inf_gradient)
    with pytest.raises(ValueError, match="epoch 1, step 1: the prompts is not finite.*no checkpoint"):
        train_prompts(tiny, toy, TrainConfig(epochs=1, **CFG), tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run") is None and not (tmp_path / "run" / "history.json").exists()


def test_a_huge_learning_rate_stops_training(tiny, toy, tmp_path):
    with pytest.raises(ValueError, match=r"training diverged at epoch 1, step \d: the (loss|prompts).* not finite"):
        train_prompts(tiny, toy, TrainConfig(epochs=2, lr=1e38, **CFG), tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_nan_checkpoint_on_disk_is_refused(tiny, toy, one_epoch):
    from safetensors.torch import load_file, save_file

    path = latest_checkpoint(one_epoch)
    tensors = load_file(str(path))
    tensors["normal"][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": run_folder.CHECKPOINT_FORMAT, "epoch": "1"})
    with pytest.raises(ValueError, match="normal prompts hold NaN"):
        train_prompts(tiny, toy, TrainConfig(epochs=2, **CFG), one_epoch, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        run_folder.load_trained_prompts(one_epoch)


def test_save_checkpoint_refuses_non_finite_state(tiny, tmp_path):
    learner = training.PromptLearner(tiny, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam([learner.normal, learner.anomalous])
    with torch.no_grad():
        learner.anomalous[0, 0] = float("inf")
    with pytest.raises(ValueError, match="anomalous is not finite"):
        run_folder._save_checkpoint(tmp_path, 1, learner, optimizer)
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())
