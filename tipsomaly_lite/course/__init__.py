"""The course's plumbing: notebook start-up (:mod:`.session`), self-checks (:mod:`.checks`),
figures (:mod:`.viz`) and the first-figure demo (:mod:`.demo`).

``from tipsomaly_lite.course import start`` is how every notebook begins.
"""

from tipsomaly_lite.course.session import (TOY_IMAGE_SIZE, TOY_SEEDS, Course, default_data_root,  # noqa: F401
                                           download_allowed, in_colab, pick_device, start)

__all__ = ["TOY_IMAGE_SIZE", "TOY_SEEDS", "Course", "default_data_root", "download_allowed", "in_colab", "pick_device",
           "start"]

from tipsomaly_lite._api import face  # noqa: E402

# Figures and widgets, imported on first use (``from tipsomaly_lite.course import show_images``).
_LAZY = {
    "tipsomaly_lite.course.widgets": ("interact", "live_frontend"),
    "tipsomaly_lite.course.viz": ("set_style", "show_images", "plot_similarity_maps", "overlay_anomaly_map",
                                  "plot_loss_curve", "save_loss_curve", "plot_roc", "plot_pr", "plot_histograms",
                                  "plot_projection", "plot_metric_bars", "plot_pro_curve"),
}
__getattr__, __dir__, _lazy_names = face(__name__, _LAZY, {"checks": "tipsomaly_lite.course.checks",
                                                            "viz": "tipsomaly_lite.course.viz"})
__all__ += _lazy_names
