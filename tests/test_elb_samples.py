"""AWS's own load-balancer hooks (aws-codedeploy-samples `load-balancing/elb-v2` and `load-balancing/elb`),
unchanged but for what their README tells users to edit, deployed by `cdsim server` to one 3-instance
fleet (`cdsim fleet up --target-group --load-balancer`) behind a target group and a Classic Load
Balancer of the local AWS, then in an Auto Scaling group.

The samples' scripts are read from ../shared/thirdparty (see its README) and copied into one git revision,
each sample in its own folder, as README step 3 says ("Copy the .sh files ... into your application
source"); the edits are the ones the READMEs name: the target group list (elb-v2), the ELB list (elb) and
the application's appspec.yml (step 4: deregister_from_elb.sh in ApplicationStop, register_with_elb.sh
in ApplicationStart; both samples' here, and a ValidateService hook). The samples' stop_httpd.sh and
start_httpd.sh are placeholders for the user's own daemon; the application's own (and validate.sh) note
what the target group, the load balancer and Auto Scaling say at that moment (one boto3 process).

One module fixture makes the fleet and runs three deployments, which the tests then read:
1. AllAtOnce, so that the instances have a last successful revision whose ApplicationStop hooks the next
   deployment runs (its appspec has only those: nothing else of it would run again);
2. OneAtATime: both samples take each instance out of the target group and the load balancer;
3. OneAtATime, with the instances attached to an Auto Scaling group: the samples take the standby path.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import agent.instance as inst
from agent.instance import imds
from tests.lib import CLI, REPO, needs_root, needs_tool, require_tool

SAMPLES = REPO.parent / "shared" / "thirdparty" / "aws-codedeploy-samples" / "load-balancing"
AWS = os.path.join(os.path.dirname(sys.executable), "aws")
pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
APPSPEC = """version: 0.0
os: linux
files:
  - source: /
    destination: /tmp/elb-test
hooks:
  ApplicationStop:
    - location: elb-v2/deregister_from_elb.sh
    - location: elb/deregister_from_elb.sh
    - location: stop_httpd.sh
  ApplicationStart:
    - location: start_httpd.sh
    - location: elb/register_with_elb.sh
    - location: elb-v2/register_with_elb.sh
  ValidateService:
    - location: validate.sh
"""
# the user's own daemon would be stopped/started here; this one notes what AWS says about the instances
OBSERVE = """#!/bin/sh
exec {python} - {event} <<'EOF'
import json, os, sys, urllib.request
import boto3
aws = boto3.session.Session(region_name="us-east-1")
me = urllib.request.urlopen("http://169.254.169.254/latest/meta-data/instance-id", timeout=10).read().decode()
ids = open("/tmp/elb-test/ids.txt").read().split()
arn = aws.client("elbv2").describe_target_groups(Names=["web-tg"])["TargetGroups"][0]["TargetGroupArn"]
tg = aws.client("elbv2").describe_target_health(TargetGroupArn=arn, Targets=[{{"Id": i, "Port": 80}} for i in ids])
elb = aws.client("elb").describe_instance_health(LoadBalancerName="web-elb",
                                                Instances=[{{"InstanceId": i}} for i in ids])
asg = aws.client("autoscaling").describe_auto_scaling_instances(InstanceIds=[me])["AutoScalingInstances"]
note = {{"event": sys.argv[1], "me": me, "deployment": os.environ["DEPLOYMENT_ID"],
         "tg": {{t["Target"]["Id"]: t["TargetHealth"]["State"] for t in tg["TargetHealthDescriptions"]}},
         "elb": {{s["InstanceId"]: s["State"] for s in elb["InstanceStates"]}},
         "asg": asg[0]["LifecycleState"] if asg else None}}
with open("/var/log/elb-observe.log", "a") as log:
    log.write(json.dumps(note) + "\\n")
