"""Spawning a hook script and ending what it started.

Owns the command line (§7.2: direct exec, ``/bin/sh`` on ENOEXEC, ``su``/``sudo`` for runas), the
spawn itself (§7.3: environment as given, cwd, a closed stdin pipe, a new process group), the
per-hook supervisor, the view of the hook's process tree, and the group kill / descendant sweep.
Must not import ``agent``.

Why a new process *group* and not a new session (``start_new_session``): the agent makes its child a
group leader with ``setpgid`` and the hook keeps the agent's session; the observable difference is the
controlling terminal (a hook started from an interactive ``cdsim`` can still open ``/dev/tty``, and
job-control signals of that terminal do not reach it either way), so we match the agent.

The supervisor: each script is the child of a small process of its own, forked from cdsim, that is a
child subreaper (``PR_SET_CHILD_SUBREAPER``). Whatever the hook's tree orphans (a double fork, a
``setsid`` child whose parent exited, the shell that ``su -l`` started) is re-parented to it instead
of init, so the hook's processes are the supervisor's descendants whatever they did to their
session, group or environment. It reaps those orphans, reports the script's wait status and CPU time
on a pipe, and exits when cdsim closes its lifeline: what a successful hook started on purpose then
goes to init and keeps running, as with the agent. When the script ended leaving no process behind
(the supervisor has no child left once it reaped it, so the hook has no process and never will) the
report says so and the supervisor exits at once: cdsim then reads no descendants and waits for no
exit (the common case, and most of a short hook's cost before). cdsim itself is not the subreaper: orphans of
every hook (and of every other child) would come back to it for good, reaping them would race with
``subprocess``'s own waits, and with deployments running in parallel nothing would say which hook an
orphan came from. Where the host allows it the script also runs in a cgroup of its own (``cgroup``).

Why a fork per hook and not a helper program: a Python interpreter takes ~10 ms to start, twice the
budget for a hook's whole overhead, and a long-lived helper would not follow what a hook inherits from
cdsim at that moment (namespaces, root, umask, limits); a fork takes under 1 ms. The forked
supervisor loads nothing (``resource``, which ``os.wait4`` imports on every call, is imported here:
loading it in each supervisor cost 0.8 ms a hook), turns off the garbage collector (a collection
would copy every page of cdsim's heap), closes every descriptor it does not need (cdsim's deployment
lock among them: a hook never holds it), catches the terminal's signals with a handler that does
nothing (^C reaches cdsim, which ends the hook; the supervisor must outlive the script to report it)
and starts the script with ``subprocess`` as cdsim did before it had a supervisor (vfork: no second
copy of cdsim's memory; not ``posix_spawn``, whose glibc leaves two internal signals ignored in the
new program). So the script gets cdsim's signal mask and dispositions (a caught signal becomes the
default at exec), SIGPIPE and SIGXFSZ at their defaults, and its environment exactly as given: the
supervisor adds nothing to it.

The tree: while the supervisor lives, the hook's processes are its descendants (read from
``/proc/PID/task/TID/children``, which costs a few reads per member instead of one per process on
the host) plus the members of the hook's cgroup; once it reported that the script left no process,
only the cgroup (if any) is read. Once it is gone (or where /proc lacks those files), all of /proc
is read, and a process belongs to the hook if it descends from the supervisor or the script, is in
the hook's process group or cgroup, or was seen as a member before.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import importlib
import os
import resource  # noqa: F401 - os.wait4 imports it on each call: loaded once here, not in each supervisor
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from hooks_runtime.cgroup import HookCgroup
from hooks_runtime.diagnostics import ProcStat, all_pids, descendants_of, read_stat

_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
_prctl = ctypes.CDLL(None, use_errno=True).prctl   # resolved here, not in the forked child
_NAME = ctypes.c_char_p(b"cdsim-hook")               # the supervisor's name (comm); made here too
_HELD_SIGNALS = tuple(int(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT))
_SIG_IGN = int(signal.SIG_IGN)
# The C functions behind signal.signal and signal.getsignal, without their wrappers' enum
# conversions (which raise and catch an exception per call when a handler is a function): in the
# forked supervisor every object touched is a page of cdsim's heap to copy (40 pages, 0.1 ms a hook).
_c_signal = importlib.import_module("_signal")
_set_handler: Callable[[int, Callable[[int, FrameType | None], None]], object] = _c_signal.signal
_get_handler: Callable[[int], object] = _c_signal.getsignal
_fork_lock = threading.Lock()
REAP_INTERVAL = 0.1   # seconds: how long an orphan of the hook may stay a zombie of the supervisor


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
class Exit:
    """How the script ended, as its supervisor reaped it; both None if the supervisor died first."""

    status: int | None    # raw wait status
    cpu: float | None     # user + system seconds of the script and the children it reaped
    alone: bool = False   # the script left no process behind: the supervisor had no child left
                          # when it reaped it, so the hook has no process now or ever after


@dataclass
class Spawned:
    """A started script and its supervisor."""

    pid: int            # the script
    supervisor: int     # its parent, the per-hook subreaper (our child)
    argv: list[str]
    stdout: int         # read ends, owned by the caller
    stderr: int
    reports: int        # read end of the supervisor's reports; readable when the script has ended
    lifeline: int       # write end; its end of file (cdsim gone) makes the supervisor exit
    cgroup: HookCgroup | None
    _pending: bytes = b""
    _finished: bool = False

    def read_exit(self) -> Exit | None:
        """Read what the supervisor sent (call when ``reports`` is readable): the script's end, or
        None if that has not come yet."""
        chunk = os.read(self.reports, 4096)
        if not chunk:
            return Exit(None, None)
        self._pending += chunk
        if not self._pending.endswith(b"\n"):
            return None
        kind, status, cpu, alone = self._pending.split()
        assert kind == b"X", self._pending
        return Exit(int(status), float(cpu), alone == b"1")

    def wait_exit(self, seconds: float) -> Exit | None:
        """Block up to ``seconds`` for the script's end."""
        poller = select.poll()
        poller.register(self.reports, select.POLLIN)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if poller.poll(int(left * 1000) + 1):
                done = self.read_exit()
                if done is not None:
                    return done
        return None

    def finish(self) -> None:
        """End the supervisor and reap it (what the hook left running goes to init), then hand
        the cgroup's survivors back to our cgroup and remove it. Idempotent. SIGKILL rather than
        the lifeline's end of file: it has nothing left to do, and the kernel ends it without
        waiting for it to be scheduled (on a busy host, milliseconds per hook). Its pid cannot
        have been reused: it is our child, not yet reaped."""
        if self._finished:
            return
        self._finished = True
        for fd in (self.lifeline, self.reports):
            _close(fd)
        try:
            os.kill(self.supervisor, signal.SIGKILL)
            os.waitpid(self.supervisor, 0)
        except ChildProcessError:
            pass
        if self.cgroup is not None:
            self.cgroup.release()


