"""The service's deployment engine: deployment configurations, batching, failure, rollback and stop.

The rules (behaviour doc §8.6 and the service's documentation):

* A configuration fixes the *minimum healthy hosts*: ``HOST_COUNT`` n, ``FLEET_PERCENT`` p (rounded
  up: 40 % of 9 is 4), or the built-in OneAtATime's ``MOST_CONCURRENCY`` 1 (all but one healthy).
  An instance being deployed to, or whose deployment failed, is not healthy.
* An instance is started only while the instances left healthy stay at or above the minimum, so
  OneAtATime deploys one at a time, HalfAtATime up to half (rounded down), AllAtOnce all.
* When nothing can start any more and nothing runs, the remaining instances are Skipped and the
  deployment is Failed (HEALTH_CONSTRAINTS). When every instance is done, the deployment Succeeded
  if at least the minimum (and at least one) instance succeeded — so a failure on the last instance
  of a OneAtATime deployment still succeeds, as the real service does.
* Automatic rollback on DEPLOYMENT_FAILURE (or StopDeployment with autoRollbackEnabled) is a new
  deployment of the group's last successful revision, creator ``codeDeployRollback``.
* A group with traffic control (``agent.service.traffic``): each instance's lifecycle gains the service's
  BlockTraffic (after BeforeBlockTraffic) and AllowTraffic (after BeforeAllowTraffic). The agent's runner
  stops after BeforeBlockTraffic and after BeforeAllowTraffic and asks (ReportCommand with ``waitFor``)
  until the engine has done that event, in a thread of its own against the state's local AWS
  (``traffic_gate``); a failed one fails the instance, its remaining events Skipped.
* A group with ``autoScalingGroups`` also selects the instances of those groups of the state's local AWS.
  ``watch_auto_scaling`` (from ``tick``, at most every ``ASG_POLL`` s) notices instances that joined one
  (`cdsim fleet scale`): with a last successful revision, it deploys that revision to the new instances
  only (creator ``autoscaling``; they have no previous revision, so no ApplicationStop runs). A scale-out
  while another deployment of the group is in progress gets the last successful revision too (the
  service's documented behaviour), and when that deployment succeeds a follow-on ``autoscaling``
  deployment brings those instances to its revision.

* A blue/green group (``agent.service.bluegreen``: BLUE_GREEN with traffic control) deploys to the
  replacement instances its CreateDeployment's ``targetInstances`` selects (DISCOVER_EXISTING; instance
  label Green), or to those the server launches into a copy of the group's Auto Scaling group
  (COPY_AUTO_SCALING_GROUP: ``copy_auto_scaling_group``, in a thread, phase ``provision``), the original
  ones being the group's own (Blue). ``_advance_blue_green`` runs the phases:
  the greens' lifecycle up to ValidateService as the configuration allows (their agents then wait at the
  reroute gate: status Ready); STOP_DEPLOYMENT: deployment status Ready until ContinueDeployment READY_WAIT
  (``continue_deployment``), Stopped when the wait time passes first; the reroute (greens'
  BeforeAllowTraffic, AllowTraffic, AfterAllowTraffic); then the blues' BeforeBlockTraffic, BlockTraffic,
  AfterBlockTraffic; then KEEP_ALIVE ends it, TERMINATE waits terminationWaitTimeInMinutes (ended early by
  ContinueDeployment TERMINATION_WAIT or SkipWaitTimeForInstanceTermination) and terminates the blues
  (``terminate``, the server's: deregistered and destroyed; and TerminateInstances in the local AWS).
  On success the group's EC2 selection (or Auto Scaling group: the copy; TERMINATE deletes the original)
  becomes the greens'. A green failing before the reroute fails the
  deployment with no traffic moved; a rollback after the reroute began is a blue/green deployment the other
  way (``create(swap=...)``): the original instances' AllowTraffic, the replacement ones' BlockTraffic.

A target is shown by its EC2 instance id (``targetId`` ``i-...``, ``targetArn`` ``arn:aws:ec2:...``) when
the group selects it by its EC2 tags (``ec2TagFilters``, ``ec2TagSet``) and it is an EC2 instance of the
state's local AWS (the server's ``instance_ids`` gives its id), else by its on-premises name; either way its
document is stored under, and its agent polls by, the registered name (``target_name``).

``plan`` and ``minimum_healthy`` are pure; ``Engine`` applies them to the documents of ``store`` and
hands commands to agents. Must not import the API, the server or the agent side.
"""
from __future__ import annotations

import math
import random
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from agent.service import bluegreen, traffic
from agent.service.shapes import JsonObject
from agent.service.store import Store


class MinimumHealthyHosts(TypedDict):
    """A configuration's minimumHealthyHosts: HOST_COUNT or FLEET_PERCENT (MOST_CONCURRENCY: built-in only)."""

    type: str
    value: int


BUILTIN_CONFIGS: dict[str, MinimumHealthyHosts] = {
    "CodeDeployDefault.OneAtATime": {"type": "MOST_CONCURRENCY", "value": 1},
    "CodeDeployDefault.HalfAtATime": {"type": "FLEET_PERCENT", "value": 50},
    "CodeDeployDefault.AllAtOnce": {"type": "HOST_COUNT", "value": 0},
}
DEFAULT_CONFIG = "CodeDeployDefault.OneAtATime"
LIFECYCLE_EVENTS = ("BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop", "DownloadBundle",
                    "BeforeInstall", "Install", "AfterInstall", "ApplicationStart", "ValidateService",
                    "BeforeAllowTraffic", "AfterAllowTraffic")
ACTIVE = ("Created", "Queued", "InProgress", "Ready")
DONE = ("Succeeded", "Failed", "Stopped")
ROLLBACK_CREATOR = "codeDeployRollback"
AUTOSCALING_CREATOR = "autoscaling"
ASG_POLL = 1.0   # seconds between looks at the Auto Scaling groups deployment groups target

HEALTH_MESSAGE = ("The overall deployment failed because too many individual instances failed deployment, "
                  "too few healthy instances are available for deployment, or some instances in your "
                  "deployment group are experiencing problems.")
NO_INSTANCES_MESSAGE = ("The deployment failed because no instances were found for your deployment group. "
                        "Check your deployment group settings to make sure the tags for your Amazon EC2 "
                        "instances or Auto Scaling groups correctly identify the instances you want to "
                        "deploy to, and then try again.")
STOP_MESSAGE = "The deployment was stopped by the user."
READY_TIMEOUT_MESSAGE = ("The deployment was stopped because traffic was not rerouted to the replacement instances "
                         "within the deployment's wait time (deploymentReadyOption STOP_DEPLOYMENT).")
