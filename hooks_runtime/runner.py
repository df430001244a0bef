"""Running one hook script as the agent does (§7.1-§7.7), and telling the author what happened.

Owns the per-script sequence (missing -> not executable -> "Script - " line -> spawn -> capture ->
deadline -> result), the ScriptError codes and texts, and our improvements over the agent that do not
change its outcome: SIGKILL after a grace period and a sweep of escaped descendants on timeout, naming
(at once) and finally ending a process that keeps the hook's output open, resource figures, and the
processes a hook left running. One thread: a poll loop over the two pipes and the supervisor's report
pipe, so a daemon that holds the pipe never hangs us. Must not import ``agent``.

The script's environment is exactly the one given: the sweep finds processes that left the hook's
process group by their ancestry (the per-hook supervisor is their subreaper) and, where the host
allows it, by the hook's cgroup; see ``process``.
"""
from __future__ import annotations

import enum
import os
import select
import signal as _signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hooks_runtime.diagnostics import (
    ProcInfo,
    ProcStat,
    all_pids,
    describe,
    holder_fix,
    pipe_holders,
    read_stat,
)
from hooks_runtime.output import HookLog, LinePump
from hooks_runtime.process import (
    Exit,
    ProcessTree,
    build_command,
    group_alive,
    signal_group,
    signal_process,
    spawn,
    spawn_error_text,
)

SAMPLE_INTERVAL = 0.1      # seconds between scans of the process tree (figures, escaped processes)
FIRST_SAMPLE = 0.02        # the first scan: late enough to keep short hooks cheap, early enough to see them
HOLDER_SETTLE = 0.05       # after the script exits, how long output may take to close before we look


class ScriptErrorCode(enum.IntEnum):
    """The agent's ScriptError codes (§7.7)."""

    SUCCEEDED = 0
    SCRIPT_MISSING = 1
    NOT_EXECUTABLE = 2
    TIMED_OUT = 3
    FAILED = 4
    UNKNOWN = 5
    OUTPUTS_LEFT_OPEN = 6
    FAILED_AFTER_RESTART = 7


@dataclass(frozen=True)
class Script:
    """One appspec hook script."""

    path: str            # absolute: {revision}/deployment-archive/{location}, slashes collapsed
    location: str        # as written in the appspec, stripped (log lines and messages)
    timeout: int         # seconds
    runas: str | None = None
    sudo: bool = False

    @property
    def prefix(self) -> str:
        """The start of the agent's failure messages for this script."""
        who = f" run as user {self.runas}" if self.runas is not None else ""
        return f"Script at specified location: {self.location}{who}"


@dataclass(frozen=True)
class HookResult:
    """What one script did. ``message`` is the agent's text (kept verbatim for conformance, even
    where it is poor, e.g. the empty exit code of Q18); ``notes`` say what the agent does not:
    signals, processes ended or left running, who held the output and how to fix it."""

    location: str
    error_code: int      # ScriptErrorCode; 0 = success
    message: str         # the agent's ScriptError text, '' on success
    exit_status: int | None
    signal: int | None
    started: float       # epoch seconds
    ended: float
    duration: float
    peak_rss: int | None         # bytes, the largest sum of RSS over the tree seen by a scan (every 0.1 s,
                                 # the first at 20 ms); None if the hook ended before the first scan
    cpu_time: float | None       # seconds, the process tree (best effort)
    killed: tuple[ProcInfo, ...] = ()
    output_holders: tuple[ProcInfo, ...] = ()
    left_running: tuple[ProcInfo, ...] = ()
    notes: tuple[str, ...] = ()
    pid: int | None = None
    command: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.error_code == ScriptErrorCode.SUCCEEDED

    @property
    def timed_out(self) -> bool:
        return self.error_code == ScriptErrorCode.TIMED_OUT


