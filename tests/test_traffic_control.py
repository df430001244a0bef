"""Traffic control in the service's in-place deployments, and the rehearsal probe (`cdsim wait --traffic`).

One module-scoped run (kept under a minute): `cdsim server` in this process, a 3-instance fleet in the
ELBv2 target group ``web-tg`` of the state's local AWS (deregistration delay 1 s), a deployment group made
by the aws CLI with ``loadBalancerInfo`` and ``WITH_TRAFFIC_CONTROL``, OneAtATime, and two deployments of
a git revision, each followed by `cdsim wait --traffic` against an HTTP server this test runs on loopback.
The revision's ApplicationStop asks the local AWS (the aws CLI inside the instance) what the target group
says of every instance; its four traffic hooks note that they ran. During the second deployment the test
server answers 503 to ten requests once it sees (through the service's API) web-2 in ApplicationStop,
which that hook keeps running for two seconds: the rehearsal must pin those ten failures there.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time

import pytest

import agent.instance as inst
from agent.errors import ExitStatus
from agent.instance import imds, localaws
from tests.lib import CLI, REPO, needs_root, needs_tool
from tests.lib.fleet import AWS, commit, local_service

pytestmark = [
    needs_root("instances need root on this machine (CI runs as root)"),
    needs_tool(AWS, "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]
EVENTS = ["BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic", "ApplicationStop", "DownloadBundle",
          "BeforeInstall", "Install", "AfterInstall", "ApplicationStart", "ValidateService", "BeforeAllowTraffic",
          "AllowTraffic", "AfterAllowTraffic"]
TRAFFIC_HOOKS = ["BeforeBlockTraffic", "AfterBlockTraffic", "BeforeAllowTraffic", "AfterAllowTraffic"]
APPSPEC = "version: 0.0\nos: linux\nhooks:\n" + "".join(
    f"  {event}:\n    - location: note.sh\n" for event in TRAFFIC_HOOKS) + \
    "  ApplicationStop:\n    - location: observe.sh\n"
# the first hook waits (up to a minute) for the test to say the rehearsal's probe is sending, so that a slow
# start of `cdsim wait` cannot let web-1 finish before the probe's first request; the Allow hooks then last
# half a second each, so that every instance spends a second in events (not only in the gaps between them,
# where requests count as "outside events") even when the first deployment has no ApplicationStop
NOTE = ("#!/bin/sh\nfor i in $(seq 600); do [ -e /var/tmp/probe-sending ] && break; sleep 0.1; done\n"
        "case $LIFECYCLE_EVENT in *AllowTraffic) sleep 0.5;; esac\n"
        "echo \"$LIFECYCLE_EVENT $DEPLOYMENT_ID\" >> /var/log/tc-hooks.log\n")
OBSERVE = """#!/bin/bash
# what the target group says of every instance while this one's ApplicationStop runs
STATES=$(aws --region us-east-1 elbv2 describe-target-health --target-group-arn "{arn}" \\
    --targets {targets} --query 'TargetHealthDescriptions[].[Target.Id,TargetHealth.State]' \\
    --output text | tr '\\t\\n' '= ')
echo "$DEPLOYMENT_ID $STATES" >> /var/log/tc-observe.log
sleep 2
"""


class FlakyServer(http.server.ThreadingHTTPServer):
    """Answers 200 with an X-Version header, except ``fail_next`` requests, answered 503."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.fail_next = 0
        self.version = "blue"
        self.served = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FlakyServer

    def do_GET(self) -> None:
        with self.server.lock:
            failing = self.server.fail_next > 0
            self.server.fail_next -= failing
            self.server.served += 1
        body = b"down\n" if failing else b"up\n"
        self.send_response(503 if failing else 200)
        self.send_header("X-Version", self.server.version)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _elbv2(state: str, **params: str):
    return localaws.query(state, "elasticloadbalancing", {"Version": "2015-12-01", **params})


