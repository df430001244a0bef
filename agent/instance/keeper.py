"""The keeper: the process that holds a running instance's namespaces, and starting/stopping it.

:func:`keeper_main` (FOLDER, FD), run in a process of its own by :func:`start`, unshares the
namespaces, forks the instance's init (PID 1 of its PID namespace), which builds the root file system,
pivots into it, confines itself as every process of the instance is (agent.instance.confine) and
then only reaps orphans until told to stop; the keeper itself stays outside as
init's parent so init never lingers as a zombie. Both report on pipe FD: ``pid N`` (init's host pid), then ``ok`` or
``error MESSAGE``. When init exits the kernel kills every process of the instance.
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import traceback

from agent.errors import EnvironmentProblem
from agent.instance import confine, idmap, image, overlay, services, store
from agent.instance import namespaces as ns
from agent.instance.procstat import stat

START_TIMEOUT = 30.0
STOP_GRACE = 5.0
HINT = ("sandboxed instances need Linux with user, mount and PID namespaces and overlayfs; on macOS or in a "
        "locked-down container, run cdsim in a VM (see the Vagrantfile: `vagrant up`, then `vagrant ssh`) "
        "or deploy onto the machine itself with `cdsim deploy --host`")


# ---- inside: the keeper and the instance's init ---------------------------------------------------

def _init_loop(report: int) -> None:
    """PID 1 of the instance: reap orphans; on SIGTERM ask everyone to stop, then leave (the kernel
    kills what is left when PID 1 exits)."""
    os.close(report)
    # our stdout/stderr are the host's keeper.log: no handle on a host file may stay reachable from
    # inside (through /proc/1/fd)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    while True:
        _reap()
        info = signal.sigtimedwait({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}, 60)
        if info is not None and info.si_signo == signal.SIGTERM:
            break
    try:
        os.kill(-1, signal.SIGTERM)   # from PID 1: every other process of this PID namespace
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        if _reap() is False:
            break
        signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    os._exit(0)


def _reap() -> bool:
    """Reap every exited child; False when no child is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _write(fd: int, line: str) -> None:
    os.write(fd, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))


def keeper_main(folder: str, report: int) -> int:
    if os.fork() != 0:
        os._exit(0)   # the starting process reaps us at once; the keeper is nobody's child to wait for
    _write(report, f"keeper {os.getpid()}")
    meta = store.read_meta(folder)
    inst = store.Instance(name=meta["name"], path=folder, network=meta["network"])
    userns = bool(meta.get("user_namespace"))
    flags = ns.CLONE_NEWNS | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC | ns.CLONE_NEWPID
    if inst.network == "private":
        flags |= ns.CLONE_NEWNET
    if userns:
        flags |= ns.CLONE_NEWUSER
    made_from = meta.get("image")
    runtime = image.runtime() if made_from else None   # read while this process sees the host's tree
    if made_from and not os.path.isdir(made_from["lower"]):
        _write(report, f"error its image's root file system {made_from['lower']} is gone "
               "(cdsim image rm?): destroy the instance and create it again")
        return 1
    if userns and not made_from:
        try:
            store.add_synthesized(inst, overlay.prepare_upper(inst.upper, inst.work))
        except OSError as e:
            _write(report, f"error cannot prepare the upper layer: {e}")
            return 1
    try:
        if userns:
            idmap.enter_user_namespace(flags, meta)
        else:
            ns.unshare(flags)
    except OSError as e:
        _write(report, f"error cannot create the instance's namespaces ({e.strerror})")
        return 1
    init = os.fork()
    if init == 0:
        try:
            os.setsid()
            last_cap = confine.prepare()   # while the host's tree is still ours
            overlay.build_root(inst.upper, inst.work, inst.root, user_namespace=userns,
                               lower=made_from["lower"] if made_from else None)
            if runtime is not None:
                overlay.mount_runtime(inst.root, runtime.binds, image.RUNTIME_ROOT)
            overlay.mount_private(inst.root, in_user_namespace=userns, host_network=inst.network == "host")
            overlay.enter(inst.root, inst.name, private_network=inst.network == "private")
            # init holds no more than the processes it reaps; where the host's root started it, it is not
            # dumpable either (root inside can't trace it or read /proc/1/fd). In a user namespace it
            # must stay dumpable: its owner reads /proc/INIT/ns to know the instance runs
            confine.confine(last_cap, dumpable=userns)
        except Exception as e:  # noqa: BLE001 - reported to the starting process, which raises
            traceback.print_exc()
            _write(report, f"error {e}")
            os._exit(1)
        _write(report, "ok")
        _init_loop(report)
    _write(report, f"pid {init}")
    os.close(report)
    os.close(0)
    os.waitpid(init, 0)
    return 0


# ---- outside: start, find, stop -------------------------------------------------------------------

def _alive(pid: int, started: int | None = None) -> bool:
    st = stat(pid)
    return st is not None and st[0] not in "ZX" and (started is None or st[1] == started)


