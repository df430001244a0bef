"""A local CodeDeploy service with a fleet, for the tests that deploy through it (traffic control, the
rehearsal, Auto Scaling, AWS's load-balancer samples, blue/green): one copy of their set-up.

:func:`local_service` starts cdsim's service in this process on a state folder of its own (with
``CDSIM_STATE_DIR`` pointing there while it runs) and, at the end, closes it and destroys every instance
of that state. The :class:`LocalService` it yields holds what the tests use: the endpoint, an environment
for the real ``aws`` CLI and for ``cdsim`` subprocesses (the service's credentials, no user AWS files),
and small helpers: the aws CLI (JSON out), cdsim, the service's API, the local AWS's query API, a git
revision repository, commands inside an instance.

Unlike the rest of ``tests.lib`` (imported by every test), this module imports cdsim itself (lazily, in
the functions): these tests stand the service up in-process, as `cdsim server` does. Import it as
``from tests.lib.fleet import local_service``; it is not re-exported by ``tests.lib``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from .cli import CLI
from .env import REPO, require_tool, skip_or_fail

AWS = os.path.join(os.path.dirname(sys.executable), "aws")
ELBV2 = {"Version": "2015-12-01"}

# A small app for the tests that send traffic (install its ``app`` folder to /opt/app): ApplicationStart
# (APP_START) starts APP_SERVER, an HTTP server on port 80 answering every GET with ``X-Version: vN HOST``
# (app/version.txt and the instance's host name) and the same body; a request for any path but /health
# also marks /run/app.hit (a test's sign that its probe's requests arrive). app_stop() stops it.
APP_SERVER = """import http.server, socket
VERSION = open("/opt/app/version.txt").read().strip() + " " + socket.gethostname()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path != "/health":
            open("/run/app.hit", "a").close()
        body = (VERSION + "\\n").encode()
        self.send_response(200)
        self.send_header("X-Version", VERSION)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 80), H)
