"""Self-checks for the course's exercises: ✅ or ❌ with expected vs got.

A student calls a check after writing an exercise; it prints ✅, or ❌ with what was expected,
what came back and a hint. In CI (``CI`` set, as every CI service does, or
``TIPSOMALY_STRICT_CHECKS=1``, as ``make test`` does) a failed check also raises
:class:`CheckFailed`, so nbval catches a regression in the notebook or in the package.

Checks that take a function run it on fixed random inputs and compare with the package's own
version of the step: a check is only as good as the package, and the package is tested.

The checks of one notebook live in ``checks/nbNN.py`` and are exported here by name, so a
notebook writes ``checks.fused_score(my_fused_score)``.

Taught in notebooks/00_setup.ipynb.
"""

from __future__ import annotations

from tipsomaly_lite.course.checks.core import *  # noqa: F401,F403

# The exercises of each notebook.
from tipsomaly_lite.course.checks.nb00 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb01 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb02 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb03 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb04 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb05 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb06 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb07 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb08 import *  # noqa: E402,F401,F403
from tipsomaly_lite.course.checks.nb09 import *  # noqa: E402,F401,F403