def _health(state: str, arn: str) -> dict[str, str]:
    found = _elbv2(state, Action="DescribeTargetHealth", TargetGroupArn=arn)
    return {m.findtext("Target/Id"): m.findtext("TargetHealth/State")
            for m in found.iterfind(".//TargetHealthDescriptions/member")}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Everything the tests read: the fleet's ids, two deployments with their `cdsim wait --traffic` runs,
    what the aws CLI says of each instance, what the hooks noted."""
    from agent.commands.fleet import fleet_up

    tmp = tmp_path_factory.mktemp("traffic")
    web = FlakyServer()
    threading.Thread(target=web.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with local_service(tmp) as svc:
            state, ep, env, aws, call = svc.state, svc.endpoint, svc.env, svc.aws, svc.call
            out: dict = {"state": state}
            names = fleet_up(ep, count=3, tag="Name=Web", application="A", state=state, target_group="web-tg")
            ids = {name: imds.load(inst.get(name, state=state))["instance_id"] for name in names}
            for name in names:   # the aws CLI on each instance, for the ApplicationStop observer
                svc.install_aws_cli(name)
            arn = svc.target_group_arn("web-tg")
            svc.deregistration_delay(arn, 1)
            aws("deploy", "create-deployment-group", "--application-name", "A", "--deployment-group-name", "G",
                "--service-role-arn", "arn:aws:iam::000000000000:role/cdsim", "--on-premises-instance-tag-filters",
                "Key=Name,Value=Web,Type=KEY_AND_VALUE", "--deployment-config-name", "CodeDeployDefault.OneAtATime",
                "--deployment-style", "deploymentType=IN_PLACE,deploymentOption=WITH_TRAFFIC_CONTROL",
                "--load-balancer-info", "targetGroupInfoList=[{name=web-tg}]")
            out["group"] = call("GetDeploymentGroup", {"applicationName": "A",
                                                       "deploymentGroupName": "G"})["deploymentGroupInfo"]
            repo = tmp / "repo"
            repo.mkdir()
            (repo / "appspec.yml").write_text(APPSPEC)
            (repo / "note.sh").write_text(NOTE)
            targets = " ".join(f"Id={i},Port=80" for i in ids.values())
            (repo / "observe.sh").write_text(OBSERVE.format(arn=arn, targets=targets))
            for script in ("note.sh", "observe.sh"):
                (repo / script).chmod(0o755)
            url = f"http://127.0.0.1:{web.server_address[1]}/"
            runs = []
            reports = ("--report", f"json={tmp}/report.json", "--report", f"junit={tmp}/junit.xml",
                       "--report", f"html={tmp}/report.html")
            for n in (1, 2):
                (repo / "version.txt").write_text(f"{n}\n")
                sha = commit(repo, f"v{n}")
                did = svc.deploy("A", "G", repo, sha)
                report = tmp / f"traffic-{n}.json"
                waiting = subprocess.Popen(
                    [*CLI, "wait", did, "--endpoint", ep, "--interval", "0.2", "--timeout", "600",
                     "--traffic", f"{url},20", "--traffic-version-header", "X-Version",
                     "--traffic-report", str(report), *(reports if n == 2 else ())],
                    env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if n == 1:   # the probe sends: let the hooks go on (see NOTE)
                    deadline = time.monotonic() + 120
                    while web.served == 0 and waiting.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                    for name in names:
                        assert svc.sh(name, "touch /var/tmp/probe-sending")
                failing_seen = []
                if n == 2:   # ten 503s once web-2 is seen in its ApplicationStop (which lasts 2 s or more)
                    while waiting.poll() is None and not failing_seen:
                        got = call("GetDeploymentInstance", {"deploymentId": did, "instanceId": names[1]})
                        events = {e["lifecycleEventName"]: e["status"]
                                  for e in got["instanceSummary"]["lifecycleEvents"]}
                        if events.get("ApplicationStop") == "InProgress":
                            with web.lock:
                                web.fail_next = 10
                            failing_seen.append(time.time())
                        else:
                            time.sleep(0.05)
                stdout, stderr = waiting.communicate(timeout=600)
                instances = {i["instanceId"].rsplit("/", 1)[-1]: i for i in call(
                    "BatchGetDeploymentInstances", {"deploymentId": did, "instanceIds": names})["instancesSummary"]}
                runs.append({"id": did, "exit": waiting.returncode, "stdout": stdout, "stderr": stderr,
                             "report": json.loads(report.read_text()) if report.exists() else None,
                             "instances": instances, "failing_seen": failing_seen,
                             "deployment": call("GetDeployment", {"deploymentId": did})})
            # what the aws CLI itself shows (botocore's model parses it): one instance of the second deployment
            out["cli_instance"] = aws("deploy", "get-deployment-instance", "--deployment-id", did,
                                      "--instance-id", names[1])["instanceSummary"]
            out["health_after"] = _health(state, arn)
            # web-1 alone (tag Solo) in two more groups: a classic load balancer, and a target group that
            # does not exist (BlockTraffic fails)
            call("AddTagsToOnPremisesInstances", {"instanceNames": [names[0]],
                                                      "tags": [{"Key": "Solo", "Value": "1"}]})
            elb = {"Version": "2012-06-01"}
            svc.query("elasticloadbalancing", {
                **elb, "Action": "CreateLoadBalancer", "LoadBalancerName": "web-elb",
                "Listeners.member.1.Protocol": "HTTP", "Listeners.member.1.LoadBalancerPort": "80",
                "Listeners.member.1.InstancePort": "80", "AvailabilityZones.member.1": "us-east-1a"})
            for group, info in (("C", {"elbInfoList": [{"name": "web-elb"}]}),
                                ("F", {"targetGroupInfoList": [{"name": "no-tg"}]})):
                call("CreateDeploymentGroup", {
                    "applicationName": "A", "deploymentGroupName": group, "serviceRoleArn": "arn:aws:iam::0:role/x",
                    "onPremisesInstanceTagFilters": [{"Key": "Solo", "Value": "1", "Type": "KEY_AND_VALUE"}],
                    "deploymentStyle": {"deploymentType": "IN_PLACE", "deploymentOption": "WITH_TRAFFIC_CONTROL"},
                    "loadBalancerInfo": info})
                did = svc.deploy("A", group, repo, sha)
                done = svc.cdsim("wait", did, "--endpoint", ep, "--interval", "0.2", "--timeout", "300")
                out[group] = {"id": did, "exit": done.returncode, "stderr": done.stderr,
                              "instance": call("GetDeploymentInstance", {
                                  "deploymentId": did, "instanceId": names[0]})["instanceSummary"],
                              "deployment": call("GetDeployment", {"deploymentId": did})["deploymentInfo"]}
                if group == "C":
                    found = svc.query("elasticloadbalancing", {
                        **elb, "Action": "DescribeLoadBalancers", "LoadBalancerNames.member.1": "web-elb"})
                    out[group]["elb_instances"] = [e.text for e in found.iterfind(".//Instances/member/InstanceId")]
            out["health_at_end"] = _health(state, arn)
            logs = {}
            for name in names:
                for log in ("tc-hooks", "tc-observe"):
                    logs[(name, log)] = [line.split() for line in svc.read(name, f"/var/log/{log}.log").splitlines()]
            out.update(names=names, ids=ids, arn=arn, runs=runs, logs=logs, env=env,
                       reports={kind: (tmp / name).read_text() for kind, name in (
                           ("json", "report.json"), ("junit", "junit.xml"), ("html", "report.html"))})
            yield out
    finally:
        web.shutdown()
        web.server_close()


def test_the_group_keeps_its_load_balancer_and_traffic_control(rehearsal):
    group = rehearsal["group"]
    assert group["deploymentStyle"]["deploymentOption"] == "WITH_TRAFFIC_CONTROL"
    assert group["loadBalancerInfo"] == {"targetGroupInfoList": [{"name": "web-tg"}]}
    for run in rehearsal["runs"]:
        assert run["deployment"]["deploymentInfo"]["status"] == "Succeeded", run
        assert run["deployment"]["deploymentInfo"]["deploymentStyle"]["deploymentOption"] == "WITH_TRAFFIC_CONTROL"


def test_get_deployment_instance_shows_the_traffic_events_in_the_service_order(rehearsal):
    """The aws CLI lists BeforeBlockTraffic .. AfterAllowTraffic, BlockTraffic and AllowTraffic included, all
    Succeeded, each started after the one before ended (and so does the API for every instance)."""
    cli = rehearsal["cli_instance"]
    assert [e["lifecycleEventName"] for e in cli["lifecycleEvents"]] == EVENTS, cli
    assert {e["status"] for e in cli["lifecycleEvents"]} == {"Succeeded"} and cli["status"] == "Succeeded", cli
    for run in rehearsal["runs"]:
        assert sorted(run["instances"]) == rehearsal["names"]
        for name, summary in run["instances"].items():
            events = summary["lifecycleEvents"]
            assert [e["lifecycleEventName"] for e in events] == EVENTS, (name, events)
            assert {e["status"] for e in events} == {"Succeeded"}, (name, events)
            starts = [e["startTime"] for e in events]
            ends = [e["endTime"] for e in events]
            assert all(ends[i] <= starts[i + 1] for i in range(len(events) - 1)), (name, events)


def test_one_at_a_time_blocks_one_instance_while_the_others_are_registered(rehearsal):
    """During each instance's ApplicationStop (second deployment: the first has no previous revision) the
    target group has it draining or unused and the other two healthy; afterwards all three are healthy."""
    ids = rehearsal["ids"]
    second = rehearsal["runs"][1]["id"]
    for name, me in ids.items():
        lines = [line for line in rehearsal["logs"][(name, "tc-observe")] if line[0] == second]
        assert len(lines) == 1, rehearsal["logs"][(name, "tc-observe")]
        states = dict(s.split("=") for s in lines[0][1:])
        assert states[me] in ("draining", "unused"), states
        assert all(state == "healthy" for iid, state in states.items() if iid != me), states
    assert rehearsal["health_after"] == dict.fromkeys(ids.values(), "healthy")
    # and the windows between BlockTraffic and AllowTraffic of different instances never overlap
    for run in rehearsal["runs"]:
        spans = sorted((e["BlockTraffic"]["startTime"], e["AllowTraffic"]["endTime"]) for e in (
            {x["lifecycleEventName"]: x for x in s["lifecycleEvents"]} for s in run["instances"].values()))
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans


def test_the_agent_runs_the_four_traffic_hooks_on_each_instance(rehearsal):
    """BeforeBlockTraffic and AfterBlockTraffic run the last successful revision's scripts (spec §4.2): none
    in the first deployment; the Allow ones this revision's."""
    first, second = (run["id"] for run in rehearsal["runs"])
    for name in rehearsal["names"]:
        lines = rehearsal["logs"][(name, "tc-hooks")]
        assert [line[0] for line in lines if line[1] == first] == TRAFFIC_HOOKS[2:], lines
        assert [line[0] for line in lines if line[1] == second] == TRAFFIC_HOOKS, lines


