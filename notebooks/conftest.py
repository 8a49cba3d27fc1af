"""nbval runs the course offline in CI; a cell slower than :data:`CELL_LIMIT_S` fails it.

The offline course is part of every test run, so a cell that waits (on a widget that nobody
moves, a download, a model too large for the CPU) must show up as a failure naming the cell, not
as a suite that looks hung. The limit holds in the offline mode only (``TIPSOMALY_OFFLINE=1``, as
``make test`` sets it): real mode on a CPU is slow by nature. ``TIPSOMALY_CELL_LIMIT_S`` changes it.

The limit is seconds of an otherwise idle machine: when other work shares the CPUs (the 1-minute
load average above the number of cores), it grows in proportion, so a busy CI machine does not
fail a cell for being shared, while a cell that waits for minutes still fails.
"""

from __future__ import annotations

import os
import time

import pytest

#: Seconds one notebook cell may take in the offline run.
CELL_LIMIT_S = 20.0
LIMIT_ENV = "TIPSOMALY_CELL_LIMIT_S"
#: The generated student copies hold stubs whose checks fail by design: tests/test_notebooks.py checks them.
collect_ignore = ["student"]


def cell_limit_s() -> float | None:
    """The limit for this run: None outside the offline mode (no limit)."""
    from tipsomaly_lite.offline import offline_forced

    if not offline_forced():
        return None
    return float(os.environ.get(LIMIT_ENV, CELL_LIMIT_S))


def load_factor() -> float:
    """How many times over the CPUs are asked for (1-minute load average / cores), at least 1."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except (AttributeError, OSError):  # no load average on this platform
        return 1.0


def _is_notebook_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell"  # nbval's item for one code cell


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every notebook as a clean copy: outputs a session saved in the file (JupyterLab's Save) are never
    a reference (nbval fails a cell with outputs but no execution count: "Unrun reference cell has outputs"),
    so a notebook saved mid-session runs like a committed one."""
    for item in items:
        cell = getattr(item, "cell", None) if _is_notebook_cell(item) else None
        if cell is not None:
            cell["outputs"], cell["execution_count"] = [], None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if not _is_notebook_cell(item):
        return (yield)
    limit = cell_limit_s()
    start = time.perf_counter()
    result = yield  # a failing cell raises here and keeps its own message
    seconds = time.perf_counter() - start
    factor = load_factor()
    if limit is not None and seconds > limit * factor:
        source = (getattr(item, "cell", {}) or {}).get("source", "")
        first = next((ln for ln in str(source).splitlines() if ln.strip()), "")[:80]
        shared = f" (x{factor:.1f} for a shared CPU)" if factor > 1 else ""
        pytest.fail(f"{item.nodeid}: the cell took {seconds:.1f} s, more than the offline course's {limit:g} s "
                    f"per cell{shared} ({LIMIT_ENV}); it starts: {first!r}", pytrace=False)
    return result
