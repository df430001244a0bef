"""The local CodeDeploy service: API errors, deployment configurations, rollback, stop, restarts,
and the agents that run deployments inside real sandboxed instances.

Every deployment here runs for real: a server (in this process, real HTTP), one agent per instance
driving ``agent.deploy()`` inside the instance, revisions as commits of a git repository made in the
test (GitHub revisions read from a local repository).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import agent.instance as inst
from agent.errors import ExitStatus
from agent.service.client import ServiceError, call
from agent.service.engine import BUILTIN_CONFIGS, minimum_healthy, plan
from tests import lib
from tests.lib import CLI

needs_root = lib.needs_root("sandboxed instances need root here (CI runs as root)")

APPSPEC = """version: 0.0
os: linux
files:
  - source: /app.txt
    destination: /srv/app
hooks:
{hooks}
"""


# -- helpers -----------------------------------------------------------------------------------------
class Repo:
    """A git repository whose commits are the revisions."""

    def __init__(self, path):
        self.path = str(path)
        os.makedirs(self.path)
        self.git("init", "-q")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", self.path, "-c", "user.name=t", "-c", "user.email=t@example.com",
                               *args], check=True, capture_output=True, text=True).stdout.strip()

    def commit(self, version: str, hooks: dict[str, str]) -> str:
        """A revision installing app.txt = version, with a shell script per lifecycle event."""
        lines = []
        os.makedirs(os.path.join(self.path, "scripts"), exist_ok=True)
        for name in os.listdir(os.path.join(self.path, "scripts")):
            os.unlink(os.path.join(self.path, "scripts", name))
        for event, body in hooks.items():
            script = os.path.join(self.path, "scripts", f"{event}.sh")
            with open(script, "w") as f:
                f.write("#!/bin/sh\n" + body + "\n")
            os.chmod(script, 0o755)
            lines.append(f"  {event}:\n    - location: scripts/{event}.sh\n      timeout: 30")
        with open(os.path.join(self.path, "appspec.yml"), "w") as f:
            f.write(APPSPEC.format(hooks="\n".join(lines) or "  {}"))
        with open(os.path.join(self.path, "app.txt"), "w") as f:
            f.write(version + "\n")
        self.git("add", "-A")
        self.git("commit", "-qm", version, "--allow-empty")
        return self.git("rev-parse", "HEAD")

    def revision(self, sha: str) -> dict:
        return {"revisionType": "GitHub", "gitHubLocation": {"repository": self.path, "commitId": sha}}


class Fleet:
    def __init__(self, service, state, repo):
        self.service = service
        self.state = state
        self.repo = repo
        self.ep = service.endpoint

    def up(self, count: int, group: str = "G", **group_fields) -> list[str]:
        from agent.commands.fleet import fleet_up
        names = fleet_up(self.ep, count=count, tag="Name=Fleet", application="A", state=self.state)
        call(self.ep, "CreateDeploymentGroup", {
            "applicationName": "A", "deploymentGroupName": group, "serviceRoleArn": "arn:aws:iam::1:role/r",
            "onPremisesInstanceTagFilters": [{"Key": "Name", "Value": "Fleet", "Type": "KEY_AND_VALUE"}],
            **group_fields})
        return names

    def deploy(self, sha: str, group: str = "G", **fields) -> str:
        return call(self.ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": group,
                                                  "revision": self.repo.revision(sha), **fields})["deploymentId"]

    def wait(self, did: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = call(self.ep, "GetDeployment", {"deploymentId": did})["deploymentInfo"]
            if info["status"] in ("Succeeded", "Failed", "Stopped"):
                return info
            time.sleep(0.1)
        raise AssertionError(f"{did} did not finish in {timeout}s: {info}")

    def targets(self, did: str) -> dict[str, dict]:
        """The deployment's targets by instance name (a group of EC2 tag filters shows EC2 instance ids)."""
        from agent.instance import imds
        ids = call(self.ep, "ListDeploymentTargets", {"deploymentId": did})["targetIds"]
        got = call(self.ep, "BatchGetDeploymentTargets", {"deploymentId": did, "targetIds": ids})
        names = {imds.load(i)["instance_id"]: i.name for i in map(lambda s: inst.get(s.name, state=self.state),
                                                                  inst.list_instances(state=self.state))
                 if i.network == "private"}
        return {names.get(t["instanceTarget"]["targetId"], t["instanceTarget"]["targetId"]): t["instanceTarget"]
                for t in got["deploymentTargets"]}

    def read(self, name: str, path: str) -> str:
        out = os.path.join(self.state, f"read-{name}")
        with open(out, "w+") as f:
            status = inst.exec_in(inst.get(name, state=self.state), ["cat", path], stdout=f,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            f.seek(0)
            text = f.read()
        os.unlink(out)
        return text if status == 0 else f"<exit {status}> {text}"


def intervals(targets: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """When each instance was deployed to: its first event's start to its last event's end."""
    out = {}
    for name, t in targets.items():
        ran = [e for e in t["lifecycleEvents"] if e.get("startTime")]
        if ran:
            out[name] = (min(e["startTime"] for e in ran), max(e.get("endTime", 0) for e in ran))
    return out


def max_concurrency(spans: dict[str, tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()],
                    key=lambda p: (p[0], p[1]))
    best = level = 0
    for _, step in points:
        level += step
        best = max(best, level)
    return best


@pytest.fixture
def state(tmp_path, monkeypatch):
    folder = str(tmp_path / "state")
    monkeypatch.setenv("CDSIM_STATE_DIR", folder)
    yield folder
    for status in inst.list_instances(state=folder):
        inst.destroy(inst.get(status.name, state=folder))


@pytest.fixture
def fleet(state, tmp_path):
    from agent.service.server import Service
    service = Service(state, s3=False, github_root=[str(tmp_path)]).start()
    try:
        yield Fleet(service, state, Repo(tmp_path / "repo"))
    finally:
        service.close()


# -- the pure rules ----------------------------------------------------------------------------------
class TestPlan:
    def statuses(self, *s: str) -> list[tuple[str, str]]:
        return [(f"i{n}", x) for n, x in enumerate(s, 1)]

    def test_minimum_healthy_rounds_percentages_up(self):
        assert minimum_healthy({"type": "FLEET_PERCENT", "value": 40}, 9) == 4
        assert minimum_healthy({"type": "HOST_COUNT", "value": 6}, 9) == 6
        assert minimum_healthy(BUILTIN_CONFIGS["CodeDeployDefault.OneAtATime"], 5) == 4
        assert minimum_healthy(BUILTIN_CONFIGS["CodeDeployDefault.HalfAtATime"], 3) == 2

    def test_batch_sizes_follow_the_documented_examples(self):
        nine = self.statuses(*["Pending"] * 9)
        assert len(plan(nine, {"type": "HOST_COUNT", "value": 6}).start) == 3
        assert len(plan(nine, {"type": "FLEET_PERCENT", "value": 40}).start) == 5
        assert len(plan(nine, BUILTIN_CONFIGS["CodeDeployDefault.AllAtOnce"]).start) == 9
        assert len(plan(nine, BUILTIN_CONFIGS["CodeDeployDefault.OneAtATime"]).start) == 1
        assert len(plan(self.statuses(*["Pending"] * 4), BUILTIN_CONFIGS["CodeDeployDefault.HalfAtATime"]).start) == 2

    def test_one_at_a_time_stops_at_a_failure_but_not_at_the_last_instance(self):
        one = BUILTIN_CONFIGS["CodeDeployDefault.OneAtATime"]
        step = plan(self.statuses("Succeeded", "Failed", "Pending"), one)
        assert (step.outcome, step.skip, step.error[0]) == ("Failed", ("i3",), "HEALTH_CONSTRAINTS")
        assert plan(self.statuses("Succeeded", "Succeeded", "Failed"), one).outcome == "Succeeded"
        waiting = plan(self.statuses("Succeeded", "InProgress", "Pending"), one)
        assert (waiting.start, waiting.skip, waiting.outcome) == ((), (), None)

    def test_impossible_minimum_and_empty_groups_fail(self):
        step = plan(self.statuses("Pending", "Pending"), {"type": "HOST_COUNT", "value": 2})
        assert (step.outcome, step.error[0], step.skip) == ("Failed", "HEALTH_CONSTRAINTS_INVALID", ("i1", "i2"))
        assert plan([], {"type": "HOST_COUNT", "value": 0}).error[0] == "NO_INSTANCES"
        all_failed = plan(self.statuses("Failed", "Failed"), BUILTIN_CONFIGS["CodeDeployDefault.AllAtOnce"])
        assert all_failed.outcome == "Failed"


# -- bad requests ------------------------------------------------------------------------------------
def raw_request(endpoint: str, body: bytes, target: str | None, creds=None) -> tuple[int, dict, str]:
    """A request as given (signed with ``creds`` when given)."""
    from agent.service.auth import sign
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = target
    if creds is not None:
        headers = sign(creds, "POST", endpoint + "/", headers, body, service="codedeploy", region="us-east-1")
    req = urllib.request.Request(endpoint + "/", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read()), e.headers["Content-Type"]


@pytest.fixture
def bare_service(tmp_path):
    from agent.service.server import Service
    with Service(str(tmp_path / "state"), s3=False, agents=False, github_root=[str(tmp_path)]) as service:
        yield service


@pytest.mark.parametrize("body, target, kind", [
    (b"{}", None, "UnknownOperationException"),
    (b"{}", "DynamoDB_20120810.ListTables", "UnknownOperationException"),
    (b"{}", "CodeDeploy_20141006.LaunchRockets", "UnknownOperationException"),
    (b"{}", "CodeDeploy_20141006.__init__", "UnknownOperationException"),
    (b"{not json", "CodeDeploy_20141006.ListApplications", "SerializationException"),
    (b"[1, 2]", "CodeDeploy_20141006.ListApplications", "SerializationException"),
    (b"\xff\xfe", "CodeDeploy_20141006.ListApplications", "SerializationException"),
    (b"{}", "CodeDeploy_20141006.CreateApplication", "ApplicationNameRequiredException"),
    (b'{"applicationName": 5}', "CodeDeploy_20141006.CreateApplication", "SerializationException"),
    (b'{"applicationName": "nope"}', "CodeDeploy_20141006.GetApplication", "ApplicationDoesNotExistException"),
    (b'{"applicationName": "nope", "deploymentGroupName": "G"}', "CodeDeploy_20141006.CreateDeployment",
     "ApplicationDoesNotExistException"),
    (b'{"deploymentId": "d-NOTTHERE1"}', "CodeDeploy_20141006.GetDeployment", "DeploymentDoesNotExistException"),
    (b'{"deploymentId": "../etc"}', "CodeDeploy_20141006.GetDeployment", "InvalidDeploymentIdException"),
    (b"{}", "CodeDeploy_20141006.GetDeployment", "DeploymentIdRequiredException"),
    (b'{"deploymentConfigName": "X"}', "CodeDeploy_20141006.GetDeploymentConfig",
     "DeploymentConfigDoesNotExistException"),
    (b'{"deploymentConfigName": "X", "minimumHealthyHosts": {"type": "FLEET_PERCENT", "value": 150}}',
     "CodeDeploy_20141006.CreateDeploymentConfig", "InvalidMinimumHealthyHostValueException"),
    (b'{"instanceName": "i"}', "CodeDeploy_20141006.RegisterOnPremisesInstance", "IamArnRequiredException"),
])
def test_bad_requests_get_the_aws_error_shape(bare_service, body, target, kind):
    status, doc, ctype = raw_request(bare_service.endpoint, body, target, bare_service.credentials)
    assert status == 400
    assert ctype == "application/x-amz-json-1.1"
    assert doc["__type"] == kind and doc["message"]
    assert "Traceback" not in doc["message"]


def test_one_server_per_state_folder(bare_service):
    from agent.errors import EnvironmentProblem
    from agent.service.server import Service

    with pytest.raises(EnvironmentProblem) as e:
        Service(bare_service.state, s3=False, agents=False).start()
    assert e.value.reference == "server-running" and bare_service.endpoint in str(e.value)
    done = cdsim("server", "env", "--state", bare_service.state)
    assert done.returncode == 0 and f"export AWS_ENDPOINT_URL={bare_service.endpoint}" in done.stdout.split("\n")


def test_an_instance_without_an_agent_fails_after_the_timeout(tmp_path):
    from agent.service.server import Service
    with Service(str(tmp_path / "state"), s3=False, agents=False, agent_timeout=0.3) as service:
        ep = service.endpoint
        call(ep, "CreateApplication", {"applicationName": "A"})
        for name in ("a", "b"):
            call(ep, "RegisterOnPremisesInstance", {"instanceName": name, "iamUserArn": f"arn:aws:iam::1:user/{name}"})
        call(ep, "AddTagsToOnPremisesInstances", {"instanceNames": ["a", "b"], "tags": [{"Key": "k", "Value": "v"}]})
        call(ep, "CreateDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G", "serviceRoleArn": "r",
                                           "ec2TagFilters": [{"Key": "k", "Value": "v", "Type": "KEY_AND_VALUE"}]})
        did = call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "G", "revision": {
            "revisionType": "S3", "s3Location": {"bucket": "b", "key": "k.tgz"}}})["deploymentId"]
        deadline = time.monotonic() + 10
        while (info := call(ep, "GetDeployment", {"deploymentId": did})["deploymentInfo"])["status"] != "Failed":
            assert time.monotonic() < deadline, info
            time.sleep(0.05)
        a = call(ep, "GetDeploymentInstance", {"deploymentId": did, "instanceId": "a"})["instanceSummary"]
        b = call(ep, "GetDeploymentInstance", {"deploymentId": did,
                                               "instanceId": "arn:aws:codedeploy:us-east-1:000000000000:instance/b"})
        assert (a["status"], b["instanceSummary"]["status"]) == ("Failed", "Skipped")
        first = a["lifecycleEvents"][0]
        assert first["status"] == "Failed" and "agent is running" in first["diagnostics"]["message"]
        assert call(ep, "ListDeploymentInstances", {"deploymentId": did,
                                                    "instanceStatusFilter": ["Skipped"]})["instancesList"] == ["b"]


