"""Facts about this run (the checkout, root or not, CI or not) and the one way a test gives up for want of
something this machine lacks: skipped with the fix when run by hand, failed under CI."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
"""The checkout these tests belong to (the folder holding pyproject.toml)."""

IS_ROOT = os.geteuid() == 0
"""This run is root (CI runs as root)."""

IN_CI = bool(os.environ.get("CI"))
"""Running under CI (``CI`` set): nothing may pass by skipping."""


def skip_or_fail(why: str) -> NoReturn:
    """Skip with ``why`` (which says what to install or how to run) when run by hand; fail under CI, which
    installs every package the suite needs and runs as root, so it must never go green by skipping."""
    if IN_CI:
        pytest.fail(f"{why} (CI must provide it: .ci/run)", pytrace=False)
    pytest.skip(why)


def missing_tool(tool: str, package: str, install: str | None = None) -> str | None:
    """None when ``tool`` is on PATH; else what to do about it: ``package``'s install line (by default
    Debian's ``apt-get install -y PACKAGE``)."""
    if shutil.which(tool):
        return None
    return f"needs {tool}: {install or f'apt-get install -y {package}'}"


def require_tool(tool: str, package: str, install: str | None = None) -> str:
    """The path of ``tool``; when it is missing, skip naming ``package`` and its install line, or, under
    CI, fail."""
    why = missing_tool(tool, package, install)
    if why:
        skip_or_fail(why)
    return shutil.which(tool) or tool
