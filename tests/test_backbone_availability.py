"""Missing pieces are one line: the ``backbones`` extra, and weights that are neither cached nor downloadable.

The policy (README, "Offline, missing weights and the backbones extra"): cached weights load without
the network; missing ones are downloaded; when the host does not answer (or ``HF_HUB_OFFLINE=1``)
every command refuses at once, with the same line naming ``--variant tiny`` and ``TIPSOMALY_OFFLINE=1``,
and nothing falls back silently. The network is simulated: the probe is replaced, nothing is dialled.
"""

from __future__ import annotations

import sys
import time

import pytest

from tipsomaly_lite.cli import main
from tipsomaly_lite.io import network
from tipsomaly_lite.io.download import DownloadError
from tipsomaly_lite.io.extras import MissingExtraError, require

pytest.importorskip("transformers")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty cache, no offline switch, and every host unreachable (no socket is opened)."""
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(network, "_answers", {})
    dialled = []

    def probe(host, port, timeout):
        dialled.append((host, port))
        return "simulated: no route to host"

    monkeypatch.setattr(network, "_probe", probe)
    return dialled


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from tipsomaly_lite.data.toy_data import make_toy_dataset

    root = tmp_path_factory.mktemp("data")
    make_toy_dataset(root / "toy", classes=["hex_nut"], n_train=0, n_normal=1, n_anomalous=1)
    return root


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_a_missing_backbones_extra_is_one_line_with_the_install_command(monkeypatch, capsys, toy_root, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(MissingExtraError, match=r'pip install "tipsomaly_lite\[backbones\]"'):
        require(("transformers",), extra="backbones", who="the clip backbone")
    for family in ("clip", "siglip2"):
        line = _one_line_error(capsys, ["evaluate", "--dataset", "toy", "--data-root", str(toy_root), "--backbone",
                                        family, "--variant", "tiny", "--out", str(tmp_path / family), "--quiet"])
        assert f"the {family} backbone needs transformers" in line
        assert line.endswith('pip install "tipsomaly_lite[backbones]"')
    assert issubclass(MissingExtraError, ImportError)


@pytest.mark.parametrize("family, variant", [("siglip2", "so400m-256"), ("clip", "hf:openai/clip-vit-base-patch16")])
def test_a_hub_id_offline_fails_at_once_without_retries(monkeypatch, tmp_path, family, variant):
    from tipsomaly_lite.backbones import load_backbone

    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(network, "_answers", {})
    monkeypatch.setattr(network, "_probe", lambda *a: pytest.fail("HF_HUB_OFFLINE=1: nothing may be dialled"))
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        load_backbone(variant, family=family)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "not in the cache" in message and "HF_HUB_OFFLINE=1 is set" in message
    assert "--variant tiny" in message and "TIPSOMALY_OFFLINE=1" in message


def test_every_command_refuses_the_same_way_when_weights_cannot_be_had(no_network, capsys, toy_root, tmp_path):
    image = next((toy_root / "toy").rglob("*.png"))
    data = ["--dataset", "toy", "--data-root", str(toy_root)]
    commands = {
        "demo": ["demo", "--variant", "l14-hr", "--out", str(tmp_path / "demo")],
        "train": ["train", *data, "--out", str(tmp_path / "train"), "--quiet"],
        "evaluate": ["evaluate", *data, "--out", str(tmp_path / "eval"), "--quiet"],
        "predict": ["predict", "--images", str(image), "--class-name", "hex nut", "--out", str(tmp_path / "pred")],
        "benchmark": ["benchmark", "--data-root", str(toy_root), "--datasets", "toy", "--training-free",
                      "--out", str(tmp_path / "bench"), "--quiet"],
    }
    tails = set()
    for name, argv in commands.items():
        line = _one_line_error(capsys, argv)
        assert line.startswith(f"tipsomaly {name}: error: TIPS l14-hr is not in the cache"), line
        tails.add(line.split(": error: ", 1)[1])
        for backbone, hub_id in (("clip", "openai/clip-vit-large-patch14-336"),
                                 ("siglip2", "google/siglip2-so400m-patch16-256")):
            if name == "demo":
                continue  # the demo draws TIPS only
            other = _one_line_error(capsys, argv + ["--backbone", backbone])
            assert f"{hub_id} is not in the cache" in other and "--variant tiny" in other, other
    assert len(tails) == 1  # the same line everywhere
    (tail,) = tails
    assert "--variant tiny" in tail and "TIPSOMALY_OFFLINE=1" in tail and "tipsomaly fetch l14-hr" in tail
    assert ("storage.googleapis.com", 443) in no_network and ("huggingface.co", 443) in no_network


def test_the_offline_switch_and_the_demo_default_use_the_tiny_model_loudly(no_network, capsys, monkeypatch, tmp_path):
    from tipsomaly_lite.offline import MeaninglessResultsWarning

    with pytest.warns(MeaninglessResultsWarning):  # the demo's default: cached TIPS, else tiny, never a download
        assert main(["demo", "--out", str(tmp_path / "a"), "--size", "112"]) == 0
    assert "MEANINGLESS" in capsys.readouterr().out
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["demo", "--variant", "l14-hr", "--out", str(tmp_path / "b"), "--size", "112"]) == 0
    assert not no_network  # neither asked the network
