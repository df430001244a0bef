"""AWS's own load-balancer hooks (aws-codedeploy-samples `load-balancing/elb-v2`), unchanged but for what
their README tells users to edit, deployed OneAtATime by `cdsim server` to a 3-instance fleet behind a
target group of the local AWS (`fleet up --target-group`).

The sample's scripts are read from ../shared/thirdparty (see its README); the test copies them into a
git revision and edits only the target group list and the two placeholder scripts that the sample
leaves for the user's own daemon (stop_httpd.sh, start_httpd.sh), which here record what
`aws elbv2 describe-target-health` says at that moment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agent.instance as inst
from agent.instance import imds
from tests.lib import CLI, REPO, needs_root, needs_tool, require_tool

SAMPLE = REPO.parent / "shared" / "thirdparty" / "aws-codedeploy-samples" / "load-balancing" / "elb-v2"
AWS = os.path.join(os.path.dirname(sys.executable), "aws")
pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
OBSERVE = """#!/bin/bash
# the user's own daemon would be stopped/started here; this one notes what the target group says
ME=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)
ARN=$(aws --region us-east-1 elbv2 describe-target-groups --names web-tg \\
    --query 'TargetGroups[0].TargetGroupArn' --output text)
STATES=$(aws --region us-east-1 elbv2 describe-target-health --target-group-arn "$ARN" \\
    --targets $(for i in $(cat /tmp/elb-test/ids.txt); do printf 'Id=%s,Port=80 ' "$i"; done) \\
    --query 'TargetHealthDescriptions[].[Target.Id,TargetHealth.State]' --output text | tr '\\t\\n' '= ')
echo "{event} $ME $STATES" >> /var/log/elb-observe.log
exit 0
"""


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


ASG_STATE = """#!/bin/bash
# the user's own daemon would be stopped/started here; this one notes the instance's Auto Scaling state
ME=$(curl -s http://169.254.169.254/latest/meta-data/instance-id)
STATE=$(aws --region us-east-1 autoscaling describe-auto-scaling-instances --instance-ids "$ME" \\
    --query 'AutoScalingInstances[0].LifecycleState' --output text)
echo "{event} $ME $ME=$STATE" >> /var/log/elb-observe.log
exit 0
"""


def deploy_sample_twice(state: str, tmp_path: Path, observer: str, **fleet_options: str) -> tuple[dict, dict]:
    """A 3-instance fleet (fleet up with ``fleet_options``), the elb-v2 sample with ``observer`` as its
    placeholder scripts and a ValidateService hook, deployed twice OneAtATime; returns the instance ids and
    what each instance's observer noted, line by line."""
    require_tool("git", "git")
    require_tool("curl", "curl")
    require_tool("bash", "bash")
    if not SAMPLE.is_dir():
        pytest.skip(f"needs the shared third-party samples at {SAMPLE}")
    from agent.commands.fleet import fleet_up
    from agent.service.client import call
    from agent.service.server import Service

    service = Service(state, s3=False, github_root=[str(tmp_path)]).start()
    try:
        ep = service.endpoint
        names = fleet_up(ep, count=3, tag="Name=Web", application="A", group="G",
                         config="CodeDeployDefault.OneAtATime", state=state, **fleet_options)
        ids = {}
        for name in names:
            instance = inst.get(name, state=state)
            # the sample asks the metadata service with IMDSv1: allowed, as its README's era expects
            imds.modify_options(instance, http_tokens="optional")
            ids[name] = imds.load(instance)["instance_id"]
            # README, "Installing the Scripts", step 1: install the AWS CLI on all your instances
            wrapper = tmp_path / f"aws-{name}"
            wrapper.write_text(f'#!/bin/sh\nexec {AWS} "$@"\n')
            with open(wrapper) as source:
                assert inst.exec_in(instance, ["/bin/sh", "-c", "cat > /usr/local/bin/aws && "
                                               "chmod 755 /usr/local/bin/aws"], stdin=source) == 0
        repo = tmp_path / "repo"
        shutil.copytree(SAMPLE, repo)
        common = repo / "common_functions.sh"
        common.write_text(common.read_text().replace('TARGET_GROUP_LIST=""', 'TARGET_GROUP_LIST="web-tg"', 1))
        (repo / "stop_httpd.sh").write_text(observer.format(event="stop"))
        (repo / "start_httpd.sh").write_text(observer.format(event="start"))
        (repo / "validate.sh").write_text(observer.format(event="validate"))
        (repo / "ids.txt").write_text("\n".join(ids.values()) + "\n")
        appspec = (repo / "appspec.yml").read_text()
        (repo / "appspec.yml").write_text(appspec + "  ValidateService:\n    - location: validate.sh\n")
        for script in repo.glob("*.sh"):
            script.chmod(0o755)
        _git(repo, "init", "-q")
        revisions = []
        for n in (1, 2):
            (repo / "version.txt").write_text(f"{n}\n")
            _git(repo, "add", "-A")
            _git(repo, "commit", "-qm", f"v{n}")
            revisions.append(_git(repo, "rev-parse", "HEAD"))
        for sha in revisions:   # ApplicationStop runs the previous revision's scripts: the second deployment
            revision = {"revisionType": "GitHub", "gitHubLocation": {"repository": str(repo), "commitId": sha}}
            did = call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "G",
                                                "revision": revision})["deploymentId"]
            deadline = time.monotonic() + 1200
            while True:
                info = call(ep, "GetDeployment", {"deploymentId": did})["deploymentInfo"]
                if info["status"] in ("Succeeded", "Failed", "Stopped") or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert info["status"] == "Succeeded", info
        logs = {}
        for name in names:
            out = tmp_path / f"log-{name}"
            with open(out, "w+") as f:
                inst.exec_in(inst.get(name, state=state), ["cat", "/var/log/elb-observe.log"], stdout=f)
                f.seek(0)
                logs[name] = [line.split() for line in f.read().splitlines()]
    finally:
        service.close()
    return ids, logs


