"""Blue/green EC2 deployments in the local CodeDeploy service (issue #20 item 3), end to end.

One module-scoped run: `cdsim server` in this process; two original (blue) instances ``blue-1``/``blue-2``
(EC2 tag ``Fleet=blue``) in the ELBv2 target group ``web-tg`` (health checks every 2 s, 2 to change state;
deregistration delay 1 s) behind the application load balancer ``web-alb``, whose HTTP listener the state's
load balancer serves on loopback; two replacement (green) instances ``green-1``/``green-2`` (``Fleet=green``),
in no target group. An in-place group puts v1 on the blues (an HTTP server on port 80 answering
``X-Version: vN HOST``). The blue/green group, made with the aws CLI, selects the blues and has
STOP_DEPLOYMENT (60 minutes) and TERMINATE (wait 0); deployments name the greens by
``targetInstances``. First a revision whose ValidateService fails, then one whose AfterAllowTraffic fails
(automatic rollback), then v2; during each, a bounded request loop (20 per second, loopback only) goes
through the load balancer and notes which version answered. Then one more instance replaces the greens
(now the group's): STOP_DEPLOYMENT with no wait (Stopped), then TERMINATE after 60 minutes, skipped.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

import agent.instance as inst
from agent.instance import imds, localaws
from tests.lib import CLI, REPO, needs_root, needs_tool
from tests.lib.fleet import APP_SERVER, APP_START, AWS, app_stop, commit, local_service

pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
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
  ValidateService:
    - location: validate.sh
  BeforeAllowTraffic:
    - location: note.sh
  AfterAllowTraffic:
    - location: after.sh
  BeforeBlockTraffic:
    - location: note.sh
  AfterBlockTraffic:
    - location: note.sh
"""
STOP = app_stop(linger=0.5)
NOTE = ("#!/bin/sh\necho \"$LIFECYCLE_EVENT $DEPLOYMENT_ID $(cat $(dirname $0)/app/version.txt)\" "
        ">> /var/log/bg-hooks.log\n")
BG_CONFIG = {"terminateBlueInstancesOnDeploymentSuccess": {"action": "TERMINATE", "terminationWaitTimeInMinutes": 0},
             "deploymentReadyOption": {"actionOnTimeout": "STOP_DEPLOYMENT", "waitTimeInMinutes": 60},
             "greenFleetProvisioningOption": {"action": "DISCOVER_EXISTING"}}
COPY_CONFIG = {"greenFleetProvisioningOption": {"action": "COPY_AUTO_SCALING_GROUP"},
               "deploymentReadyOption": {"actionOnTimeout": "CONTINUE_DEPLOYMENT"},
               "terminateBlueInstancesOnDeploymentSuccess": {"action": "KEEP_ALIVE"}}
MAX_REQUESTS = 4000        # every request loop is bounded in count ...
MAX_SECONDS = 240.0        # ... and in time


def _registered(state: str, arn: str) -> set[str]:
    found = localaws.query(state, "elasticloadbalancing", {"Version": "2015-12-01", "Action": "DescribeTargetHealth",
                                                           "TargetGroupArn": arn})
    return {e.text or "" for e in found.iterfind(".//TargetHealthDescriptions/member/Target/Id")}


