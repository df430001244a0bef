"""Instance metadata (IMDS) at 169.254.169.254 inside every private-network instance.

The instance tests run real instances and ask the service with real curl and botocore from inside; the
service's rules are also checked directly on agent.instance.imds.Metadata (its clock given, so expiry
needs no sleeping).
"""
from __future__ import annotations

import errno
import functools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_instance import unprivileged as unprivileged  # the fixture, used by name

import agent.instance as inst
from agent.instance import awsnet, imds
from tests import lib
from tests.lib import REPO, require_tool

needs_root = lib.needs_root("instances need root on this machine (CI runs as root)")
URL = "http://169.254.169.254"
TOKEN = f"curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' {URL}/latest/api/token"


cdsim = functools.partial(lib.cdsim, cwd=REPO, timeout=180)


def sh(instance: inst.Instance, script: str) -> subprocess.CompletedProcess[str]:
    out = os.path.join(instance.path, f"out-{uuid.uuid4().hex}")
    with open(out, "w+") as f:
        status = inst.exec_in(instance, ["/bin/sh", "-c", script], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
        f.seek(0)
        text = f.read()
    os.unlink(out)
    return subprocess.CompletedProcess(script, status, text, "")


def code(path: str, *headers: str, method: str = "GET") -> str:
    """A curl command printing only the status of one request."""
    hs = " ".join(f'-H "{h}"' for h in headers)   # double quotes: $T expands
    return f"curl -s -o /dev/null -w '%{{http_code}}\\n' -X {method} {hs} {URL}{path}"


@pytest.fixture
def curl() -> str:
    return require_tool("curl", "curl")


@needs_root
class TestInsideAnInstance:
    def test_token_flow_ttl_and_header_errors(self, state, curl):
        """PUT token then GET with it: 200 and the tree; bad or missing TTLs 400; no token 401 (required
        is the default); unknown path 404, and one that climbs out of the tree (sent as is, plain or
        percent-encoded) too; a GET on the token path 405; the host's network has no such address."""
        i = inst.create("meta")
        script = "; ".join([
            code("/latest/api/token", method="PUT"),
            code("/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 0", method="PUT"),
            code("/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 21601", method="PUT"),
            code("/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: ten", method="PUT"),
            code("/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 21600", "X-Forwarded-For: 1.2.3.4",
                 method="PUT"),
            code("/latest/api/token"),
            code("/latest/meta-data/instance-id"),
            f"T=$({TOKEN})",
            code("/latest/meta-data/no-such-thing", "X-aws-ec2-metadata-token: $T"),
            code("/latest/meta-data/../../../etc/passwd", "X-aws-ec2-metadata-token: $T").replace(
                "curl -s", "curl -s --path-as-is"),
            code("/latest/meta-data/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "X-aws-ec2-metadata-token: $T").replace(
                "curl -s", "curl -s --path-as-is"),
            f'curl -s -H "X-aws-ec2-metadata-token: $T" {URL}/latest/meta-data/placement/',
            "echo", f'curl -s -H "X-aws-ec2-metadata-token: $T" {URL}/latest/meta-data/instance-id',
            "echo", f'curl -s -H "X-aws-ec2-metadata-token: $T" {URL}/latest/dynamic/instance-identity/document',
        ])
        out = sh(i, script)
        assert out.returncode == 0, out.stdout
        lines = out.stdout.splitlines()
        assert lines[:10] == ["400", "400", "400", "400", "403", "405", "401", "404", "404", "404"], out.stdout
        assert lines[10:13] == ["availability-zone", "availability-zone-id", "region"]
        document = json.loads("\n".join(lines[14:]))
        identity = imds.load(i)
        assert lines[13] == identity["instance_id"] == document["instanceId"]
        assert document["region"] == "us-east-1" and document["privateIp"] == identity["local_ipv4"]
        with socket.socket() as s, pytest.raises(OSError) as refused:   # nothing changed on the host
            s.bind((imds.ADDRESS, 0))
        assert refused.value.errno == errno.EADDRNOTAVAIL

    def test_imdsv1_refused_when_required_and_answered_when_optional(self, state, curl):
        """Without a token: 401 while HttpTokens is required; after `metadata-options --http-tokens
        optional` (a running instance, applied at once) the same request gets the instance id."""
        i = inst.create("v1")
        assert sh(i, code("/latest/meta-data/instance-id")).stdout == "401\n"
        changed = cdsim("instance", "metadata-options", "v1", "--http-tokens", "optional")
        assert changed.returncode == 0, changed.stderr
        assert json.loads(changed.stdout)["InstanceMetadataOptions"]["HttpTokens"] == "optional"
        out = sh(i, f"curl -s {URL}/latest/meta-data/instance-id")
        assert out.stdout == imds.load(i)["instance_id"]
        disabled = cdsim("instance", "metadata-options", "v1", "--http-endpoint", "disabled")
        assert disabled.returncode == 0, disabled.stderr
        assert sh(i, code("/latest/meta-data/instance-id")).stdout == "403\n"

    def test_token_of_another_instance_and_expired_token_are_401(self, state, curl):
        """A token is valid only in the instance that issued it, and only for its TTL."""
        one, two = inst.create("one"), inst.create("two")
        token = sh(one, TOKEN).stdout
        assert len(token) > 20
        with_token = code("/latest/meta-data/instance-id", f"X-aws-ec2-metadata-token: {token}")
        assert sh(one, with_token).stdout == "200\n"
        assert sh(two, with_token).stdout == "401\n"
        short = sh(one, f"T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 1' {URL}/latest/api/token);"
                        " sleep 2; " + code("/latest/meta-data/instance-id", "X-aws-ec2-metadata-token: $T"))
        assert short.stdout == "401\n"

    def test_botocore_inside_takes_the_role_credentials_from_imds(self, state):
        """With no AWS variables and no config files, botocore inside finds the instance role's credentials
        (IMDSv2, as it does on EC2), the same the metadata tree shows, with an expiry in the future."""
        i = inst.create("creds")
        probe = ("import botocore.session, json; c = botocore.session.get_session().get_credentials(); "
                 "f = c.get_frozen_credentials(); print(json.dumps([c.method, f.access_key, f.token[:20]]))")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent/c",
               "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/s"}
        out = os.path.join(i.path, "probe.out")
        with open(out, "w+") as f:
            status = inst.exec_in(i, [sys.executable, "-c", probe], env=env, stdout=f, stderr=subprocess.STDOUT)
            f.seek(0)
            text = f.read()
        assert status == 0, text
        method, key, token = json.loads(text.splitlines()[-1])
        expected = imds.credentials(imds.load(i), time.time())
        assert method == "iam-role" and key == expected["AccessKeyId"] and expected["Token"].startswith(token)

    def test_failed_hook_after_imdsv1_request_names_the_cause_and_the_fix(self, state, tmp_path, curl):
        """A hook using IMDSv1 (curl -f, no token) fails; cdsim's failure output says the metadata service
        refused it for want of a token and names both fixes."""
        bundle = tmp_path / "bundle"
        (bundle / "scripts").mkdir(parents=True)
        (bundle / "appspec.yml").write_text(
            "version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n"
            "    - location: scripts/who.sh\n      timeout: 60\n")
        script = bundle / "scripts" / "who.sh"
        script.write_text("#!/bin/sh\nset -e\nID=$(curl -sf http://169.254.169.254/latest/meta-data/instance-id)\n"
                          "echo I am $ID\n")
        script.chmod(0o755)
        done = cdsim("deploy", str(bundle), "--instance", "legacy")
        assert done.returncode != 0, done.stdout
        assert "without a session token (IMDSv1)" in done.stderr, done.stderr
        assert "/latest/meta-data/instance-id" in done.stderr
        assert "cdsim instance metadata-options legacy --http-tokens optional" in done.stderr
        assert "X-aws-ec2-metadata-token" in done.stderr
        assert cdsim("instance", "metadata-options", "legacy", "--http-tokens", "optional").returncode == 0
        again = cdsim("deploy", str(bundle), "--instance", "legacy")
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"I am {imds.load(inst.get('legacy'))['instance_id']}" in again.stdout

    def test_user_data_and_tags_when_enabled(self, state, curl):
        """user-data appears once set; tags/instance only with InstanceMetadataTags enabled."""
        i = inst.create("tagged")
        user_data = Path(i.path) / "ud.sh"
        user_data.write_text("#!/bin/bash\necho hello\n")
        assert cdsim("instance", "metadata-options", "tagged", "--http-tokens", "optional",
                     "--user-data", str(user_data), "--tag", "Name=web", "--tag", "env=dev").returncode == 0
        assert sh(i, code("/latest/meta-data/tags/instance")).stdout == "404\n"
        assert cdsim("instance", "metadata-options", "tagged", "--instance-metadata-tags", "enabled").returncode == 0
        out = sh(i, f"curl -s {URL}/latest/meta-data/tags/instance; echo; curl -s {URL}/latest/meta-data/tags/"
                    f"instance/Name; echo; curl -s {URL}/latest/user-data; curl -s {URL}/latest/")
        assert out.stdout == "Name\nenv\nweb\n#!/bin/bash\necho hello\ndynamic\nmeta-data\nuser-data"


