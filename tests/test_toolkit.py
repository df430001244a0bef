"""The tests' own toolkit: conftest's mark tables name tests that exist (a renamed test would silently
lose its marks), the markers are registered, and require_tool skips by hand and fails under CI."""
from __future__ import annotations

import re

import conftest
import pytest

from tests import lib
from tests.lib import REPO, env

TABLES = {"FIXTURE_MARKS": conftest.FIXTURE_MARKS, "FILE_MARKS": conftest.FILE_MARKS,
          "NODE_MARKS": conftest.NODE_MARKS, "SLOW": dict.fromkeys(conftest.SLOW, ("slow",))}


@pytest.mark.parametrize("table", ["FILE_MARKS", "NODE_MARKS", "SLOW"])
def test_every_entry_names_a_file_class_and_test_that_exist(table):
    for prefix in TABLES[table]:
        path, *names = prefix.split("[", 1)[0].split("::")
        source = REPO / "tests" / path
        assert source.is_file(), f"{table}: {prefix}: no file tests/{path}"
        text = source.read_text()
        for name in names:
            assert re.search(rf"^\s*(class|def) {re.escape(name)}\b", text, re.M), f"{table}: {prefix}: no {name}"


def test_every_fixture_entry_is_a_fixture_some_test_file_defines():
    sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("*.py")) + (REPO / "agent" /
                                                                               "pytest_plugin.py").read_text()
    for name in conftest.FIXTURE_MARKS:
        assert re.search(rf"^def {name}\(", sources, re.M), f"FIXTURE_MARKS: no fixture {name}"


def test_the_marks_the_tables_give_are_registered(pytestconfig):
    registered = {line.split(":")[0].split("(")[0] for line in pytestconfig.getini("markers")}
    given = {mark for table in TABLES.values() for marks in table.values() for mark in marks}
    assert given | {"root", "instance", "unprivileged", "service", "slow", "tool"} <= registered


def test_require_tool_returns_the_path_skips_by_hand_and_fails_under_ci(monkeypatch):
    assert lib.require_tool("sh", "dash").endswith("/sh")
    monkeypatch.setattr(env, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=r"needs no-such-tool-x: apt-get install -y no-such-package"):
        lib.require_tool("no-such-tool-x", "no-such-package")
    monkeypatch.setattr(env, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"needs no-such-tool-x: pip install x \(CI must"):
        lib.require_tool("no-such-tool-x", "x", "pip install x")


def test_the_runner_sets_the_state_folder_and_env_wins_over_it(tmp_path):
    """``state`` sets CDSIM_STATE_DIR and ``env`` wins over it (as test_exit_codes needs)."""
    made = lib.cdsim("instance", "create", "kit", state=tmp_path / "a")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "a" / "instances" / "kit").is_dir()
    made = lib.cdsim("instance", "create", "kit", state=tmp_path / "a", env={"CDSIM_STATE_DIR": str(tmp_path / "b")})
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "b" / "instances" / "kit").is_dir()
    for folder in ("a", "b"):
        gone = lib.cdsim("instance", "destroy", "kit", state=tmp_path / folder)
        assert gone.returncode == 0, gone.stderr
