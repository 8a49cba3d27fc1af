"""The TIPS vision tower: a DINOv2-style ViT/14 with one register token used as a second CLS.

Parameter names equal the official npz names (``blocks.3.attn.qkv.weight`` ...), so a
checkpoint loads with a plain, strict ``load_state_dict``.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tipsomaly_lite.backbones.machine as machine
from tipsomaly_lite.backbones.tips.checkpoints import PATCH_SIZE, Architecture

VISION_LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """``Conv2d(3, D, 14, stride 14)``: image ``(B,3,H,W)`` -> tokens ``(B, N, D)``, row-major."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


# Rows of attention scores computed at once on the CPU bf16 path: at most 512 query rows x ~1k keys
# of bf16 is <= 1 MiB, which stays in a core's L2 cache between the two matmuls (measured: 256-512
# rows per step were fastest for B/14 at 448 px; a whole head at once was ~2x slower).
_CHUNK_ROWS = 512


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for every batch and head (docs/method.md §1.3).

    Args:
        q, k, v: ``(B, heads, N, head_dim)``.
    Returns:
        ``(B, heads, N, head_dim)``, in the inputs' dtype.

    The one switch between two ways of computing the same thing, chosen per machine by
    :func:`attention_choice`: ``F.scaled_dot_product_attention``
    (float32, CUDA, and bf16 on a CPU with AMX, where it runs oneDNN's AMX kernels) or
    :func:`chunked_attention` (bf16 on a CPU without AMX when a short measurement finds it faster:
    it was about twice as fast as SDPA on an idle 2-core AMD EPYC with avx512_bf16, but it makes
    thousands of small calls per image and suffers most when the CPU is shared).
    ``TIPSOMALY_ATTENTION=sdpa|chunked`` forces one. A test checks that the two agree.
    """
    if attention_choice(q.device, q.dtype).path == "chunked":
        return chunked_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, rows: int = _CHUNK_ROWS) -> Tensor:
    """The written attention, ``softmax(q k^T / sqrt(d)) v``, a few hundred query rows at a time.

    Args:
        q, k, v: ``(B, heads, N, head_dim)``.
        rows: query rows per step (a step covers whole (batch, head) slices when ``N < rows``);
            each step holds ``rows x N`` scores.
    Returns:
        ``(B, heads, N, head_dim)``, written step by step into one preallocated tensor.
    """
    b, h, n, hd = q.shape
    # (batch, head) pairs are independent: flatten them so that a step may span heads and images.
    qs, ks, vs = ((q * hd ** -0.5).reshape(b * h, n, hd), k.reshape(b * h, n, hd), v.reshape(b * h, n, hd))
    out = q.new_empty(b * h, n, hd)
    if n >= rows:  # long sequences: equal steps of rows (1026 tokens: 3 x 342, not 512 + 512 + 2)
        step, slices = math.ceil(n / math.ceil(n / rows)), 1
    else:  # short ones: several whole (batch, head) slices per step
        step, slices = n, rows // n
    for s in range(0, b * h, slices):
        for r in range(0, n, step):
            scores = torch.matmul(qs[s:s + slices, r:r + step], ks[s:s + slices].transpose(1, 2))
            # A slice assignment, not ``out=``: autograd can follow it (gradients w.r.t. images work).
            out[s:s + slices, r:r + step] = torch.matmul(scores.softmax(dim=-1), vs[s:s + slices])
    return out.view(b, h, n, hd)


# --- which of the two paths runs: chosen per machine, once per process ----------------------------

#: Environment variable that forces the CPU bf16 attention path: ``sdpa``, ``chunked`` or ``auto`` (the default).
ATTENTION_ENV = "TIPSOMALY_ATTENTION"
ATTENTION_PATHS = ("sdpa", "chunked")


@dataclass(frozen=True)
class AttentionChoice:
    """Which attention runs and why.

    Attributes:
        path: ``"sdpa"`` or ``"chunked"``.
        reason: a sentence for reports (``"amx_bf16: oneDNN's AMX kernels"``, ``"measured: ..."``).
    """

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


def _forced() -> str | None:
    value = os.environ.get(ATTENTION_ENV, "auto").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ATTENTION_PATHS:
        raise ValueError(f"{ATTENTION_ENV}={value!r}: expected one of {', '.join(ATTENTION_PATHS)} or auto")
    return value


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


@functools.lru_cache(maxsize=None)
def _measured_choice() -> AttentionChoice:
    """Time both paths on one B/14 attention call at 448 px (12 heads, 1,026 tokens), interleaved.

    The probe has the real call's shape on purpose: the chunked path's cost is its many small calls,
    which a smaller probe would not show. Up to 3 rounds after a warm-up; it stops after the first
    round when one path is more than 1.5x faster (about 0.1 s on an idle 2-core CPU, a few seconds on
    a crowded one, where the answer matters most).
    """
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 1026, 64, generator=gen).to(torch.bfloat16) for _ in range(3))
    paths = {"sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
             "chunked": lambda: chunked_attention(q, k, v)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for fn in paths.values():  # warm-up: first calls pay for oneDNN's kernel creation
            fn()
        for _ in range(3):  # interleaved, so that a busy machine slows both alike
            for name, fn in paths.items():
                times[name].append(_ms(fn))
            ms = {name: statistics.median(t) for name, t in times.items()}
            if max(ms.values()) > 1.5 * min(ms.values()):
                break
    path = min(ms, key=ms.get)
    return AttentionChoice(path, f"measured on this CPU without amx_bf16: sdpa {ms['sdpa']:.0f} ms, "
                                 f"chunked {ms['chunked']:.0f} ms per B/14 attention call")


def bf16_attention() -> AttentionChoice:
    """The attention path for bf16 on this CPU, chosen once per process (why: see :func:`attention`).

    Raises:
        ValueError: ``TIPSOMALY_ATTENTION`` holds something other than sdpa, chunked or auto.
    """
    forced = _forced()
    if forced:
        return AttentionChoice(forced, f"forced by {ATTENTION_ENV}")
    flags = machine.cpu_flags()
    if flags is not None and "amx_bf16" in flags:
        return AttentionChoice("sdpa", "amx_bf16: SDPA runs oneDNN's AMX kernels")
    return _measured_choice()


def attention_choice(device: str | torch.device, dtype: torch.dtype) -> AttentionChoice:
    """The attention the TIPS vision tower runs for tensors on ``device`` in ``dtype``.

    float32 anywhere and every dtype on CUDA: ``sdpa`` (fused kernels); bf16 on the CPU:
    :func:`bf16_attention` (the only case ``TIPSOMALY_ATTENTION`` changes).
    """
    kind = torch.device(device).type
    if kind == "cpu" and dtype == torch.bfloat16:
        return bf16_attention()
    return AttentionChoice("sdpa", f"{str(dtype).removeprefix('torch.')} on {kind}: fused kernels")


class Attention(nn.Module):
    """Multi-head self-attention with a packed qkv projection (q, k, v consecutive row blocks)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # (B, N, 3D) -> (3, B, heads, N, head_dim): heads are contiguous inside each q/k/v block.
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with the exact (erf) GELU."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """g/14's MLP: ``w12`` output split in halves ``x1, x2``; ``w3(silu(x1) * x2)``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` on a residual branch."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block: ``x += ls1 * attn(norm1(x))``; ``x += ls2 * mlp(norm2(x))``."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        d = arch.width
        self.norm1 = nn.LayerNorm(d, eps=VISION_LN_EPS)
        self.attn = Attention(d, arch.heads)
        self.ls1 = LayerScale(d)
        self.norm2 = nn.LayerNorm(d, eps=VISION_LN_EPS)
        self.mlp = SwiGLU(d, arch.mlp_hidden) if arch.swiglu else Mlp(d, arch.mlp_hidden)
        self.ls2 = LayerScale(d)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resize_pos_embed(pos_embed: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Resize the patch part of ``pos_embed`` ``(1, 1+G*G, D)`` to a ``gh x gw`` grid.

    Bilinear with antialias, to the exact target grid (no scale-factor offset), in fp32; the
    CLS entry is kept as it is. Returns ``(1, 1+gh*gw, D)`` in the input dtype.

    448 -> 518 px is a 32 -> 37 grid, as in the Tipsomaly paper.

    Taught in notebooks/01_loading_tips.ipynb.
    """
    n = pos_embed.shape[1] - 1
    g = math.isqrt(int(n))
    if (g, g) == tuple(grid_hw):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    d = pos_embed.shape[-1]
    grid = patch_pos.reshape(1, g, g, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(grid_hw), mode="bilinear", align_corners=False, antialias=True)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, -1, d).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class VisionTower(nn.Module):
    """TIPS image encoder.

    ``forward(images (B,3,H,W) in [0,1])`` returns the normed sequence ``(B, 2+N, D)``:
    ``[cls1, cls2, patch_0 ... patch_{N-1}]`` with ``N = (H/14)(W/14)`` in row-major order.
    No mean/std normalisation and no projection head.

    Taught in notebooks/01_loading_tips.ipynb.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        d = arch.width
        self.arch = arch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # pre-training only; kept for the layout
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + arch.grid * arch.grid, d))
        self.patch_embed = PatchEmbed(d)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(d, eps=VISION_LN_EPS)

    def forward(self, images: Tensor) -> Tensor:
        b, c, h, w = images.shape
        if c != 3:
            raise ValueError(f"images: expected 3 channels (B,3,H,W), got shape {tuple(images.shape)}")
        if h % PATCH_SIZE or w % PATCH_SIZE:
            raise ValueError(
                f"images: height and width must be multiples of {PATCH_SIZE}, got {h}x{w} "
                f"(e.g. 448 native, 518 in the Tipsomaly paper)")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, (h // PATCH_SIZE, w // PATCH_SIZE))
        # The register token joins after the position embeddings, so it never gets one.
        x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
