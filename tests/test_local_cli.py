"""`cdsim local` (codedeploy-local's command line) and `cdsim deploy --host`, run as real subprocesses
on real bundles built by the tests."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.errors import ExitStatus
from tests import lib
from tests.lib import CLI, require_tool


def make_bundle(root: Path, appspec: str, scripts: dict[str, str] | None = None,
                files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "appspec.yml").write_text(textwrap.dedent(appspec))
    for rel, body in (scripts or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        p.chmod(0o755)
    for rel, body in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    return root


def agent_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.yml"
    cfg.write_text(f":root_dir: '{tmp_path}/root'\n:log_dir: '{tmp_path}/log/'\n:max_revisions: 5\n")
    return cfg


def local(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    return lib.cdsim("local", *args, "--agent-configuration-file", str(agent_config(tmp_path)), cwd=cwd,
                     timeout=timeout)


SIMPLE = """\
    version: 0.0
    os: linux
    files:
      - source: /
        destination: {dest}
    hooks:
      ApplicationStop:
        - location: scripts/stop.sh
      AfterInstall:
        - location: scripts/after.sh
          timeout: 30
"""


class TestLocalHappyPath:
    def test_prints_the_agents_three_lines_and_installs(self, tmp_path):
        """A directory deployment prints Starting / See the log / valid, and installs the files."""
        dest = tmp_path / "dest"
        b = make_bundle(tmp_path / "rev", SIMPLE.format(dest=dest),
                        {"scripts/stop.sh": "echo stop\n", "scripts/after.sh": "echo after $LIFECYCLE_EVENT\n"},
                        {"index.html": "hi"})
        r = local(tmp_path, "--bundle-location", str(b), "--type", "directory")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"Starting to execute deployment from within folder {tmp_path}/root/"
                                   "default-local-deployment-group/d-")
        assert lines[1].startswith("See the deployment log at ") and lines[1].endswith(
            "/logs/scripts.log for more details")
        assert lines[2] == "AppSpec file valid. Local deployment successful"
        assert (dest / "index.html").read_text() == "hi"
        log = Path(lines[1].split(" at ", 1)[1].split(" for more")[0]).read_text()
        assert "LifecycleEvent - AfterInstall\n" in log and "[stdout]after AfterInstall\n" in log
        assert "ApplicationStop" not in log  # no previous revision: a no-op

    def test_second_deployment_runs_previous_application_stop(self, tmp_path):
        """ApplicationStop comes from the last successful revision's archive."""
        dest = tmp_path / "dest"
        spec = SIMPLE.format(dest=dest)
        local(tmp_path, "-l", str(make_bundle(tmp_path / "r1", spec, {
            "scripts/stop.sh": "echo stop-from-rev1 $0\n", "scripts/after.sh": "true\n"})))
        r = local(tmp_path, "-l", str(make_bundle(tmp_path / "r2", spec, {
            "scripts/stop.sh": "echo stop-from-rev2\n", "scripts/after.sh": "true\n"})))
        assert r.returncode == 0, r.stdout + r.stderr
        log = Path(r.stdout.splitlines()[1].split(" at ", 1)[1].split(" for more")[0]).read_text()
        assert "[stdout]stop-from-rev1" in log and "stop-from-rev2" not in log

    def test_event_stream_written_outside_the_root(self, tmp_path):
        """The event stream lives under log_dir, one JSON object per line, hooks included."""
        b = make_bundle(tmp_path / "rev", SIMPLE.format(dest=tmp_path / "d"),
                        {"scripts/stop.sh": "true\n", "scripts/after.sh": "echo x\n"})
        assert local(tmp_path, "-l", str(b)).returncode == 0
        files = list((tmp_path / "log" / "cdsim-events").rglob("*.jsonl"))
        assert len(files) == 1
        records = [json.loads(x) for x in files[0].read_text().splitlines()]
        types = [r["type"] for r in records]
        assert types[0] == "deployment.start" and types[-1] == "deployment.end"
        hook = next(r for r in records if r["type"] == "hook.end")
        assert hook["event"] == "AfterInstall" and hook["status"] == "Succeeded" and hook["exit_status"] == 0
        assert not list((tmp_path / "root").rglob("*.jsonl"))


    def test_daemon_started_by_a_successful_hook_outlives_cdsim(self, tmp_path):
        """A daemon a successful hook starts on purpose (`nohup ... > /dev/null 2>&1 &`) keeps running
        once cdsim has exited, as with the agent: neither cdsim nor the hook's supervisor takes it along."""
        pidfile = tmp_path / "daemon.pid"
        b = make_bundle(tmp_path / "rev", SIMPLE.format(dest=tmp_path / "d"), {
            "scripts/stop.sh": "true\n",
            "scripts/after.sh": f"nohup sleep 1000 > /dev/null 2>&1 &\necho $! > {pidfile}\n"})
        r = local(tmp_path, "-l", str(b))
        daemon = int(pidfile.read_text())
        try:
            assert r.returncode == 0, r.stdout + r.stderr
            time.sleep(0.3)
            with open(f"/proc/{daemon}/stat", "rb") as f:
                state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
            assert state != b"Z"
            with open(f"/proc/{int(ppid)}/cmdline", "rb") as f:
                assert b"agent" not in f.read()   # re-parented past cdsim's processes, which are gone
        finally:
            os.kill(daemon, 9)
            for _ in range(100):
                if not os.path.exists(f"/proc/{daemon}"):
                    break
                time.sleep(0.02)


