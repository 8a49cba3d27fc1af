"""One class's detector as a single ONNX graph: ``image (B, 3, S, S)`` in, ``image_score (B,)`` and
``anomaly_map (B, S, S)`` out.

:class:`ExportedDetector` wraps what :meth:`Detector.predict <tipsomaly_lite.method.detector.Detector.predict>`
does for one class word as a plain ``nn.Module``: the vision tower, then the text features of that word and
the learned prompts, which are computed once here and baked into the graph as constants (no text tower,
no tokenizer in the file). The map's bilinear upsampling and Gaussian smoothing (docs/method.md §2.5) are
separable and linear, so each axis is one ``(S, g)`` matrix (the method's own
:func:`~tipsomaly_lite.method.maps.map_matrices`): the exported map is ``A_h @ grid @ A_w^T``, two matrix
products that every ONNX runtime has, exactly what ``Detector.predict`` computes. Scores and map follow the
backbone's scoring rule (SigLIP2's sigmoids), as the detector does. :func:`export_onnx` writes the file atomically and checks it with onnxruntime against
``Detector.predict`` before it is kept.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tipsomaly_lite.io.atomic import atomic_file
from tipsomaly_lite.method.detector import Detector
from tipsomaly_lite.method.fusion import fuse_scores
from tipsomaly_lite.method.maps import map_matrices
from tipsomaly_lite.method.scoring import global_score, patch_evidence, patch_probabilities

__all__ = ["ExportedDetector", "check_class_word", "export_onnx", "run_onnx", "ExportResult",
           "OPSET", "MAX_CLASS_WORD", "require_export_extra"]

#: The ONNX operator set the file is written with (onnxruntime >= 1.17 runs it).
OPSET = 18
#: The longest class word accepted (characters): a word goes into every sentence of the prompt set.
MAX_CLASS_WORD = 200


def check_class_word(word: Any, what: str = "--class-name") -> str:
    """The class word, stripped, when a prompt can be made from it.

    Raises:
        ValueError: not text, empty or blank (no sentence of the prompt set can name the object),
            longer than :data:`MAX_CLASS_WORD`, or holding control characters or braces.
    """
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"{what} {word!r}: no prompts can be made for an empty class word; give the object's "
                         'name as in a sentence, e.g. "metal nut"')
    word = word.strip()
    if len(word) > MAX_CLASS_WORD or any(not c.isprintable() or c in "{}" for c in word):
        raise ValueError(f"{what} {word[:40]!r}: expected a short printable name of the object (at most "
                         f"{MAX_CLASS_WORD} characters, no braces or control characters)")
    return word


def require_export_extra() -> None:
    """Check that the ``export`` extra (onnx, onnxscript for torch's exporter, onnxruntime) is installed.

    Raises:
        ImportError: naming what is missing and how to install it.
    """
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}, which is not installed: pip install "
                          "'tipsomaly_lite[export]'")


class ExportedDetector(nn.Module):
    """``Detector.predict`` for one class word, as a module whose only input is the image batch.

    Args:
        detector: a :class:`~tipsomaly_lite.method.detector.Detector` (any mode, any backbone).
        class_word: the object's word in the fixed prompts (``"metal nut"``).
        image_size: side ``S`` of the input (default: the backbone's ``image_size``).
    Forward:
        ``image (B, 3, S, S)`` float32 in [0, 1] -> ``(image_score (B,), anomaly_map (B, S, S))``.
    """

    def __init__(self, detector: Detector, class_word: str, image_size: int | None = None) -> None:
        super().__init__()
        model = detector.model
        self.model = model
        self.class_word = check_class_word(class_word, "class word")
        self.image_size = int(image_size or model.image_size)
        self.token = detector.token
        self.rule = model.scoring_rule  # softmax (TIPS, CLIP) or SigLIP2's sigmoids, as Detector.predict
        self.global_weight, self.local_weight = detector.global_weight, detector.local_weight
        self.grid = model.patch_grid(self.image_size)
        image_text, pixel_text = detector.text_features([self.class_word])  # (1, 2, D), (2, D) or (1, 2, D)
        self.register_buffer("image_text", image_text.reshape(2, -1).float().detach().clone())
        self.register_buffer("pixel_text", pixel_text.reshape(2, -1).float().detach().clone())
        rows, cols = map_matrices(self.grid, (self.image_size, self.image_size), detector.sigma)
        self.register_buffer("rows", rows.clone())
        self.register_buffer("cols", cols.clone())

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.encode_features(image)
        patches = features["patch_tokens"]  # (B, N, D)
        g = global_score(features[self.token], self.image_text, self.rule)  # (B,)
        probs = patch_probabilities(patches, self.pixel_text, self.rule)  # (B, N, 2)
        score = fuse_scores(g, probs[..., 1], self.global_weight, self.local_weight)
        grid = patch_evidence(probs, self.rule).reshape(-1, self.grid[0], self.grid[1])
        amap = torch.matmul(torch.matmul(self.rows, grid), self.cols.T)  # (B, S, S)
        return score, amap


class ExportResult:
    """What :func:`export_onnx` wrote and how closely the file reproduces ``Detector.predict``.

    Attributes:
        path: the ``.onnx`` file.
        max_error: largest absolute difference of scores and maps (onnxruntime vs PyTorch) on the check batch.
        image_size: ``S``.
        class_word: the word baked in.
    """

    def __init__(self, path: Path, max_error: float, image_size: int, class_word: str) -> None:
        self.path, self.max_error, self.image_size, self.class_word = path, max_error, image_size, class_word

    def __repr__(self) -> str:
        return (f"ExportResult(path={str(self.path)!r}, class_word={self.class_word!r}, image_size={self.image_size}, "
                f"max_error={self.max_error:.2e})")


def _to_onnx_bytes(module: ExportedDetector, example: Tensor) -> bytes:
    """The module traced to ONNX bytes with a dynamic batch axis."""
    import contextlib
    import io
    import logging

    buffer = io.BytesIO()
    # The exporter's progress lines and warnings (missing torchvision ops, skipped foldings) are not the user's
    # business: the check against Detector.predict below says whether the file is right.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), input_names=["image"],
                                        output_names=["image_score", "anomaly_map"], opset_version=OPSET,
                                        dynamo=True, dynamic_shapes={"image": {0: torch.export.Dim("batch", max=4096)}},
                                        verbose=False, optimize=True)
            program.save(buffer)
    finally:
        logging.disable(logging.NOTSET)
    return buffer.getvalue()


def run_onnx(path_or_bytes: str | os.PathLike | bytes, images: Tensor) -> tuple[Tensor, Tensor]:
    """Run an exported file with onnxruntime on the CPU.

    Args:
        path_or_bytes: the ``.onnx`` file or its bytes.
        images: ``image (B, 3, S, S)`` float32 in [0, 1].
    Returns:
        ``(image_score (B,), anomaly_map (B, S, S))``.
    """
    import onnxruntime as ort

    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    score, amap = session.run(["image_score", "anomaly_map"], {"image": images.detach().cpu().float().numpy()})
    return torch.from_numpy(score), torch.from_numpy(amap)


def export_onnx(detector: Detector, class_word: str, out: str | os.PathLike, *, image_size: int | None = None,
                check_images: Tensor | None = None, tolerance: float = 1e-4) -> ExportResult:
    """Write ``detector`` for ``class_word`` as one ONNX file, checked against ``Detector.predict`` first.

    Args:
        detector: the detector to export (its backbone on the CPU, fp32).
        class_word: the object's word in the prompts.
        out: the ``.onnx`` file to write (atomically: a failed export leaves no file).
        image_size: input side ``S`` (default: the backbone's).
        check_images: ``(B, 3, S, S)`` in [0, 1], ``B >= 3``, for the check (default: three seeded random images;
            the graph is traced with two, so the check also runs another batch size than the trace).
        tolerance: largest absolute difference of scores and maps accepted.
    Returns:
        An :class:`ExportResult`.
    Raises:
        ValueError: an unusable class word, or the file does not reproduce ``Detector.predict``.
        ImportError: onnx or onnxruntime is missing (``pip install tipsomaly_lite[export]``).
    """
    require_export_extra()
    module = ExportedDetector(detector, class_word, image_size).eval()
    size = module.image_size
    if check_images is None:
        check_images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    check_images = check_images.to(detector.model.device, torch.float32)
    with torch.no_grad():
        data = _to_onnx_bytes(module, check_images[:2])
        score, amap = run_onnx(data, check_images)
        expected = detector.predict(check_images, module.class_word)
    error = max(float((score - expected.image_score.cpu()).abs().max()),
                float((amap - expected.anomaly_map.cpu()).abs().max()))
    if not error <= tolerance:
        raise ValueError(f"the exported graph differs from Detector.predict by {error:.2e} (> {tolerance:g}); "
                         "nothing was written")
    out = Path(out)
    with atomic_file(out) as fh:
        fh.write(data)
    return ExportResult(out, error, size, module.class_word)