def test_application_and_group_lifecycle(bare_service):
    ep = bare_service.endpoint
    call(ep, "CreateApplication", {"applicationName": "A"})
    with pytest.raises(ServiceError) as e:
        call(ep, "CreateApplication", {"applicationName": "A"})
    assert e.value.kind == "ApplicationAlreadyExistsException" and e.value.status == 400
    with pytest.raises(ServiceError) as e:
        call(ep, "CreateDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G"})
    assert e.value.kind == "RoleRequiredException"
    call(ep, "CreateDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G", "serviceRoleArn": "r",
                                       "ec2TagFilters": [{"Key": "Name", "Value": "x", "Type": "KEY_AND_VALUE"}]})
    assert call(ep, "ListDeploymentGroups", {"applicationName": "A"})["deploymentGroups"] == ["G"]
    call(ep, "UpdateDeploymentGroup", {"applicationName": "A", "currentDeploymentGroupName": "G",
                                       "newDeploymentGroupName": "H",
                                       "deploymentConfigName": "CodeDeployDefault.AllAtOnce"})
    info = call(ep, "GetDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "H"})["deploymentGroupInfo"]
    assert info["deploymentConfigName"] == "CodeDeployDefault.AllAtOnce"
    assert not any(k.startswith("_") for k in info)
    with pytest.raises(ServiceError) as e:
        call(ep, "GetDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G"})
    assert e.value.kind == "DeploymentGroupDoesNotExistException"
    rev = {"revisionType": "S3", "s3Location": {"bucket": "b", "key": "k.zip"}}
    call(ep, "RegisterApplicationRevision", {"applicationName": "A", "revision": rev, "description": "first"})
    got = call(ep, "GetApplicationRevision", {"applicationName": "A", "revision": rev})
    assert got["revision"]["s3Location"]["bundleType"] == "zip" and got["revisionInfo"]["description"] == "first"
    assert len(call(ep, "ListApplicationRevisions", {"applicationName": "A"})["revisions"]) == 1
    assert "CodeDeployDefault.HalfAtATime" in call(ep, "ListDeploymentConfigs", {})["deploymentConfigsList"]
    one = call(ep, "GetDeploymentConfig", {"deploymentConfigName": "CodeDeployDefault.OneAtATime"})
    assert one["deploymentConfigInfo"]["minimumHealthyHosts"] == {"type": "MOST_CONCURRENCY", "value": 1}
    # an empty group: the deployment fails at once, as the service's NO_INSTANCES
    did = call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "H",
                                        "revision": rev})["deploymentId"]
    deadline = time.monotonic() + 10
    while (info := call(ep, "GetDeployment", {"deploymentId": did})["deploymentInfo"])["status"] != "Failed":
        assert time.monotonic() < deadline, info
        time.sleep(0.05)
    assert info["errorInformation"]["code"] == "NO_INSTANCES"
    call(ep, "DeleteApplication", {"applicationName": "A"})
    assert call(ep, "ListApplications", {})["applications"] == []


