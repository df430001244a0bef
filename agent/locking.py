"""One deployment at a time per deployment root.

Owns the deployment lock: an exclusive ``flock(2)`` on a descriptor of the deployment root folder
itself (opened ``O_RDONLY|O_DIRECTORY``, the folder created first), held for the whole deployment.
No lock file is added, so the root's layout stays exactly the agent's (the root, when missing, is
created ``0777 & ~umask`` like every folder in it); the kernel drops the lock when
the descriptor closes, so a killed cdsim never leaves a stale lock behind. The descriptor is
close-on-exec: a hook (or a daemon it leaves running) never inherits the lock.

By default a second deployment waits, saying so after about a second (with the holder's pid, read
from ``/proc/locks``); with ``mode="fail"`` (or ``CDSIM_LOCK=fail``) it fails at once with
``EnvironmentProblem`` (reference ``deployment-root-busy``).

Imports only agent.errors; must not import the deploy engine, hooks_runtime or the CLI.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from agent.errors import EnvironmentProblem, UsageError

WAIT = "wait"
FAIL = "fail"
MODES = (WAIT, FAIL)
ENV_VARIABLE = "CDSIM_LOCK"
NOTICE_AFTER = 1.0   # seconds of waiting before we say why nothing happens


def lock_mode(mode: str | None = None) -> str:
    """``mode`` if given, else ``$CDSIM_LOCK``, else wait."""
    chosen = (mode or os.environ.get(ENV_VARIABLE) or WAIT).strip().lower()
    if chosen not in MODES:
        raise UsageError(f"unknown lock mode {chosen!r} (from {ENV_VARIABLE} or the command line)",
                         hint="use wait or fail")
    return chosen


def holder_pid(fd: int) -> int | None:
    """The pid holding a flock on the file open as ``fd`` (from /proc/locks), or None if unknown."""
    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a waiter's line has "->" after the number
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if fields[5] == wanted:
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None


def _open_root(root_dir: str) -> int:
    try:
        os.makedirs(root_dir, exist_ok=True)
        return os.open(root_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError as e:
        raise EnvironmentProblem(
            f"cannot use the deployment root {root_dir}: permission denied ({e.filename})",
            reference="root-needed",
            hint="this deployment root needs root: run cdsim with sudo, or choose another root "
                 "(--root-dir, or root_dir in the agent configuration file)") from None


def deployment_lock(root_dir: str, *, mode: str | None = None,
                    notice: Callable[[str], None] | None = None,
                    notice_after: float = NOTICE_AFTER) -> DeploymentLock:
    """Hold the exclusive lock of ``root_dir`` for the ``with`` block (see the module docstring)."""
    return DeploymentLock(root_dir, mode, notice, notice_after)


class DeploymentLock:
    """``deployment_lock``'s context manager (a class, not contextlib's: importing contextlib is ~0.6 ms
    of a trivial deployment's start-up)."""

    def __init__(self, root_dir: str, mode: str | None, notice: Callable[[str], None] | None,
                 notice_after: float):
        self.root_dir, self.mode, self.notice, self.notice_after = root_dir, mode, notice, notice_after
        self.fd: int | None = None

    def __enter__(self) -> None:
        chosen = lock_mode(self.mode)
        fd = _open_root(self.root_dir)
        try:
            self._acquire(fd, chosen)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None

    def _acquire(self, fd: int, chosen: str) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder_pid(fd)
            who = f" (pid {pid})" if pid else ""
            if chosen == FAIL:
                raise EnvironmentProblem(
                    f"another deployment to {self.root_dir} is running{who}", reference="deployment-root-busy",
                    hint=f"wait for it to finish, or let cdsim wait ({ENV_VARIABLE}=wait)") from None
            timer = None
            if self.notice:
                import threading

                timer = threading.Timer(self.notice_after, self.notice,
                                        (f"waiting for another deployment to {self.root_dir} to finish{who}",))
                timer.daemon = True
                timer.start()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            finally:
                if timer:
                    timer.cancel()
