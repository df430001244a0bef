"""Auto Scaling scale-out and scale-in of a fleet (`cdsim fleet scale`) and the service's automatic deployment.

One module-scoped run: `cdsim server` in this process, a 2-instance fleet in the Auto Scaling group
``shop-asg`` and the ELBv2 target group ``shop-tg`` of the state's local AWS, a deployment group made by the
aws CLI on that Auto Scaling group (no tag filter) with traffic control, and a deployment of a git revision A.
Then `cdsim fleet scale shop-asg --desired +1`: the service must deploy A to the new instance only (creator
``autoscaling``), with no ApplicationStop (it has no previous revision), and the instance must join the
target group only at AllowTraffic: its ValidateService hook asks the local AWS (the aws CLI inside the
instance) which targets the group holds and notes them. Then a scale-in, bad requests, and a scale-out
while a deployment of revision B is in progress (its ValidateService holds until the test lets it go, once
the service has reacted): the new instance gets A at once, then B from a follow-on deployment.
"""
from __future__ import annotations

import time

import pytest

import agent.instance as inst
from agent.errors import ExitStatus
from agent.instance import imds, localaws
from tests.lib import needs_root, needs_tool
from tests.lib.fleet import AWS, commit, local_service

pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
HOOKS = ["ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService",
         "BeforeAllowTraffic", "AfterAllowTraffic", "BeforeBlockTraffic", "AfterBlockTraffic"]
APPSPEC = ("version: 0.0\nos: linux\nfiles:\n  - source: version.txt\n    destination: /srv/shop\nhooks:\n"
           + "".join(f"  {event}:\n    - location: note.sh\n" for event in HOOKS))
NOTE = """#!/bin/bash
echo "$LIFECYCLE_EVENT $DEPLOYMENT_ID" >> /var/log/asg-hooks.log
if [ "$LIFECYCLE_EVENT" = ValidateService ] || [ "$LIFECYCLE_EVENT" = AfterAllowTraffic ]; then
    TARGETS=$({aws} --region us-east-1 elbv2 describe-target-health --target-group-arn "{arn}" \\
        --query 'TargetHealthDescriptions[].Target.Id' --output text)
    echo "$LIFECYCLE_EVENT $TARGETS" >> /var/log/asg-targets.log
fi
"""


def _targets(state: str, arn: str) -> set[str]:
    found = localaws.query(state, "elasticloadbalancing", {"Version": "2015-12-01", "Action": "DescribeTargetHealth",
                                                           "TargetGroupArn": arn})
    return {e.text or "" for e in found.iterfind(".//TargetHealthDescriptions/member/Target/Id")}


def _asg_ids(state: str) -> set[str]:
    found = localaws.query(state, "autoscaling", {"Version": "2011-01-01", "Action": "DescribeAutoScalingGroups",
                                                  "AutoScalingGroupNames.member.1": "shop-asg"})
    return {e.text or "" for e in found.iterfind(".//Instances/member/InstanceId")}


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    """A fleet of two, revision A deployed to it, then one more instance by `cdsim fleet scale --desired +1`."""
    from agent.commands.fleet import fleet_up

    tmp = tmp_path_factory.mktemp("asg")
    with local_service(tmp) as svc:
        state, ep, env, aws, cdsim, call = svc.state, svc.endpoint, svc.env, svc.aws, svc.cdsim, svc.call
        out: dict = {"state": state}
        names = fleet_up(ep, count=2, tag="Name=Shop", application="A", state=state, target_group="shop-tg",
                         auto_scaling_group="shop-asg")
        arn = svc.target_group_arn("shop-tg")
        svc.deregistration_delay(arn, 1)
        aws("deploy", "create-deployment-group", "--application-name", "A", "--deployment-group-name", "G",
            "--service-role-arn", "arn:aws:iam::000000000000:role/cdsim", "--auto-scaling-groups", "shop-asg",
            "--deployment-config-name", "CodeDeployDefault.AllAtOnce",
            "--deployment-style", "deploymentType=IN_PLACE,deploymentOption=WITH_TRAFFIC_CONTROL",
            "--load-balancer-info", "targetGroupInfoList=[{name=shop-tg}]")
        out["group"] = aws("deploy", "get-deployment-group", "--application-name", "A",
                           "--deployment-group-name", "G")["deploymentGroupInfo"]
        repo = tmp / "repo"
        repo.mkdir()
        (repo / "appspec.yml").write_text(APPSPEC)
        (repo / "note.sh").write_text(NOTE.replace("{aws}", AWS).replace("{arn}", arn))
        (repo / "note.sh").chmod(0o755)
        (repo / "version.txt").write_text("A\n")
        sha = commit(repo, "A")
        first = svc.deploy("A", "G", repo, sha)
        waited = cdsim("wait", first, "--endpoint", ep, "--interval", "0.2", "--timeout", "300")
        assert waited.returncode == 0, waited.stdout + waited.stderr
        before = set(_asg_ids(state))
        started = time.monotonic()
        scale = cdsim("fleet", "scale", "shop-asg", "--desired", "+1", "--endpoint", ep, "--state", state)
        assert scale.returncode == 0, scale.stderr
        new = sorted(set(i.name for i in inst.list_instances(state=state)) - set(names))
        assert len(new) == 1, new
        new_id = imds.load(inst.get(new[0], state=state))["instance_id"]
        out["targets_right_after_scale"] = _targets(state, arn)
        auto = None
        deadline = time.monotonic() + 60   # the service looks at the group every second
        while auto is None and time.monotonic() < deadline:
            ids = call("ListDeployments", {"applicationName": "A", "deploymentGroupName": "G"})["deployments"]
            auto = next((d for d in ids if d != first), None)
            if auto is None:
                time.sleep(0.2)
        assert auto is not None, "no automatic deployment after the scale-out"
        waited = cdsim("wait", auto, "--endpoint", ep, "--interval", "0.2", "--timeout", "300")
        out["scale_out_seconds"] = time.monotonic() - started
        out.update(
            names=names, new=new[0], new_id=new_id, arn=arn, first=first, auto=auto, sha=sha, scale=scale,
            auto_wait=waited, asg_before=before, asg_after=_asg_ids(state), targets_after=_targets(state, arn),
            deployment=aws("deploy", "get-deployment", "--deployment-id", auto)["deploymentInfo"],
            instances=aws("deploy", "list-deployment-instances", "--deployment-id", auto)["instancesList"],
            events=call("GetDeploymentInstance", {"deploymentId": auto, "instanceId": new[0]})[
                "instanceSummary"]["lifecycleEvents"],
            hooks={n: svc.read(n, "/var/log/asg-hooks.log").split("\n") for n in [*names, new[0]]},
            seen=svc.read(new[0], "/var/log/asg-targets.log").splitlines(),
            version=svc.read(new[0], "/srv/shop/version.txt"),
            ep=ep, env=env, cdsim=cdsim, call=call, repo=repo, tmp=tmp, svc=svc)
        yield out


