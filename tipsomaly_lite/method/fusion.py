"""Local-to-global fusion: the strongest patch evidence is added to the global score (docs/method.md §2.4).

``s = global_weight * p_global + local_weight * max_i p_anomalous(z_i)``, both weights 1 in the
paper, so ``s`` lies in [0, 2]. The max is over the raw patch probabilities, before any
upsampling or smoothing. Under either scoring rule both terms are ``p_anomalous`` (for SigLIP2's
sigmoids too, as the authors fuse them).

Taught in notebooks/05_local_to_global_fusion.ipynb.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["local_score", "fuse_scores"]


def local_score(patch_scores: Tensor) -> Tensor:
    """``(B, N)`` anomalous patch probabilities -> ``(B,)`` their maximum.

    Taught in notebooks/05_local_to_global_fusion.ipynb.
    """
    if patch_scores.ndim != 2:
        raise ValueError(f"patch_scores must be (B, N), got {tuple(patch_scores.shape)}")
    return patch_scores.amax(dim=1)


def fuse_scores(global_score: Tensor, patch_scores: Tensor, global_weight: float = 1.0,
                local_weight: float = 1.0) -> Tensor:
    """The final image score.

    Args:
        global_score: ``(B,)`` P(anomalous) from a global token and the fixed prompts.
        patch_scores: ``(B, N)`` P(anomalous) of every patch.
        global_weight, local_weight: 1 and 1 in the paper (0 turns a side off, for ablations).
    Returns:
        ``image_score (B,)``, in [0, global_weight + local_weight].
    Taught in notebooks/05_local_to_global_fusion.ipynb.
    """
    if global_score.shape != patch_scores.shape[:1]:
        raise ValueError(f"global_score {tuple(global_score.shape)} and patch_scores {tuple(patch_scores.shape)} "
                         "disagree on the batch size")
    return global_weight * global_score + local_weight * local_score(patch_scores)
