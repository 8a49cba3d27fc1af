"""The demo page (``tipsomaly app``): upload photos, name the object, see overlay, score and decision.

:class:`DemoSession` does the work without any web framework (tested directly): it keeps one loaded model per
backbone family, builds the detector for the chosen prompts, scores the photos, decides with a threshold
(typed in, or from known-good photos by the rule of :mod:`tipsomaly_lite.deploy.decide`) and draws each map
over its photo on the folder's one colour scale. :func:`build_app` puts a Gradio page around it (the
``app`` extra), whose ``predict`` endpoint is also an HTTP API; :func:`launch_app` serves it.

When the page opens it analyses two toy images, so a visitor sees what the answer looks like before
uploading anything. The tiny offline model says on the page, in red, that its numbers are meaningless.

Taught in notebooks/07_your_own_images.ipynb.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tipsomaly_lite.deploy.decide import Threshold, check_threshold, threshold_from_normal_images
from tipsomaly_lite.deploy.export import check_class_word
from tipsomaly_lite.offline import MEANINGLESS_TAG

__all__ = ["DemoSession", "DemoAnswer", "build_app", "launch_app", "check_port", "MAX_PHOTOS", "TITLE"]

#: Most photos one request scores (a bound on what a visitor can ask of the machine).
MAX_PHOTOS = 32
#: The page's title.
TITLE = "tipsomaly_lite · zero-shot anomaly detection"
#: The prompt choices besides a ``--prompts`` given on the command line.
PROMPT_CHOICES = ("none (training-free)", "released:mvtec", "released:visa")


def check_port(port: int, host: str = "127.0.0.1") -> int:
    """The port to serve on: ``port`` when it is free on ``host``, any free one for 0.

    Raises:
        ValueError: the port is in use (or cannot be bound there), named with ``--port``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); it is in use "
                             "or not allowed: choose another port, or --port 0 for any free one") from None
        return int(s.getsockname()[1])


@dataclass
class DemoAnswer:
    """What one request returns.

    Attributes:
        overlays: ``(image (H, W, 3) uint8, caption)`` per photo: the photo beside its map.
        rows: per photo ``name``, ``image_score``, ``decision`` (``""`` without a threshold).
        summary: Markdown: the threshold and how it was chosen, a table of the rows, the offline banner.
        threshold: the threshold used, or None.
    """

    overlays: list[tuple[np.ndarray, str]] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    summary: str = ""
    threshold: Threshold | None = None


