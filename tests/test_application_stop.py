"""ApplicationStop runs the last successful revision's script (spec §4.2): cdsim keeps that, says so,
and offers the service's way out (--ignore-application-stop-failures) and the manual one (removing the
group's last-successful marker).

Real deployments through the command line (`python -m agent deploy --host --root-dir <tmp>`,
`python -m agent local -c <config in tmp>`), with revisions whose stop script is broken (v1) and fixed (v2).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from agent.errors import ExitStatus
from tests import lib

GROUP = "default-local-deployment-group"


def revision(folder: Path, name: str, *, stop_status: int) -> Path:
    """A directory bundle whose ApplicationStop script prints ``stop-<name>`` and exits ``stop_status``."""
    folder.mkdir(parents=True)
    (folder / "stop.sh").write_text(f"#!/bin/sh\necho stop-{name}\nexit {stop_status}\n")
    (folder / "stop.sh").chmod(0o755)
    (folder / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n"
                                        "    - location: stop.sh\n      timeout: 30\n")
    return folder


def cdsim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """cdsim in ``tmp_path``, with its state in ``tmp_path``/state."""
    return lib.cdsim(*args, state=tmp_path / "state", cwd=tmp_path)


def deploy(tmp_path: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return cdsim(tmp_path, "deploy", "--host", "--root-dir", str(tmp_path / "root"), str(bundle), *args)


def deployment_id(proc: subprocess.CompletedProcess) -> str:
    m = re.search(r"^Deployment (\S+) (succeeded|failed)", proc.stdout, re.MULTILINE)
    assert m, proc.stdout + proc.stderr
    return m.group(1)


def scripts_log(tmp_path: Path, did: str) -> str:
    return (tmp_path / "root" / GROUP / did / "logs" / "scripts.log").read_text()


def v1_then_broken_v2(tmp_path: Path) -> tuple[Path, str]:
    """Deploy v1 (its stop script fails, but nothing runs it on a first deployment); return v2 and v1's id."""
    v1 = revision(tmp_path / "v1", "v1", stop_status=1)
    v2 = revision(tmp_path / "v2", "v2", stop_status=0)
    first = deploy(tmp_path, v1)
    assert first.returncode == 0, first.stdout + first.stderr
    return v2, deployment_id(first)


def test_fixed_revision_fails_at_previous_stop_script_and_says_whose(tmp_path):
    """v2's fixed stop script does not run: v1's does, fails, and the output names v1's deployment id,
    archive and appspec, says the fix will not run, and gives both ways out with the exact marker path."""
    v2, v1_id = v1_then_broken_v2(tmp_path)
    proc = deploy(tmp_path, v2, "--report", f"github={tmp_path / 'gh.txt'}")
    assert proc.returncode == ExitStatus.HOOK_FAILED, proc.stdout + proc.stderr
    # the GitHub annotation does not point at v2's stop.sh, which did not run
    (annotation,) = (tmp_path / "gh.txt").read_text().splitlines()
    assert annotation.startswith("::error title=") and v1_id in annotation
    archive = f"{tmp_path}/root/{GROUP}/{v1_id}/deployment-archive"
    assert "Deployment " in proc.stdout and "failed at ApplicationStop" in proc.stdout
    assert f"from the previous revision: deployment {v1_id}, archive {archive}, appspec {archive}/appspec.yml" \
        in proc.stdout
    hint = next(line for line in proc.stdout.splitlines() if line.startswith("  hint:"))
    assert v1_id in hint and f"{archive}/stop.sh" in hint
    assert "will not run until a deployment succeeds" in hint
    assert "--ignore-application-stop-failures" in hint
    assert f"{tmp_path}/root/deployment-instructions/{GROUP}_last_successful_install" in hint
    assert "| stop-v1" in proc.stdout and "stop-v2" not in proc.stdout


