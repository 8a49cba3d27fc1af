"""A dress rehearsal of the real mode, which CI otherwise never runs.

nbval runs the notebooks offline. Here the cache holds a (tiny) model at the paper's L/14 paths
and toy datasets prepared as ``mvtec``, ``visa`` and ``btad``, so ``course.start()`` takes the
*real* branch: real-mode code (prepared datasets, the protocol's prompts per source dataset,
the benchmark over several datasets, reloading saved results) runs end to end. The numbers
still mean nothing; what is tested is that those branches run and take the real path.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

#: The full lane only (`make test-all`): slow rehearsals.
pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
REHEARSED = ["00_setup", "04_learnable_pixel_prompts", "05_local_to_global_fusion", "06_benchmark",
             "07_your_own_images"]


@pytest.fixture(scope="module")
def real_looking_home(tmp_path_factory):
    from tipsomaly_lite.offline import MeaninglessResultsWarning
    from tipsomaly_lite.backbones.tips.tiny import tiny_files
    from tipsomaly_lite.backbones.tips.registry import VARIANTS
    from tipsomaly_lite.data.toy_data import make_toy_dataset

    home = tmp_path_factory.mktemp("real_home")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        sources = dict(zip(("vision", "text", "tokenizer"), tiny_files(home)))
    for role, rel in VARIANTS["l14-hr"].files.items():
        (home / "tips" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sources[role], home / "tips" / rel)
    for seed, key in enumerate(("mvtec", "visa", "btad")):
        make_toy_dataset(home / "data" / key, seed=seed, classes=["carpet", "pill"], n_normal=3, n_anomalous=3)
    return home


@pytest.mark.parametrize("name", REHEARSED)
def test_notebook_runs_in_real_mode(name, real_looking_home, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.delenv("TIPSOMALY_DATA", raising=False)
    monkeypatch.setenv("TIPSOMALY_HOME", str(real_looking_home))
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    monkeypatch.setenv("TIPSOMALY_WIDGETS", "static")  # headless: interactive cells draw once, never wait
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()  # raises on any error
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
                     if out.get("output_type") == "stream")
    assert "Course(mode=real" in text, f"{name} did not take the real branch"
    assert "OFFLINE MODE: tiny TIPS" not in text
    assert "❌" not in text