def _figure_to_array(fig: Any) -> np.ndarray:
    """A drawn matplotlib figure as ``(H, W, 3)`` uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class DemoSession:
    """The app's work, one loaded model per backbone family, reused across requests.

    Args:
        family: the backbone family loaded first (``tips``, ``clip``, ``siglip2``).
        variant: its checkpoint (None: the family's default; ``tiny`` offline).
        image_size: input side (None: the family's).
        device, dtype: where and how the vision tower runs.
        prompts: learned prompts from the command line (a run folder or file), offered as a choice.
        released: the authors' release named on the command line (``mvtec``/``visa``), the default choice.
        mode, sigma, prompt_set: as for :class:`~tipsomaly_lite.method.detector.Detector`.
        model: an already loaded backbone to use for its family (a notebook's; nothing is loaded twice).
    Taught in notebooks/07_your_own_images.ipynb.
    """

    def __init__(self, family: str = "tips", variant: str | None = None, image_size: int | None = None,
                 device: str = "cpu", dtype: str = "fp32", prompts: str | None = None, released: str | None = None,
                 mode: str | None = None, sigma: float | None = None, prompt_set: str | None = None,
                 model: Any = None) -> None:
        from tipsomaly_lite.method.detector import DEFAULT_SIGMA

        if model is not None:
            family, variant, image_size = model.family, model.variant, model.image_size
        self.family, self.variant, self.image_size = family, variant, image_size
        self.device, self.dtype, self.mode = device, dtype, mode
        self.sigma = DEFAULT_SIGMA if sigma is None else sigma
        self.prompt_set = prompt_set
        self.prompt_choices = ([f"--prompts {prompts}"] if prompts else []) + list(PROMPT_CHOICES)
        self.default_prompts = (f"--prompts {prompts}" if prompts else f"released:{released}" if released
                                else PROMPT_CHOICES[0])
        self._prompts_path = prompts
        self._models: dict[str, Any] = {} if model is None else {family: model}
        self._detectors: dict[tuple[str, str], Any] = {}

    def model(self, family: str | None = None) -> Any:
        """The loaded backbone of ``family`` (loaded on first use; the command line's variant for its family)."""
        from tipsomaly_lite.backbones import FAMILIES, load_backbone

        family = family or self.family
        if family not in FAMILIES:
            raise ValueError(f"backbone {family!r}: expected one of {', '.join(FAMILIES)}")
        if family not in self._models:
            variant = self.variant if family == self.family else None
            size = self.image_size if family == self.family else None
            self._models[family] = load_backbone(variant, family=family, image_size=size, device=self.device,
                                                 dtype=self.dtype)
        return self._models[family]

    def detector(self, family: str | None = None, prompts: str | None = None) -> Any:
        """The detector of ``family`` with the ``prompts`` choice (one of :attr:`prompt_choices`)."""
        from tipsomaly_lite.method.detector import Detector
        from tipsomaly_lite.method.prompt_files import (check_trained_with, load_prompts, prompt_set_for, run_record,
                                                        run_settings)
        from tipsomaly_lite.method.prompts import get_prompt_set

        family, prompts = family or self.family, prompts or self.default_prompts
        if prompts not in self.prompt_choices:
            raise ValueError(f"prompts {prompts!r}: expected one of {', '.join(self.prompt_choices)}")
        key = (family, prompts)
        if key not in self._detectors:
            model = self.model(family)
            path = self._prompts_path if prompts.startswith("--prompts") else None
            released = prompts.split(":", 1)[1] if prompts.startswith("released:") else None
            learned, source = load_prompts(path, released)
            record = run_record(path)
            prompt_set = get_prompt_set(prompt_set_for(run_settings(record), self.prompt_set))
            check_trained_with(record, model, prompt_set, path)
            mode = self.mode if learned is not None else None
            self._detectors[key] = Detector(model, learned, prompt_set=prompt_set, mode=mode, sigma=self.sigma,
                                            prompts_source=source)
        return self._detectors[key]

    def analyse(self, photos: Sequence[Any], class_word: str, family: str | None = None, prompts: str | None = None,
                threshold: float | str | None = None, normal: Sequence[Any] = ()) -> DemoAnswer:
        """Score ``photos`` and draw them, with a decision when a threshold or known-good photos are given.

        Args:
            photos: paths or images (PIL, arrays, ``(3, H, W)`` tensors in [0, 1]), at most :data:`MAX_PHOTOS`.
            class_word: the object's word in the prompts.
            family, prompts: the backbone family and the prompts choice (defaults: the command line's).
            threshold: an image-score threshold in [0, 2] typed in (a number or its text; empty: none);
                known-good photos take precedence.
            normal: known-good photos of the object: the threshold, the colour scale and the contour come from them.
        Raises:
            ValueError: no photos or too many, a photo that cannot be read, a blank class word, a threshold
                that is not finite or out of range (each one line).
        """
        from tipsomaly_lite.io.images import to_float_rgb
        from tipsomaly_lite.method.maps import upsample_map
        from tipsomaly_lite.deploy.decide import draw_decision

        photos, normal = list(photos or []), list(normal or [])
        if not photos:
            raise ValueError("photos: upload at least one image")
        if len(photos) > MAX_PHOTOS or len(normal) > MAX_PHOTOS:
            raise ValueError(f"photos: at most {MAX_PHOTOS} photos and {MAX_PHOTOS} known-good photos at a time")
        word = check_class_word(class_word, "class word")
        detector = self.detector(family, prompts)
        model = detector.model
        if normal:
            decide = threshold_from_normal_images(detector, normal, word, flag="known-good photos")
            how = (f"threshold **{decide.image_threshold:.4f}** from {decide.n_normal} known-good photos "
                   f"(quantile 0.99 of their scores + 0.01)")
        elif threshold is not None and str(threshold).strip() != "":
            decide = Threshold.by_hand(check_threshold(threshold, "threshold"))
            how = f"threshold **{decide.image_threshold:.4f}** (typed in)"
        else:
            decide, how = None, "no threshold: type one or upload known-good photos for a decision"
        images = []
        for i, item in enumerate(photos):
            name = os.path.basename(str(item)) if isinstance(item, (str, os.PathLike)) else f"photo {i + 1}"
            try:
                images.append((name, to_float_rgb(item)))
            except (ValueError, OSError) as exc:
                raise ValueError(f"photos: {name} cannot be read ({exc})") from None
        answer = DemoAnswer(threshold=decide)
        from matplotlib import pyplot as plt

        for start in range(0, len(images), 8):
            chunk = images[start:start + 8]
            pred = detector.predict(model.preprocess([im for _, im in chunk], model.image_size), word)
            for i, (name, image) in enumerate(chunk):
                score = float(pred.image_score[i])
                decision = decide.decide(score) if decide is not None else ""
                amap = upsample_map(pred.anomaly_map[i:i + 1].cpu(), tuple(image.shape[-2:]))[0]
                title = f"score {score:.3f}" + (f": {decision}" if decision else "")
                fig = draw_decision(image, amap, name, title + (" (MEANINGLESS)" if model.is_offline else ""), decide)
                answer.overlays.append((_figure_to_array(fig), f"{name}: {title}"))
                plt.close(fig)
                answer.rows.append({"name": name, "image_score": f"{score:.4f}", "decision": decision})
        lines = []
        if model.is_offline:
            lines += [f"**⚠ {MEANINGLESS_TAG}**: the tiny offline model stands in; these scores and maps mean "
                      "nothing.", ""]
        lines += [f"**{model.family}** `{model.variant}`, pixel prompts: {detector.prompts_source}, class word "
                  f"**{word}**; {how}.", "", "| photo | image score (0-2) | decision |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['image_score']} | {r['decision'] or '-'} |" for r in answer.rows]
        answer.summary = "\n".join(lines)
        return answer

    def example(self) -> DemoAnswer:
        """Two toy images (a good and a scratched piece of wood) analysed with the defaults: the page's first view."""
        from tipsomaly_lite.course.demo import demo_images

        images, words, _ = demo_images(self.model().image_size)
        return self.analyse([images[0], images[1]], words[0])

    def banner(self) -> str:
        """The page's header (HTML): what is loaded, and the offline warning in red for the tiny model."""
        import html

        model = self.model()
        text = (f"<h1>{html.escape(TITLE)}</h1><p>Upload photos, name the object, pick a backbone and prompts, and a "
                "threshold (or known-good photos), then press <b>analyse</b>. Loaded: "
                f"<b>{html.escape(model.family)}</b> <code>{html.escape(str(model.variant))}</code>, input "
                f"{model.image_size} px.</p>")
        if model.is_offline:
            text += (f"<p style='color:#d00000;font-size:1.3em'><b style='color:#d00000'>⚠ {MEANINGLESS_TAG}</b>: "
                     "a tiny offline model (toy or random weights) stands in for the real one; every score and map "
                     "below is meaningless.</p>")
        return text


def build_app(session: DemoSession) -> Any:
    """The Gradio page around ``session``; its ``/predict`` endpoint is the HTTP API.

    ``/predict`` takes ``(photos: files, class_word, backbone, prompts, threshold (number or None),
    known_good: files)`` and returns ``(gallery of overlays, Markdown summary)``.

    Raises:
        ImportError: Gradio is missing (``pip install 'tipsomaly_lite[app]'``).
    """
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError(f"the app needs Gradio ({exc}): pip install 'tipsomaly_lite[app]'") from None
    from tipsomaly_lite.backbones import FAMILIES
    from tipsomaly_lite.io.boundary import one_line, user_errors

    def predict(photos, class_word, backbone, prompts, threshold, known_good):
        try:
            answer = session.analyse(photos or [], class_word, backbone, prompts, threshold, known_good or [])
        except user_errors() as exc:  # the visitor's mistake: one line on the page, the server goes on
            raise gr.Error(one_line(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)) from None
        return answer.overlays, answer.summary

    example = session.example()  # the first view, drawn once when the page is built

    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.HTML(session.banner())
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(label="photos", file_count="multiple", file_types=["image"], type="filepath")
                word = gr.Textbox(label="class word", value="object", placeholder='e.g. "metal nut"')
                backbone = gr.Dropdown(list(FAMILIES), value=session.family, label="backbone")
                prompts = gr.Dropdown(session.prompt_choices, value=session.default_prompts, label="prompts")
                threshold = gr.Textbox(label="threshold on the image score (0-2), optional", value="",
                                       placeholder="e.g. 1.2; empty: no decision unless known-good photos are given")
                good = gr.File(label="known-good photos (optional: the threshold comes from them)",
                               file_count="multiple", file_types=["image"], type="filepath")
                run = gr.Button("analyse", variant="primary")
            with gr.Column(scale=2):
                gallery = gr.Gallery(value=example.overlays, label="overlays", columns=2, height="auto",
                                     object_fit="contain")
                summary = gr.Markdown("Example (toy images, class word 'wood grain'): " + example.summary)
        run.click(predict, [photos, word, backbone, prompts, threshold, good], [gallery, summary], api_name="predict")
    return page


def launch_app(args: argparse.Namespace, block: bool = True) -> Any:
    """Serve the page for the command line's flags (``tipsomaly app``); returns 0 when stopped (Ctrl-C).

    With ``block=False`` the server runs in a thread and the Gradio page is returned (tests).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a demo
    from tipsomaly_lite.method.prompt_files import load_prompts

    load_prompts(args.prompts, args.released)  # a bad --prompts file is refused before the page is served
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    session = DemoSession(args.backbone, args.variant, args.image_size, device, args.dtype, args.prompts,
                          args.released, args.mode, args.sigma, args.prompt_set)
    model = session.model()
    print(repr(model))
    if model.is_offline:
        print(MEANINGLESS_TAG)
    port = check_port(args.port, args.host)
    page = build_app(session)
    page.queue(default_concurrency_limit=1)  # one request at a time: one model, one machine
    page.launch(server_name=args.host, server_port=port, share=args.share, prevent_thread_lock=not block,
                quiet=False, show_error=True)
    if not block:
        return page
    return 0