# -- deployments on instances ------------------------------------------------------------------------
CHECK = 'echo "checking $(hostname)"; cat /srv/app/app.txt'
FAIL_ON_2 = ('echo "validating on $(hostname)"; '
             'if [ "$(hostname)" = fleet-2 ]; then echo "broken on fleet-2" >&2; exit 3; fi')


@needs_root
def test_one_at_a_time_failure_skips_the_rest_and_rolls_back(fleet):
    fleet.up(3, autoRollbackConfiguration={"enabled": True, "events": ["DEPLOYMENT_FAILURE"]})
    v1 = fleet.repo.commit("v1", {"ValidateService": CHECK})
    first = fleet.wait(fleet.deploy(v1))
    assert first["status"] == "Succeeded" and first["deploymentOverview"]["Succeeded"] == 3
    v2 = fleet.repo.commit("v2", {"ValidateService": FAIL_ON_2})
    did = fleet.deploy(v2)
    failed = fleet.wait(did)
    assert failed["status"] == "Failed"
    assert failed["errorInformation"]["code"] == "HEALTH_CONSTRAINTS"
    targets = fleet.targets(did)
    assert {n: t["status"] for n, t in targets.items()} == {"fleet-1": "Succeeded", "fleet-2": "Failed",
                                                            "fleet-3": "Skipped"}
    spans = intervals(targets)
    assert spans["fleet-1"][1] <= spans["fleet-2"][0] and "fleet-3" not in spans
    events = {e["lifecycleEventName"]: e for e in targets["fleet-2"]["lifecycleEvents"]}
    assert events["Install"]["status"] == "Succeeded"
    bad = events["ValidateService"]
    assert bad["status"] == "Failed" and bad["startTime"] <= bad["endTime"]
    assert bad["diagnostics"]["errorCode"] == "ScriptFailed"
    assert bad["diagnostics"]["scriptName"] == "scripts/ValidateService.sh"
    assert "exit code 3" in bad["diagnostics"]["message"]
    assert "broken on fleet-2" in bad["diagnostics"]["logTail"]
    assert events["BeforeAllowTraffic"]["status"] == "Skipped"
    assert all(e["status"] == "Skipped" for e in targets["fleet-3"]["lifecycleEvents"])
    # automatic rollback: a new deployment of v1 by codeDeployRollback
    rollback_id = failed["rollbackInfo"]["rollbackDeploymentId"]
    rollback = fleet.wait(rollback_id)
    assert rollback["status"] == "Succeeded"
    assert rollback["creator"] == "codeDeployRollback"
    assert rollback["rollbackInfo"] == {"rollbackTriggeringDeploymentId": did}
    assert rollback["revision"] == fleet.repo.revision(v1)
    for name in ("fleet-1", "fleet-2", "fleet-3"):
        assert fleet.read(name, "/srv/app/app.txt") == "v1\n"
    group = call(fleet.ep, "GetDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G"})
    assert group["deploymentGroupInfo"]["lastSuccessfulDeployment"]["deploymentId"] == rollback_id


