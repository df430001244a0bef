"""Issue 20's load balancer figure: the latency the local load balancer adds to a request, against the
same request sent straight to the instance, at 200 requests/s.

    python bench/lb.py [--requests 1000] [--rate 200]

One sandboxed instance (needs root) runs a small keep-alive HTTP server (Python's http.server) in its own
network namespace, registered in a target group behind an application load balancer of the state's local
AWS, served by the state's load balancer daemon (agent.instance.loadbalancer). One client, one kept-alive
connection per path, alternates: a request through the load balancer (http://127.0.0.1:PORT), then the
same request straight to the instance's address (a socket made in its network namespace, as the load
balancer makes its own), paced so the load balancer gets ``--rate`` requests/s. Prints the median and the
95th percentile of each path and the difference (the added latency; target: at most 2 ms each), and the
daemon's own CPU time per request (from /proc: what the machine's load does not change). Every
request goes to loopback or into the instance's own namespace, and the loop is bounded in count.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Row, print_rows

TARGET = 2.0   # ms added per request
FLOOR = "the request sent straight to the instance"
FIGURE = "load balancer's added latency per request"
SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536   # the status line, headers and body in one write (flushed after each request)
    def do_GET(self):
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def available() -> str | None:
    if os.geteuid() != 0:
        return "not available: sandboxed instances need root"
    try:
        from agent.instance import loadbalancer  # noqa: F401
    except ImportError as e:
        return f"not available yet: {e}"
    return None


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of the process ``pid`` (with its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Direct(http.client.HTTPConnection):
    """A connection to the instance's address through a socket made in its network namespace."""

    def __init__(self, instances: object, place: object, port: int) -> None:
        from agent.instance.loadbalancer import Instances, Place

        assert isinstance(instances, Instances) and isinstance(place, Place)
        super().__init__(place.address, port, timeout=10)
        self._instances, self._place = instances, place

    def connect(self) -> None:
        import socket

        sock = self._instances.socket(self._place)
        sock.settimeout(10)
        sock.connect((self._place.address, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock


def _setup(state: str, files: str) -> tuple[str, object, object]:
    """The instance, its server, the target group, load balancer and listener; returns the load balancer's
    URL, and the Instances and Place to reach the instance directly."""
    from agent import instance as inst
    from agent.instance import imds, loadbalancer, localaws

    i = inst.create("lb-bench", state=state)
    script = os.path.join(files, "server.py")
    with open(script, "w") as f:
        f.write(SERVER)
    with open(script) as source:
        inst.exec_in(i, ["/bin/sh", "-c", "cat > /srv.py"], stdin=source)
    with open(os.devnull, "w") as null:
        inst.exec_in(i, ["/bin/sh", "-c", "setsid python3 /srv.py </dev/null >/dev/null 2>&1 &"], stdout=null)
    localaws.ensure(state)
    identity = imds.load(i)
    elbv2 = {"Version": "2015-12-01"}

    def query(**params: str) -> object:
        return localaws.query(state, "elasticloadbalancing", {**elbv2, **params})

    ec2 = {"Version": "2016-11-15"}
    vpc = localaws.query(state, "ec2", {**ec2, "Action": "DescribeVpcs", "Filter.1.Name": "isDefault",
                                        "Filter.1.Value.1": "true"}).findtext(".//vpcId") or ""
    subnets = [s.findtext("subnetId") or "" for s in localaws.query(state, "ec2", {
        **ec2, "Action": "DescribeSubnets", "Filter.1.Name": "vpc-id", "Filter.1.Value.1": vpc}).iterfind(
        ".//subnetSet/item")]
    tg = localaws.query(state, "elasticloadbalancing", {
        **elbv2, "Action": "CreateTargetGroup", "Name": "bench", "Protocol": "HTTP", "Port": "8080", "VpcId": vpc,
        "HealthCheckIntervalSeconds": "5", "HealthCheckTimeoutSeconds": "2"}).findtext(".//TargetGroupArn") or ""
    lb = localaws.query(state, "elasticloadbalancing", {
        **elbv2, "Action": "CreateLoadBalancer", "Name": "bench", "Type": "application",
        **{f"Subnets.member.{n}": s for n, s in enumerate(subnets[:2], 1)}}).findtext(".//LoadBalancerArn") or ""
    query(Action="CreateListener", LoadBalancerArn=lb, Protocol="HTTP", Port="80",
          **{"DefaultActions.member.1.Type": "forward", "DefaultActions.member.1.TargetGroupArn": tg})
    query(Action="RegisterTargets", TargetGroupArn=tg, **{"Targets.member.1.Id": identity["instance_id"]})
    loadbalancer.ensure(state)
    loadbalancer.wait_until(state, lambda s: any(t["state"] == "healthy" for g in s["target_groups"]
                                                 for t in g["targets"]), 60)
    instances = loadbalancer.Instances(state)
    return loadbalancer.url_for(state, "bench"), instances, instances.places()[identity["instance_id"]]


def measure(requests: int, rate: float, where: str) -> list[Row]:
    from agent import instance as inst
    from agent.instance import loadbalancer

    base = tempfile.mkdtemp(prefix="cdsim-bench-lb-", dir=where)
    state = os.path.join(base, "state")
    saved = os.environ.get("CDSIM_STATE_DIR")
    os.environ["CDSIM_STATE_DIR"] = state
    instances = None
    try:
        url, instances, place = _setup(state, base)
        host, port = url.removeprefix("http://").split(":")
        assert host == "127.0.0.1", url   # loopback only
        through = http.client.HTTPConnection(host, int(port), timeout=10)
        direct = _Direct(instances, place, 8080)

        def timed(conn: http.client.HTTPConnection) -> float:
            t = time.perf_counter()
            conn.request("GET", "/")
            reply = conn.getresponse()
            reply.read()
            took = time.perf_counter() - t
            if reply.status != 200:
                raise SystemExit(f"lb bench: a request answered {reply.status}")
            return took * 1000

        for _ in range(50):   # warm up both paths (connections, the target's kept-alive pool)
            timed(through)
            timed(direct)
        lb_ms, direct_ms = [], []
        period = 1.0 / rate
        daemon = loadbalancer.running(state)
        cpu0 = _cpu_seconds(daemon)
        start = time.perf_counter()
        for n in range(requests):
            lb_ms.append(timed(through))
            direct_ms.append(timed(direct))
            wait = start + (n + 1) * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        achieved = requests / (time.perf_counter() - start)
        cpu = (_cpu_seconds(daemon) - cpu0) / requests * 1000
        note = (f"{requests} requests each, {achieved:.0f}/s through the load balancer, kept-alive connections; "
                f"the daemon's CPU {cpu:.2f} ms per request")
        med = Row(f"{FIGURE}, median, {rate:g}/s", "", FLOOR, statistics.median(direct_ms),
                  statistics.median(lb_ms), statistics.median(lb_ms) - statistics.median(direct_ms), "ms each",
                  TARGET, note=note)
        p95 = Row(f"{FIGURE}, p95, {rate:g}/s", "", FLOOR, _percentile(direct_ms, 95), _percentile(lb_ms, 95),
                  _percentile(lb_ms, 95) - _percentile(direct_ms, 95), "ms each", TARGET, note=note)
        return [med, p95]
    finally:
        if instances is not None:
            instances.close()
        loadbalancer.stop(state)
        for status in inst.list_instances(state=state):
            inst.destroy(inst.get(status.name, state=state))
        if saved is None:
            os.environ.pop("CDSIM_STATE_DIR", None)
        else:
            os.environ["CDSIM_STATE_DIR"] = saved
        shutil.rmtree(base, ignore_errors=True)


def rows(requests: int = 1000, rate: float = 200.0, where: str = "/var/tmp") -> list[Row]:
    why = available()
    if why:
        got = [Row(f"{FIGURE}, median", "", FLOOR, None, None, None, "ms each", TARGET, note=why)]
    else:
        got = measure(requests, rate, where)
    print_rows(got)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second through the load balancer")
    ap.add_argument("--where", default="/var/tmp", help="folder for the state and the instance")
    args = ap.parse_args()
    rows(max(100, args.requests), args.rate, args.where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
