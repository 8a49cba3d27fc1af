"""What this machine computes fast: its CPU flags, whether bf16 pays here, and `dtype="auto"`.

Two choices depend on the machine rather than on the method; both are recorded where a result is:

- ``dtype="auto"`` (:func:`resolve_dtype`): bf16 where the CPU has bf16 matrix instructions
  (``amx_bf16`` or ``avx512_bf16``) or the GPU supports bf16, else float32. float32 stays the default
  everywhere, for exact reproduction.
- the attention of the TIPS vision tower in bf16 on the CPU
  (:func:`tipsomaly_lite.backbones.tips.vision.bf16_attention`, the one switch, kept beside the two
  paths it chooses between): PyTorch's
  ``scaled_dot_product_attention`` ("sdpa"), which runs oneDNN's AMX kernels on a CPU with
  ``amx_bf16``, or the written attention a few hundred query rows at a time ("chunked"), which was
  faster on an idle avx512_bf16 CPU without AMX but makes thousands of small calls per image and
  slows down most when other processes share the CPU. With AMX the answer is sdpa; without, a short
  measurement of one B/14 attention call each (once per process, a fraction of a second on an idle
  CPU) decides. ``TIPSOMALY_ATTENTION=sdpa`` or ``chunked`` overrides both; float32 and CUDA
  always use sdpa (the variable does not change them).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["cpu_flags", "fast_bf16", "resolve_dtype", "DTYPE_CHOICES"]
#: What ``dtype=`` accepts at the loaders' front door (``auto`` is resolved by :func:`resolve_dtype`).
DTYPE_CHOICES = ("fp32", "bf16", "auto")
# The CPU flags (as Linux names them) of bf16 matrix instructions.
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def _read_flags(path: str) -> frozenset[str] | None:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return None


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags as Linux lists them (``amx_bf16``, ``avx512_bf16``...); None where unknown.

    Args:
        path: the cpuinfo file (a test may point elsewhere).
    Returns:
        The flags of the first CPU, or None when the file is missing or has no flags line (macOS, Windows).
    """
    return _read_flags(str(path))


def _cpu_bf16_reason() -> tuple[bool, str]:
    flags = cpu_flags()
    if flags is not None:
        found = [f for f in _BF16_FLAGS if f in flags]
        return (True, f"the CPU has {' and '.join(found)}") if found else (
            False, "the CPU has no bf16 matrix instructions (neither amx_bf16 nor avx512_bf16)")
    from tipsomaly_lite.backbones.base import cpu_has_bf16

    has = cpu_has_bf16()  # no flags to read: ask oneDNN
    return has, f"oneDNN reports {'' if has else 'no '}bf16 support (CPU flags unreadable)"


def fast_bf16(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether bf16 is faster than float32 on ``device``, and why, in words.

    CPU: the ``amx_bf16`` or ``avx512_bf16`` flag (oneDNN's answer where the flags cannot be read).
    CUDA: ``torch.cuda.is_bf16_supported()``. Anything else: no.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return _cpu_bf16_reason()
    if kind == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return ok, f"the GPU {'supports' if ok else 'does not support'} bf16"
    return False, f"bf16 speed on {kind} is not known here"


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> tuple[str | torch.dtype, str]:
    """Turn ``"auto"`` into ``"bf16"`` or ``"fp32"`` for ``device``; any other value passes unchanged.

    Args:
        dtype: ``"auto"``, or what :func:`~tipsomaly_lite.backbones.base.vision_dtype` takes.
        device: where the model will run.
    Returns:
        ``(dtype, why)``: the dtype to load with and a sentence saying why (``"asked"`` when not auto).

    >>> resolve_dtype("fp32")
    ('fp32', 'asked')
    """
    if not (isinstance(dtype, str) and dtype == "auto"):
        return dtype, "asked"
    fast, why = fast_bf16(device)
    return ("bf16" if fast else "fp32"), f"auto: {why}"
