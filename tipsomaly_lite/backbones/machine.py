"""What this machine computes fast: its CPU flags, whether bf16 pays, and which bf16 attention to run.

Two choices depend on the machine rather than on the method, and both are recorded where a result is:

- ``dtype="auto"`` (:func:`resolve_dtype`): bf16 where the CPU has bf16 matrix instructions
  (``amx_bf16`` or ``avx512_bf16``) or the GPU supports bf16, else float32. float32 stays the default
  everywhere, for exact reproduction.
- the attention of the TIPS vision tower in bf16 on the CPU (:func:`bf16_attention`): PyTorch's
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
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ATTENTION_ENV", "ATTENTION_PATHS", "AttentionChoice", "cpu_flags", "fast_bf16", "resolve_dtype",
           "bf16_attention", "attention_choice", "DTYPE_CHOICES"]

#: Environment variable that forces the CPU bf16 attention path: ``sdpa``, ``chunked`` or ``auto`` (the default).
ATTENTION_ENV = "TIPSOMALY_ATTENTION"
ATTENTION_PATHS = ("sdpa", "chunked")
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
    from tipsomaly_lite.backbones.tips.vision import chunked_attention

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
    """The attention path for bf16 on this CPU (see the module's docstring), chosen once per process.

    Raises:
        ValueError: ``TIPSOMALY_ATTENTION`` holds something other than sdpa, chunked or auto.
    """
    forced = _forced()
    if forced:
        return AttentionChoice(forced, f"forced by {ATTENTION_ENV}")
    flags = cpu_flags()
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
