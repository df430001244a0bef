"""`cdsim logs` and `cdsim history` over real deployments made by `cdsim deploy --host --root-dir`."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import lib
from tests.lib import CLI


def _bundle(folder: Path, hooks: dict[str, str]) -> Path:
    """A directory bundle whose hooks (event -> shell body) each live in scripts/<event>.sh."""
    lines = ["version: 0.0", "os: linux", "hooks:"]
    (folder / "scripts").mkdir(parents=True)
    for event, body in hooks.items():
        script = folder / "scripts" / f"{event}.sh"
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
        lines += [f"  {event}:", f"    - location: scripts/{event}.sh"]
    (folder / "appspec.yml").write_text("\n".join(lines) + "\n")
    return folder


def cdsim(work: Path, *args: str) -> subprocess.CompletedProcess:
    """cdsim in ``work``, with its state in ``work``/state."""
    return lib.cdsim(*args, state=work / "state", cwd=work, timeout=60)


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict:
    """Two deployments into one root: the first succeeds, the second fails in AfterInstall."""
    work = tmp_path_factory.mktemp("logs")
    good = _bundle(work / "good", {"BeforeInstall": "echo before one\n", "AfterInstall": "echo after one\n"})
    bad = _bundle(work / "bad", {"BeforeInstall": "echo before two\n",
                                 "AfterInstall": "echo after two; echo broken >&2; exit 4\n"})
    first = cdsim(work, "deploy", "--host", "--root-dir", str(work / "root"), str(good))
    assert first.returncode == 0, first.stdout + first.stderr
    second = cdsim(work, "deploy", "--host", "--root-dir", str(work / "root"), str(bad))
    assert second.returncode == 1, second.stdout + second.stderr
    history = json.loads(cdsim(work, "history", "--format", "json", "--root-dir", str(work / "root")).stdout)
    return {"work": work, "root": str(work / "root"), "ids": [d["deployment_id"] for d in history]}


class TestHistory:
    def test_lists_deployments_oldest_first_with_outcomes(self, two):
        """Both deployments appear, in order, the second marked failed at AfterInstall."""
        proc = cdsim(two["work"], "history", "--root-dir", two["root"])
        assert proc.returncode == 0
        lines = proc.stdout.splitlines()
        assert len(lines) == 2
        assert two["ids"][0] in lines[0] and "Succeeded" in lines[0] and "2 hooks" in lines[0]
        assert two["ids"][1] in lines[1] and "Failed at AfterInstall" in lines[1]

    def test_json_history_names_the_scripts_log(self, two):
        """The JSON form tells where each deployment's output is, and the file is there."""
        deps = json.loads(cdsim(two["work"], "history", "--format", "json", "--root-dir", two["root"]).stdout)
        assert [d["status"] for d in deps] == ["Succeeded", "Failed"]
        assert all(os.path.isfile(d["scripts_log"]) for d in deps)
        assert deps[1]["hooks"][-1]["location"] == "scripts/AfterInstall.sh"

    def test_deployment_without_event_stream_is_found_by_its_folder(self, two, tmp_path):
        """A deployment root holding only the agent's layout (as codedeploy-local leaves) still lists."""
        folder = tmp_path / "root" / "grp" / "d-ABCDEFGHI-local" / "logs"
        folder.mkdir(parents=True)
        (folder / "scripts.log").write_text("2026-01-01 00:00:00 LifecycleEvent - ApplicationStart\n"
                                            "2026-01-01 00:00:00 Script - s.sh\n2026-01-01 00:00:00 [stdout]hi\n")
        proc = cdsim(two["work"], "history", "--root-dir", str(tmp_path / "root"))
        assert "d-ABCDEFGHI-local" in proc.stdout and "Unknown" in proc.stdout
        logs = cdsim(two["work"], "logs", "d-ABCDEFGHI", "--no-timestamps", "--root-dir", str(tmp_path / "root"))
        assert logs.stdout == "LifecycleEvent - ApplicationStart\nScript - s.sh\n[stdout]hi\n"


class TestLogs:
    def test_latest_deployment_by_default(self, two):
        """Without an id, the newest deployment's output is printed, with timestamps."""
        proc = cdsim(two["work"], "logs", "--root-dir", two["root"])
        assert proc.returncode == 0
        assert "[stdout]after two" in proc.stdout and "[stderr]broken" in proc.stdout
        assert "after one" not in proc.stdout
        assert proc.stdout.splitlines()[0][:4].isdigit()

    def test_by_id_prefix_and_event(self, two):
        """An id prefix picks a deployment; --event keeps only that event's lines."""
        first = two["ids"][0]
        proc = cdsim(two["work"], "logs", first[:6] if two["ids"][1][:6] != first[:6] else first,
                     "--event", "BeforeInstall", "--no-timestamps", "--root-dir", two["root"])
        assert proc.stdout == ("LifecycleEvent - BeforeInstall\nScript - scripts/BeforeInstall.sh\n"
                               "[stdout]before one\n")

    def test_unknown_deployment_is_a_usage_error(self, two):
        """An id that names nothing exits with USAGE (2) and says so."""
        proc = cdsim(two["work"], "logs", "d-NOSUCH", "--root-dir", two["root"])
        assert proc.returncode == 2 and "no deployment 'd-NOSUCH' found" in proc.stderr

    def test_follow_prints_output_as_it_comes_and_stops_at_the_end(self, tmp_path):
        """--follow shows a line printed before a pause, then the one after, and exits when the
        deployment ends."""
        bundle = _bundle(tmp_path / "b", {"BeforeInstall": "echo first line\nsleep 1.5\necho second line\n"})
        env = dict(os.environ, CDSIM_STATE_DIR=str(tmp_path / "state"))
        deploy = subprocess.Popen([*CLI, "deploy", "--host", "-q", "--root-dir",
                                   str(tmp_path / "root"), str(bundle)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not glob.glob(f"{tmp_path}/state/host/log/cdsim-events/*/*.jsonl"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            follow = subprocess.Popen([*CLI, "logs", "--follow", "--no-timestamps",
                                       "--root-dir", str(tmp_path / "root")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
            with follow:
                first = follow.stdout.readline()
                while "first line" not in first:
                    first = follow.stdout.readline()
                assert deploy.poll() is None, "the deployment ended before the first line was shown"
                rest = follow.stdout.read()
                assert follow.wait(timeout=10) == 0
            assert "[stdout]second line\n" in rest
        finally:
            deploy.wait(timeout=20)


def test_logs_and_history_read_inside_an_instance(tmp_path):
    """A deployment made in a sandboxed instance is listed and its output printed with --instance."""
    from agent.pytest_plugin import instances_available

    ok, why = instances_available()
    if not ok:
        lib.skip_or_fail(f"sandboxed instances are unavailable here: {why}")
    bundle = _bundle(tmp_path / "b", {"BeforeInstall": "echo inside the instance\n"})
    name = f"logs{os.getpid() % 100000}"
    try:
        deployed = cdsim(tmp_path, "deploy", "-q", "--instance", name, str(bundle))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        history = cdsim(tmp_path, "history", "--instance", name, "--root-dir", str(tmp_path / "none"))
        assert "Succeeded" in history.stdout and "1 hook" in history.stdout
        logs = cdsim(tmp_path, "logs", "--instance", name, "--no-timestamps", "--root-dir", str(tmp_path / "none"))
        assert "[stdout]inside the instance\n" in logs.stdout
    finally:
        cdsim(tmp_path, "instance", "destroy", name)
