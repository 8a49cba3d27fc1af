"""Several processes (torchrun, gloo on the CPU) give the results of one process.

Each test launches real processes with ``python -m torch.distributed.run --standalone`` on the tiny
offline model and toy data, then compares what rank 0 wrote with a single-process run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tipsomaly_lite import distributed
from tipsomaly_lite.data.toy_data import make_toy_dataset
from tipsomaly_lite.eval.evaluation import EvaluationResult
from tipsomaly_lite.method.run_folder import latest_checkpoint, load_trained_prompts

SIZE = "112"
#: The full lane only (`make test-all`): slow rehearsals.
pytestmark = pytest.mark.slow


def _run(args: list[str], processes: int = 1, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``tipsomaly <args>`` in one plain process, or in ``processes`` processes started by torchrun."""
    if processes == 1:
        cmd = [sys.executable, "-m", "tipsomaly_lite", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tipsomaly_lite", *args]
    full_env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    full_env.update({"TIPSOMALY_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})})
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory, tiny) -> Path:  # `tiny` writes the offline model once, before any process starts
    root = tmp_path_factory.mktemp("data")
    # 3 classes x 5 images: batches of 4 split classes across processes, the last batch is short.
    make_toy_dataset(root / "toy", classes=["pill", "wood_grain", "hex_nut"], n_train=0, n_normal=2, n_anomalous=3,
                     image_size=int(SIZE))
    return root


def _scores(folder: Path) -> list[dict[str, str]]:
    with open(folder / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


EVALUATE = ["evaluate", "--dataset", "toy", "--variant", "tiny", "--device", "cpu", "--image-size", SIZE,
            "--batch-size", "8", "--aupro-mode", "compat", "--quiet"]


@pytest.fixture(scope="module")
def one_process_evaluation(toy_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    run = _run([*EVALUATE, "--data-root", str(toy_root), "--out", str(out)])
    assert run.returncode == 0, run.stderr
    return out


# 15 images in batches of 8: with 2 processes each takes one batch and the class `pill` is split
# between them; with 3 the third process gets no image at all.
@pytest.mark.parametrize("processes", [2, 3])
def test_evaluation_on_several_processes_equals_one_process(toy_root, one_process_evaluation, tmp_path, processes):
    many = _run([*EVALUATE, "--data-root", str(toy_root), "--out", str(tmp_path)], processes=processes)
    assert many.returncode == 0, many.stderr[-3000:]

    a, b = EvaluationResult.load(one_process_evaluation), EvaluationResult.load(tmp_path)
    # The same images in the same order with the same scores (each batch holds the same images).
    assert _scores(one_process_evaluation) == _scores(tmp_path)
    assert len(b.scores) == 15 and len({r["path"] for r in b.scores}) == 15
    assert list(a.per_class) == list(b.per_class) == ["hex_nut", "pill", "wood_grain"]
    for cls in a.per_class:  # the summed histograms: counts exact, PRO weights up to float64 summation order
        for key, value in a.per_class[cls].items():
            assert b.per_class[cls][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (cls, key)
    assert b.config.pop("world_size") == processes and a.config.pop("world_size") == 1
    assert a.config == b.config
    # Rank 0 printed the table once; the other ranks said nothing on stdout.
    assert many.stdout.count("| **mean** |") == 1


def test_training_on_two_processes_equals_one_process_with_the_same_global_batch(toy_root, tmp_path):
    # 15 images in global batches of 3: process 0 takes 2 images of each batch, process 1 one.
    common = ["train", "--dataset", "toy", "--data-root", str(toy_root), "--variant", "tiny", "--device", "cpu",
              "--image-size", SIZE, "--batch-size", "3", "--epochs", "2", "--quiet", "--shuffle"]
    one = _run([*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    many = _run([*common, "--out", str(tmp_path / "many")], processes=2)
    assert many.returncode == 0, many.stderr[-3000:]

    for want, got in zip(load_trained_prompts(tmp_path / "one"), load_trained_prompts(tmp_path / "many")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    h2 = json.loads((tmp_path / "many" / "history.json").read_text())
    assert len(h1["steps"]) == len(h2["steps"]) == 10
    for r1, r2 in zip(h1["steps"], h2["steps"]):
        assert r1.keys() == r2.keys()
        for key in r1:
            assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-7), key
    config = json.loads((tmp_path / "many" / "config.json").read_text())
    assert config["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "many" / "checkpoints").iterdir()) == [
        "epoch_001.safetensors", "epoch_002.safetensors"]


def test_training_resumes_on_another_number_of_processes(toy_root, tmp_path):
    common = ["train", "--dataset", "toy", "--data-root", str(toy_root), "--variant", "tiny", "--device", "cpu",
              "--image-size", SIZE, "--batch-size", "4", "--quiet", "--out"]
    whole = _run([*common, str(tmp_path / "whole"), "--epochs", "2"])
    assert whole.returncode == 0, whole.stderr
    first = _run([*common, str(tmp_path / "split"), "--epochs", "1"])
    assert first.returncode == 0, first.stderr
    second = _run([*common, str(tmp_path / "split"), "--epochs", "2"], processes=2)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed after epoch 1" in second.stdout
    for want, got in zip(load_trained_prompts(tmp_path / "whole"), load_trained_prompts(tmp_path / "split")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    # Rank 0 refuses to resume with other settings: every process stops, none waits for it.
    other = _run([*common, str(tmp_path / "split"), "--epochs", "3", "--lr", "0.01"], processes=2)
    assert other.returncode != 0
    assert "tipsomaly train: error: " in other.stderr and "cannot resume" in other.stderr
    assert other.stderr.count("cannot resume") == 1  # said once, by rank 0
    assert "tipsomaly_lite/" not in other.stderr and "Connection closed" not in other.stderr
    assert latest_checkpoint(tmp_path / "split").name == "epoch_002.safetensors"


MISMATCH = """
import sys, warnings
import torch
from tipsomaly_lite import AnomalyDataset, Detector, TrainConfig, distributed, evaluate, load_tips, train_prompts


distributed.init_from_env("cpu")
rank = distributed.world()[0]
warnings.simplefilter("ignore")
model = load_tips("tiny")
if rank == 1:  # this process loaded other weights
    with torch.no_grad():
        model.vision.norm.weight.add_(1.0)
data = AnomalyDataset(sys.argv[1], image_size=112)
said = []
for name, run in (("evaluate", lambda: evaluate(Detector(model), data, progress=False)),
                  ("train", lambda: train_prompts(model, data, TrainConfig(epochs=1), progress=False))):
    try:
        run()
        said.append(f"{name}: ran")
    except distributed.PeerFailed:
        said.append(f"{name}: PeerFailed")
    except ValueError as exc:
        said.append(f"{name}: ValueError {exc}")
open(f"{sys.argv[2]}/rank{rank}.txt", "w").write("\\n".join(said))
distributed.shutdown()
"""


def test_processes_with_other_weights_are_refused_by_every_process(toy_root, tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCH)
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_VARS}
    env.update({"TIPSOMALY_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(toy_root / "toy"), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    said = [(tmp_path / f"rank{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    for rank in (0, 1):  # evaluation: every process sees the difference
        assert said[rank][0].startswith("evaluate: ValueError the 2 processes differ in ['weights']")
    # training: the process whose weights differ from rank 0's says so; rank 0 stops instead of waiting
    assert said[0][1] == "train: PeerFailed"
    assert said[1][1].startswith("train: ValueError rank 1 loaded other backbone weights than rank 0")


def test_commands_that_do_not_share_work_refuse_torchrun(tmp_path):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    run = _run(["predict", "--images", str(image), "--class-name", "bottle", "--out", str(tmp_path / "out"),
                "--variant", "tiny", "--device", "cpu"], processes=2)
    assert run.returncode != 0  # torchrun reports its workers' exit code 2 as a failure of its own
    assert "tipsomaly predict: error: predict runs in one process; start it without torchrun" in run.stderr
    assert "tipsomaly_lite/cli/" not in run.stderr  # one line from us, no traceback of ours
    assert not (tmp_path / "out").exists()


def test_bad_torchrun_environment_is_one_line(toy_root, tmp_path):
    run = _run(["evaluate", "--dataset", "toy", "--data-root", str(toy_root), "--variant", "tiny", "--device", "cpu",
                "--out", str(tmp_path / "out")], env={"WORLD_SIZE": "2", "RANK": "x", "LOCAL_RANK": "0",
                                                      "MASTER_ADDR": "localhost", "MASTER_PORT": "1",
                                                      distributed.TORCHRUN_MARKER: "from-a-test"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "tipsomaly evaluate: error: environment variable RANK='x': expected an integer (torchrun sets it); start "
        "several processes with `torchrun --nproc_per_node N -m tipsomaly_lite ...`")


@pytest.mark.parametrize("n, batch, world", [(15, 4, 2), (15, 8, 3), (0, 4, 2), (7, 1, 3), (16, 4, 4), (3, 8, 2)])
def test_shards_hold_every_item_once_in_whole_batches(n, batch, world):
    shares = [distributed.shard(n, batch, rank, world) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(n))
    for rank, share in enumerate(shares):
        assert share == sorted(share)
        batches = [share[i:i + batch] for i in range(0, len(share), batch)]
        # the k-th batch of rank r is batch r + k * world of one process
        assert batches == [list(range(b * batch, min(b * batch + batch, n)))
                           for b in range(rank, -(-n // batch), world)]


def test_one_process_is_the_identity():
    assert distributed.world() == (0, 1) and distributed.is_main()
    assert distributed.shard(10, 3) == list(range(10))
    values = np.arange(4.0)
    assert distributed.all_reduce(values, "max") is values and values.tolist() == [0, 1, 2, 3]
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    with pytest.raises(ValueError, match="op must be one of"):
        distributed.all_reduce(values, "mean")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        distributed.shard(10, 0)
    assert distributed.main_only(lambda a, b=0: a + b, 2, b=3) == 5
    distributed.agree(None)
    with pytest.raises(FileExistsError, match="boom"):
        distributed.main_only(lambda: (_ for _ in ()).throw(FileExistsError("boom")))


def test_a_leftover_world_size_does_not_make_one_process_wait(toy_root, tmp_path):
    # WORLD_SIZE/RANK left in a shell, without torchrun's own marker: a plain run, no peer is awaited.
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    run = _run(["evaluate", "--dataset", "toy", "--data-root", str(toy_root), "--variant", "tiny", "--device", "cpu",
                "--out", str(tmp_path / "out"), "--quiet"], env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out" / "results.json").is_file()