def spawn(argv: list[str], env: Mapping[str, str], cwd: str, *, cgroup: bool = True) -> Spawned:
    """Start the script under its supervisor (and in a cgroup of its own when ``cgroup`` and the
    host allow it). Raises OSError as the spawn fails (ENOENT for a bad ``#!`` line or a missing
    ``su``/``sudo``); a file without ``#!`` (ENOEXEC) is run by ``/bin/sh``, as Ruby's spawn does."""
    child_env = dict(env)
    group = HookCgroup.create() if cgroup else None
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe()
    os.close(in_w)   # the agent's stdin: a pipe closed at once, reads see end of file
    rep_r, rep_w = os.pipe()
    life_r, life_w = os.pipe()
    for fd in (out_r, err_r):
        try:   # a bigger pipe means fewer wake-ups for a chatty hook; not essential
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass
    try:
        supervisor = _fork()
        if supervisor == 0:
            _supervise(argv, child_env, cwd, (in_r, out_w, err_w), rep_w, life_r, group)
    except BaseException:
        for fd in (out_r, err_r, rep_r, life_w):
            os.close(fd)
        if group is not None:
            group.release()
        raise
    finally:
        for fd in (in_r, out_w, err_w, rep_w, life_r):
            os.close(fd)
    sp = Spawned(0, supervisor, argv, out_r, err_r, rep_r, life_w, group)
    line = b""
    try:
        while not line.endswith(b"\n"):   # a byte at a time: the script's end may follow at once
            byte = os.read(rep_r, 1)
            if not byte:
                break
            line += byte
    except BaseException:   # ^C while it starts: end whatever has started
        if group is not None:
            group.kill()
        for fd in (out_r, err_r):
            os.close(fd)
        sp.finish()
        raise
    fields = line.split()
    if fields[:1] == [b"P"]:
        sp.pid = int(fields[1])
        if fields[2] == b"1":
            sp.argv = ["/bin/sh", argv[0]]
        return sp
    for fd in (out_r, err_r):
        os.close(fd)
    sp.finish()
    if fields[:1] == [b"E"]:
        code = int(fields[1])
        name = os.fsdecode(bytes.fromhex(fields[2].decode()))
        raise OSError(code, os.strerror(code), name)
    raise OSError(errno.ECHILD, "the hook's supervisor ended before it started the script", argv[0])