def test_ignore_flag_goes_on_reports_failed_and_ignored_and_next_runs_the_fix(tmp_path):
    """With --ignore-application-stop-failures v2 succeeds; JSON and JUnit say ApplicationStop failed and was
    ignored (JUnit: a <skipped> test case, not a failure); the next deployment runs v2's fixed script."""
    v2, v1_id = v1_then_broken_v2(tmp_path)
    rj, rx = tmp_path / "r.json", tmp_path / "r.xml"
    proc = deploy(tmp_path, v2, "--ignore-application-stop-failures", "--report", f"json={rj}",
                  "--report", f"junit={rx}", "--report", f"html={tmp_path / 'r.html'}",
                  "--report", f"github={tmp_path / 'gh.txt'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(ignored: --ignore-application-stop-failures)" in proc.stdout
    dep = json.loads(rj.read_text())["deployments"][0]
    assert dep["status"] == "Succeeded"
    (hook,) = dep["hooks"]
    assert (hook["event"], hook["status"], hook["ignored"]) == ("ApplicationStop", "Failed", True)
    assert hook["previous_revision"] is True and hook["revision_deployment_id"] == v1_id
    assert hook["revision_archive"] == f"{tmp_path}/root/{GROUP}/{v1_id}/deployment-archive"
    stop = next(e for e in dep["events"] if e["event"] == "ApplicationStop")
    assert (stop["status"], stop["ignored"]) == ("Failed", True)
    assert [e["status"] for e in dep["events"] if e["event"] != "ApplicationStop"] == ["Succeeded"] * 10
    suite = ET.parse(rx).getroot().find("testsuite")
    assert (suite.get("failures"), suite.get("skipped")) == ("0", "1")
    case = suite.find("testcase")
    assert case.get("classname") == "ApplicationStop" and case.find("failure") is None
    assert "failed and ignored" in case.find("skipped").get("message")
    assert v1_id in case.find("system-out").text
    assert not any(line.startswith("::error") for line in (tmp_path / "gh.txt").read_text().splitlines())
    assert "ApplicationStop stop.sh failed (ignored)" in (tmp_path / "gh.txt").read_text()
    html = (tmp_path / "r.html").read_text()
    assert "Failed (ignored)" in html and f"previous revision: deployment {v1_id}" in html
    # v2 is now the last successful revision: its fixed script is the one the next deployment runs
    again = deploy(tmp_path, v2)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[stdout]stop-v2" in scripts_log(tmp_path, deployment_id(again))


def test_plan_says_application_stop_runs_the_previous_revisions_script(tmp_path):
    v2, v1_id = v1_then_broken_v2(tmp_path)
    archive = f"{tmp_path}/root/{GROUP}/{v1_id}/deployment-archive"
    proc = cdsim(tmp_path, "plan", "--host", "--root-dir", str(tmp_path / "root"), str(v2))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ApplicationStop: the previous revision's (last successful deployment {v1_id})" in proc.stdout
    assert f"script {archive}/stop.sh" in proc.stdout
    data = json.loads(cdsim(tmp_path, "plan", "--host", "--root-dir", str(tmp_path / "root"), "--format", "json",
                            str(v2)).stdout)
    stop = next(h for h in data["hook_sources"] if h["event"] == "ApplicationStop")
    assert (stop["revision"], stop["deployment_id"], stop["scripts"]) == ("previous", v1_id, [f"{archive}/stop.sh"])
    fresh = cdsim(tmp_path, "plan", "--host", "--root-dir", str(tmp_path / "empty-root"), str(v2))
    assert "ApplicationStop: none: no successful deployment yet" in fresh.stdout


def test_removal_advice_followed_lets_the_fixed_revision_deploy(tmp_path):
    """Removing the marker the hint names: v2 deploys (ApplicationStop is a no-op, as on a first
    deployment), and the deployment after it runs v2's fixed script."""
    v2, _ = v1_then_broken_v2(tmp_path)
    failed = deploy(tmp_path, v2)
    assert failed.returncode == ExitStatus.HOOK_FAILED
    marker = re.search(r"remove the marker of the last successful deployment, (\S+) ", failed.stdout).group(1)
    os.remove(marker)
    fixed = deploy(tmp_path, v2)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "stop-v1" not in fixed.stdout
    again = deploy(tmp_path, v2)
    assert again.returncode == 0 and "[stdout]stop-v2" in scripts_log(tmp_path, deployment_id(again))


def test_local_keeps_the_agents_stdout_and_explains_on_stderr(tmp_path):
    """`cdsim local`: stdout is the agent's lines only; the previous-revision hint goes to stderr; the
    flag makes v2 succeed."""
    root = tmp_path / "root"
    config = tmp_path / "agent.yml"
    config.write_text(f"root_dir: {root}\nlog_dir: {tmp_path / 'log'}\n")
    v1 = revision(tmp_path / "v1", "v1", stop_status=1)
    v2 = revision(tmp_path / "v2", "v2", stop_status=0)

    def local(bundle: Path, *extra: str) -> subprocess.CompletedProcess:
        return cdsim(tmp_path, "local", "-l", str(bundle), "-c", str(config), *extra)

    assert local(v1).returncode == 0
    v1_id = (root / "deployment-instructions" / f"{GROUP}_last_successful_install").read_text().rsplit("/", 1)[1]
    proc = local(v2)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("Starting to execute deployment from within folder ")
    assert lines[1].startswith("Your local deployment failed while trying to execute your script at ")
    assert lines[2].startswith("See the deployment log at ")
    assert "cdsim" not in proc.stdout
    assert f"{root}/{GROUP}/{v1_id}/deployment-archive/stop.sh" in proc.stderr
    assert "--ignore-application-stop-failures" in proc.stderr
    ok = local(v2, "--ignore-application-stop-failures")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1] == "AppSpec file valid. Local deployment successful"
    assert "ApplicationStop failed and was ignored" in ok.stderr