@lib.needs_root("creating a user with useradd and su to it needs root (CI runs as root)")
def test_unprivileged_users_instance_has_metadata_and_the_local_aws_too(unprivileged, curl):
    """An ordinary user's instance (a user namespace) gets the same: a token, its instance id, AWS names
    resolving to the local AWS, and HTTPS to it verified against the CA of that user's state."""
    assert unprivileged("create", "mine").returncode == 0
    out = unprivileged("exec", "mine", script=(
        f"T=$({TOKEN}); curl -s -H \"X-aws-ec2-metadata-token: $T\" {URL}/latest/meta-data/instance-id; echo; "
        "getent hosts sts.amazonaws.com; "
        "curl -s -w '\\n%{http_code}\\n' 'https://sts.amazonaws.com/?Action=GetCallerIdentity'"))
    logs = ""
    for log in ("aws/moto.log", "instances/mine/services.log"):
        try:
            with open(os.path.join(unprivileged.state, log), errors="replace") as f:
                logs += f"--- {log}\n{f.read()[-3000:]}"
        except OSError:
            continue
    assert out.returncode == 0, out.stdout + out.stderr + logs
    lines = out.stdout.split()
    assert lines[0].startswith("i-0") and lines[1] == awsnet.AWS_ADDRESS, out.stdout
    # TLS verified against the user's state's CA (000: no answer); 503 when the user's Python has no moto,
    # with the reason
    assert lines[-1].isdigit() and lines[-1] != "000", out.stdout
    assert lines[-1] != "503" or "the local AWS is not available" in out.stdout, out.stdout


