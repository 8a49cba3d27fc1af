"""Every registered exercise (read from the registry, not a hand list) has a worked solution its own
check passes, in every numeric form a student may hand in: float32, float64, NumPy and torch scalars.

A check that fails a correct answer for its type (a float32 threshold, a 0-d tensor) is unfair; a
list where a tensor is asked must fail, and say so.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch

from tipsomaly_lite.course import checks
from tipsomaly_lite.offline import MeaninglessResultsWarning

EXERCISES = checks.exercises()


def _number(x: Any) -> bool:
    return isinstance(x, (bool, int, float, np.number)) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 0)


def _as_float(x: Any) -> float | int:
    if isinstance(x, (torch.Tensor, np.ndarray, np.number)):
        return x.item()
    return x


#: How each form hands in an answer: (tensor, array, one number) -> the same value in that form.
FORMS: dict[str, Callable[[Any], Any]] = {
    "float32": lambda x: (x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else
                          x.astype(np.float32) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else
                          np.float32(_as_float(x)) if _number(x) and isinstance(_as_float(x), float) else x),
    "float64": lambda x: (x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else
                          x.astype(np.float64) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else
                          np.float64(_as_float(x)) if _number(x) and isinstance(_as_float(x), float) else x),
    "numpy": lambda x: (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) and x.ndim > 0 else
                        np.array(_as_float(x)) if _number(x) else x),  # a number as a 0-d array
    "torch": lambda x: (torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) and x.ndim > 0 else
                        torch.tensor(_as_float(x)) if _number(x) and isinstance(_as_float(x), float) else x),
    "torch float64 scalar": lambda x: torch.tensor(_as_float(x), dtype=torch.float64) if _number(x) else x,
    "torch bfloat16 scalar": lambda x: (torch.tensor(_as_float(x), dtype=torch.bfloat16)
                                        if _number(x) and isinstance(_as_float(x), float) else x),
}


def _in_form(value: Any, form: Callable[[Any], Any]) -> Any:
    """``value`` handed in as ``form``: containers (a dict of counts, a tuple) element by element."""
    if isinstance(value, dict):
        return {k: _in_form(v, form) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_in_form(v, form) for v in value)
    return form(value)


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv(checks.STRICT_ENV, "1")  # a failed check raises with its whole message


def _call(key: str, answer: Callable, tiny) -> bool:
    """Run exercise ``key``'s check on ``answer``, giving it the notebook's objects it asks for (``model``)."""
    ex = EXERCISES[key]
    extra = {"model": tiny}
    params = list(inspect.signature(ex.check).parameters.values())[1:]
    kwargs = {p.name: extra[p.name] for p in params if p.default is inspect.Parameter.empty}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeaninglessResultsWarning)
        return ex.check(answer, **kwargs)


def test_the_registry_holds_every_exercise_of_the_course():
    assert len(EXERCISES) >= 19
    for key, ex in EXERCISES.items():
        assert ex.notebook.isdigit() and len(ex.notebook) == 2, key
        assert getattr(checks, key) is ex.check, f"checks.{key} is the registered check"


@pytest.mark.parametrize("key", list(EXERCISES))
def test_every_exercise_has_a_worked_solution_that_solution_prints(key, capsys):
    ex = EXERCISES[key]
    worked = ex.solution_function()
    assert callable(worked), f"checks.{key} has no worked solution (exercise(..., solution=...))"
    checks.solution(key)
    out = capsys.readouterr().out
    assert f"A worked solution of checks.{key}" in out and f"def {worked.__name__}(" in out, out


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("key", list(EXERCISES))
def test_every_check_passes_its_worked_solution_in_every_numeric_form(key, form, tiny, strict, capsys):
    worked = EXERCISES[key].solution_function()
    convert = FORMS[form]
    assert _call(key, lambda *a, **k: _in_form(worked(*a, **k), convert), tiny) is True
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("key", list(EXERCISES))
def test_a_nested_list_where_a_tensor_is_asked_is_a_clear_failure(key, tiny, monkeypatch, capsys):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    worked = EXERCISES[key].solution_function()
    answers: list[Any] = []

    def as_list(*a, **k):
        value = worked(*a, **k)
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim > 0:  # a 0-d tensor is one number: fine
            answers.append(value)
            return value.tolist()
        return value

    passed = _call(key, as_list, tiny)
    out = capsys.readouterr().out
    if not any(isinstance(v, (torch.Tensor, np.ndarray)) for v in answers):
        assert passed is True, f"{key} returns no tensor of one or more axes: a list is not at stake"
        return
    assert passed is False, f"checks.{key} passed a Python list where a tensor is asked"
    assert "a Python list, where" in out or "not one number" in out, out


def test_a_float32_threshold_that_a_float64_check_would_fail_passes(strict):
    """Notebook 07 exercise 1: the right threshold rounded to float32 may sit just below a score; still right."""
    from tipsomaly_lite.course.checks.nb07 import _flagged_share, _normal_score_sets, _solve_normal_threshold

    rounded_below = [s for s, a in _normal_score_sets()
                     if _flagged_share(s, float(np.float32(_solve_normal_threshold(s, a))))
                     != _flagged_share(s, _solve_normal_threshold(s, a))]
    assert rounded_below, "the seeded inputs include a threshold that float32 rounds across a score"
    for wrap in (np.float32, lambda t: torch.tensor(t, dtype=torch.float32), lambda t: torch.tensor(t),
                 lambda t: np.array(t, dtype=np.float32), lambda t: torch.tensor(t, dtype=torch.float16)):
        assert checks.normal_threshold(lambda s, a: wrap(_solve_normal_threshold(s, a))) is True


def test_fairness_does_not_pass_a_wrong_threshold(monkeypatch, capsys):
    monkeypatch.delenv(checks.STRICT_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert checks.normal_threshold(lambda s, a: np.float32(np.quantile(np.asarray(s), a))) is False
    assert "too many flagged" in capsys.readouterr().out
    assert checks.check_close("x", [[1.0, 2.0]], torch.tensor([[1.0, 2.0]])) is False
    assert "a Python list, where a tensor of shape (1, 2) is expected" in capsys.readouterr().out
    assert checks.check_close("x", [0.5], 0.5) is False and "where one number is expected" in capsys.readouterr().out
    # float32 answers get float32's tolerance, not more
    assert checks.check_close("f32", np.float32(0.1234567), 0.1234567) is True
    assert checks.check_close("f32 wrong", np.float32(0.1235), 0.1234567) is False