def test_a_clean_rehearsal_counts_every_request_and_exits_0(rehearsal):
    run = rehearsal["runs"][0]
    assert run["exit"] == 0, run["stderr"]
    rows = run["report"]["windows"]
    total = rows[-1]
    assert total["subject"] == "*" and total["failed"] == 0 and total["sent"] >= 20, total
    assert total["versions"] == {"blue": total["sent"]}
    assert total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"]
    # every instance's events got requests, and the text report names them
    assert {r["subject"] for r in rows} >= set(rehearsal["names"])
    # (which events got requests depends on timing: BlockTraffic against moto can last 40 ms, under one
    # request's interval at 20/s; so each window that got requests is looked for, not a named one)
    named = [r for r in rows if r["subject"] != "*"]
    assert named and all(f"{r['subject']} {r['phase']}: {r['sent']} sent" in run["stdout"] for r in named), \
        run["stdout"]
    assert "all requests:" in run["stdout"]


def test_failed_requests_are_pinned_on_the_instance_and_event_and_fail_the_gate(rehearsal):
    run = rehearsal["runs"][1]
    assert run["failing_seen"], "web-2's ApplicationStop was never seen"
    assert run["exit"] == ExitStatus.TRAFFIC_FAILED, run["stdout"] + run["stderr"]
    assert "10 requests failed during the deployment" in run["stderr"]
    rows = run["report"]["windows"]
    failed = [(r["subject"], r["phase"], r["failed"]) for r in rows if r["failed"] and r["subject"] != "*"]
    assert failed == [("web-2", "ApplicationStop", 10)], rows
    assert rows[-1]["failed"] == 10 and rows[-1]["errors"] == {"HTTP 503": 10}


