"""Two deployments to one deployment root at once (issue 10): the second waits for the first (or fails
at once when configured) and their events never interleave; the lock adds no file to the root.

Real CLI processes (``cdsim deploy --host``) for the trials; the lock is also held from this process
with agent.locking itself to test the wait notice and the fail mode deterministically.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from hostile.harness import GROUP, Site, appspec, run_cli

from agent.errors import ExitStatus
from agent.locking import deployment_lock, holder_pid
from tests.lib import CLI, needs_root

TRIALS = 50
BATCH = 5


def slow_revision(site: Site, name: str, log, target=None) -> str:
    """A revision whose BeforeInstall hook writes start/end lines around a short sleep."""
    rev = site.new_dir(name)
    (rev / "app").mkdir()
    (rev / "app" / "who.txt").write_text(f"{name}\n")
    hooks = "".join(f"  {event}:\n    - location: hook.sh\n      timeout: 30\n"
                    for event in ("BeforeInstall",))
    (rev / "appspec.yml").write_text(appspec(str(target or site.target), hooks))
    script = rev / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "start {name} $LIFECYCLE_EVENT" >> {log}\nsleep 0.05\n'
                      f'echo "end {name} $LIFECYCLE_EVENT" >> {log}\n')
    script.chmod(0o755)
    return str(rev)


def events_of(site: Site) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in (site.logs / "cdsim-events" / GROUP).glob("*.jsonl"):
        out[path.stem] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def cli(site: Site, bundle: str) -> list:
    return [*CLI, "deploy", "--host", "-q", "-c", str(site.cfg), "-g", GROUP, bundle]


def check_trial(trial: int, site: Site, log) -> bool:
    """Assert the two deployments of a trial did not interleave; True if they overlapped in time."""
    streams = events_of(site)
    assert len(streams) == 2
    spans = []
    for did, records in streams.items():
        # deployment.end is recorded after the lock is released: the span ends with the last event
        events = [r for r in records if r["type"] in ("event.start", "event.end")]
        spans.append((events[0]["time"], events[-1]["time"], did, records[0]["time"]))
    spans.sort()
    (_, first_end, _, _), (second_start, _, second, second_created) = spans
    assert first_end <= second_start, f"trial {trial}: deployments interleaved: {spans}"
    lines = log.read_text().splitlines()
    assert len(lines) == 4, lines
    for i in range(0, 4, 2):
        assert lines[i].replace("start", "end") == lines[i + 1], lines
    assert lines[0].split()[1] == lines[1].split()[1] != lines[2].split()[1] == lines[3].split()[1]
    state = site.state_files()
    assert state[f"{GROUP}_last_successful_install"].decode().endswith(second)
    assert state[f"{GROUP}_most_recent_install"].decode().endswith(second)
    assert (site.target / "who.txt").read_text() == lines[-1].split()[1] + "\n"
    assert sorted(os.listdir(site.root)) == ["deployment-instructions", "deployment-logs", GROUP]
    return second_created < first_end


def test_fifty_pairs_of_deployments_never_interleave(tmp_path):
    """50 trials: two CLI processes deploy to the same root and group at once. Each deployment's event
    span (its first event's start to its last event's end) is disjoint from the other's, the hooks'
    start/end lines come in whole pairs, both succeed, and the final state names the deployment that
    ended last."""
    contended = 0
    for batch in range(0, TRIALS, BATCH):  # independent trials (own roots) run side by side
        trials = []
        for trial in range(batch, min(batch + BATCH, TRIALS)):
            site = Site(tmp_path / f"t{trial}")
            log = site.base / "hooks.log"
            revs = [slow_revision(site, f"r{trial}{x}", log) for x in "ab"]
            env = site.env()
            procs = [subprocess.Popen(cli(site, rev), cwd=site.cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT) for rev in revs]
            trials.append((trial, site, log, procs))
        for trial, site, log, procs in trials:
            outs = []
            for p in procs:
                with p:
                    outs.append(p.communicate(timeout=60)[0].decode())
            assert [p.returncode for p in procs] == [0, 0], outs
            contended += check_trial(trial, site, log)
    # the trials must really have raced: the later process started before the earlier one finished
    assert contended >= TRIALS // 2, f"only {contended} of {TRIALS} trials overlapped"


def test_waiting_deployment_says_why_and_then_runs(tmp_path):
    """While the root is locked, a deployment waits, names the holder's pid on stderr after ~1 s, and
    runs once the lock is released."""
    site = Site(tmp_path)
    rev = site.good_revision()
    with deployment_lock(str(site.root)):
        p = subprocess.Popen(cli(site, str(rev)), cwd=site.cwd, env=site.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        time.sleep(1.8)
        assert p.poll() is None, "the deployment did not wait for the lock"
        assert not (site.target / "f0.txt").exists()
    with p:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, (out, err)
    assert f"cdsim: waiting for another deployment to {site.root} to finish (pid {os.getpid()})" in err.decode()
    assert (site.target / "f0.txt").exists()


def test_fail_mode_refuses_at_once(tmp_path):
    """CDSIM_LOCK=fail: a locked root makes the deployment fail at once, exit ENVIRONMENT, naming the
    holder; nothing of the deployment is written."""
    site = Site(tmp_path)
    rev = site.good_revision()
    with deployment_lock(str(site.root)):
        before = sorted(os.listdir(site.root))
        run = run_cli(cli(site, str(rev)), cwd=site.cwd, env=site.env(CDSIM_LOCK="fail"), timeout=30)
        assert run.elapsed < 5
        assert sorted(os.listdir(site.root)) == before
    assert run.returncode == ExitStatus.ENVIRONMENT, run.explain()
    assert f"another deployment to {site.root} is running (pid {os.getpid()})" in run.output
    assert "Traceback" not in run.output
    assert not (site.target / "f0.txt").exists()


def test_lock_is_on_the_root_folder_and_released_with_the_descriptor(tmp_path):
    """No file is added to the root; /proc/locks names the holder; the lock ends with the block, and
    a bad mode is a usage error."""
    from agent.errors import EnvironmentProblem, UsageError
    root = tmp_path / "root"
    with deployment_lock(str(root)):
        assert os.listdir(root) == []
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert holder_pid(fd) == os.getpid()
        finally:
            os.close(fd)
        with pytest.raises(EnvironmentProblem, match="is running"), deployment_lock(str(root), mode="fail"):
            pass
    with deployment_lock(str(root), mode="fail"):
        pass
    with pytest.raises(UsageError), deployment_lock(str(root), mode="sometimes"):
        pass


INSTANCE_TRIALS = 5


@needs_root("instances need root on this machine (CI runs as root)")
def test_two_cdsim_processes_on_one_instance_never_interleave(tmp_path):
    """The same inside a sandboxed instance: two `cdsim deploy --instance` at once (the instance's own
    deployment root) take turns, for 5 trials."""
    import uuid
    name = f"conc{uuid.uuid4().hex[:8]}"
    site = Site(tmp_path)
    env = site.env()
    base = [*CLI]
    created = run_cli([*base, "instance", "create", name], cwd=site.cwd, env=env, timeout=60)
    assert created.returncode == 0, created.explain()
    try:
        upper = site.base / "state" / "instances" / name / "upper"
        for trial in range(INSTANCE_TRIALS):
            log = f"/tmp/hooks-{trial}.log"   # inside the instance
            revs = [slow_revision(site, f"i{trial}{x}", log, site.target / str(trial)) for x in "ab"]
            procs = [subprocess.Popen([*base, "deploy", "-q", "--instance", name, "-g", f"g{trial}", rev],
                                      cwd=site.cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT) for rev in revs]
            outs = []
            for p in procs:
                with p:
                    outs.append(p.communicate(timeout=120)[0].decode())
            assert [p.returncode for p in procs] == [0, 0], outs
            lines = (upper / log.lstrip("/")).read_text().splitlines()
            assert len(lines) == 4, lines
            assert lines[0].split()[1] == lines[1].split()[1] != lines[2].split()[1] == lines[3].split()[1]
            assert [line.split()[0] for line in lines] == ["start", "end", "start", "end"]
            events = upper / "var/log/aws/codedeploy-agent/cdsim-events" / f"g{trial}"
            spans = []
            for path in events.glob("*.jsonl"):
                records = [json.loads(line) for line in path.read_text().splitlines()]
                times = [r["time"] for r in records if r["type"] in ("event.start", "event.end")]
                spans.append((times[0], times[-1]))
            spans.sort()
            assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans
    finally:
        run_cli([*base, "instance", "destroy", name], cwd=site.cwd, env=env, timeout=60)
