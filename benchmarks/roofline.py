"""What a forward *should* cost: matmul FLOPs of the TIPS towers, the machine's matmul throughput, GPU peaks.

Shared by ``bench_tips.py`` and ``bench_dtype.py``. A tower's achieved GFLOP/s divided by the
measured throughput of square matmuls in the same dtype on the same device says how much of what
the machine can do the tower gets (a roofline for compute-bound work).

FLOPs count only the matrix multiplies, 2 FLOPs per multiply-add:

* vision tower, per image, ``T = 2 + N`` tokens (two CLS, ``N = (H/14)(W/14)`` patches), width
  ``D``, MLP hidden ``M``: the patch embedding ``N * (3*14*14) * D``; per block the qkv projection
  ``T*D*3D``, the output projection ``T*D*D``, the MLP ``2*T*D*M`` (SwiGLU ``3*T*D*M``) and
  attention's two matmuls ``2 * T*T*D``;
* text tower, per batch of sentences cut to ``L`` tokens (the longest one's; padding is cut
  first): per block and sentence ``L*D*3D + L*D*D + 2*L*D*M + 2*L*L*D``.

LayerNorms, softmax and activations are left out: they are memory-bound and small.
"""

from __future__ import annotations

import time

import torch

PATCH = 14

#: Nominal dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets,
#: matched in order against ``torch.cuda.get_device_name()``: the first substring found wins.
GPU_BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def vision_flops(width: int, depth: int, mlp_hidden: int, image_size: int, batch: int, swiglu: bool = False) -> int:
    """Matmul FLOPs of one vision-tower forward.

    Args:
        width, depth, mlp_hidden: the tower's ``D``, number of blocks and MLP hidden size ``M``.
        image_size: square input side in pixels (a multiple of 14).
        batch: images ``B``.
        swiglu: g/14's gated MLP (three ``D x M`` matmuls instead of two).
    Returns:
        FLOPs (2 per multiply-add) for the whole batch.
    """
    n = (image_size // PATCH) ** 2
    t = n + 2
    d = width
    patch_embed = n * 3 * PATCH * PATCH * d
    block = t * d * 3 * d + t * d * d + (3 if swiglu else 2) * t * d * mlp_hidden + 2 * t * t * d
    return 2 * batch * (patch_embed + depth * block)


def text_flops(width: int, depth: int, mlp_hidden: int, lengths: list[int]) -> int:
    """Matmul FLOPs of the text tower over batches of sentences.

    Args:
        width, depth, mlp_hidden: the tower's ``D``, number of blocks and MLP hidden size ``M``.
        lengths: one entry per sentence: the tokens ``L`` it is run with, i.e. its forward batch's
            length after the padding columns are cut (the batch's longest sentence).
    Returns:
        FLOPs (2 per multiply-add).
    """
    d = width
    per_sentence = (lambda length: depth * (length * d * 3 * d + length * d * d + 2 * length * d * mlp_hidden
                                            + 2 * length * length * d))
    return 2 * sum(per_sentence(length) for length in lengths)


def matmul_throughput(dtype: torch.dtype, device: torch.device | str = "cpu", sizes: tuple[int, ...] = (1024, 2048),
                      repeats: int = 3) -> dict:
    """Best GFLOP/s of square ``(n x n) @ (n x n)`` matmuls, ``torch.mm``, in ``dtype`` on ``device``.

    Args:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        device: where to run (CUDA calls are synchronised around each timing).
        sizes: the sides ``n`` tried.
        repeats: timed calls per size after one warm-up; the fastest counts.
    Returns:
        ``{"gflops": best over sizes, "by_size": {n: GFLOP/s}}``.
    """
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    by_size = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device, dtype)
        b = torch.randn(n, n, generator=gen).to(device, dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        with torch.inference_mode():
            torch.mm(a, b, out=out)
            best = float("inf")
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                torch.mm(a, b, out=out)
                sync()
                best = min(best, time.perf_counter() - start)
        by_size[n] = 2 * n ** 3 / best / 1e9
        del a, b, out
    return {"gflops": max(by_size.values()), "by_size": by_size}


def gpu_peak_tflops(name: str, override: float | None = None) -> float | None:
    """Nominal dense bf16 peak of a GPU from its name, or ``override`` when given.

    Args:
        name: ``torch.cuda.get_device_name()``, e.g. ``"NVIDIA H100 80GB HBM3"``.
        override: a peak the user knows (``--peak-tflops``); wins over the table.
    Returns:
        TFLOP/s, or None for a GPU not in :data:`GPU_BF16_PEAK_TFLOPS` without an override.
    """
    if override is not None:
        return float(override)
    for needle, peak in GPU_BF16_PEAK_TFLOPS:
        if needle.lower() in name.lower():
            return peak
    return None
