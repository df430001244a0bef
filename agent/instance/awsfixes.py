"""Where the local AWS answers as AWS does and moto does not: requests answered here, before moto.

Used by the local AWS's server (agent.instance.localaws), in its process, reading moto's models (never
changing them, never patching moto). What it answers:

* Classic ELB ``DescribeInstanceHealth`` (API 2012-06-01). AWS returns the state of each instance asked
  for "even if they are no longer registered with the load balancer" (the API reference), as
  ``OutOfService``, reason ``ELB``, "Instance is not currently registered with the LoadBalancer."; a
  stopped or pending registered instance is ``OutOfService`` for reason ``Instance``; terminated
  instances are left out; an instance id that EC2 does not know is the error ``InvalidInstance``. moto
  says ``Unknown`` for an instance that is not registered, and the `load-balancing/elb` sample hooks
  (deregister_from_elb.sh) wait for ``OutOfService`` after deregistering, so they would wait forever.

:func:`instance_states` is the rule (pure); :func:`answer` reads a WSGI request and moto's models.
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import io
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypedDict
from xml.sax.saxutils import escape

ELB_VERSION = "2012-06-01"
ELB_NAMESPACE = f"http://elasticloadbalancing.amazonaws.com/doc/{ELB_VERSION}/"
NOT_REGISTERED = "Instance is not currently registered with the LoadBalancer."
BODY_LIMIT = 1 << 20
_CREDENTIAL = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")


class InstanceState(TypedDict):
    """One member of DescribeInstanceHealth's InstanceStates."""

    InstanceId: str
    State: str
    ReasonCode: str
    Description: str


Answer = tuple[int, bytes]


def instance_states(asked: list[str], registered: list[str], ec2_state: Callable[[str], str | None]
                    ) -> list[InstanceState] | str:
    """DescribeInstanceHealth's InstanceStates for the instances ``asked`` (all ``registered`` ones when
    none is), given each instance's EC2 state name (None: EC2 does not know it); or the first unknown id
    (AWS's error InvalidInstance)."""
    out: list[InstanceState] = []
    for iid in asked or registered:
        state = ec2_state(iid)
        if state is None:
            return iid
        if state in ("terminated", "shutting-down"):
            continue   # "The state of terminated instances is not returned."
        if iid not in registered:
            out.append(InstanceState(InstanceId=iid, State="OutOfService", ReasonCode="ELB",
                                     Description=NOT_REGISTERED))
        elif state == "running":
            out.append(InstanceState(InstanceId=iid, State="InService", ReasonCode="N/A", Description="N/A"))
        else:   # pending, stopping, stopped
            shown = "stopped" if state == "stopping" else state
            out.append(InstanceState(InstanceId=iid, State="OutOfService", ReasonCode="Instance",
                                     Description=f"Instance is in {shown} state."))
    return out


def _xml_states(states: list[InstanceState]) -> bytes:
    def member(s: InstanceState) -> str:
        pairs = (("Description", s["Description"]), ("InstanceId", s["InstanceId"]), ("State", s["State"]),
                 ("ReasonCode", s["ReasonCode"]))
        return "<member>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in pairs) + "</member>"

    members = "".join(member(s) for s in states)
    return (f'<DescribeInstanceHealthResponse xmlns="{ELB_NAMESPACE}"><DescribeInstanceHealthResult>'
            f"<InstanceStates>{members}</InstanceStates></DescribeInstanceHealthResult>"
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</DescribeInstanceHealthResponse>").encode()


def _xml_error(code: str, message: str) -> bytes:
    return (f'<ErrorResponse xmlns="{ELB_NAMESPACE}"><Error><Type>Sender</Type><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
            "</ErrorResponse>").encode()


def _region_and_service(environ: Mapping[str, Any]) -> tuple[str, str] | None:
    found = _CREDENTIAL.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    if found:
        return found.group(1), found.group(2)
    host = str(environ.get("HTTP_HOST", "")).split(":")[0].split(".")
    if len(host) >= 3 and host[0] == "elasticloadbalancing":
        return host[1], host[0]
    return None


def _parameters(environ: dict[str, Any]) -> dict[str, str] | None:
    """The request's query parameters (query string and form body); the body is put back for moto."""
    params = dict(urllib.parse.parse_qsl(str(environ.get("QUERY_STRING", ""))))
    if environ.get("REQUEST_METHOD") == "POST":
        if "x-www-form-urlencoded" not in str(environ.get("CONTENT_TYPE", "")):
            return None
        try:
            size = int(environ.get("CONTENT_LENGTH") or "0")
        except ValueError:
            return None
        if not 0 < size <= BODY_LIMIT:
            return None
        body = environ["wsgi.input"].read(size)
        environ["wsgi.input"] = io.BytesIO(body)
        params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
    return params


def answer(environ: dict[str, Any], account: str) -> Answer | None:
    """The local AWS's own answer to a request (status, XML), or None to let moto answer it."""
    scope = _region_and_service(environ)
    if scope is None or scope[1] != "elasticloadbalancing":
        return None
    params = _parameters(environ)
    if not params or params.get("Action") != "DescribeInstanceHealth" or params.get("Version") != ELB_VERSION:
        return None
    from moto.ec2.exceptions import InvalidInstanceIdError
    from moto.ec2.models import ec2_backends
    from moto.elb.models import elb_backends

    region = scope[0]
    balancers = elb_backends[account][region].load_balancers
    if params.get("LoadBalancerName") not in balancers:
        return None   # moto's LoadBalancerNotFound
    balancer = balancers[params["LoadBalancerName"]]
    ec2 = ec2_backends[account][region]

    def ec2_state(iid: str) -> str | None:
        try:
            return str(ec2.get_instance(iid).state)
        except InvalidInstanceIdError:
            return None

    asked = [v for k, v in sorted(params.items(), key=lambda kv: _member_number(kv[0]))
             if re.fullmatch(r"Instances\.member\.\d+\.InstanceId", k)]
    states = instance_states(asked, list(balancer.instance_ids), ec2_state)
    if isinstance(states, str):
        return 400, _xml_error("InvalidInstance", f"Could not find EC2 instance {states}.")
    return 200, _xml_states(states)


def _member_number(key: str) -> int:
    found = re.search(r"\.member\.(\d+)\.", key)
    return int(found.group(1)) if found else 0
