"""hooks_runtime: one hook script run as the agent runs it (spec §7), with real processes."""
from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import psutil
import pytest

import hooks_runtime
from hooks_runtime import HookLog, HookResult, Script, ScriptErrorCode, run_script
from hooks_runtime.output import DiagnosticTail, trim_tail
from tests.lib import CLI

TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
DID = "d-TESTABCDE-local"


@dataclass
class Hooks:
    """Runs scripts of one lifecycle event into logs under a folder, recording what was reported."""

    root: str
    agent: list[tuple[str, str]] = field(default_factory=list)
    notices: list[tuple[float, str]] = field(default_factory=list)

    @property
    def scripts_log(self) -> str:
        return os.path.join(self.root, "d", "logs", "scripts.log")

    @property
    def deployments_log(self) -> str:
        return os.path.join(self.root, "deployment-logs", "codedeploy-agent-deployments.log")

    def script(self, name: str, body: str, mode: int = 0o755) -> str:
        path = os.path.join(self.root, "d", "deployment-archive", "scripts", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", newline="") as f:
            f.write(body)
        os.chmod(path, mode)
        return path

    def run(self, path: str, *, timeout: int = 30, runas: str | None = None, sudo: bool = False,
            env: dict[str, str] | None = None, cwd: str | None = None, grace: float = 5.0,
            log: HookLog | None = None) -> HookResult:
        location = "scripts/" + os.path.basename(path)
        own = log is None
        log = log or HookLog(self.scripts_log, DID, self.deployments_log)
        try:
            return run_script(Script(path, location, timeout, runas, sudo),
                              env=env if env is not None else dict(os.environ), cwd=cwd or self.root,
                              log=log, grace_seconds=grace,
                              agent_log=lambda level, msg: self.agent.append((level, msg)),
                              notify=lambda text: self.notices.append((time.time(), text)))
        finally:
            if own:
                log.close()

    def lines(self) -> list[str]:
        with open(self.scripts_log, encoding="utf-8") as f:
            return f.read().splitlines()

    def messages(self) -> list[str]:
        """scripts.log lines without their timestamps."""
        out = []
        for line in self.lines():
            assert re.match(TS + " ", line), line
            out.append(line[20:])
        return out


@pytest.fixture
def hooks(tmp_path) -> Hooks:
    return Hooks(str(tmp_path))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


def read_pid(path: str, seconds: float = 5.0) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{path} was never written")


class TestPublicApi:
    def test_all_is_locked(self):
        """The public surface is exactly these names."""
        assert hooks_runtime.__all__ == ["HookLog", "HookResult", "ProcInfo", "Script", "ScriptErrorCode",
                                         "run_script"]

    def test_does_not_import_agent(self):
        """hooks_runtime stays below the agent package."""
        root = os.path.dirname(hooks_runtime.__file__)
        for name in os.listdir(root):
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    assert not re.search(r"^\s*(from|import)\s+agent\b", f.read(), re.MULTILINE), name


class TestOutput:
    def test_stdout_and_stderr_lines_in_scripts_log_format(self, hooks):
        """Each output line is logged as `{time} [stdout]line` / `[stderr]line` after the script header."""
        path = hooks.script("out.sh", "#!/bin/bash\necho one\nsleep 0.2\necho two >&2\nsleep 0.2\necho 'three  x'\n")
        with HookLog(hooks.scripts_log, DID, hooks.deployments_log) as log:
            log.message("LifecycleEvent - AfterInstall\n")
            result = hooks.run(path, log=log)
        assert result.succeeded and result.error_code == 0 and result.message == ""
        assert result.exit_status == 0 and result.signal is None
        assert hooks.messages() == ["LifecycleEvent - AfterInstall", "Script - scripts/out.sh",
                                    "[stdout]one", "[stderr]two", "[stdout]three  x"]

    def test_fragment_without_newline_is_glued_to_the_next_entry(self, hooks):
        """Q17: a last fragment without \\n is logged as is, and the next entry follows on its line."""
        first = hooks.script("a.sh", "#!/bin/sh\nprintf 'no newline at end'\n")
        second = hooks.script("b.sh", "#!/bin/sh\necho next\n")
        with HookLog(hooks.scripts_log, DID, hooks.deployments_log) as log:
            assert hooks.run(first, log=log).succeeded
            assert hooks.run(second, log=log).succeeded
        lines = hooks.lines()
        assert re.fullmatch(TS + r" \[stdout\]no newline at end" + TS + " Script - scripts/b.sh", lines[1])
        with open(hooks.deployments_log) as f:
            assert f.read().splitlines()[2].endswith(f"[{DID}][stdout]no newline at end")

    def test_bytes_are_logged_unchanged_and_split_on_newline_only(self, hooks):
        """Carriage returns, tabs and invalid UTF-8 pass through; only \\n splits lines."""
        path = hooks.script("raw.sh", "#!/bin/bash\nprintf 'a\\rb\\tc\\xff\\n'\n")
        assert hooks.run(path).succeeded
        with open(hooks.scripts_log, "rb") as f:
            raw = f.read()
        assert raw.endswith(b" [stdout]a\rb\tc\xff\n")

    def test_many_lines_across_chunks_arrive_intact(self, hooks):
        """Lines of every length, split across reads, are logged whole and in order."""
        path = hooks.script("many.py", "#!/usr/bin/env python3\nimport sys\n"
                            "for i in range(60000):\n    sys.stdout.write(str(i) * (i % 37) + '\\n')\n")
        assert hooks.run(path).succeeded
        got = hooks.messages()[1:]
        assert got == ["[stdout]" + str(i) * (i % 37) for i in range(60000)]

    def test_line_timestamps_follow_the_output(self, hooks):
        """Each line carries the second it was printed, not the second the script ended."""
        path = hooks.script("slow.sh", "#!/bin/sh\necho early\nsleep 1.2\necho late\n")
        assert hooks.run(path).succeeded
        early, late = hooks.lines()[1:]
        def stamp(line):
            return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        assert 1 <= stamp(late) - stamp(early) <= 2


class TestEnvironment:
    def test_env_cwd_stdin_and_process_group(self, hooks, tmp_path):
        """The script sees exactly the given environment and cwd, stdin at end of file, and leads
        its own process group inside our session."""
        workdir = tmp_path / "work dir"
        workdir.mkdir()
        path = hooks.script("env.sh", "#!/bin/bash\n"
                            'echo "event=$LIFECYCLE_EVENT id=$DEPLOYMENT_ID home=${HOME-unset} pwd=$(pwd)"\n'
                            'read -r line && echo "stdin=$line" || echo "stdin=EOF"\n'
                            'echo "args=$#"\n'
                            "ps -o pid=,pgid=,sid= -p $$\n")
        env = {"PATH": os.environ["PATH"], "LIFECYCLE_EVENT": "AfterInstall", "DEPLOYMENT_ID": DID,
               "CDSIM_TEST_PROCESS_MARK": os.environ["CDSIM_TEST_PROCESS_MARK"]}
        result = hooks.run(path, env=env, cwd=str(workdir))
        assert result.succeeded
        out = hooks.messages()
        assert out[1] == f"[stdout]event=AfterInstall id={DID} home=unset pwd={workdir}"
        assert out[2:4] == ["[stdout]stdin=EOF", "[stdout]args=0"]
        pid, pgid, sid = map(int, out[4].removeprefix("[stdout]").split())
        assert pid == pgid == result.pid
        assert sid == os.getsid(0)

    def test_signal_mask_and_ignored_signals_are_cdsims(self, hooks):
        """The script starts with our blocked signals and our ignored ones, except SIGPIPE and
        SIGXFSZ (default, as subprocess gives them): the supervisor in between changes nothing."""
        path = hooks.script("signals.sh", "#!/bin/sh\nexec grep -E '^Sig(Blk|Ign)' /proc/self/status\n")
        result = hooks.run(path)
        assert result.succeeded
        seen = dict(line.removeprefix("[stdout]").split(":\t") for line in hooks.messages()[1:])
        with open("/proc/self/status") as f:
            ours = dict(line.rstrip("\n").split(":\t") for line in f if line.startswith(("SigBlk", "SigIgn")))
        reset = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
        assert int(seen["SigBlk"], 16) == int(ours["SigBlk"], 16)
        assert int(seen["SigIgn"], 16) == int(ours["SigIgn"], 16) & ~reset

    def test_script_without_shebang_runs_under_sh(self, hooks):
        """ENOEXEC: a script with no #! line is run by /bin/sh, as Ruby's spawn does."""
        path = hooks.script("plain.sh", "echo via-sh $0\n")
        result = hooks.run(path)
        assert result.succeeded
        assert hooks.messages()[1] == f"[stdout]via-sh {path}"

    def test_crlf_shebang_fails_with_the_agents_enoent_text(self, hooks):
        """A `#!/bin/bash\\r` line cannot be executed: code 4 and Ruby's Errno text."""
        path = hooks.script("dos.sh", "#!/bin/bash\r\necho hi\r\n")
        result = hooks.run(path)
        assert result.error_code == ScriptErrorCode.FAILED == 4
        assert result.message == ("Script at specified location: scripts/dos.sh failed with error "
                                  f"Errno::ENOENT with message No such file or directory - {path}")
        assert hooks.messages() == ["Script - scripts/dos.sh"]

    def test_missing_script_is_code_1_and_logs_nothing(self, hooks):
        """A missing script fails before its `Script -` line, naming the absolute path."""
        path = os.path.join(hooks.root, "d", "deployment-archive", "scripts", "..", "scripts", "nope.sh")
        with HookLog(hooks.scripts_log, DID, hooks.deployments_log) as log:
            result = hooks.run(path, log=log)
        assert result.error_code == ScriptErrorCode.SCRIPT_MISSING == 1
        norm = os.path.join(hooks.root, "d", "deployment-archive", "scripts", "nope.sh")
        assert result.message == f"Script does not exist at specified location: {norm}"
        assert not os.path.exists(hooks.scripts_log)

    def test_non_executable_script_is_made_executable_and_run(self, hooks):
        """Q34: WARN in the agent log, chmod a+x in place, then it runs."""
        path = hooks.script("noexec.sh", "#!/bin/sh\necho ran\n", mode=0o640)
        result = hooks.run(path)
        assert result.succeeded
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o751
        assert hooks.agent == [("WARN", ("Script at specified location: scripts/noexec.sh is not executable."
                                         "  Trying to make it executable."))]
        assert hooks.messages()[1] == "[stdout]ran"

    def test_path_with_spaces_quotes_and_dollar_runs_the_named_file(self, hooks):
        """Q23 fixed: the path is one argument, also through su."""
        path = hooks.script("it's $HOME x.sh", "#!/bin/sh\necho named\n")
        assert hooks.run(path).succeeded
        assert hooks.run(path, runas="root").succeeded
        assert hooks.messages().count("[stdout]named") == 2


class TestFailures:
    def test_exit_3_is_code_4_with_the_agents_text(self, hooks):
        """Non-zero exit: code 4, `failed with exit code 3`; the output is still logged."""
        path = hooks.script("fail.sh", "#!/bin/sh\necho about to fail\nexit 3\n")
        result = hooks.run(path)
        assert (result.error_code, result.exit_status) == (4, 3)
        assert result.message == "Script at specified location: scripts/fail.sh failed with exit code 3"
        assert not result.succeeded and not result.timed_out
        assert hooks.messages()[-1] == "[stdout]about to fail"

    def test_runas_failure_names_the_user(self, hooks):
        """With runas the agent's text says `run as user {runas}`."""
        path = hooks.script("fail.sh", "#!/bin/sh\nexit 5\n")
        result = hooks.run(path, runas="root")
        assert result.message == ("Script at specified location: scripts/fail.sh run as user root "
                                  "failed with exit code 5")

    def test_killed_by_signal_keeps_the_agents_text_and_reports_the_signal(self, hooks):
        """Q18: the agent's message ends in `exit code `; we also report the signal."""
        path = hooks.script("selfkill.sh", "#!/bin/sh\nkill -KILL $$\n")
        result = hooks.run(path)
        assert result.error_code == 4
        assert result.message == "Script at specified location: scripts/selfkill.sh failed with exit code "
        assert (result.exit_status, result.signal) == (None, signal.SIGKILL)
        assert any("SIGKILL" in note for note in result.notes)

    def test_sudo_runs_through_sudo_or_fails_like_the_agent_without_it(self, hooks):
        """sudo: true runs `sudo {path}`; with no sudo installed the agent's ENOENT text names sudo."""
        path = hooks.script("root.sh", "#!/bin/sh\nid -un\n")
        result = hooks.run(path, sudo=True)
        if shutil.which("sudo") is None:
            assert result.error_code == 4
            assert result.message == ("Script at specified location: scripts/root.sh failed with error "
                                      "Errno::ENOENT with message No such file or directory - sudo")
        else:
            assert result.succeeded and result.command[0] == "sudo"
            assert hooks.messages()[-1] == "[stdout]root"


class TestTimeout:
    def test_timeout_kills_grandchild_too(self, hooks, tmp_path):
        """Code 3 after between timeout-1 and timeout seconds, INFO in the agent log, and the
        script's background child is ended with it."""
        pidfile = tmp_path / "child.pid"
        path = hooks.script("slow.sh", f"#!/bin/bash\nsleep 60 &\necho $! > {pidfile}\necho sleeping\nwait\n")
        t0 = time.time()
        result = hooks.run(path, timeout=2, grace=2)
        took = time.time() - t0
        assert result.timed_out and result.error_code == 3
        assert result.message == "Script at specified location: scripts/slow.sh failed to complete in 2 seconds"
        assert 0.9 <= took < 2 + 1.5
        assert ("INFO", "Script at specified location: scripts/slow.sh timed out") in hooks.agent
        child = read_pid(str(pidfile))
        assert wait_gone(child)
        assert child in {p.pid for p in result.killed}
        assert hooks.messages() == ["Script - scripts/slow.sh", "[stdout]sleeping"]

    def test_script_ignoring_term_is_killed_after_the_grace_period(self, hooks):
        """A script that traps TERM gets SIGKILL once the grace period is over (Q16 fixed)."""
        path = hooks.script("stubborn.sh", "#!/bin/bash\ntrap 'echo ignoring TERM' TERM\n"
                            "for i in $(seq 100); do sleep 0.1; done\n")
        t0 = time.time()
        result = hooks.run(path, timeout=1, grace=1.5)
        took = time.time() - t0
        assert result.timed_out
        assert 1.5 <= took <= 1 + 1.5 + 1.5
        assert result.signal == signal.SIGKILL
        assert any("SIGKILL" in note and str(result.pid) in note for note in result.notes)
        assert result.pid in {p.pid for p in result.killed}
        assert "[stdout]ignoring TERM" in hooks.messages()

    def test_setsid_descendant_is_killed_on_timeout(self, hooks, tmp_path):
        """A grandchild that left the process group with setsid (the agent leaves it running) is swept."""
        pidfile = tmp_path / "setsid.pid"
        path = hooks.script("escape.sh", "#!/bin/bash\n"
                            f"setsid bash -c 'echo $$ > {pidfile}; exec sleep 60' </dev/null >/dev/null 2>&1 &\n"
                            "sleep 60\n")
        result = hooks.run(path, timeout=1, grace=1)
        assert result.timed_out
        escaped = read_pid(str(pidfile))
        assert os.getsid(os.getpid()) != escaped   # it really had its own session
        assert wait_gone(escaped)
        assert escaped in {p.pid for p in result.killed}
        assert any(str(escaped) in note for note in result.notes)

    def test_double_forked_orphan_is_killed_on_timeout(self, hooks, tmp_path):
        """A process in its own session whose parent exited at once (re-parented to init, out of the
        group and the parentage) is still found and ended."""
        pidfile = tmp_path / "orphan.pid"
        path = hooks.script("orphan.sh", "#!/bin/bash\n"
                            f"( setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {pidfile} )\n"
                            "sleep 60\n")
        result = hooks.run(path, timeout=1, grace=1)
        orphan = read_pid(str(pidfile))
        assert result.timed_out
        assert wait_gone(orphan)
        assert orphan in {p.pid for p in result.killed}


class TestOutputHolders:
    def daemon_script(self, hooks, tmp_path, lifetime: float, redirect: str = "") -> tuple[str, str]:
        pidfile = tmp_path / "daemon.pid"
        path = hooks.script("start.sh", "#!/bin/bash\n"
                            f"sleep {lifetime} {redirect} &\n"
                            f"echo $! > {pidfile}\necho started\nexit 0\n")
        return path, str(pidfile)

    def test_holder_is_named_at_once_and_the_hook_succeeds_when_it_ends_in_time(self, hooks, tmp_path):
        """The notice comes right after the script exits; the hook waits as the agent does and
        succeeds because the daemon ended before the timeout."""
        path, pidfile = self.daemon_script(hooks, tmp_path, lifetime=1.5)
        t0 = time.time()
        result = hooks.run(path, timeout=10)
        took = time.time() - t0
        daemon = read_pid(pidfile)
        assert result.succeeded
        assert 1.3 <= took < 5
        assert [p.pid for p in result.output_holders] == [daemon]
        (when, text), = hooks.notices
        assert when - t0 < 0.8
        assert f"pid {daemon} (sleep 1.5)" in text and "stdout" in text and "> /dev/null 2>&1 &" in text
        assert result.killed == ()

    def test_holder_at_the_deadline_fails_with_code_6_and_is_ended(self, hooks, tmp_path):
        """Q15: `failed to close STDOUT` at the timeout with the agent's ERROR line; we also name
        the process with the fix and end it (the agent leaves it running)."""
        path, pidfile = self.daemon_script(hooks, tmp_path, lifetime=60)
        t0 = time.time()
        result = hooks.run(path, timeout=2, grace=1)
        took = time.time() - t0
        daemon = read_pid(pidfile)
        assert result.error_code == ScriptErrorCode.OUTPUTS_LEFT_OPEN == 6
        assert result.message == "Script at specified location: scripts/start.sh failed to close STDOUT"
        assert ("ERROR", "Script at specified location: scripts/start.sh failed to close STDOUT") in hooks.agent
        assert 0.9 <= took < 2 + 1 + 1
        assert result.exit_status == 0
        assert [p.pid for p in result.killed] == [daemon]
        assert any(f"pid {daemon}" in note and "nohup" in note and "setsid" in note for note in result.notes)
        assert wait_gone(daemon)
        assert hooks.notices and hooks.notices[0][0] - t0 < 0.8

    def test_stderr_holder_fails_with_stderr(self, hooks, tmp_path):
        """When only stderr is held the agent's text says STDERR."""
        path, pidfile = self.daemon_script(hooks, tmp_path, lifetime=60, redirect=">/dev/null")
        result = hooks.run(path, timeout=1, grace=1)
        assert result.message == "Script at specified location: scripts/start.sh failed to close STDERR"
        assert wait_gone(read_pid(pidfile))

    def test_redirected_daemon_is_left_running_and_reported(self, hooks, tmp_path):
        """A daemon that does not hold the output is legitimate: success, reported in left_running."""
        path, pidfile = self.daemon_script(hooks, tmp_path, lifetime=60, redirect=">/dev/null 2>&1")
        result = hooks.run(path, timeout=5)
        daemon = read_pid(pidfile)
        try:
            assert result.succeeded and result.output_holders == () and result.killed == ()
            assert [p.pid for p in result.left_running] == [daemon]
            assert not gone(daemon)
        finally:
            os.kill(daemon, signal.SIGKILL)
            wait_gone(daemon)


class TestFigures:
    def test_duration_cpu_and_memory_of_the_tree(self, hooks):
        """A child that holds 60 MB and burns 0.4 s of CPU: both show in the hook's figures."""
        path = hooks.script("work.sh", "#!/bin/bash\n"
                            "python3 -c 'import time; b = bytearray(60 * 1024 * 1024)\n"
                            "while time.process_time() < 0.4: pass\n"
                            "print(time.process_time())'\n")
        result = hooks.run(path)
        assert result.succeeded
        burnt = float(hooks.messages()[1].removeprefix("[stdout]"))
        assert 0.4 <= result.duration <= result.ended - result.started + 1e-6
        assert result.cpu_time is not None and result.cpu_time >= burnt
        assert result.peak_rss is not None and result.peak_rss >= 60 * 1024 * 1024


class TestRunas:
    def test_runas_user_sees_its_identity_and_the_deployment_variables(self, hooks, runas_user, shared_dir):
        """`su {user} -c path` without a login shell: whoami, HOME, USER, LOGNAME are the user's,
        the cwd and the CodeDeploy variables are kept."""
        hooks.root = shared_dir
        path = hooks.script("as_user.sh", "#!/bin/sh\n"
                            'echo "whoami=$(whoami) HOME=$HOME USER=$USER LOGNAME=$LOGNAME SHELL=$SHELL '
                            'PWD=$(pwd) id=$DEPLOYMENT_ID"\n')
        for d in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
            os.chmod(d, 0o755)
        env = dict(os.environ, DEPLOYMENT_ID=DID)
        result = hooks.run(path, runas=runas_user.pw_name, env=env, cwd=shared_dir)
        assert result.succeeded, result
        assert result.command == ("su", "-c", shlex.quote(path), "--", runas_user.pw_name)
        u = runas_user
        assert hooks.messages()[1] == (f"[stdout]whoami={u.pw_name} HOME={u.pw_dir} USER={u.pw_name} "
                                       f"LOGNAME={u.pw_name} SHELL=/bin/sh PWD={shared_dir} id={DID}")

    def test_unknown_runas_user_logs_sus_error_and_fails(self, hooks):
        """su's own complaint lands in scripts.log as [stderr]; code 4, exit 1 (as in g_runas)."""
        path = hooks.script("x.sh", "#!/bin/sh\necho never\n")
        result = hooks.run(path, runas="nosuchuser-cdsim")
        assert (result.error_code, result.exit_status) == (4, 1)
        assert result.message == ("Script at specified location: scripts/x.sh run as user nosuchuser-cdsim "
                                  "failed with exit code 1")
        assert hooks.messages() == ["Script - scripts/x.sh",
                                    ("[stderr]su: user nosuchuser-cdsim does not exist or the user entry "
                                     "does not contain all the required fields")]

    def test_empty_runas_runs_as_root_through_su(self, hooks):
        """`runas: ''` gives the agent's `su  -c path`: root, and `run as user ` in its failure text."""
        path = hooks.script("empty.sh", "#!/bin/sh\nid -un\nexit 2\n")
        result = hooks.run(path, runas="")
        assert result.command == ("su", "-c", shlex.quote(path))
        assert hooks.messages()[1] == "[stdout]root"
        assert result.message == "Script at specified location: scripts/empty.sh run as user  failed with exit code 2"

    def test_runas_timeout_ends_the_script_in_sus_new_session(self, hooks, runas_user, shared_dir, tmp_path):
        """su starts the script in a new session; the sweep still ends it and its children."""
        hooks.root = shared_dir
        pidfile = os.path.join(shared_dir, "pid")
        path = hooks.script("slow.sh", f"#!/bin/sh\nsleep 60 &\necho $! > {pidfile}\nwait\n")
        for d in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
            os.chmod(d, 0o755)
        os.chmod(shared_dir, 0o777)
        result = hooks.run(path, runas=runas_user.pw_name, timeout=1, grace=1, cwd=shared_dir)
        assert result.timed_out
        sleeper = read_pid(pidfile)
        assert wait_gone(sleeper)
        assert sleeper in {p.pid for p in result.killed}


class TestLogs:
    def test_files_are_created_on_the_first_message_with_the_logger_header(self, tmp_path):
        """Nothing exists until the first message; then scripts.log and the deployments log (with
        Ruby Logger's header) appear, modes 0644 / folders 0755."""
        scripts = tmp_path / "g" / "d" / "logs" / "scripts.log"
        deployments = tmp_path / "deployment-logs" / "codedeploy-agent-deployments.log"
        old = os.umask(0o022)
        try:
            with HookLog(str(scripts), DID, str(deployments)) as log:
                assert not scripts.exists() and not deployments.parent.exists()
                log.message("LifecycleEvent - BeforeInstall\n")
                log.message("Script - scripts/a.sh\n")
        finally:
            os.umask(old)
        assert stat.S_IMODE(scripts.stat().st_mode) == 0o644
        assert stat.S_IMODE(scripts.parent.stat().st_mode) == 0o755
        assert stat.S_IMODE(deployments.stat().st_mode) == 0o644
        lines = deployments.read_text().splitlines()
        assert re.fullmatch(r"# Logfile created on " + TS + r" [+-]\d{4} by logger\.rb/v1\.5\.0", lines[0])
        assert re.fullmatch(r"\[" + TS + r"\.\d{3}\] \[" + DID + r"\]LifecycleEvent - BeforeInstall", lines[1])
        assert lines[2].endswith(f"] [{DID}]Script - scripts/a.sh")
        assert re.fullmatch(TS + " LifecycleEvent - BeforeInstall", scripts.read_text().splitlines()[0])

    def test_existing_deployments_log_is_appended_without_a_second_header(self, tmp_path):
        """A second event appends to both files."""
        scripts, deployments = str(tmp_path / "s.log"), str(tmp_path / "dl" / "d.log")
        for event in ("A", "B"):
            with HookLog(scripts, DID, deployments) as log:
                log.message(f"LifecycleEvent - {event}\n")
        with open(deployments) as f:
            lines = f.read().splitlines()
        assert len(lines) == 3 and sum(line.startswith("# Logfile") for line in lines) == 1
        with open(scripts) as f:
            assert len(f.read().splitlines()) == 2

    def test_deployments_log_strips_what_ruby_strips(self, hooks):
        """The deployments log holds each message stripped; scripts.log keeps the bytes."""
        path = hooks.script("ws.sh", "#!/bin/bash\nprintf 'trailing  \\t\\r\\nclean\\n\\n  lead\\n'\n")
        assert hooks.run(path).succeeded
        with open(hooks.deployments_log) as f:
            texts = [line.split("] ", 1)[1] for line in f.read().splitlines()[1:]]
        assert texts == [f"[{DID}]Script - scripts/ws.sh", f"[{DID}][stdout]trailing", f"[{DID}][stdout]clean",
                         f"[{DID}][stdout]", f"[{DID}][stdout]  lead"]
        with open(hooks.scripts_log, "rb") as f:
            assert b"[stdout]trailing  \t\r\n" in f.read()

    def test_no_deployments_log_when_disabled(self, tmp_path):
        """deployments_log None (enable_deployments_log false) writes scripts.log only."""
        with HookLog(str(tmp_path / "s.log"), DID, None) as log:
            log.message("LifecycleEvent - A\n")
        assert os.listdir(tmp_path) == ["s.log"]


class TestDiagnosticTail:
    def test_hand_computed_cases(self):
        """§7.8 worked by hand: three 1000-char entries keep the last two; two of 1100 keep one;
        one of 2048 empties the tail; 300 ten-char entries keep 204."""
        tail = DiagnosticTail()
        for c in "abc":
            tail.append(c * 1000)
        assert tail.text() == "b" * 1000 + "c" * 1000
        tail = DiagnosticTail()
        tail.append("a" * 1100)
        tail.append("b" * 1100)
        assert tail.entries() == ["b" * 1100]
        tail = DiagnosticTail()
        tail.append("short")
        tail.append("x" * 2048)
        assert tail.entries() == []
        tail.append("y")
        assert tail.entries() == ["y"]
        tail = DiagnosticTail()
        for i in range(300):
            tail.append(f"{i:09d}\n")
        assert len(tail.entries()) == 204 and tail.entries()[0] == f"{300 - 204:09d}\n"

    def test_batches_match_the_per_append_loop(self):
        """extend and extend_block (used for output chunks) equal appending one entry at a time."""
        rng = random.Random(7)
        for _ in range(300):
            entries = ["x" * rng.choice([0, 1, 5, 50, 300, 1023, 1024, 2040, 2047, 2048, 3000])
                       for _ in range(rng.randint(1, 40))]
            reference: list[str] = []
            for entry in entries:
                reference.append(entry)
                trim_tail(reference)
            cut = rng.randint(0, len(entries))
            batched = DiagnosticTail()
            batched.extend(entries[:cut])
            batched.extend(entries[cut:])
            assert batched.entries() == reference
        for _ in range(300):
            lines = [("é" if rng.random() < 0.3 else "z") * rng.choice([0, 3, 40, 700, 2100]) + "\n"
                     for _ in range(rng.randint(1, 30))]
            reference = []
            for line in lines:
                reference.append("[stdout]" + line)
                trim_tail(reference)
            block = "".join(lines).encode()
            head_len = rng.randint(0, min(3, len(lines[0]) - 1))
            chunked = DiagnosticTail()
            chunked.extend_block("[stdout]", block[head_len:], len(block) - head_len, block[:head_len])
            assert chunked.entries() == reference

    def test_log_tail_holds_the_events_messages(self, hooks):
        """HookLog.tail() is the raw messages of the event (no timestamps), joined."""
        path = hooks.script("t.sh", "#!/bin/sh\necho out\n")
        with HookLog(hooks.scripts_log, DID, hooks.deployments_log) as log:
            log.message("LifecycleEvent - ValidateService\n")
            hooks.run(path, log=log)
            assert log.tail() == "LifecycleEvent - ValidateService\nScript - scripts/t.sh\n[stdout]out\n"


def hook_environment(path: str) -> dict[str, str]:
    """The environment a hook recorded with ``cat /proc/$$/environ`` (exactly what it was given)."""
    with open(path, "rb") as f:
        entries = f.read().split(b"\0")
    return dict(e.decode().split("=", 1) for e in entries if e)


def pids_in(path: str) -> list[int]:
    with open(path) as f:
        return [int(word) for word in f.read().split()]


def kill_survivors(pids: list[int]) -> None:
    """After a failed check: processes that shed the test's environment mark escape the leftover
    check in conftest, so end the recorded ones here (they were started seconds ago: pids not reused)."""
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def own_cgroup2_dir() -> str | None:
    """Our cgroup v2 folder, found here independently of hooks_runtime.cgroup."""
    with open("/proc/self/cgroup") as f:
        rel = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    with open("/proc/self/mountinfo") as f:
        mount = next((line.split()[4] for line in f if " - cgroup2 " in line), None)
    if rel is None or mount is None:
        return None
    return mount + ("" if rel == "/" else rel)


@pytest.mark.parametrize("cgroup", [True, False], ids=["cgroup-where-allowed", "ancestry-only"])
class TestEscapesWithoutAMarker:
    """Processes that left the hook's group, session and environment are found by ancestry (and by
    the hook's cgroup where the host allows one); the hook's environment is exactly the one given."""

    ENV_EXTRA: ClassVar[dict[str, str]] = {"DEPLOYMENT_ID": DID, "LIFECYCLE_EVENT": "ApplicationStart",
                                           "ODD": "two words\nand = sign"}

    def run(self, hooks, path, cgroup, **kw) -> HookResult:
        self.given = dict(os.environ, **self.ENV_EXTRA)
        with HookLog(hooks.scripts_log, DID, None) as log:
            return run_script(Script(path, "scripts/" + os.path.basename(path), kw.pop("timeout", 2)),
                              env=self.given, cwd=hooks.root, log=log, grace_seconds=kw.pop("grace", 1),
                              cgroup=cgroup, agent_log=lambda level, msg: hooks.agent.append((level, msg)))

    def check_swept(self, result: HookResult, pids: list[int], envfile: str) -> None:
        try:
            assert result.timed_out
            killed = {p.pid for p in result.killed}
            for pid in pids:
                assert wait_gone(pid), f"pid {pid} survived the timeout"
                assert pid in killed, (pid, result.killed)
                assert any(f"pid {pid} " in note for note in result.notes), result.notes
            assert hook_environment(envfile) == self.given   # nothing added, nothing lost
        finally:
            kill_survivors(pids)

    def test_su_login_shell_escape_is_ended_on_timeout(self, hooks, tmp_path, runas_user, cgroup):
        """`su -l USER -c 'sleep 1000 &'`: a login shell (environment reset, new session) whose
        background child is orphaned at once; the old per-run token could not see it."""
        envfile, pidfile, escenv = (str(tmp_path / n) for n in ("env", "pids", "escaped-env"))
        path = hooks.script("su_escape.sh", "#!/bin/bash\n"
                            f"cat /proc/$$/environ > {envfile}\n"
                            f"p=$(su -l {runas_user.pw_name} -c 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $!')\n"
                            f"cat /proc/$p/environ > {escenv}\n"
                            f"echo $$ $p >> {pidfile}\n"
                            f"sleep 1000 & echo $! >> {pidfile}\nwait\n")
        result = self.run(hooks, path, cgroup)
        script, escaped, sleeper = pids_in(pidfile)
        with open(escenv, "rb") as f:
            assert os.environ["CDSIM_TEST_PROCESS_MARK"].encode() not in f.read()   # the env was reset
        self.check_swept(result, [script, escaped, sleeper], envfile)

    def test_env_i_setsid_double_fork_is_ended_on_timeout(self, hooks, tmp_path, cgroup):
        """`env -i setsid sh -c 'sleep 1000 &'`: empty environment, own session, parent gone."""
        envfile, pidfile, escenv, sidfile = (str(tmp_path / n) for n in ("env", "pids", "escaped-env", "sid"))
        path = hooks.script("double_fork.sh", "#!/bin/bash\n"
                            f"cat /proc/$$/environ > {envfile}\n"
                            "p=$(env -i setsid sh -c 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $!')\n"
                            f"cat /proc/$p/environ > {escenv}\nps -o sid= -p $p > {sidfile}\n"
                            f"echo $$ $p >> {pidfile}\n"
                            f"sleep 1000 & echo $! >> {pidfile}\nwait\n")
        result = self.run(hooks, path, cgroup)
        script, escaped, sleeper = pids_in(pidfile)
        assert pids_in(sidfile) != [os.getsid(0)]   # its own session
        with open(escenv, "rb") as f:
            assert b"CDSIM_TEST_PROCESS_MARK" not in f.read()   # and an empty environment
        self.check_swept(result, [script, escaped, sleeper], envfile)

    def test_processes_forking_during_the_sweep_are_all_ended(self, hooks, tmp_path, cgroup):
        """A loop that ignores SIGTERM and keeps starting detached processes (each in a session of
        its own, orphaned at once) while we kill: the sweep goes on until none is left."""
        pidfile = str(tmp_path / "pids")
        path = hooks.script("spawner.sh", "#!/bin/bash\ntrap '' TERM\n"
                            "while :; do\n"
                            f"  ( setsid sh -c 'echo $$ >> {pidfile}; trap \"\" TERM; exec sleep 1000' "
                            "</dev/null >/dev/null 2>&1 & )\n"
                            "  sleep 0.02\ndone\n")
        result = self.run(hooks, path, cgroup, timeout=1, grace=0.5)
        assert result.timed_out
        time.sleep(0.3)   # a process forked by one that was being killed has had time to write its pid
        pids = pids_in(pidfile)
        assert len(pids) >= 5
        try:
            assert [pid for pid in pids if not wait_gone(pid, 1.0)] == []
        finally:
            kill_survivors(pids)

    def test_daemon_of_a_successful_hook_keeps_running(self, hooks, tmp_path, cgroup):
        """`nohup ... > /dev/null 2>&1 &` from a hook that exits 0: success, reported as left
        running, alive after run_script has let the hook's supervisor go (and back in our own
        cgroup when the hook had one)."""
        pidfile = str(tmp_path / "daemon.pid")
        path = hooks.script("start_daemon.sh", "#!/bin/bash\n"
                            f"nohup setsid sleep 1000 > /dev/null 2>&1 & echo $! > {pidfile}\nexit 0\n")
        result = self.run(hooks, path, cgroup)
        daemon = read_pid(pidfile)
        try:
            assert result.succeeded and result.killed == ()
            assert [p.pid for p in result.left_running] == [daemon]
            time.sleep(0.2)
            assert not gone(daemon)
            assert psutil.Process(daemon).ppid() != result.pid
            with open(f"/proc/{daemon}/cgroup") as f, open("/proc/self/cgroup") as g:
                assert [x for x in f if x.startswith("0::")] == [x for x in g if x.startswith("0::")]
        finally:
            os.kill(daemon, signal.SIGKILL)
            wait_gone(daemon)


class TestHookCgroup:
    def test_hook_runs_in_a_cgroup_of_its_own_removed_afterwards(self, hooks, tmp_path):
        """Where the host allows it (root, writable cgroup v2), the script runs in a fresh cgroup
        below ours, which is gone once the hook is over."""
        base = own_cgroup2_dir()
        if not self.host_allows(base):
            pytest.skip("this host does not let us create a cgroup v2 (root and a writable cgroup2 mount "
                        "are needed); the ancestry-only tests cover the fallback")
        out = str(tmp_path / "cgroup")
        path = hooks.script("where.sh", f"#!/bin/sh\ncat /proc/self/cgroup > {out}\n")
        result = hooks.run(path)
        assert result.succeeded
        with open(out) as f:
            rel = next(line[3:].strip() for line in f if line.startswith("0::"))
        assert os.path.basename(rel).startswith("cdsim-hook-")
        assert os.path.dirname(base + rel) == base
        assert not os.path.exists(base + rel)

    def test_cgroup_left_by_a_cdsim_killed_mid_hook_is_removed_by_the_next(self, tmp_path):
        """cdsim killed with SIGKILL during a hook cannot remove the hook's cgroup; once the hook
        has ended too, the next cdsim process removes the empty leftover."""
        base = own_cgroup2_dir()
        if not self.host_allows(base):
            pytest.skip("this host does not let us create a cgroup v2")
        bundle = tmp_path / "rev"
        (bundle / "scripts").mkdir(parents=True)
        (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n"
                                            "    - location: scripts/hang.sh\n      timeout: 60\n")
        pidfile, cgfile = tmp_path / "pid", tmp_path / "cgroup"
        hang = bundle / "scripts" / "hang.sh"
        hang.write_text(f"#!/bin/sh\ncat /proc/self/cgroup > {cgfile}\necho $$ > {pidfile}\nexec sleep 1000\n")
        hang.chmod(0o755)
        config = tmp_path / "agent.yml"
        config.write_text(f":root_dir: '{tmp_path}/root'\n:log_dir: '{tmp_path}/log/'\n")

        def local(rev):
            return subprocess.Popen([*CLI, "local", "-l", str(rev),
                                     "--agent-configuration-file", str(config)], cwd=tmp_path,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        cdsim = local(bundle)
        hook = read_pid(str(pidfile), 30)
        cdsim.kill()
        cdsim.wait()
        with open(cgfile) as f:
            left = base + next(line[3:].strip() for line in f if line.startswith("0::"))
        os.kill(hook, signal.SIGKILL)   # it outlives cdsim, as it does the agent; end it here
        assert wait_gone(hook)
        assert os.path.isdir(left)
        hang.write_text("#!/bin/sh\nexit 0\n")
        assert local(bundle).wait(60) == 0
        assert not os.path.exists(left)

    def test_hook_cgroup_follows_us_into_another_cgroup(self, hooks, tmp_path):
        """Our cgroup's folder is remembered between hooks; once we are moved to another cgroup
        the next hook's cgroup is made below the new one (and removed), not below the old."""
        base = own_cgroup2_dir()
        if not self.host_allows(base):
            pytest.skip("this host does not let us create a cgroup v2")
        assert base is not None
        out = str(tmp_path / "cgroup")
        path = hooks.script("where.sh", f"#!/bin/sh\ncat /proc/self/cgroup > {out}\n")

        def hook_cgroup() -> str:
            assert hooks.run(path).succeeded
            with open(out) as f:
                return base_mount + next(line[3:].strip() for line in f if line.startswith("0::"))

        with open("/proc/self/cgroup") as f:
            rel = next(line[3:].strip() for line in f if line.startswith("0::"))
        base_mount = base[:len(base) - len(rel)] if rel != "/" else base
        first = hook_cgroup()
        assert os.path.dirname(first) == base
        moved = os.path.join(base, f"cdsim-test-moved-{os.getpid()}")
        os.mkdir(moved)
        try:
            with open(os.path.join(moved, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            try:
                assert own_cgroup2_dir() == moved
                second = hook_cgroup()
                assert os.path.dirname(second) == moved
                assert not os.path.exists(second)
            finally:
                with open(os.path.join(base, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            third = hook_cgroup()   # and back
            assert os.path.dirname(third) == base
        finally:
            os.rmdir(moved)

    @staticmethod
    def host_allows(base: str | None) -> bool:
        if base is None:
            return False
        probe = os.path.join(base, f"cdsim-test-probe-{os.getpid()}")
        try:
            os.mkdir(probe)
        except OSError:
            return False
        os.rmdir(probe)
        return True


class TestSupervisor:
    def test_hook_runs_under_its_own_supervisor_which_is_gone_afterwards(self, hooks, tmp_path):
        """The script's parent is a per-hook process named cdsim-hook (our child), not us; it is
        reaped by the time run_script returns."""
        out = str(tmp_path / "parent")
        path = hooks.script("parent.sh", f"#!/bin/sh\nppid=$(cut -d' ' -f4 /proc/$$/stat)\n"
                            f"echo $ppid $(cat /proc/$ppid/comm) $(cut -d' ' -f4 /proc/$ppid/stat) > {out}\n")
        result = hooks.run(path)
        assert result.succeeded
        with open(out) as f:
            supervisor, name, grandparent = f.read().split()
        assert name == "cdsim-hook" and int(grandparent) == os.getpid()
        assert not os.path.exists(f"/proc/{supervisor}")

    def test_parallel_hooks_and_subprocesses_keep_their_exit_statuses(self, hooks, tmp_path):
        """Hooks whose orphans are reaped by their supervisors, in threads beside subprocess.run:
        nobody takes another's exit status (cdsim never waits for any child but its own)."""
        path = hooks.script("orphans.sh", "#!/bin/sh\n( sleep 0.05 & ) ; ( true & ) ; exit 3\n")
        statuses: list[int | None] = []
        codes: list[int] = []

        def run_hooks() -> None:
            with HookLog(str(tmp_path / f"{threading.get_ident()}.log"), DID, None) as log:
                for _ in range(15):
                    statuses.append(hooks.run(path, log=log).exit_status)

        def run_commands() -> None:
            for _ in range(40):
                codes.append(subprocess.run(["sh", "-c", "exit 7"]).returncode)

        threads = [threading.Thread(target=run_hooks), threading.Thread(target=run_hooks),
                   threading.Thread(target=run_commands)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert statuses == [3] * 30
        assert codes == [7] * 40