def running(inst: store.Instance) -> store.KeeperRecord | None:
    """The keeper record of a running instance, or None (no record, or its init is gone)."""
    record = store.read_keeper(inst)
    if not record or not _alive(record.get("init_pid", -1), record.get("init_started")):
        return None
    link = ns.pid_namespace(record["init_pid"])
    if link is None or link != record.get("pid_namespace"):
        return None
    return record


def start(inst: store.Instance) -> store.KeeperRecord:
    """Start the instance's keeper unless it runs; return its record. Serialised by a lock file."""
    with open(inst.lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = running(inst)
        if not record:
            store.refresh_id_maps(inst)
            services.prepare(inst)
            record = _spawn(inst)
        services.start(inst, record["init_pid"], record["init_started"], package_env())
        return record


# run with -c, not -m: `-m agent.instance.keeper` runs a module its package has imported already
_KEEPER_MAIN = ("import sys; from agent.instance.keeper import keeper_main; "
                "sys.exit(keeper_main(sys.argv[1], int(sys.argv[2])))")


def _spawn(inst: store.Instance) -> store.KeeperRecord:
    if sys.platform != "linux":
        raise EnvironmentProblem(f"sandboxed instances need Linux (this is {sys.platform})",
                                 hint=HINT, reference="instance-unsupported")
    os.makedirs(inst.root, exist_ok=True)
    read_end, write_end = os.pipe()
    with open(inst.log_file, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KEEPER_MAIN, inst.path, str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
            start_new_session=True, cwd="/", env=package_env())
    os.close(write_end)
    lines = ns.read_report(read_end, START_TIMEOUT, _report_complete).splitlines()
    proc.wait()
    keeper_pid = next((int(line[7:]) for line in lines if line.startswith("keeper ")), None)
    init_pid = next((int(line[4:]) for line in lines if line.startswith("pid ")), None)
    errors = [line[6:] for line in lines if line.startswith("error ")]
    if "ok" not in lines or init_pid is None:
        for pid in (init_pid, keeper_pid):
            if pid and not errors:   # timed out: don't leave a half-started instance behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        why = errors[0] if errors else "the keeper exited without reporting (see " + inst.log_file + ")"
        why += "".join(f"; {reason}" for reason in _user_namespace_blockers())
        raise EnvironmentProblem(f"cannot start instance {inst.name!r}: {why}", hint=HINT,
                                 reference="instance-unavailable")
    record: store.KeeperRecord = {"keeper_pid": keeper_pid, "init_pid": init_pid,
              "init_started": (stat(init_pid) or ("", 0))[1],
              "pid_namespace": ns.pid_namespace(init_pid), "started": time.time()}
    store.write_keeper(inst, record)
    return record


def _user_namespace_blockers() -> list[str]:
    """Settings known to stop unprivileged user namespaces, as they stand on this machine."""
    if os.geteuid() == 0:
        return []
    checks = (("/proc/sys/kernel/unprivileged_userns_clone", "0",
               "kernel.unprivileged_userns_clone is 0 (unprivileged user namespaces are off)"),
              ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
              ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
               "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)"))
    found = []
    for path, bad, reason in checks:
        try:
            with open(path, encoding="ascii") as f:
                if f.read().strip() == bad:
                    found.append(reason)
        except OSError:
            continue
    return found


def package_env() -> dict[str, str]:
    """Our environment, with this checkout first on PYTHONPATH (for `python -m agent.instance...`)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _report_complete(text: str) -> bool:
    lines = text.splitlines()
    return any(line.startswith("error ") for line in lines) or (
        "ok" in lines and any(line.startswith("pid ") for line in lines))


def processes(inst: store.Instance, record: store.KeeperRecord | None = None) -> list[int]:
    """Host pids of every process in the instance (its init included)."""
    record = record or running(inst)
    if not record:
        return []
    wanted = record["pid_namespace"]
    pids = (int(e) for e in os.listdir("/proc") if e.isdigit())
    return sorted(pid for pid in pids if ns.pid_namespace(pid) == wanted and _alive(pid))


def stop(inst: store.Instance) -> list[int]:
    """End every process of the instance: SIGTERM to all through init, then SIGKILL to init (which
    makes the kernel kill the rest). Returns the host pids that were running."""
    record = running(inst)
    if not record:
        services.stop(inst)
        store.clear_keeper(inst)
        return []
    pids = processes(inst, record)
    init = record["init_pid"]
    try:
        os.kill(init, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if not _wait_gone(pids, STOP_GRACE + 2):
        try:
            os.kill(init, signal.SIGKILL)   # the kernel then kills every process of the namespace
        except ProcessLookupError:
            pass
        _wait_gone(pids, 10)
    _wait_gone([pid for pid in (record["keeper_pid"],) if pid is not None], 5)
    services.stop(inst)
    store.clear_keeper(inst)
    return pids


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    sys.exit(keeper_main(sys.argv[1], int(sys.argv[2])))