class TestBadInput:
    @needs_root
    def test_host_network_instance_says_imds_is_unavailable_and_why(self, state):
        created = cdsim("instance", "create", "hostnet", "--network", "host")
        assert created.returncode == 0, created.stderr
        assert "169.254.169.254" in created.stderr and "host's network" in created.stderr
        refused = cdsim("instance", "metadata-options", "hostnet", "--http-tokens", "optional")
        assert refused.returncode == 2
        assert "not available in an instance with the host's network" in refused.stderr
        assert "Traceback" not in refused.stderr

    def test_bad_option_values_and_unreadable_user_data(self, state, tmp_path):
        inst.create("opts")
        bad = cdsim("instance", "metadata-options", "opts", "--http-tokens", "sometimes")
        assert bad.returncode == 2 and "invalid choice" in bad.stderr
        missing = cdsim("instance", "metadata-options", "opts", "--user-data", str(tmp_path / "nope"))
        assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr
        assert "Traceback" not in missing.stderr


class TestTheServiceRules:
    """agent.instance.imds.Metadata on its own: the same rules, with a clock the test sets."""

    def make(self, **options: str) -> tuple[imds.Metadata, list[float], imds.Identity]:
        identity = imds.new_identity("unit")
        identity["options"].update(options)   # type: ignore[typeddict-item]
        now = [1_800_000_000.0]
        return imds.Metadata(lambda: identity, clock=lambda: now[0]), now, identity

    def token(self, service: imds.Metadata, ttl: str = "60") -> str:
        reply = service.handle("PUT", "/latest/api/token", {imds.TTL_HEADER: ttl})
        assert reply.status == 200 and reply.headers[imds.TTL_HEADER] == ttl
        return reply.body

    def test_expiry_other_instances_tokens_and_listings(self):
        service, now, identity = self.make()
        token = self.token(service, "10")
        get = lambda path, t=token: service.handle("GET", path, {imds.TOKEN_HEADER: t})  # noqa: E731
        assert get("/latest/meta-data/instance-id").body == identity["instance_id"]
        assert get("/latest/meta-data/iam/").body == "info\nsecurity-credentials/"
        assert get("/latest/meta-data/iam/security-credentials/").body == imds.ROLE
        creds = json.loads(get(f"/latest/meta-data/iam/security-credentials/{imds.ROLE}").body)
        assert creds["Code"] == "Success" and creds["AccessKeyId"].startswith("ASIA")
        assert creds["Expiration"] > creds["LastUpdated"]
        assert get("/latest/meta-data/../../etc/passwd").status == 404
        assert get("/latest/meta-data/instance-id/more").status == 404
        assert get("/2009-04-04/meta-data/instance-id").status == 200
        other, _, _ = self.make()
        assert get("/latest/meta-data/instance-id", self.token(other)).status == 401
        now[0] += 11
        assert get("/latest/meta-data/instance-id").status == 401
        assert service.handle("GET", "/", {}).status == 401
        assert service.handle("POST", "/latest/meta-data/", {imds.TOKEN_HEADER: self.token(service)}).status == 405

    def test_optional_tokens_still_refuse_a_bad_token_and_refusals_are_told(self):
        told: list[tuple[str, str]] = []
        identity = imds.new_identity("unit")
        identity["options"]["HttpTokens"] = "optional"
        service = imds.Metadata(lambda: identity, lambda path, why: told.append((path, why)))
        assert service.handle("GET", "/latest/meta-data/ami-id", {}).body == identity["ami_id"]
        assert service.handle("GET", "/latest/meta-data/ami-id", {imds.TOKEN_HEADER: "forged"}).status == 401
        assert told == [("/latest/meta-data/ami-id", "bad-token")]

