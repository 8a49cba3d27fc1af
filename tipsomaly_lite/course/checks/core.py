"""The machinery of the self-checks: print ✅/❌, raise in CI, compare numbers and functions.

Help is graded, so that a student is not handed the answer by running an untouched exercise:

1. every failure says *what* is wrong: the shape, the type, where the first mismatch is;
2. ``checks.hint("text_positions")`` gives a hint (shown by itself after :data:`HINT_AFTER`
   failures of the same exercise);
3. ``checks.solution("text_positions")`` shows a worked solution, only when asked.

An exercise's check is a function decorated with :func:`exercise`, which registers its hint, the
package function it is checked against and its worked solution (:func:`exercises` lists them all:
the tests run every check on its solution, and ``tipsomaly grade`` reads which exercises a notebook has).

Checks are fair about types: where a number is asked, any one number passes (a Python, NumPy or torch
scalar, a 0-d array or tensor of any float dtype), compared within what its dtype can hold; a list
where a tensor or a number is asked is a ❌ that says so.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["STRICT_ENV", "HINT_AFTER", "CheckFailed", "strict", "report", "check_close", "check_function",
           "check_true", "check_in_range", "random_inputs", "exercise", "hint", "solution", "as_number",
           "UNANSWERED", "Exercise", "exercises", "GRADE_LOG_ENV", "resolution", "precision_of"]

STRICT_ENV = "TIPSOMALY_STRICT_CHECKS"
#: The hint shows by itself from this failure of the same exercise on (before: on request).
HINT_AFTER = 3
#: The last line of every failure whose answer is None or ``...`` (an untouched exercise).
UNANSWERED = "the answer is None (is the exercise still `...`?)"
#: When set, every exercise's verdict is also appended to this file as one JSON line (``tipsomaly grade``).
GRADE_LOG_ENV = "TIPSOMALY_GRADE_LOG"


@dataclass(frozen=True)
class Exercise:
    """One registered exercise.

    Attributes:
        key: the check's name (``checks.<key>(...)``).
        hint: the nudge (never the answer's code).
        reference: the package function it is checked against (or its dotted path), or None for a
            check of a property.
        worked: a worked solution with the signature the student writes (or its dotted path); None
            means ``reference`` has that signature and is the worked solution.
        check: the check itself.
        notebook: the two-digit number of the notebook that asks it (from ``checks/nbNN.py``), or "".
    """
    key: str
    hint: str
    reference: Callable[..., Any] | str | None
    worked: Callable[..., Any] | str | None = None
    check: Callable[..., bool] | None = None
    notebook: str = ""

    def solution_function(self) -> Callable[..., Any] | None:
        """The worked solution as a function (imported on first use), or None when there is none."""
        return resolution(self.worked if self.worked is not None else self.reference)


_Exercise = Exercise  # the name the tests of earlier releases use
_EXERCISES: dict[str, Exercise] = {}
_FAILURES: dict[str, int] = {}
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("tipsomaly_exercise", default=None)


def exercise(hint: str, reference: Callable[..., Any] | str | None = None, *,
             solution: Callable[..., Any] | str | None = None) -> Callable[[Callable], Callable]:
    """Register a check function as an exercise, under its function name, with its hint.

    Args:
        hint: what to look at; a nudge, never the code of the answer.
        reference: the package's implementation of the step (a function, or its dotted path,
            imported only when :func:`solution` is asked for).
        solution: a worked solution with the signature the student writes; leave it out only when
            ``reference`` has that signature (a test runs every check on its worked solution).
    Returns:
        A decorator; while the check runs, :func:`report` knows which exercise it reports on.
    """
    def wrap(check: Callable) -> Callable:
        key = check.__name__
        module = check.__module__.rsplit(".", 1)[-1]
        notebook = module[2:] if module.startswith("nb") and module[2:].isdigit() else ""

        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> Any:
            token = _CURRENT.set(key)
            try:
                return check(*args, **kwargs)
            finally:
                _CURRENT.reset(token)
        _EXERCISES[key] = Exercise(key, hint, reference, solution, run, notebook)
        return run
    return wrap


def exercises(notebook: str | None = None) -> dict[str, Exercise]:
    """Every registered exercise by name, in the order they were registered (notebook by notebook).

    Args:
        notebook: only this notebook's (two digits, e.g. ``"07"``).
    """
    return {k: e for k, e in _EXERCISES.items() if notebook is None or e.notebook == notebook}


def resolution(ref: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
    """A function given as itself or as a dotted path (``"pkg.module.Class.method"``), imported now."""
    if not isinstance(ref, str):
        return ref
    import importlib

    parts = ref.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {ref}")


def _lookup(name: Any) -> _Exercise:
    key = getattr(name, "__name__", name)
    if key not in _EXERCISES:
        raise KeyError(f"checks.hint: no exercise named {key!r}; one of {sorted(_EXERCISES)}")
    return _EXERCISES[key]


def hint(name: str | Callable) -> None:
    """Print the hint of an exercise, e.g. ``checks.hint("text_positions")`` (nothing returned: shown once).

    Args:
        name: the check's name, or the check itself (``checks.hint(checks.text_positions)``).
    Raises:
        KeyError: no exercise has that name (the message lists them).
    Taught in notebooks/00_setup.ipynb.
    """
    ex = _lookup(name)
    has_solution = ex.worked is not None or ex.reference is not None
    more = f'\n   (still stuck? checks.solution("{ex.key}") shows a worked solution)' if has_solution else ""
    print(f"💡 {ex.key}: {ex.hint}{more}")


def solution(name: str | Callable) -> None:
    """Print a worked solution of an exercise, and name the package function it is checked against.

    Only for when you have tried: reading it after writing your own is how to learn from it.

    Args:
        name: the check's name, or the check itself.
    """
    ex = _lookup(name)
    worked = ex.solution_function()
    ref = resolution(ex.reference)
    lines = []
    if worked is not None:
        lines.append(f"# A worked solution of checks.{ex.key} ({worked.__module__}.{worked.__qualname__}); "
                     "yours may differ and still pass")
        lines.append(inspect.getsource(worked).rstrip())
    if ref is None:
        lines.append(f"# checks.{ex.key} checks a property, not one reference function: see its docstring "
                     f"(help(checks.{ex.key}))")
    elif ref is not worked:
        lines.append(f"# checked against the package's {ref.__module__}.{ref.__qualname__} "
                     f"(read it: help or inspect.getsource)")
    print("\n".join(lines))


def as_number(value: Any) -> float | None:
    """``value`` as a Python float when it is one number (Python, NumPy or torch; 0-d or one element).

    Returns:
        The float, or None when ``value`` is not a single number (None, text, several values...).
    """
    if value is None or isinstance(value, (str, bytes, list, tuple, dict)):
        return None  # a list is not one number, even with one element: say so rather than guess
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, RuntimeError):
        return None
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def precision_of(value: Any) -> float:
    """The relative precision (machine epsilon) of ``value``'s dtype: what a correct answer may be off by.

    ``2.2e-16`` for a Python float or float64, ``1.2e-7`` for float32, ``7.8e-3`` for bfloat16, 0 for
    integers (exact), and float64's for anything else.
    """
    if isinstance(value, bool | int | np.integer):
        return 0.0
    dtype = getattr(value, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return float(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0
    if dtype is not None:
        np_dtype = np.dtype(dtype)
        if np_dtype.kind == "f":
            return float(np.finfo(np_dtype).eps)
        if np_dtype.kind in "biu":
            return 0.0
    return float(np.finfo(np.float64).eps)


def _a_list(got: Any, expected: Any) -> str:
    """Why a list or tuple is not accepted where ``expected`` is a tensor, an array or a number ("" if it is)."""
    if not isinstance(got, (list, tuple)) or isinstance(expected, (list, tuple)):
        return ""
    if isinstance(expected, torch.Tensor) and expected.dim() > 0:
        return (f"a Python {type(got).__name__}, where a tensor of shape {tuple(expected.shape)} is expected: "
                "build it with torch operations (or torch.stack / torch.tensor)")
    if isinstance(expected, np.ndarray) and expected.ndim > 0:
        return (f"a Python {type(got).__name__}, where an array of shape {expected.shape} is expected "
                "(np.asarray makes one)")
    return f"a Python {type(got).__name__}, where one number is expected"


class CheckFailed(AssertionError):
    """A self-check failed while checks are strict (in CI)."""


def strict() -> bool:
    """True when a failed check must raise: in CI or with ``TIPSOMALY_STRICT_CHECKS=1``."""
    def on(name: str) -> bool:
        return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
    return on(STRICT_ENV) or on("CI")


def _short(value: Any, limit: int = 300, around: int | None = None) -> str:
    """A tensor or array as ``tensor(shape) dtype: [values]``: six values from the start, or around
    the flat index ``around`` (the first mismatch), with that value marked ``>x<``."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        flat = value.flatten()
        lo = 0 if around is None else max(0, around - 2)
        hi = min(flat.numel(), lo + 6)
        values = [f"{v:.6g}" if isinstance(v, float) else repr(v) for v in flat[lo:hi].tolist()]
        shown = [f">{v}<" if lo + j == around else v for j, v in enumerate(values)]
        text = (f"tensor{tuple(value.shape)} {value.dtype}: [" + ("…, " if lo else "") + ", ".join(shown)
                + (", …]" if hi < flat.numel() else "]"))
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _unanswered(value: Any) -> bool:
    return value is None or value is Ellipsis