@needs_root
def test_half_at_a_time_deploys_two_of_four_at_once(fleet):
    fleet.up(4, deploymentConfigName="CodeDeployDefault.HalfAtATime")
    sha = fleet.repo.commit("v1", {"AfterInstall": "sleep 0.6"})
    did = fleet.deploy(sha)
    assert fleet.wait(did)["status"] == "Succeeded"
    spans = intervals(fleet.targets(did))
    assert len(spans) == 4
    assert max_concurrency(spans) == 2


@needs_root
def test_custom_minimum_of_two_healthy_of_three(fleet):
    call(fleet.ep, "CreateDeploymentConfig", {"deploymentConfigName": "TwoHealthy",
                                              "minimumHealthyHosts": {"type": "HOST_COUNT", "value": 2}})
    fleet.up(3)
    good = fleet.repo.commit("v1", {"AfterInstall": "sleep 0.2"})
    did = fleet.deploy(good, deploymentConfigName="TwoHealthy")
    assert fleet.wait(did)["status"] == "Succeeded"
    assert max_concurrency(intervals(fleet.targets(did))) == 1
    bad = fleet.repo.commit("v2", {"ValidateService": FAIL_ON_2})
    did = fleet.deploy(bad, deploymentConfigName="TwoHealthy")
    info = fleet.wait(did)
    assert info["status"] == "Failed" and info["deploymentConfigName"] == "TwoHealthy"
    assert {n: t["status"] for n, t in fleet.targets(did).items()} == {
        "fleet-1": "Succeeded", "fleet-2": "Failed", "fleet-3": "Skipped"}
    assert "rollbackInfo" not in info   # automatic rollback is off for this group