def _fork() -> int:
    """os.fork. Python 3.12 warns when the process has threads (the child may inherit a lock held
    by one); the supervisor touches no such lock (no logging, no imports, no threads of its own),
    so that warning is silenced for this call."""
    if sys.version_info >= (3, 12):
        # catch_warnings swaps the module's filter list: two threads inside at once could leave
        # one's "ignore" behind for good, so our forks take turns.
        with _fork_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return os.fork()
    return os.fork()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _say(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass   # cdsim is gone; nobody to tell


def _keep_only(keep: set[int]) -> None:
    """Close every descriptor but ``keep`` (close_range: cheap whatever the limit)."""
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _supervise(argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int],
               reports: int, lifeline: int, group: HookCgroup | None) -> NoReturn:
    """The supervisor, in the forked child: never returns."""
    try:
        gc.disable()   # a collection would touch (and so copy) every page of cdsim's heap
        _keep_only({0, 1, 2, *stdio, reports, lifeline})
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        _prctl(_PR_SET_NAME, _NAME, 0, 0, 0)
        for sig in _HELD_SIGNALS:
            # Caught, not ignored or blocked: the script's exec resets a caught signal to its
            # default, so it gets what it got from cdsim (an ignored one stays ignored for both).
            if _get_handler(sig) != _SIG_IGN:
                _set_handler(sig, _ignore)
        try:
            proc, through_sh = _spawn_script(argv, env, cwd, stdio, group)
        except OSError as exc:
            name = exc.filename if exc.filename is not None else argv[0]
            _say(reports, b"E %d %s\n" % (exc.errno or errno.EINVAL, os.fsencode(name).hex().encode()))
        else:
            for fd in stdio:
                os.close(fd)
            _say(reports, b"P %d %d\n" % (proc.pid, through_sh))
            _reap_until_released(proc, reports, lifeline)
    finally:
        os._exit(0)


def _ignore(signum: int, frame: object) -> None:
    """The supervisor's handler for the terminal's signals: it must outlive the script."""


def _spawn_script(argv: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int],
                  group: HookCgroup | None) -> tuple[subprocess.Popen[bytes], bool]:
    """Start the script exactly as cdsim did before it had a supervisor: ``subprocess`` (vfork: no
    second copy of cdsim's memory) with its stdio, own process group, cwd, ``env``'s PATH and
    ``/bin/sh`` on ENOEXEC; inside the hook's cgroup, which the supervisor joins just for the spawn.
    Returns the process and whether it is ``/bin/sh`` running the script (the ENOEXEC case)."""
    if group is not None:
        group.enter()
    try:
        try:
            return _popen(argv, stdio, env, cwd), False
        except OSError as exc:
            if exc.errno != errno.ENOEXEC or len(argv) != 1:
                raise
        return _popen(["/bin/sh", argv[0]], stdio, env, cwd), True
    finally:
        if group is not None:
            group.leave()


def _popen(argv: list[str], stdio: tuple[int, int, int], env: dict[str, str],
           cwd: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], env=env, cwd=cwd,
                            process_group=0, close_fds=True)


