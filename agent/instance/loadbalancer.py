"""The state's load balancer: the data plane of the local AWS's ELBv2 application load balancers.

For each load balancer of the local AWS (agent.instance.localaws) with an HTTP listener whose default
action forwards to a target group, one daemon per state serves HTTP on ``127.0.0.1:PORT`` (loopback
only; the port is the kernel's pick, kept while the daemon runs) and forwards each request to a target of
that group that is registered and healthy, **round robin** in registration order (no fail-open: with no
healthy target the answer is 503). It knows nothing of CodeDeploy.

Reaching an instance: a target (an instance id, or an IP address for an ``ip`` target group) is the
private address of a running instance of the state. The daemon starts one small helper per instance that
joins the instance's network namespace (after its user namespace, when it has one; so root and rootless
alike) and hands back unconnected TCP sockets made there (SCM_RIGHTS); the daemon connects them to the
instance's address. The host's network is never touched, and nothing listens off loopback.

Health checks as the target group defines them: protocol (HTTP, HTTPS unverified, TCP), path, port
(``traffic-port`` or a number), interval, timeout, healthy/unhealthy thresholds and matcher (``200``,
``200,202``, ``200-299``). A new target is ``initial`` until its first check passes (``healthy``) or
``UnhealthyThresholdCount`` fail in a row (``unhealthy``); after that the thresholds count consecutive
checks. A deregistered target is ``draining``: no new requests, those in flight finish; it stays
``draining`` until ``deregistration_delay.timeout_seconds`` is over, then is gone (its connections still
open are closed then), even when nothing was in flight: ELB completes such a deregistration at once but
shows the target ``draining`` until the delay expires, and CodeDeploy's BlockTraffic waits for that. A
target whose instance does not run is ``unused`` (Target.InvalidState). ``aws elbv2
describe-target-health`` and ``describe-load-balancers`` (DNSName ``127.0.0.1:PORT``) show this, through
agent.instance.lbview. Registration changes (by hooks inside instances, the engine, the aws CLI) reach
the daemon at once: the local AWS writes a token to a file after every ELBv2 change, which the daemon
watches (every 20 ms), reading moto's state through the same API a user calls (it also re-reads every
5 s); the call that made the change returns once the daemon has applied it (at most 2 s later).

The daemon runs while any instance of the state runs (like the local AWS) or until :func:`stop`.
Records: ``aws/lb/status.json`` (its pid and view), ``aws/lb/daemon.log``.

Python API (for other modules; the CLI is agent.commands.lb):

- :func:`ensure` (state) -> pid: start the daemon unless it runs; :func:`stop` (state); :func:`running`.
- :func:`url_for` (state, name or ARN) -> ``http://127.0.0.1:PORT`` of its first listener (LookupError).
- :func:`target_health` (state, target group name or ARN) -> list of lbview.TargetHealth.
- :func:`status` (state) -> lbview.Status or None; :func:`wait_until` (state, predicate, timeout);
  :func:`wait_for_target` (state, group, target id, states or None for "drained", timeout): what
  AllowTraffic (registered, wait until healthy) and BlockTraffic (deregistered, wait until drained) need.
- :func:`listeners_exist` (state): whether the local AWS has something for the daemon to serve.

Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import fcntl
import http.client
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.fsutil import atomic_write
from agent.instance import lbview, localaws, services, store
from agent.instance.lbview import ListenerView, LoadBalancerView, Status, TargetGroupView, TargetHealth
from agent.instance.procstat import start_ticks
from agent.state import instances_dir

START_TIMEOUT = 60.0
WATCH = 0.02          # how often the change file is looked at
REREAD = 5.0          # and moto re-read without a change
IDLE_CHECKS = 4       # exits after this many IDLE_CHECK ticks with no instance running
IDLE_CHECK = 0.5
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0   # ALB's default idle timeout
WHOLE = 256 * 1024    # a response body up to this size is read whole, then sent with the headers
ELBV2 = {"Version": "2015-12-01"}
RAW = {lbview.RAW_HEADER: "raw"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "proxy-connection"}

_MAIN = "import sys; from agent.instance.loadbalancer import daemon_main; sys.exit(daemon_main(sys.argv[1]))"
_HELPER = ("import sys; from agent.instance.loadbalancer import helper_main; "
           "sys.exit(helper_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == '1', int(sys.argv[4])))")


# ---- the API --------------------------------------------------------------------------------------

def status(state: str) -> Status | None:
    """The running daemon's view (load balancers, URLs, targets and their health), or None."""
    return lbview.read(state)


