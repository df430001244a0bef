"""Traffic control of in-place deployments: BlockTraffic and AllowTraffic against the state's local AWS.

A deployment group with ``loadBalancerInfo`` (``targetGroupInfoList`` / ``elbInfoList``) and
``deploymentStyle.deploymentOption: WITH_TRAFFIC_CONTROL`` gets, on each instance, the service's two
lifecycle events of its own (the agent runs the four Before/After hooks around them):

* **BlockTraffic** (after BeforeBlockTraffic): the instance is deregistered from each target group and
  classic load balancer, then the wait for draining: until ``describe-target-health`` no longer lists it
  as ``draining`` (``unused``, or gone), or, at the latest, the target group's
  ``deregistration_delay.timeout_seconds`` after its deregistration (the load balancer has stopped
  sending to it by then); a classic load balancer: until it no longer lists the instance.
* **AllowTraffic** (after BeforeAllowTraffic): the instance is registered in each (on the ports it was
  deregistered from, else the target group's), then the wait until ``describe-target-health`` says
  ``healthy`` for each (``InService`` for a classic one), bounded by the health check's own figures
  (``HealthyThresholdCount`` x ``HealthCheckIntervalSeconds`` + ``HealthCheckTimeoutSeconds``, plus
  slack); a target still ``initial``/``unhealthy`` then fails the event with its state and reason.

The load balancers are those of the local AWS (the moto server of the state, which a local data plane
may serve and whose health states it may set: the waits read only ``describe-target-health``), reached
through an ``AwsQuery`` the server hands the engine (``agent.instance.localaws.query`` bound to its
state): the engine's layer does not import instances. An instance's EC2 id comes from the server's
``InstanceIds`` (a sandboxed instance's identity), else from the local EC2's ``Name`` tag.
Blue/green deployments (``agent.service.bluegreen``) use the same two events: AllowTraffic on the
replacement instances, BlockTraffic on the original ones.
``controls_traffic``, ``pending_events`` and ``with_traffic_events`` are pure; ``LoadBalancers`` does the
I/O. Must not import the API, the server, the agent side or agent.instance.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol
from xml.etree import ElementTree

from agent.service.shapes import JsonObject

BLOCK = "BlockTraffic"
ALLOW = "AllowTraffic"
STEPS = (BLOCK, ALLOW)
# which agent-run event each of the service's own events follows
AFTER = {BLOCK: "BeforeBlockTraffic", ALLOW: "BeforeAllowTraffic"}
ELBV2 = {"Version": "2015-12-01"}
ELB = {"Version": "2012-06-01"}
HEALTH_SLACK = 10.0       # seconds past what the health check needs
DRAIN_SLACK = 5.0         # seconds past the deregistration delay, for a load balancer that reports draining
POLL = 0.2                # seconds between describe-target-health calls


class TrafficError(Exception):
    """BlockTraffic or AllowTraffic could not be done: the event's diagnostics message."""


def controls_traffic(group: JsonObject) -> bool:
    """A group whose in-place deployments block and allow traffic (the service's rule: the option and a
    load balancer to act on)."""
    style = group.get("deploymentStyle") or {}
    info = group.get("loadBalancerInfo") or {}
    return style.get("deploymentOption") == "WITH_TRAFFIC_CONTROL" and bool(
        info.get("targetGroupInfoList") or info.get("elbInfoList"))


def names_of(info: JsonObject) -> tuple[list[str], list[str]]:
    """The target group names and the classic load balancer names of a ``loadBalancerInfo``."""
    groups = [str(t["name"]) for t in info.get("targetGroupInfoList") or [] if isinstance(t, dict) and t.get("name")]
    classic = [str(e["name"]) for e in info.get("elbInfoList") or [] if isinstance(e, dict) and e.get("name")]
    return groups, classic


def with_traffic_events(events: list[JsonObject], own: dict[str, JsonObject] | None = None,
                        steps: tuple[str, ...] = STEPS) -> list[JsonObject]:
    """The agent's lifecycle events with the service's BlockTraffic and AllowTraffic (those of ``steps``: a
    blue/green instance has one of them) placed after BeforeBlockTraffic and BeforeAllowTraffic (``own``:
    their current records, else Pending)."""
    out: list[JsonObject] = []
    present = {e.get("lifecycleEventName") for e in events}
    for e in events:
        if e.get("lifecycleEventName") in STEPS:
            continue   # the service's own: never the agent's to say
        out.append(e)
        for step in steps:
            if e.get("lifecycleEventName") == AFTER[step]:
                out.append((own or {}).get(step) or {"lifecycleEventName": step, "status": "Pending"})
    missing = [s for s in steps if AFTER[s] not in present]
    return out + [(own or {}).get(s) or {"lifecycleEventName": s, "status": "Pending"} for s in missing]