class TestLocalFailures:
    def test_hook_failure_lines_and_reason_on_stderr(self, tmp_path):
        """A failing hook: the agent's stdout lines, and the reason (which the agent hides) on stderr."""
        b = make_bundle(tmp_path / "rev", SIMPLE.format(dest=tmp_path / "d"),
                        {"scripts/stop.sh": "true\n", "scripts/after.sh": "echo bad >&2; exit 3\n"})
        r = local(tmp_path, "-l", str(b))
        assert r.returncode == ExitStatus.HOOK_FAILED
        lines = r.stdout.splitlines()
        assert lines[1].startswith("Your local deployment failed while trying to execute your script at ")
        assert lines[1].endswith("/deployment-archive/scripts/after.sh")
        assert lines[2].startswith("See the deployment log at ")
        assert "Script at specified location: scripts/after.sh failed with exit code 3" in r.stderr
        assert "Traceback" not in r.stderr

    def test_appspec_error_prints_agent_message_and_position(self, tmp_path):
        """An appspec rejection: the agent's text as ERROR:, our position on stderr."""
        b = make_bundle(tmp_path / "rev", "version: 1.0\nos: linux\n")
        r = local(tmp_path, "-l", str(b))
        assert r.returncode == ExitStatus.INVALID
        assert ("ERROR: The deployment failed because an invalid version value (1.0) was entered in the "
                "application specification file.") in r.stdout
        assert "appspec.yml:1:" in r.stderr and "Traceback" not in r.stderr

    def test_redeploy_after_failed_deployment(self, tmp_path):
        """After a failed hook, the next deployment of the group succeeds and replaces the files."""
        dest = tmp_path / "dest"
        spec = SIMPLE.format(dest=dest)
        bad = make_bundle(tmp_path / "r1", spec, {"scripts/stop.sh": "true\n", "scripts/after.sh": "exit 1\n"},
                          {"old.txt": "1"})
        assert local(tmp_path, "-l", str(bad)).returncode == ExitStatus.HOOK_FAILED
        good = make_bundle(tmp_path / "r2", spec, {"scripts/stop.sh": "true\n", "scripts/after.sh": "true\n"},
                           {"new.txt": "2"})
        r = local(tmp_path, "-l", str(good))
        assert r.returncode == 0, r.stdout + r.stderr
        assert (dest / "new.txt").exists() and not (dest / "old.txt").exists()

    def test_timeout_ends_setsid_grandchild(self, tmp_path):
        """On timeout the hook's group gets TERM, and a setsid grandchild is ended too (the agent leaves it)."""
        marker = tmp_path / "marker_setsid"
        trapped = tmp_path / "trapped"
        spec = """\
            version: 0.0
            os: linux
            hooks:
              ApplicationStart:
                - location: scripts/slow.sh
                  timeout: 2
        """
        b = make_bundle(tmp_path / "rev", spec, {"scripts/slow.sh": f"""\
            setsid bash -c 'sleep 3; echo x > {marker}' </dev/null >/dev/null 2>&1 &
            trap 'echo t > {trapped}; exit 143' TERM
            sleep 30 & wait $!
        """})
        start = time.monotonic()
        r = local(tmp_path, "-l", str(b), "--grace-period", "1")
        took = time.monotonic() - start
        assert r.returncode == ExitStatus.HOOK_TIMED_OUT
        assert took < 2 + 1 + 5
        assert trapped.exists()
        time.sleep(3.5)
        assert not marker.exists()


