"""Entering a running instance: the launcher that joins its namespaces, gives it fresh bind mounts of host
paths, confines itself and executes the command.

Run as a plain script by the host's python (``python -E -s -S enter.py SPEC... -- ARGV``, see
:func:`launcher_argv`; it imports little, to start fast), so it loads nothing from the instance's
tree: every module it needs is loaded and the C library opened before it joins the instance's mount
namespace. It then forks (a PID namespace takes effect for children); the child confines itself
(agent.instance.confine) and only then executes ARGV, resolved in the instance's tree, so no program
of the instance ever runs with more than an instance's capabilities. The parent waits and exits with
the child's status (killed by a signal: by the same signal), like nsenter.

Bind mounts (SPEC's ``binds``): each host path is cloned with open_tree while the launcher still sees
the host's tree (for an instance with a user namespace: in a mount namespace of its own, owned by the
instance's user namespace), made read-only, nosuid, nodev and noexec, and attached at its path inside
(under /run/cdsim, the instance's own tmpfs) once the launcher has joined the instance; the parent
detaches it and removes its folder when the command ends (or the launcher is told to stop with
SIGTERM, SIGINT or SIGHUP). Killed outright, it leaves them behind; the per-call folder's flock, held
by the launcher and the command, is then released, and the next launcher that binds removes them. A
bind mount reads the host file as it is now, which the overlay that is the instance's / does not
promise (overlayfs does not follow changes to its lower layer).

Imports nothing of cdsim but its sibling modules ``namespaces`` and ``confine``.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import warnings  # noqa: F401 - os.execvp imports it, which inside would load the instance's copy

# typing costs this launcher ~10 ms at every start: it is imported for the type checker only (mypy
# takes any name TYPE_CHECKING as true; `from __future__ import annotations` leaves annotations unread)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import TypedDict

    class LaunchSpec(TypedDict):
        """What the launcher enters: the instance's init (host pid and start time), its namespaces,
        the working folder inside and the bind mounts ([host path, path inside])."""

        pid: int
        started: int
        userns: bool
        private_net: bool
        cwd: str | None
        binds: list[list[str]]

if TYPE_CHECKING or __package__:
    from agent.instance import confine
    from agent.instance import namespaces as ns
else:   # run as a script: its folder is sys.path[0]
    import confine
    import namespaces as ns

BIND_ROOT = "/run/cdsim/binds"
STATUS_CANNOT_RUN = 126
STATUS_NOT_FOUND = 127
STATUS_LAUNCHER = 7   # agent.errors.ExitStatus.ENVIRONMENT: the instance could not be entered


def launcher_argv(spec: LaunchSpec, argv: list[str]) -> list[str]:
    """The host command line that runs ``argv`` as ``spec`` says (keys: pid, started, userns,
    private_net, cwd, binds = [[host path, path inside], ...]); :func:`parse` reads it back."""
    script = os.path.abspath(__file__)
    if script.endswith((".pyc", ".pyo")):
        script = script[:-1]
    flags = ("u" if spec.get("userns") else "") + ("n" if spec.get("private_net") else "") or "-"
    binds = [path for pair in spec.get("binds") or () for path in pair]
    return [sys.executable, "-E", "-s", "-S", script, str(spec["pid"]), str(spec["started"]), flags,
            spec.get("cwd") or "", str(len(binds) // 2), *binds, "--", *argv]


def parse(args: list[str]) -> tuple[LaunchSpec, list[str]]:
    """(spec, argv) from what :func:`launcher_argv` put after the script; ValueError if malformed."""
    pid, started, flags, cwd, count = args[:5]
    n = int(count)
    binds = args[5:5 + 2 * n]
    if len(binds) != 2 * n or args[5 + 2 * n:6 + 2 * n] != ["--"] or len(args) < 7 + 2 * n:
        raise ValueError("malformed")
    spec: LaunchSpec = {"pid": int(pid), "started": int(started), "userns": "u" in flags, "private_net": "n" in flags,
            "cwd": cwd or None, "binds": [binds[i:i + 2] for i in range(0, len(binds), 2)]}
    return spec, args[6 + 2 * n:]


def _say(message: str) -> None:
    os.write(2, ("cdsim: " + message + "\n").encode("utf-8", "replace"))


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _open_init(spec: LaunchSpec) -> int:
    """A pidfd of the instance's init (setns takes it for every namespace at once), checked to be that
    process: a pidfd can't move on to another process if the pid is reused later."""
    pid = spec["pid"]
    gone = OSError(errno.ESRCH, "the instance's init is gone (the instance stopped)")
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise gone from None
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        fd = -1   # Linux < 5.3: the namespace files (see _Joiner)
    if _start_time(pid) != spec["started"]:   # the pid was reused: that is not the instance's init
        if fd >= 0:
            os.close(fd)
        raise gone
    return fd