RESTART_MESSAGE = "Failed: Failing in-progress lifecycle event after an agent restart."
NO_AGENT_MESSAGE = ("CodeDeploy agent was not able to receive the lifecycle event. Check the CodeDeploy agent "
                    "logs on your host and make sure the agent is running and can connect to the CodeDeploy "
                    "server.")


def minimum_healthy(mhh: MinimumHealthyHosts, total: int) -> int:
    """How many instances must stay healthy while ``total`` are deployed to."""
    kind, value = mhh.get("type"), int(mhh.get("value", 0))
    if kind == "MOST_CONCURRENCY":
        return max(total - value, 0)
    if kind == "FLEET_PERCENT":
        return math.ceil(value * total / 100)
    return value


@dataclass(frozen=True)
class Step:
    """What to do next with one deployment."""

    start: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    outcome: str | None = None            # Succeeded | Failed when the deployment is over
    error: tuple[str, str] | None = None  # (errorInformation code, message) of a failure


def plan(statuses: list[tuple[str, str]], mhh: MinimumHealthyHosts) -> Step:
    """The next step for instances ``[(name, status)]`` in deployment order."""
    total = len(statuses)
    if total == 0:
        return Step(outcome="Failed", error=("NO_INSTANCES", NO_INSTANCES_MESSAGE))
    minimum = minimum_healthy(mhh, total)
    count = {s: sum(1 for _, x in statuses if x == s) for s in ("Pending", "InProgress", "Failed", "Succeeded")}
    healthy = total - count["Failed"] - count["InProgress"]
    start = []
    for name, status in statuses:
        if status != "Pending":
            continue
        if healthy - 1 < minimum:
            break
        start.append(name)
        healthy -= 1
    if start:
        return Step(start=tuple(start))
    if count["InProgress"]:
        return Step()
    pending = tuple(n for n, s in statuses if s == "Pending")
    if pending:
        code = "HEALTH_CONSTRAINTS" if count["Failed"] or count["Succeeded"] else "HEALTH_CONSTRAINTS_INVALID"
        return Step(skip=pending, outcome="Failed", error=(code, HEALTH_MESSAGE))
    if count["Succeeded"] >= max(minimum, 1):
        return Step(outcome="Succeeded")
    return Step(outcome="Failed", error=("HEALTH_CONSTRAINTS", HEALTH_MESSAGE))


def tag_matches(tags: list[JsonObject], f: JsonObject) -> bool:
    """One EC2/on-premises tag filter (KEY_ONLY, VALUE_ONLY, KEY_AND_VALUE) against an instance's tags."""
    kind = f.get("Type") or ("KEY_AND_VALUE" if f.get("Key") and f.get("Value") else
                             "KEY_ONLY" if f.get("Key") else "VALUE_ONLY")
    for t in tags:
        if kind == "KEY_ONLY" and t.get("Key") == f.get("Key"):
            return True
        if kind == "VALUE_ONLY" and t.get("Value") == f.get("Value"):
            return True
        if kind == "KEY_AND_VALUE" and t.get("Key") == f.get("Key") and t.get("Value") == f.get("Value"):
            return True
    return False


def _selects(filters: list[JsonObject], sets: list[list[JsonObject]], tags: list[JsonObject]) -> bool:
    if filters and any(tag_matches(tags, f) for f in filters):
        return True
    return bool(sets) and all(any(tag_matches(tags, f) for f in inner) for inner in sets)


def group_selects(group: JsonObject, tags: list[JsonObject]) -> bool:
    """A group's filters (any of the list matches) or tag sets (every inner list matches)."""
    return ec2_selects(group, tags) or _selects(
        group.get("onPremisesInstanceTagFilters") or [],
        (group.get("onPremisesTagSet") or {}).get("onPremisesTagSetList") or [], tags)


def ec2_selects(group: JsonObject, tags: list[JsonObject]) -> bool:
    """Whether the group's EC2 tag filters or tag sets select an instance with these tags."""
    return _selects(group.get("ec2TagFilters") or [], (group.get("ec2TagSet") or {}).get("ec2TagSetList") or [],
                    tags)


def launch_hook(group: JsonObject, asg: str) -> JsonObject:
    """An AutoScalingGroup shape of a deployment group: the Auto Scaling group and its launch hook's name."""
    return {"name": asg, "hook": "CodeDeploy-managed-automatic-launch-deployment-hook-"
                                 f"{group['deploymentGroupName']}-{group['deploymentGroupId'][:8]}"}


def copy_name(group: JsonObject, did: str) -> str:
    """The Auto Scaling group COPY_AUTO_SCALING_GROUP makes, named as the service names it."""
    return f"CodeDeploy_{group['deploymentGroupName']}_{did}"


def selection_of(target_instances: JsonObject) -> JsonObject:
    """A CreateDeployment's ``targetInstances`` as a deployment group's selection."""
    return {"ec2TagFilters": target_instances.get("tagFilters") or [],
            "ec2TagSet": target_instances.get("ec2TagSet") or {},
            "autoScalingGroups": list(target_instances.get("autoScalingGroups") or [])}


def new_deployment_id() -> str:
    return "d-" + "".join(random.choices(string.ascii_uppercase + string.digits, k=9))


def pending_events() -> list[JsonObject]:
    return [{"lifecycleEventName": e, "status": "Pending"} for e in LIFECYCLE_EVENTS]


def _builtin_config(name: str) -> JsonObject:
    return {"deploymentConfigName": name, "minimumHealthyHosts": BUILTIN_CONFIGS[name],
            "computePlatform": "Server", "createTime": 0.0,
            "deploymentConfigId": str(uuid.uuid5(uuid.NAMESPACE_URL, name))}


def target_name(target: JsonObject) -> str:
    """The registered instance name a target document belongs to (its key and its agent's name)."""
    name: str = target.get("_instanceName") or target["targetId"]
    return name