@needs_root
def test_stop_deployment_mid_way_and_roll_back(fleet):
    fleet.up(3)
    v1 = fleet.repo.commit("v1", {})
    assert fleet.wait(fleet.deploy(v1))["status"] == "Succeeded"
    v2 = fleet.repo.commit("v2", {"AfterInstall": "sleep 1.5"})
    did = fleet.deploy(v2)
    deadline = time.monotonic() + 20
    while fleet.targets(did)["fleet-1"]["status"] != "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answer = call(fleet.ep, "StopDeployment", {"deploymentId": did, "autoRollbackEnabled": True})
    assert answer["status"] == "Pending"
    info = fleet.wait(did)
    assert info["status"] == "Stopped" and info["errorInformation"]["code"] == "MANUAL_STOP"
    assert {n: t["status"] for n, t in fleet.targets(did).items()} == {
        "fleet-1": "Succeeded", "fleet-2": "Skipped", "fleet-3": "Skipped"}
    with pytest.raises(ServiceError) as e:
        call(fleet.ep, "StopDeployment", {"deploymentId": did})
    assert e.value.kind == "DeploymentAlreadyCompletedException"
    # fleet-1 had v2 (its target Succeeded above); the automatic rollback may already have put v1 back,
    # so what its file holds now is only asserted once the rollback is over
    rollback = fleet.wait(info["rollbackInfo"]["rollbackDeploymentId"])
    assert rollback["status"] == "Succeeded" and rollback["creator"] == "codeDeployRollback"
    assert fleet.read("fleet-1", "/srv/app/app.txt") == "v1\n"