EOF
"""


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _revisions(tmp: Path, ids: list[str]) -> list[dict[str, Any]]:
    """The application: both samples (README edits only), the observers, the instance ids; two commits,
    the first with only the ApplicationStop hooks (all that the next deployment runs of it), the second
    whole."""
    repo = tmp / "repo"
    repo.mkdir()
    for sample, edit in (("elb-v2", ('TARGET_GROUP_LIST=""', 'TARGET_GROUP_LIST="web-tg"')),
                         ("elb", ('ELB_LIST=""', 'ELB_LIST="web-elb"'))):
        shutil.copytree(SAMPLES / sample, repo / sample)
        common = repo / sample / "common_functions.sh"
        text = common.read_text()
        assert edit[0] in text, f"{common}: the README's list is not where it was"
        common.write_text(text.replace(edit[0], edit[1], 1))
    (repo / "appspec.yml").write_text(APPSPEC.split("  ApplicationStart:")[0])
    for event, script in (("stop", "stop_httpd.sh"), ("start", "start_httpd.sh"), ("validate", "validate.sh")):
        (repo / script).write_text(OBSERVE.format(python=sys.executable, event=event))
    (repo / "ids.txt").write_text("\n".join(ids) + "\n")
    for script in repo.rglob("*.sh"):
        script.chmod(0o755)
    _git(repo, "init", "-q")
    revisions = []
    for message in ("ApplicationStop hooks only", "the application"):
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", message)
        revisions.append({"revisionType": "GitHub",
                          "gitHubLocation": {"repository": str(repo), "commitId": _git(repo, "rev-parse", "HEAD")}})
        (repo / "appspec.yml").write_text(APPSPEC)
    return revisions


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fleet, its three deployments and what the observers noted; everything stopped and destroyed
    before the tests read it."""
    for tool in ("git", "curl", "bash"):
        require_tool(tool, tool)
    if not SAMPLES.is_dir():
        pytest.skip(f"needs the shared third-party samples at {SAMPLES}")
    from agent.commands.fleet import fleet_up
    from agent.instance import localaws
    from agent.service.client import call
    from agent.service.server import Service

    tmp = tmp_path_factory.mktemp("elb")
    state = str(tmp / "state")
    out: dict[str, Any] = {"state": state, "timings": {}}
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CDSIM_STATE_DIR", state)
        service = Service(state, s3=False, github_root=[str(tmp)]).start()
        try:
            ep = service.endpoint
            up = subprocess.run([*CLI, "fleet", "up", "--tag", "Name=Web", "--application", "A",
                                 "--deployment-group", "G", "--deployment-config", "CodeDeployDefault.OneAtATime",
                                 "--target-group", "web-tg", "--load-balancer", "web-elb", "--state", state,
                                 "--endpoint", ep], capture_output=True, text=True, timeout=300, cwd=REPO,
                                check=False)
            out["fleet_up"] = up
            assert up.returncode == 0, up.stdout + up.stderr
            names = [f"web-{n}" for n in (1, 2, 3)]
            ids = {}
            for name in names:
                instance = inst.get(name, state=state)
                # the samples ask the metadata service with IMDSv1: allowed, as their README's era expects
                imds.modify_options(instance, http_tokens="optional")
                ids[name] = imds.load(instance)["instance_id"]
                # README, "Installing the Scripts", step 1: install the AWS CLI on all your instances
                with open(tmp / f"aws-{name}", "w+") as wrapper:
                    wrapper.write(f'#!/bin/sh\nexec {AWS} "$@"\n')
                    wrapper.seek(0)
                    assert inst.exec_in(instance, ["/bin/sh", "-c", "cat > /usr/local/bin/aws && "
                                                   "chmod 755 /usr/local/bin/aws"], stdin=wrapper) == 0
            out["ids"] = ids
            elb = localaws.query(state, "elasticloadbalancing", {
                "Version": "2012-06-01", "Action": "DescribeLoadBalancers", "LoadBalancerNames.member.1": "web-elb"})
            out["elb_members"] = sorted(e.text or "" for e in elb.iterfind(".//Instances/member/InstanceId"))
            health = localaws.query(state, "elasticloadbalancing", {
                "Version": "2012-06-01", "Action": "DescribeInstanceHealth", "LoadBalancerName": "web-elb"})
            out["elb_health"] = {e.findtext("InstanceId"): e.findtext("State")
                                 for e in health.iterfind(".//InstanceStates/member")}
            out["timings"]["fleet"] = time.monotonic() - started
            setup, revision = _revisions(tmp, list(ids.values()))

            def deploy(config: str, revision: dict[str, Any] = revision) -> str:
                begun = time.monotonic()
                did: str = call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "G",
                                                         "revision": revision,
                                                         "deploymentConfigName": config})["deploymentId"]
                deadline = time.monotonic() + 900
                while True:
                    info = call(ep, "GetDeployment", {"deploymentId": did})["deploymentInfo"]
                    if info["status"] in ("Succeeded", "Failed", "Stopped") or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                out["timings"][did] = time.monotonic() - begun
                assert info["status"] == "Succeeded", (info, _scripts_logs(state, names))
                return did

            out["setup"] = deploy("CodeDeployDefault.AllAtOnce", setup)
            out["balanced"] = deploy("CodeDeployDefault.OneAtATime")
            # the aws CLI against the server (botocore parses what it answers)
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(AWS_ENDPOINT_URL=ep, AWS_ACCESS_KEY_ID=service.credentials.access_key,
                       AWS_SECRET_ACCESS_KEY=service.credentials.secret_key, AWS_DEFAULT_REGION="us-east-1",
                       AWS_CONFIG_FILE=str(tmp / "no-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-creds"))

            def aws(*args: str) -> Any:
                done = subprocess.run([AWS, "deploy", *args, "--deployment-id", out["balanced"], "--output",
                                       "json"], env=env, capture_output=True, text=True, timeout=120, check=False)
                assert done.returncode == 0, done.stderr
                return json.loads(done.stdout)

            out["targets"] = {
                "list": aws("list-deployment-instances")["instancesList"],
                "batch": aws("batch-get-deployment-targets", "--target-ids", *ids.values()),
                "by_name": call(ep, "GetDeploymentInstance", {"deploymentId": out["balanced"],
                                                              "instanceId": "web-1"})["instanceSummary"]}
            out["ec2"] = localaws.query(state, "ec2", {"Version": "2016-11-15", "Action": "DescribeInstances"})
            fleet_up(ep, count=3, tag="Name=Web", state=state, auto_scaling_group="web-asg")
            out["standby"] = deploy("CodeDeployDefault.OneAtATime")
            out["notes"] = {name: _notes(state, name) for name in names}
        finally:
            service.close()
            for status in inst.list_instances(state=state):
                inst.destroy(inst.get(status.name, state=state))
    out["timings"]["total"] = time.monotonic() - started
    print("elb samples, seconds:", json.dumps({k: round(v, 1) for k, v in out["timings"].items()}))
    return out