def test_the_deployment_group_shows_its_auto_scaling_group_as_the_service_does(scaled):
    [asg] = scaled["group"]["autoScalingGroups"]
    assert asg["name"] == "shop-asg"
    assert asg["hook"].startswith("CodeDeploy-managed-automatic-launch-deployment-hook-G-")


def test_scale_out_launches_one_instance_into_the_group(scaled):
    assert scaled["scale"].returncode == 0
    assert f"launched {scaled['new']}" in scaled["scale"].stdout
    print(f"fleet scale +1 until the new instance's deployment succeeded: {scaled['scale_out_seconds']:.1f} s")
    assert scaled["asg_after"] == scaled["asg_before"] | {scaled["new_id"]}
    # not in the target group until its deployment's AllowTraffic
    assert scaled["new_id"] not in scaled["targets_right_after_scale"]


def test_the_new_instance_gets_the_last_successful_revision_automatically(scaled):
    assert scaled["auto_wait"].returncode == 0, scaled["auto_wait"].stdout + scaled["auto_wait"].stderr
    info = scaled["deployment"]
    assert info["creator"] == "autoscaling"
    assert info["status"] == "Succeeded"
    assert info["revision"]["gitHubLocation"]["commitId"] == scaled["sha"]
    assert scaled["instances"] == [scaled["new_id"]]   # the new instance only, by its EC2 id as on AWS
    assert scaled["version"] == "A\n"


def test_the_new_instance_runs_no_application_stop(scaled):
    ran = [line.split()[0] for line in scaled["hooks"][scaled["new"]] if line.strip()]
    assert ran == ["BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService",
                   "BeforeAllowTraffic", "AfterAllowTraffic"], ran
    for name in scaled["names"]:   # the first two saw one deployment only
        ids = {line.split()[1] for line in scaled["hooks"][name] if line.strip()}
        assert ids == {scaled["first"]}


def test_the_new_instance_joins_the_target_group_only_after_its_lifecycle_passed(scaled):
    seen = dict(line.split(" ", 1) if " " in line else (line, "") for line in scaled["seen"])
    assert scaled["new_id"] not in seen["ValidateService"].split()
    assert scaled["new_id"] in seen["AfterAllowTraffic"].split()
    assert scaled["new_id"] in scaled["targets_after"]
    events = {e["lifecycleEventName"]: e for e in scaled["events"]}
    assert events["AllowTraffic"]["status"] == "Succeeded"
    assert events["AllowTraffic"]["startTime"] >= events["ValidateService"]["endTime"]


def test_scale_in_terminates_and_deregisters(scaled):
    state, new = scaled["state"], scaled["new"]
    done = scaled["cdsim"]("fleet", "scale", "shop-asg", "--desired", "2", "--endpoint", scaled["ep"],
                           "--state", state)
    assert done.returncode == 0, done.stderr
    assert f"terminated {new}" in done.stdout
    assert new not in {i.name for i in inst.list_instances(state=state)}
    assert scaled["new_id"] not in _asg_ids(state)
    assert scaled["new_id"] not in _targets(state, scaled["arn"])
    info = scaled["call"]("GetOnPremisesInstance", {"instanceName": new})["instanceInfo"]
    assert info.get("deregisterTime")