@needs_root
def test_fleet_hooks_get_the_agent_services_environment(fleet):
    """A fleet agent's hook sees what the agent's daemon gives it: cwd /, the systemd unit's environment
    (bash -a over /etc/profile), no AWS keys, the CodeDeploy and GitHub revision variables."""
    from hooks_runtime.environment import service_environment
    fleet.up(1)
    sha = fleet.repo.commit("env", {"BeforeInstall": "env > /tmp/hook-env; pwd > /tmp/hook-pwd"})
    assert fleet.wait(fleet.deploy(sha))["status"] == "Succeeded"
    env = dict(line.split("=", 1) for line in fleet.read("fleet-1", "/tmp/hook-env").splitlines() if "=" in line)
    assert fleet.read("fleet-1", "/tmp/hook-pwd").strip() == "/"
    assert env["PATH"] == service_environment()["PATH"]
    assert env["_"] == "/opt/codedeploy-agent/bin/codedeploy-agent"
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env and "HOME" not in env
    assert env["LIFECYCLE_EVENT"] == "BeforeInstall" and env["BUNDLE_COMMIT"] == sha


@needs_root
def test_ignore_application_stop_failures(fleet):
    fleet.up(1)
    v1 = fleet.repo.commit("v1", {"ApplicationStop": 'echo "cannot stop"; exit 1'})
    first = fleet.deploy(v1)
    assert fleet.wait(first)["status"] == "Succeeded"   # no earlier revision: nothing to stop
    v2 = fleet.repo.commit("v2", {})
    did = fleet.deploy(v2)
    assert fleet.wait(did)["status"] == "Failed"
    events = {e["lifecycleEventName"]: e for e in fleet.targets(did)["fleet-1"]["lifecycleEvents"]}
    assert events["ApplicationStop"]["diagnostics"]["logTail"].endswith("[stdout]cannot stop\n")
    assert events["DownloadBundle"]["status"] == "Skipped"
    # the script was v1's (spec §4.2): the event and `cdsim wait` say so, with the ways out
    assert events["ApplicationStop"]["cdsimScriptRevision"]["deploymentId"] == first
    done = cdsim("wait", did, "--endpoint", fleet.ep, "--interval", "0.1")
    assert f"the script is the previous revision's (spec §4.2): deployment {first}" in done.stderr
    assert "_last_successful_install on fleet-1" in done.stderr
    did = fleet.deploy(v2, ignoreApplicationStopFailures=True)
    assert fleet.wait(did)["status"] == "Succeeded"
    events = {e["lifecycleEventName"]: e for e in fleet.targets(did)["fleet-1"]["lifecycleEvents"]}
    assert events["ApplicationStop"]["status"] == "Failed" and events["ApplicationStop"]["cdsimIgnored"] is True
    assert events["ValidateService"]["status"] == "Succeeded"
    assert fleet.read("fleet-1", "/srv/app/app.txt") == "v2\n"