_BIND_ATTRIBUTES = ns.MOUNT_ATTR_RDONLY | ns.MOUNT_ATTR_NOSUID | ns.MOUNT_ATTR_NODEV | ns.MOUNT_ATTR_NOEXEC
# namespaces in the order nsenter joins them: user first, mnt last
_NAMESPACE_FILES = ((ns.CLONE_NEWUSER, "user"), (ns.CLONE_NEWIPC, "ipc"), (ns.CLONE_NEWUTS, "uts"),
                    (ns.CLONE_NEWNET, "net"), (ns.CLONE_NEWPID, "pid"), (ns.CLONE_NEWNS, "mnt"))


class _Joiner:
    """Joins the instance's namespaces through init's pidfd (Linux 5.8+), or else through its namespace
    files, all opened at the first refusal: nothing is joined by a refused call, so /proc is still the
    host's then (in the instance's mount namespace it is the instance's)."""

    def __init__(self, pidfd: int, pid: int, flags: int):
        self.pidfd, self.pid, self.left = pidfd, pid, flags
        self.files: dict[int, int] | None = None

    def join(self, flags: int) -> None:
        if self.files is None:
            try:
                if self.pidfd < 0:
                    raise OSError(errno.EINVAL, "no pidfd")
                ns.setns(self.pidfd, flags)
                self.left &= ~flags
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
            self.files = {flag: os.open(f"/proc/{self.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                          for flag, name in _NAMESPACE_FILES if self.left & flag}
        for flag, _ in _NAMESPACE_FILES:
            if flags & flag:
                fd = self.files.pop(flag)
                try:
                    ns.setns(fd, flag)
                finally:
                    os.close(fd)
        self.left &= ~flags


def _attach(trees: list[tuple[int, str, bool, bool]], attached: list[str], held: list[int]) -> None:
    """In the instance: attach each detached tree on a fresh mount point, listed in ``attached``. Each
    per-call folder stays locked (flock, in ``held``) while this launcher lives: one whose launcher was
    killed is unlocked, and the next launcher removes it (:func:`_sweep`)."""
    for fd, inside, is_dir, read_only in trees:
        folder = os.path.dirname(inside)
        os.makedirs(os.path.dirname(folder), mode=0o755, exist_ok=True)
        # made under a dot name, locked, then renamed: a sweeper never sees it unlocked
        hidden = os.path.join(os.path.dirname(folder), "." + os.path.basename(folder))
        os.mkdir(hidden, 0o755)
        lock = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        held.append(lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(hidden, folder)
        if is_dir:
            os.mkdir(inside, 0o755)
        else:
            os.close(os.open(inside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        attached.append(inside)
        ns.move_mount(fd, inside)
        os.close(fd)
        if not read_only:
            have = os.statvfs(inside).f_flag
            kept = ((ns.MS_RELATIME if have & os.ST_RELATIME else 0)
                    | (ns.MS_NOATIME if have & os.ST_NOATIME else 0))
            ns.mount(None, inside, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV
                     | ns.MS_NOEXEC | kept)


def _detach(attached: list[str]) -> None:
    for inside in attached:
        try:
            ns.umount(inside, ns.MNT_DETACH | ns.UMOUNT_NOFOLLOW)
        except OSError:
            pass
        for remove in (os.rmdir, os.unlink):
            try:
                remove(inside)
                break
            except OSError:
                continue
        try:
            os.rmdir(os.path.dirname(inside))
        except OSError:
            pass
    attached.clear()


def _sweep() -> None:
    """In the instance: remove the bind mounts of launchers that were killed (their folder is unlocked)."""
    try:
        names = os.listdir(BIND_ROOT)
    except OSError:
        return
    for name in names:
        folder = os.path.join(BIND_ROOT, name)
        try:
            lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _detach([os.path.join(folder, entry) for entry in os.listdir(folder)])
            os.rmdir(folder)
        except OSError:
            continue   # locked: its launcher still runs
        finally:
            os.close(lock)


def _exec_child(last_cap: int, cwd: str | None, argv: list[str], held: list[int]) -> None:
    try:
        for lock in held:   # the command holds its bind mounts' locks too, should the launcher be killed
            os.set_inheritable(lock, True)
        confine.confine(last_cap)
    except OSError as e:
        _say(f"cannot confine the command: {e}")
        os._exit(STATUS_LAUNCHER)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    if cwd and cwd != "/":
        try:
            os.chdir(cwd)
        except OSError as e:
            _say(f"cannot change to folder {cwd} in the instance: {e.strerror}")
            os._exit(2)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        _say(f"cannot run {argv[0]} in the instance: {e.strerror}")
        os._exit(STATUS_NOT_FOUND if isinstance(e, FileNotFoundError) else STATUS_CANNOT_RUN)


def run(spec: LaunchSpec, argv: list[str]) -> int:
    last_cap = confine.prepare()
    binds = [(os.path.abspath(host), inside) for host, inside in spec.get("binds") or ()]
    kinds = [(host, os.path.isdir(host)) for host, _ in binds]
    init = _open_init(spec)
    flags = ns.CLONE_NEWNS | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC | ns.CLONE_NEWPID
    flags |= ns.CLONE_NEWNET if spec.get("private_net") else 0
    flags |= ns.CLONE_NEWUSER if spec.get("userns") else 0
    joiner = _Joiner(init, spec["pid"], flags)
    if spec.get("userns"):
        joiner.join(ns.CLONE_NEWUSER)
        if binds:   # a mount namespace this user namespace owns, for open_tree
            ns.unshare(ns.CLONE_NEWNS)
    trees = []
    for (host, inside), (_, is_dir) in zip(binds, kinds, strict=True):
        fd = ns.open_tree(host)
        try:
            ns.set_tree_attributes(fd, _BIND_ATTRIBUTES)
            read_only = True
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            read_only = False   # Linux < 5.12: remounted read-only once attached
        trees.append((fd, inside, is_dir, read_only))
    joiner.join(flags & ~ns.CLONE_NEWUSER)
    if init >= 0:
        os.close(init)
    attached: list[str] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        _detach(attached)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    held: list[int] = []
    try:
        if trees:
            _sweep()
        _attach(trees, attached, held)
    except OSError as e:
        _detach(attached)
        raise OSError(e.errno, f"cannot bind the host's files into the instance: {e}") from e
    child = os.fork()
    if child == 0:
        _exec_child(last_cap, spec.get("cwd"), argv, held)
    try:
        while True:
            _, status = os.waitpid(child, os.WUNTRACED)
            if os.WIFSTOPPED(status):   # the child was suspended: so are we (as nsenter)
                os.kill(os.getpid(), signal.SIGSTOP)
                os.kill(child, signal.SIGCONT)
                continue
            break
    finally:
        _detach(attached)
    if os.WIFSIGNALED(status):
        killer = os.WTERMSIG(status)
        signal.signal(killer, signal.SIG_DFL)
        os.kill(os.getpid(), killer)
    return os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 128 + os.WTERMSIG(status)


def main(args: list[str]) -> int:
    try:
        spec, argv = parse(args)
    except ValueError:
        _say("usage: enter.py PID STARTED FLAGS CWD N [HOST INSIDE]... -- COMMAND...")
        return STATUS_LAUNCHER
    try:
        return run(spec, argv)
    except OSError as e:
        _say(f"cannot enter the instance: {e.strerror or e}")
        return STATUS_LAUNCHER


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
