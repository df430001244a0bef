"""Fixtures shared by all tests: no test may leave a process behind; a real user for runas tests."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import psutil
import pytest

_MARK = "CDSIM_TEST_PROCESS_MARK"


def _marked(value: str) -> list[psutil.Process]:
    """Live processes started with our mark in their environment (re-parented ones included)."""
    wanted = f"{_MARK}={value}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if wanted not in f.read().split(b"\0"):
                    continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _leftovers(value: str) -> list[psutil.Process]:
    procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
    procs.update((p.pid, p) for p in _marked(value))
    return list(procs.values())


@pytest.fixture(autouse=True)
def no_leftover_processes(monkeypatch: pytest.MonkeyPatch):
    """Fail a test that leaves a child, a descendant, or any process started with its environment
    (which also catches daemons re-parented to init). Leftovers are killed so the next test starts
    clean."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(_MARK, value)
    yield
    deadline = time.monotonic() + 3.0
    left = _leftovers(value)
    while left and time.monotonic() < deadline:   # processes on their way out get a moment
        time.sleep(0.05)
        left = _leftovers(value)
    if left:
        names = []
        for proc in left:
            try:
                names.append(f"pid {proc.pid} ({' '.join(proc.cmdline()) or proc.name()})")
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        if names:
            pytest.fail("test left processes behind: " + ", ".join(names), pytrace=False)


def require_tool(tool: str, package: str) -> str:
    """The path of ``tool``; when it is missing, skip with the Debian package and its install line, or,
    under CI (``CI`` set), fail: CI installs every package the suite needs and must not pass by skipping."""
    path = shutil.which(tool)
    if path:
        return path
    why = f"needs {tool}: apt-get install -y {package}"
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI must install it: .ci/run)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def runas_user():
    """A real user created with useradd (login shell /bin/sh, a home directory), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a user with useradd and su to it needs root (CI runs as root)")
    name = f"cdsimhk{os.getpid() % 100000}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@pytest.fixture
def user_without_subids():
    """A real user whom useradd gives no subordinate ids (no /etc/subuid, /etc/subgid range), removed
    afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a user with useradd needs root (CI runs as root)")
    name = f"cdsimns{os.getpid() % 100000}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@pytest.fixture
def shared_dir():
    """A folder every user can read and enter (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="cdsim-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A private cdsim state folder; every instance in it is stopped and destroyed afterwards, pass or fail."""
    import agent.instance as inst

    folder = tmp_path / "state"
    monkeypatch.setenv("CDSIM_STATE_DIR", str(folder))
    yield str(folder)
    for status in inst.list_instances(state=str(folder)):
        inst.destroy(inst.get(status.name, state=str(folder)))