def run_script(script: Script, *, env: Mapping[str, str], cwd: str, log: HookLog,
               grace_seconds: float = 5.0,
               agent_log: Callable[[str, str], None] | None = None,
               notify: Callable[[str], None] | None = None,
               cgroup: bool = True) -> HookResult:
    """Run one hook script; never raises for a failing script.

    ``agent_log(level, message)`` receives the agent-log lines (WARN not executable, INFO timed out,
    ERROR failed to close STDOUT); ``notify(text)`` live notices for a human. ``cgroup`` False runs
    the script without a cgroup of its own even where the host allows one (the ancestry alone then
    finds what it started).
    """
    started = time.time()

    def early(code: ScriptErrorCode, message: str) -> HookResult:
        ended = time.time()
        return HookResult(script.location, int(code), message, None, None, started, ended, ended - started,
                          None, None)

    if script.runas and (script.runas.startswith("-") or not script.runas.isprintable()):
        # never a user name (the appspec parser refuses these first): su would read it as an option
        return early(ScriptErrorCode.FAILED, f"{script.prefix} refused: {script.runas!r} is not a user name")
    if not os.path.exists(script.path):
        return early(ScriptErrorCode.SCRIPT_MISSING,
                     f"Script does not exist at specified location: {os.path.abspath(script.path)}")
    if not os.access(script.path, os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        if agent_log:
            agent_log("WARN", f"Script at specified location: {script.location} is not executable."
                              "  Trying to make it executable.")
        try:
            os.chmod(script.path, os.stat(script.path).st_mode | 0o111)
        except OSError:
            return early(ScriptErrorCode.NOT_EXECUTABLE,
                         f"Unable to set script at specified location: {script.location} as executable")
    log.message(f"Script - {script.location}\n")
    return _Run(script, env, cwd, log, grace_seconds, agent_log, notify, cgroup).run()


class _Run:
    """The state of one running script."""

    def __init__(self, script: Script, env: Mapping[str, str], cwd: str, log: HookLog,
                 grace: float, agent_log: Callable[[str, str], None] | None,
                 notify: Callable[[str], None] | None, cgroup: bool) -> None:
        self.script = script
        self.use_cgroup = cgroup
        self.env = env
        self.cwd = cwd
        self.log = log
        self.grace = grace
        self.agent_log = agent_log or (lambda level, message: None)
        self.notify = notify or (lambda text: None)
        self.notes: list[str] = []
        self.killed: dict[int, ProcInfo] = {}
        self.holders: dict[int, ProcInfo] = {}
        self.exited = False               # the supervisor reported the script's end
        self.status: int | None = None    # raw wait status
        self.cpu: float | None = None     # the script's CPU seconds and its reaped children's

    # -- the sequence --------------------------------------------------------------------------
    def run(self) -> HookResult:
        script = self.script
        argv = build_command(script.path, script.runas, script.sudo)
        self.started = time.time()
        try:
            sp = spawn(argv, self.env, self.cwd, cgroup=self.use_cgroup)
        except OSError as exc:
            ended = time.time()
            return HookResult(script.location, int(ScriptErrorCode.FAILED),
                              f"{script.prefix} failed with error {spawn_error_text(exc, argv)}",
                              None, None, self.started, ended, ended - self.started, None, None,
                              command=tuple(argv))
        # §7.6: whole seconds, taken right after the spawn: the effective timeout is in (t-1, t].
        self.deadline = int(time.time()) + script.timeout
        self.sp = sp
        self.tree = ProcessTree(sp.pid, sp.supervisor, sp.cgroup)
        self.pumps = {sp.stdout: LinePump(sp.stdout, b"[stdout]", self.log),
                      sp.stderr: LinePump(sp.stderr, b"[stderr]", self.log)}
        self.poller = select.poll()
        for fd in (*self.pumps, sp.reports):
            self.poller.register(fd, select.POLLIN)
        try:
            return self._supervise()
        except BaseException:
            # A bug or ^C: never leave the hook's processes behind.
            self._kill_everything()
            raise
        finally:
            self._close()

    def _supervise(self) -> HookResult:
        script = self.script
        code, message = ScriptErrorCode.SUCCEEDED, ""
        exited_at: float | None = None
        look_for_holders: float | None = None   # when to look for processes holding the output
        next_sample = self.started + FIRST_SAMPLE
        while True:
            now = time.time()
            if not self.exited and now >= self.deadline:
                code, message = self._timed_out()
                break
            if self.exited and not self._open_pumps():
                break
            if self.exited and now >= self.deadline:
                code, message = self._outputs_left_open()
                break
            if now >= next_sample:
                self.tree.scan()
                next_sample = now + SAMPLE_INTERVAL
            if look_for_holders is not None and now >= look_for_holders:
                # Not found yet (a holder can be on its way out): look again a little later.
                look_for_holders = None if self._report_holders() else now + SAMPLE_INTERVAL
            wake = min(self.deadline, next_sample, look_for_holders or self.deadline)
            self._pump(max(0.0, wake - now))
            if self.exited and exited_at is None:
                exited_at = time.time()
                look_for_holders = exited_at + HOLDER_SETTLE
        if code == ScriptErrorCode.SUCCEEDED and self.holders and exited_at is not None:
            self.notes.append(f"the hook's output stayed open {time.time() - exited_at:.1f} s after the "
                              "script exited, until " + ", ".join(map(str, self.holders.values())) +
                              " closed it; the hook waited, as the agent does")
        exit_status, sig = self._decode_status()
        if code == ScriptErrorCode.SUCCEEDED and exit_status != 0:
            code = ScriptErrorCode.FAILED
            # The agent prints nothing after "exit code " when a signal ended the script (Q18).
            message = f"{script.prefix} failed with exit code {'' if exit_status is None else exit_status}"
        if sig is not None:
            self.notes.append(f"the script was killed by signal {_signal.Signals(sig).name}")
        return self._result(code, message, exit_status, sig)

    # -- loop pieces ---------------------------------------------------------------------------
    def _open_pumps(self) -> list[LinePump]:
        return [p for p in self.pumps.values() if p.open]

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for output or the script's exit and handle what came."""
        for fd, _ in self.poller.poll(int(timeout * 1000 + 0.999)):
            if fd == self.sp.reports:
                self._reap()
            else:
                pump = self.pumps[fd]
                pump.read()
                if not pump.open:
                    self.poller.unregister(fd)

    def _reap(self) -> None:
        """The supervisor reaped the script and says how it ended."""
        done = self.sp.read_exit()
        if done is not None:
            self._exit(done)

    def _exit(self, done: Exit) -> None:
        self.exited = True
        self.status, self.cpu = done.status, done.cpu
        self.tree.alone = done.alone
        self.poller.unregister(self.sp.reports)

    def _decode_status(self) -> tuple[int | None, int | None]:
        if self.status is None:
            return None, None
        if os.WIFSIGNALED(self.status):
            return None, os.WTERMSIG(self.status)
        return os.WEXITSTATUS(self.status), None

    def _report_holders(self) -> bool:
        """The script has exited but its output is still open: name who holds it, at once.
        Returns False to look again (the holder may not be visible yet)."""
        streams = {os.fstat(p.fd).st_ino: p.tag.decode()[1:-1] for p in self._open_pumps()}
        if not streams:
            return True
        members = self.tree.scan()
        found = pipe_holders(streams, members) or pipe_holders(streams, all_pids())
        if not found:
            return False
        for pid, names in sorted(found.items()):
            proc = describe(pid)
            self.holders[pid] = proc
            which = " and ".join(sorted(names, key=["stdout", "stderr"].index))
            fix = holder_fix(which)
            self.notify(f"{proc} still holds the {which} of {self.script.location} after the script "
                        f"exited; waiting for it to close until the timeout ({self.script.timeout} s), as "
                        f"the agent does. {fix[0].upper()}{fix[1:]}.")
        return True

    # -- endings ---------------------------------------------------------------------------------
    def _timed_out(self) -> tuple[ScriptErrorCode, str]:
        script = self.script
        self.agent_log("INFO", f"Script at specified location: {script.location} timed out")
        self.notify(f"{script.location} did not finish within {script.timeout} s: sending SIGTERM to its "
                    f"process group, SIGKILL after {self.grace:g} s")
        members = self.tree.scan()
        self._end(members, group=True)
        return (ScriptErrorCode.TIMED_OUT,
                f"Script at specified location: {script.location} failed to complete in {script.timeout} seconds")

    def _outputs_left_open(self) -> tuple[ScriptErrorCode, str]:
        script = self.script
        stream = "STDOUT" if self.pumps[self.sp.stdout].open else "STDERR"
        self.agent_log("ERROR", f"Script at specified location: {script.location} failed to close {stream}")
        if not self.holders:
            self._report_holders()
        for proc in self.holders.values():
            self.notes.append(f"{proc} kept the hook's {stream.lower()} open until the timeout "
                              f"({script.timeout} s); {holder_fix(stream.lower())}")
        stats = {pid: read_stat(pid) for pid in self.holders}
        self._end({pid: st for pid, st in stats.items() if st is not None and st.alive}, group=False)
        return (ScriptErrorCode.OUTPUTS_LEFT_OPEN,
                f"Script at specified location: {script.location} failed to close {stream}")

    def _end(self, targets: dict[int, ProcStat], *, group: bool) -> None:
        """SIGTERM (to the script's process group too when ``group``), up to ``grace`` seconds for
        them to go while their output is still logged, SIGKILL, then sweep what is left."""
        names = {pid: describe(pid) for pid in targets}
        if group:
            signal_group(self.tree.pgid, _signal.SIGTERM)
        for st in targets.values():
            if not group or st.pgid != self.tree.pgid:
                signal_process(st, _signal.SIGTERM)
        limit = time.time() + self.grace
        alive = dict(targets)
        while time.time() < limit:
            self._pump(min(0.05, max(0.0, limit - time.time())))
            alive = {pid: st for pid, st in alive.items() if _same_alive(st)}
            if not alive and not (group and group_alive(self.tree.pgid)):
                break
        stubborn = {pid: st for pid, st in alive.items() if _same_alive(st)}
        for pid in targets:
            if pid not in stubborn:
                self.killed[pid] = names[pid]
                self.notes.append(f"ended {names[pid]} with SIGTERM")
        if group:
            # New members may have appeared during the grace period (a trap that forks).
            for pid, st in self.tree.scan().items():
                stubborn.setdefault(pid, st)
                names.setdefault(pid, describe(pid))
        if group:
            signal_group(self.tree.pgid, _signal.SIGKILL)
            if self.tree.cgroup is not None:
                self.tree.cgroup.kill()
        for pid, st in stubborn.items():
            signal_process(st, _signal.SIGKILL)
            self.killed[pid] = names[pid]
            why = (f"it was still running {self.grace:g} s after SIGTERM" if pid in targets
                   else "it was started during the grace period")
            self.notes.append(f"killed {names[pid]} with SIGKILL: {why}")
        self._sweep(whole_tree=group)

    def _sweep(self, whole_tree: bool) -> None:
        """Reap the script, then SIGKILL what is left: every process of the tree after a timeout,
        only the ones we signalled otherwise; until two looks in a row find nothing (one can miss a
        process while it is re-parented from a parent we just killed) or 5 s have passed."""
        give_up = time.time() + 5.0
        empty_looks = 0
        while time.time() < give_up:
            if not self.exited:
                self._pump(0.02)
                continue
            left = {pid: st for pid, st in self.tree.descendants().items()
                    if whole_tree or pid in self.killed}
            if not left:
                empty_looks += 1
                if empty_looks == 2:
                    break
                time.sleep(0.01)
                continue
            empty_looks = 0
            if whole_tree and self.tree.cgroup is not None:
                self.tree.cgroup.kill()   # catches a member forking right now, too
            for pid, st in left.items():
                name = self.killed.get(pid) or describe(pid)
                if signal_process(st, _signal.SIGKILL) and pid not in self.killed:
                    self.killed[pid] = name
                    self.notes.append(f"killed {name} with SIGKILL: started by the timed-out hook")
            time.sleep(0.01)
        # Whatever the pipes still hold, then stop reading: everything that could write is gone.
        drain_until = time.time() + 0.5
        while self._open_pumps() and time.time() < drain_until:
            self._pump(0.05)

    def _kill_everything(self) -> None:
        try:
            signal_group(self.tree.pgid, _signal.SIGKILL)
            if self.tree.cgroup is not None:
                self.tree.cgroup.kill()
            for st in self.tree.scan().values():
                signal_process(st, _signal.SIGKILL)
            if not self.exited:
                done = self.sp.wait_exit(5.0)
                if done is not None:
                    self._exit(done)
        except Exception:   # noqa: BLE001, S110 - best effort on the way out of another exception
            pass

    def _close(self) -> None:
        for fd in self.pumps:
            try:
                os.close(fd)
            except OSError:
                pass
        self.tree.supervisor_alive = False
        self.sp.finish()

    def _result(self, code: ScriptErrorCode, message: str, exit_status: int | None,
                sig: int | None) -> HookResult:
        ended = time.time()
        left = {pid: st for pid, st in self.tree.descendants().items() if pid not in self.killed}
        left_running = tuple(describe(pid) for pid in sorted(left))
        for proc in left_running:
            self.notes.append(f"{proc} started by the hook is still running (left alone: it does not "
                              "hold the hook's output)")
        # Peak RSS comes from the scans only: the kernel's ru_maxrss of a child forked from this
        # (large) Python process starts at our own RSS, which would be reported as the hook's.
        peak_rss = self.tree.peak_rss or None
        cpu = None
        if self.cpu is not None:
            cpu = self.cpu + self.tree.orphan_cpu(set(left) | set(self.killed))
        return HookResult(self.script.location, int(code), message, exit_status, sig, self.started,
                          ended, ended - self.started, peak_rss, cpu, tuple(self.killed.values()),
                          tuple(self.holders.values()), left_running, tuple(self.notes),
                          self.sp.pid, tuple(self.sp.argv))


def _same_alive(stat: ProcStat) -> bool:
    now = read_stat(stat.pid)
    return now is not None and now.alive and now.start_ticks == stat.start_ticks
