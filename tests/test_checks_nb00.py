"""The self-checks of notebooks/00_setup.ipynb pass the reference solutions and catch typical mistakes."""

from __future__ import annotations

import hashlib

import pytest

from tipsomaly_lite.course import checks


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



CASES = [
    (checks.class_counts, counts_right, [counts_by_folder, counts_both_splits, counts_swapped]),
    (checks.file_sha256, sha_right, [sha_first_chunk, sha_of_name, sha_md5]),
]


@pytest.mark.parametrize("check, right, wrongs", CASES, ids=[c.__name__ for c, _, _ in CASES])
def test_exercise_check(check, right, wrongs, exercise_check):
    exercise_check(check, right, wrongs)


def test_upper_case_hex_is_accepted(monkeypatch):
    monkeypatch.setenv("TIPSOMALY_STRICT_CHECKS", "1")
    assert checks.file_sha256(lambda p: sha_right(p).upper()) is True
