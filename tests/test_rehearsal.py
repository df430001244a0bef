"""The zero-downtime rehearsal end to end (issue #20's first "Done when"): real traffic through the local
load balancer during a OneAtATime deployment with traffic control, and the broken variant.

One module-scoped run: `cdsim server` in this process; a 3-instance fleet in the ELBv2 target group
``web-tg`` (health checks every 2 s, 2 to change state; deregistration delay 1 s) behind the application
load balancer ``web-alb`` whose HTTP listener the state's load balancer serves on loopback; a deployment
group with ``WITH_TRAFFIC_CONTROL``, OneAtATime. The revision is a small sample app: ApplicationStart starts
an HTTP server on port 80 that answers with ``X-Version: vN HOST`` (and the same body), ApplicationStop
stops it (SIGTERM, then a second to let it go). v1 is deployed, then v2 under `cdsim wait --traffic
LB_URL,20`; then the group is switched to ``WITHOUT_TRAFFIC_CONTROL`` and v3 deployed the same way: v2's
ApplicationStop now kills a server the load balancer still sends to.
Every request loop is bounded (the probe's count and time bounds) and goes to 127.0.0.1 only.
"""
from __future__ import annotations

import json
import subprocess
import time

import pytest

import agent.instance as inst
from agent.errors import ExitStatus
from agent.instance import imds
from tests.lib import CLI, REPO, needs_root, needs_tool
from tests.lib.fleet import APP_SERVER, APP_START, AWS, app_stop, commit, local_service

pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
ELBV2 = {"Version": "2015-12-01"}
APPSPEC = """version: 0.0
os: linux
files:
  - source: app
    destination: /opt/app
hooks:
  ApplicationStop:
    - location: stop.sh
  ApplicationStart:
    - location: start.sh
  AfterAllowTraffic:
    - location: settle.sh
"""
# a second's steady state after each instance is back (with traffic control): the last instance's new
# version gets requests before the deployment, and with it the probe, ends
SETTLE = "#!/bin/sh\nsleep 1\n"
# ApplicationStop first waits (up to a minute) for the test's word that the rehearsal's probe is sending, so
# that a slow start of `cdsim wait` cannot let web-1 stop before the probe's first request
STOP = app_stop("for i in $(seq 600); do [ -e /var/tmp/probe-sending ] && break; sleep 0.1; done\n")
SERVING = ["ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall", "ApplicationStart",
           "ValidateService"]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    from agent.commands.fleet import fleet_up

    tmp = tmp_path_factory.mktemp("rehearsal")
    with local_service(tmp) as svc:
        state, ep, env, call = svc.state, svc.endpoint, svc.env, svc.call
        out: dict = {"state": state}
        names = fleet_up(ep, count=3, tag="Name=Web", application="A", state=state, target_group="web-tg",
                         auto_scaling_group="web-asg")
        ids = {name: imds.load(inst.get(name, state=state))["instance_id"] for name in names}
        tg = svc.target_group_arn("web-tg")
        svc.elbv2(Action="ModifyTargetGroup", TargetGroupArn=tg, HealthCheckPath="/health",
                  HealthCheckIntervalSeconds="2", HealthCheckTimeoutSeconds="1", HealthyThresholdCount="2",
                  UnhealthyThresholdCount="2")
        svc.deregistration_delay(tg, 1)
        url = svc.load_balancer("web-alb", tg)
        call("CreateDeploymentGroup", {
            "applicationName": "A", "deploymentGroupName": "G", "serviceRoleArn": "arn:aws:iam::0:role/x",
            "onPremisesInstanceTagFilters": [{"Key": "Name", "Value": "Web", "Type": "KEY_AND_VALUE"}],
            "deploymentConfigName": "CodeDeployDefault.OneAtATime",
            "deploymentStyle": {"deploymentType": "IN_PLACE", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
            "loadBalancerInfo": {"targetGroupInfoList": [{"name": "web-tg"}]}})
        repo = tmp / "repo"
        (repo / "app").mkdir(parents=True)
        (repo / "appspec.yml").write_text(APPSPEC)
        (repo / "app" / "server.py").write_text(APP_SERVER)
        for script, text in (("start.sh", APP_START), ("stop.sh", STOP), ("settle.sh", SETTLE)):
            (repo / script).write_text(text)
            (repo / script).chmod(0o755)
        runs = {}
        for n in (1, 2, 3):
            if n == 3:   # the broken variant: the same group, its traffic control switched off
                call("UpdateDeploymentGroup", {
                    "applicationName": "A", "currentDeploymentGroupName": "G",
                    "deploymentStyle": {"deploymentType": "IN_PLACE",
                                        "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"}})
            (repo / "app" / "version.txt").write_text(f"v{n}\n")
            sha = commit(repo, f"v{n}")
            for name in names:
                assert svc.sh(name, "rm -f /run/app.hit /var/tmp/probe-sending" if n > 1 else
                           "touch /var/tmp/probe-sending")
            did = svc.deploy("A", "G", repo, sha)
            report = tmp / f"traffic-{n}.json"
            probe = ("--traffic", f"{url},20", "--traffic-version-header", "X-Version",
                     "--traffic-report", str(report)) if n > 1 else ()
            waiting = subprocess.Popen([*CLI, "wait", did, "--endpoint", ep, "--interval", "0.2", "--timeout",
                                        "300", *probe], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
            if probe:   # once a server has answered the probe, the ApplicationStops may go on (see STOP)
                deadline = time.monotonic() + 120
                while waiting.poll() is None and time.monotonic() < deadline and not any(
                        svc.sh(name, "test -e /run/app.hit") for name in names):
                    time.sleep(0.1)
                for name in names:
                    assert svc.sh(name, "touch /var/tmp/probe-sending")
            stdout, stderr = waiting.communicate(timeout=330)
            done = subprocess.CompletedProcess(waiting.args, waiting.returncode, stdout, stderr)
            instances = {i["instanceId"].rsplit("/", 1)[-1]: {e["lifecycleEventName"]: e for e in
                                                              i["lifecycleEvents"]}
                         for i in call("BatchGetDeploymentInstances", {
                             "deploymentId": did, "instanceIds": names})["instancesSummary"]}
            runs[n] = {"id": did, "exit": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
                       "report": json.loads(report.read_text()) if report.exists() else None,
                       "instances": instances,
                       "status": call("GetDeployment", {"deploymentId": did})["deploymentInfo"]["status"]}
            (tmp / f"wait-{n}.txt").write_text(done.stdout + done.stderr)   # for a look after a run
            (tmp / f"events-{n}.json").write_text(json.dumps(instances, indent=1, default=str))
        # the group back to traffic control, on the fleet's Auto Scaling group too: one instance more, then
        # one less, each rehearsed (`cdsim fleet scale --traffic`)
        call("UpdateDeploymentGroup", {
            "applicationName": "A", "currentDeploymentGroupName": "G", "autoScalingGroups": ["web-asg"],
            "deploymentStyle": {"deploymentType": "IN_PLACE", "deploymentOption": "WITH_TRAFFIC_CONTROL"}})
        scaled = {}
        for step in ("+1", "-1"):
            report = tmp / f"scale{step}.json"
            done = svc.cdsim("fleet", "scale", "web-asg", "--desired", step, "--endpoint", ep, "--state", state,
                             "--interval", "0.2", "--timeout", "300", "--traffic", f"{url},20",
                             "--traffic-version-header", "X-Version", "--traffic-report", str(report))
            scaled[step] = {"exit": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
                            "report": json.loads(report.read_text()) if report.exists() else None,
                            "instances": sorted(s.name for s in inst.list_instances(state=state))}
        out.update(names=names, ids=ids, runs=runs, url=url, scaled=scaled)
        yield out


def test_a_rolling_deployment_with_traffic_control_drops_no_request(rehearsal):
    """v1 -> v2, 20 requests/s through the load balancer for the whole deployment: every request answered,
    every answer v1 or v2 from one of the three instances, v2 from an instance only once its AllowTraffic
    had begun (it is registered then, not before), v1 only until its BlockTraffic ended; BlockTraffic lasts
    the deregistration delay (1 s)."""
    assert rehearsal["runs"][1]["status"] == "Succeeded", rehearsal["runs"][1]
    run = rehearsal["runs"][2]
    assert run["exit"] == 0, run["stdout"] + run["stderr"]
    rows = run["report"]["windows"]
    total = rows[-1]
    assert total["subject"] == "*" and total["failed"] == 0 and total["sent"] >= 100, total
    names = rehearsal["names"]
    assert set(total["versions"]) <= {f"v{n} {name}" for n in (1, 2) for name in names}, total["versions"]
    assert sum(total["versions"].values()) == total["sent"]
    assert {f"v2 {name}" for name in names} <= set(total["versions"]), total["versions"]
    events = run["instances"]
    for name in names:   # BlockTraffic waits while the target shows draining: the whole deregistration delay
        block = events[name]["BlockTraffic"]
        assert block["endTime"] - block["startTime"] >= 1.0, block
    samples = run["report"]["samples"]
    assert len(samples) == total["sent"] and not [s for s in samples if s["status"] != 200], samples
    for sample in samples:   # an instance answers v2 only once its AllowTraffic has begun (registered again)
        number, host = sample["version"].split()
        if number == "v2":
            assert sample["answered"] >= events[host]["AllowTraffic"]["startTime"], (sample, events[host])
        else:   # and v1 only until its BlockTraffic ended (deregistered, drained)
            assert sample["sent"] <= events[host]["BlockTraffic"]["endTime"], (sample, events[host])


def test_a_stop_without_traffic_control_fails_requests_at_that_instance_s_application_stop(rehearsal):
    """v2 -> v3 in the group switched to WITHOUT_TRAFFIC_CONTROL: v2's ApplicationStop kills a server the
    load balancer still sends to. The failed requests show at each instance's ApplicationStop (and the
    events after it, until the health checks take it out); `cdsim wait` exits 9."""
    run = rehearsal["runs"][3]
    assert run["status"] == "Succeeded"
    assert run["exit"] == ExitStatus.TRAFFIC_FAILED, run["stdout"] + run["stderr"]
    rows = run["report"]["windows"]
    failed = [(r["subject"], r["phase"]) for r in rows if r["failed"] and r["subject"] != "*"]
    assert failed and all(phase in SERVING for _, phase in failed), rows
    stops = {r["subject"]: r for r in rows if r["phase"] == "ApplicationStop"}
    for name in rehearsal["names"]:
        assert stops[name]["failed"] > 0, stops
        assert set(stops[name]["errors"]) <= {"HTTP 502"}, stops[name]
    assert f"{rows[-1]['failed']} requests failed during the deployment" in run["stderr"]


def test_a_scale_out_and_a_scale_in_rehearsed_drop_no_request(rehearsal):
    """`cdsim fleet scale web-asg --desired +1 --traffic`: the new instance gets v3 from the service's automatic
    deployment and answers only once registered (0 failed); `--desired -1 --traffic`: it is deregistered and
    drained before it goes (0 failed), the figures pinned on it (``ScaleIn``)."""
    out, names = rehearsal["scaled"]["+1"], rehearsal["names"]
    assert out["exit"] == 0, out["stdout"] + out["stderr"]
    [new] = sorted(set(out["instances"]) - set(names))
    assert f"launched {new}" in out["stdout"] and "the service deploys to" in out["stdout"], out["stdout"]
    assert "Deployment " in out["stdout"] and "succeeded" in out["stdout"], out["stdout"]
    total = out["report"]["windows"][-1]
    assert total["subject"] == "*" and total["failed"] == 0 and total["sent"] >= 20, total
    assert f"v3 {new}" in total["versions"], total["versions"]
    assert set(total["versions"]) <= {f"v3 {n}" for n in [*names, new]}, total["versions"]
    out = rehearsal["scaled"]["-1"]
    assert out["exit"] == 0, out["stdout"] + out["stderr"]
    assert f"terminated {new}" in out["stdout"] and out["instances"] == sorted(names), out
    rows = out["report"]["windows"]
    assert rows[-1]["failed"] == 0 and rows[-1]["sent"] > 0, rows
    assert [(r["subject"], r["phase"]) for r in rows[:-1]] == [(new, "ScaleIn")], rows
    assert f"{new} ScaleIn: " in out["stdout"], out["stdout"]
