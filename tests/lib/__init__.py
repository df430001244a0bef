"""The tests' own toolkit, one copy of each thing many test files need: where the checkout is (``REPO``),
whether this run is root (``IS_ROOT``) or CI (``IN_CI``), the cdsim command-line runner (``cdsim``), the
interpreter an ordinary user can run cdsim with (``user_python``), ``require_tool`` and the marks that skip
a test by hand and fail it under CI (``needs_root``, ``needs_tool``), and ``snapshot_checkout`` (a copy of
the checkout's files, for tests that install it as pre-commit or GitHub would).

Import it as ``from tests.lib import ...`` (pyproject's ``pythonpath`` puts the checkout on sys.path). It
imports only the standard library, pytest and nothing of cdsim's: tests run cdsim, they don't borrow from it.
The one exception is ``tests.lib.fleet`` (not re-exported here): the local CodeDeploy service in-process with
a fleet, for the tests that deploy through it.
"""
from __future__ import annotations

from .cli import CLI, cdsim, user_python
from .env import IN_CI, IS_ROOT, REPO, missing_tool, require_tool, skip_or_fail
from .marks import needs_root, needs_tool
from .snapshot import snapshot_checkout

__all__ = ["CLI", "IN_CI", "IS_ROOT", "REPO", "cdsim", "missing_tool", "needs_root", "needs_tool", "require_tool",
           "skip_or_fail", "snapshot_checkout", "user_python"]