def running(state: str) -> int | None:
    found = lbview.read(state)
    return found["pid"] if found else None


def ensure(state: str, env: dict[str, str] | None = None) -> int:
    """The daemon's pid, started (with the local AWS) if it is not running. Raises OSError when it can't."""
    os.makedirs(lbview.folder(state), mode=0o700, exist_ok=True)
    with open(os.path.join(lbview.folder(state), "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = running(state)
        if pid is not None:
            return pid
        localaws.ensure(state, env)
        log_path = os.path.join(lbview.folder(state), "daemon.log")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-c", _MAIN, state], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True, cwd="/", env=env)
        try:   # it exits once the daemon (its child) has written its first view
            code = proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -1
        pid = running(state)
        if code != 0 or pid is None:
            raise OSError(f"the load balancer cannot start (see {log_path})")
        return pid


def stop(state: str, timeout: float = 5.0) -> bool:
    """End the state's daemon; whether one ran."""
    found = lbview.read(state)
    if found is None:
        return False
    pid, started = found["pid"], found["started"]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while start_ticks(pid) == started and time.monotonic() < deadline:
            time.sleep(0.02)
        if start_ticks(pid) != started:
            return True
    return True


def _find_lb(found: Status, name: str) -> LoadBalancerView:
    for lb in found["load_balancers"]:
        if name in (lb["arn"], lb["name"]):
            return lb
    raise LookupError(f"no load balancer {name!r} with an HTTP listener forwarding to a target group is served")


def url_for(state: str, load_balancer: str) -> str:
    """``http://127.0.0.1:PORT`` of the first listener of the load balancer (name or ARN)."""
    found = lbview.read(state)
    if found is None:
        raise LookupError("the load balancer daemon does not run (cdsim lb serve)")
    return _find_lb(found, load_balancer)["listeners"][0]["url"]


def target_health(state: str, target_group: str) -> list[TargetHealth]:
    """The targets of the target group (name or ARN) with their health, as the daemon sees them now."""
    found = lbview.read(state)
    if found is None:
        raise LookupError("the load balancer daemon does not run (cdsim lb serve)")
    for group in found["target_groups"]:
        if target_group in (group["arn"], group["name"]):
            return group["targets"]
    raise LookupError(f"no target group {target_group!r} behind a served load balancer")


def wait_for_target(state: str, target_group: str, target_id: str, wanted: tuple[str, ...] | None,
                    timeout: float) -> TargetHealth | None:
    """Wait until the target of the group (name or ARN) is in one of the ``wanted`` states (e.g.
    ``("healthy",)`` after registering it), or, with None, gone from the group (drained after
    deregistering it); returns its health (None when gone). TimeoutError after ``timeout``."""
    def find(view: Status) -> TargetHealth | None:
        group = next((g for g in view["target_groups"] if target_group in (g["arn"], g["name"])), None)
        return next((t for t in group["targets"] if t["id"] == target_id), None) if group else None

    def done(view: Status) -> bool:
        found = find(view)
        return found is None if wanted is None else found is not None and found["state"] in wanted

    return find(wait_until(state, done, timeout))


def listeners_exist(state: str) -> bool:
    """Whether the local AWS (running) has an application load balancer with an HTTP listener that
    forwards to a target group: what the daemon would serve."""
    lbs = localaws.query(state, "elasticloadbalancing", {**ELBV2, "Action": "DescribeLoadBalancers"})
    for arn in (m.findtext("LoadBalancerArn") or "" for m in lbs.iterfind(".//LoadBalancers/member")
                if (m.findtext("Type") or "application") == "application"):
        found = localaws.query(state, "elasticloadbalancing", {**ELBV2, "Action": "DescribeListeners",
                                                                "LoadBalancerArn": arn})
        for li in found.iterfind(".//Listeners/member"):
            if li.findtext("Protocol") == "HTTP" and li.findtext("DefaultActions/member/Type") == "forward":
                return True
    return False


def wait_until(state: str, predicate: Callable[[Status], bool], timeout: float) -> Status:
    """Poll the daemon's view (every 50 ms) until ``predicate`` holds; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Status | None = None
    while time.monotonic() < deadline:
        last = lbview.read(state)
        if last is not None and predicate(last):
            return last
        time.sleep(0.05)
    raise TimeoutError(f"the load balancer did not get there in {timeout:g} s; last view: {json.dumps(last)}")


# ---- sockets in an instance's network namespace ---------------------------------------------------

def helper_main(init_pid: int, init_started: int, userns: bool, control: int) -> int:
    """In the instance's network namespace: a new TCP socket for each byte read on ``control``, sent back
    (SCM_RIGHTS); exits when the daemon closes its end or the instance's init exits."""
    channel = socket.socket(fileno=control)
    try:
        services.join_network(init_pid, init_started, userns)
    except OSError as e:
        channel.sendall(f"error {e}".encode("utf-8", "replace"))
        return 1
    channel.sendall(b"ok")
    try:
        init = os.pidfd_open(init_pid)
    except OSError:
        return 1
    if start_ticks(init_pid) != init_started:
        return 0
    while True:
        ready = select.select([channel.fileno(), init], [], [])[0]
        if init in ready:
            return 0
        asked = channel.recv(64)
        if not asked:
            return 0
        made = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in asked]
        socket.send_fds(channel, [b"s"], [s.fileno() for s in made])
        for s in made:
            s.close()


class Netns:
    """Sockets of one running instance's network namespace, made by its helper process."""

    BATCH = 8

    def __init__(self, inst: store.Instance, record: store.KeeperRecord, userns: bool) -> None:
        self.key = (record["init_pid"], record["init_started"])
        ours, theirs = socket.socketpair()
        self._proc = subprocess.Popen([sys.executable, "-c", _HELPER, str(record["init_pid"]),
                                       str(record["init_started"]), "1" if userns else "0", str(theirs.fileno())],
                                      pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, cwd="/")
        theirs.close()
        ours.settimeout(START_TIMEOUT)
        answer = ours.recv(4096)
        if answer != b"ok":
            ours.close()
            self._proc.wait()
            raise OSError(f"cannot reach instance {inst.name!r}: "
                          f"{answer.decode('utf-8', 'replace') or 'its helper died'}")
        ours.settimeout(10)
        self._channel = ours
        self._spare: list[socket.socket] = []
        self._lock = threading.Lock()

    def socket(self) -> socket.socket:
        with self._lock:
            if not self._spare:
                self._channel.sendall(b"s" * self.BATCH)
                _msg, fds, _flags, _addr = socket.recv_fds(self._channel, 16, self.BATCH)
                if not fds:
                    raise OSError("the instance's network helper is gone")
                self._spare = [socket.socket(fileno=fd) for fd in fds]
            return self._spare.pop()

    def close(self) -> None:
        with self._lock:
            for s in self._spare:
                s.close()
            self._spare = []
            self._channel.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def alive(self) -> bool:
        return self._proc.poll() is None


@dataclass(frozen=True)
class Place:
    """Where a target is: its instance and private address."""

    instance: str
    folder: str
    address: str


class Instances:
    """The state's instances by instance id and address, and a Netns per running one."""

    def __init__(self, state: str) -> None:
        self.state = state
        self._netns: dict[str, Netns] = {}
        self._lock = threading.Lock()

    def places(self) -> dict[str, Place]:
        found: dict[str, Place] = {}
        top = instances_dir(self.state)
        try:
            names = sorted(os.listdir(top))
        except OSError:
            return found
        for name in names:
            try:
                with open(os.path.join(top, name, "ec2.json"), encoding="utf-8") as f:
                    identity = json.load(f)
            except (OSError, ValueError):
                continue
            place = Place(name, os.path.join(top, name), identity["local_ipv4"])
            found[identity["instance_id"]] = place
            found[identity["local_ipv4"]] = place
        return found

    def running(self, place: Place) -> store.KeeperRecord | None:
        inst = store.Instance(name=place.instance, path=place.folder, network="private")
        record = store.read_keeper(inst)
        if record is None or start_ticks(record["init_pid"]) != record["init_started"]:
            return None
        return record

    def socket(self, place: Place) -> socket.socket:
        """An unconnected TCP socket in the instance's network namespace; OSError when it does not run."""
        record = self.running(place)
        if record is None:
            raise OSError(f"instance {place.instance} does not run")
        with self._lock:
            netns = self._netns.get(place.folder)
            if netns is not None and (netns.key != (record["init_pid"], record["init_started"]) or not netns.alive()):
                netns.close()
                netns = None
            if netns is None:
                meta = store.read_meta(place.folder)
                inst = store.Instance(name=meta["name"], path=place.folder, network=meta["network"])
                netns = self._netns[place.folder] = Netns(inst, record, bool(meta.get("user_namespace")))
        return netns.socket()

    def close(self) -> None:
        with self._lock:
            for netns in self._netns.values():
                netns.close()
            self._netns.clear()


class _TargetConnection(http.client.HTTPConnection):
    def __init__(self, instances: Instances, place: Place, port: int, timeout: float) -> None:
        super().__init__(place.address, port, timeout=timeout)
        self._instances, self._place = instances, place
        self.reused = False

    def connect(self) -> None:
        sock = self._instances.socket(self._place)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((self._place.address, self.port))
        except OSError:
            sock.close()
            raise
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock


# ---- the model: target groups, targets and their health ------------------------------------------

@dataclass
class HealthCheck:
    protocol: str = "HTTP"
    port: str = "traffic-port"
    path: str = "/"
    interval: float = 30.0
    timeout: float = 5.0
    healthy: int = 5
    unhealthy: int = 2
    matcher: str = "200"

    def matches(self, code: int) -> bool:
        for part in self.matcher.replace(" ", "").split(","):
            low, _, high = part.partition("-")
            if low.isdigit() and int(low) <= code <= int(high or low):
                return True
        return False


@dataclass
class Target:
    id: str
    port: int
    place: Place | None
    state: str = "initial"
    reason: str = "Elb.RegistrationInProgress"
    description: str = "Target registration is in progress"
    successes: int = 0
    failures: int = 0
    checked: bool = False
    in_flight: int = 0
    drain_until: float | None = None
    connections: set[_TargetConnection] = field(default_factory=set)
    idle: list[_TargetConnection] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def view(self, check: HealthCheck) -> TargetHealth:
        return {"id": self.id, "port": self.port, "state": self.state, "reason": self.reason,
                "description": self.description, "address": self.place.address if self.place else "",
                "health_check_port": str(self.port) if check.port == "traffic-port" else check.port}


@dataclass
class Group:
    arn: str
    name: str
    check: HealthCheck
    delay: float = 300.0
    targets: dict[tuple[str, int], Target] = field(default_factory=dict)
    turn: int = 0


class Balancer:
    """The daemon's state and work: moto's configuration, health checks, the listeners, the forwarding."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.instances = Instances(state)
        self.groups: dict[str, Group] = {}
        self.listeners: dict[tuple[str, int], tuple[ThreadingHTTPServer, str]] = {}   # (lb, port) -> server, tg
        self.balancers: list[LoadBalancerView] = []
        self.lock = threading.RLock()
        self.changed = threading.Event()
        self.applied = 0
        self._ports = self._previous_ports()

    # -- reading moto
    def _query(self, params: dict[str, str]) -> Any:
        return localaws.query(self.state, "elasticloadbalancing", {**ELBV2, **params}, extra_headers=RAW)

    def _previous_ports(self) -> dict[str, int]:
        try:
            with open(lbview.status_path(self.state), encoding="utf-8") as f:
                old = json.load(f)
            return {f"{lb['arn']} {li['port']}": int(li["url"].rsplit(":", 1)[1])
                    for lb in old["load_balancers"] for li in lb["listeners"]}
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return {}

    def refresh(self) -> None:
        """Read load balancers, listeners, target groups and registrations from moto; apply them."""
        token = lbview.last_change(self.state)
        self._refresh()
        self.applied = max(self.applied, token)
        self.publish()

    def _refresh(self) -> None:
        lbs = self._query({"Action": "DescribeLoadBalancers"})
        wanted: dict[tuple[str, int], str] = {}
        names: dict[str, str] = {}
        for member in lbs.iterfind(".//LoadBalancers/member"):
            arn = member.findtext("LoadBalancerArn") or ""
            if (member.findtext("Type") or "application") != "application":
                continue
            names[arn] = member.findtext("LoadBalancerName") or ""
            listeners = self._query({"Action": "DescribeListeners", "LoadBalancerArn": arn})
            for li in listeners.iterfind(".//Listeners/member"):
                if li.findtext("Protocol") != "HTTP":
                    continue
                action = li.find("DefaultActions/member")
                if action is None or action.findtext("Type") != "forward":
                    continue
                tg = action.findtext("TargetGroupArn") or action.findtext("ForwardConfig/TargetGroups/member/"
                                                                           "TargetGroupArn") or ""
                if tg:
                    wanted[(arn, int(li.findtext("Port") or "80"))] = tg
        used = set(wanted.values())
        groups: dict[str, tuple[str, HealthCheck, float, list[tuple[str, int]]]] = {}
        if used:
            described = self._query({"Action": "DescribeTargetGroups"})
            for member in described.iterfind(".//TargetGroups/member"):
                arn = member.findtext("TargetGroupArn") or ""
                if arn not in used:
                    continue
                check = HealthCheck(
                    protocol=member.findtext("HealthCheckProtocol") or "HTTP",
                    port=member.findtext("HealthCheckPort") or "traffic-port",
                    path=member.findtext("HealthCheckPath") or "/",
                    interval=float(member.findtext("HealthCheckIntervalSeconds") or 30),
                    timeout=float(member.findtext("HealthCheckTimeoutSeconds") or 5),
                    healthy=int(member.findtext("HealthyThresholdCount") or 5),
                    unhealthy=int(member.findtext("UnhealthyThresholdCount") or 2),
                    matcher=member.findtext("Matcher/HttpCode") or "200")
                attributes = self._query({"Action": "DescribeTargetGroupAttributes", "TargetGroupArn": arn})
                delay = 300.0
                for attribute in attributes.iterfind(".//Attributes/member"):
                    if attribute.findtext("Key") == "deregistration_delay.timeout_seconds":
                        delay = float(attribute.findtext("Value") or 300)
                health = self._query({"Action": "DescribeTargetHealth", "TargetGroupArn": arn})
                registered = [(m.findtext("Target/Id") or "", int(m.findtext("Target/Port") or 0))
                              for m in health.iterfind(".//TargetHealthDescriptions/member")]
                groups[arn] = (member.findtext("TargetGroupName") or "", check, delay, registered)
        places = self.instances.places()
        with self.lock:
            for arn, (name, check, delay, registered) in groups.items():
                group = self.groups.get(arn)
                if group is None:
                    group = self.groups[arn] = Group(arn, name, check, delay)
                group.check, group.delay = check, delay
                for key in registered:
                    target = group.targets.get(key)
                    if target is None or target.drain_until is not None:
                        if target is not None:
                            target.stop.set()
                        target = group.targets[key] = Target(key[0], key[1], places.get(key[0]))
                        threading.Thread(target=self._health_loop, args=(group, target), daemon=True,
                                         name=f"health {key[0]}").start()
                    elif target.place is None:
                        target.place = places.get(key[0])
                for key, target in list(group.targets.items()):
                    if key not in registered and target.drain_until is None:
                        self._drain(group, target)
            for arn in list(self.groups):
                if arn not in groups:
                    for target in self.groups.pop(arn).targets.values():
                        target.stop.set()
                        self._close(target)
            self._listen(wanted, names)

    def _listen(self, wanted: dict[tuple[str, int], str], names: dict[str, str]) -> None:
        for key in list(self.listeners):
            if key not in wanted:
                server, _tg = self.listeners.pop(key)
                server.shutdown()
                server.server_close()
        for key, tg in wanted.items():
            if key in self.listeners:
                self.listeners[key] = (self.listeners[key][0], tg)
                continue
            server = self._server(key, self._ports.get(f"{key[0]} {key[1]}", 0))
            self.listeners[key] = (server, tg)
            threading.Thread(target=server.serve_forever, daemon=True, name=f"listener {key[1]}").start()
        views: list[LoadBalancerView] = []
        for arn, name in names.items():
            listeners: list[ListenerView] = [
                {"port": port, "url": f"http://127.0.0.1:{server.server_address[1]}", "target_group_arn": tg}
                for (lb, port), (server, tg) in sorted(self.listeners.items()) if lb == arn]
            if listeners:
                views.append({"arn": arn, "name": name, "dns_name": listeners[0]["url"].removeprefix("http://"),
                              "listeners": listeners})
        self.balancers = views

    def _server(self, key: tuple[str, int], port: int) -> ThreadingHTTPServer:
        try:
            server = _Front(("127.0.0.1", port), _Handler)
        except OSError:   # the port of the last run is taken: another
            server = _Front(("127.0.0.1", 0), _Handler)
        server.balancer, server.key = self, key
        return server

    def publish(self) -> None:
        with self.lock:
            groups: list[TargetGroupView] = [
                {"arn": g.arn, "name": g.name, "targets": [t.view(g.check) for t in g.targets.values()]}
                for g in self.groups.values()]
            view: Status = {"pid": os.getpid(), "started": start_ticks(os.getpid()), "updated": time.time(),
                            "applied": self.applied, "load_balancers": self.balancers, "target_groups": groups}
        atomic_write(lbview.status_path(self.state), json.dumps(view, indent=1) + "\n", private=True)

    # -- health
    def _set(self, target: Target, state: str, reason: str = "", description: str = "") -> None:
        if (target.state, target.reason) != (state, reason):
            target.state, target.reason, target.description = state, reason, description
            self.changed.set()

    def _health_loop(self, group: Group, target: Target) -> None:
        while not target.stop.is_set():
            check = group.check
            place = target.place
            if place is None or self.instances.running(place) is None:
                with self.lock:
                    if target.drain_until is None:
                        self._set(target, "unused", "Target.InvalidState", "Target is in the stopped state")
                        target.successes = target.failures = 0
                        target.checked = False
                if target.stop.wait(min(check.interval, 1.0)):
                    return
                target.place = target.place or self.instances.places().get(target.id)
                continue
            ok, reason, description = self._probe(place, target, check)
            with self.lock:
                if target.stop.is_set() or target.drain_until is not None:
                    return
                if ok:
                    target.successes, target.failures = target.successes + 1, 0
                    if target.state != "healthy" and (not target.checked or target.state == "unused"
                                                      or target.successes >= check.healthy):
                        self._set(target, "healthy")
                else:
                    target.failures, target.successes = target.failures + 1, 0
                    if target.state == "initial" and target.reason != "Elb.InitialHealthChecking":
                        self._set(target, "initial", "Elb.InitialHealthChecking", "Initial health checks in progress")
                    if target.state != "unhealthy" and target.failures >= check.unhealthy:
                        self._set(target, "unhealthy", reason, description)
                    elif target.state == "unhealthy":
                        self._set(target, "unhealthy", reason, description)
                target.checked = True
            if target.stop.wait(check.interval):
                return

    def _probe(self, place: Place, target: Target, check: HealthCheck) -> tuple[bool, str, str]:
        port = target.port if check.port == "traffic-port" else int(check.port)
        try:
            sock = self.instances.socket(place)
        except OSError as e:
            return False, "Target.FailedHealthChecks", str(e)
        try:
            sock.settimeout(min(check.timeout, check.interval))   # (moto lets a timeout exceed the interval)
            sock.connect((place.address, port))
            if check.protocol == "TCP":
                return True, "", ""
            if check.protocol == "HTTPS":
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock)
            sock.sendall(f"GET {check.path} HTTP/1.1\r\nHost: {place.address}:{port}\r\n"
                         "User-Agent: ELB-HealthChecker/2.0\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                data = sock.recv(4096)
                if not data:
                    break
                head += data
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or not parts[1].isdigit():
                return False, "Target.FailedHealthChecks", "Health checks failed"
            code = int(parts[1])
            if check.matches(code):
                return True, "", ""
            return False, "Target.ResponseCodeMismatch", f"Health checks failed with these codes: [{code}]"
        except TimeoutError:
            return False, "Target.Timeout", "Request timed out"
        except (OSError, ssl.SSLError):
            return False, "Target.FailedHealthChecks", "Health checks failed"
        finally:
            sock.close()

    # -- draining
    def _drain(self, group: Group, target: Target) -> None:
        target.stop.set()
        target.drain_until = time.monotonic() + group.delay
        self._set(target, "draining", "Target.DeregistrationInProgress", "Target deregistration is in progress")
        for conn in target.idle:
            conn.close()
        target.idle.clear()

    def sweep(self) -> None:
        """Remove draining targets whose deregistration delay is over (their connections closed)."""
        now = time.monotonic()
        with self.lock:
            for group in self.groups.values():
                for key, target in list(group.targets.items()):
                    if target.drain_until is not None and now >= target.drain_until:
                        del group.targets[key]
                        self._close(target)
                        self.changed.set()

    def _close(self, target: Target) -> None:
        for conn in list(target.connections) + target.idle:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        target.idle.clear()

    # -- forwarding
    def pick(self, tg: str) -> Target | None:
        """The next healthy target of the group, round robin."""
        with self.lock:
            group = self.groups.get(tg)
            if group is None:
                return None
            healthy = [t for t in group.targets.values() if t.state == "healthy" and t.drain_until is None]
            if not healthy:
                return None
            group.turn = (group.turn + 1) % (1 << 30)
            target = healthy[group.turn % len(healthy)]
            target.in_flight += 1
            return target

    @contextmanager
    def connection(self, target: Target) -> Iterator[_TargetConnection]:
        """A connection to the target (an idle kept-alive one, else new); kept for reuse when it may be."""
        assert target.place is not None
        with self.lock:
            conn = target.idle.pop() if target.idle else None
        if conn is None:
            conn = _TargetConnection(self.instances, target.place, target.port, IDLE_TIMEOUT)
        else:
            conn.reused = True
        with self.lock:
            target.connections.add(conn)
        reusable = False
        try:
            yield conn
            reusable = conn.sock is not None
        finally:
            with self.lock:
                target.connections.discard(conn)
                target.in_flight -= 1
                if reusable and target.drain_until is None and len(target.idle) < 16:
                    target.idle.append(conn)
                else:
                    conn.close()
            if target.drain_until is not None and target.in_flight == 0:
                self.sweep()

    def close(self) -> None:
        with self.lock:
            for server, _tg in self.listeners.values():
                server.shutdown()
                server.server_close()
            for group in self.groups.values():
                for target in group.targets.values():
                    target.stop.set()
                    self._close(target)
        self.instances.close()


class _Front(ThreadingHTTPServer):
    daemon_threads = True
    balancer: Balancer
    key: tuple[str, int]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "awselb/2.0"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: _Front
    _headers_buffer: list[bytes]   # the base class's, where send_header collects the head

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # no Nagle wait after the headers

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        return self.rfile.read(int(length)) if length.isdigit() else b""

    def _error(self, code: int, text: str) -> None:
        body = f"<html><body><center><h1>{code} {text}</h1></center></body></html>\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        balancer = self.server.balancer
        try:
            body = self._body()
        except ValueError:
            self.close_connection = True
            self._error(400, "Bad Request")
            return
        with balancer.lock:
            tg = balancer.listeners.get(self.server.key, (None, ""))[1]
        target = balancer.pick(tg)
        if target is None:
            self._error(503, "Service Temporarily Unavailable")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        forwarded = self.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {self.client_address[0]}" if forwarded else self.client_address[0]
        headers["X-Forwarded-Proto"] = "http"
        headers["X-Forwarded-Port"] = str(self.server.key[1])
        with balancer.connection(target) as conn:
            while True:
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    reply = conn.getresponse()
                    break
                except TimeoutError:
                    conn.close()
                    self._error(504, "Gateway Time-out")
                    return
                except (OSError, http.client.HTTPException):
                    conn.close()
                    if conn.reused and target.drain_until is None:   # a kept-alive one the target had closed
                        conn.reused = False
                        continue
                    self._error(502, "Bad Gateway")
                    return
            self.send_response_only(reply.status, reply.reason)
            self.send_header("Date", self.date_time_string())
            self.send_header("Server", self.server_version)
            length = reply.getheader("Content-Length")
            no_body = self.command == "HEAD" or reply.status in (204, 304) or 100 <= reply.status < 200
            for key, value in reply.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() not in ("date", "server"):
                    self.send_header(key, value)
            chunked = not no_body and length is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            try:
                if no_body or (length is not None and length.isdigit() and int(length) <= WHOLE):
                    data = reply.read()   # headers and a small body in one write: one wake-up for the client
                    self._headers_buffer.append(b"\r\n" + (b"" if no_body else data))
                    self.flush_headers()
                else:
                    self.end_headers()
                    while True:
                        data = reply.read1(65536)
                        if not data:
                            break
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
            except (OSError, http.client.HTTPException):
                conn.close()
                self.close_connection = True
                return
            if reply.will_close:
                conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _forward

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


# ---- the daemon -----------------------------------------------------------------------------------

def daemon_main(state: str) -> int:
    """Read moto once and listen, then leave the serving to a child (detached): the starting process
    learns from this one's exit status whether the load balancer runs."""
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            return 0 if report.read().strip() == b"ok" else 1
    os.close(read_end)
    balancer = Balancer(state)
    try:
        balancer.refresh()
    except Exception:  # noqa: BLE001 - logged; the starting process reports the failure
        traceback.print_exc()
        os._exit(1)
    os.write(write_end, b"ok\n")
    os.close(write_end)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    try:
        _serve(state, balancer)
    finally:
        balancer.close()
    return 0


def _serve(state: str, balancer: Balancer) -> None:
    def mtime() -> int:
        try:
            return os.stat(lbview.changes_path(state)).st_mtime_ns
        except OSError:
            return 0

    seen = 0
    last_read = last_idle = time.monotonic()
    idle = 0
    while True:
        if balancer.changed.wait(WATCH):
            balancer.changed.clear()
            balancer.publish()
        balancer.sweep()
        now = time.monotonic()
        current = mtime()
        if current != seen or now - last_read >= REREAD:
            seen, last_read = current, now
            try:
                balancer.refresh()
            except Exception:  # noqa: BLE001 - logged; tried again at the next change or re-read
                traceback.print_exc()
        if now - last_idle >= IDLE_CHECK:
            last_idle = now
            idle = 0 if localaws.instances_running(state) else idle + 1
            if idle >= IDLE_CHECKS:
                return
