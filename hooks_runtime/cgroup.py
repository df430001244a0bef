"""A cgroup (v2) per hook run, where the host lets us make one.

Owns finding the cgroup v2 hierarchy and our own place in it (``/proc/self/mountinfo``,
``/proc/self/cgroup``), creating one child cgroup per hook run, moving a process in and out,
listing and killing its members (``cgroup.kill``), handing survivors back to the parent cgroup
before removing it, and removing the empty ones a cdsim killed mid-hook left behind. Spawns
nothing; must not import ``agent``.

Why a cgroup on top of the ancestry that ``process`` follows: a process cannot leave its cgroup by
forking, ``setsid``, ``su`` or a changed environment, and ``cgroup.kill`` ends every member in one
step, including one that forks while we kill. It needs root (or a delegated subtree), a writable
cgroup2 mount and ``cgroup.kill`` (Linux 5.14); anything less and ``create`` returns None, and the
ancestry alone does the work.
"""
from __future__ import annotations

import itertools
import os
import re
import time

_counter = itertools.count(1)
_unusable = False   # set once creating a cgroup failed: the host will not change its mind
_stale_removed = False
_NAME = re.compile(r"cdsim-hook-(\d+)-\d+")


def _own_cgroup_dir() -> str | None:
    """The folder of this process's cgroup v2, or None when there is no v2 hierarchy."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line[3:].rstrip("\n") for line in f if line.startswith("0::")), None)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    if path is None:
        return None
    for fields in mounts:
        sep = fields.index("-")
        if fields[sep + 1] != "cgroup2":
            continue
        root, mountpoint = fields[3], fields[4]
        if root == "/":
            return mountpoint + (path if path != "/" else "")
        if path == root or path.startswith(root + "/"):
            return mountpoint + path[len(root):]
    return None


class HookCgroup:
    """One hook run's cgroup. The hook's supervisor ``enter``s it just to spawn the script and then
    ``leave``s (it must survive ``kill``): the script, and everything it starts, is born inside."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.parent = os.path.dirname(path)
        self.procs_path = os.path.join(path, "cgroup.procs")

    def enter(self) -> None:
        """Move the calling process in (best effort: the ancestry still finds everything)."""
        _move_self(self.procs_path)

    def leave(self) -> None:
        """Move the calling process back to the parent cgroup."""
        _move_self(os.path.join(self.parent, "cgroup.procs"))

    @classmethod
    def create(cls) -> HookCgroup | None:
        """A new, empty cgroup under our own, or None where the host does not allow it."""
        global _unusable
        if _unusable:
            return None
        base = _own_cgroup_dir()
        if base is None or not os.path.exists(os.path.join(base, "cgroup.procs")):
            _unusable = True
            return None
        _remove_stale(base)
        path = os.path.join(base, f"cdsim-hook-{os.getpid()}-{next(_counter)}")
        try:
            os.mkdir(path)
        except OSError:
            _unusable = True
            return None
        if not os.path.exists(os.path.join(path, "cgroup.kill")):
            os.rmdir(path)
            _unusable = True
            return None
        return cls(path)

    def members(self) -> list[int]:
        """Pids in the cgroup and the cgroups below it (a hook may make some: a nested cdsim does)
        now; exited processes leave at once, zombies included."""
        return [pid for folder in _folders_bottom_up(self.path) for pid in _procs(folder)]

    def kill(self) -> None:
        """SIGKILL every member, atomically with respect to forks inside the cgroup."""
        try:
            with open(os.path.join(self.path, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:
            pass

    def release(self, attempts: int = 50) -> bool:
        """Move the processes still inside (those a successful hook left running on purpose) back
        to the parent cgroup, then remove this one and any below it. Returns whether it is gone."""
        parent_procs = os.path.join(self.parent, "cgroup.procs")
        for _ in range(attempts):
            for folder in _folders_bottom_up(self.path):
                for pid in _procs(folder):
                    try:
                        with open(parent_procs, "w") as f:
                            f.write(str(pid))
                    except OSError:
                        pass   # gone meanwhile
                try:
                    os.rmdir(folder)
                except OSError:
                    pass
            if not os.path.exists(self.path):
                return True
            time.sleep(0.01)   # a member forked while we moved it, or is still exiting
        return False


def _procs(folder: str) -> list[int]:
    try:
        with open(os.path.join(folder, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def _folders_bottom_up(path: str) -> list[str]:
    """``path`` and the cgroups below it, deepest first (so each can be removed in turn)."""
    return [folder for folder, _, _ in os.walk(path, topdown=False)] or [path]


def _remove_stale(base: str) -> None:
    """Once per process: remove the empty hook cgroups that a cdsim killed mid-hook left behind
    (those named after a pid that no longer runs; one still in use refuses to go)."""
    global _stale_removed
    if _stale_removed:
        return
    _stale_removed = True
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = _NAME.fullmatch(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            for folder in _folders_bottom_up(os.path.join(base, name)):
                try:
                    os.rmdir(folder)
                except OSError:
                    pass


def _move_self(procs: str) -> None:
    try:
        fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except OSError:
        pass
