"""Shared fixtures: everything the tests need is generated here, offline and seeded."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """The whole session uses a fresh TIPSOMALY_HOME: never a developer's real cache."""
    home = tmp_path_factory.mktemp("tipsomaly_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIPSOMALY_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    from tipsomaly_lite.offline import train_tiny_tokenizer

    return train_tiny_tokenizer(tmp_path_factory.mktemp("spm") / "tokenizer.model")


@pytest.fixture(scope="session")
def tiny(_isolated_home):
    """The tiny offline TIPS (random weights), loaded once; its warning is expected here."""
    from tipsomaly_lite.offline import MeaninglessResultsWarning
    from tipsomaly_lite.tips import load_tips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return load_tips("tiny")
