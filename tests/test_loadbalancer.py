"""The local load balancer carries traffic: three real instances, each with a small HTTP server inside its
own network namespace, behind a target group and an application load balancer of the local AWS; requests
go to the URL `cdsim lb serve` prints (loopback only), health checks run as the target group says, and
`aws elbv2 describe-target-health` (the real aws CLI inside an instance) shows the states.

One fleet for the whole file (module-scoped); health checks every 2 s (the shortest moto takes, with a
1 s timeout). Every request loop is bounded in count and time and goes to 127.0.0.1 only.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_imds import sh  # one way to run a shell line inside an instance

import agent.instance as inst
from agent.errors import ExitStatus
from agent.instance import imds, loadbalancer, localaws
from tests import lib
from tests.lib import REPO, needs_root, needs_tool

AWS = os.path.join(os.path.dirname(sys.executable), "aws")
pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
CLEAN = f"env -i PATH=/usr/bin:/bin HOME=/nonexistent {AWS} --region us-east-1"
ELBV2 = {"Version": "2015-12-01"}
NAMES = ("web-1", "web-2", "web-3")
SLOW = 3.0   # seconds the /slow request takes
SERVER = f"""
import http.server, os, socket, time
NAME = {{name!r}}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/health":
            code = 500 if os.path.exists("/tmp/sick") else 200
        else:
            code = 200
        if self.path == "/slow":
            open("/tmp/slow-started", "w").close()
            time.sleep({SLOW})
        body = (NAME + "\\n").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen-Forwarded-For", self.headers.get("X-Forwarded-For", ""))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""

cdsim = functools.partial(lib.cdsim, cwd=REPO, timeout=120)


@dataclass
class Fleet:
    state: str
    instances: dict[str, inst.Instance]
    ids: dict[str, str]          # name -> instance id
    url: str
    target_group: str            # ARN
    load_balancer: str           # ARN

    def name_of(self, iid: str) -> str:
        return next(n for n, i in self.ids.items() if i == iid)


def elbv2(state: str, **params: str):
    return localaws.query(state, "elasticloadbalancing", {**ELBV2, **params})