def _notes(state: str, name: str) -> list[dict[str, Any]]:
    with open(os.path.join(inst.get(name, state=state).path, "observe.txt"), "w+") as f:
        inst.exec_in(inst.get(name, state=state), ["cat", "/var/log/elb-observe.log"], stdout=f)
        f.seek(0)
        return [json.loads(line) for line in f.read().splitlines()]


def _scripts_logs(state: str, names: list[str]) -> str:
    text = []
    for name in names:
        with open(os.path.join(inst.get(name, state=state).path, "scripts.txt"), "w+") as f:
            inst.exec_in(inst.get(name, state=state), ["sh", "-c", "tail -n 60 /opt/codedeploy-agent/deployment-root/"
                                                       "*/*/logs/scripts.log"], stdout=f, stderr=subprocess.STDOUT)
            f.seek(0)
            text.append(f"== {name}\n{f.read()}")
    return "\n".join(text)


def _of(fleet: dict[str, Any], deployment: str, event: str) -> dict[str, dict[str, Any]]:
    """Each instance's note of ``event`` in the deployment ``deployment`` (its one note)."""
    found = {}
    for name, notes in fleet["notes"].items():
        mine = [n for n in notes if n["deployment"] == fleet[deployment] and n["event"] == event]
        assert len(mine) == 1, notes
        assert mine[0]["me"] == fleet["ids"][name]
        found[name] = mine[0]
    return found