@pytest.mark.parametrize(("args", "says"), [
    (["--desired", "+1", "no-such-asg"], "no Auto Scaling group 'no-such-asg'"),
    (["--desired", "lots", "shop-asg"], "--desired 'lots' is not N, +N or -N"),
    (["--desired", "-5", "shop-asg"], "--desired -5: the group has "),
    (["--desired", "1", "--", "-shop"], "'-shop' is not an Auto Scaling group name"),
    (["--desired", "+1", "--traffic", "ftp://127.0.0.1/", "shop-asg"], "expected an http:// or https:// URL"),
    (["--desired", "+1", "--traffic", "http://192.0.2.1/", "shop-asg"], "192.0.2.1 is not an address of this"),
])
def test_bad_scale_requests_are_refused_clearly(scaled, args, says):
    before = _asg_ids(scaled["state"])
    done = scaled["cdsim"]("fleet", "scale", "--endpoint", scaled["ep"], "--state", scaled["state"], *args)
    assert done.returncode == ExitStatus.USAGE, done.stdout + done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert _asg_ids(scaled["state"]) == before   # refused before anything was launched


HOLD = """
if [ "$LIFECYCLE_EVENT" = ValidateService ]; then   # until the test lets it go (bounded: 120 s)
    for i in $(seq 600); do [ -e /var/tmp/go ] && exit 0; sleep 0.2; done
    exit 1
fi
"""


def test_a_scale_out_during_a_deployment_gets_the_last_good_revision_then_a_follow_on(scaled):
    ep, call, cdsim, state, repo = scaled["ep"], scaled["call"], scaled["cdsim"], scaled["state"], scaled["repo"]
    (repo / "version.txt").write_text("B\n")
    with open(repo / "note.sh", "a") as f:
        f.write(HOLD)
    sha_b = commit(repo, "B")
    b = scaled["svc"].deploy("A", "G", repo, sha_b)
    known = {scaled["first"], scaled["auto"], b}

    def next_deployment() -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ids = call("ListDeployments", {"applicationName": "A", "deploymentGroupName": "G"})["deployments"]
            new = [d for d in ids if d not in known]
            if new:
                known.update(new)
                return new[0]
            time.sleep(0.2)
        raise AssertionError("no automatic deployment")

    try:
        scale = cdsim("fleet", "scale", "shop-asg", "--desired", "+1", "--endpoint", ep, "--state", state)
        assert scale.returncode == 0, scale.stderr
        new = scale.stdout.split("launched ", 1)[1].split()[0]
        launch = next_deployment()
        assert call("GetDeployment", {"deploymentId": b})["deploymentInfo"]["status"] == "InProgress"
        done = cdsim("wait", launch, "--endpoint", ep, "--interval", "0.2", "--timeout", "300")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        for status in inst.list_instances(state=state):
            inst.exec_in(inst.get(status.name, state=state), ["touch", "/var/tmp/go"])
    done = cdsim("wait", b, "--endpoint", ep, "--interval", "0.2", "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    follow = next_deployment()
    done = cdsim("wait", follow, "--endpoint", ep, "--interval", "0.2", "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    infos = {d: call("GetDeployment", {"deploymentId": d})["deploymentInfo"] for d in (b, launch, follow)}
    assert infos[launch]["creator"] == infos[follow]["creator"] == "autoscaling"
    assert infos[b]["creator"] == "user"
    assert infos[launch]["revision"]["gitHubLocation"]["commitId"] == scaled["sha"]   # A, the last good one
    assert infos[follow]["revision"]["gitHubLocation"]["commitId"] == sha_b
    new_id = imds.load(inst.get(new, state=state))["instance_id"]
    for d in (launch, follow):
        assert call("ListDeploymentInstances", {"deploymentId": d})["instancesList"] == [new_id]
    assert new_id not in call("ListDeploymentInstances", {"deploymentId": b})["instancesList"]
    assert scaled["svc"].read(new, "/srv/shop/version.txt") == "B\n"
    ran = [line.split() for line in scaled["svc"].read(new, "/var/log/asg-hooks.log").splitlines()]
    assert [e for e, d in ran if d == launch] == [   # no previous revision: no ApplicationStop
        "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService", "BeforeAllowTraffic",
        "AfterAllowTraffic"]
    assert [e for e, d in ran if d == follow] == [   # A was there: B's follow-on stops it first
        "BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop", "BeforeInstall", "AfterInstall",
        "ApplicationStart", "ValidateService", "BeforeAllowTraffic", "AfterAllowTraffic"]


@pytest.mark.parametrize(("text", "current", "wanted"), [("3", 2, 3), ("+1", 2, 3), ("-2", 2, 0), (" 0 ", 5, 0)])
def test_desired_counts_are_absolute_or_relative(text, current, wanted):
    from agent.commands.fleet import desired_count
    assert desired_count(text, current) == wanted


@pytest.mark.parametrize("text", ["", "+", "1.5", "--1", "12345", "-3"])
def test_desired_counts_that_make_no_sense_are_usage_errors(text):
    from agent.commands.fleet import desired_count
    from agent.errors import UsageError
    with pytest.raises(UsageError, match="--desired"):
        desired_count(text, 2)
