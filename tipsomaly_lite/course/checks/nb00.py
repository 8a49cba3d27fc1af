"""Self-checks for the exercises of notebooks/00_setup.ipynb."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tipsomaly_lite.course.checks.core import exercise, report

__all__: list[str] = ["class_counts", "file_sha256"]


def _synthetic_meta(seed: int) -> dict[str, Any]:
    """A seeded ``meta.json`` dict in the prepared format, with the layouts that trip up counting.

    Three classes: an MVTec-like one (normal folder ``good``), a BTAD-like one (normal ``ok``,
    anomalous ``ko``) and a DAGM-like one; rows shuffled, a ``train`` split present, and the number
    of normal and anomalous images always different within a class.
    """
    rng = np.random.default_rng(seed)
    meta: dict[str, Any] = {"train": {}, "test": {}}
    for cls, normal, defects in (("bottle", "good", ("broken_large", "contamination")),
                                 ("01", "ok", ("ko",)), ("Class3", "good", ("defect",))):
        n_normal = int(rng.integers(2, 9))
        n_anomalous = n_normal + int(rng.integers(1, 6))  # never equal, so a swapped pair is caught
        rows = [{"img_path": f"{cls}/test/{normal}/{i:03d}.png", "mask_path": "", "cls_name": cls,
                 "specie_name": normal, "anomaly": 0} for i in range(n_normal)]
        for i in range(n_anomalous):
            defect = defects[i % len(defects)]
            rows.append({"img_path": f"{cls}/test/{defect}/{i:03d}.png",
                         "mask_path": f"{cls}/ground_truth/{defect}/{i:03d}_mask.png", "cls_name": cls,
                         "specie_name": defect, "anomaly": 1})
        meta["test"][cls] = [rows[i] for i in rng.permutation(len(rows))]
        meta["train"][cls] = [{"img_path": f"{cls}/train/{normal}/{i:03d}.png", "mask_path": "", "cls_name": cls,
                               "specie_name": normal, "anomaly": 0} for i in range(int(rng.integers(3, 7)))]
    return meta


@exercise("count the rows of meta['test'] only, and trust each row's 'anomaly' field (0 or 1), not its folder "
          "name: BTAD's normal folder is 'ok', not 'good'", reference="tipsomaly_lite.data.prepare._counts")
def class_counts(fn: Callable[[dict[str, Any]], dict[str, tuple[int, int]]]) -> bool:
    """Exercise: ``fn(meta) -> {class: (normal, anomalous)}`` over the **test** split of a ``meta.json`` dict.

    Compared with the counts :func:`tipsomaly_lite.data.prepare.prepare_dataset` prints and checks
    against the published ones, on seeded metas whose normal folders are ``good`` or ``ok``
    (BTAD), with a ``train`` split present. Catches counting by folder name, counting the train
    images too, and swapping the pair.

    Args:
        fn: the student's function.
    Returns:
        True when it agrees on every seeded meta.
    """
    from tipsomaly_lite.data.prepare import _counts

    name = "test images per class (normal, anomalous)"
    for seed in range(3):
        meta = _synthetic_meta(seed)
        expected = _counts(meta)
        try:
            got = fn(meta)
        except Exception as err:  # noqa: BLE001 - show the student's error, never swallow it
            return report(name, False, expected, f"an exception: {type(err).__name__}: {err}")
        if got is None:
            return report(name, False, expected, None)
        try:
            normalised = {str(k): (int(v[0]), int(v[1])) for k, v in got.items()}
        except (AttributeError, TypeError, ValueError, IndexError):
            return report(name, False, expected, got, "return a dict {class: (normal, anomalous)}")
        if normalised != expected:
            wrong = sorted(k for k in expected if normalised.get(k) != expected[k])
            return report(name, False, expected, got, f"seeded meta {seed}: the counts of {wrong} differ")
    return report(name, True)


@exercise("hash the file in pieces: one SHA-256 object from hashlib, fed every chunk the open file gives "
          "(in binary mode) until a read returns nothing, then its hex digest",
          reference="tipsomaly_lite.io.download.sha256_file")
def file_sha256(fn: Callable[[str | os.PathLike], str]) -> bool:
    """Exercise: ``fn(path) -> hex digest``, the SHA-256 of a file read in chunks.

    Compared with :func:`tipsomaly_lite.io.download.sha256_file` on seeded files of 0 bytes, 1000
    bytes and just over 3 MiB (more than one 1 MiB chunk), so hashing only the first chunk, the
    path's text or with another algorithm is caught. Upper- or lower-case hex both pass.

    Args:
        fn: the student's function.
    Returns:
        True when the digests agree for every file.
    """
    from tipsomaly_lite.io.download import sha256_file

    name = "SHA-256 of a file, read in chunks"
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for size in (0, 1000, 3 * 2**20 + 123):
            path = Path(tmp) / f"file_{size}.bin"
            path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
            expected = sha256_file(path)
            try:
                got = fn(path)
            except Exception as err:  # noqa: BLE001
                return report(name, False, expected, f"an exception on a {size}-byte file: {type(err).__name__}: {err}")
            if got is None:
                return report(name, False, expected, None)
            if not isinstance(got, str):
                return report(name, False, expected, got, f"a {size}-byte file: return the hex digest as a str")
            if got.strip().lower() != expected:
                return report(name, False, expected, got, f"a {size}-byte file gives another digest")
    return report(name, True)
