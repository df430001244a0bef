"""AWS inside instances: AWS's endpoint names resolve to the state's local AWS (moto), over TLS the
instance trusts, with the credentials the instance metadata hands out; nothing reaches a real endpoint.

Real instances, the real aws CLI (the test extra's, by its full path: the hook's PATH is the agent's)
and boto3 inside, real deployments with hooks.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from test_imds import sh  # one way to run a shell line inside an instance

import agent.instance as inst
from agent.instance import awsnet, imds
from tests import lib
from tests.lib import REPO, needs_root, needs_tool, require_tool

AWS = os.path.join(os.path.dirname(sys.executable), "aws")
pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
# what a hook's environment holds: no AWS_* variable, no credentials file
CLEAN = f"env -i PATH=/usr/bin:/bin HOME=/nonexistent {AWS} --region us-east-1"


cdsim = functools.partial(lib.cdsim, cwd=REPO, timeout=300)


def bundle(tmp_path: Path, script: str) -> Path:
    root = tmp_path / f"bundle-{uuid.uuid4().hex[:6]}"
    (root / "scripts").mkdir(parents=True)
    (root / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n"
                                      "    - location: scripts/hook.sh\n      timeout: 120\n")
    hook = root / "scripts" / "hook.sh"
    hook.write_text("#!/bin/sh\nset -e\n" + script)
    hook.chmod(0o755)
    return root


class TestAwsInsideInstances:
    def test_a_hook_reads_the_ssm_parameter_the_test_put_with_the_role_credentials(self, state, tmp_path):
        """The test puts a parameter (aws CLI inside the instance); a deployment's hook, unchanged, reads
        it with `aws ssm get-parameter` and asks STS who it is: no AWS_* variable in its environment."""
        i = inst.create("ssm")
        put = sh(i, f"{CLEAN} ssm put-parameter --name /app/db-host --value db.internal --type String")
        assert put.returncode == 0, put.stdout
        b = bundle(tmp_path, f"test -z \"$(env | grep '^AWS_')\"\n"
                             f"{AWS} --region us-east-1 ssm get-parameter --name /app/db-host "
                             "--query Parameter.Value --output text\n"
                             f"{AWS} sts get-caller-identity --region us-east-1 --query Account --output text\n")
        done = cdsim("deploy", str(b), "--instance", "ssm")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "db.internal" in done.stdout and imds.ACCOUNT in done.stdout

    def test_aws_names_resolve_to_the_local_aws_and_nothing_else_resolves(self, state, curl_tool):
        """ssm.us-east-1.amazonaws.com (and any *.amazonaws.com) is the local address, reached over TLS the
        instance trusts (curl verifies without -k); other names do not resolve; the instance's /etc is
        unchanged in its diff (the resolver and CA bundles cdsim adds are not the instance's changes)."""
        i = inst.create("names")
        out = sh(i, "getent hosts ssm.us-east-1.amazonaws.com; getent hosts my-bucket.s3.eu-west-1.amazonaws.com;"
                    " getent hosts example.com || echo no-example;"
                    " curl -s -o /dev/null -w '%{http_code}\\n' https://sts.amazonaws.com/?Action=GetCallerIdentity")
        lines = out.stdout.split()
        assert lines[0] == awsnet.AWS_ADDRESS and lines[1] == "ssm.us-east-1.amazonaws.com", out.stdout
        assert lines[2] == awsnet.AWS_ADDRESS and "no-example" in lines, out.stdout
        assert lines[-1].isdigit() and lines[-1] != "000", out.stdout   # TLS verified; moto answered
        assert [c.path for c in inst.diff(i) if c.path.startswith("/etc")] == []

    def test_boto3_inside_uses_secrets_manager_s3_and_the_ec2_family(self, state):
        """boto3 with the instance's credentials: a secret, an S3 object, and the EC2, ELB, ELBv2 and Auto
        Scaling APIs answer (the services the load-balancer sample hooks call)."""
        i = inst.create("boto")
        script = ("import boto3, json\n"
                  "s = boto3.session.Session(region_name='us-east-1')\n"
                  "sm = s.client('secretsmanager'); sm.create_secret(Name='db', SecretString='pw')\n"
                  "s3 = s.client('s3'); s3.create_bucket(Bucket='bucket-one')\n"
                  "s3.put_object(Bucket='bucket-one', Key='k', Body=b'v')\n"
                  "print(json.dumps([sm.get_secret_value(SecretId='db')['SecretString'],\n"
                  "  s3.get_object(Bucket='bucket-one', Key='k')['Body'].read().decode(),\n"
                  "  s.client('ec2').describe_instances()['ResponseMetadata']['HTTPStatusCode'],\n"
                  "  s.client('elbv2').describe_target_groups()['ResponseMetadata']['HTTPStatusCode'],\n"
                  "  s.client('elb').describe_load_balancers()['ResponseMetadata']['HTTPStatusCode'],\n"
                  "  s.client('autoscaling').describe_auto_scaling_groups()['ResponseMetadata']['HTTPStatusCode'],\n"
                  "  s.client('sts').get_caller_identity()['Account']]))\n")
        probe = Path(i.path) / "probe.py"
        probe.write_text(script)
        out = sh(i, f"env -i PATH=/usr/bin:/bin HOME=/nonexistent {sys.executable} {probe}")
        assert out.returncode == 0, out.stdout
        assert json.loads(out.stdout.splitlines()[-1]) == ["pw", "v", 200, 200, 200, 200, imds.ACCOUNT]


@pytest.fixture
def curl_tool() -> str:
    return require_tool("curl", "curl")


class TestInstancesAreEc2Instances:
    def test_identity_document_matches_describe_instances_with_tags_address_and_state(self, state, curl_tool):
        """Each private instance of the state is an EC2 instance of the local AWS: the identity document's
        instanceId is the one `aws ec2 describe-instances` lists under the instance's tags, with the
        private address the metadata reports; a stopped instance reads stopped."""
        web, idle = inst.create("web-1"), inst.create("idle-1")
        assert cdsim("instance", "metadata-options", "web-1", "--tag", "fleet=demo").returncode == 0
        assert sh(idle, "true").returncode == 0
        inst.stop(idle)
        token = "T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)"
        out = sh(web, f"{token}; curl -s -H \"X-aws-ec2-metadata-token: $T\" "
                      "http://169.254.169.254/latest/dynamic/instance-identity/document > /tmp/doc.json && "
                      f"{CLEAN} ec2 describe-instances --output json > /tmp/ec2.json && cat /tmp/doc.json && "
                      "echo '#####' && cat /tmp/ec2.json")
        assert out.returncode == 0, out.stdout
        doc_text, ec2_text = out.stdout.split("#####")
        doc = json.loads(doc_text)
        listed = {i["InstanceId"]: i for r in json.loads(ec2_text)["Reservations"] for i in r["Instances"]}
        with open(os.path.join(state, "aws", "moto.log"), encoding="utf-8", errors="replace") as log:
            assert doc["instanceId"] in listed, (doc, listed, log.read()[-3000:])
        me = listed[doc["instanceId"]]
        assert {t["Key"]: t["Value"] for t in me["Tags"]} == {"Name": "web-1", "fleet": "demo"}
        assert me["PrivateIpAddress"] == doc["privateIp"] and me["State"]["Name"] == "running"
        assert me["Placement"]["AvailabilityZone"] == doc["availabilityZone"]
        other = listed[imds.load(idle)["instance_id"]]
        assert other["State"]["Name"] == "stopped"


EC2_STATES = {"i-up": "running", "i-off": "stopped", "i-new": "pending", "i-gone": "terminated"}


class TestClassicElbInstanceHealth:
    """DescribeInstanceHealth as AWS answers it (agent.instance.awsfixes, the rule; the `load-balancing/elb`
    sample in test_elb_samples runs it for real): moto says Unknown for an instance no longer registered."""

    def states(self, asked: list[str], registered: list[str]):
        from agent.instance import awsfixes
        return awsfixes.instance_states(asked, registered, EC2_STATES.get)

    def test_a_deregistered_instance_is_out_of_service_for_the_load_balancer(self):
        from agent.instance import awsfixes
        assert self.states(["i-up"], []) == [{"InstanceId": "i-up", "State": "OutOfService", "ReasonCode": "ELB",
                                              "Description": awsfixes.NOT_REGISTERED}]

    def test_registered_instances_by_their_ec2_state_and_terminated_ones_left_out(self):
        got = {s["InstanceId"]: (s["State"], s["ReasonCode"], s["Description"])
               for s in self.states([], ["i-up", "i-off", "i-new", "i-gone"])}
        assert got == {"i-up": ("InService", "N/A", "N/A"),
                       "i-off": ("OutOfService", "Instance", "Instance is in stopped state."),
                       "i-new": ("OutOfService", "Instance", "Instance is in pending state.")}

    def test_an_instance_ec2_does_not_know_is_named(self):
        assert self.states(["i-up", "i-nope"], ["i-up"]) == "i-nope"
