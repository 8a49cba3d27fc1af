"""From the course to the line: decisions from known-good images, ONNX export, the demo app.

- :mod:`.decide`: a threshold from known-good images by a documented rule (or by hand), a decision per
  image, one colour scale for a folder's maps (``tipsomaly predict --normal-images / --threshold``).
- :mod:`.export`: one class's detector as a single ONNX graph, checked against ``Detector.predict``
  (``tipsomaly export``; the ``export`` extra).
- :mod:`.app`: a Gradio page to upload photos and see overlay, score and decision (``tipsomaly app``;
  the ``app`` extra).

It stands on the predict floor: it uses the method and the course's figures, and the CLI uses it.
"""

from tipsomaly_lite._api import face

_PUBLIC = {
    "tipsomaly_lite.deploy.decide": ("Threshold", "threshold_from_normal_images", "THRESHOLD_RULE", "draw_decision"),
    "tipsomaly_lite.deploy.export": ("ExportedDetector", "export_onnx", "run_onnx"),
    "tipsomaly_lite.deploy.app": ("DemoSession", "build_app", "launch_app"),
}
__getattr__, __dir__, __all__ = face(__name__, _PUBLIC)
