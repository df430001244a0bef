"""What the hook's processes are doing: who they are, who holds the output pipe, what they cost.

Owns the reading of ``/proc`` (process status, command lines, open descriptors) and the
human notes that name a process. Reads only; never signals or spawns (that is ``process``).
Must not import ``agent``.

Why raw ``/proc`` and not psutil: a scan runs every 0.1 s while a hook runs and at the end of every
hook (to report what was left running), so it has to cost well under a millisecond on a quiet host.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcInfo:
    """One process, as named to the user."""

    pid: int
    command: str   # the command line joined by spaces, or ``[comm]`` when it has none

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that the runtime uses."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    cpu_seconds: float   # user + system time of this process (not its children)
    start_ticks: int     # since boot: with ``pid``, identifies the process across pid reuse
    rss: int             # bytes

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def read_stat(pid: int) -> ProcStat | None:
    """The process's status, or None if it has gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rindex(b")") + 2:].split()
    return ProcStat(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                    state=fields[0].decode(), cpu_seconds=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
                    start_ticks=int(fields[19]), rss=int(fields[21]) * _PAGE_SIZE)


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
"""Whether /proc has ``task/TID/children`` (CONFIG_PROC_CHILDREN), which lists a thread's children."""


def descendants_of(pid: int) -> set[int] | None:
    """Every descendant of ``pid`` (children of all its threads, recursively), without reading all
    of /proc; None if ``pid`` is gone or /proc cannot say. A process re-parented while we walk can
    be missed by one walk (the kernel's caveat for these files): callers that must find everything
    walk again until a walk finds nothing."""
    if not HAS_CHILDREN_FILES:
        return None
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            if parent == pid:
                return None
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    kids = f.read().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.add(kid)
                    pending.append(kid)
    return found


def describe(pid: int) -> ProcInfo:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        argv = []
    command = " ".join(a.decode(errors="replace") for a in argv if a)
    if not command:
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                command = f"[{f.read().strip().decode(errors='replace')}]"
        except OSError:
            command = "[gone]"
    return ProcInfo(pid, command)


def pipe_holders(inodes: dict[int, str], candidates: Iterable[int]) -> dict[int, set[str]]:
    """Which of ``candidates`` have one of the pipes open; ``inodes`` maps a pipe inode to its stream
    name (``stdout``/``stderr``). Returns pid -> stream names. Our own process is never a holder."""
    wanted = {f"pipe:[{inode}]": name for inode, name in inodes.items()}
    me = os.getpid()
    found: dict[int, set[str]] = {}
    for pid in candidates:
        if pid == me:
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            name = wanted.get(target)
            if name:
                found.setdefault(pid, set()).add(name)
    return found


def holder_fix(stream: str) -> str:
    """How a hook author stops a background process from holding the hook's output."""
    return (f"it inherited the hook's {stream}; start it with its output redirected "
            f"(`cmd > /dev/null 2>&1 &`, or to a log file), or detach it with `nohup` or `setsid` "
            f"plus a redirection, so the hook's output closes when the script exits")