server.daemon_threads = True
open("/run/app.ready", "w").close()
server.serve_forever()
"""
APP_START = """#!/bin/sh
rm -f /run/app.ready
setsid python3 /opt/app/server.py </dev/null >/dev/null 2>&1 &
echo $! > /run/app.pid
i=0
while [ ! -e /run/app.ready ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
[ -e /run/app.ready ]
"""


def app_stop(first: str = "", linger: float = 1.0) -> str:
    """The app's ApplicationStop: ``first`` (shell lines), then SIGTERM to the server, then ``linger``
    seconds to let it go."""
    return (f"#!/bin/sh\n{first}[ -f /run/app.pid ] && kill \"$(cat /run/app.pid)\" 2>/dev/null\n"
            f"rm -f /run/app.pid\nsleep {linger:g}\nexit 0\n")


def git(path: Path, *args: str) -> str:
    """``git -C PATH ARGS`` with a committer of its own; its stdout, stripped."""
    return subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    """Commit everything in ``repo`` (made a git repository the first time); the commit's id."""
    if not (repo / ".git").exists():
        git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class LocalService:
    tmp: Path
    state: str
    endpoint: str
    env: dict[str, str] = field(repr=False)

    def aws(self, *args: str) -> dict[str, Any]:
        """The real aws CLI against the service and the local AWS; its JSON output (it must succeed)."""
        done = subprocess.run([AWS, *args], env=self.env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def cdsim(self, *args: str, timeout: float = 330) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def call(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        """One operation of the service's API (as the aws CLI sends it)."""
        from agent.service.client import call
        return call(self.endpoint, operation, body)

    def query(self, service: str, params: dict[str, str]) -> ElementTree.Element:
        """One query-API call to the state's local AWS (EC2, ELB, Auto Scaling ...)."""
        from agent.instance import localaws
        return localaws.query(self.state, service, params)

    def elbv2(self, **params: str) -> ElementTree.Element:
        return self.query("elasticloadbalancing", {**ELBV2, **params})

    def target_group_arn(self, name: str) -> str:
        return self.elbv2(Action="DescribeTargetGroups", **{"Names.member.1": name}).findtext(
            ".//TargetGroupArn") or ""

    def deregistration_delay(self, arn: str, seconds: int) -> None:
        self.elbv2(Action="ModifyTargetGroupAttributes", TargetGroupArn=arn,
                   **{"Attributes.member.1.Key": "deregistration_delay.timeout_seconds",
                      "Attributes.member.1.Value": str(seconds)})

    def load_balancer(self, name: str, target_group_arn: str) -> str:
        """An application load balancer ``name`` in the default VPC's subnets with an HTTP listener on port
        80 forwarding to the target group, served by the state's load balancer; its loopback URL."""
        from agent.instance import loadbalancer
        ec2 = {"Version": "2016-11-15"}
        vpc = self.query("ec2", {**ec2, "Action": "DescribeVpcs", "Filter.1.Name": "isDefault",
                                 "Filter.1.Value.1": "true"}).findtext(".//vpcId") or ""
        subnets = [s.findtext("subnetId") or "" for s in self.query("ec2", {
            **ec2, "Action": "DescribeSubnets", "Filter.1.Name": "vpc-id", "Filter.1.Value.1": vpc}).iterfind(
            ".//subnetSet/item")]
        arn = self.elbv2(Action="CreateLoadBalancer", Name=name, Type="application",
                         **{f"Subnets.member.{n}": s for n, s in enumerate(subnets[:2], 1)}).findtext(
            ".//LoadBalancerArn") or ""
        self.elbv2(Action="CreateListener", LoadBalancerArn=arn, Protocol="HTTP", Port="80",
                   **{"DefaultActions.member.1.Type": "forward", "DefaultActions.member.1.TargetGroupArn":
                      target_group_arn})
        loadbalancer.ensure(self.state)
        url = loadbalancer.url_for(self.state, name)
        assert url.startswith("http://127.0.0.1:"), url   # loopback only
        return url

    def deploy(self, application: str, group: str, repo: Path, sha: str) -> str:
        """CreateDeployment of commit ``sha`` of the git repository ``repo``; the deployment id."""
        return str(self.call("CreateDeployment", {
            "applicationName": application, "deploymentGroupName": group, "revision": {
                "revisionType": "GitHub", "gitHubLocation": {"repository": str(repo), "commitId": sha}}})[
            "deploymentId"])

    def sh(self, name: str, command: str) -> bool:
        """Whether ``sh -c COMMAND`` in instance NAME exits 0."""
        import agent.instance as inst
        return inst.exec_in(inst.get(name, state=self.state), ["/bin/sh", "-c", command]) == 0

    def read(self, name: str, path: str) -> str:
        """The text of file ``path`` inside instance NAME ("" when it is missing)."""
        import agent.instance as inst
        with open(self.tmp / f"read-{name}", "w+") as f:
            inst.exec_in(inst.get(name, state=self.state), ["cat", path], stdout=f)
            f.seek(0)
            return f.read()

    def install_aws_cli(self, name: str) -> None:
        """The aws CLI of this venv on instance NAME's PATH (/usr/local/bin/aws), for hooks that call it."""
        import agent.instance as inst
        wrapper = self.tmp / f"aws-{name}"
        wrapper.write_text(f'#!/bin/sh\nexec {AWS} "$@"\n')
        with open(wrapper) as source:
            assert inst.exec_in(inst.get(name, state=self.state), [
                "/bin/sh", "-c", "cat > /usr/local/bin/aws && chmod 755 /usr/local/bin/aws"], stdin=source) == 0


@contextmanager
def local_service(tmp: Path) -> Iterator[LocalService]:
    """cdsim's service in this process on ``tmp/state`` (git revisions below ``tmp`` allowed); skips by
    hand, fails under CI, where instances cannot run."""
    require_tool("git", "git")
    require_tool("bash", "bash")
    from agent.pytest_plugin import instances_available
    ok, why = instances_available()
    if not ok:
        skip_or_fail(f"sandboxed instances are unavailable here ({why}): apt-get install util-linux, run as root")
    import agent.instance as inst
    from agent.service.server import Service, env_lines

    state = str(tmp / "state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDSIM_STATE_DIR", state)
        service = Service(state, s3=False, github_root=[str(tmp)]).start()
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            for line in env_lines(service.info(), service.credentials):
                name, _, value = line[len("export "):].partition("=")
                env[name] = value.strip("'")
            env.update(AWS_CONFIG_FILE=str(tmp / "no-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-creds"),
                       CDSIM_STATE_DIR=state)
            yield LocalService(tmp, state, service.endpoint, env)
        finally:
            service.close()
            for status in inst.list_instances(state=state):
                inst.destroy(inst.get(status.name, state=state))
