"""The machinery of the self-checks: print ✅/❌, raise in CI, compare numbers and functions."""

from __future__ import annotations

import math
import os
import traceback
from typing import Any, Callable, Sequence

import torch

__all__ = ["STRICT_ENV", "CheckFailed", "strict", "report", "check_close", "check_function",
           "check_true", "check_in_range", "random_inputs"]

STRICT_ENV = "TIPSOMALY_STRICT_CHECKS"


class CheckFailed(AssertionError):
    """A self-check failed while checks are strict (in CI)."""


def strict() -> bool:
    """True when a failed check must raise: in CI or with ``TIPSOMALY_STRICT_CHECKS=1``."""
    def on(name: str) -> bool:
        return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
    return on(STRICT_ENV) or on("CI")


def _short(value: Any, limit: int = 300) -> str:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        text = f"tensor{tuple(value.shape)} {value.dtype}: " + repr(value.flatten()[:6].tolist())
        text = text[:-1] + (", …]" if value.numel() > 6 else "]")
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def report(name: str, passed: bool, expected: Any = None, got: Any = None, hint: str = "") -> bool:
    """Print ✅/❌ for one check; raise :class:`CheckFailed` on failure when :func:`strict`.

    Args:
        name: what was checked, shown to the student.
        passed: the verdict.
        expected, got: shown on failure (tensors are abbreviated).
        hint: shown on failure: where to look.
    Returns:
        ``passed``.
    """
    if passed:
        print(f"✅ {name}")
        return True
    lines = [f"❌ {name}", f"   expected: {_short(expected)}", f"   got:      {_short(got)}"]
    if hint:
        lines.append(f"   hint:     {hint}")
    message = "\n".join(lines)
    print(message)
    if strict():
        raise CheckFailed(message)
    return False


def _close(got: Any, expected: Any, atol: float, rtol: float) -> tuple[bool, str]:
    """Compare numbers, tensors and arrays; ``(ok, reason)``."""
    if got is None:
        return False, "the answer is None (is the exercise still `...`?)"
    try:
        g = torch.as_tensor(got, dtype=torch.float64) if not isinstance(got, torch.Tensor) else got.detach().double().cpu()
        e = torch.as_tensor(expected, dtype=torch.float64) if not isinstance(expected, torch.Tensor) \
            else expected.detach().double().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        return False, f"not a number or tensor ({err})"
    if g.shape != e.shape:
        return False, f"shape {tuple(g.shape)}, expected {tuple(e.shape)}"
    if torch.isnan(e).any() or torch.isnan(g).any():
        same = torch.equal(torch.isnan(g), torch.isnan(e))
        keep = ~torch.isnan(e)
        if not same:
            return False, "NaN where a number was expected (or the reverse)"
        g, e = g[keep], e[keep]
    ok = bool(torch.allclose(g, e, atol=atol, rtol=rtol))
    return ok, "" if ok else f"largest difference {float((g - e).abs().max()):.3g}"


def check_close(name: str, got: Any, expected: Any, *, atol: float = 1e-5, rtol: float = 1e-4,
                hint: str = "") -> bool:
    """✅ when ``got`` equals ``expected`` within tolerance (same shape, NaN where NaN)."""
    ok, why = _close(got, expected, atol, rtol)
    return report(name, ok, expected, got, "; ".join(x for x in (why, hint) if x))


def check_function(name: str, fn: Callable[..., Any], reference: Callable[..., Any],
                   inputs: Sequence[tuple], *, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "") -> bool:
    """Run a student's ``fn`` and the package's ``reference`` on each argument tuple; ✅ when all agree.

    An exception inside ``fn`` counts as a failure and is shown, never swallowed silently.
    """
    if not callable(fn):
        return report(name, False, "a function", fn, hint)
    for i, args in enumerate(inputs):
        expected = reference(*args)
        try:
            got = fn(*args)
        except Exception as err:  # noqa: BLE001 - the student's code may raise anything; show it
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            return report(name, False, expected, f"an exception on input {i}: {last}", hint)
        ok, why = _close(got, expected, atol, rtol)
        if not ok:
            return report(name, False, expected, got, "; ".join(x for x in (f"input {i}: {why}", hint) if x))
    return report(name, True)


def check_true(name: str, condition: bool, expected: str, got: Any, hint: str = "") -> bool:
    """✅ when ``condition`` holds; ``expected`` says in words what should hold."""
    return report(name, bool(condition), expected, got, hint)


def check_in_range(name: str, got: Any, low: float, high: float, hint: str = "") -> bool:
    """✅ when ``low <= got <= high`` (a finite number)."""
    try:
        value = float(got)
    except (TypeError, ValueError):
        return report(name, False, f"a number in [{low}, {high}]", got, hint)
    ok = math.isfinite(value) and low <= value <= high
    return report(name, ok, f"a number in [{low}, {high}]", got, hint)


def random_inputs(seed: int, *shapes: tuple[int, ...], normalize: bool = False) -> tuple[torch.Tensor, ...]:
    """Seeded float32 tensors of the given shapes (L2-normalised on the last axis when asked)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        x = torch.randn(*shape, generator=g)
        out.append(torch.nn.functional.normalize(x, dim=-1) if normalize else x)
    return tuple(out)