def get(url: str, timeout: float = 10.0) -> tuple[int, str, dict[str, str]]:
    assert url.startswith("http://127.0.0.1:"), url   # loopback only
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read().decode().strip(), dict(reply.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip(), dict(e.headers)


def health(fleet: Fleet) -> dict[str, str]:
    """name -> state, from `aws elbv2 describe-target-health` through the local AWS's API (from the host)."""
    found = elbv2(fleet.state, Action="DescribeTargetHealth", TargetGroupArn=fleet.target_group)
    return {fleet.name_of(m.findtext("Target/Id") or ""): m.findtext("TargetHealth/State") or ""
            for m in found.iterfind(".//TargetHealthDescriptions/member")}


def wait_for(fleet: Fleet, wanted: dict[str, str], timeout: float = 30.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = health(fleet)
        if all(seen.get(n) == s for n, s in wanted.items()) or time.monotonic() > deadline:
            assert all(seen.get(n) == s for n, s in wanted.items()), (wanted, seen)
            return seen
        time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from agent.pytest_plugin import instances_available

    ok, why = instances_available()
    if not ok:
        lib.skip_or_fail(f"sandboxed instances are unavailable here ({why}): apt-get install util-linux, run as root")
    state = str(tmp_path_factory.mktemp("lb") / "state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDSIM_STATE_DIR", state)
        made = {name: inst.create(name, state=state) for name in NAMES}
        try:
            yield _start(state, made, tmp_path_factory.mktemp("lb-files"))
        finally:
            cdsim("lb", "stop", "--state", state)
            for i in made.values():
                inst.destroy(i)


def _start(state: str, made: dict[str, inst.Instance], files: Path) -> Fleet:
    for name, i in made.items():
        script = files / f"{name}.py"
        script.write_text(SERVER.format(name=name))
        with open(script) as source:
            assert inst.exec_in(i, ["/bin/sh", "-c", "cat > /srv.py"], stdin=source) == 0
        started = sh(i, "setsid python3 /srv.py </dev/null >/dev/null 2>&1 & echo started")
        assert "started" in started.stdout, started.stdout
    localaws.ensure(state)
    ids = {name: imds.load(i)["instance_id"] for name, i in made.items()}
    vpc = localaws.query(state, "ec2", {"Version": "2016-11-15", "Action": "DescribeVpcs",
                                        "Filter.1.Name": "isDefault", "Filter.1.Value.1": "true"}).findtext(".//vpcId")
    subnets = [s.findtext("subnetId") or "" for s in localaws.query(state, "ec2", {
        "Version": "2016-11-15", "Action": "DescribeSubnets", "Filter.1.Name": "vpc-id",
        "Filter.1.Value.1": vpc or ""}).iterfind(".//subnetSet/item")]
    tg = elbv2(state, Action="CreateTargetGroup", Name="web", Protocol="HTTP", Port="8080", VpcId=vpc or "",
               TargetType="instance", HealthCheckPath="/health", HealthCheckIntervalSeconds="2",
               HealthCheckTimeoutSeconds="1", HealthyThresholdCount="2", UnhealthyThresholdCount="2",
               **{"Matcher.HttpCode": "200"}).findtext(".//TargetGroupArn") or ""
    elbv2(state, Action="ModifyTargetGroupAttributes", TargetGroupArn=tg,
          **{"Attributes.member.1.Key": "deregistration_delay.timeout_seconds", "Attributes.member.1.Value": "30"})
    lb = elbv2(state, Action="CreateLoadBalancer", Name="web-alb", Type="application",
               **{f"Subnets.member.{n}": s for n, s in enumerate(subnets[:2], 1)}).findtext(".//LoadBalancerArn")
    elbv2(state, Action="CreateListener", LoadBalancerArn=lb or "", Protocol="HTTP", Port="80",
          **{"DefaultActions.member.1.Type": "forward", "DefaultActions.member.1.TargetGroupArn": tg})
    elbv2(state, Action="RegisterTargets", TargetGroupArn=tg,
          **{f"Targets.member.{n}.Id": iid for n, iid in enumerate(ids.values(), 1)})
    served = cdsim("lb", "serve", "--state", state)
    assert served.returncode == 0, served.stdout + served.stderr
    found = re.search(r"web-alb :80 -> (http://127\.0\.0\.1:\d+) -> web", served.stdout)
    assert found, served.stdout
    fleet = Fleet(state, made, ids, found.group(1), tg, lb or "")
    wait_for(fleet, {n: "healthy" for n in NAMES})
    return fleet


def test_lb_commands_without_instances_say_so_without_a_traceback(tmp_path: Path) -> None:
    """No instance runs in the state: `lb list` says no load balancer runs, `lb serve` refuses with the
    environment's exit code and what to do, `lb stop` has nothing to stop."""
    state = str(tmp_path / "state")
    listed = cdsim("lb", "list", "--state", state)
    assert listed.returncode == 0 and "no load balancer runs" in listed.stdout, listed.stdout + listed.stderr
    served = cdsim("lb", "serve", "--state", state)
    assert served.returncode == ExitStatus.ENVIRONMENT, served.stdout + served.stderr
    assert "no instance of the state" in served.stderr and "Traceback" not in served.stderr, served.stderr
    stopped = cdsim("lb", "stop", "--state", state)
    assert stopped.returncode == 0 and "no load balancer ran" in stopped.stdout, stopped.stdout


def test_requests_reach_every_healthy_target_in_turn(fleet: Fleet) -> None:
    """Round robin over the three healthy targets: nine requests, each target three times, never the same
    one twice in a row; the target sees X-Forwarded-For; the listener's DNSName is its loopback address."""
    answers = [get(fleet.url + "/") for _ in range(9)]
    assert all(code == 200 for code, _, _ in answers), answers
    names = [body for _, body, _ in answers]
    assert sorted(names) == sorted(NAMES * 3), names
    assert all(a != b for a, b in itertools.pairwise(names)), names
    assert answers[0][2]["X-Seen-Forwarded-For"] == "127.0.0.1"
    dns = elbv2(fleet.state, Action="DescribeLoadBalancers", **{"Names.member.1": "web-alb"}).findtext(".//DNSName")
    assert "http://" + (dns or "") == fleet.url


def test_describe_target_health_inside_an_instance_shows_the_health_checks(fleet: Fleet) -> None:
    """The aws CLI inside an instance (as a hook calls it) gets the load balancer's states."""
    out = sh(fleet.instances["web-1"], f"{CLEAN} elbv2 describe-target-health --target-group-arn {fleet.target_group}"
                                       " --output json")
    assert out.returncode == 0, out.stdout
    states = {d["Target"]["Id"]: d["TargetHealth"]["State"]
              for d in json.loads(out.stdout)["TargetHealthDescriptions"]}
    assert states == {iid: "healthy" for iid in fleet.ids.values()}, out.stdout
    listed = cdsim("lb", "list", "--state", fleet.state)
    assert listed.returncode == 0 and listed.stdout.count(" healthy") == 3, listed.stdout


def test_a_target_failing_its_health_check_shows_unhealthy_and_gets_no_requests(fleet: Fleet) -> None:
    """web-2's /health answers 500: after two failed checks it is unhealthy (ResponseCodeMismatch) and the
    requests go to the two others; healthy again after two good checks."""
    sick = fleet.instances["web-2"]
    assert sh(sick, "touch /tmp/sick").returncode == 0
    try:
        wait_for(fleet, {"web-1": "healthy", "web-2": "unhealthy", "web-3": "healthy"})
        found = elbv2(fleet.state, Action="DescribeTargetHealth", TargetGroupArn=fleet.target_group,
                      **{"Targets.member.1.Id": fleet.ids["web-2"]})
        assert found.findtext(".//TargetHealth/Reason") == "Target.ResponseCodeMismatch"
        names = [get(fleet.url + "/")[1] for _ in range(6)]
        assert sorted(names) == ["web-1"] * 3 + ["web-3"] * 3, names
    finally:
        assert sh(sick, "rm -f /tmp/sick").returncode == 0
    wait_for(fleet, {n: "healthy" for n in NAMES})


def test_deregistering_a_target_drains_it(fleet: Fleet) -> None:
    """A slow request is in flight on one target when it is deregistered: it shows draining, new requests
    go to the two others, the slow one completes from the drained target, which still shows draining
    (as ELB does until the deregistration delay, 30 s here, is over; the next test sees it gone)."""
    result: list[tuple[int, str, dict[str, str]]] = []
    slow = threading.Thread(target=lambda: result.append(get(fleet.url + "/slow", timeout=SLOW + 10)))
    slow.start()
    try:
        deadline = time.monotonic() + 5
        busy = None
        while busy is None and time.monotonic() < deadline:
            busy = next((n for n, i in fleet.instances.items() if os.path.exists(i.upper + "/tmp/slow-started")), None)
            time.sleep(0.02)
        assert busy is not None, "the slow request reached no target"
        elbv2(fleet.state, Action="DeregisterTargets", TargetGroupArn=fleet.target_group,
              **{"Targets.member.1.Id": fleet.ids[busy]})
        assert health(fleet)[busy] == "draining"
        names = [get(fleet.url + "/")[1] for _ in range(4)]
        assert busy not in names and len(set(names)) == 2, names
        slow.join(SLOW + 15)
        assert result and result[0][:2] == (200, busy), result
        assert health(fleet)[busy] == "draining"
    finally:
        slow.join(SLOW + 15)
        sh(fleet.instances[busy or "web-1"], "rm -f /tmp/slow-started")
        elbv2(fleet.state, Action="RegisterTargets", TargetGroupArn=fleet.target_group,
              **{f"Targets.member.{n}.Id": iid for n, iid in enumerate(fleet.ids.values(), 1)})
    for iid in fleet.ids.values():   # the Python API the traffic-control engine waits with
        assert loadbalancer.wait_for_target(fleet.state, "web", iid, ("healthy",), 30)["state"] == "healthy"


def test_after_the_deregistration_delay_a_request_still_in_flight_is_cut(fleet: Fleet) -> None:
    """deregistration_delay.timeout_seconds = 1: the slow request (3 s) on the deregistered target does not
    hold it past the delay: its connection is closed (the client gets 502) and the target is gone."""
    elbv2(fleet.state, Action="ModifyTargetGroupAttributes", TargetGroupArn=fleet.target_group,
          **{"Attributes.member.1.Key": "deregistration_delay.timeout_seconds", "Attributes.member.1.Value": "1"})
    result: list[tuple[int, str, dict[str, str]]] = []
    slow = threading.Thread(target=lambda: result.append(get(fleet.url + "/slow", timeout=SLOW + 10)))
    started = time.monotonic()
    slow.start()
    busy = None
    try:
        while busy is None and time.monotonic() < started + 5:
            busy = next((n for n, i in fleet.instances.items() if os.path.exists(i.upper + "/tmp/slow-started")), None)
            time.sleep(0.02)
        assert busy is not None, "the slow request reached no target"
        elbv2(fleet.state, Action="DeregisterTargets", TargetGroupArn=fleet.target_group,
              **{"Targets.member.1.Id": fleet.ids[busy]})
        slow.join(SLOW + 15)
        assert result and result[0][0] == 502, result
        deadline = time.monotonic() + 5
        while busy in health(fleet) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert busy not in health(fleet)
    finally:
        slow.join(SLOW + 15)
        sh(fleet.instances[busy or "web-1"], "rm -f /tmp/slow-started")
        elbv2(fleet.state, Action="ModifyTargetGroupAttributes", TargetGroupArn=fleet.target_group,
              **{"Attributes.member.1.Key": "deregistration_delay.timeout_seconds", "Attributes.member.1.Value": "30"})
        elbv2(fleet.state, Action="RegisterTargets", TargetGroupArn=fleet.target_group,
              **{f"Targets.member.{n}.Id": iid for n, iid in enumerate(fleet.ids.values(), 1)})
    wait_for(fleet, {n: "healthy" for n in NAMES})


def test_a_listener_made_by_the_aws_cli_inside_an_instance_starts_the_load_balancer(fleet: Fleet) -> None:
    """With no load balancer daemon running, `aws elbv2 create-listener` inside an instance (as a hook would)
    starts it: the new listener gets its loopback URL and carries traffic to the healthy targets."""
    stopped = cdsim("lb", "stop", "--state", fleet.state)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    made = sh(fleet.instances["web-1"], f"{CLEAN} elbv2 create-listener --load-balancer-arn {fleet.load_balancer}"
                                        " --protocol HTTP --port 8081 --default-actions"
                                        f" Type=forward,TargetGroupArn={fleet.target_group}")
    assert made.returncode == 0, made.stdout
    url = None
    deadline = time.monotonic() + 30
    while url is None and time.monotonic() < deadline:
        listed = cdsim("lb", "list", "--state", fleet.state)
        found = re.search(r"web-alb :8081 -> (http://127\.0\.0\.1:\d+) -> web", listed.stdout)
        url = found.group(1) if found else None
        time.sleep(0.2)
    assert url is not None, listed.stdout
    wait_for(fleet, {n: "healthy" for n in NAMES})
    names = [get(url + "/")[1] for _ in range(3)]
    assert sorted(names) == sorted(NAMES), names
    fleet.url = loadbalancer_url(fleet)


def loadbalancer_url(fleet: Fleet) -> str:
    listed = cdsim("lb", "list", "--state", fleet.state)
    found = re.search(r"web-alb :80 -> (http://127\.0\.0\.1:\d+) -> web", listed.stdout)
    assert found, listed.stdout
    return found.group(1)


def test_a_stopped_instance_is_unused_and_gets_no_requests(fleet: Fleet) -> None:
    """(Last: it stops web-3.) Its target shows unused (Target.InvalidState) and the requests go to the
    two others."""
    inst.stop(fleet.instances["web-3"])
    wait_for(fleet, {"web-1": "healthy", "web-2": "healthy", "web-3": "unused"})
    found = elbv2(fleet.state, Action="DescribeTargetHealth", TargetGroupArn=fleet.target_group,
                  **{"Targets.member.1.Id": fleet.ids["web-3"]})
    assert found.findtext(".//TargetHealth/Reason") == "Target.InvalidState"
    names = [get(fleet.url + "/")[1] for _ in range(4)]
    assert sorted(names) == ["web-1", "web-1", "web-2", "web-2"], names


def test_a_target_that_is_no_instance_of_the_state_gets_no_health_check_and_no_request(fleet: Fleet) -> None:
    """SECURITY.md: health checks and requests go only to addresses of the state's own instances. An EC2
    instance of the local AWS that is no cdsim instance (RunInstances, which any caller of the API may
    send), registered in the target group, stays `unused` and gets none of the requests. (After the
    stopped-instance test: web-3 is stopped, web-1 and web-2 serve.)"""
    ec2 = {"Version": "2016-11-15"}
    ami = localaws.query(fleet.state, "ec2", {**ec2, "Action": "DescribeInstances",
                                              "InstanceId.1": fleet.ids["web-1"]}).findtext(".//imageId")
    made = localaws.query(fleet.state, "ec2", {**ec2, "Action": "RunInstances", "ImageId": ami or "",
                                               "MinCount": "1", "MaxCount": "1", "InstanceType": "t3.micro"})
    foreign = made.findtext(".//instancesSet/item/instanceId") or ""
    assert foreign.startswith("i-") and foreign not in fleet.ids.values(), foreign
    elbv2(fleet.state, Action="RegisterTargets", TargetGroupArn=fleet.target_group, **{"Targets.member.1.Id": foreign})
    try:
        def states() -> dict[str, str]:
            found = elbv2(fleet.state, Action="DescribeTargetHealth", TargetGroupArn=fleet.target_group)
            return {m.findtext("Target/Id") or "": m.findtext("TargetHealth/State") or ""
                    for m in found.iterfind(".//TargetHealthDescriptions/member")}

        deadline = time.monotonic() + 10
        while foreign not in states() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.5)   # longer than one health-check interval: a check would have run by now
        seen = states()
        assert seen[foreign] == "unused", seen
        assert seen[fleet.ids["web-1"]] == seen[fleet.ids["web-2"]] == "healthy", seen
        answers = [get(fleet.url + "/") for _ in range(6)]
        assert sorted(body for _, body, _ in answers) == ["web-1"] * 3 + ["web-2"] * 3, answers
    finally:
        elbv2(fleet.state, Action="DeregisterTargets", TargetGroupArn=fleet.target_group,
              **{"Targets.member.1.Id": foreign})

