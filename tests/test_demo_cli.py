"""The main job (``make demo``) and the command line, offline."""

from __future__ import annotations


import pytest
import torch
from PIL import Image

from tipsomaly_lite.cli import main
from tipsomaly_lite.course.demo import DEMO_SAMPLES, run_demo
from tipsomaly_lite.method.maps import similarity_maps
from tipsomaly_lite.offline import MeaninglessResultsWarning


def test_similarity_maps_are_patch_text_cosines(tiny):
    images = torch.rand(2, 3, 56, 84)
    maps = similarity_maps(tiny, images, ["a", "b c"])
    assert maps.shape == (2, 2, 4, 6)
    _, _, patches = tiny.encode_image(images, normalize=True)
    text = tiny.encode_text(["a", "b c"], normalize=True)
    torch.testing.assert_close(maps[1, 0].flatten(), patches[1] @ text[0])


def test_run_demo_writes_the_figure(tiny, tmp_path):
    result = run_demo(tmp_path, model=tiny, size=112)
    assert result.offline
    assert result.probabilities.shape == (len(DEMO_SAMPLES), 2)
    torch.testing.assert_close(result.probabilities.sum(-1), torch.ones(len(DEMO_SAMPLES)))
    assert result.maps.shape == (len(DEMO_SAMPLES), 2, 8, 8)
    with Image.open(result.figure) as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_cli_demo_falls_back_to_tiny_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    with pytest.warns(MeaninglessResultsWarning):
        assert main(["demo", "--out", str(tmp_path), "--size", "112"]) == 0
    out = capsys.readouterr().out
    assert "similarity_maps.png" in out and "MEANINGLESS" in out
    assert (tmp_path / "similarity_maps.png").is_file()


def test_cli_fetch_reports_unknown_variant(capsys):
    assert main(["fetch", "nonsense"]) == 2  # a user error: one line, not a traceback
    assert "unknown TIPS variant" in capsys.readouterr().err


def test_fetch_script_lists_variants(capsys, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "data_scripts" / "fetch_tips.py"
    monkeypatch.setattr(sys, "argv", [script.name, "--list"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    assert "l14-hr" in capsys.readouterr().out


def test_viz_vocabulary_draws(tiny):
    from tipsomaly_lite.course.viz import overlay_anomaly_map, show_images

    images = [torch.rand(3, 28, 28), torch.rand(3, 28, 28), torch.rand(28, 28, 3).numpy()]
    fig = show_images(images, titles=["a", "b", "c"], ncols=2)
    assert len([ax for ax in fig.axes if ax.images]) == 3
    ax = overlay_anomaly_map(images[0], torch.rand(28, 28), title="map")
    assert len(ax.images) == 2 and ax.get_title() == "map"
    ax = overlay_anomaly_map(images[0], torch.full((28, 28), 0.25), vmin=0.0, vmax=1.0)
    assert ax.images[1].get_clim() == (0.0, 1.0)


def test_loss_curve_marks_epochs():
    from tipsomaly_lite.course.viz import plot_loss_curve

    history = [{"epoch": 1 + i // 3, "step": i + 1, "loss": 1.0 / (i + 1)} for i in range(6)]
    ax = plot_loss_curve(history, title="t")
    assert len(ax.lines) >= 1 and ax.get_title() == "t"
    assert len(ax.collections) == 2  # one epoch-mean segment per epoch


def test_ground_truth_is_an_outline_and_a_colour_bar_says_what_the_colours_mean():
    import matplotlib.pyplot as plt

    from tipsomaly_lite.course.viz import overlay_anomaly_map

    image, mask = torch.rand(3, 32, 32), torch.zeros(32, 32)
    mask[8:16, 8:20] = 1
    fig, ax = plt.subplots()
    overlay_anomaly_map(image, torch.rand(32, 32), ax=ax, outline=mask, colorbar=True, vmin=0, vmax=1)
    assert len(fig.axes) == 2  # the map and its colour bar
    assert ax.collections, "the mask's edge is drawn as a contour"
    fig2, ax2 = plt.subplots()
    overlay_anomaly_map(image, None, ax=ax2, outline=torch.zeros(32, 32))  # no defect: nothing to outline
    assert len(ax2.images) == 1 and not ax2.collections
    plt.close(fig)
    plt.close(fig2)
