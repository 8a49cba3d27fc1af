"""The self-checks of notebooks/00_setup.ipynb pass the reference solutions and catch typical mistakes."""

from __future__ import annotations

import hashlib

import pytest

from tipsomaly_lite import checks
from tipsomaly_lite.checks import CheckFailed


# ---------------------------------------------------------------- reference and wrong solutions

def counts_right(meta):
    out = {}
    for cls, rows in meta["test"].items():
        anomalous = sum(r["anomaly"] for r in rows)
        out[cls] = (len(rows) - anomalous, anomalous)
    return out


def counts_by_folder(meta):  # BTAD's normal folder is "ok", not "good"
    return {cls: (sum(r["specie_name"] == "good" for r in rows), sum(r["specie_name"] != "good" for r in rows))
            for cls, rows in meta["test"].items()}


def counts_both_splits(meta):
    out = counts_right(meta)
    for cls, rows in meta["train"].items():
        out[cls] = (out[cls][0] + len(rows), out[cls][1])
    return out


def counts_swapped(meta):
    return {cls: (a, n) for cls, (n, a) in counts_right(meta).items()}


def sha_right(path, chunk_size=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def sha_first_chunk(path, chunk_size=1 << 20):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(chunk_size)).hexdigest()


def sha_of_name(path):
    return hashlib.sha256(str(path).encode()).hexdigest()


def sha_md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def student_left_it(meta_or_path):
    ...  # YOUR CODE HERE


CASES = [
    (checks.class_counts, counts_right, [counts_by_folder, counts_both_splits, counts_swapped, student_left_it]),
    (checks.file_sha256, sha_right, [sha_first_chunk, sha_of_name, sha_md5, student_left_it]),
]


@pytest.mark.parametrize("check, right", [(c, r) for c, r, _ in CASES], ids=lambda x: getattr(x, "__name__", ""))
def test_the_reference_solution_passes(check, right, monkeypatch, capsys):
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    assert check(right) is True
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("check, wrong", [(c, w) for c, _, ws in CASES for w in ws],
                         ids=lambda x: getattr(x, "__name__", ""))
def test_a_wrong_answer_raises_in_ci(check, wrong, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    with pytest.raises(CheckFailed):
        check(wrong)


@pytest.mark.parametrize("check, wrong", [(c, w) for c, _, ws in CASES for w in ws],
                         ids=lambda x: getattr(x, "__name__", ""))
def test_a_wrong_answer_prints_a_cross_for_a_student(check, wrong, monkeypatch, capsys):
    monkeypatch.delenv("TIPSOMALY_STRICT_CHECKS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert check(wrong) is False
    out = capsys.readouterr().out
    assert "❌" in out and "expected" in out


def test_upper_case_hex_is_accepted(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    assert checks.file_sha256(lambda p: sha_right(p).upper()) is True