def report(name: str, passed: bool, expected: Any = None, got: Any = None, hint: str = "", *,
           around: int | None = None) -> bool:
    """Print ✅/❌ for one check; raise :class:`CheckFailed` on failure when :func:`strict`.

    Inside an :func:`exercise`, a failure also points at ``checks.hint(...)``, and shows the hint
    itself from the :data:`HINT_AFTER`-th failure of that exercise on. An answer that is None or
    ``...`` always ends with the :data:`UNANSWERED` line.

    Args:
        name: what was checked, shown to the student.
        passed: the verdict.
        expected, got: shown on failure (tensors are abbreviated around ``around``).
        hint: shown on failure: what is wrong or where to look (never the answer's code).
        around: flat index of the first mismatch, for the abbreviated tensors.
    Returns:
        ``passed``.
    """
    if passed:
        print(f"✅ {name}")
        if _CURRENT.get() is not None:
            _grade_log(_CURRENT.get(), True, False, "")
        return True
    lines = [f"❌ {name}", f"   expected: {_short(expected, around=around)}",
             f"   got:      {_short(got, around=around)}"]
    if hint and UNANSWERED not in hint:
        lines.append(f"   wrong:    {hint}")
    key = _CURRENT.get()
    unanswered = _unanswered(got) or UNANSWERED in hint
    if key is not None:
        _grade_log(key, False, unanswered, lines[0])
        if not unanswered:  # an untouched exercise is not an attempt
            _FAILURES[key] = _FAILURES.get(key, 0) + 1
        if _FAILURES.get(key, 0) >= HINT_AFTER:
            lines.append(f"   hint:     {_EXERCISES[key].hint}")
        else:
            lines.append(f'   stuck?    checks.hint("{key}") gives a hint')
    if unanswered:
        lines.append(f"   {UNANSWERED}")
    message = "\n".join(lines)
    print(message)
    if strict():
        raise CheckFailed(message)
    return False