def _reap_until_released(proc: subprocess.Popen[bytes], reports: int, lifeline: int) -> None:
    """Reap the script (reporting its end) and every orphan re-parented to us, until cdsim closes
    the lifeline (or dies). If the script left no process behind (no child of ours is left once it
    is reaped: its orphans were re-parented to us before it became a zombie), say so and return at
    once: with no child we have no descendant, and none can appear, so there is nothing to wait for
    (cdsim then neither scans for the hook's processes nor waits for our exit)."""
    script = proc.pid
    pidfd = os.pidfd_open(script)
    poller = select.poll()
    poller.register(lifeline, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll(int(REAP_INTERVAL * 1000))}
        ended: tuple[int, float] | None = None
        childless = False
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                childless = True
                break
            if pid == 0:
                break
            if pid == script:
                proc.returncode = os.waitstatus_to_exitcode(status)   # so Popen never waits for it
                ended = (status, usage.ru_utime + usage.ru_stime)
                poller.unregister(pidfd)
                os.close(pidfd)
        if ended is not None:
            _say(reports, b"X %d %r %d\n" % (*ended, childless))
            if childless:
                return
        if lifeline in ready and not os.read(lifeline, 64):
            return


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

    def __init__(self, root: int, supervisor: int, cgroup: HookCgroup | None = None) -> None:
        self.root = root
        self.pgid = root
        self.supervisor = supervisor
        self.supervisor_alive = True   # until we let it go
        self.alone = False             # the supervisor reported the script ended leaving no process
        self.cgroup = cgroup
        self._start: int | None = None           # the supervisor's start: read when /proc is first scanned
        self.known: dict[int, ProcStat] = {}     # pid -> last stat of every member seen
        self.peak_rss = 0                        # largest sum of RSS over one scan

    def scan(self) -> dict[int, ProcStat]:
        """Current live members (the root included while it is unreaped), and update the figures.
        While the supervisor lives its descendants are the whole tree (it is their subreaper), so
        only they are read; otherwise, all of /proc. Once the supervisor reported that the script
        left no process behind it has no descendant (it may have exited): only the cgroup is read."""
        if self.alone:
            below: set[int] | None = set()
        else:
            below = descendants_of(self.supervisor) if self.supervisor_alive else None
        if below is None:
            members = self._scan_all()
        else:
            if self.cgroup is not None:
                below.update(self.cgroup.members())
            members = {}
            for pid in below:
                st = read_stat(pid)
                if st is not None and st.alive and pid not in (self.supervisor, os.getpid()):
                    members[pid] = st
        self.known.update(members)
        self.peak_rss = max(self.peak_rss, sum(st.rss for st in members.values()))
        return members

    def _scan_all(self) -> dict[int, ProcStat]:
        if self._start is None:
            # The hook's processes all started after the supervisor, which is our child, not
            # reaped until the run is over: its pid names it (alive or a zombie) until then.
            stat = read_stat(self.supervisor) if self.supervisor_alive else None
            self._start = stat.start_ticks if stat else 0
        stats: dict[int, ProcStat] = {}
        for pid in all_pids():
            st = read_stat(pid)
            if st is not None and st.start_ticks >= self._start and st.alive:
                stats[pid] = st   # older processes cannot be ours
        in_cgroup = set(self.cgroup.members()) if self.cgroup is not None else set()
        members: dict[int, ProcStat] = {}
        for pid, st in stats.items():
            seen = self.known.get(pid)
            if (pid == self.root or st.pgid == self.pgid or st.ppid == self.supervisor or pid in in_cgroup
                    or (seen is not None and seen.start_ticks == st.start_ticks)):
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
        members.pop(self.supervisor, None)
        members.pop(os.getpid(), None)
        return members

    def descendants(self) -> dict[int, ProcStat]:
        """Live members other than the root script itself."""
        return {pid: st for pid, st in self.scan().items() if pid != self.root}

    def orphan_cpu(self, pids: set[int]) -> float:
        """CPU seconds of those processes (as last seen) that the supervisor, not the tree, reaped:
        the root's rusage cannot include them."""
        total = 0.0
        for pid in pids:
            st = self.known.get(pid)
            if st is not None and pid != self.root and st.ppid not in self.known:
                total += st.cpu_seconds
        return total