INNER = '''
import os


def test_stop(cdsim_deploy):
    assert cdsim_deploy(os.environ["V1"]).succeeded
    failed = cdsim_deploy(os.environ["V2"])
    assert not failed.succeeded and failed.failed_event == "ApplicationStop"
    assert failed.hook("ApplicationStop").revision_deployment_id is not None
    ok = cdsim_deploy(os.environ["V2"], ignore_application_stop_failures=True)
    assert ok.succeeded, ok.stdout + ok.stderr
    stop = ok.hook("ApplicationStop")
    assert stop.status == "Failed" and stop.ignored
    assert stop.revision_archive.endswith("/deployment-archive")
    assert stop.output == "[stdout]stop-v1\\n"
'''


def test_pytest_fixture_takes_ignore_application_stop_failures(tmp_path):
    """The cdsim_deploy fixture (host mode): the keyword argument, and whose script each hook run was."""
    import importlib.metadata
    v1 = revision(tmp_path / "v1", "v1", stop_status=1)
    v2 = revision(tmp_path / "v2", "v2", stop_status=0)
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "test_inner.py").write_text(INNER)
    installed = any(ep.value.startswith("agent.pytest_plugin")
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *([] if installed else ["-p", "agent.pytest_plugin"]), "--cdsim-mode=host",
                           "--basetemp", str(tmp_path / "basetemp"), "test_inner.py"],
                          cwd=tmp_path / "inner", env=dict(os.environ, V1=str(v1), V2=str(v2)),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_watch_passes_the_flag_to_deploy(tmp_path):
    """`cdsim watch --ignore-application-stop-failures` deploys with it (the deploy command line it runs)."""
    from agent.cli import build_parser
    from agent.commands.watch import _deploy_argv
    args = build_parser().parse_args(["watch", "--host", "--ignore-application-stop-failures", str(tmp_path)])
    assert "--ignore-application-stop-failures" in _deploy_argv(args, str(tmp_path))
    args = build_parser().parse_args(["watch", "--host", str(tmp_path)])
    assert "--ignore-application-stop-failures" not in _deploy_argv(args, str(tmp_path))


def test_deleting_the_previous_folder_instead_does_not_help(tmp_path):
    """What the README warns about: with the marker left, a deleted previous deployment folder fails the
    first previous-revision event, BeforeBlockTraffic (its appspec is missing, spec §4.2), even with the
    flag (which covers ApplicationStop only, as the service's); the hint names the marker to remove."""
    import shutil
    v2, v1_id = v1_then_broken_v2(tmp_path)
    shutil.rmtree(tmp_path / "root" / GROUP / v1_id)
    marker = f"{tmp_path}/root/deployment-instructions/{GROUP}_last_successful_install"
    for extra in ((), ("--ignore-application-stop-failures",)):
        proc = deploy(tmp_path, v2, *extra)
        assert proc.returncode == ExitStatus.INVALID, proc.stdout + proc.stderr
        assert "failed at BeforeBlockTraffic" in proc.stdout and "remove that marker" in proc.stdout
        assert marker in proc.stdout
    os.remove(marker)
    assert deploy(tmp_path, v2).returncode == 0
