"""Self-checks for the exercises of notebooks/02_spatial_alignment.ipynb."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from tipsomaly_lite.course.checks.core import as_number, check_function, exercise, precision_of, report

__all__: list[str] = ["patch_similarity_map", "delta_for_probability"]

#: A non-square input (6 x 9 patches), so a grid laid out as (gw, gh) or column-major fails.
_CHECK_SIZE = (84, 126)


def _solve_patch_similarity_map(patch_tokens: torch.Tensor, text_features: torch.Tensor,
                                grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, D) raw patch tokens, (T, D) raw text features, (gh, gw) -> (B, T, gh, gw) cosines."""
    z = patch_tokens / patch_tokens.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    t = text_features / text_features.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    gh, gw = grid
    return (z @ t.T).transpose(1, 2).reshape(z.shape[0], t.shape[0], gh, gw)


@exercise("normalise both the patch tokens and the text features; patch i sits at row i // gw, column i % gw",
          reference="tipsomaly_lite.method.maps.similarity_maps", solution=_solve_patch_similarity_map)
@torch.no_grad()
def patch_similarity_map(fn: Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], Any], model: Any) -> bool:
    """Exercise 1 of notebook 02: cosine maps from raw patch tokens and raw text features.

    Runs ``fn(patch_tokens (B, N, D), text_features (T, D), (gh, gw))`` on the raw features the
    model gives for two seeded random non-square images and three sentences, and compares the
    result with :func:`tipsomaly_lite.method.maps.similarity_maps` on the same images and sentences.

    Args:
        fn: the student's function, returning ``(B, T, gh, gw)``.
        model: the loaded TIPS (the notebook's ``model``).
    Returns:
        True when it matches (✅), else False (❌, raised in CI).
    """
    from tipsomaly_lite.method.maps import similarity_maps

    images = torch.rand(2, 3, *_CHECK_SIZE, generator=torch.Generator().manual_seed(2)).to(model.device)
    texts = ["a photo of a flawless object.", "a photo of a damaged object.", "a scratch"]
    _, _, patches = model.encode_image(images)
    text = model.encode_text(texts)
    grid = model.patch_grid(_CHECK_SIZE)
    return check_function("patch_similarity_map: (B, T, gh, gw) cosines on the patch grid", fn,
                          lambda *_: similarity_maps(model, images, texts), [(patches, text, grid)],
                          atol=1e-4)


def _solve_delta_for_probability(p: float, temperature: float) -> float:
    """The cosine difference that gives P(anomalous) = p at this temperature: the logit of p, times T."""
    return temperature * math.log(p / (1 - p))


@exercise("p = sigmoid(Δ / T): invert the sigmoid (the logit), then undo the division by T",
          solution=_solve_delta_for_probability)
def delta_for_probability(fn: Callable[[float, float], Any]) -> bool:
    """Exercise 2 of notebook 02: the cosine difference that gives ``P(anomalous) = p``.

    For several ``(p, temperature)``, builds a token ``z`` and text features ``(t_n, t_a)`` with
    ``cos(z, t_a) - cos(z, t_n)`` equal to the student's answer, and checks that
    :func:`tipsomaly_lite.method.scoring.two_way_probabilities` gives back ``p``.

    Args:
        fn: the student's ``fn(p, temperature) -> delta``.
    Returns:
        True when every case gives back its ``p`` (✅), else False (❌, raised in CI).
    """
    from tipsomaly_lite.method.scoring import two_way_probabilities

    name = "delta_for_probability: the cosine difference for P(anomalous) = p"
    for p, temperature in [(0.9, 0.005), (0.5, 0.005), (0.2, 0.01), (0.99, 0.005)]:
        try:
            answer = fn(p, temperature)
        except Exception as err:  # noqa: BLE001 - show the student's error, never swallow it
            return report(name, False, f"a number for p={p}, T={temperature}", f"an exception: {err!r}")
        if answer is None or answer is Ellipsis:
            return report(name, False, f"a number for p={p}, T={temperature}", answer)
        delta = as_number(answer)
        if delta is None:
            return report(name, False, f"a number for p={p}, T={temperature}", answer, "not one number")
        if not (math.isfinite(delta) and abs(delta) < 1):
            return report(name, False, f"a cosine difference in (-1, 1) for p={p}, T={temperature}", delta)
        z = torch.tensor([[[1.0, 0.0]]])                                                # (1, 1, 2)
        text = torch.tensor([[0.0, 1.0], [delta, math.sqrt(1 - delta ** 2)]])           # cos 0 and cos delta
        got = float(two_way_probabilities(z, text, temperature)[0, 0, 1])
        # what rounding Δ to the answer's dtype moves p by (dp/dΔ = p(1-p)/T): bfloat16 moves it visibly
        tol = max(1e-4, 4 * p * (1 - p) * abs(delta) * precision_of(answer) / temperature)
        if not math.isclose(got, p, abs_tol=tol):
            return report(name, False, f"P(anomalous) = {p} at T = {temperature}",
                          f"Δ = {delta:.5g} gives P(anomalous) = {got:.4f}")
    return report(name, True)