def test_a_classic_load_balancer_is_blocked_and_allowed_too(rehearsal):
    """elbInfoList: web-1 deregistered from the classic load balancer and registered again (InService)."""
    run = rehearsal["C"]
    assert run["exit"] == 0 and run["deployment"]["status"] == "Succeeded", run
    events = run["instance"]["lifecycleEvents"]
    assert [e["lifecycleEventName"] for e in events] == EVENTS
    assert {e["status"] for e in events} == {"Succeeded"}
    assert run["elb_instances"] == [rehearsal["ids"]["web-1"]]


def test_a_failed_block_traffic_fails_the_instance_and_skips_the_rest(rehearsal):
    """A target group the local AWS does not have: BlockTraffic Failed with why, every later event Skipped,
    the deployment Failed; `cdsim wait` names the instance and event; web-1 still serves in web-tg."""
    run = rehearsal["F"]
    assert run["deployment"]["status"] == "Failed"
    assert run["exit"] == ExitStatus.DEPLOYMENT_FAILED, run["stderr"]
    assert "web-1: BlockTraffic failed: UnknownError: target group no-tg is not in the local AWS" in run["stderr"]
    statuses = [(e["lifecycleEventName"], e["status"]) for e in run["instance"]["lifecycleEvents"]]
    assert statuses == [("BeforeBlockTraffic", "Succeeded"), ("BlockTraffic", "Failed")] + [
        (e, "Skipped") for e in EVENTS[2:]], statuses
    assert rehearsal["health_at_end"] == dict.fromkeys(rehearsal["ids"].values(), "healthy")


