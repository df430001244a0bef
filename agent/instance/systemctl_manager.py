"""The unit manager of an instance: what answers the instance's ``systemctl`` (agent.instance.systemctl).

A child of the instance's init (forked by agent.instance.keeper once the instance's root is in place
and confined, so it holds no more than any process of the instance), it stands in for systemd without
being PID 1: it reads unit files from the instance's own /etc/systemd/system, /run/systemd/system,
/usr/lib/systemd/system and /lib/systemd/system, starts a unit's processes as its own children (each
in a session of its own, stdin /dev/null, stdout and stderr appended to ``/run/log/units/UNIT.log``)
and is their subreaper, so a service started from a hook is never part of the hook's process tree:
the hook's timeout sweep can't reach it and it outlives the hook, as under systemd. It serves one
request at a time on :data:`agent.instance.systemctl.SOCKET` (peer credentials: only root changes
anything, as polkit would let only root) and, told to stop (SIGTERM from init, at ``cdsim instance
stop``), stops every active unit with its ``ExecStop=`` and signals within :data:`SHUTDOWN_BUDGET`.

Supported: Type=simple/exec/forking/oneshot/notify/idle, ExecStartPre/ExecStart/ExecStartPost/
ExecReload/ExecStop/ExecStopPost (prefixes ``-@:+!``), Environment=, EnvironmentFile= (``-`` optional),
User=, Group=, WorkingDirectory= (``-``, ``~``), UMask=, PIDFile=, RemainAfterExit=, Restart= (no,
always, on-success, on-failure, on-abnormal) with RestartSec= and a start limit of 5 in 10 s,
TimeoutStartSec=/TimeoutStopSec=/TimeoutSec=, KillMode=, KillSignal=, drop-ins (``UNIT.d/*.conf``),
enable/disable (the ``.wants`` links systemd makes), mask/unmask. Not: dependencies and ordering
(Requires=, After=, targets), sockets, timers, templates' instances beyond ``%i``, cgroups and
resource limits, sandboxing options, starting enabled units when the instance starts, and a journal
(``status`` shows the end of the unit's log file, ``journalctl -u UNIT`` prints it). Must not import
the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import ctypes
import errno
import grp
import json
import os
import pwd
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.instance import namespaces as ns
from agent.instance import systemctl_units as units
from agent.instance.systemctl import JOURNALCTL, JOURNALCTL_PATHS, PATHS, SOCKET

NOTIFY_SOCKET = "/run/systemd/notify"
LOG_DIR = "/run/log/units"
SHUTDOWN_BUDGET = 3.0   # seconds the manager takes at most to stop every unit when the instance stops
WRAPPER = "systemctl"   # the stand-in's file in the instance folder (host side)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VERSION = "systemd 252 (252-cdsim)\ncdsim's systemctl stand-in: no systemd runs in this instance\n"
START_LIMIT = (5, 10.0)   # starts within seconds, as systemd's DefaultStartLimitBurst/IntervalSec
_PR_SET_CHILD_SUBREAPER, _PR_SET_NAME = 36, 15
CLEAN_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)
_EXIT_NAMES = {0: "SUCCESS", 1: "FAILURE", 2: "INVALIDARGUMENT", 3: "NOTIMPLEMENTED", 4: "NOPERMISSION",
               5: "NOTINSTALLED", 6: "NOTCONFIGURED", 7: "NOTRUNNING", 200: "CHDIR", 203: "EXEC", 216: "GROUP",
               217: "USER"}
_ENABLED = ("enabled", "enabled-runtime", "static", "alias", "indirect", "generated")
_MUTATING = {"start", "stop", "restart", "try-restart", "reload", "reload-or-restart", "try-reload-or-restart",
             "enable", "disable", "mask", "unmask", "kill", "reset-failed", "daemon-reload", "daemon-reexec"}


# ---- host side: the file the instance gets as systemctl --------------------------------------------

def runnable_by_everyone(path: str) -> bool:
    """Whether every user can execute ``path``: the file and each folder on its way (links resolved)."""
    real = os.path.realpath(path)
    folders = [real]
    while folders[-1] != "/":
        folders.append(os.path.dirname(folders[-1]))
    try:
        return all(os.stat(p).st_mode & 0o001 for p in folders)
    except OSError:
        return False


def stand_in_python(preferred: str, fallback: str = "/usr/bin/python3") -> str:
    """The interpreter the stand-in's ``#!`` line names in a host-overlay instance: ``preferred``
    (cdsim's) if every user inside can run it (hooks run systemctl as other users too), else the
    system's python3 (the stand-in needs only the standard library), else ``preferred``."""
    if runnable_by_everyone(preferred) or not runnable_by_everyone(fallback):
        return preferred
    return fallback


def write_wrapper(instance_folder: str, data: bytes) -> str:
    """Write (if changed) the instance's ``systemctl`` file (from ``wrapper_text`` or
    ``shell_wrapper_text``); return its path."""
    path = os.path.join(instance_folder, WRAPPER)
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return path
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def systemd_init_problems(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """What this host lacks for ``--init systemd`` (the image's systemd as the instance's PID 1), as
    systemd 252 needs it in a container: a cgroup v2 hierarchy at /sys/fs/cgroup that can be delegated
    to the instance (its own cgroup namespace, a writable subtree), user namespaces (so that its
    CAP_SYS_ADMIN is the namespace's, not the host's), and a systemd to boot."""
    problems = []
    try:
        with open(mountinfo, encoding="utf-8") as f:
            mounts = [line.split() for line in f]
    except OSError:
        mounts = []
    kinds = {fields[4]: fields[fields.index("-") + 1] for fields in mounts if "-" in fields}
    if kinds.get("/sys/fs/cgroup") != "cgroup2":
        v1 = sorted(point for point, kind in kinds.items() if kind == "cgroup" and point.startswith("/sys/fs/cgroup/"))
        problems.append("a cgroup v2 hierarchy at /sys/fs/cgroup (this host has "
                        + (f"cgroup v1 ({len(v1)} hierarchies, the legacy/hybrid layout)" if v1 else "none") + ")")
    else:
        own = "/sys/fs/cgroup"
        try:
            with open("/proc/self/cgroup", encoding="ascii") as f:
                own += next((line[3:].strip() for line in f if line.startswith("0::")), "")
        except OSError:
            pass
        if not os.access(os.path.join(own.rstrip("/") or "/", "cgroup.subtree_control"), os.W_OK):
            problems.append(f"a cgroup it may delegate ({own} is not writable by this user)")
    try:
        with open("/proc/sys/user/max_user_namespaces", encoding="ascii") as f:
            if f.read().strip() == "0":
                problems.append("user namespaces (user.max_user_namespaces is 0)")
    except OSError:
        problems.append("user namespaces (no /proc/sys/user/max_user_namespaces)")
    if not any(os.access(path, os.X_OK) for path in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        problems.append("a systemd to boot (no /usr/lib/systemd/systemd)")
    return problems


# ---- inside, as init: mount the stand-in, fork the manager ------------------------------------------

TOOLS = (PATHS, JOURNALCTL_PATHS)   # where the stand-in goes: systemctl, and journalctl


def clone_wrapper(path: str) -> list[int]:
    """Before the pivot, while the instance folder is in sight: one detached read-only copy of the
    stand-in file ``path`` per place it may be mounted (open_tree; move_mount attaches each once)."""
    trees = []
    for _ in (p for paths in TOOLS for p in paths):
        fd = ns.open_tree(path)
        try:
            ns.set_tree_attributes(fd, ns.MOUNT_ATTR_RDONLY | ns.MOUNT_ATTR_NOSUID | ns.MOUNT_ATTR_NODEV)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                os.close(fd)
                raise
            # Linux < 5.12: the mount stays writable; it is the instance's own copy in its folder
        trees.append(fd)
    return trees


def missing_tools(exists: Callable[[str], bool]) -> list[str]:
    """The paths :func:`install` creates (empty) to mount the stand-in on: the first of each tool's
    paths where none of them is a file (``exists`` tells, for the tree in question)."""
    return [paths[0] for paths in TOOLS if not any(exists(path) for path in paths)]


def install(trees: list[int]) -> None:
    """In the instance's mount namespace, after the pivot and before confinement: the stand-in (the
    trees of :func:`clone_wrapper`) over every ``systemctl`` and ``journalctl`` of
    :data:`agent.instance.systemctl.PATHS` and ``JOURNALCTL_PATHS`` that is a file (one mount per real
    file: /bin may be a link to usr/bin; made, empty, at the first path when there is none); and
    /run/systemd/system, the folder by which programs tell that systemd manages the machine (sd_booted)."""
    targets: list[str] = []
    for path in missing_tools(lambda p: os.path.isfile(os.path.realpath(p))):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755))
    for paths in TOOLS:
        for path in paths:
            real = os.path.realpath(path)
            if os.path.isfile(real) and real not in targets:
                targets.append(real)
    for fd, target in zip(trees, targets, strict=False):
        ns.move_mount(fd, target)
    for fd in trees:
        os.close(fd)
    for folder in ("/run/systemd/system", LOG_DIR):
        os.makedirs(folder, mode=0o755, exist_ok=True)


def fork_manager(hostname: str) -> int:
    """Fork the unit manager (call as the instance's init, confined); returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            code = Manager(hostname).serve()
        finally:
            os._exit(code)
    return pid


# ---- the manager ------------------------------------------------------------------------------------

@dataclass
class State:
    """What the manager knows of one loaded unit."""

    unit: units.Unit
    mtime: float
    active: str = "inactive"     # ActiveState
    sub: str = "dead"            # SubState
    result: str = "success"
    main_pid: int = 0
    main_status: str = ""        # "(code=exited, status=0/SUCCESS)" of the last main process
    last_main: int = 0           # its pid
    since: float = 0.0
    started_at: float = 0.0
    sessions: set[int] = field(default_factory=set)
    processes: list[str] = field(default_factory=list)   # "Process:" lines of status
    status_text: str = ""        # STATUS= from sd_notify
    stopping: bool = False
    starts: list[float] = field(default_factory=list)


class Failed(Exception):
    """A job failed; ``result`` is systemd's Result (exit-code, signal, timeout, resources, ...)."""

    def __init__(self, result: str) -> None:
        super().__init__(result)
        self.result = result


class Manager:
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.states: dict[str, State] = {}
        self.watch: set[int] = set()
        self.exited: dict[int, int] = {}
        self.timers: dict[str, float] = {}
        self.stop_requested = False
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)   # a unit's daemonized processes come back to us
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(b"cdsim-units"), 0, 0, 0)
        os.makedirs(os.path.dirname(SOCKET), mode=0o755, exist_ok=True)
        os.makedirs(LOG_DIR, mode=0o755, exist_ok=True)
        for path in (SOCKET, NOTIFY_SOCKET):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(SOCKET)
        os.chmod(SOCKET, 0o666)
        self.listener.listen(16)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(NOTIFY_SOCKET)
        os.chmod(NOTIFY_SOCKET, 0o666)
        self.notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.notify.setblocking(False)

    def _terminate(self, _signum: int, _frame: object) -> None:
        self.stop_requested = True

    # -- the loop ------------------------------------------------------------------------------------
    def serve(self) -> int:
        while not self.stop_requested:
            now = time.monotonic()
            due = [name for name, when in self.timers.items() if when <= now]
            for name in due:
                del self.timers[name]
                self._restart_after_exit(name)
            wait = min((when - now for when in self.timers.values()), default=60.0)
            ready, _, _ = select.select([self.listener.fileno(), self.notify.fileno(), self.wake_r], [], [],
                                        max(0.0, wait))
            self._drain()
            self._reap()
            if self.notify.fileno() in ready:
                self._read_notify()
            if self.listener.fileno() in ready:
                self._answer()
        self._shutdown()
        return 0

    def _drain(self) -> None:
        try:
            while os.read(self.wake_r, 256):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _answer(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                conn.settimeout(5.0)
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", creds)
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                argv = [str(a) for a in json.loads(data)["argv"]]
            except (OSError, ValueError, KeyError, TypeError):
                return
            try:
                status, out, err = Command(self, argv, uid).run()
            except Exception as e:  # noqa: BLE001 - a bug must not end the manager (and every service)
                status, out, err = 1, "", f"cdsim's systemctl stand-in failed: {type(e).__name__}: {e}\n"
            try:
                conn.settimeout(30.0)
                conn.sendall(json.dumps({"status": status, "stdout": out, "stderr": err}).encode())
            except OSError:
                pass

    # -- children -----------------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.watch:
                self.watch.discard(pid)
                self.exited[pid] = status
            for st in self.states.values():
                if st.main_pid == pid:
                    self._main_exited(st, status)

    def wait_pid(self, pid: int, timeout: float) -> int | None:
        """The wait status of a child we watch, once it exits within ``timeout`` s; None if not."""
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            if pid in self.exited:
                return self.exited.pop(pid)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.wake_r], [], [], min(left, 1.0))
            self._drain()

    def _main_exited(self, st: State, status: int) -> None:
        st.last_main, st.main_pid = st.main_pid, 0
        st.main_status = describe_status(status)
        if st.stopping or st.active in ("activating", "deactivating"):
            st.result = "success" if _clean(status) else _result_of(status)
            return
        clean = _clean(status)
        self.log(st, f"{st.unit.name}: Main process exited, {st.main_status[1:-1]}")
        if st.unit.flag("Service", "RemainAfterExit") and clean:
            st.sub = "exited"
            return
        self._kill_rest(st, 1.0)
        if clean:
            st.active, st.sub, st.result = "inactive", "dead", "success"
            self.log(st, f"{st.unit.name}: Deactivated successfully.")
        else:
            st.active, st.sub, st.result = "failed", "failed", _result_of(status)
            self.log(st, f"{st.unit.name}: Failed with result '{st.result}'.")
        st.since = time.time()
        policy = st.unit.get("Service", "Restart", "no")
        abnormal = os.WIFSIGNALED(status) and not clean
        if policy == "always" or (policy == "on-success" and clean) or (policy == "on-failure" and not clean) \
                or (policy == "on-abnormal" and abnormal):
            delay = units.seconds(st.unit.get("Service", "RestartSec"), 0.1)
            self.timers[st.unit.name] = time.monotonic() + delay

    def _restart_after_exit(self, name: str) -> None:
        st = self.states.get(name)
        if st is None or st.active in ("active", "activating"):
            return
        self.log(st, f"{name}: Scheduled restart job, restart counter is at {len(st.starts)}.")
        try:
            self.start(st)
        except Failed:
            pass

    def _read_notify(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.notify.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sender = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
            st = self._owner(sender)
            if st is None:
                continue
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    st.sub = "ready" if st.active == "activating" else st.sub
                elif key == "MAINPID" and value.isdigit():
                    st.main_pid = int(value)
                elif key == "STATUS":
                    st.status_text = value

    def _owner(self, pid: int) -> State | None:
        if pid <= 0:
            return None
        for st in self.states.values():
            if pid in self.unit_pids(st):
                return st
        return None

    # -- units --------------------------------------------------------------------------------------
    def find(self, name: str) -> State | None:
        """The unit called ``name`` (loaded now if not yet); None if no unit file has that name."""
        st = self.states.get(name)
        if st is not None:
            return st
        unit = load_unit(name)
        if unit is None:
            return None
        st = State(unit, _mtime(unit))
        self.states[name] = st
        return st

    def reload_units(self) -> None:
        for name, st in list(self.states.items()):
            unit = load_unit(name)
            if unit is None:
                if st.active in ("inactive", "failed"):
                    del self.states[name]
                continue
            st.unit, st.mtime = unit, _mtime(unit)

    def log(self, st: State, message: str, ident: str = "systemd[1]") -> None:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime())
        try:
            with open(log_path(st.unit.name), "a", encoding="utf-8") as f:
                f.write(f"{stamp} {self.hostname} {ident}: {message}\n")
        except OSError:
            pass

    def environment(self, st: State) -> dict[str, str]:
        svc = st.unit
        env = {"PATH": BASE_PATH, "INVOCATION_ID": os.urandom(16).hex()}
        try:   # the system locale, as systemd gives every service (nothing of cdsim's environment)
            with open("/etc/locale.conf", encoding="utf-8", errors="replace") as f:
                env.update({k: v for k, v in units.environment_file(f.read()).items() if k.startswith(("LANG", "LC_"))})
        except OSError:
            pass
        user = svc.get("Service", "User")
        if user:
            try:
                pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
            except KeyError:
                raise Failed("resources") from None
            env.update(USER=pw.pw_name, LOGNAME=pw.pw_name, HOME=pw.pw_dir, SHELL=pw.pw_shell)
        env.update(units.environment(svc.values("Service", "Environment")))
        for value in svc.values("Service", "EnvironmentFile"):
            optional = value.startswith("-")
            path = value[1:] if optional else value
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    env.update(units.environment_file(f.read()))
            except OSError as e:
                if not optional:
                    self.log(st, f"{svc.name}: Failed to load environment files: {e.strerror}")
                    raise Failed("resources") from None
        if svc.service_type == "notify":
            env["NOTIFY_SOCKET"] = NOTIFY_SOCKET
        return env

    def spawn(self, st: State, kind: str, cmd: units.Command, env: dict[str, str]) -> int:
        """Fork and exec one of the unit's commands (``kind`` ExecStart, ExecStop, ...); the pid, watched.
        Failed if the program can't be run (the unit's log says why, with systemd's status name)."""
        svc = st.unit
        argv = units.expand_variables(cmd, env)
        program = _which(argv[0], env.get("PATH", BASE_PATH))
        user = "" if cmd.privileged else svc.get("Service", "User")
        group = "" if cmd.privileged else svc.get("Service", "Group")
        workdir = svc.get("Service", "WorkingDirectory")
        umask = int(svc.get("Service", "UMask", "0022"), 8)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        log = os.open(log_path(svc.name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        pid = os.fork()
        if pid == 0:
            _exec_child(program, [cmd.argv0 or argv[0], *argv[1:]], env, (log, err_w), user, group, workdir, umask)
        os.close(err_w)
        os.close(log)
        self.watch.add(pid)
        st.sessions.add(pid)
        with os.fdopen(err_r, "rb") as f:
            failure = f.read()
        if failure:
            code, _, why = failure.decode().partition(" ")
            self.wait_pid(pid, 5.0)
            line = f"{kind}={cmd.line.strip()} (code=exited, status={code}/{_EXIT_NAMES.get(int(code), code)})"
            st.processes.append(f"{pid} {line}")
            self.log(st, f"{svc.name}: Failed at step {_EXIT_NAMES.get(int(code), code)} spawning {argv[0]}: {why}")
            if kind == "ExecStart":
                st.last_main = pid
                st.main_status = f"(code=exited, status={code}/{_EXIT_NAMES.get(int(code), code)})"
            raise Failed("exit-code")
        return pid

    def run_control(self, st: State, kind: str, values: list[str], env: dict[str, str], timeout: float) -> None:
        """Run ``kind``'s commands one after the other, each to its end; Failed at the first that fails
        (without '-') or outlives ``timeout``."""
        for value in values:
            cmd = units.command(value, st.unit.specifiers())
            try:
                pid = self.spawn(st, kind, cmd, env)
            except Failed:
                if cmd.ignore_failure:
                    continue
                raise
            status = self.wait_pid(pid, timeout)
            if status is None:
                _signal_pids(self._tree({pid}), signal.SIGKILL)
                self.wait_pid(pid, 5.0)
                self.log(st, f"{st.unit.name}: {kind} operation timed out. Terminating.")
                raise Failed("timeout")
            st.processes.append(f"{pid} {kind}={cmd.line.strip()} {describe_status(status)}")
            if not _clean(status, exit_only=True) and not cmd.ignore_failure:
                self.log(st, f"{st.unit.name}: Control process exited, {describe_status(status)[1:-1]}")
                raise Failed(_result_of(status))

    def start(self, st: State) -> None:
        """Start the unit (nothing if it is active); Failed when systemd's start job would fail."""
        if st.active in ("active", "activating"):
            return
        svc = st.unit
        now = time.monotonic()
        st.starts = [t for t in st.starts if now - t < START_LIMIT[1]] + [now]
        if len(st.starts) > START_LIMIT[0]:
            st.active, st.sub, st.result = "failed", "failed", "start-limit-hit"
            self.log(st, f"{svc.name}: Start request repeated too quickly.")
            self.log(st, f"Failed to start {svc.name} - {svc.description}.")
            raise Failed("start-limit-hit")
        self.timers.pop(svc.name, None)
        st.active, st.sub, st.result, st.stopping = "activating", "start", "success", False
        st.processes, st.sessions, st.status_text, st.main_status, st.last_main = [], set(), "", "", 0
        st.since = time.time()
        kind = svc.service_type
        timeout = units.seconds(svc.get("Service", "TimeoutStartSec") or svc.get("Service", "TimeoutSec"),
                                float("inf") if kind == "oneshot" else units.DEFAULT_TIMEOUT)
        self.log(st, f"Starting {svc.name} - {svc.description}...")
        try:
            env = self.environment(st)
            self.run_control(st, "ExecStartPre", svc.values("Service", "ExecStartPre"), env, timeout)
            starts = svc.values("Service", "ExecStart")
            if kind == "oneshot":
                self.run_control(st, "ExecStart", starts, env, timeout)
            elif not starts:
                self.log(st, f"{svc.name}: Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing.")
                raise Failed("resources")
            else:
                self._start_main(st, units.command(starts[0], svc.specifiers()), env, kind, timeout)
            self.run_control(st, "ExecStartPost", svc.values("Service", "ExecStartPost"), env, timeout)
        except Failed as failed:
            self._kill_rest(st, 2.0)
            st.main_pid = 0
            st.active, st.sub, st.result, st.since = "failed", "failed", failed.result, time.time()
            self.log(st, f"{svc.name}: Failed with result '{failed.result}'.")
            self.log(st, f"Failed to start {svc.name} - {svc.description}.")
            raise
        if st.active == "failed":   # the main process failed at once (Type=simple)
            return
        if kind == "oneshot":
            remain = svc.flag("Service", "RemainAfterExit")
            st.active, st.sub = ("active", "exited") if remain else ("inactive", "dead")
        else:
            st.active, st.sub = "active", "running"
        st.since = st.started_at = time.time()
        self.log(st, f"{'Finished' if kind == 'oneshot' else 'Started'} {svc.name} - {svc.description}.")

    def _start_main(self, st: State, cmd: units.Command, env: dict[str, str], kind: str, timeout: float) -> None:
        try:
            pid = self.spawn(st, "ExecStart", cmd, env)
        except Failed:
            if kind in ("simple", "idle"):   # systemd's start job succeeded; the unit then failed
                st.active, st.sub, st.result, st.since = "failed", "failed", "exit-code", time.time()
                self.log(st, f"{st.unit.name}: Main process exited, {st.main_status[1:-1]}")
                self.log(st, f"{st.unit.name}: Failed with result 'exit-code'.")
                return
            raise
        st.processes.append(f"{pid} ExecStart={cmd.line.strip()}")
        if kind == "forking":
            status = self.wait_pid(pid, timeout)
            if status is None:
                raise Failed("timeout")
            st.processes[-1] += " " + describe_status(status)
            if not _clean(status, exit_only=True):
                raise Failed(_result_of(status))
            st.main_pid = self._forked_main(st, timeout)
            return
        st.main_pid = pid
        self.watch.discard(pid)   # its end is handled by _main_exited
        st.processes.pop()
        if kind == "notify":
            deadline = time.monotonic() + timeout
            while st.sub != "ready":
                if st.main_pid == 0:
                    raise Failed("protocol")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed("timeout")
                ready, _, _ = select.select([self.notify.fileno(), self.wake_r], [], [], min(left, 1.0))
                self._drain()
                if self.notify.fileno() in ready:
                    self._read_notify()
                self._reap()

    def _forked_main(self, st: State, timeout: float) -> int:
        pidfile = st.unit.get("Service", "PIDFile")
        if pidfile:
            deadline = time.monotonic() + min(timeout, 10.0)
            while time.monotonic() < deadline:
                try:
                    with open(pidfile, encoding="ascii") as f:
                        pid = int(f.read().split()[0])
                    if _alive(pid):
                        return pid
                except (OSError, ValueError, IndexError):
                    pass
                time.sleep(0.02)
            self.log(st, f"{st.unit.name}: Can't open PID file {pidfile} (yet?) after start: No such file")
            raise Failed("protocol")
        left = sorted(self.unit_pids(st))
        if not left:
            raise Failed("protocol")
        return left[0]

    def stop(self, st: State, *, budget: float | None = None) -> None:
        """Stop the unit: ExecStop=, then its KillSignal to what is left, SIGKILL after TimeoutStopSec."""
        self.timers.pop(st.unit.name, None)
        if st.active not in ("active", "activating", "reloading"):
            if st.active == "failed":
                self._kill_rest(st, 1.0)
            return
        svc = st.unit
        st.stopping, st.active, st.sub = True, "deactivating", "stop"
        timeout = units.seconds(svc.get("Service", "TimeoutStopSec") or svc.get("Service", "TimeoutSec"))
        if budget is not None:
            timeout = min(timeout, budget)
        self.log(st, f"Stopping {svc.name} - {svc.description}...")
        failed = None
        try:
            env = self.environment(st)
        except Failed:
            env = {"PATH": BASE_PATH}
        if st.main_pid:
            env["MAINPID"] = str(st.main_pid)
        try:
            self.run_control(st, "ExecStop", svc.values("Service", "ExecStop"), env, timeout)
        except Failed as e:
            failed = e.result
        self._kill_rest(st, timeout)
        try:
            self.run_control(st, "ExecStopPost", svc.values("Service", "ExecStopPost"), env, timeout)
        except Failed as e:
            failed = failed or e.result
        st.main_pid, st.stopping, st.since = 0, False, time.time()
        if failed:
            st.active, st.sub, st.result = "failed", "failed", failed
            self.log(st, f"{svc.name}: Failed with result '{failed}'.")
        else:
            st.active, st.sub, st.result = "inactive", "dead", "success"
            self.log(st, f"{svc.name}: Deactivated successfully.")
        self.log(st, f"Stopped {svc.name} - {svc.description}.")

    def _kill_rest(self, st: State, timeout: float) -> None:
        mode = st.unit.get("Service", "KillMode", "control-group")
        if mode == "none":
            return
        sig = _signal_named(st.unit.get("Service", "KillSignal", "SIGTERM"))
        pids = self.unit_pids(st)
        if mode == "process":
            pids = {st.main_pid} & pids
        if not pids:
            return
        if mode == "mixed" and st.main_pid:
            _signal_pids({st.main_pid}, sig)
        else:
            _signal_pids(pids, sig)
            _signal_pids(pids, signal.SIGCONT)
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            left = {pid for pid in pids if _alive(pid)}
            if not left:
                return
            if time.monotonic() >= deadline:
                if mode != "process":
                    left |= self.unit_pids(st)
                self.log(st, f"{st.unit.name}: State 'stop-sigterm' timed out. Killing.")
                _signal_pids(left, signal.SIGKILL)
                end = time.monotonic() + 5.0
                while any(_alive(pid) for pid in left) and time.monotonic() < end:
                    self._reap()
                    time.sleep(0.01)
                self._reap()
                return
            select.select([self.wake_r], [], [], 0.05)
            self._drain()

    def unit_pids(self, st: State) -> set[int]:
        """Live processes of the unit: those in the sessions its commands started in, the main
        process, and every descendant of theirs (what systemd's cgroup would hold, as far as the
        process tree tells)."""
        seeds = {st.main_pid} if st.main_pid else set()
        table = _process_table()
        seeds |= {pid for pid, (_ppid, sid) in table.items() if sid in st.sessions}
        seeds &= set(table)
        return self._tree(seeds, table) - {os.getpid(), 1}

    def _tree(self, seeds: set[int], table: dict[int, tuple[int, int]] | None = None) -> set[int]:
        table = _process_table() if table is None else table
        found = set(seeds)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _sid) in table.items():
            children.setdefault(ppid, []).append(pid)
        pending = list(seeds)
        while pending:
            for child in children.get(pending.pop(), ()):
                if child not in found:
                    found.add(child)
                    pending.append(child)
        return found

    def _shutdown(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_BUDGET
        active = sorted((st for st in self.states.values() if st.active in ("active", "activating")),
                        key=lambda st: st.started_at, reverse=True)
        for st in active:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.stop(st, budget=max(0.2, left))
        for st in self.states.values():
            _signal_pids(self.unit_pids(st), signal.SIGKILL)
        for path in (SOCKET, NOTIFY_SOCKET):
            try:
                os.unlink(path)
            except OSError:
                pass


# ---- one systemctl command line ----------------------------------------------------------------

class Command:
    """One systemctl command line, as the manager runs it: (status, stdout, stderr)."""

    def __init__(self, manager: Manager, argv: list[str], uid: int) -> None:
        self.m = manager
        self.argv = argv
        self.uid = uid
        self.out: list[str] = []
        self.err: list[str] = []
        self.options: dict[str, str] = {}
        self.properties: list[str] = []

    def say(self, text: str) -> None:
        self.out.append(text + "\n")

    def warn(self, text: str) -> None:
        self.err.append(text + "\n")

    def run(self) -> tuple[int, str, str]:
        if self.argv[:1] == [JOURNALCTL]:
            status = self.journal(self.argv[1:])
            return status, "".join(self.out), "".join(self.err)
        try:
            words = self._parse()
        except ValueError as e:
            return 1, "", f"systemctl: {e}\n"
        if "version" in self.options:
            return 0, VERSION, ""
        if "help" in self.options:
            return 0, "systemctl [OPTIONS...] COMMAND ...\n\nQuery or send control commands to the system " \
                      "manager (cdsim's stand-in: " + ", ".join(sorted(_VERBS)) + ").\n", ""
        verb = words[0] if words else "list-units"
        names = words[1:]
        handler = _VERBS.get(verb)
        if handler is None:
            return 1, "", f"Unknown command verb '{verb}'.\n"
        if verb in _MUTATING and self.uid != 0:   # polkit, without an agent to ask, lets only root
            if not names or verb.startswith("daemon-"):
                return 4, "", f"Failed to {verb.replace('daemon-', '')} daemon: Access denied\n"
            try:
                what = units.unit_name(names[0])
            except ValueError:
                what = names[0]
            return 4, "", (f"Failed to {verb} {what}: Access denied\n"
                           f"See system logs and 'systemctl status {what}' for details.\n")
        status = handler(self, names)
        return status, "".join(self.out), "".join(self.err)

    def _parse(self) -> list[str]:
        words: list[str] = []
        flags = {"-q": "quiet", "--quiet": "quiet", "--now": "now", "--no-pager": "", "--no-block": "",
                 "--no-legend": "no-legend", "-l": "", "--full": "", "--system": "", "--value": "value",
                 "-a": "all", "--all": "all", "--plain": "", "--no-ask-password": "", "-f": "", "--force": "",
                 "--version": "version", "-h": "help", "--help": "help", "--failed": "failed",
                 "--runtime": "", "--global": "", "--show-types": "", "--no-reload": ""}
        with_value = {"-p": "property", "--property": "property", "-t": "type", "--type": "type",
                      "-s": "signal", "--signal": "signal", "--state": "state", "-n": "lines", "--lines": "lines",
                      "-o": "output", "--output": "output", "--kill-whom": "kill-whom", "--job-mode": ""}
        args = list(self.argv)
        while args:
            arg = args.pop(0)
            if arg == "--":
                words += args
                break
            if not arg.startswith("-") or arg == "-":
                words.append(arg)
                continue
            name, eq, value = arg.partition("=")
            if name in with_value:
                if not eq:
                    if not args:
                        raise ValueError(f"option '{name}' requires an argument")
                    value = args.pop(0)
                if with_value[name] == "property":
                    self.properties += [p for p in value.split(",") if p]
                elif with_value[name]:
                    self.options[with_value[name]] = value
            elif arg in flags:
                if flags[arg]:
                    self.options[flags[arg]] = "1"
            elif not arg.startswith("--") and len(arg) > 2 and all(f"-{c}" in flags for c in arg[1:]):
                for c in arg[1:]:
                    if flags[f"-{c}"]:
                        self.options[flags[f"-{c}"]] = "1"
            else:
                raise ValueError(f"unrecognized option '{arg}'" if arg.startswith("--")
                                 else f"invalid option -- '{arg[1:2]}'")
        return words

    # -- helpers ----------------------------------------------------------------------------------
    def names(self, names: list[str], verb: str) -> list[str] | None:
        if not names:
            self.warn("Too few arguments.")
            return None
        out = []
        for name in names:
            try:
                out.append(units.unit_name(name))
            except ValueError as e:
                self.warn(f"Failed to {verb or 'look up'} unit: {e}")
                return None
        return out

    def changed_warning(self, st: State) -> None:
        if _mtime(st.unit) != st.mtime:
            self.warn(f"Warning: The unit file, source configuration file or drop-ins of {st.unit.name} changed "
                      "on disk. Run 'systemctl daemon-reload' to reload units.")

    def job_failed(self, name: str, result: str = "exit-code") -> None:
        why = _JOB_FAILED.get(result, _JOB_FAILED["exit-code"])
        self.warn(f"Job for {name} failed because {why}.\n"
                  f"See \"systemctl status {name}\" and \"journalctl -xeu {name}\" for details.")
        if result == "start-limit-hit":
            self.warn(f"To force a start use \"systemctl reset-failed {name}\"\n"
                      f"followed by \"systemctl start {name}\" again.")

    # -- verbs ------------------------------------------------------------------------------------
    def start(self, names: list[str]) -> int:
        full = self.names(names, "start")
        if full is None:
            return 1
        status = 0
        for name in full:
            st = self.m.find(name)
            if st is None:
                self.warn(f"Failed to start {name}: Unit {name} not found.")
                status = 5
                continue
            if unit_file_state(st) == "masked":
                self.warn(f"Failed to start {name}: Unit {name} is masked.")
                status = 1
                continue
            self.changed_warning(st)
            try:
                self.m.start(st)
            except Failed as failed:
                self.job_failed(name, failed.result)
                status = 1
        return status

    def stop(self, names: list[str]) -> int:
        full = self.names(names, "stop")
        if full is None:
            return 1
        status = 0
        for name in full:
            st = self.m.find(name)
            if st is None:
                self.warn(f"Failed to stop {name}: Unit {name} not loaded.")
                status = 5
                continue
            self.changed_warning(st)
            self.m.stop(st)
        return status

    def restart(self, names: list[str], *, only_active: bool = False) -> int:
        full = self.names(names, "restart")
        if full is None:
            return 1
        status = 0
        for name in full:
            st = self.m.find(name)
            if st is None:
                if not only_active:
                    self.warn(f"Failed to restart {name}: Unit {name} not found.")
                    status = 5
                continue
            if only_active and st.active not in ("active", "activating"):
                continue
            self.changed_warning(st)
            self.m.stop(st)
            try:
                self.m.start(st)
            except Failed as failed:
                self.job_failed(name, failed.result)
                status = 1
        return status

    def try_restart(self, names: list[str]) -> int:
        return self.restart(names, only_active=True)

    def reload(self, names: list[str], *, or_restart: bool = False) -> int:
        full = self.names(names, "reload")
        if full is None:
            return 1
        status = 0
        for name in full:
            st = self.m.find(name)
            if st is None:
                self.warn(f"Failed to reload {name}: Unit {name} not found.")
                status = 5
                continue
            commands = st.unit.values("Service", "ExecReload")
            if not commands:
                if or_restart:
                    status = max(status, self.restart([name]))
                    continue
                self.warn(f"Failed to reload {name}: Job type reload is not applicable for unit {name}.")
                status = 1
                continue
            if st.active != "active":
                if or_restart:
                    status = max(status, self.start([name]))
                    continue
                self.warn(f"{name} is not active, cannot reload.")
                status = 1
                continue
            try:
                env = self.m.environment(st)
                env["MAINPID"] = str(st.main_pid)
                self.m.log(st, f"Reloading {name} - {st.unit.description}...")
                self.m.run_control(st, "ExecReload", commands, env, units.DEFAULT_TIMEOUT)
                self.m.log(st, f"Reloaded {name} - {st.unit.description}.")
            except Failed as failed:
                self.job_failed(name, failed.result)
                status = 1
        return status

    def reload_or_restart(self, names: list[str]) -> int:
        return self.reload(names, or_restart=True)

    def enable(self, names: list[str]) -> int:
        full = self.names(names, "enable")
        if full is None:
            return 1
        for name in full:
            unit = load_unit(name)
            if unit is None:
                self.warn(f"Failed to enable unit: Unit file {name} does not exist.")
                return 1
            targets = units.install_targets(unit)
            if not targets and not unit.values("Install", "Alias"):
                self.warn(_NO_INSTALL.format(name=name))
            for wants in targets:
                folder = os.path.join("/etc/systemd/system", wants)
                link = os.path.join(folder, name)
                if os.path.islink(link) and os.readlink(link) == unit.path:
                    continue
                os.makedirs(folder, mode=0o755, exist_ok=True)
                if os.path.lexists(link):
                    os.unlink(link)
                os.symlink(unit.path, link)
                self.warn(f"Created symlink {link} \u2192 {unit.path}.")
        if "now" in self.options:
            return self.start(names)
        return 0

    def disable(self, names: list[str]) -> int:
        full = self.names(names, "disable")
        if full is None:
            return 1
        for name in full:
            if load_unit(name) is None and not _links_to(name):
                self.warn(f"Failed to disable unit: Unit file {name} does not exist.")
                return 1
            for link in _links_to(name):
                os.unlink(link)
                self.warn(f"Removed \"{link}\".")
        if "now" in self.options:
            return self.stop(names)
        return 0

    def mask(self, names: list[str]) -> int:
        full = self.names(names, "mask")
        if full is None:
            return 1
        for name in full:
            link = os.path.join("/etc/systemd/system", name)
            if os.path.islink(link) and os.readlink(link) == "/dev/null":
                continue
            if os.path.lexists(link):
                self.warn(f"Failed to mask unit: File {link} already exists.")
                return 1
            os.makedirs("/etc/systemd/system", mode=0o755, exist_ok=True)
            os.symlink("/dev/null", link)
            self.warn(f"Created symlink {link} \u2192 /dev/null.")
        return 0

    def unmask(self, names: list[str]) -> int:
        full = self.names(names, "unmask")
        if full is None:
            return 1
        for name in full:
            link = os.path.join("/etc/systemd/system", name)
            if os.path.islink(link) and os.readlink(link) == "/dev/null":
                os.unlink(link)
                self.warn(f"Removed \"{link}\".")
        return 0

    def is_active(self, names: list[str]) -> int:
        return self._state_is(names, "active", otherwise=3)

    def is_failed(self, names: list[str]) -> int:
        return self._state_is(names, "failed", otherwise=1)

    def _state_is(self, names: list[str], wanted: str, *, otherwise: int) -> int:
        """``is-active`` / ``is-failed``: print each unit's active state (unless --quiet); 0 when any is
        ``wanted``, else systemd's status for that verb."""
        full = self.names(names, "")
        if full is None:
            return 1
        found = False
        for name in full:
            st = self.m.states.get(name)
            state = st.active if st else "inactive"
            found |= state == wanted
            if "quiet" not in self.options:
                self.say(state)
        return 0 if found else otherwise

    def is_enabled(self, names: list[str]) -> int:
        full = self.names(names, "")
        if full is None:
            return 1
        enabled = False
        for name in full:
            st = self.m.find(name)
            if st is None and not _links_to(name):
                self.warn(f"Failed to get unit file state for {name}: No such file or directory")
                return 1
            state = unit_file_state(st) if st else "enabled"
            enabled |= state in _ENABLED
            if "quiet" not in self.options:
                self.say(state)
        return 0 if enabled else 1

    def status(self, names: list[str]) -> int:
        if not names:
            active = sum(1 for st in self.m.states.values() if st.active == "failed")
            self.say(f"\u25cf {self.m.hostname}\n    State: {'degraded' if active else 'running'}\n"
                     f"    Units: {len(self.m.states)} loaded (cdsim's systemctl stand-in; no systemd runs here)")
            return 0
        full = self.names(names, "")
        if full is None:
            return 1
        status = 0
        blocks = []
        for name in full:
            st = self.m.find(name)
            if st is None:
                self.warn(f"Unit {name} could not be found.")
                status = 4
                continue
            self.changed_warning(st)
            blocks.append(self._status_block(st))
            if st.active != "active":
                status = max(status, 3)
        self.out.append("\n".join(blocks))
        return status

    def _status_block(self, st: State) -> str:
        svc = st.unit
        dot = {"active": "\u25cf", "failed": "\u00d7", "activating": "\u25cf",
               "deactivating": "\u25cf"}.get(st.active, "\u25cb")
        file_state = unit_file_state(st)
        preset = "disabled"
        lines = [f"{dot} {svc.name} - {svc.description}",
                 f"     Loaded: loaded ({svc.path}; {file_state}; preset: {preset})"]
        if svc.dropins:
            lines.append(f"    Drop-In: {os.path.dirname(svc.dropins[0])}")
            lines += [f"             \u2514\u2500{os.path.basename(p)}" for p in svc.dropins]
        active = f"{st.active} ({st.sub})"
        if st.active == "failed":
            active = f"failed (Result: {st.result})"
        if st.since:
            stamp = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(st.since))
            active += f" since {stamp}; {_ago(time.time() - st.since)} ago"
        lines.append(f"     Active: {active}")
        lines += [f"    Process: {line}" for line in st.processes]
        pids = sorted(self.m.unit_pids(st)) if st.active in ("active", "activating", "deactivating") else []
        if st.main_pid and st.main_pid in pids:
            lines.append(f"   Main PID: {st.main_pid} ({_comm(st.main_pid)})")
        elif st.main_status and st.last_main:
            lines.append(f"   Main PID: {st.last_main} {st.main_status}")
        if st.status_text:
            lines.append(f"     Status: \"{st.status_text}\"")
        if pids:
            lines.append(f"      Tasks: {len(pids)}")
            lines.append(f"     CGroup: /system.slice/{svc.name}")
            for i, pid in enumerate(pids):
                branch = "\u2514\u2500" if i == len(pids) - 1 else "\u251c\u2500"
                lines.append(f"             {branch}{pid} {_cmdline(pid)}")
        tail = _tail(log_path(svc.name), int(self.options.get("lines", "10") or 10))
        if tail and self.uid != 0:   # the unit's log is root's, as the system journal is
            tail = ["Warning: some journal files were not opened due to insufficient permissions."]
        if tail:
            lines.append("")
            lines += tail
        return "\n".join(lines) + "\n"

    def show(self, names: list[str]) -> int:
        full = self.names(names, "show")
        if full is None:
            return 1
        blocks = []
        for name in full:
            st = self.m.find(name)
            props = {"Id": name, "Names": name, "LoadState": "loaded" if st else "not-found",
                     "ActiveState": st.active if st else "inactive", "SubState": st.sub if st else "dead",
                     "Result": st.result if st else "success", "MainPID": str(st.main_pid if st else 0),
                     "Description": st.unit.description if st else name,
                     "FragmentPath": st.unit.path if st else "",
                     "UnitFileState": unit_file_state(st) if st else "",
                     "Type": st.unit.service_type if st else "", "StatusText": st.status_text if st else "",
                     "ExecMainStatus": st.main_status.rsplit("status=", 1)[-1].split("/")[0]
                     if st and "status=" in st.main_status else "0"}
            wanted = self.properties or list(props)
            lines = [props.get(p, "") if "value" in self.options else f"{p}={props.get(p, '')}" for p in wanted]
            blocks.append("\n".join(lines) + "\n")
        self.out.append("\n".join(blocks))
        return 0

    def list_units(self, names: list[str]) -> int:
        rows = [(name, "loaded", st.active, st.sub, st.unit.description)
                for name, st in sorted(self.m.states.items())
                if "all" in self.options or st.active != "inactive"]
        if "no-legend" not in self.options:
            self.say(f"{'UNIT':40} {'LOAD':6} {'ACTIVE':8} {'SUB':8} DESCRIPTION")
        for row in rows:
            self.say(f"{row[0]:40} {row[1]:6} {row[2]:8} {row[3]:8} {row[4]}")
        if "no-legend" not in self.options:
            self.say(f"\n{len(rows)} loaded units listed.")
        return 0

    def kill(self, names: list[str]) -> int:
        full = self.names(names, "kill")
        if full is None:
            return 1
        sig = _signal_named(self.options.get("signal", "SIGTERM"))
        for name in full:
            st = self.m.states.get(name)
            if st is None or st.active not in ("active", "activating"):
                self.warn(f"Failed to kill unit {name}: No main process to kill")
                return 1
            pids = {st.main_pid} if self.options.get("kill-whom") == "main" else self.m.unit_pids(st)
            _signal_pids(pids, sig)
        return 0

    def reset_failed(self, names: list[str]) -> int:
        for name, st in self.m.states.items():
            if not names or name in [units.unit_name(n) for n in names]:
                st.starts = []   # and the start limit's count
                if st.active == "failed":
                    st.active, st.sub, st.result = "inactive", "dead", "success"
        return 0

    def journal(self, args: list[str]) -> int:
        """journalctl: the units' log files (``-u UNIT``, repeatable; all units without), the last
        ``-n N`` lines; other options of journalctl's that only shape the output are taken and ignored."""
        wanted: list[str] = []
        lines: int | None = None
        quiet = {"--no-pager", "-x", "--catalog", "-e", "--pager-end", "-b", "--boot", "-l", "--full", "-q",
                 "--quiet", "--no-hostname", "-a", "--all", "--system", "--utc"}
        valued = {"--since", "-S", "--until", "-U", "-o", "--output", "-p", "--priority", "-t", "--identifier"}
        while args:
            arg = args.pop(0)
            name, eq, value = arg.partition("=")
            if name in ("-u", "--unit", "-n", "--lines") or name in valued:
                if not eq:
                    if not args:
                        self.warn(f"journalctl: option '{name}' requires an argument")
                        return 1
                    value = args.pop(0)
                if name in ("-u", "--unit"):
                    try:
                        wanted.append(units.unit_name(value))
                    except ValueError as e:
                        self.warn(str(e))
                        return 1
                elif name in ("-n", "--lines"):
                    lines = int(value) if value.isdigit() else None
            elif arg.startswith("-n") and arg[2:].isdigit():
                lines = int(arg[2:])
            elif arg in ("-f", "--follow"):
                self.warn("journalctl: --follow is not supported by cdsim's stand-in (no journal runs here)")
                return 1
            elif arg not in quiet and not (arg.startswith("-") and not arg.startswith("--")
                                           and all(f"-{c}" in quiet for c in arg[1:])):
                self.warn(f"journalctl: unrecognized option '{arg}'")
                return 1
        if self.uid != 0:
            self.say("Hint: You are currently not seeing messages from other users and the system.\n"
                     "      Users in groups 'adm', 'systemd-journal' can see all messages.\n"
                     "      Pass -q to turn off this notice.\n-- No entries --")
            return 0
        if not wanted:
            try:
                wanted = sorted(entry[:-4] for entry in os.listdir(LOG_DIR) if entry.endswith(".log"))
            except OSError:
                wanted = []
        found = [line for name in wanted for line in _tail(log_path(name), 1 << 30)]
        if lines is not None:
            found = found[-lines:] if lines else []
        self.out.append("".join(line + "\n" for line in found) or "-- No entries --\n")
        return 0

    def daemon_reload(self, names: list[str]) -> int:
        self.m.reload_units()
        return 0


_VERBS = {"start": Command.start, "stop": Command.stop, "restart": Command.restart,
          "try-restart": Command.try_restart, "condrestart": Command.try_restart, "reload": Command.reload,
          "reload-or-restart": Command.reload_or_restart, "try-reload-or-restart": Command.reload_or_restart,
          "enable": Command.enable, "disable": Command.disable, "mask": Command.mask, "unmask": Command.unmask,
          "is-active": Command.is_active, "is-failed": Command.is_failed, "is-enabled": Command.is_enabled,
          "status": Command.status, "show": Command.show, "list-units": Command.list_units, "kill": Command.kill,
          "reset-failed": Command.reset_failed, "daemon-reload": Command.daemon_reload,
          "daemon-reexec": Command.daemon_reload}

_JOB_FAILED = {"exit-code": "the control process exited with error code",
               "signal": "a fatal signal was delivered to the control process",
               "core-dump": "a fatal signal was delivered causing the control process to dump core",
               "timeout": "a timeout was exceeded",
               "resources": "of unavailable resources or another system error",
               "protocol": "the service did not take the steps required by its unit configuration",
               "start-limit-hit": "start of the service was attempted too often"}

_NO_INSTALL = ("The unit files have no installation config (WantedBy=, RequiredBy=, Also=,\n"
               "Alias= settings in the [Install] section, and DefaultInstance= for template\n"
               "units). This means they are not meant to be enabled or disabled using systemctl.\n"
               " \n"
               "Possible reasons for having this kind of units are:\n"
               "\u2022 A unit may be statically enabled by being symlinked from another unit's\n"
               "  .wants/ or .requires/ directory.\n"
               "\u2022 A unit's purpose may be to act as a helper for some other unit which has\n"
               "  a requirement dependency on it.\n"
               "\u2022 A unit may be started when needed via activation (socket, path, timer,\n"
               "  D-Bus, udev, scripted systemctl call, ...).\n"
               "\u2022 In case of template units, the unit is meant to be enabled with some\n"
               "  instance name specified.")


# ---- files and processes -------------------------------------------------------------------------

def log_path(name: str) -> str:
    return os.path.join(LOG_DIR, name + ".log")


def load_unit(name: str) -> units.Unit | None:
    """The unit file called ``name`` (the first folder of UNIT_DIRS that has it) with its drop-ins; a
    link to /dev/null (masked) loads as an empty unit there."""
    for folder in units.UNIT_DIRS:
        path = os.path.join(folder, name)
        if not os.path.lexists(path):
            continue
        unit = units.Unit(name=name, path=path)
        if os.path.islink(path) and os.readlink(path) == "/dev/null":
            return unit
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                units.parse(f.read(), unit, path)
        except OSError:
            continue
        seen: set[str] = set()
        for dropin_folder in units.UNIT_DIRS:
            try:
                entries = sorted(os.listdir(os.path.join(dropin_folder, name + ".d")))
            except OSError:
                continue
            for entry in entries:
                if entry.endswith(".conf") and entry not in seen:
                    seen.add(entry)
                    dropin = os.path.join(dropin_folder, name + ".d", entry)
                    try:
                        with open(dropin, encoding="utf-8", errors="replace") as f:
                            units.parse(f.read(), unit, dropin)
                        unit.dropins.append(dropin)
                    except OSError:
                        continue
        return unit
    return None


def _mtime(unit: units.Unit) -> float:
    total = 0.0
    for path in (unit.path, *unit.dropins):
        try:
            total += os.lstat(path).st_mtime
        except OSError:
            total += 1.0
    return total


def _links_to(name: str) -> list[str]:
    found = []
    base = "/etc/systemd/system"
    try:
        folders = os.listdir(base)
    except OSError:
        return []
    for folder in folders:
        link = os.path.join(base, folder, name)
        if folder.endswith((".wants", ".requires")) and os.path.islink(link):
            found.append(link)
    return sorted(found)


def unit_file_state(st: State | None) -> str:
    if st is None:
        return ""
    unit = st.unit
    if os.path.islink(unit.path) and os.readlink(unit.path) == "/dev/null":
        return "masked"
    if unit.path.startswith("/run/"):
        return "transient" if not unit.sections else "static"
    if _links_to(unit.name):
        return "enabled"
    if not units.install_targets(unit) and not unit.values("Install", "Alias"):
        return "static"
    return "disabled"


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every live process of the instance."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in "ZX":
            table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _signal_pids(pids: set[int], sig: int) -> None:
    for pid in pids:
        if pid in (0, 1, os.getpid()):
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_named(name: str) -> int:
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals[text if text.startswith("SIG") else "SIG" + text])
    except KeyError:
        return signal.SIGTERM


