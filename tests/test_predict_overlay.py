"""The overlay `tipsomaly predict` writes: both titles whole, inside the figure, clear of the colour bar."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from tipsomaly_lite.offline import MEANINGLESS_TAG  # noqa: E402
from tipsomaly_lite.deploy import draw_decision  # noqa: E402


def test_overlay_titles_stay_inside_the_figure_and_clear_of_the_colour_bar():
    torch.manual_seed(0)
    long_name = "a_rather_long_photo_name_from_the_line_0001.png"
    fig = draw_decision(torch.rand(3, 96, 96), torch.rand(96, 96), long_name, f"score 1.393 ({MEANINGLESS_TAG})")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        image_ax, map_ax, colour_bar = fig.axes
        for ax in (image_ax, map_ax):
            box = ax.title.get_window_extent(renderer)
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, ax.title.get_text()
            assert not box.overlaps(ax.get_window_extent(renderer)), "a title drawn over its picture"
        assert not map_ax.title.get_window_extent(renderer).overlaps(colour_bar.get_window_extent(renderer))
        # Every word of both titles is drawn (wrapped, not cut).
        assert map_ax.title.get_text().split() == f"score 1.393 ({MEANINGLESS_TAG})".split()
        assert image_ax.title.get_text().replace("\n", "") == long_name
    finally:
        plt.close(fig)