def test_the_reports_carry_the_figures_with_each_instance_s_events(rehearsal):
    """--report json/junit/html of `cdsim wait`: each instance a deployment of its own with its 13 events,
    the rehearsal's figures as traffic records; JUnit fails the one window with failed requests."""
    import xml.etree.ElementTree as ET

    did = rehearsal["runs"][1]["id"]
    deployments = {d["deployment_id"]: d for d in json.loads(rehearsal["reports"]["json"])["deployments"]}
    assert set(deployments) == {did} | {f"{did}/{name}" for name in rehearsal["names"]}
    web2 = deployments[f"{did}/web-2"]
    assert [e["event"] for e in web2["events"]] == EVENTS and web2["status"] == "Succeeded"
    failing = [w for w in web2["traffic"] if w["failed"]]
    assert [(w["event"], w["failed"], w["errors"]) for w in failing] == [("ApplicationStop", 10, {"HTTP 503": 10})]
    assert next(w for w in deployments[did]["traffic"] if w["instance"] == "*")["failed"] == 10
    suites = ET.fromstring(rehearsal["reports"]["junit"])
    failed_cases = [(c.get("classname"), c.get("name")) for c in suites.iter("testcase")
                    if c.find("failure") is not None]
    assert failed_cases == [("traffic", "web-2 ApplicationStop")]
    html = rehearsal["reports"]["html"]
    assert "Requests during the deployment" in html and "HTTP 503: 10" in html
    # the timeline shows the error rate over the events: a strip under each event that got requests, one
    # failing (web-2's ApplicationStop: its 10 failures)
    import re
    strips = re.findall(r'data-name="(\w+)" data-status="\w+" [^>]*></div><div class="requests( failing)?" '
                        r'data-sent="(\d+)" data-failed="(\d+)"', html)
    assert len(strips) >= 3, strips
    failing = [(name, int(failed)) for name, mark, _, failed in strips if mark]
    assert failing == [("ApplicationStop", 10)], strips


