"""The course's plumbing: notebook start-up (:mod:`.session`), self-checks (:mod:`.checks`),
figures (:mod:`.viz`) and the first-figure demo (:mod:`.demo`).

``from tipsomaly_lite.course import start`` is how every notebook begins.
"""

from tipsomaly_lite.course.session import (TOY_IMAGE_SIZE, TOY_SEEDS, Course, default_data_root,  # noqa: F401
                                           download_allowed, in_colab, pick_device, start)

__all__ = ["TOY_IMAGE_SIZE", "TOY_SEEDS", "Course", "default_data_root", "download_allowed", "in_colab", "pick_device",
           "start"]
