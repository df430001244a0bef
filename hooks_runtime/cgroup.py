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

Per hook it costs a mkdir, the two moves of the supervisor and an rmdir: our folder is remembered
for as long as ``/proc/self/cgroup`` (read per hook) names the same cgroup (``/proc/self/mountinfo``
is read again when it does not, or when a mkdir under the remembered folder fails), and an empty
tree is told by ``cgroup.events`` (one read) before any folder is walked.
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
# The last answer of _own_folder: (our pid, our cgroup v2 path, its folder, which has
# cgroup.procs). Valid while we are the same process in the same cgroup; a mount moved since
# makes the mkdir fail, and create then looks again before it gives up.
_own: tuple[int, str, str] | None = None
_killable: str | None = None   # a folder whose new cgroups were seen to have cgroup.kill (the kernel's)


def _own_cgroup_path() -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of /proc/self/cgroup), or None."""
    try:
        with open("/proc/self/cgroup", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return next((line[3:].decode() for line in data.split(b"\n") if line.startswith(b"0::")), None)


def _own_folder(fresh: bool = False) -> str | None:
    """The folder of our cgroup v2 if it has ``cgroup.procs``, or None. Reads only
    /proc/self/cgroup when our cgroup is the one of the last call (unless ``fresh``)."""
    global _own
    path = _own_cgroup_path()
    if path is None:
        return None
    pid = os.getpid()
    if not fresh and _own is not None and _own[:2] == (pid, path):
        return _own[2]
    base = _own_cgroup_dir(path)
    if base is None or not os.path.exists(os.path.join(base, "cgroup.procs")):
        return None
    _own = (pid, path, base)
    return base


def _own_cgroup_dir(path: str) -> str | None:
    """The folder of the cgroup v2 ``path`` (ours) in our mounts, or None when no cgroup2 mount
    holds it."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
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
        self.events_path = os.path.join(path, "cgroup.events")

    def enter(self) -> None:
        """Move the calling process in (best effort: the ancestry still finds everything)."""
        _move_self(self.procs_path)

    def leave(self) -> None:
        """Move the calling process back to the parent cgroup."""
        _move_self(os.path.join(self.parent, "cgroup.procs"))

    @classmethod
    def create(cls) -> HookCgroup | None:
        """A new, empty cgroup under our own, or None where the host does not allow it."""
        global _unusable, _killable
        if _unusable:
            return None
        for fresh in (False, True):
            base = _own_folder(fresh)
            if base is None:
                break
            _remove_stale(base)
            path = os.path.join(base, f"cdsim-hook-{os.getpid()}-{next(_counter)}")
            try:
                os.mkdir(path)
            except OSError:
                continue   # with a remembered folder: look again once
            if base != _killable and not os.path.exists(os.path.join(path, "cgroup.kill")):
                os.rmdir(path)
                break
            _killable = base
            return cls(path)
        _unusable = True
        return None

    def members(self) -> list[int]:
        """Pids in the cgroup and the cgroups below it (a hook may make some: a nested cdsim does)
        now; exited processes leave at once, zombies included. An empty tree costs one read."""
        if not self.populated():
            return []
        return [pid for folder in _folders_bottom_up(self.path) for pid in _procs(folder)]

    def populated(self) -> bool:
        """Whether a live process is in the cgroup or one below it (``cgroup.events``); True when
        that cannot be read, so that callers look."""
        try:
            with open(self.events_path, "rb") as f:
                return b"populated 0\n" not in f.read()
        except OSError:
            return True

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
        try:
            os.rmdir(self.path)   # the usual case: empty, no cgroup below (else EBUSY)
            return True
        except OSError:
            pass
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