def public(doc: JsonObject) -> JsonObject:
    """A document without its private (underscore) fields."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


class Engine:
    """Deployments over the store: creation, scheduling (``tick``), agent commands, stop, rollback."""

    def __init__(self, store: Store, *, region: str = "us-east-1", account: str = "000000000000",
                 s3_endpoint: str | None = None, pickup_timeout: float = 600.0):
        self.store = store
        self.pickup_timeout = pickup_timeout
        self.region = region
        self.account = account
        self.s3_endpoint = s3_endpoint
        self.changed = threading.Condition()
        self.aws_query: traffic.AwsQuery | None = None   # the local AWS holding the load balancers (server's)
        # instance name -> its EC2 id there (server's): traffic control, and the targets' ids
        self.instance_ids: traffic.InstanceIds | None = None
        # blue/green TERMINATE: destroys and deregisters instances by name, answers notes for the deployment
        self.terminate: Callable[[list[str]], list[str]] | None = None
        # blue/green COPY_AUTO_SCALING_GROUP: (source group, copy) -> the names of the copy's new instances
        self.copy_auto_scaling_group: Callable[[str, str], list[str]] | None = None
        self._asg_lock = threading.Lock()
        self._asg_checked = 0.0

    # -- helpers --------------------------------------------------------------------------------
    def instance_arn(self, name: str) -> str:
        return f"arn:aws:codedeploy:{self.region}:{self.account}:instance/{name}"

    def config(self, name: str) -> JsonObject | None:
        if name in BUILTIN_CONFIGS:
            return _builtin_config(name)
        return self.store.get("config", name)

    def targets(self, did: str) -> list[JsonObject]:
        return self.store.values("target", f"{did}/")

    def overview(self, did: str) -> dict[str, int]:
        counts = dict.fromkeys(("Pending", "InProgress", "Succeeded", "Failed", "Skipped", "Ready"), 0)
        for t in self.targets(did):
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return counts

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def selected_by(self, selection: JsonObject) -> list[str]:
        """The registered instances a selection's EC2 tags or Auto Scaling groups select (a blue/green
        deployment's targetInstances, as ``selection_of`` gives it)."""
        names = [i["instanceName"] for i in self.store.values("instance")
                 if not i.get("deregisterTime") and ec2_selects(selection, i.get("tags") or [])]
        return sorted(set(names) | set(self.auto_scaling_instances(selection)))

    def selected_instances(self, group: JsonObject) -> list[str]:
        names = [i["instanceName"] for i in self.store.values("instance")
                 if not i.get("deregisterTime") and group_selects(group, i.get("tags") or [])]
        return sorted(set(names) | set(self.auto_scaling_instances(group)))

    # -- creation -------------------------------------------------------------------------------
    def create(self, group: JsonObject, revision: JsonObject, *, config_name: str | None, description: str = "",
               creator: str = "user", ignore_stop_failures: bool = False,
               file_exists: str = "DISALLOW", rollback_info: JsonObject | None = None,
               auto_rollback: JsonObject | None = None, instances: list[str] | None = None,
               target_instances: JsonObject | None = None, swap: JsonObject | None = None) -> JsonObject:
        """A new deployment of ``revision`` to the group's instances (resolved now, or ``instances``),
        status Created. A blue/green group's deployment (not one of ``instances``): its replacement
        instances are those ``target_instances`` selects, the original ones the group's; ``swap``, a
        rollback's failed blue/green deployment: its original instances are rerouted to, its replacement
        ones blocked."""
        now = time.time()
        did = new_deployment_id()
        while self.store.get("deployment", did):
            did = new_deployment_id()
        app = group["applicationName"]
        doc: JsonObject = {
            "applicationName": app, "deploymentGroupName": group["deploymentGroupName"],
            "deploymentConfigName": config_name or group.get("deploymentConfigName") or DEFAULT_CONFIG,
            "deploymentId": did, "revision": revision, "status": "Created", "createTime": now,
            "description": description, "creator": creator,
            "ignoreApplicationStopFailures": bool(ignore_stop_failures),
            "autoRollbackConfiguration": auto_rollback or group.get("autoRollbackConfiguration")
            or {"enabled": False},
            "updateOutdatedInstancesOnly": False,
            "deploymentStyle": {"deploymentType": "IN_PLACE", "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"},
            **self._traffic_fields(group),
            "instanceTerminationWaitTimeStarted": False, "fileExistsBehavior": file_exists or "DISALLOW",
            "computePlatform": "Server", "deploymentStatusMessages": [],
            "_groupId": group["deploymentGroupId"],
        }
        if group.get("_lastGoodRevision"):
            doc["previousRevision"] = group["_lastGoodRevision"]
        if rollback_info:
            doc["rollbackInfo"] = rollback_info
        names = self.selected_instances(group) if instances is None else sorted(instances)
        # members of the group's Auto Scaling groups are EC2 instances too: listed by their ids, as AWS does
        scaled = set(self.auto_scaling_instances(group)) if group.get("autoScalingGroups") else set()
        labels = {name: bluegreen.BLUE for name in names}
        reroute_only: set[str] = set()
        selector = group
        if instances is None and bluegreen.is_blue_green(group) and traffic.controls_traffic(group):
            green_group = selection_of(target_instances or {})
            if swap is not None:   # a rollback: back to the original instances, off the replacement ones
                old = self.targets(swap["deploymentId"])
                greens = [target_name(t) for t in old if t.get("instanceLabel") == bluegreen.BLUE]
                blues = [target_name(t) for t in old if t.get("instanceLabel") == bluegreen.GREEN]
                reroute_only = set(greens)
                green_group = selection_of(swap.get("targetInstances") or {})
            elif bluegreen.green_action(group) == "COPY_AUTO_SCALING_GROUP":
                greens, blues = [], names   # the copy's instances join once launched (phase "provision")
                sources = [a["name"] for a in group.get("autoScalingGroups") or []]
                doc.update(_sourceAsg=sources[0], _greenAsg=copy_name(group, did))
                target_instances = {"autoScalingGroups": [doc["_greenAsg"]]}
            else:
                greens = self.selected_by(green_group)
                blues = [n for n in names if n not in greens]
            names = sorted(set(greens) | set(blues))
            labels = {**{n: bluegreen.BLUE for n in blues}, **{n: bluegreen.GREEN for n in greens}}
            scaled |= set(self.auto_scaling_instances(green_group))
            selector = {"ec2TagFilters": (group.get("ec2TagFilters") or []) + (green_group.get("ec2TagFilters") or []),
                        "ec2TagSet": group.get("ec2TagSet") or green_group.get("ec2TagSet") or {}}
            first = "provision" if doc.get("_greenAsg") else "install"
            doc.update(deploymentStyle=dict(group["deploymentStyle"]), loadBalancerInfo=group["loadBalancerInfo"],
                       blueGreenDeploymentConfiguration=group.get("blueGreenDeploymentConfiguration") or {},
                       targetInstances=target_instances or {}, _phase=first,
                       deploymentStatusMessages=[bluegreen.status_message(first, doc)])
        with self.store.transaction():
            self.store.put("deployment", did, doc)
            for name in names:
                tags = (self.store.get("instance", name) or {}).get("tags") or []
                ec2 = name in scaled or ec2_selects(selector, tags)
                if swap is not None:
                    old_target = self.store.get("target", f"{swap['deploymentId']}/{name}") or {}
                    ec2 = str(old_target.get("targetId", "")).startswith("i-")
                ec2_id = self.instance_ids(name) if self.instance_ids and ec2 else None
                label = labels[name]
                events = (bluegreen.pending_events(label, name in reroute_only) if bluegreen.is_blue_green(doc)
                          else self._pending(doc))
                self.store.put("target", f"{did}/{name}", {
                    "deploymentId": did, "targetId": ec2_id or name, "_instanceName": name,
                    "targetArn": (f"arn:aws:ec2:{self.region}:{self.account}:instance/{ec2_id}" if ec2_id
                                  else self.instance_arn(name)),
                    "status": "Pending", "lastUpdatedAt": now, "lifecycleEvents": events,
                    "instanceLabel": label, **({"_rerouteOnly": True} if name in reroute_only else {})})
            group = dict(group, lastAttemptedDeployment={"deploymentId": did, "status": "Created",
                                                         "createTime": now})
            self.store.put("group", f"{app}/{group['deploymentGroupName']}", group)
        self.notify()
        return doc

    # -- scheduling -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance every active deployment by one step."""
        self._expire_commands()
        self.watch_auto_scaling()
        for doc in self.store.values("deployment"):
            if doc["status"] in ACTIVE:
                self._advance(doc)

    def _advance(self, doc: JsonObject) -> None:
        did = doc["deploymentId"]
        with self.store.transaction():
            doc = self.store.existing("deployment", did)
            if doc["status"] not in ACTIVE:
                return
            targets = self.targets(did)
            if doc.get("_stopRequested"):
                self._skip([t for t in targets if t["status"] == "Pending"])
                if not any(t["status"] == "InProgress" for t in targets) and doc.get("_phase") != "terminating":
                    self._finish(doc, "Stopped", ("MANUAL_STOP", STOP_MESSAGE))
                return
            config = self.config(doc["deploymentConfigName"]) or _builtin_config(DEFAULT_CONFIG)
            now = time.time()
            if doc["status"] == "Created":
                doc.update(status="InProgress", startTime=now)
                self.store.put("deployment", did, doc)
            if bluegreen.is_blue_green(doc):
                self._advance_blue_green(doc, targets, config["minimumHealthyHosts"])
                return
            step = plan([(target_name(t), t["status"]) for t in targets], config["minimumHealthyHosts"])
            by_name = {target_name(t): t for t in targets}
            for name in step.start:
                self._command(did, by_name[name], now)
            self._skip([by_name[n] for n in step.skip])
            if step.outcome:
                self._finish(doc, step.outcome, step.error)

    def _put_target(self, did: str, name: str, label: str, ec2: bool, now: float) -> None:
        ec2_id = self.instance_ids(name) if self.instance_ids and ec2 else None
        self.store.put("target", f"{did}/{name}", {
            "deploymentId": did, "targetId": ec2_id or name, "_instanceName": name,
            "targetArn": (f"arn:aws:ec2:{self.region}:{self.account}:instance/{ec2_id}" if ec2_id
                          else self.instance_arn(name)),
            "status": "Pending", "lastUpdatedAt": now, "lifecycleEvents": bluegreen.pending_events(label),
            "instanceLabel": label})

    def _provision(self, did: str, source: str, copy: str) -> None:
        """COPY_AUTO_SCALING_GROUP: the copy of the group's Auto Scaling group and its new instances (the
        server's ``copy_auto_scaling_group``), then the deployment goes on with them as its greens."""
        try:
            if self.copy_auto_scaling_group is None:
                raise RuntimeError("this service cannot launch instances")
            names = self.copy_auto_scaling_group(source, copy)
            error = None if names else f"{source} has no instance of this state to copy"
        except Exception as e:  # noqa: BLE001 - the deployment fails with the cause rather than hanging
            names, error = [], f"{type(e).__name__}: {e}"
        now = time.time()
        with self.store.transaction():
            doc = self.store.existing("deployment", did)
            if doc["status"] not in ACTIVE:
                return
            if error is not None:
                self._skip([t for t in self.targets(did) if t["status"] == "Pending"])
                self._finish(doc, "Failed", ("AUTO_SCALING_CONFIGURATION",
                                             f"Copying the Auto Scaling group {source} to {copy} failed: {error}"))
                return
            for name in names:
                self._put_target(did, name, bluegreen.GREEN, True, now)
            doc["deploymentStatusMessages"] = [*doc.get("deploymentStatusMessages", []),
                                               f"Launched {', '.join(names)} in the Auto Scaling group {copy}"]
            self._phase(doc, "install")
        self.notify()

    def _command(self, did: str, target: JsonObject, now: float) -> None:
        """Start an instance: its target InProgress, a command for its agent."""
        name = target_name(target)
        self.store.put("target", f"{did}/{name}", dict(target, status="InProgress", lastUpdatedAt=now))
        cid = str(uuid.uuid4())
        self.store.put("command", cid, {"commandId": cid, "deploymentId": did, "instance": name,
                                        "state": "Pending", "createTime": now})

    # -- blue/green (agent.service.bluegreen) -----------------------------------------------------------
    def _phase(self, doc: JsonObject, phase: str) -> None:
        doc["_phase"] = phase
        doc["deploymentStatusMessages"] = [*doc.get("deploymentStatusMessages", []),
                                           bluegreen.status_message(phase, doc)]
        self.store.put("deployment", doc["deploymentId"], doc)

    def _advance_blue_green(self, doc: JsonObject, targets: list[JsonObject], mhh: MinimumHealthyHosts) -> None:
        """One step of a blue/green deployment's phases (inside ``_advance``'s transaction)."""
        did, now = doc["deploymentId"], time.time()
        greens = [t for t in targets if t.get("instanceLabel") == bluegreen.GREEN]
        blues = [t for t in targets if t.get("instanceLabel") == bluegreen.BLUE]
        phase = doc.get("_phase", "install")
        if phase == "provision" and not doc.get("_provisioning"):
            doc["_provisioning"] = True
            self.store.put("deployment", did, doc)
            threading.Thread(target=self._provision, args=(did, doc["_sourceAsg"], doc["_greenAsg"]), daemon=True,
                             name=f"cdsim-provision-{did}").start()
        elif phase in ("install", "reroute", "block"):
            group = blues if phase == "block" else greens
            by_name = {target_name(t): t for t in group}
            step = (plan(bluegreen.plan_statuses([(n, t["status"]) for n, t in by_name.items()], phase), mhh)
                    if group or phase != "block" else Step(outcome="Succeeded"))
            for name in step.start:
                if phase == "reroute":   # its agent waits at the reroute gate: let it go on
                    self.store.put("target", f"{did}/{name}", dict(by_name[name], status="InProgress",
                                                                   lastUpdatedAt=now, _rerouteGo=True))
                else:
                    self._command(did, by_name[name], now)
            self._skip([by_name[n] for n in step.skip])
            if step.outcome == "Failed":
                self._skip([t for t in targets if t["status"] == "Pending"])
                self._finish(doc, "Failed", step.error)
            elif step.outcome == "Succeeded":
                self._next_phase(doc, phase, now)
        elif phase == "ready":
            _action, minutes = bluegreen.ready_option(doc)
            if doc.get("_continue"):
                doc["status"] = "InProgress"
                self._phase(doc, "reroute")
                self.notify()
            elif now >= doc.get("_readySince", now) + minutes * 60:
                self._skip([t for t in targets if t["status"] == "Pending"])
                self._finish(doc, "Stopped", ("TIMEOUT", READY_TIMEOUT_MESSAGE))
        elif phase == "termination-wait":
            if doc.get("_skipWait") or now >= doc.get("_terminateAt", now):
                self._phase(doc, "terminating")
                threading.Thread(target=self._terminate_blues, args=(did, [target_name(t) for t in blues]),
                                 daemon=True, name=f"cdsim-terminate-{did}").start()

    def _next_phase(self, doc: JsonObject, phase: str, now: float) -> None:
        if phase == "install":
            action, _minutes = bluegreen.ready_option(doc)
            if action == "STOP_DEPLOYMENT" and doc["creator"] != ROLLBACK_CREATOR:
                doc.update(status="Ready", _readySince=now)
                self._phase(doc, "ready")
            else:
                self._phase(doc, "reroute")
        elif phase == "reroute":
            self._phase(doc, "block")
        else:
            action, minutes = bluegreen.termination_option(doc)
            if action == "TERMINATE" and doc["creator"] != ROLLBACK_CREATOR:
                doc.update(instanceTerminationWaitTimeStarted=True, _terminateAt=now + minutes * 60)
                self._phase(doc, "termination-wait")
            else:
                self._finish(doc, "Succeeded", None)
                return
        self.notify()

    def continue_deployment(self, did: str, wait_type: str) -> None:
        """ContinueDeployment (READY_WAIT: reroute now; TERMINATION_WAIT: terminate the original instances
        now) and SkipWaitTimeForInstanceTermination; the API has checked the state."""
        with self.store.transaction():
            doc = self.store.existing("deployment", did)
            doc["_continue" if wait_type == "READY_WAIT" else "_skipWait"] = True
            self.store.put("deployment", did, doc)
        self._advance(doc)
        self.notify()

    def _terminate_blues(self, did: str, names: list[str]) -> None:
        """TERMINATE: the original instances' EC2 instances terminated in the local AWS, the sandboxed
        instances destroyed and deregistered (the server's ``terminate``), then the deployment Succeeded."""
        ids = [t["targetId"] for t in self.targets(did) if target_name(t) in names
               and str(t["targetId"]).startswith("i-")]
        notes: list[str] = []
        if self.terminate is not None:
            notes += self.terminate(names)
        else:
            notes.append("the original instances were not destroyed: this service cannot reach them")
        if ids and self.aws_query is not None:
            try:
                self.aws_query("ec2", {"Version": "2016-11-15", "Action": "TerminateInstances",
                                       **{f"InstanceId.{n}": i for n, i in enumerate(ids, 1)}}, region=self.region)
            except Exception as e:  # noqa: BLE001 - the local AWS's refusal is noted; the deployment goes on
                notes.append(f"TerminateInstances in the local AWS failed: {getattr(e, 'message', e)}")
        source = self.store.existing("deployment", did).get("_sourceAsg")
        if source and self.aws_query is not None:   # COPY_AUTO_SCALING_GROUP: the original group goes too
            try:
                self.aws_query("autoscaling", {"Version": "2011-01-01", "Action": "DeleteAutoScalingGroup",
                                               "AutoScalingGroupName": source, "ForceDelete": "true"},
                               region=self.region)
                notes.append(f"Deleted the original Auto Scaling group {source}")
            except Exception as e:  # noqa: BLE001 - noted, as above
                notes.append(f"DeleteAutoScalingGroup {source} in the local AWS failed: {getattr(e, 'message', e)}")
        with self.store.transaction():
            doc = self.store.existing("deployment", did)
            if doc["status"] not in ACTIVE:
                return
            doc["deploymentStatusMessages"] = [*doc.get("deploymentStatusMessages", []),
                                               f"Terminated the original instances: {', '.join(names)}", *notes]
            self._finish(doc, "Succeeded", None)

    def _release_ready(self, did: str) -> None:
        """A blue/green deployment ended while replacement instances waited to be rerouted to: their
        commands are over (their agents stop at the gate), their remaining events Skipped."""
        now = time.time()
        ready = [t for t in self.targets(did) if t["status"] == "Ready"]
        for cid, cmd in self.store.items("command"):
            if cmd["deploymentId"] == did and cmd["state"] != "Done" and \
                    any(target_name(t) == cmd["instance"] for t in ready):
                self.store.put("command", cid, dict(cmd, state="Done", status="Failed", doneTime=now))
        for t in ready:
            events = [dict(e, status="Skipped") if e["status"] == "Pending" else e for e in t["lifecycleEvents"]]
            self.store.put("target", f"{did}/{target_name(t)}",
                           dict(t, status="Skipped", lastUpdatedAt=now, lifecycleEvents=events))

    def _skip(self, targets: list[JsonObject]) -> None:
        now = time.time()
        for t in targets:
            events = [dict(e, status="Skipped") if e["status"] == "Pending" else e for e in t["lifecycleEvents"]]
            self.store.put("target", f"{t['deploymentId']}/{target_name(t)}",
                           dict(t, status="Skipped", lastUpdatedAt=now, lifecycleEvents=events))

    def _finish(self, doc: JsonObject, status: str, error: tuple[str, str] | None) -> None:
        now = time.time()
        did = doc["deploymentId"]
        if bluegreen.is_blue_green(doc):
            self._release_ready(did)
        doc = dict(doc, status=status, completeTime=now)
        doc.setdefault("startTime", now)
        if error:
            doc["errorInformation"] = {"code": error[0], "message": error[1]}
        key = f"{doc['applicationName']}/{doc['deploymentGroupName']}"
        group = self.store.get("group", key)
        info = {"deploymentId": did, "status": status, "endTime": now, "createTime": doc["createTime"]}
        rollback_to = None
        if group is not None:
            group["lastAttemptedDeployment"] = info
            if status == "Succeeded":
                group["lastSuccessfulDeployment"] = info
                if not (bluegreen.is_blue_green(doc) and doc["creator"] == ROLLBACK_CREATOR):
                    # (a blue/green rollback reroutes: it installs no revision)
                    group["_lastGoodRevision"] = doc["revision"]
                if bluegreen.is_blue_green(doc) and doc["creator"] != ROLLBACK_CREATOR:
                    # the replacement instances are the group's now (DISCOVER_EXISTING: their selection)
                    green = selection_of(doc.get("targetInstances") or {})
                    if not doc.get("_greenAsg"):
                        group.update(ec2TagFilters=green["ec2TagFilters"], ec2TagSet=green["ec2TagSet"] or None)
                        if group["ec2TagSet"] is None:
                            del group["ec2TagSet"]
                    group["autoScalingGroups"] = [launch_hook(group, a) for a in green["autoScalingGroups"]]
                    # its members now are no scale-out (watch_auto_scaling)
                    group["_asgMembers"] = [target_name(t) for t in self.targets(did)
                                            if t.get("instanceLabel") == bluegreen.GREEN]
            elif self._rolls_back(doc):
                rollback_to = group.get("_lastGoodRevision") or (doc["revision"] if bluegreen.is_blue_green(doc)
                                                                  else None)
                if rollback_to is None:
                    doc["rollbackInfo"] = {"rollbackMessage": "No deployment found for rollback."}
            self.store.put("group", key, group)
        self.store.put("deployment", did, doc)
        if group is not None and rollback_to is not None:
            self.rollback(doc, group, rollback_to)
        if group is not None and doc["creator"] != AUTOSCALING_CREATOR:
            self._follow_on(key, doc)
        self.notify()

    def _rolls_back(self, doc: JsonObject) -> bool:
        if doc["creator"] == ROLLBACK_CREATOR:
            return False  # a failed rollback is not rolled back again
        if doc["status"] == "Stopped":
            return bool(doc.get("_rollbackOnStop"))
        auto = doc.get("autoRollbackConfiguration") or {}
        return bool(auto.get("enabled")) and "DEPLOYMENT_FAILURE" in (auto.get("events") or [])

    def rollback(self, failed: JsonObject, group: JsonObject, revision: JsonObject) -> JsonObject:
        """Redeploy ``revision`` to the group as a new deployment, linking both rollbackInfos."""
        swap = failed if bluegreen.is_blue_green(failed) and failed.get("_phase") in (
            "reroute", "block", "termination-wait") else None
        if bluegreen.is_blue_green(failed) and swap is None:
            # nothing was rerouted: the original instances kept their traffic and their revision
            self.store.put("deployment", failed["deploymentId"], dict(
                self.store.existing("deployment", failed["deploymentId"]),
                rollbackInfo={"rollbackMessage": "Traffic was never rerouted: the original instances keep "
                                                 "serving; no rollback deployment was needed."}))
            return failed
        new = self.create(group, revision, config_name=failed["deploymentConfigName"],
                          creator=ROLLBACK_CREATOR, swap=swap, target_instances=(swap or {}).get("targetInstances"),
                          ignore_stop_failures=failed.get("ignoreApplicationStopFailures", False),
                          file_exists=failed.get("fileExistsBehavior", "DISALLOW"),
                          rollback_info={"rollbackTriggeringDeploymentId": failed["deploymentId"]})
        failed = dict(self.store.existing("deployment", failed["deploymentId"]), rollbackInfo={
            "rollbackDeploymentId": new["deploymentId"],
            "rollbackMessage": f"Deployment {failed['deploymentId']} failed; {new['deploymentId']} "
                               "redeploys the last successful revision."})
        self.store.put("deployment", failed["deploymentId"], failed)
        return new

    def stop(self, did: str, auto_rollback: bool) -> tuple[str, str]:
        """StopDeployment: nothing new starts; running instances finish; then the deployment is Stopped."""
        with self.store.transaction():
            doc = self.store.existing("deployment", did)
            doc["_stopRequested"] = True
            doc["_rollbackOnStop"] = bool(auto_rollback)
            self.store.put("deployment", did, doc)
            running = any(t["status"] == "InProgress" for t in self.targets(did))
        self._advance(doc)
        self.notify()
        if running:
            return "Pending", "Stopping the deployment: instances being deployed to finish first."
        return "Succeeded", "The deployment is stopped."

    # -- agents ---------------------------------------------------------------------------------
    def poll(self, instance: str, local: bool = False) -> JsonObject | None:
        """The next command for an instance, with everything its agent needs, or None."""
        with self.store.transaction():
            for cid, cmd in self.store.items("command"):
                if cmd["instance"] != instance or cmd["state"] != "Pending":
                    continue
                doc = self.store.existing("deployment", cmd["deploymentId"])
                cmd = dict(cmd, state="InProgress", pickedTime=time.time(), local=local)
                self.store.put("command", cid, cmd)
                blue_green: JsonObject = {}
                if bluegreen.is_blue_green(doc):
                    target = self.store.existing("target", f"{doc['deploymentId']}/{instance}")
                    label, only = target.get("instanceLabel", bluegreen.BLUE), bool(target.get("_rerouteOnly"))
                    blue_green = {"deploymentType": bluegreen.BLUE_GREEN,
                                  "events": list(bluegreen.agent_events(label, only)),
                                  "waitAfter": bluegreen.wait_after(label, only)}
                return {"commandId": cid, "deploymentId": doc["deploymentId"],
                        "applicationName": doc["applicationName"],
                        "deploymentGroupName": doc["deploymentGroupName"],
                        "deploymentGroupId": doc["_groupId"], "revision": doc["revision"],
                        "creator": doc["creator"], "deploymentType": bluegreen.IN_PLACE,
                        "fileExistsBehavior": doc["fileExistsBehavior"],
                        "ignoreApplicationStopFailures": doc["ignoreApplicationStopFailures"],
                        "trafficControl": traffic.controls_traffic(doc),
                        "s3Endpoint": self.s3_endpoint, **blue_green}
        return None

    def report(self, cid: str, events: list[JsonObject] | None, status: str | None = None,
               wait_for: str | None = None) -> JsonObject:
        """An agent's progress (lifecycle events) and, with ``status``, the command's end; with
        ``wait_for``, also whether that traffic event is done (``traffic_gate``)."""
        if wait_for:
            return self.traffic_gate(cid, wait_for, events)
        with self.store.transaction():
            cmd = self.store.get("command", cid)
            if cmd is None or cmd["state"] == "Done":
                return {"known": cmd is not None}
            key = f"{cmd['deploymentId']}/{cmd['instance']}"
            target = self.store.existing("target", key)
            now = time.time()
            if events:
                target["lifecycleEvents"] = self._merged(cmd["deploymentId"], target, events, final=bool(status))
            if status:
                target["status"] = "Succeeded" if status == "Succeeded" else "Failed"
                self.store.put("command", cid, dict(cmd, state="Done", status=status, doneTime=now))
            target["lastUpdatedAt"] = now
            self.store.put("target", key, target)
        if status:
            self.tick()
        self.notify()
        return {"known": True}

    def _expire_commands(self) -> None:
        """A command no agent picked up in time fails its instance, as the service's lifecycle timeout."""
        limit = time.time() - self.pickup_timeout
        for cid, cmd in self.store.items("command"):
            if cmd["state"] == "Pending" and cmd["createTime"] < limit:
                events = self._agent_events(cmd)
                events[0].update(status="Failed", startTime=cmd["createTime"], endTime=time.time(), diagnostics={
                    "errorCode": "UnknownError", "scriptName": "", "message": NO_AGENT_MESSAGE, "logTail": ""})
                for e in events[1:]:
                    e["status"] = "Skipped"
                self.store.put("command", cid, dict(cmd, state="InProgress"))
                self.report(cid, events, "Failed")

    def _agent_events(self, cmd: JsonObject) -> list[JsonObject]:
        """A command's agent events, Pending (a blue/green instance's are its side of the switch)."""
        doc = self.store.existing("deployment", cmd["deploymentId"])
        if not bluegreen.is_blue_green(doc):
            return pending_events()
        target = self.store.get("target", f"{cmd['deploymentId']}/{cmd['instance']}") or {}
        names = bluegreen.agent_events(target.get("instanceLabel", bluegreen.BLUE), bool(target.get("_rerouteOnly")))
        return [{"lifecycleEventName": e, "status": "Pending"} for e in names]

    def fail_orphaned_commands(self, local_instances: set[str]) -> None:
        """After a restart: commands that our own (now gone) agents were running failed (§8.5)."""
        for cid, cmd in self.store.items("command"):
            if cmd["state"] == "InProgress" and cmd["instance"] in local_instances:
                target = self.store.existing("target", f"{cmd['deploymentId']}/{cmd['instance']}")
                events = []
                failed = False
                for e in target["lifecycleEvents"]:
                    if e["status"] == "InProgress":
                        e = dict(e, status="Failed", endTime=time.time(), diagnostics={
                            "errorCode": "UnknownError", "scriptName": "", "message": RESTART_MESSAGE,
                            "logTail": ""})
                        failed = True
                    elif e["status"] == "Pending" and failed:
                        e = dict(e, status="Skipped")
                    events.append(e)
                self.report(cid, events, "Failed")

    # -- traffic control (agent.service.traffic) ------------------------------------------------------
    @staticmethod
    def _traffic_fields(group: JsonObject) -> JsonObject:
        """The deployment's deploymentStyle and loadBalancerInfo when the group controls traffic."""
        if not traffic.controls_traffic(group):
            return {}
        return {"deploymentStyle": dict(group["deploymentStyle"], deploymentType="IN_PLACE"),
                "loadBalancerInfo": group["loadBalancerInfo"]}

    @staticmethod
    def _pending(doc: JsonObject) -> list[JsonObject]:
        events = pending_events()
        return traffic.pending_events(events) if traffic.controls_traffic(doc) else events

    def _merged(self, did: str, target: JsonObject, events: list[JsonObject], *, final: bool) -> list[JsonObject]:
        """The agent's events, with the engine's own traffic events kept (Skipped once the command ended
        before them)."""
        doc = self.store.existing("deployment", did)
        if not traffic.controls_traffic(doc):
            return events
        own = traffic.own_events(target["lifecycleEvents"])
        if final:
            own = {k: dict(e, status="Skipped") if e["status"] == "Pending" else e for k, e in own.items()}
        return traffic.with_traffic_events(events, own, self._steps(doc, target))

    @staticmethod
    def _steps(doc: JsonObject, target: JsonObject) -> tuple[str, ...]:
        """The service's own traffic events of an instance: both in place, one for a blue/green instance."""
        if bluegreen.is_blue_green(doc):
            return bluegreen.service_steps(target.get("instanceLabel", bluegreen.BLUE))
        return traffic.STEPS

    def traffic_gate(self, cid: str, step: str, events: list[JsonObject] | None) -> JsonObject:
        """The agent waits before the event after ``step``'s: start ``step`` (once) and answer ``proceed``:
        ``wait``, ``go`` (it succeeded) or ``stop`` (it failed, or the command is over)."""
        if step == bluegreen.REROUTE:
            return self._reroute_gate(cid, events)
        if step not in traffic.STEPS:
            return {"known": True, "proceed": "stop"}
        start: tuple[JsonObject, JsonObject] | None = None
        with self.store.transaction():
            cmd = self.store.get("command", cid)
            if cmd is None or cmd["state"] == "Done":
                return {"known": cmd is not None, "proceed": "stop"}
            key = f"{cmd['deploymentId']}/{cmd['instance']}"
            target = self.store.existing("target", key)
            doc = self.store.existing("deployment", cmd["deploymentId"])
            if not traffic.controls_traffic(doc):
                return {"known": True, "proceed": "go"}
            if events:
                target["lifecycleEvents"] = self._merged(cmd["deploymentId"], target, events, final=False)
            now = time.time()
            event = traffic.own_events(target["lifecycleEvents"]).get(step) or {}
            status = event.get("status", "Pending")
            if status == "Pending":
                event.update(lifecycleEventName=step, status="InProgress", startTime=now)
                target["lifecycleEvents"] = traffic.with_traffic_events(
                    target["lifecycleEvents"], {**traffic.own_events(target["lifecycleEvents"]), step: event},
                    self._steps(doc, target))
                start = (doc, target)
                status = "InProgress"
            target["lastUpdatedAt"] = now
            self.store.put("target", key, target)
        if start is not None:
            threading.Thread(target=self._traffic_step, args=(cid, step, *start), daemon=True,
                             name=f"cdsim-{step}-{cmd['instance']}").start()
            self.notify()
        answer = {"InProgress": "wait", "Succeeded": "go"}.get(status, "stop")
        return {"known": True, "proceed": answer}

    def _reroute_gate(self, cid: str, events: list[JsonObject] | None) -> JsonObject:
        """A blue/green replacement instance past ValidateService: Ready until the engine reroutes to it
        (``go``); ``stop`` once the deployment or the command is over."""
        with self.store.transaction():
            cmd = self.store.get("command", cid)
            if cmd is None or cmd["state"] == "Done":
                return {"known": cmd is not None, "proceed": "stop"}
            key = f"{cmd['deploymentId']}/{cmd['instance']}"
            target = self.store.existing("target", key)
            doc = self.store.existing("deployment", cmd["deploymentId"])
            if doc["status"] in DONE:
                return {"known": True, "proceed": "stop"}
            if events:
                target["lifecycleEvents"] = self._merged(cmd["deploymentId"], target, events, final=False)
            answer = "go" if target.get("_rerouteGo") else "wait"
            changed = answer == "wait" and target["status"] == "InProgress"
            if changed:
                target["status"] = "Ready"
            target["lastUpdatedAt"] = time.time()
            self.store.put("target", key, target)
        if changed:
            self.tick()
            self.notify()
        return {"known": True, "proceed": answer}

    def _traffic_step(self, cid: str, step: str, doc: JsonObject, target: JsonObject) -> None:
        """Do BlockTraffic or AllowTraffic for one instance, then record the event's end."""
        name = target_name(target)
        ports: dict[str, list[str]] = target.get("_trafficPorts") or {}
        message, failed = "Succeeded", False
        try:
            if self.aws_query is None:
                raise traffic.TrafficError("this service has no local AWS to reach the load balancers in")
            balancers = traffic.LoadBalancers(self.aws_query, doc["loadBalancerInfo"], region=self.region,
                                              instance_ids=self.instance_ids)
            if step == traffic.BLOCK:
                _done, ports = balancers.block(name)
            else:
                balancers.allow(name, ports)
        except traffic.TrafficError as e:
            message, failed = str(e), True
        except Exception as e:  # noqa: BLE001 - the instance fails with the cause rather than hanging
            message, failed = f"{type(e).__name__}: {e}", True
        now = time.time()
        with self.store.transaction():
            key = f"{doc['deploymentId']}/{name}"
            current = self.store.existing("target", key)
            own = traffic.own_events(current["lifecycleEvents"])
            own[step] = dict(own.get(step) or {"lifecycleEventName": step, "startTime": now},
                             status="Failed" if failed else "Succeeded", endTime=now,
                             diagnostics={"errorCode": "UnknownError" if failed else "Success", "scriptName": "",
                                          "message": message, "logTail": ""})
            events = traffic.with_traffic_events(current["lifecycleEvents"], own, self._steps(doc, current))
            current = dict(current, lifecycleEvents=events, lastUpdatedAt=now)
            if step == traffic.BLOCK:
                current["_trafficPorts"] = ports
            if failed:
                after = False
                for event in events:
                    if event["lifecycleEventName"] == step:
                        after = True
                    elif after and event["status"] in ("Pending", "InProgress"):
                        event["status"] = "Skipped"
                current["status"] = "Failed"
                cmd = self.store.get("command", cid)
                if cmd is not None and cmd["state"] != "Done":
                    self.store.put("command", cid, dict(cmd, state="Done", status="Failed", doneTime=now))
            self.store.put("target", key, current)
        if failed:
            self.tick()
        self.notify()

    # -- Auto Scaling (`cdsim fleet scale`) -------------------------------------------------------------
    def auto_scaling_instances(self, group: JsonObject) -> list[str]:
        """The registered instances that are in the group's Auto Scaling groups of the local AWS (none when
        it does not answer)."""
        asgs = [a["name"] if isinstance(a, dict) else a for a in group.get("autoScalingGroups") or []]
        if not asgs or self.aws_query is None or self.instance_ids is None:
            return []
        params = {"Version": "2011-01-01", "Action": "DescribeAutoScalingGroups",
                  **{f"AutoScalingGroupNames.member.{n}": name for n, name in enumerate(asgs, 1)}}
        try:
            found = self.aws_query("autoscaling", params, region=self.region)
        except Exception:  # noqa: BLE001 - no local AWS running: no instance is in any Auto Scaling group
            return []
        ids = {e.text or "" for e in found.iterfind(".//Instances/member/InstanceId")}
        names = [i["instanceName"] for i in self.store.values("instance") if not i.get("deregisterTime")]
        return sorted(n for n in names if self.instance_ids(n) in ids)

    def watch_auto_scaling(self) -> None:
        """Deploy the last successful revision to instances that joined a group's Auto Scaling groups since
        the last look (the first look only notes the members)."""
        if not self._asg_lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() - self._asg_checked < ASG_POLL:
                return
            self._asg_checked = time.monotonic()
            for group in self.store.values("group"):
                if group.get("autoScalingGroups"):
                    self._scaled_out(group, self.auto_scaling_instances(group))
        finally:
            self._asg_lock.release()

    def _scaled_out(self, group: JsonObject, members: list[str]) -> None:
        key = f"{group['applicationName']}/{group['deploymentGroupName']}"
        with self.store.transaction():
            group = self.store.existing("group", key)
            known = group.get("_asgMembers")
            new = sorted(set(members) - set(known or []))
            group["_asgMembers"] = members
            revision = group.get("_lastGoodRevision")
            if known is None or not new or revision is None:
                self.store.put("group", key, group)
                return
            busy = any(d["status"] in ACTIVE and d["creator"] != AUTOSCALING_CREATOR
                       and d["deploymentGroupName"] == group["deploymentGroupName"]
                       and d["applicationName"] == group["applicationName"] for d in self.store.values("deployment"))
            if busy:   # the deployment in progress will leave them outdated: a follow-on after it succeeds
                group["_outdated"] = sorted(set(group.get("_outdated") or []) | set(new))
            self.store.put("group", key, group)
            self.create(group, revision, config_name=None, creator=AUTOSCALING_CREATOR, instances=new,
                        description="Auto Scaling launch: the last successful revision for new instances")

    def _follow_on(self, key: str, done: JsonObject) -> None:
        """After a deployment (not an Auto Scaling one) ends, forget the instances launched while it ran;
        when it succeeded, redeploy its revision to those of them the group still selects."""
        group = self.store.get("group", key)
        if group is None or not group.get("_outdated"):
            return
        outdated = group["_outdated"]
        self.store.put("group", key, dict(group, _outdated=[]))
        if done["status"] != "Succeeded":
            return
        outdated = [n for n in outdated if n in self.selected_instances(group)]
        if outdated:
            self.create(dict(group, _outdated=[]), done["revision"], config_name=done["deploymentConfigName"],
                        creator=AUTOSCALING_CREATOR, instances=outdated,
                        description=f"follow-on of {done['deploymentId']}: instances launched during it")
