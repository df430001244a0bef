"""Marks for what a test needs of this machine. tests/conftest.py enforces them before each test
(``skip_or_fail``: a skip with the reason by hand, a failure under CI) and adds the selection marks
(``root``, ``instance``, ``unprivileged``, ``service``, ``slow``: pyproject.toml lists them) by file and by
fixture, so ``pytest -m root`` or ``pytest -m "not slow"`` picks tests out."""
from __future__ import annotations

import pytest


def needs_root(reason: str) -> pytest.MarkDecorator:
    """The test needs root (``reason`` says for what); run as anyone else it is skipped, under CI it fails."""
    return pytest.mark.root(reason=reason)


def needs_tool(tool: str, package: str, install: str | None = None) -> pytest.MarkDecorator:
    """The test needs ``tool`` on PATH: without it, ``require_tool(tool, package, install)`` before the test."""
    return pytest.mark.tool(tool=tool, package=package, install=install)