def _grade_log(key: str, passed: bool, unanswered: bool, what: str) -> None:
    """Append one verdict to the file :data:`GRADE_LOG_ENV` names, when it is set (``tipsomaly grade``)."""
    path = os.environ.get(GRADE_LOG_ENV)
    if not path:
        return
    import json

    record = {"exercise": key, "passed": passed, "answered": not unanswered, "what": what[:200]}
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError:
        pass  # grading is a teacher's aid: a student's run never fails for it


def _as_float64(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double()
    return torch.from_numpy(np.array(value, dtype=np.float64))


def _close(got: Any, expected: Any, atol: float, rtol: float) -> tuple[bool, str, int | None]:
    """Compare numbers, tensors and arrays of any numeric type; ``(ok, reason, first mismatch)``.

    One number may come as a Python, NumPy or torch scalar, or a 0-d / one-element array or tensor.
    The mismatch is a flat index into ``expected`` (None when there is none or shapes differ).
    """
    if _unanswered(got):
        return False, UNANSWERED, None
    listed = _a_list(got, expected)
    if listed:
        return False, listed, None
    # A correct answer computed in a lower precision (float32, bfloat16) is off by what its dtype can hold.
    eps = precision_of(got)
    atol, rtol = max(atol, 8 * eps), max(rtol, 8 * eps)
    try:
        g, e = _as_float64(got), _as_float64(expected)
    except (TypeError, ValueError, RuntimeError) as err:
        return False, f"not a number or tensor ({type(got).__name__}: {err})", None
    if e.numel() == 1 and g.numel() == 1:
        g, e = g.reshape(()), e.reshape(())
    if g.shape != e.shape:
        return False, f"shape {tuple(g.shape)}, expected {tuple(e.shape)}", None
    bad = ~torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
    if not bad.any():
        return True, "", None
    first = int(bad.flatten().nonzero()[0, 0])
    where = ""
    if e.dim() > 0:
        index = np.unravel_index(first, tuple(e.shape))
        where = f" at index {list(int(i) for i in index)}"
    e_at, g_at = float(e.flatten()[first]), float(g.flatten()[first])
    nan_note = " (NaN where a number was expected, or the reverse)" if math.isnan(e_at) != math.isnan(g_at) else ""
    diff = (g - e).abs()
    largest = float(diff[~torch.isnan(diff)].max()) if (~torch.isnan(diff)).any() else float("nan")
    return False, (f"first mismatch{where}: expected {e_at:.6g}, got {g_at:.6g}{nan_note}; "
                   f"{int(bad.sum())} of {e.numel()} values differ, largest difference {largest:.3g}"), first


def check_close(name: str, got: Any, expected: Any, *, atol: float = 1e-5, rtol: float = 1e-4,
                hint: str = "") -> bool:
    """✅ when ``got`` equals ``expected`` within tolerance (same shape, NaN where NaN; any numeric type)."""
    ok, why, first = _close(got, expected, atol, rtol)
    return report(name, ok, expected, got, "; ".join(x for x in (why, hint) if x), around=first)


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
        ok, why, first = _close(got, expected, atol, rtol)
        if not ok:
            return report(name, False, expected, got, "; ".join(x for x in (f"input {i}: {why}", hint) if x),
                          around=first)
    return report(name, True)


def check_true(name: str, condition: bool, expected: str, got: Any, hint: str = "") -> bool:
    """✅ when ``condition`` holds; ``expected`` says in words what should hold."""
    return report(name, bool(condition), expected, got, hint)


def check_in_range(name: str, got: Any, low: float, high: float, hint: str = "") -> bool:
    """✅ when ``low <= got <= high`` (a finite number)."""
    value = as_number(got)
    if value is None:
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
