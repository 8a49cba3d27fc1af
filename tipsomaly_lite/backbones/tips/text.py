"""The TIPS text tower and its SentencePiece tokenizer.

Lower-cased text -> SentencePiece ids (no BOS/EOS, padded with 0 / cut to 64) -> embeddings
scaled by sqrt(D) plus fixed sinusoidal positions -> pre-LN transformer blocks with padded
keys masked -> ``ln_final`` -> mean over the real (non-padded) positions. No projection.

Taught in notebooks/01_loading_tips.ipynb.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tipsomaly_lite.backbones.tips.checkpoints import TEXT_MAX_LEN, Architecture

TEXT_LN_EPS = 1e-5
PAD_ID = 0


class Tokenizer:
    """SentencePiece tokenizer as TIPS uses it.

    ``tokenizer(["a photo of a cat"])`` returns ``ids (T, 64)`` long and ``padding (T, 64)``
    bool, True where a position is padding (position >= the sentence's length).

    Raises:
        FileNotFoundError: the tokenizer model is missing (names the path and how to get it).
    Taught in notebooks/01_loading_tips.ipynb.
    """

    def __init__(self, model_path: str | os.PathLike, max_len: int = TEXT_MAX_LEN) -> None:
        import sentencepiece as spm

        self.path = Path(model_path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"tokenizer model not found: {self.path}. TIPS uses one SentencePiece model for all "
                "variants (v1_0/checkpoints/tokenizer.model on the TIPS bucket); fetch it with "
                "`tipsomaly fetch VARIANT` or pass tokenizer=PATH")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as exc:
            raise ValueError(f"{self.path}: not a SentencePiece model: {exc}") from exc
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Ids of one lower-cased sentence, no BOS/EOS, not padded or cut."""
        return self.sp.encode(text.lower(), add_bos=False, add_eos=False)

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.full((len(texts), self.max_len), PAD_ID, dtype=torch.long)
        lengths = torch.zeros(len(texts), dtype=torch.long)
        for i, text in enumerate(texts):
            pieces = self.encode(text)[: self.max_len]
            if not pieces:
                raise ValueError(f"texts[{i}] = {text!r} has no tokens; an empty prompt cannot be encoded")
            ids[i, : len(pieces)] = torch.tensor(pieces)
            lengths[i] = len(pieces)
        padding = torch.arange(self.max_len)[None, :] >= lengths[:, None]
        return ids, padding

    def __repr__(self) -> str:
        return f"Tokenizer({self.path.name}, vocab={self.vocab_size}, max_len={self.max_len})"


def sinusoidal_positions(length: int, width: int) -> Tensor:
    """``(length, width)`` fixed positions: all sines, then all cosines.

    ``n = width/2``, ``inv = exp(-arange(n) * ln(10000)/(n-1))``, row ``p`` is
    ``[sin(p*inv), cos(p*inv)]``.

    Taught in notebooks/01_loading_tips.ipynb.
    """
    n = width // 2
    inv = torch.exp(-torch.arange(n, dtype=torch.float32) * (math.log(10000.0) / (n - 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TokenEmbedding(nn.Embedding):
    """``nn.Embedding`` that skips its random initialisation on the meta device.

    The loaders build the towers on the meta device and adopt the checkpoint's tensors, so any
    initialisation there is thrown away; for an embedding it is not even free: ``normal_`` on a meta
    tensor goes through PyTorch's reference implementation, whose first use imports ``torch._dynamo``
    (about 1 s of every start-up). On a real device it initialises as ``nn.Embedding`` does.
    """

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class TextAttention(nn.Module):
    """Bidirectional multi-head attention, padded keys masked, packed ``in_proj`` like ``nn.MultiheadAttention``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x ``(T, L, D)``; keep ``(T, 1, 1, L)`` bool, True for real keys."""
        t, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(t, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return self.out_proj(out.transpose(1, 2).reshape(t, n, d))


class TextMlp(nn.Module):
    """``c_proj(relu(c_fc(x)))``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.relu(self.c_fc(x)))


class ResidualBlock(nn.Module):
    """Pre-LN: ``x += attn(ln_1(x))``; ``x += mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=TEXT_LN_EPS)
        self.attn = TextAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=TEXT_LN_EPS)
        self.mlp = TextMlp(width, hidden)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), keep)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualBlock(arch.text_width, arch.heads, arch.text_mlp) for _ in range(arch.text_depth))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x, keep)
        return x


class TextTower(nn.Module):
    """TIPS text encoder: ``forward(ids (T,L), padding (T,L)) -> (T, D)``, unnormalised.

    Split in two steps so that learnable prompt vectors can be inserted between them
    (notebook 04): :meth:`embed_tokens` (ids -> sqrt(D)-scaled embeddings) and
    :meth:`encode_embeddings` (positions, blocks, final norm, masked mean).

    Taught in notebooks/01_loading_tips.ipynb.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.token_embedding = TokenEmbedding(arch.vocab, arch.text_width)
        self.transformer = Transformer(arch)
        self.ln_final = nn.LayerNorm(arch.text_width, eps=TEXT_LN_EPS)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """ids ``(T, L)`` -> ``(T, L, D)`` token embeddings times sqrt(D)."""
        return self.token_embedding(ids) * math.sqrt(self.arch.text_width)

    def encode_embeddings(self, x: Tensor, padding: Tensor) -> Tensor:
        """x ``(T, L, D)`` scaled embeddings, padding ``(T, L)`` bool -> ``(T, D)`` sentence features."""
        t, n, d = x.shape
        x = x + sinusoidal_positions(n, d).to(device=x.device, dtype=x.dtype)
        keep = ~padding
        x = self.transformer(x, keep[:, None, None, :])
        x = self.ln_final(x)
        weights = keep.to(x.dtype)[..., None]
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def forward(self, ids: Tensor, padding: Tensor) -> Tensor:
        ids, padding = trim_padding(ids, padding)
        return self.encode_embeddings(self.embed_tokens(ids), padding)


def trim_padding(ids: Tensor, padding: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the columns after the longest sentence: ``(T, L)`` -> ``(T, L')``, at least one column.

    Padded keys are masked, positions are absolute and the mean skips padding, so those columns
    change nothing: cutting them is exact and ~1.4x faster.
    """
    longest = int((~padding).sum(dim=1).max()) if len(ids) else 0
    return ids[:, :max(longest, 1)], padding[:, :max(longest, 1)]