@needs_root
def test_active_deployment_limit_and_file_exists_behavior(fleet):
    fleet.up(1)
    v1 = fleet.repo.commit("v1", {"AfterInstall": "sleep 0.5"})
    did = fleet.deploy(v1)
    with pytest.raises(ServiceError) as e:
        fleet.deploy(v1)
    assert e.value.kind == "DeploymentLimitExceededException"
    assert fleet.wait(did)["status"] == "Succeeded"
    # a file the revision did not install is in the way: DISALLOW fails, OVERWRITE replaces it
    target = inst.get("fleet-1", state=fleet.state)
    assert inst.exec_in(target, ["/bin/sh", "-c", "rm -rf /opt/codedeploy-agent/deployment-root/*/*/ && "
                                 "rm -f /opt/codedeploy-agent/deployment-root/deployment-instructions/*"],
                        stdin=subprocess.DEVNULL) == 0
    v2 = fleet.repo.commit("v2", {})
    assert fleet.wait(fleet.deploy(v2))["status"] == "Failed"
    assert fleet.wait(fleet.deploy(v2, fileExistsBehavior="OVERWRITE"))["status"] == "Succeeded"
    assert fleet.read("fleet-1", "/srv/app/app.txt") == "v2\n"


@needs_root
def test_server_restart_keeps_every_deployment(state, tmp_path):
    from agent.commands.fleet import fleet_up
    from agent.service.server import Service

    repo = Repo(tmp_path / "repo")
    with Service(state, s3=False, github_root=[str(tmp_path)]) as service:
        f = Fleet(service, state, repo)
        fleet_up(service.endpoint, count=2, tag="Name=Fleet", application="A", group="G", state=state)
        ok = f.wait(f.deploy(repo.commit("v1", {})))
        bad = f.wait(f.deploy(repo.commit("v2", {"ValidateService": "exit 1"})))
        before = {d: (call(service.endpoint, "GetDeployment", {"deploymentId": d})["deploymentInfo"], f.targets(d))
                  for d in (ok["deploymentId"], bad["deploymentId"])}
    with Service(state, s3=False, github_root=[str(tmp_path)]) as service:
        assert sorted(call(service.endpoint, "ListDeployments", {"applicationName": "A",
                                                                  "deploymentGroupName": "G"})["deployments"]) \
            == sorted(before)
        f = Fleet(service, state, repo)
        for d, (info, targets) in before.items():
            assert call(service.endpoint, "GetDeployment", {"deploymentId": d})["deploymentInfo"] == info
            assert f.targets(d) == targets
        assert [i["status"] for i in (ok, bad)] == ["Succeeded", "Failed"]
        # and it still deploys
        assert f.wait(f.deploy(repo.commit("v3", {})))["status"] == "Succeeded"


# -- the commands ------------------------------------------------------------------------------------
cdsim = functools.partial(lib.cdsim, timeout=60)


@needs_root
def test_cdsim_wait_reports_success_and_failure(fleet):
    fleet.up(2)
    ok = fleet.deploy(fleet.repo.commit("v1", {}))
    done = cdsim("wait", "-", "--endpoint", fleet.ep, "--interval", "0.1", input=json.dumps({"deploymentId": ok}))
    assert done.returncode == 0, done.stderr
    assert f"Deployment {ok} succeeded" in done.stdout and f"{ok} fleet-2: Succeeded" in done.stdout
    bad = fleet.deploy(fleet.repo.commit("v2", {"AfterInstall": 'echo "no disk space on $(hostname)"; exit 7'}))
    done = cdsim("wait", bad, "--endpoint", fleet.ep, "--interval", "0.1")
    assert done.returncode == int(ExitStatus.HOOK_FAILED), done.stderr
    assert "fleet-1: AfterInstall failed: ScriptFailed scripts/AfterInstall.sh" in done.stderr
    assert "| [stdout]no disk space on fleet-1" in done.stderr
    assert cdsim("wait", "d-NOTTHERE1", "--endpoint", fleet.ep).returncode == int(ExitStatus.USAGE)