class TestLocalCommandLine:
    def test_version_and_help_exit_1(self, tmp_path):
        """-v prints 1.0 and -h the help, both exiting 1 as the agent's docopt does."""
        v = subprocess.run([*CLI, "local", "-v"], capture_output=True, text=True)
        assert (v.returncode, v.stdout) == (1, "1.0\n")
        h = subprocess.run([*CLI, "local", "--help"], capture_output=True, text=True)
        assert h.returncode == 1 and "--bundle-location" in h.stdout

    def test_ambiguous_prefix_and_unknown_option(self, tmp_path):
        """docopt's texts for an ambiguous prefix and an unknown option."""
        r = subprocess.run([*CLI, "local", "--deployment", "x"],
                           capture_output=True, text=True)
        assert r.returncode != 0
        assert r.stdout.splitlines()[0] == ("--deployment is not a unique prefix: --deployment-group, "
                                            "--deployment-group-name?")
        r = subprocess.run([*CLI, "local", "-z"], capture_output=True, text=True)
        assert r.stdout.splitlines()[0] == "-z is not recognized"

    def test_prefix_and_equals_forms(self, tmp_path):
        """--bundle=PATH and --ty are accepted abbreviations."""
        b = make_bundle(tmp_path / "rev", "version: 0.0\nos: linux\n")
        r = local(tmp_path, f"--bundle={b}", "--ty", "directory")
        assert r.returncode == 0, r.stdout + r.stderr

    @pytest.mark.parametrize("args, message", [
        (["-t", "rar"], "ERROR: type rar is not a valid type. Must be one of tgz,tar,zip,directory"),
        (["-l", "/tmp/my dir"], "ERROR: location /tmp/my dir is not a valid uri"),
        (["-l", "http://x/y.zip", "-t", "zip"],
         "ERROR: location http://x/y.zip cannot be http, only encrypted (https) url endpoints supported"),
        (["-l", "/nonexistent-cdsim"],
         "ERROR: location /nonexistent-cdsim is specified as a file or directory which does not exist"),
    ])
    def test_validation_messages(self, tmp_path, args, message):
        """The agent's validation errors, printed as ERROR: lines on stdout."""
        r = local(tmp_path, *args)
        assert r.returncode != 0
        assert message in r.stdout.splitlines()