def noted(lines: list[list[str]], event: str) -> list[dict[str, str]]:
    return [dict(s.split("=") for s in line[2:]) for line in lines if line[0] == event]


def test_elb_v2_sample_takes_each_instance_out_of_its_target_group_one_at_a_time(state, tmp_path):
    """Before each instance's ApplicationStop (after deregister_from_elb.sh) it is unused in the target
    group and the other two are healthy; after its ApplicationStart (register_with_elb.sh) it is healthy."""
    ids, logs = deploy_sample_twice(state, tmp_path, OBSERVE, target_group="web-tg")
    for name, lines in logs.items():
        me = ids[name]
        stops, validates = noted(lines, "stop"), noted(lines, "validate")
        assert len(stops) == 1 and len(validates) == 2, lines
        assert all(line[1] == me for line in lines)
        assert stops[0][me] in ("unused", "draining"), lines
        assert all(state_ == "healthy" for iid, state_ in stops[0].items() if iid != me), lines
        assert validates[-1][me] == "healthy", lines


def test_elb_v2_sample_in_an_auto_scaling_group_uses_standby(state, tmp_path):
    """With the instances in an Auto Scaling group the sample takes the standby path: Standby during
    ApplicationStop, InService again after ApplicationStart."""
    ids, logs = deploy_sample_twice(state, tmp_path, ASG_STATE, auto_scaling_group="web-asg")
    for name, lines in logs.items():
        me = ids[name]
        stops, validates = noted(lines, "stop"), noted(lines, "validate")
        assert len(stops) == 1 and len(validates) == 2, lines
        assert stops[0][me] == "Standby", lines
        assert validates[-1][me] == "InService", lines


def test_fleet_target_group_with_the_host_network_is_refused_before_anything_is_made(state):
    done = subprocess.run([*CLI, "fleet", "up", "--tag", "Name=Web", "--network", "host",
                           "--target-group", "web-tg", "--endpoint", "http://127.0.0.1:9"], capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False)
    assert done.returncode == 2, done.stderr
    assert "--target-group and --auto-scaling-group need instances with a private network" in done.stderr
    assert "Traceback" not in done.stderr and inst.list_instances(state=state) == []