def pending_events(events: list[JsonObject]) -> list[JsonObject]:
    """A traffic-controlled instance's events before anything ran."""
    return with_traffic_events(events)


def own_events(events: list[JsonObject]) -> dict[str, JsonObject]:
    return {e["lifecycleEventName"]: e for e in events if e.get("lifecycleEventName") in STEPS}


class AwsQuery(Protocol):
    """One AWS query-protocol call to the local AWS (``agent.instance.localaws.query`` with its state
    bound): the response's XML without namespaces; an error response raises an exception with ``code``
    and ``message``, an unreachable server OSError."""

    def __call__(self, service: str, params: dict[str, str], *, region: str = ...) -> ElementTree.Element: ...


InstanceIds = Callable[[str], "str | None"]   # an instance name's EC2 id in the local AWS, or None


class LoadBalancers:
    """The load balancers of one deployment group in the local AWS of ``state``."""

    def __init__(self, query: AwsQuery, info: JsonObject, *, region: str = "us-east-1",
                 instance_ids: InstanceIds | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.query = query
        self.instance_ids = instance_ids
        self.region = region
        self.target_groups, self.classic = names_of(info)
        self.sleep = sleep
        self.clock = clock

    def _query(self, service: str, params: dict[str, str]) -> ElementTree.Element:
        try:
            return self.query(service, params, region=self.region)
        except OSError as e:
            raise TrafficError(f"the local AWS does not answer ({e}): it runs while an instance of the state "
                               "runs (cdsim fleet up --target-group starts them)") from None
        except Exception as e:  # noqa: BLE001 - the local AWS's error response (LocalAwsError: code, message)
            code = getattr(e, "code", type(e).__name__)
            raise TrafficError(f"the local AWS refused {params.get('Action')}: {code}: "
                               f"{getattr(e, 'message', e)}") from None

    def instance_id(self, name: str) -> str:
        """The EC2 id of the instance ``name``: the server's mapping, else its Name tag in the local EC2."""
        known = self.instance_ids(name) if self.instance_ids is not None else None
        if known:
            return known
        found = self._query("ec2", {"Version": "2016-11-15", "Action": "DescribeInstances",
                                    "Filter.1.Name": "tag:Name", "Filter.1.Value.1": name})
        ids = [e.text or "" for e in found.iterfind(".//instancesSet/item/instanceId")]
        if not ids:
            raise TrafficError(f"instance {name} is not an EC2 instance of the local AWS (a sandboxed instance "
                               "with a private network that has started)")
        return ids[0]

    def _group(self, name: str) -> ElementTree.Element:
        try:
            found = self._query("elasticloadbalancing", {**ELBV2, "Action": "DescribeTargetGroups",
                                                         "Names.member.1": name})
        except TrafficError as e:
            if "TargetGroupNotFound" not in str(e):
                raise
            raise TrafficError(f"target group {name} is not in the local AWS ({e})") from None
        group = found.find(".//TargetGroups/member")
        if group is None:
            raise TrafficError(f"target group {name} is not in the local AWS")
        return group

    def _attributes(self, arn: str) -> dict[str, str]:
        found = self._query("elasticloadbalancing", {**ELBV2, "Action": "DescribeTargetGroupAttributes",
                                                     "TargetGroupArn": arn})
        return {m.findtext("Key") or "": m.findtext("Value") or "" for m in found.iterfind(".//Attributes/member")}

    def _health(self, arn: str, iid: str) -> list[tuple[str, str, str]]:
        """(port, state, reason) of each registration of ``iid`` the target group lists."""
        found = self._query("elasticloadbalancing", {**ELBV2, "Action": "DescribeTargetHealth", "TargetGroupArn": arn})
        out = []
        for m in found.iterfind(".//TargetHealthDescriptions/member"):
            if m.findtext("Target/Id") == iid:
                out.append((m.findtext("Target/Port") or "", m.findtext("TargetHealth/State") or "",
                            m.findtext("TargetHealth/Reason") or ""))
        return out

    # -- BlockTraffic -------------------------------------------------------------------------------
    def block(self, name: str) -> tuple[str, dict[str, list[str]]]:
        """Deregister instance ``name`` everywhere and wait for draining: what was done, for the event, and
        the ports it was registered on in each target group (by ARN), for :meth:`allow`."""
        iid = self.instance_id(name)
        deregistered: dict[str, list[str]] = {}
        waits: list[tuple[str, str, float]] = []
        for tg in self.target_groups:
            group = self._group(tg)
            arn = group.findtext("TargetGroupArn") or ""
            ports = [p for p, state, _ in self._health(arn, iid) if state not in ("unused", "draining")]
            deregistered[arn] = ports
            if ports:
                self._query("elasticloadbalancing", {
                    **ELBV2, "Action": "DeregisterTargets", "TargetGroupArn": arn,
                    **{k: v for n, p in enumerate(ports, 1)
                       for k, v in ((f"Targets.member.{n}.Id", iid), (f"Targets.member.{n}.Port", p))}})
            delay = float(self._attributes(arn).get("deregistration_delay.timeout_seconds") or 300)
            waits.append((tg, arn, self.clock() + delay))
        for elb in self.classic:
            self._query("elasticloadbalancing", {**ELB, "Action": "DeregisterInstancesFromLoadBalancer",
                                                 "LoadBalancerName": elb, "Instances.member.1.InstanceId": iid})
        for _tg, arn, drained_by in waits:
            while self.clock() < drained_by:
                if all(state in ("unused", "") for _, state, _ in self._health(arn, iid)):
                    break
                self.sleep(POLL)
        for elb in self.classic:
            deadline = self.clock() + self._draining_timeout(elb) + DRAIN_SLACK
            while iid in self._classic_instances(elb) and self.clock() < deadline:
                self.sleep(POLL)
        where = ", ".join([f"target group {t}" for t in self.target_groups] +
                          [f"load balancer {e}" for e in self.classic])
        return f"{iid} deregistered from {where}", deregistered

    # -- AllowTraffic -------------------------------------------------------------------------------
    def allow(self, name: str, deregistered: dict[str, list[str]] | None = None) -> str:
        """Register instance ``name`` everywhere (on the ports :meth:`block` took it off, else the target
        group's) and wait until it is healthy; what was done."""
        iid = self.instance_id(name)
        waits: list[tuple[str, str, float]] = []
        for tg in self.target_groups:
            group = self._group(tg)
            arn = group.findtext("TargetGroupArn") or ""
            ports = (deregistered or {}).get(arn) or [group.findtext("Port") or ""]
            targets: dict[str, str] = {}
            for n, p in enumerate(ports, 1):
                targets[f"Targets.member.{n}.Id"] = iid
                if p:
                    targets[f"Targets.member.{n}.Port"] = p
            self._query("elasticloadbalancing", {**ELBV2, "Action": "RegisterTargets", "TargetGroupArn": arn,
                                                 **targets})
            needed = (int(group.findtext("HealthyThresholdCount") or 5) *
                      int(group.findtext("HealthCheckIntervalSeconds") or 30) +
                      int(group.findtext("HealthCheckTimeoutSeconds") or 5))
            waits.append((tg, arn, self.clock() + needed + HEALTH_SLACK))
        for elb in self.classic:
            self._query("elasticloadbalancing", {**ELB, "Action": "RegisterInstancesWithLoadBalancer",
                                                 "LoadBalancerName": elb, "Instances.member.1.InstanceId": iid})
        for tg, arn, deadline in waits:
            while True:
                health = self._health(arn, iid)
                if health and all(state == "healthy" for _, state, _ in health):
                    break
                if self.clock() >= deadline:
                    seen = "; ".join(f"port {p}: {s}" + (f" ({r})" if r else "") for p, s, r in health) or "not listed"
                    raise TrafficError(f"{iid} did not become healthy in target group {tg} in time: {seen}")
                self.sleep(POLL)
        for elb in self.classic:
            deadline = self.clock() + 60 + HEALTH_SLACK
            while self._classic_state(elb, iid) != "InService":
                if self.clock() >= deadline:
                    raise TrafficError(f"{iid} is not InService in load balancer {elb} in time")
                self.sleep(POLL)
        where = ", ".join([f"target group {t}" for t in self.target_groups] +
                          [f"load balancer {e}" for e in self.classic])
        return f"{iid} registered and healthy in {where}"

    # -- classic load balancers ---------------------------------------------------------------------
    def _classic_instances(self, elb: str) -> set[str]:
        found = self._query("elasticloadbalancing", {**ELB, "Action": "DescribeLoadBalancers",
                                                     "LoadBalancerNames.member.1": elb})
        return {e.text or "" for e in found.iterfind(".//Instances/member/InstanceId")}

    def _draining_timeout(self, elb: str) -> float:
        found = self._query("elasticloadbalancing", {**ELB, "Action": "DescribeLoadBalancerAttributes",
                                                     "LoadBalancerName": elb})
        draining = found.find(".//ConnectionDraining")
        if draining is None or (draining.findtext("Enabled") or "").lower() != "true":
            return 0.0
        return float(draining.findtext("Timeout") or 300)

    def _classic_state(self, elb: str, iid: str) -> str:
        found = self._query("elasticloadbalancing", {**ELB, "Action": "DescribeInstanceHealth",
                                                     "LoadBalancerName": elb, "Instances.member.1.InstanceId": iid})
        return found.findtext(".//InstanceStates/member/State") or ""
