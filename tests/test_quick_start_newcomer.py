"""The README's Quick start, first line, as a newcomer runs it: an ordinary user, a fresh clone, the
system Python, the default PATH.

First without newuidmap (the uidmap package's helpers hidden by bind mounts in a mount namespace of
the test's own): the line stops with the one exact message naming what to install, before any hook.
Then with the helpers: the same line, run again, prints the page (the instance made by the first try is
re-mapped as it starts), and `cdsim logs` and `cdsim history` right after show that deployment.
"""
from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from pathlib import Path

import pytest

from agent.instance.idmap import HELPER_DIRS
from tests.lib import REPO, needs_root, require_tool

EXPECTED_TEXT = "Hello from cdsim sample app"

pytestmark = needs_root("creating a user and hiding newuidmap need root (CI runs as root)")


def quick_start_line() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```\n", 2)[1]
    return block.splitlines()[0]


@pytest.fixture
def newcomer(tmp_path):
    """An ordinary user (with the subordinate range Debian's useradd gives) owning a fresh clone."""
    require_tool("git", "git")
    system_venv = subprocess.run(["python3", "-c", "import ensurepip, venv"], capture_output=True, check=False,
                                 env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    if system_venv.returncode != 0:
        why = "the system python3 cannot make a virtual environment: apt-get install -y python3-venv"
        if os.environ.get("CI"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    name = f"cdsimnc{os.getpid() % 100000}"
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    try:
        user = pwd.getpwnam(name)
        clone = Path(user.pw_dir) / "cdsim"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, capture_output=True)
        subprocess.run(["chown", "-R", f"{name}:", str(clone)], check=True)
        yield user, clone
    finally:
        subprocess.run(["su", "-", name, "-c", "cd cdsim && .venv/bin/cdsim instance destroy default"],
                       capture_output=True, check=False, timeout=120)
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


def as_newcomer(user, clone: Path, command: str, *, hide_helpers: bool = False) -> subprocess.CompletedProcess:
    """``command`` in a login shell of ``user`` (its default PATH), in the clone; with ``hide_helpers``,
    newuidmap and newgidmap are covered with /dev/null in a private mount namespace first."""
    login = ["su", "-", user.pw_name, "-c", f"cd {shlex.quote(str(clone))} && {command}"]
    if hide_helpers:
        covers = [f"mount --bind /dev/null {shlex.quote(os.path.join(d, tool))}"
                  for d in HELPER_DIRS for tool in ("newuidmap", "newgidmap")
                  if os.path.isfile(os.path.join(d, tool)) and not os.path.islink(os.path.join(d, tool))]
        login = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 " && ".join([*covers, shlex.join(login)])]
    return subprocess.run(login, capture_output=True, text=True, timeout=900, check=False)


def test_quick_start_as_an_ordinary_user_without_then_with_newuidmap(newcomer):
    require_tool("newuidmap", "uidmap")
    user, clone = newcomer
    line = quick_start_line()
    assert line.endswith("cdsim deploy sample_app"), line

    refused = as_newcomer(user, clone, line, hide_helpers=True)
    assert refused.returncode == 7, refused.stdout[-3000:] + refused.stderr[-3000:]
    errors = [text for text in refused.stderr.splitlines() if text.startswith("cdsim: error:")]
    assert errors == [errors[0]] and "the bundle needs ec2-user inside instance 'default'" in errors[0], \
        refused.stderr[-3000:]
    assert "lacks newuidmap/newgidmap;" in errors[0] and "`apt-get install uidmap`" in errors[0]
    assert "usermod" not in errors[0]   # the user has a subordinate range already: nothing else to do
    assert "BeforeInstall" not in refused.stdout and EXPECTED_TEXT not in refused.stdout

    deployed = as_newcomer(user, clone, line)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    assert EXPECTED_TEXT in deployed.stdout and "ValidateService passed" in deployed.stdout
    deployment = [w for w in deployed.stdout.split() if w.startswith("d-") and w.endswith("-local")][-1]
    logs = as_newcomer(user, clone, ". .venv/bin/activate && cdsim logs")
    assert logs.returncode == 0 and EXPECTED_TEXT in logs.stdout, logs.stdout + logs.stderr
    history = as_newcomer(user, clone, ". .venv/bin/activate && cdsim history")
    assert history.returncode == 0 and deployment in history.stdout, history.stdout + history.stderr