def test_fleet_up_puts_the_instances_behind_a_target_group_and_a_classic_load_balancer(fleet):
    """`fleet up --target-group --load-balancer` made both (they were missing) with the three EC2 instances."""
    assert "in target group web-tg; behind load balancer web-elb" in fleet["fleet_up"].stdout
    assert fleet["elb_members"] == sorted(fleet["ids"].values())
    assert fleet["elb_health"] == dict.fromkeys(fleet["ids"].values(), "InService")


def test_elb_v2_sample_takes_each_instance_out_of_its_target_group_one_at_a_time(fleet):
    """Before each instance's ApplicationStop (after deregister_from_elb.sh) it is unused or draining in the
    target group and the other two are healthy; after its ApplicationStart (register_with_elb.sh) it is
    healthy again."""
    stops, validates = _of(fleet, "balanced", "stop"), _of(fleet, "balanced", "validate")
    for name, me in fleet["ids"].items():
        assert stops[name]["tg"][me] in ("unused", "draining"), stops[name]
        assert all(s == "healthy" for iid, s in stops[name]["tg"].items() if iid != me), stops[name]
        assert validates[name]["tg"][me] == "healthy", validates[name]


def test_classic_elb_sample_takes_each_instance_out_of_its_load_balancer_one_at_a_time(fleet):
    """The same with the Classic Load Balancer (`aws elb describe-instance-health`): OutOfService during the
    instance's ApplicationStop and still at its ApplicationStart (before register_with_elb.sh), the other two
    InService meanwhile, InService again at ValidateService."""
    stops, starts = _of(fleet, "balanced", "stop"), _of(fleet, "balanced", "start")
    validates = _of(fleet, "balanced", "validate")
    for name, me in fleet["ids"].items():
        for note in (stops[name], starts[name]):
            assert note["elb"][me] == "OutOfService", note
            assert all(s == "InService" for iid, s in note["elb"].items() if iid != me), note
        assert validates[name]["elb"][me] == "InService", validates[name]


def test_in_an_auto_scaling_group_the_samples_use_standby(fleet):
    """With the instances in an Auto Scaling group the samples take the standby path: Standby during
    ApplicationStop, InService again after ApplicationStart."""
    stops, validates = _of(fleet, "standby", "stop"), _of(fleet, "standby", "validate")
    for name in fleet["ids"]:
        assert stops[name]["asg"] == "Standby", stops[name]
        assert validates[name]["asg"] == "InService", validates[name]


def test_deployment_instances_are_the_ec2_instance_ids(fleet):
    """`aws deploy list-deployment-instances` and `batch-get-deployment-targets` name the fleet by the EC2 ids of
    `aws ec2 describe-instances` and the identity document (ARNs arn:aws:ec2:...); the registered name still
    finds an instance."""
    ids = set(fleet["ids"].values())
    described = {e.text for e in fleet["ec2"].iterfind(".//instancesSet/item/instanceId")}
    assert ids <= described
    assert set(fleet["targets"]["list"]) == ids
    targets = [t["instanceTarget"] for t in fleet["targets"]["batch"]["deploymentTargets"]]
    assert {t["targetId"] for t in targets} == ids
    assert {t["targetArn"] for t in targets} == {f"arn:aws:ec2:us-east-1:{imds.ACCOUNT}:instance/{i}" for i in ids}
    assert all(not k.startswith("_") for t in targets for k in t)
    assert fleet["targets"]["by_name"]["instanceId"] == fleet["ids"]["web-1"]


def test_fleet_with_the_host_network_is_refused_before_anything_is_made(state):
    done = subprocess.run([*CLI, "fleet", "up", "--tag", "Name=Web", "--network", "host",
                           "--load-balancer", "web-elb", "--endpoint", "http://127.0.0.1:9"], capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 2, done.stderr
    assert "--target-group, --load-balancer and --auto-scaling-group need instances with a private network" \
        in done.stderr
    assert "Traceback" not in done.stderr and inst.list_instances(state=state) == []
