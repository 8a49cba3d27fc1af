"""Shared fixtures: everything the tests need is generated here, offline and seeded."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test sees its own empty TIPSOMALY_HOME, except the shared tiny model folder."""
    home = tmp_path_factory.getbasetemp() / "tipsomaly_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("TIPSOMALY_HOME", str(home))
    yield home


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    from tipsomaly_lite.offline import train_tiny_tokenizer

    return train_tiny_tokenizer(tmp_path_factory.mktemp("spm") / "tokenizer.model")
