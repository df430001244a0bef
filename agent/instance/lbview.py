"""What the state's load balancer (agent.instance.loadbalancer) shows through the local AWS's API.

The load balancer daemon writes its view to ``STATE/aws/lb/status.json`` (:class:`Status`: the URL of
each listener it serves, each target's health); the local AWS (agent.instance.localaws) calls
:func:`adjust` on its way out, so that ``aws elbv2 describe-target-health`` reports the health checks'
states (initial, healthy, unhealthy, draining, unused) and ``describe-load-balancers`` the DNSName
``127.0.0.1:PORT`` for the load balancers the daemon serves. Everything else is moto's answer, unchanged
(moto's files are never patched). :func:`note_change` writes a token to ``aws/lb/changes`` after each request
that changes ELBv2's state, which the daemon watches to re-read moto at once; the request's answer waits
(up to :data:`APPLY_WAIT`) until the daemon's view says it applied that token, so a registration change
is in force when the call that made it returns.

Requests with the header :data:`RAW_HEADER` get moto's answer as it is (the daemon reads registrations
so). Must not import the deploy engine, hooks_runtime, or agent.instance.localaws (which imports this).
"""
from __future__ import annotations

import json
import os
import time
from typing import TypedDict
from xml.etree import ElementTree

from agent.fsutil import atomic_write
from agent.instance.procstat import start_ticks
from agent.state import aws_dir

RAW_HEADER = "X-Cdsim-Load-Balancer"   # value "raw": moto's own answer
NAMESPACE = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"
ADJUSTED = ("DescribeTargetHealth", "DescribeLoadBalancers")
APPLY_WAIT = 2.0   # how long a change waits for the daemon to apply it


class TargetHealth(TypedDict):
    """One target of a target group as the load balancer sees it (ELBv2's TargetHealthDescription)."""

    id: str                # instance id (or IP address, for an ip target group)
    port: int
    health_check_port: str
    state: str             # initial | healthy | unhealthy | draining | unused
    reason: str            # ELBv2's reason code ("" when healthy)
    description: str
    address: str           # the private address requests go to ("" when unknown)


class TargetGroupView(TypedDict):
    arn: str
    name: str
    targets: list[TargetHealth]


class ListenerView(TypedDict):
    port: int              # the listener's port in ELBv2
    url: str               # where it is served: http://127.0.0.1:PORT
    target_group_arn: str


class LoadBalancerView(TypedDict):
    arn: str
    name: str
    dns_name: str          # 127.0.0.1:PORT of its first listener
    listeners: list[ListenerView]


class Status(TypedDict):
    pid: int
    started: int | None
    updated: float
    applied: int           # the last change (note_change's token) the view has read from moto
    load_balancers: list[LoadBalancerView]
    target_groups: list[TargetGroupView]


def folder(state: str) -> str:
    return os.path.join(aws_dir(state), "lb")


def status_path(state: str) -> str:
    return os.path.join(folder(state), "status.json")


def changes_path(state: str) -> str:
    return os.path.join(folder(state), "changes")


def read(state: str) -> Status | None:
    """The running daemon's view, or None when no daemon runs for the state."""
    try:
        with open(status_path(state), encoding="utf-8") as f:
            status: Status = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or start_ticks(status.get("pid", -1)) != status.get("started"):
        return None
    return status


def note_change(state: str, wait: float = APPLY_WAIT) -> None:
    """Tell the daemon (if one runs) that ELBv2's state changed, and give it up to ``wait`` seconds to
    apply it: the request that changed it returns once the load balancer acts on the change."""
    if read(state) is None:
        return
    token = time.time_ns()
    try:
        atomic_write(changes_path(state), f"{token}\n", private=True)
    except OSError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        status = read(state)
        if status is None or status.get("applied", 0) >= token:
            return
        time.sleep(0.01)


def last_change(state: str) -> int:
    """The token of the last note_change (0 if none)."""
    try:
        with open(changes_path(state), encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _child(parent: ElementTree.Element, tag: str) -> ElementTree.Element | None:
    return parent.find(f"{{{NAMESPACE}}}{tag}")


def _text(parent: ElementTree.Element, path: str) -> str:
    return parent.findtext("/".join(f"{{{NAMESPACE}}}{p}" for p in path.split("/"))) or ""


def _health_element(member: ElementTree.Element, health: TargetHealth) -> None:
    old = _child(member, "TargetHealth")
    if old is not None:
        member.remove(old)
    element = ElementTree.SubElement(member, f"{{{NAMESPACE}}}TargetHealth")
    ElementTree.SubElement(element, f"{{{NAMESPACE}}}State").text = health["state"]
    if health["reason"]:
        ElementTree.SubElement(element, f"{{{NAMESPACE}}}Reason").text = health["reason"]
    if health["description"]:
        ElementTree.SubElement(element, f"{{{NAMESPACE}}}Description").text = health["description"]


def _member(parent: ElementTree.Element, health: TargetHealth) -> None:
    member = ElementTree.SubElement(parent, f"{{{NAMESPACE}}}member")
    ElementTree.SubElement(member, f"{{{NAMESPACE}}}HealthCheckPort").text = health["health_check_port"]
    target = ElementTree.SubElement(member, f"{{{NAMESPACE}}}Target")
    ElementTree.SubElement(target, f"{{{NAMESPACE}}}Id").text = health["id"]
    ElementTree.SubElement(target, f"{{{NAMESPACE}}}Port").text = str(health["port"])
    _health_element(member, health)


def adjust(state: str, action: str, params: dict[str, str], body: bytes) -> bytes | None:
    """moto's XML answer ``body`` to ``action`` with the daemon's view put in, or None to leave it."""
    if action not in ADJUSTED:
        return None
    status = read(state)
    if status is None:
        return None
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    if action == "DescribeTargetHealth":
        group = next((g for g in status["target_groups"] if g["arn"] == params.get("TargetGroupArn")), None)
        descriptions = root.find(f".//{{{NAMESPACE}}}TargetHealthDescriptions")
        if group is None or descriptions is None:
            return None
        known = {(t["id"], t["port"]): t for t in group["targets"]}
        listed = set()
        for member in descriptions.findall(f"{{{NAMESPACE}}}member"):
            key = (_text(member, "Target/Id"), int(_text(member, "Target/Port") or 0))
            listed.add(key)
            if key in known:
                _health_element(member, known[key])
        asked = {(v, params.get(k[:-2] + "Port", "")) for k, v in params.items()
                 if k.startswith("Targets.member.") and k.endswith(".Id")}
        for key, health in known.items():   # draining targets are no longer registered in moto
            if key not in listed and health["state"] == "draining" and (
                    not asked or any(i == key[0] and p in ("", str(key[1])) for i, p in asked)):
                _member(descriptions, health)
    else:
        names = {lb["arn"]: lb["dns_name"] for lb in status["load_balancers"] if lb["dns_name"]}
        changed = False
        for member in root.iter(f"{{{NAMESPACE}}}member"):
            arn = _text(member, "LoadBalancerArn")
            dns = _child(member, "DNSName")
            if arn in names and dns is not None:
                dns.text = names[arn]
                changed = True
        if not changed:
            return None
    ElementTree.register_namespace("", NAMESPACE)
    adjusted: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=False)
    return adjusted