@pytest.mark.parametrize(("option", "message"), [
    ("http://192.0.2.1/", "192.0.2.1 is not an address of this machine"),
    ("http://127.0.0.1:9/,fast", "is not a number"),
    ("http://127.0.0.1:9/,0", "the rate must be above 0"),
    ("ftp://127.0.0.1/", "expected an http:// or https:// URL"),
])
def test_a_bad_traffic_option_is_a_usage_error_before_anything_is_sent(option, message, tmp_path):
    done = subprocess.run([*CLI, "wait", "d-AAAAAAAAA", "--endpoint", "http://127.0.0.1:9", "--traffic", option],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
                          env={**os.environ, "CDSIM_STATE_DIR": str(tmp_path)})
    assert done.returncode == ExitStatus.USAGE, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_the_probe_pins_requests_on_the_windows_it_is_given():
    """The probe's summary alone: a loopback server that fails on purpose, windows around it."""
    from agent import probe

    web = FlakyServer()
    threading.Thread(target=web.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        target = probe.check_target(f"http://127.0.0.1:{web.server_address[1]}/")
        running = probe.Probe(target, rate=50, max_requests=30, version_header="X-Version").start()
        deadline = time.monotonic() + 30
        while len(running.samples) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        with web.lock:
            web.fail_next = 5
            web.version = "green"
        samples = running.finish(timeout=30)
    finally:
        web.shutdown()
        web.server_close()
    assert len(samples) == 30
    failed = [s for s in samples if s.failed]
    assert len(failed) == 5 and all(s.status == 503 for s in failed)
    first, last = failed[0].sent, failed[-1].sent
    rows = probe.summarize(samples, [("box", "before", 0, first), ("box", "failing", first, last + 1e-6),
                                     ("box", "after", last + 1e-6, float("inf"))])
    by_phase = {r["phase"]: r for r in rows}
    assert by_phase["failing"]["failed"] == 5 and by_phase["before"]["failed"] == 0
    assert by_phase["*"]["versions"].get("blue", 0) >= 10 and "green" in by_phase["after"]["versions"]
    assert by_phase["*"]["sent"] == 30


def test_the_probe_stops_by_itself_at_its_count_and_time_bounds():
    """Bounded in count (max_requests) and in time (max_seconds) even when nobody stops it; a port nobody
    listens on counts as connection refused."""
    import socket

    from agent import probe

    with socket.socket() as s:   # a loopback port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = probe.check_target(f"http://127.0.0.1:{port}/")
    by_count = probe.Probe(target, rate=100, max_requests=7).start().finish(timeout=30)
    assert len(by_count) == 7 and all(s.error == "connection refused" for s in by_count)
    by_time = probe.Probe(target, rate=20, max_seconds=0.3).start().finish(timeout=30)
    assert 1 <= len(by_time) <= 7


def test_traffic_events_sit_after_their_before_hooks_and_only_with_traffic_control():
    from agent.service import traffic
    from agent.service.engine import pending_events

    lb = {"targetGroupInfoList": [{"name": "tg"}]}
    assert traffic.controls_traffic({"deploymentStyle": {"deploymentOption": "WITH_TRAFFIC_CONTROL"},
                                     "loadBalancerInfo": lb})
    assert not traffic.controls_traffic({"deploymentStyle": {"deploymentOption": "WITHOUT_TRAFFIC_CONTROL"},
                                         "loadBalancerInfo": lb})
    assert not traffic.controls_traffic({"deploymentStyle": {"deploymentOption": "WITH_TRAFFIC_CONTROL"},
                                         "loadBalancerInfo": {"targetGroupInfoList": []}})
    events = traffic.with_traffic_events(pending_events())
    assert [e["lifecycleEventName"] for e in events] == EVENTS
    # the agent's word on the service's own events is ignored; the service's records are kept
    mine = {"lifecycleEventName": "BlockTraffic", "status": "Succeeded"}
    forged = [*pending_events(), {"lifecycleEventName": "BlockTraffic", "status": "Failed"}]
    merged = traffic.with_traffic_events(forged, {"BlockTraffic": mine})
    assert [e["lifecycleEventName"] for e in merged] == EVENTS and merged[1] is mine
