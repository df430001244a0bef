"""The local AWS of a cdsim state: one moto server that the instances of that state reach as AWS.

:func:`ensure` starts it when an instance first calls AWS: moto's all-services server (EC2, ELB, ELBv2,
Auto Scaling, S3, SSM, Secrets Manager, STS, ...) on a Unix socket in the state folder
(``aws/moto.sock``, 0600: only its owner connects; no TCP port on the host). It keeps its resources in
memory while any instance of the state runs and exits once none has for a moment. Account
``000000000000``, as the instance metadata reports. Every private-network instance of the state is an
EC2 instance there (:class:`Ec2Mirror`): the id, AMI, type, zone and private address its metadata
reports, its tags plus ``Name``, running while its services run, else stopped. ELB/ELBv2 answers go
through agent.instance.lbview (the state's load balancer's health states and URLs, its change token),
and a listener made or changed starts the load balancer (agent.instance.loadbalancer, by a process: it
imports this module). Where moto answers differently from AWS in a way hooks depend on,
agent.instance.awsfixes answers instead (before lbview and moto). From the host, :func:`register_targets`,
:func:`register_with_load_balancer` and :func:`attach_to_auto_scaling_group` put instances behind a
target group, a Classic Load Balancer or in an Auto Scaling group (``cdsim fleet up``). Must not import
the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import fcntl
import http.client
import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from typing import Any
from xml.etree import ElementTree

from agent.instance import awsfixes, lbview
from agent.instance.procstat import start_ticks
from agent.state import aws_dir, instances_dir

ACCOUNT = "000000000000"
START_TIMEOUT = 90.0
IDLE_CHECK = 0.5

_MAIN = "import sys; from agent.instance.localaws import server_main; sys.exit(server_main(sys.argv[1]))"


def folder(state: str) -> str:
    return aws_dir(state)


def socket_path(state: str) -> str:
    return os.path.join(folder(state), "moto.sock")


def answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def ensure(state: str, env: dict[str, str] | None = None) -> str:
    """The socket of the state's local AWS, started if it is not running."""
    os.makedirs(folder(state), mode=0o700, exist_ok=True)
    path = socket_path(state)
    with open(os.path.join(folder(state), "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if answers(path):
            return path
        with open(os.path.join(folder(state), "moto.log"), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-c", _MAIN, state], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True, cwd="/", env=env)
        try:   # it exits once it listens (its child serves), or with why it can't
            status = proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = -1
        if status != 0 or not answers(path):
            raise OSError(f"the local AWS (moto) cannot start: {_last_line(os.path.join(folder(state), 'moto.log'))} "
                          f"(see {os.path.join(folder(state), 'moto.log')})")
    return path


def _last_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-50:] if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


class LocalAwsError(Exception):
    """The local AWS refused a request: ``code`` and ``message`` as AWS's error response gives them."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def query(state: str, service: str, params: dict[str, str], *, region: str = "us-east-1",
          host: str | None = None, extra_headers: dict[str, str] | None = None) -> ElementTree.Element:
    """One AWS query-protocol call (EC2, ELB, ELBv2, Auto Scaling, ...) to the state's local AWS, from the
    host (through its Unix socket); the response's XML with namespaces removed. Raises LocalAwsError."""
    body = urllib.parse.urlencode(params)
    connection = _UnixConnection(socket_path(state))
    stamp = time.strftime("%Y%m%d")
    headers = {"Host": host or f"{service}.{region}.amazonaws.com",
               "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
               "Authorization": f"AWS4-HMAC-SHA256 Credential=AKIACDSIMLOCAL/{stamp}/{region}/{service}/aws4_request, "
                                "SignedHeaders=host, Signature=0", **(extra_headers or {})}
    try:
        connection.request("POST", "/", body=body, headers=headers)
        reply = connection.getresponse()
        text = reply.read()
    finally:
        connection.close()
    root = ElementTree.fromstring(text)
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    if reply.status >= 400:
        raise LocalAwsError(root.findtext(".//Code") or str(reply.status), root.findtext(".//Message") or "")
    return root


def register_targets(state: str, target_group: str, instance_ids: list[str], *, region: str = "us-east-1",
                     port: int = 80) -> str:
    """Register EC2 instances in the ELBv2 target group ``target_group`` of the state's local AWS, made
    (HTTP, ``port``, the default VPC) when missing; returns its ARN. The local AWS must be running."""
    elbv2 = {"Version": "2015-12-01"}
    try:
        found = query(state, "elasticloadbalancing", {**elbv2, "Action": "DescribeTargetGroups",
                                                      "Names.member.1": target_group}, region=region)
        arn = found.findtext(".//TargetGroupArn")
    except LocalAwsError as e:
        if e.code != "TargetGroupNotFound":
            raise
        arn = None
    if not arn:
        vpcs = query(state, "ec2", {"Version": "2016-11-15", "Action": "DescribeVpcs",
                                    "Filter.1.Name": "isDefault", "Filter.1.Value.1": "true"}, region=region)
        made = query(state, "elasticloadbalancing", {
            **elbv2, "Action": "CreateTargetGroup", "Name": target_group, "Protocol": "HTTP", "Port": str(port),
            "VpcId": vpcs.findtext(".//vpcId") or "", "TargetType": "instance"}, region=region)
        arn = made.findtext(".//TargetGroupArn") or ""
    targets = {f"Targets.member.{n}.Id": iid for n, iid in enumerate(instance_ids, 1)}
    query(state, "elasticloadbalancing", {**elbv2, "Action": "RegisterTargets", "TargetGroupArn": arn, **targets},
          region=region)
    return arn


def register_with_load_balancer(state: str, load_balancer: str, instance_ids: list[str], *, zone: str,
                                region: str = "us-east-1", port: int = 80) -> None:
    """Register EC2 instances with the Classic Load Balancer ``load_balancer`` of the state's local AWS,
    made when missing (an HTTP listener on ``port`` to ``port``, in the instances' zone)."""
    elb = {"Version": awsfixes.ELB_VERSION}
    try:
        query(state, "elasticloadbalancing", {**elb, "Action": "DescribeLoadBalancers",
                                              "LoadBalancerNames.member.1": load_balancer}, region=region)
    except LocalAwsError as e:
        if e.code != "LoadBalancerNotFound":
            raise
        query(state, "elasticloadbalancing", {
            **elb, "Action": "CreateLoadBalancer", "LoadBalancerName": load_balancer,
            "Listeners.member.1.Protocol": "HTTP", "Listeners.member.1.LoadBalancerPort": str(port),
            "Listeners.member.1.InstanceProtocol": "HTTP", "Listeners.member.1.InstancePort": str(port),
            "AvailabilityZones.member.1": zone}, region=region)
    query(state, "elasticloadbalancing", {
        **elb, "Action": "RegisterInstancesWithLoadBalancer", "LoadBalancerName": load_balancer,
        **{f"Instances.member.{n}.InstanceId": iid for n, iid in enumerate(instance_ids, 1)}}, region=region)


def attach_to_auto_scaling_group(state: str, group: str, instance_ids: list[str], *, image_id: str,
                                 instance_type: str, zone: str, region: str = "us-east-1") -> None:
    """Attach EC2 instances to the Auto Scaling group ``group`` of the state's local AWS, made when missing
    (a launch configuration of the instances' AMI and type; minimum 0, maximum the instances it gets)."""
    autoscaling = {"Version": "2011-01-01"}
    found = query(state, "autoscaling", {**autoscaling, "Action": "DescribeAutoScalingGroups",
                                         "AutoScalingGroupNames.member.1": group}, region=region)
    current = found.find(".//AutoScalingGroups/member")
    if current is None:
        config = f"{group}-launch-configuration"
        query(state, "autoscaling", {**autoscaling, "Action": "CreateLaunchConfiguration",
                                     "LaunchConfigurationName": config, "ImageId": image_id,
                                     "InstanceType": instance_type}, region=region)
        query(state, "autoscaling", {**autoscaling, "Action": "CreateAutoScalingGroup", "AutoScalingGroupName": group,
                                     "LaunchConfigurationName": config, "MinSize": "0",
                                     "MaxSize": str(len(instance_ids)), "DesiredCapacity": "0",
                                     "AvailabilityZones.member.1": zone}, region=region)
        members: set[str] = set()
    else:
        members = {e.text or "" for e in current.iterfind(".//Instances/member/InstanceId")}
        wanted = len(members | set(instance_ids))
        if wanted > int(current.findtext("MaxSize") or "0"):
            query(state, "autoscaling", {**autoscaling, "Action": "UpdateAutoScalingGroup",
                                         "AutoScalingGroupName": group, "MaxSize": str(wanted)}, region=region)
    new = [iid for iid in instance_ids if iid not in members]
    if new:
        query(state, "autoscaling", {**autoscaling, "Action": "AttachInstances", "AutoScalingGroupName": group,
                                     **{f"InstanceIds.member.{n}": iid for n, iid in enumerate(new, 1)}},
              region=region)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def instances_running(state: str) -> bool:
    """Whether any instance of the state has its services running (their daemons' records)."""
    top = instances_dir(state)
    try:
        names = os.listdir(top)
    except OSError:
        return False
    return any(_services_running(os.path.join(top, name)) for name in names)


class Ec2Mirror:
    """Keeps moto's EC2 in step with the state's instances (checked before each request, redone only
    when an instance's identity, tags or running state changed)."""

    def __init__(self, state: str) -> None:
        self.state = state
        self._seen: tuple[tuple[str, float, bool], ...] = ()
        self._lock = threading.Lock()

    def _instances(self) -> list[tuple[str, str, bool]]:
        top = instances_dir(self.state)
        found = []
        try:
            names = sorted(os.listdir(top))
        except OSError:
            return []
        for name in names:
            folder = os.path.join(top, name)
            if os.path.isfile(os.path.join(folder, "ec2.json")):
                found.append((name, folder, _services_running(folder)))
        return found

    def sync(self) -> None:
        with self._lock:
            found = self._instances()
            seen = tuple((name, os.path.getmtime(os.path.join(folder, "ec2.json")), up) for name, folder, up in found)
            if seen == self._seen:
                return
            failed = False
            for name, folder, up in found:
                try:   # one instance that can't be mirrored does not keep the others out
                    with open(os.path.join(folder, "ec2.json"), encoding="utf-8") as f:
                        self._mirror(name, json.load(f), up)
                except Exception:  # noqa: BLE001 - logged (moto.log); tried again with the next request
                    print(f"cdsim: cannot mirror instance {name} into the local EC2:", flush=True)
                    traceback.print_exc()
                    failed = True
            if not failed:
                self._seen = seen

    def _mirror(self, name: str, identity: dict[str, Any], up: bool) -> None:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[ACCOUNT][identity["region"]]
        iid = identity["instance_id"]
        instance = backend.get_instance_by_id(iid)
        if instance is None:
            subnet = next((s for s in backend.describe_subnets()
                           if s.default_for_az and ipaddress.ip_address(identity["local_ipv4"])
                           in ipaddress.ip_network(s.cidr_block)), None)
            reservation = backend.run_instances(
                identity["ami_id"], 1, None, [], instance_type=identity["instance_type"],
                is_instance_type_default=False, placement=subnet.availability_zone if subnet else None,
                region_name=identity["region"], subnet_id=subnet.id if subnet else None,
                private_ip=identity["local_ipv4"] if subnet else None, security_group_ids=[], nics=[], tags={},
                iam_instance_profile_name=None, iam_instance_profile_arn=None, metadata_options={},
                launch_template={}, ebs_optimized=False, disable_api_stop=False, key_name=None,
                client_token=None, monitoring_state="disabled")
            instance = reservation.instances[0]
            instance.id = iid
        backend.create_tags([iid], {"Name": name, **identity.get("tags", {})})
        if up and instance.state_code != 16:
            backend.start_instances([iid])
        elif not up and instance.state_code == 16:
            backend.stop_instances([iid])


def _services_running(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "services.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and start_ticks(record.get("pid", -1)) == record.get("started")


def _elbv2(state: str, moto: Any, environ: dict[str, Any], start_response: Any) -> Any:
    """An ELB/ELBv2 request: the load balancer's view put into its answer (agent.instance.lbview), and
    the load balancer told when it changed something."""
    length = environ.get("CONTENT_LENGTH") or "0"
    body = environ["wsgi.input"].read(int(length)) if length.isdigit() else b""
    environ["wsgi.input"] = io.BytesIO(body)
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
    action = params.get("Action", "")
    if not action.startswith("Describe"):
        statuses: list[str] = []

        def noted(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        answer = moto(environ, noted)
        if action in ("CreateListener", "ModifyListener") and statuses and statuses[0].startswith("200"):
            _serve_load_balancers(state)
        lbview.note_change(state)
        return answer
    if environ.get("HTTP_" + lbview.RAW_HEADER.upper().replace("-", "_")) == "raw" or action not in lbview.ADJUSTED:
        return moto(environ, start_response)
    got: list[Any] = []
    chunks = b"".join(moto(environ, lambda status, headers, exc_info=None: got.append((status, headers))))
    status, headers = got[0]
    adjusted = lbview.adjust(state, action, params, chunks) if status.startswith("200") else None
    if adjusted is not None:
        chunks = adjusted
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(chunks))))
    start_response(status, headers)
    return [chunks]


_LB_MAIN = "import sys; from agent.instance.loadbalancer import ensure; ensure(sys.argv[1])"


def _serve_load_balancers(state: str) -> None:
    """A listener was made or changed: start the state's load balancer (agent.instance.loadbalancer) if it
    does not run, without waiting for it (its first view waits for this answer)."""
    if lbview.read(state) is not None:
        return
    os.makedirs(lbview.folder(state), mode=0o700, exist_ok=True)
    with open(os.path.join(lbview.folder(state), "daemon.log"), "ab") as log:
        starter = subprocess.Popen([sys.executable, "-c", _LB_MAIN, state], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, start_new_session=True, cwd="/")
    threading.Thread(target=starter.wait, daemon=True).start()


def server_main(state: str) -> int:
    """Import moto and listen, then leave the serving to a child (detached): the starting process learns
    from this one's exit status whether the local AWS runs."""
    os.environ["MOTO_ACCOUNT_ID"] = ACCOUNT
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    path = socket_path(state)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    moto = DomainDispatcherApplication(create_backend_app)
    mirror = Ec2Mirror(state)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            mirror.sync()
        except Exception:  # noqa: BLE001 - logged; the request still goes to moto
            traceback.print_exc()
        try:
            own = awsfixes.answer(environ, ACCOUNT)
        except Exception:  # noqa: BLE001 - logged; moto answers instead
            traceback.print_exc()
            own = None
        if own is not None:
            status, body = own
            start_response(f"{status} {'OK' if status == 200 else 'Bad Request'}",
                           [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
            return [body]
        if environ.get("HTTP_HOST", "").startswith("elasticloadbalancing."):
            return _elbv2(state, moto, environ, start_response)
        return moto(environ, start_response)

    server = make_server("unix://" + path, 0, app, threaded=True, request_handler=MotoRequestHandler)
    os.chmod(path, 0o600)
    if os.fork() != 0:
        os._exit(0)

    def watch() -> None:
        idle = 0
        while idle < 4:
            time.sleep(IDLE_CHECK)
            idle = 0 if instances_running(state) else idle + 1
        try:
            os.unlink(path)
        except OSError:
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    server.serve_forever()
    return 0