def _which(program: str, path: str) -> str:
    if "/" in program:
        return program
    for folder in path.split(":"):
        candidate = os.path.join(folder, program)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return program


def _clean(status: int, *, exit_only: bool = False) -> bool:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status) == 0
    return not exit_only and os.WIFSIGNALED(status) and os.WTERMSIG(status) in CLEAN_SIGNALS


def _result_of(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "core-dump" if os.WCOREDUMP(status) else "signal"
    return "exit-code"


def describe_status(status: int) -> str:
    """systemd's ``(code=exited, status=1/FAILURE)`` or ``(code=killed, signal=TERM)``."""
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name[3:]
        return f"(code={'dumped' if os.WCOREDUMP(status) else 'killed'}, signal={name})"
    code = os.WEXITSTATUS(status)
    return f"(code=exited, status={code}/{_EXIT_NAMES.get(code, str(code))})"


def _ago(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s" if s else f"{int(seconds * 1000)}ms"
    if s < 3600:
        return f"{s // 60}min {s % 60}s" if s % 60 else f"{s // 60}min"
    return f"{s // 3600}h {s % 3600 // 60}min"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace") or _comm(pid)
    except OSError:
        return "?"


def _tail(path: str, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f.readlines()[-count:]] if count > 0 else []
    except OSError:
        return []


def _exec_child(program: str, argv: list[str], env: dict[str, str], fds: tuple[int, int], user: str,
                group: str, workdir: str, umask: int) -> None:
    """In the forked child: become the unit's process and execute ``program``; on failure write
    "STATUS strerror" to the pipe (systemd's 200/CHDIR, 203/EXEC, 216/GROUP, 217/USER) and exit."""
    log, report = fds
    step = 203
    try:
        os.setsid()
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.umask(umask)
        home = "/"
        if user:
            step = 217
            pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
            step = 216
            gid = (grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)) if group else pw.pw_gid
            os.initgroups(pw.pw_name, gid)
            os.setgid(gid)
            os.setuid(pw.pw_uid)
            home = pw.pw_dir
        elif group:
            step = 216
            os.setgid(grp.getgrnam(group).gr_gid if not group.isdigit() else int(group))
        step = 200
        optional = workdir.startswith("-")
        folder = workdir[1:] if optional else workdir
        folder = home if folder == "~" else (folder or "/")
        try:
            os.chdir(folder)
        except OSError:
            if not optional:
                raise
            os.chdir("/")
        step = 203
        os.execve(program, argv, env)
    except (OSError, KeyError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else ("No such user or group"
                                                                        if isinstance(e, KeyError) else str(e))
        try:
            os.write(report, f"{step} {why}".encode())
        except OSError:
            pass
    os._exit(step)

