"""Spawning a hook script and ending what it started.

Owns the command line (§7.2: direct exec, ``/bin/sh`` on ENOEXEC, ``su``/``sudo`` for runas), the
spawn itself (§7.3: environment as given, cwd, a closed stdin pipe, a new process group), the view of
the hook's process tree, and the group kill / descendant sweep. Must not import ``agent``.

Why a new process *group* and not a new session (``start_new_session``): the agent makes its child a
group leader with ``setpgid`` and the hook keeps the agent's session; the observable difference is the
controlling terminal (a hook started from an interactive ``cdsim`` can still open ``/dev/tty``, and
job-control signals of that terminal do not reach it either way), so we match the agent.

The tree: a process belongs to the hook if it is in the hook's process group, descends from a member,
was seen as a member before (re-parented to init since), or carries the hook's token in its
environment (``su`` puts the script in a new session; ``setsid`` and double forks leave the group and
the parentage). The token is the only trace a quickly orphaned grandchild leaves.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from hooks_runtime.diagnostics import (
    TOKEN_VARIABLE,
    ProcStat,
    all_pids,
    has_token,
    read_stat,
)

_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def build_command(path: str, runas: str | None, sudo: bool) -> list[str]:
    """The argv for one script (§7.2). The agent builds ``su {user} -c {path}`` unquoted (Q23); we
    pass ``user`` as one argument and quote the path for the user's shell, so paths with spaces,
    quotes or ``$`` run the named file, and put ``user`` after ``--`` (``su -c path -- user``), so su
    never reads it as an option. An empty runas gives ``su -c path`` (root), as the agent's
    space-split string does."""
    if runas is not None:
        argv = ["su", "-c", shlex.quote(path), *(["--", runas] if runas else [])]
    else:
        argv = [path]
    return ["sudo", *argv] if sudo else argv


@dataclass
class Spawned:
    proc: subprocess.Popen
    argv: list[str]
    stdout: int   # read ends, owned by the caller
    stderr: int


def spawn(argv: list[str], env: Mapping[str, str], cwd: str, token: str) -> Spawned:
    """Start the script. Raises OSError as the spawn fails (ENOENT for a bad ``#!`` line or a missing
    ``su``/``sudo``); a file without ``#!`` (ENOEXEC) is run by ``/bin/sh``, as Ruby's spawn does."""
    child_env = dict(env)
    child_env[TOKEN_VARIABLE] = token
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    os.close(in_w)   # the agent's stdin: a pipe closed at once, reads see end of file
    for fd in (out_r, err_r):
        try:   # a bigger pipe means fewer wake-ups for a chatty hook; not essential
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass
    try:
        try:
            proc = _popen(argv, in_r, out_w, err_w, child_env, cwd)
        except OSError as exc:
            if exc.errno != errno.ENOEXEC or len(argv) != 1:
                raise
            argv = ["/bin/sh", argv[0]]
            proc = _popen(argv, in_r, out_w, err_w, child_env, cwd)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    return Spawned(proc, argv, out_r, err_r)


def _popen(argv: list[str], stdin: int, stdout: int, stderr: int, env: dict[str, str],
           cwd: str) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                            process_group=0, close_fds=True)


def spawn_error_text(exc: OSError, argv: list[str]) -> str:
    """The agent's ``{ExceptionClass} with message {message}`` for a spawn failure (Ruby's Errno)."""
    name = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
    detail = exc.filename if exc.filename is not None else argv[0]
    return f"Errno::{name} with message {exc.strerror or os.strerror(exc.errno or 0)} - {detail}"


def signal_process(stat: ProcStat, sig: int) -> bool:
    """Send ``sig`` to the process ``stat`` describes, unless its pid now names another process.
    Returns whether it was sent."""
    try:
        pidfd = os.pidfd_open(stat.pid)
    except OSError:
        return False
    try:
        # The pidfd pins the process: check it is the one we saw, then signal through the pidfd.
        now = read_stat(stat.pid)
        if now is None or now.start_ticks != stat.start_ticks or not now.alive:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in the group. ``killpg(pgid, 0)`` would also
    count zombies, which an init that reaps slowly can leave around for seconds."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None and st.pgid == pgid and st.alive:
            return True
    return False


class ProcessTree:
    """Every process of one hook run that we can find, with resource figures from periodic scans."""

    def __init__(self, root: int, token: str) -> None:
        self.root = root
        self.pgid = root
        self._marker = f"{TOKEN_VARIABLE}={token}".encode()
        stat = read_stat(root)
        self._root_start = stat.start_ticks if stat else 0
        self.known: dict[int, ProcStat] = {}     # pid -> last stat of every member seen
        self.peak_rss = 0                        # largest sum of RSS over one scan

    def scan(self) -> dict[int, ProcStat]:
        """Current live members (the root included while it is unreaped), and update the figures."""
        stats: dict[int, ProcStat] = {}
        for pid in all_pids():
            st = read_stat(pid)
            if st is not None and st.start_ticks >= self._root_start and st.alive:
                stats[pid] = st   # older processes cannot be ours
        members: dict[int, ProcStat] = {}
        for pid, st in stats.items():
            seen = self.known.get(pid)
            if (pid == self.root or st.pgid == self.pgid or
                    (seen is not None and seen.start_ticks == st.start_ticks)):
                members[pid] = st
        children: dict[int, list[int]] = {}
        for pid, st in stats.items():
            children.setdefault(st.ppid, []).append(pid)
        pending = list(members)
        while pending:
            for child in children.get(pending.pop(), ()):
                if child not in members:
                    members[child] = stats[child]
                    pending.append(child)
        for pid, st in stats.items():
            if pid not in members and pid != os.getpid() and has_token(pid, self._marker):
                members[pid] = st
                for child in children.get(pid, ()):
                    members.setdefault(child, stats[child])
        self.known.update(members)
        self.peak_rss = max(self.peak_rss, sum(st.rss for st in members.values()))
        return members

    def descendants(self) -> dict[int, ProcStat]:
        """Live members other than the root script itself."""
        return {pid: st for pid, st in self.scan().items() if pid != self.root}

    def orphan_cpu(self, pids: set[int]) -> float:
        """CPU seconds of those processes (as last seen) that init, not the tree, will reap: the
        root's rusage cannot include them."""
        total = 0.0
        for pid in pids:
            st = self.known.get(pid)
            if st is not None and st.ppid not in self.known:
                total += st.cpu_seconds
        return total