class Requests:
    """GET the load balancer's URL 20 times a second in a thread (loopback only, bounded); each request's
    (sent, answered, version or None, error)."""

    def __init__(self, url: str) -> None:
        assert url.startswith("http://127.0.0.1:"), url
        self.url = url
        self.samples: list[tuple[float, float, str | None, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for _ in range(MAX_REQUESTS):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            sent = time.time()
            version, error = None, None
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    version = answer.headers.get("X-Version")
            except (urllib.error.URLError, OSError) as e:
                error = str(e)
            self.samples.append((sent, time.time(), version, error))
            self.stop.wait(0.05)

    def sent_since(self, since: float, count: int, limit: float = 60.0) -> None:
        """Wait until ``count`` requests were sent since ``since`` (at most ``limit`` seconds)."""
        deadline = time.monotonic() + limit
        while sum(1 for s in list(self.samples) if s[0] >= since) < count and time.monotonic() < deadline \
                and self.thread.is_alive():
            time.sleep(0.05)

    def finish(self) -> list[tuple[float, float, str | None, str | None]]:
        self.stop.set()
        self.thread.join(timeout=10)
        return list(self.samples)


@pytest.fixture(scope="module")
def bg(tmp_path_factory):
    from agent.commands.fleet import fleet_up
    from agent.service.client import call

    tmp = tmp_path_factory.mktemp("bluegreen")
    with local_service(tmp) as svc:
        state, ep, env = svc.state, svc.endpoint, svc.env
        out: dict = {"state": state, "tmp": tmp}

        def aws(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            done = subprocess.run([AWS, *args], env=env, capture_output=True, text=True, timeout=120,
                                  check=False)
            assert not check or done.returncode == 0, done.stderr
            return done

        def cdsim_wait(did: str) -> subprocess.CompletedProcess[str]:
            return svc.cdsim("wait", did, "--endpoint", ep, "--interval", "0.2", "--timeout", "240", timeout=300)

        blues = fleet_up(ep, count=2, tag="Fleet=blue", application="A", state=state, target_group="web-tg")
        greens = fleet_up(ep, count=2, tag="Fleet=green", state=state)
        for name in greens:
            inst.start(inst.get(name, state=state))
        ids = {name: imds.load(inst.get(name, state=state))["instance_id"] for name in [*blues, *greens]}
        tg = svc.target_group_arn("web-tg")
        svc.elbv2(Action="ModifyTargetGroup", TargetGroupArn=tg, HealthCheckPath="/health",
                  HealthCheckIntervalSeconds="2", HealthCheckTimeoutSeconds="1", HealthyThresholdCount="2",
                  UnhealthyThresholdCount="2")
        svc.deregistration_delay(tg, 1)
        url = svc.load_balancer("web-alb", tg)

        repo = tmp / "repo"
        (repo / "app").mkdir(parents=True)
        (repo / "appspec.yml").write_text(APPSPEC)
        (repo / "app" / "server.py").write_text(APP_SERVER)
        for script, text in (("start.sh", APP_START), ("stop.sh", STOP), ("note.sh", NOTE),
                             ("validate.sh", "#!/bin/sh\nexit 0\n"), ("after.sh", "#!/bin/sh\nexit 0\n")):
            (repo / script).write_text(text)
            (repo / script).chmod(0o755)

        def revision(version: str, validate: str = "exit 0", after_allow: str = "exit 0") -> dict:
            (repo / "app" / "version.txt").write_text(f"{version}\n")
            (repo / "validate.sh").write_text(f"#!/bin/sh\n{validate}\n")
            (repo / "after.sh").write_text(f"#!/bin/sh\n{after_allow}\n")
            return {"revisionType": "GitHub",
                    "gitHubLocation": {"repository": str(repo), "commitId": commit(repo, version)}}

        # v1 on the blues, in place, and serving through the load balancer
        call(ep, "CreateDeploymentGroup", {
            "applicationName": "A", "deploymentGroupName": "IP", "serviceRoleArn": "arn:aws:iam::0:role/x",
            "ec2TagFilters": [{"Key": "Fleet", "Value": "blue", "Type": "KEY_AND_VALUE"}],
            "deploymentConfigName": "CodeDeployDefault.AllAtOnce"})
        v1 = call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "IP",
                                           "revision": revision("v1")})["deploymentId"]
        done = cdsim_wait(v1)
        assert done.returncode == 0, done.stdout + done.stderr
        out["in_place"] = v1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # until the health checks let the blues in
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if (answer.headers.get("X-Version") or "").startswith("v1"):
                        break
            except OSError:
                pass
            time.sleep(0.2)

        made = aws("deploy", "create-deployment-group", "--application-name", "A",
                   "--deployment-group-name", "BG", "--service-role-arn", "arn:aws:iam::000000000000:role/cdsim",
                   "--ec2-tag-filters", "Key=Fleet,Value=blue,Type=KEY_AND_VALUE",
                   "--deployment-config-name", "CodeDeployDefault.AllAtOnce",
                   "--deployment-style", "deploymentType=BLUE_GREEN,deploymentOption=WITH_TRAFFIC_CONTROL",
                   "--load-balancer-info", "targetGroupInfoList=[{name=web-tg}]",
                   "--blue-green-deployment-configuration", json.dumps(BG_CONFIG))
        out["group_made"] = made
        green_tags = ["--target-instances", "tagFilters=[{Key=Fleet,Value=green,Type=KEY_AND_VALUE}]"]

        def create(revision: dict, *more: str) -> str:
            done = aws("deploy", "create-deployment", "--application-name", "A", "--deployment-group-name",
                       "BG", "--revision", json.dumps(revision), *green_tags, *more)
            return str(json.loads(done.stdout)["deploymentId"])

        def info(did: str) -> dict:
            return dict(json.loads(aws("deploy", "get-deployment", "--deployment-id", did).stdout)[
                "deploymentInfo"])

        # (b) a revision whose ValidateService fails on the greens
        requests = Requests(url)
        broken = create(revision("v2-broken", "exit 3"))
        waited = cdsim_wait(broken)
        requests.sent_since(0, 20)
        out["broken"] = {"id": broken, "wait": waited, "samples": requests.finish(), "info": info(broken),
                         "registered": _registered(state, tg)}

        # (d) AfterAllowTraffic fails on the greens once they serve: the rollback reroutes to the blues
        requests = Requests(url)
        late = create(revision("v2-late", after_allow="exit 4"), "--auto-rollback-configuration",
                      "enabled=true,events=DEPLOYMENT_FAILURE")
        status = ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and status not in ("Failed", "Stopped", "Succeeded"):
            got = call(ep, "GetDeployment", {"deploymentId": late})["deploymentInfo"]
            status = got["status"]
            if status == "Ready":
                aws("deploy", "continue-deployment", "--deployment-id", late)
            time.sleep(0.2)
        late_info = info(late)
        rollback = (late_info.get("rollbackInfo") or {}).get("rollbackDeploymentId", "")
        rolled = cdsim_wait(rollback) if rollback else None
        rolled_at = time.time()
        requests.sent_since(rolled_at, 10)
        rollback_summaries = call(ep, "BatchGetDeploymentInstances", {
            "deploymentId": rollback, "instanceIds": [ids[n] for n in [*blues, *greens]]}) if rollback else {}
        out["late"] = {"id": late, "info": late_info, "rollback": rollback, "wait": rolled, "rolled_at": rolled_at,
                       "samples": requests.finish(), "registered": _registered(state, tg),
                       "rollback_info": info(rollback) if rollback else {},
                       "rollback_instances": {s["instanceId"]: (s["instanceType"], [
                           (e["lifecycleEventName"], e["status"]) for e in s["lifecycleEvents"]])
                           for s in rollback_summaries.get("instancesSummary", [])}}

        # (a) v2, STOP_DEPLOYMENT: Ready until continue-deployment
        requests = Requests(url)
        good = create(revision("v2"))
        waiting = subprocess.Popen([*CLI, "wait", good, "--endpoint", ep, "--interval", "0.2", "--timeout", "240"],
                                   env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline and status not in ("Ready", "Failed", "Stopped", "Succeeded"):
            status = call(ep, "GetDeployment", {"deploymentId": good})["deploymentInfo"]["status"]
            time.sleep(0.2)
        assert status == "Ready", status
        ready_at = time.time()
        requests.sent_since(ready_at, 30)   # traffic while Ready: the blues' only
        ready_info = info(good)
        ready_targets = _registered(state, tg)
        early = aws("deploy", "continue-deployment", "--deployment-id", good, "--deployment-wait-type",
                    "TERMINATION_WAIT", check=False)
        continued_at = time.time()
        aws("deploy", "continue-deployment", "--deployment-id", good, "--deployment-wait-type", "READY_WAIT")
        stdout, stderr = waiting.communicate(timeout=300)
        finished_at = time.time()
        requests.sent_since(finished_at, 10)   # a little traffic after the end: the greens' only
        samples = requests.finish()
        reported = svc.cdsim("wait", good, "--endpoint", ep, "--report", f"junit={tmp}/bg.xml", "--report",
                             f"json={tmp}/bg.json", timeout=120)
        greens_listed = json.loads(aws("deploy", "list-deployment-instances", "--deployment-id", good,
                                       "--instance-type-filter", "Green").stdout)["instancesList"]
        summaries = call(ep, "BatchGetDeploymentInstances", {"deploymentId": good,
                                                             "instanceIds": [ids[n] for n in [*blues, *greens]]})
        ec2 = localaws.query(state, "ec2", {"Version": "2016-11-15", "Action": "DescribeInstances",
                                            **{f"InstanceId.{n}": ids[b] for n, b in enumerate(blues, 1)}})
        out["good"] = {
            "id": good, "exit": waiting.returncode, "stdout": stdout, "stderr": stderr, "samples": samples,
            "ready_at": ready_at, "continued_at": continued_at, "finished_at": finished_at,
            "ready_info": ready_info, "reported": reported, "ready_targets": ready_targets, "early": early,
            "info": info(good),
            "registered": _registered(state, tg), "greens_listed": greens_listed,
            "events": {s["instanceId"]: {e["lifecycleEventName"]: e for e in s["lifecycleEvents"]}
                       for s in summaries["instancesSummary"]},
            "types": {s["instanceId"]: s["instanceType"] for s in summaries["instancesSummary"]},
            "ec2_states": {i.findtext("instanceId"): i.findtext("instanceState/name")
                           for i in ec2.iterfind(".//instancesSet/item")},
            "left": {s.name for s in inst.list_instances(state=state)},
            "group": call(ep, "GetDeploymentGroup", {"applicationName": "A",
                                                     "deploymentGroupName": "BG"})["deploymentGroupInfo"]}

        # (e) the greens are the group's now; one more instance replaces them, first with STOP_DEPLOYMENT
        # and no wait (Stopped when Ready: traffic untouched), then with CONTINUE_DEPLOYMENT and TERMINATE
        # after 60 minutes, a wait skip-wait-time-for-instance-termination ends
        [extra] = fleet_up(ep, count=1, tag="Fleet=extra", state=state)
        inst.start(inst.get(extra, state=state))
        ids[extra] = imds.load(inst.get(extra, state=state))["instance_id"]
        green_tags = ["--target-instances", "tagFilters=[{Key=Fleet,Value=extra,Type=KEY_AND_VALUE}]"]

        def configure(config: dict) -> None:
            aws("deploy", "update-deployment-group", "--application-name", "A", "--current-deployment-group-name",
                "BG", "--blue-green-deployment-configuration", json.dumps(config))

        configure({**BG_CONFIG, "deploymentReadyOption": {"actionOnTimeout": "STOP_DEPLOYMENT",
                                                          "waitTimeInMinutes": 0}})
        requests = Requests(url)
        timed_out = create(revision("v3"))
        waited = cdsim_wait(timed_out)
        out["timed_out"] = {"id": timed_out, "wait": waited, "info": info(timed_out), "samples": requests.finish(),
                            "registered": _registered(state, tg)}
        # stop-deployment --auto-rollback-enabled while Ready: Stopped; nothing to roll back (never rerouted)
        configure(BG_CONFIG)
        stopped = create(revision("v3s"))
        deadline = time.monotonic() + 180
        status = ""
        while time.monotonic() < deadline and status not in ("Ready", "Failed", "Stopped", "Succeeded"):
            status = call(ep, "GetDeployment", {"deploymentId": stopped})["deploymentInfo"]["status"]
            time.sleep(0.2)
        before = set(call(ep, "ListDeployments", {})["deployments"])
        aws("deploy", "stop-deployment", "--deployment-id", stopped, "--auto-rollback-enabled")
        waited = cdsim_wait(stopped)
        out["stopped"] = {"id": stopped, "status_before": status, "wait": waited, "info": info(stopped),
                          "new": set(call(ep, "ListDeployments", {})["deployments"]) - before,
                          "registered": _registered(state, tg)}
        configure({**BG_CONFIG, "deploymentReadyOption": {"actionOnTimeout": "CONTINUE_DEPLOYMENT"},
                   "terminateBlueInstancesOnDeploymentSuccess": {"action": "TERMINATE",
                                                                 "terminationWaitTimeInMinutes": 60}})
        skipped = create(revision("v3b"))
        deadline = time.monotonic() + 180
        waiting_info: dict = {}
        while time.monotonic() < deadline and not waiting_info.get("instanceTerminationWaitTimeStarted"):
            waiting_info = call(ep, "GetDeployment", {"deploymentId": skipped})["deploymentInfo"]
            if waiting_info["status"] in ("Failed", "Stopped", "Succeeded"):
                break
            time.sleep(0.2)
        still = {s.name for s in inst.list_instances(state=state)}
        blue_hooks = svc.read(greens[0], "/var/log/bg-hooks.log")
        aws("deploy", "skip-wait-time-for-instance-termination", "--deployment-id", skipped)
        waited = cdsim_wait(skipped)
        out["skipped"] = {"id": skipped, "wait": waited, "waiting": waiting_info, "still": still,
                          "blue_hooks": blue_hooks,
                          "info": info(skipped), "left": {s.name for s in inst.list_instances(state=state)},
                          "registered": _registered(state, tg)}

        # (f) COPY_AUTO_SCALING_GROUP: extra-1 in the Auto Scaling group web-asg, a group on it; the
        # deployment copies web-asg with one new instance and reroutes to it; KEEP_ALIVE keeps extra-1
        identity = imds.load(inst.get(extra, state=state))
        localaws.attach_to_auto_scaling_group(state, "web-asg", [ids[extra]], image_id=identity["ami_id"],
                                              instance_type=identity["instance_type"],
                                              zone=identity["availability_zone"], region=identity["region"])
        aws("deploy", "create-deployment-group", "--application-name", "A", "--deployment-group-name", "CP",
            "--service-role-arn", "arn:aws:iam::000000000000:role/cdsim", "--auto-scaling-groups", "web-asg",
            "--deployment-config-name", "CodeDeployDefault.AllAtOnce",
            "--deployment-style", "deploymentType=BLUE_GREEN,deploymentOption=WITH_TRAFFIC_CONTROL",
            "--load-balancer-info", "targetGroupInfoList=[{name=web-tg}]",
            "--blue-green-deployment-configuration", json.dumps(COPY_CONFIG))
        requests = Requests(url)
        done = aws("deploy", "create-deployment", "--application-name", "A", "--deployment-group-name", "CP",
                   "--revision", json.dumps(revision("v4")))
        copied = str(json.loads(done.stdout)["deploymentId"])
        waited = cdsim_wait(copied)
        finished_at = time.time()
        requests.sent_since(finished_at, 10)
        asgs = localaws.query(state, "autoscaling", {"Version": "2011-01-01",
                                                     "Action": "DescribeAutoScalingGroups"})
        out["copied"] = {
            "id": copied, "wait": waited, "info": info(copied), "samples": requests.finish(),
            "finished_at": finished_at, "registered": _registered(state, tg),
            "left": {s.name for s in inst.list_instances(state=state)},
            "ec2_state": localaws.query(state, "ec2", {"Version": "2016-11-15", "Action": "DescribeInstances",
                                                       "InstanceId.1": ids[extra]}).findtext(
                ".//instancesSet/item/instanceState/name"),
            "asgs": {g.findtext("AutoScalingGroupName"): {
                e.text for e in g.iterfind(".//Instances/member/InstanceId")}
                for g in asgs.iterfind(".//AutoScalingGroups/member")},
            "targets": {t["instanceTarget"]["targetId"]: t["instanceTarget"]["instanceLabel"] for t in call(
                ep, "BatchGetDeploymentTargets", {"deploymentId": copied, "targetIds": call(
                    ep, "ListDeploymentTargets", {"deploymentId": copied})["targetIds"]})["deploymentTargets"]},
            "group": call(ep, "GetDeploymentGroup", {"applicationName": "A",
                                                     "deploymentGroupName": "CP"})["deploymentGroupInfo"]}
        out.update(blues=blues, greens=greens, extra=extra, ids=ids, tg=tg, url=url, aws=aws, ep=ep, call=call,
                   env=env, state=state)
        yield out


def _versions(samples) -> set[str]:
    return {v.split()[0] for _, _, v, _ in samples if v}


def test_a_failed_validate_service_on_the_greens_never_reaches_the_load_balancer(bg):
    run = bg["broken"]
    assert run["info"]["status"] == "Failed", run["info"]
    assert run["wait"].returncode != 0
    assert "ValidateService failed" in run["wait"].stderr, run["wait"].stderr
    greens = {bg["ids"][n] for n in bg["greens"]}
    assert not greens & run["registered"]   # never registered
    samples = run["samples"]
    assert len(samples) >= 20, len(samples)
    assert [s for s in samples if s[3] or not s[2]] == []   # every request answered ...
    assert {v for _, _, v, _ in samples} <= {f"v1 {n}" for n in bg["blues"]}   # ... by the blues


def test_a_failure_after_the_reroute_began_rolls_back_to_the_blues(bg):
    """AfterAllowTraffic fails on the greens (registered by then): the automatic rollback is a blue/green
    deployment the other way: the blues' AllowTraffic (they serve again), the greens' BlockTraffic."""
    run = bg["late"]
    assert run["info"]["status"] == "Failed", run["info"]
    assert run["rollback"], run["info"].get("rollbackInfo")
    assert run["wait"].returncode == 0, run["wait"].stdout + run["wait"].stderr
    back = run["rollback_info"]
    assert back["creator"] == "codeDeployRollback" and back["status"] == "Succeeded"
    assert back["rollbackInfo"]["rollbackTriggeringDeploymentId"] == run["id"]
    ids = bg["ids"]
    for name in bg["blues"]:   # the original instances: rerouted to, nothing installed
        assert run["rollback_instances"][ids[name]] == ("Green", [
            ("BeforeAllowTraffic", "Succeeded"), ("AllowTraffic", "Succeeded"), ("AfterAllowTraffic", "Succeeded")])
    for name in bg["greens"]:
        assert run["rollback_instances"][ids[name]] == ("Blue", [
            ("BeforeBlockTraffic", "Succeeded"), ("BlockTraffic", "Succeeded"), ("AfterBlockTraffic", "Succeeded")])
    assert run["registered"] == {ids[n] for n in bg["blues"]}
    samples = run["samples"]
    assert [s for s in samples if s[3] or not s[2]] == []
    assert "v2-late" in _versions(samples)   # the greens did serve before their AfterAllowTraffic failed
    after = [s for s in samples if s[0] >= run["rolled_at"]]
    assert len(after) >= 5 and _versions(after) == {"v1"}, after


def test_ready_holds_traffic_on_the_blues_until_continue_deployment(bg):
    run = bg["good"]
    ready = run["ready_info"]
    assert ready["status"] == "Ready"
    assert ready["deploymentStyle"] == {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"}
    assert ready["blueGreenDeploymentConfiguration"] == BG_CONFIG
    assert ready["deploymentOverview"]["Ready"] == 2
    assert any("continue" in m.lower() for m in ready["deploymentStatusMessages"]), ready["deploymentStatusMessages"]
    assert not {bg["ids"][n] for n in bg["greens"]} & run["ready_targets"]
    during = [s for s in run["samples"] if run["ready_at"] <= s[0] and s[1] <= run["continued_at"]]
    assert len(during) >= 20, len(during)
    assert [s for s in during if s[3]] == [] and _versions(during) == {"v1"}
    # continue-deployment TERMINATION_WAIT is refused while the deployment waits to be rerouted
    assert run["early"].returncode != 0 and "DeploymentNotStartedException" in run["early"].stderr
    # `cdsim wait` said once what it waits for and went on to the end
    assert run["exit"] == 0, run["stdout"] + run["stderr"]
    assert run["stdout"].count("Ready:") == 1 and "aws deploy continue-deployment --deployment-id" in run["stdout"]


def test_after_continue_deployment_only_the_greens_answer_and_no_request_failed(bg):
    run = bg["good"]
    assert run["info"]["status"] == "Succeeded", run["info"]
    samples = run["samples"]
    assert [s for s in samples if s[3] or not s[2]] == []   # zero downtime
    after = [s for s in samples if s[0] >= run["finished_at"]]
    assert len(after) >= 5 and {v for _, _, v, _ in after} <= {f"v2 {n}" for n in bg["greens"]}, after
    events = run["events"]
    allowed = min(events[bg["ids"][n]]["AllowTraffic"]["startTime"] for n in bg["greens"])
    assert allowed >= run["continued_at"] - 0.5
    for sent, _answered, version, _ in samples:   # v2 only once a green's AllowTraffic had begun
        if version and version.startswith("v2"):   # (a second for a request thread descheduled under load)
            assert sent >= allowed - 1.0, (sent, allowed)
    assert sorted(run["greens_listed"]) == sorted(bg["ids"][n] for n in bg["greens"])
    assert {run["types"][bg["ids"][n]] for n in bg["greens"]} == {"Green"}
    assert {run["types"][bg["ids"][n]] for n in bg["blues"]} == {"Blue"}
    for name in bg["greens"]:
        assert [e for e in events[bg["ids"][name]]] == [
            "ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall", "ApplicationStart",
            "ValidateService", "BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"]
        assert {e["status"] for e in events[bg["ids"][name]].values()} == {"Succeeded"}
    for name in bg["blues"]:
        assert list(events[bg["ids"][name]]) == ["BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic"]
        assert events[bg["ids"][name]]["BlockTraffic"]["startTime"] >= max(
            events[bg["ids"][n]]["AfterAllowTraffic"]["endTime"] for n in bg["greens"]) - 0.5


def test_terminate_with_wait_zero_terminates_the_blues(bg):
    run = bg["good"]
    assert run["info"]["instanceTerminationWaitTimeStarted"] is True
    assert set(run["ec2_states"].values()) == {"terminated"}, run["ec2_states"]
    assert not set(bg["blues"]) & run["left"]          # the sandboxed instances are gone
    assert set(bg["greens"]) <= run["left"]
    assert run["registered"] == {bg["ids"][n] for n in bg["greens"]}
    # the replacement instances are the group's now
    assert run["group"]["ec2TagFilters"] == [{"Key": "Fleet", "Value": "green", "Type": "KEY_AND_VALUE"}]
    for name in bg["blues"]:
        got = bg["call"](bg["ep"], "GetOnPremisesInstance", {"instanceName": name})["instanceInfo"]
        assert got.get("deregisterTime")


WITH_TC = "deploymentType=BLUE_GREEN,deploymentOption=WITH_TRAFFIC_CONTROL"


@pytest.mark.parametrize(("style", "config", "says"), [
    (WITH_TC.replace("WITH_", "WITHOUT_"), BG_CONFIG, "InvalidDeploymentStyleException"),
    (WITH_TC,
     {**BG_CONFIG, "terminateBlueInstancesOnDeploymentSuccess": {"action": "TERMINATE",
                                                                 "terminationWaitTimeInMinutes": 2881}},
     "InvalidBlueGreenDeploymentConfigurationException"),
    (WITH_TC,
     {**BG_CONFIG, "deploymentReadyOption": {"actionOnTimeout": "WAIT_FOREVER"}},
     "InvalidBlueGreenDeploymentConfigurationException"),
])
def test_bad_blue_green_groups_are_refused_with_the_model_s_errors(bg, style, config, says):
    done = bg["aws"]("deploy", "create-deployment-group", "--application-name", "A", "--deployment-group-name",
                     "Bad", "--service-role-arn", "arn:aws:iam::000000000000:role/cdsim",
                     "--deployment-style", style, "--load-balancer-info", "targetGroupInfoList=[{name=web-tg}]",
                     "--blue-green-deployment-configuration", json.dumps(config), check=False)
    assert done.returncode != 0 and says in done.stderr, done.stderr


def test_a_blue_green_deployment_needs_its_target_instances(bg):
    done = bg["aws"]("deploy", "create-deployment", "--application-name", "A", "--deployment-group-name", "BG",
                     "--revision", json.dumps(bg["good"]["info"]["revision"]), check=False)
    assert done.returncode != 0 and "InvalidTargetInstancesException" in done.stderr, done.stderr


def test_stop_deployment_with_no_wait_stops_when_ready_and_leaves_traffic_alone(bg):
    run = bg["timed_out"]
    assert run["info"]["status"] == "Stopped", run["info"]
    assert run["info"]["errorInformation"]["code"] == "TIMEOUT"
    assert run["wait"].returncode != 0
    assert run["registered"] == {bg["ids"][n] for n in bg["greens"]}   # the original fleet still serves
    assert run["samples"] and [s for s in run["samples"] if s[3] or not s[2]] == []
    assert _versions(run["samples"]) == {"v2"}


def test_skip_wait_time_for_instance_termination_ends_the_termination_wait(bg):
    run = bg["skipped"]
    waiting = run["waiting"]
    assert waiting["status"] == "InProgress" and waiting["instanceTerminationWaitTimeStarted"] is True, waiting
    assert set(bg["greens"]) <= run["still"]              # not terminated while the wait ran
    # their BeforeBlockTraffic and AfterBlockTraffic were the last successful revision's (v2), not v3b's
    ran = [line.split() for line in run["blue_hooks"].splitlines() if line.split()[1:2] == [run["id"]]]
    assert ran == [["BeforeBlockTraffic", run["id"], "v2"], ["AfterBlockTraffic", run["id"], "v2"]], \
        run["blue_hooks"]
    assert run["wait"].returncode == 0, run["wait"].stdout + run["wait"].stderr
    assert run["info"]["status"] == "Succeeded"
    assert not set(bg["greens"]) & run["left"]             # terminated once it was skipped
    assert run["registered"] == {bg["ids"][bg["extra"]]}


def test_copy_auto_scaling_group_launches_the_replacement_fleet_and_keep_alive_keeps_the_original(bg):
    run = bg["copied"]
    assert run["wait"].returncode == 0, run["wait"].stdout + run["wait"].stderr
    assert run["info"]["status"] == "Succeeded"
    assert run["info"]["instanceTerminationWaitTimeStarted"] is False
    copy = f"CodeDeploy_CP_{run['id']}"
    assert run["info"]["targetInstances"] == {"autoScalingGroups": [copy]}
    assert set(run["asgs"]) == {copy, "web-asg"}, run["asgs"]
    [new_id] = run["asgs"][copy]
    original = bg["ids"][bg["extra"]]
    assert run["asgs"]["web-asg"] == {original}
    assert run["targets"] == {new_id: "Green", original: "Blue"}
    assert {"extra-2", bg["extra"]} <= run["left"]   # named on from the original's numbering; KEEP_ALIVE
    assert run["ec2_state"] == "running"
    assert run["registered"] == {new_id}               # the original deregistered
    assert [a["name"] for a in run["group"]["autoScalingGroups"]] == [copy]
    samples = run["samples"]
    assert [s for s in samples if s[3] or not s[2]] == []
    after = [s for s in samples if s[0] >= run["finished_at"]]
    assert len(after) >= 5 and {v for _, _, v, _ in after} == {"v4 extra-2"}, after


def test_instance_type_filters_are_for_blue_green_deployments(bg):
    done = bg["aws"]("deploy", "list-deployment-instances", "--deployment-id", bg["in_place"],
                     "--instance-type-filter", "Green", check=False)
    assert done.returncode != 0 and "InvalidDeploymentInstanceTypeException" in done.stderr, done.stderr


def test_stopping_a_ready_deployment_with_rollback_leaves_the_original_fleet_serving(bg):
    run = bg["stopped"]
    assert run["status_before"] == "Ready"
    assert run["info"]["status"] == "Stopped" and run["info"]["errorInformation"]["code"] == "MANUAL_STOP"
    assert "never rerouted" in run["info"]["rollbackInfo"]["rollbackMessage"]
    assert run["new"] == set()   # no rollback deployment: nothing was rerouted
    assert run["registered"] == {bg["ids"][n] for n in bg["greens"]}
    assert run["info"]["deploymentOverview"]["Ready"] == 0 and run["info"]["deploymentOverview"]["Skipped"] == 3


def test_the_reports_of_a_blue_green_deployment_show_both_fleets_events(bg):
    """`cdsim wait --report` of the finished deployment: each instance a deployment of its own in the JSON
    report, with its own side of the switch."""
    run = bg["good"]
    assert run["reported"].returncode == 0, run["reported"].stdout + run["reported"].stderr
    assert "<failure" not in (bg["tmp"] / "bg.xml").read_text()
    deployments = {d["deployment_id"]: d for d in json.loads((bg["tmp"] / "bg.json").read_text())["deployments"]}
    for name in bg["greens"]:
        mine = deployments[f"{run['id']}/{bg['ids'][name]}"]
        assert [e["event"] for e in mine["events"]][-4:] == [
            "ValidateService", "BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"]
        assert mine["status"] == "Succeeded"
    for name in bg["blues"]:
        mine = deployments[f"{run['id']}/{bg['ids'][name]}"]
        assert [e["event"] for e in mine["events"]] == ["BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic"]
        assert mine["status"] == "Succeeded"