class TestDeployHost:
    def test_deploy_host_prints_events_and_output(self, tmp_path):
        """cdsim deploy --host runs the engine with a chosen root and shows hooks live."""
        b = make_bundle(tmp_path / "rev", SIMPLE.format(dest=tmp_path / "d"),
                        {"scripts/stop.sh": "true\n", "scripts/after.sh": "echo hello-from-hook\n"})
        env = dict(os.environ, CDSIM_STATE_DIR=str(tmp_path / "state"))
        r = subprocess.run([*CLI, "deploy", "--host", "--root-dir",
                            str(tmp_path / "root"), str(b)], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "AfterInstall" in r.stdout and "scripts/after.sh succeeded" in r.stdout
        assert "| hello-from-hook" in r.stdout
        assert "succeeded in" in r.stdout.splitlines()[-1]

    def test_terminal_shows_elapsed_time_against_timeout(self, tmp_path):
        """On a terminal, a running hook shows its elapsed time against its timeout."""
        require_tool("script", "util-linux")
        b = make_bundle(tmp_path / "rev", """\
            version: 0.0
            os: linux
            hooks:
              AfterInstall:
                - location: slow.sh
                  timeout: 9
        """, {"slow.sh": "sleep 2.5\n"})
        env = dict(os.environ, CDSIM_STATE_DIR=str(tmp_path / "state"))
        cmd = f"{sys.executable} -m agent deploy --host --root-dir {tmp_path / 'root'} {b}"
        r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, env=env,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout
        assert "slow.sh: 2s of 9s" in r.stdout


class TestReports:
    def test_local_writes_junit_and_json(self, tmp_path):
        """cdsim local --report junit=... --report json=...: one testcase per hook, stdout unchanged."""
        b = make_bundle(tmp_path / "rev", SIMPLE.format(dest=tmp_path / "d"),
                        {"scripts/stop.sh": "true\n", "scripts/after.sh": "echo reported\n"})
        r = local(tmp_path, "-l", str(b), "--report", f"junit={tmp_path}/j.xml",
                  "--report", f"json={tmp_path}/r.json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(r.stdout.splitlines()) == 3
        import xml.etree.ElementTree as ET
        cases = ET.parse(tmp_path / "j.xml").getroot().findall(".//testcase")
        assert [c.get("classname") for c in cases] == ["AfterInstall"]
        assert "reported" in cases[0].find("system-out").text
        report = json.loads((tmp_path / "r.json").read_text())
        assert "reported" in json.dumps(report)

    def test_deploy_host_report_records_the_failure(self, tmp_path):
        """cdsim deploy --report junit=FILE marks the failing hook as a failure."""
        b = make_bundle(tmp_path / "rev", SIMPLE.format(dest=tmp_path / "d"),
                        {"scripts/stop.sh": "true\n", "scripts/after.sh": "exit 7\n"})
        env = dict(os.environ, CDSIM_STATE_DIR=str(tmp_path / "state"))
        r = subprocess.run([*CLI, "deploy", "--host", "--root-dir", str(tmp_path / "root"),
                            "--report", f"junit={tmp_path}/j.xml", str(b)], capture_output=True, text=True,
                           env=env, timeout=60)
        assert r.returncode == ExitStatus.HOOK_FAILED
        import xml.etree.ElementTree as ET
        failure = ET.parse(tmp_path / "j.xml").getroot().find(".//testcase/failure")
        assert "failed with exit code 7" in failure.get("message")


class TestBase60Timeouts:
    """Psych reads a:b as a*3600 + b*60 and a:b:c as seconds (Q39); the hook's timeout is that number."""

    def test_base60_timeouts_and_version_are_accepted(self, tmp_path):
        """version: 0:00 is 0 and timeout: 0:02 (120 s) / 1:30 (5400 s) are valid: the hooks run."""
        b = make_bundle(tmp_path / "rev", """\
            version: 0:00
            os: linux
            hooks:
              AfterInstall:
                - location: a.sh
                  timeout: 0:02
                - location: b.sh
                  timeout: 1:30
        """, {"a.sh": f"touch {tmp_path}/a-ran\n", "b.sh": f"touch {tmp_path}/b-ran\n"})
        r = local(tmp_path, "-l", str(b))
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines()[-1] == "AppSpec file valid. Local deployment successful"
        assert (tmp_path / "a-ran").exists() and (tmp_path / "b-ran").exists()
        [stream] = (tmp_path / "log" / "cdsim-events" / "default-local-deployment-group").iterdir()
        records = [json.loads(line) for line in stream.read_text().splitlines()]
        assert [(e["location"], e["timeout"]) for e in records if e["type"] == "hook.start"] == [
            ("a.sh", 120), ("b.sh", 5400)]

    def test_three_part_base60_timeout_times_the_hook_out_after_2_seconds(self, tmp_path):
        """timeout: 0:0:2 is 2 s: a hook sleeping 5 s is ended and the deployment fails as timed out."""
        b = make_bundle(tmp_path / "rev", """\
            version: 0.0
            os: linux
            hooks:
              AfterInstall:
                - location: slow.sh
                  timeout: 0:0:2
        """, {"slow.sh": f"sleep 5\ntouch {tmp_path}/finished\n"})
        r = local(tmp_path, "-l", str(b), "--grace-period", "1")
        assert r.returncode == ExitStatus.HOOK_TIMED_OUT, r.stdout + r.stderr
        assert "Script at specified location: slow.sh failed to complete in 2 seconds" in r.stderr
        assert not (tmp_path / "finished").exists()


RUNAS_APPSPEC = """\
    version: 0.0
    os: linux
    hooks:
      BeforeInstall:
        - location: hook.sh
          runas: {runas}
"""
BAD_RUNAS = ['"--help"', '"-c id"']


class TestRunasRefused:
    """A runas that is not a user name never reaches su: the hook does not run, the deployment fails."""

    def bundle(self, tmp_path: Path, runas: str) -> Path:
        return make_bundle(tmp_path / "rev", RUNAS_APPSPEC.format(runas=runas),
                           {"hook.sh": f"touch {tmp_path}/hook-ran\n"})

    @pytest.mark.parametrize("runas", BAD_RUNAS)
    def test_cdsim_local(self, tmp_path, runas):
        r = local(tmp_path, "-l", str(self.bundle(tmp_path, runas)))
        assert r.returncode == ExitStatus.INVALID, r.stdout + r.stderr
        assert f"ERROR: runas {runas} is not a user name: cdsim refuses to run the script" in r.stdout
        assert "cdsim: appspec.yml:6:14: invalid-runas" in r.stderr.splitlines()
        assert "Traceback" not in r.stdout + r.stderr
        assert not (tmp_path / "hook-ran").exists()

    @pytest.mark.parametrize("runas", BAD_RUNAS)
    def test_cdsim_deploy_host(self, tmp_path, runas):
        env = dict(os.environ, CDSIM_STATE_DIR=str(tmp_path / "state"))
        r = subprocess.run([*CLI, "deploy", "--host", "--root-dir", str(tmp_path / "root"),
                            str(self.bundle(tmp_path, runas))], capture_output=True, text=True, env=env, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == ExitStatus.INVALID, r.stdout + r.stderr
        assert f"failed at BeforeInstall: appspec.yml:6:14: runas {runas} is not a user name" in r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr
        assert not (tmp_path / "hook-ran").exists()

    @pytest.mark.parametrize("runas", BAD_RUNAS)
    def test_library_deploy(self, tmp_path, runas):
        import agent
        cfg = agent.AgentConfig(root_dir=str(tmp_path / "root"), log_dir=str(tmp_path / "log"))
        result = agent.deploy(agent.DeploymentRequest(
            agent.LocalRevision(str(self.bundle(tmp_path, runas)), "directory"), cfg))
        assert not result.succeeded and result.failed_event == "BeforeInstall"
        assert result.error.code == "invalid-runas" and result.exit_status == ExitStatus.INVALID
        assert (result.error.line, result.error.column) == (6, 14)
        assert result.hooks == [] and not (tmp_path / "hook-ran").exists()

    def test_runner_refuses_an_option_like_name_and_su_gets_the_user_after_double_dash(self, tmp_path):
        """Below the parser: hooks_runtime never starts su with a name that begins with '-'."""
        from hooks_runtime import HookLog, Script, run_script
        from hooks_runtime.process import build_command
        assert build_command("/a b/x.sh", "app", False) == ["su", "-c", "'/a b/x.sh'", "--", "app"]
        assert build_command("/x.sh", "app", True) == ["sudo", "su", "-c", "/x.sh", "--", "app"]
        assert build_command("/x.sh", "", False) == ["su", "-c", "/x.sh"]
        hook = tmp_path / "hook.sh"
        hook.write_text(f"#!/bin/sh\ntouch {tmp_path}/hook-ran\n")
        hook.chmod(0o755)
        with HookLog(str(tmp_path / "scripts.log"), "d-1", None) as log:
            result = run_script(Script(str(hook), "hook.sh", 10, runas="--help"), env=dict(os.environ),
                                cwd=str(tmp_path), log=log)
        assert result.error_code == 4 and "refused" in result.message
        assert not (tmp_path / "hook-ran").exists()


class TestBundlePathsWithSpecialCharacters:
    """cdsim, not the agent (Q27): an existing bundle path with a space, a quote and '$' is a local bundle."""

    @pytest.mark.parametrize("btype", ["directory", "zip", "tar", "tgz"])
    def test_each_bundle_type(self, tmp_path, btype):
        import shutil
        import tarfile
        import zipfile
        dest = tmp_path / "dest"
        src = make_bundle(tmp_path / "src", f"""\
            version: 0.0
            os: linux
            files:
              - source: f.txt
                destination: {dest}
            hooks:
              AfterInstall:
                - location: hook.sh
        """, {"hook.sh": f"touch {tmp_path}/hook-ran\n"}, {"f.txt": "landed"})
        place = tmp_path / "my app's \"$HOME\" dir"
        place.mkdir()
        if btype == "directory":
            location = place / "b"
            shutil.copytree(src, location)
        elif btype == "zip":
            location = place / "b.zip"
            with zipfile.ZipFile(location, "w") as z:
                for p in sorted(src.rglob("*")):
                    info = zipfile.ZipInfo(str(p.relative_to(src)))
                    info.external_attr = (p.stat().st_mode & 0o777) << 16
                    z.writestr(info, p.read_bytes())
        else:
            location = place / f"b.{btype}"
            with tarfile.open(location, "w:gz" if btype == "tgz" else "w") as t:
                t.add(src, arcname=".")
        r = local(tmp_path, "-l", str(location), "-t", btype)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines()[-1] == "AppSpec file valid. Local deployment successful"
        assert (dest / "f.txt").read_text() == "landed"
        assert (tmp_path / "hook-ran").exists()

    def test_relative_path_with_a_space(self, tmp_path):
        b = make_bundle(tmp_path / "cwd" / "my app", "version: 0.0\nos: linux\n")
        r = local(tmp_path, "-l", "my app")
        assert r.returncode == 0, r.stdout + r.stderr
        assert b.is_dir()

    @pytest.mark.parametrize("location", ["/nonexistent dir/b", "https://example.com/a b.zip", "file:///tmp/x y"])
    def test_strings_that_are_neither_uri_nor_existing_path_keep_the_agents_message(self, tmp_path, location):
        r = local(tmp_path, "-l", location)
        assert r.returncode == ExitStatus.USAGE
        assert f"ERROR: location {location} is not a valid uri" in r.stdout.splitlines()