def test_cdsim_agent_on_the_host(bare_service, tmp_path):
    """`cdsim agent --host` serves an instance name from outside any sandbox (a Vagrant box's agent)."""
    ep = bare_service.endpoint
    repo = Repo(tmp_path / "repo")
    sha = repo.commit("v1", {})
    os.unlink(os.path.join(repo.path, "appspec.yml"))
    with open(os.path.join(repo.path, "appspec.yml"), "w") as f:   # no files section: the host stays untouched
        f.write("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: scripts/AfterInstall.sh\n")
    with open(os.path.join(repo.path, "scripts", "AfterInstall.sh"), "w") as f:
        f.write('#!/bin/sh\necho "commit $BUNDLE_COMMIT for $DEPLOYMENT_GROUP_NAME, '
                'secret ${AWS_SECRET_ACCESS_KEY:-unset}" > "$(dirname "$0")/../seen"\n')
    os.chmod(os.path.join(repo.path, "scripts", "AfterInstall.sh"), 0o755)
    repo.git("add", "-A")
    repo.git("commit", "-qm", "host")
    sha = repo.git("rev-parse", "HEAD")
    call(ep, "CreateApplication", {"applicationName": "A"})
    call(ep, "RegisterOnPremisesInstance", {"instanceName": "box", "iamUserArn": "arn:aws:iam::1:user/box"})
    call(ep, "AddTagsToOnPremisesInstances", {"instanceNames": ["box"], "tags": [{"Key": "Role", "Value": "web"}]})
    call(ep, "CreateDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G", "serviceRoleArn": "r",
                                       "onPremisesInstanceTagFilters": [{"Key": "Role", "Type": "KEY_ONLY"}]})
    root = tmp_path / "box"
    agent = subprocess.Popen([*CLI, "agent", "--endpoint", ep, "--instance", "box",
                              "--host", "--root-dir", str(root), "--poll-interval", "0.1",
                              "--github-root", str(tmp_path),
                              "--state", str(tmp_path / "agent-state")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             # as inside a Vagrant box: the credentials `cdsim server env` exports
                             env=dict(os.environ, AWS_ACCESS_KEY_ID=bare_service.credentials.access_key,
                                      AWS_SECRET_ACCESS_KEY=bare_service.credentials.secret_key))
    try:
        did = call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "G",
                                            "revision": repo.revision(sha)})["deploymentId"]
        deadline = time.monotonic() + 30
        while (info := call(ep, "GetDeployment", {"deploymentId": did})["deploymentInfo"])["status"] == "InProgress" \
                or info["status"] == "Created":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        agent.terminate()
        out, _ = agent.communicate(timeout=10)
    assert info["status"] == "Succeeded", out
    group_id = call(ep, "GetDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G"})[
        "deploymentGroupInfo"]["deploymentGroupId"]
    seen = root / "deployment-root" / group_id / did / "deployment-archive" / "seen"
    assert seen.read_text() == f"commit {sha} for G, secret unset\n"   # the agent's credentials stay with it
    assert call(ep, "ListOnPremisesInstances", {"tagFilters": [{"Key": "Role", "Value": "web",
                                                                 "Type": "KEY_AND_VALUE"}]})["instanceNames"] == ["box"]


@needs_root
def test_a_server_killed_mid_deployment_fails_the_running_instance_on_restart(state, tmp_path):
    """As the agent after a restart (§8.5): the lifecycle event that was running is Failed, error 7's message."""
    import signal

    from agent.commands.fleet import fleet_up
    from agent.service.client import server_info
    from agent.service.server import Service

    proc = subprocess.Popen([*CLI, "server", "--state", state, "--no-s3",
                             "--github-root", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while (info := server_info(state)) is None or info["pid"] != proc.pid:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        repo = Repo(tmp_path / "repo")
        f = Fleet(type("S", (), {"endpoint": info["endpoint"]}), state, repo)
        fleet_up(f.ep, count=1, tag="Name=Fleet", application="A", group="G", state=state)
        did = f.deploy(repo.commit("v1", {"ApplicationStart": "sleep 30"}))
        while not any(e["lifecycleEventName"] == "ApplicationStart" and e["status"] == "InProgress"
                      for e in f.targets(did)["fleet-1"]["lifecycleEvents"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Service(state, s3=False, github_root=[str(tmp_path)]) as service:
        f = Fleet(service, state, repo)
        assert f.wait(did)["status"] == "Failed"
        events = {e["lifecycleEventName"]: e for e in f.targets(did)["fleet-1"]["lifecycleEvents"]}
        assert events["ApplicationStart"]["status"] == "Failed"
        assert events["ApplicationStart"]["diagnostics"]["message"] == \
            "Failed: Failing in-progress lifecycle event after an agent restart."
        assert events["ValidateService"]["status"] == "Skipped"
        inst.stop(inst.get("fleet-1", state=state))   # the orphaned hook still sleeps in there
        assert f.wait(f.deploy(repo.commit("v2", {})))["status"] == "Succeeded"
