"""Blue/green EC2 deployments: the service's rules, as values (pure: no I/O).

A deployment group with ``deploymentStyle {deploymentType: BLUE_GREEN, deploymentOption:
WITH_TRAFFIC_CONTROL}``, a ``loadBalancerInfo`` and a ``blueGreenDeploymentConfiguration`` deploys to a
replacement (green) fleet and reroutes traffic to it from the original (blue) one:

* ``check_group`` is CreateDeploymentGroup's / UpdateDeploymentGroup's validation (the style's enums,
  BLUE_GREEN only with traffic control and a load balancer, the configuration's enums and wait times up
  to 2880 minutes), ``check_deployment`` CreateDeployment's (``targetInstances`` is required with
  ``DISCOVER_EXISTING``, refused for in-place groups and with ``COPY_AUTO_SCALING_GROUP``, which needs the
  group's Auto Scaling group): each returns the model's error name and a message, or None.
* The green instances run ``GREEN_EVENTS`` (the agent's ApplicationStop ... ValidateService, then the
  service's reroute: BeforeAllowTraffic, AllowTraffic, AfterAllowTraffic); the agent waits after
  ValidateService (``REROUTE``, cdsim's own gate) until the engine reroutes, and a green waiting there is
  ``Ready``. The blue ones run ``BLUE_EVENTS`` (BeforeBlockTraffic, BlockTraffic, AfterBlockTraffic), their
  hooks from the last successful revision on that instance, as in-place.
* ``PHASES``: ``provision`` (COPY_AUTO_SCALING_GROUP: the engine has the group's Auto Scaling group copied,
  ``CodeDeploy_<group>_<deployment id>``, with as many new instances), ``install`` (greens up to
  ValidateService, as the configuration's minimum healthy hosts allow), ``ready`` (STOP_DEPLOYMENT:
  status Ready until ContinueDeployment READY_WAIT, or the wait time passed: Stopped, traffic
  untouched), ``reroute`` (greens' AllowTraffic), ``block`` (blues' BlockTraffic),
  ``termination-wait`` and ``terminating`` (TERMINATE), then the end. A rollback (creator
  ``codeDeployRollback``) of a deployment whose reroute began swaps the roles: the original fleet is its
  green one with the reroute only (``REROUTE_ONLY_EVENTS``), the replacement its blue one.
* ``plan_statuses`` maps instance statuses so that the engine's ``plan`` decides each phase.

Imports nothing of cdsim: the engine (``agent.service.engine``) applies these rules.
"""
from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]   # agent.service.shapes.JsonObject, not imported: this module imports no cdsim module

BLUE_GREEN = "BLUE_GREEN"
IN_PLACE = "IN_PLACE"
GREEN, BLUE = "Green", "Blue"
REROUTE = "Reroute"            # cdsim's gate: a green waits after ValidateService until the reroute starts
MAX_WAIT_MINUTES = 2880        # the model: "The maximum setting is 2880 minutes (2 days)"

GREEN_AGENT_EVENTS = ("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall",
                      "ApplicationStart", "ValidateService", "BeforeAllowTraffic", "AfterAllowTraffic")
BLUE_AGENT_EVENTS = ("BeforeBlockTraffic", "AfterBlockTraffic")
REROUTE_ONLY_AGENT_EVENTS = ("BeforeAllowTraffic", "AfterAllowTraffic")
ALLOW, BLOCK = "AllowTraffic", "BlockTraffic"
GREEN_EVENTS = (*GREEN_AGENT_EVENTS[:8], ALLOW, "AfterAllowTraffic")
BLUE_EVENTS = ("BeforeBlockTraffic", BLOCK, "AfterBlockTraffic")
REROUTE_ONLY_EVENTS = ("BeforeAllowTraffic", ALLOW, "AfterAllowTraffic")

PHASES = ("provision", "install", "ready", "reroute", "block", "termination-wait", "terminating")

STYLE_TYPES = (IN_PLACE, BLUE_GREEN)
STYLE_OPTIONS = ("WITH_TRAFFIC_CONTROL", "WITHOUT_TRAFFIC_CONTROL")
TERMINATION_ACTIONS = ("TERMINATE", "KEEP_ALIVE")
READY_ACTIONS = ("CONTINUE_DEPLOYMENT", "STOP_DEPLOYMENT")
GREEN_ACTIONS = ("DISCOVER_EXISTING", "COPY_AUTO_SCALING_GROUP")
WAIT_TYPES = ("READY_WAIT", "TERMINATION_WAIT")

Problem = tuple[str, str]   # (the model's error name, message)


def is_blue_green(doc: JsonObject) -> bool:
    """A group or deployment whose style is BLUE_GREEN."""
    return (doc.get("deploymentStyle") or {}).get("deploymentType") == BLUE_GREEN


def _minutes(value: object, what: str) -> Problem | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WAIT_MINUTES:
        return ("InvalidBlueGreenDeploymentConfigurationException",
                f"{what} must be a whole number of minutes from 0 to {MAX_WAIT_MINUTES}, not {value!r}")
    return None


def _enum(value: object, allowed: tuple[str, ...], what: str) -> Problem | None:
    if value is not None and value not in allowed:
        return ("InvalidBlueGreenDeploymentConfigurationException",
                f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    return None


def check_group(group: JsonObject) -> Problem | None:
    """The service's checks of a deployment group's style, load balancer and blue/green configuration
    (the group as it will be stored)."""
    style = group.get("deploymentStyle") or {}
    kind, option = style.get("deploymentType"), style.get("deploymentOption")
    if kind not in (None, *STYLE_TYPES) or option not in (None, *STYLE_OPTIONS):
        return ("InvalidDeploymentStyleException",
                f"Invalid deployment style {style}: deploymentType is IN_PLACE or BLUE_GREEN, deploymentOption "
                "WITH_TRAFFIC_CONTROL or WITHOUT_TRAFFIC_CONTROL")
    config = group.get("blueGreenDeploymentConfiguration")
    if kind != BLUE_GREEN:
        return None
    if option != "WITH_TRAFFIC_CONTROL":
        return ("InvalidDeploymentStyleException",
                "A BLUE_GREEN deployment style needs deploymentOption WITH_TRAFFIC_CONTROL")
    info = group.get("loadBalancerInfo") or {}
    if not (info.get("targetGroupInfoList") or info.get("elbInfoList")):
        return ("InvalidLoadBalancerInfoException",
                "A blue/green deployment group needs a load balancer: loadBalancerInfo with a targetGroupInfoList "
                "or an elbInfoList")
    if not isinstance(config, dict):
        return ("InvalidBlueGreenDeploymentConfigurationException",
                "A blue/green deployment group needs a blueGreenDeploymentConfiguration")
    terminate = config.get("terminateBlueInstancesOnDeploymentSuccess") or {}
    ready = config.get("deploymentReadyOption") or {}
    green = config.get("greenFleetProvisioningOption") or {}
    return (_enum(terminate.get("action"), TERMINATION_ACTIONS, "terminateBlueInstancesOnDeploymentSuccess.action")
            or _minutes(terminate.get("terminationWaitTimeInMinutes"),
                        "terminateBlueInstancesOnDeploymentSuccess.terminationWaitTimeInMinutes")
            or _enum(ready.get("actionOnTimeout"), READY_ACTIONS, "deploymentReadyOption.actionOnTimeout")
            or _minutes(ready.get("waitTimeInMinutes"), "deploymentReadyOption.waitTimeInMinutes")
            or _enum(green.get("action"), GREEN_ACTIONS, "greenFleetProvisioningOption.action"))


def green_action(group: JsonObject) -> str:
    config = group.get("blueGreenDeploymentConfiguration") or {}
    return str((config.get("greenFleetProvisioningOption") or {}).get("action") or "DISCOVER_EXISTING")


def check_deployment(group: JsonObject, target_instances: JsonObject | None) -> Problem | None:
    """CreateDeployment's checks of ``targetInstances`` against the group's style."""
    if not is_blue_green(group):
        if target_instances:
            return ("InvalidTargetInstancesException",
                    "targetInstances is for blue/green deployments; this deployment group deploys in place")
        return None
    if green_action(group) == "COPY_AUTO_SCALING_GROUP":
        if not group.get("autoScalingGroups"):
            return ("InvalidAutoScalingGroupException",
                    "greenFleetProvisioningOption COPY_AUTO_SCALING_GROUP copies the deployment group's Auto Scaling "
                    "group: the group has none")
        if target_instances:
            return ("InvalidTargetInstancesException",
                    "targetInstances is for DISCOVER_EXISTING; COPY_AUTO_SCALING_GROUP launches the replacement "
                    "instances itself")
        return None
    wanted = target_instances or {}
    if not (wanted.get("tagFilters") or (wanted.get("ec2TagSet") or {}).get("ec2TagSetList")
            or wanted.get("autoScalingGroups")):
        return ("InvalidTargetInstancesException",
                "targetInstances must name the replacement instances (tagFilters, ec2TagSet or "
                "autoScalingGroups) when the deployment group's greenFleetProvisioningOption is DISCOVER_EXISTING")
    if wanted.get("tagFilters") and wanted.get("ec2TagSet"):
        return ("InvalidTargetInstancesException", "targetInstances takes tagFilters or ec2TagSet, not both")
    return None


def ready_option(doc: JsonObject) -> tuple[str, int]:
    """(actionOnTimeout, waitTimeInMinutes) of a blue/green deployment."""
    ready = (doc.get("blueGreenDeploymentConfiguration") or {}).get("deploymentReadyOption") or {}
    return str(ready.get("actionOnTimeout") or "CONTINUE_DEPLOYMENT"), int(ready.get("waitTimeInMinutes") or 0)


def termination_option(doc: JsonObject) -> tuple[str, int]:
    """(action, terminationWaitTimeInMinutes) for the blue instances after success."""
    term = (doc.get("blueGreenDeploymentConfiguration") or {}).get("terminateBlueInstancesOnDeploymentSuccess") or {}
    return str(term.get("action") or "KEEP_ALIVE"), int(term.get("terminationWaitTimeInMinutes") or 0)


def agent_events(label: str, reroute_only: bool = False) -> tuple[str, ...]:
    """The agent's events of an instance of this label (the service's own ones left out)."""
    if label == BLUE:
        return BLUE_AGENT_EVENTS
    return REROUTE_ONLY_AGENT_EVENTS if reroute_only else GREEN_AGENT_EVENTS


def service_steps(label: str) -> tuple[str, ...]:
    """The service's own events of an instance of this label."""
    return (BLOCK,) if label == BLUE else (ALLOW,)


def pending_events(label: str, reroute_only: bool = False) -> list[JsonObject]:
    names = BLUE_EVENTS if label == BLUE else REROUTE_ONLY_EVENTS if reroute_only else GREEN_EVENTS
    return [{"lifecycleEventName": e, "status": "Pending"} for e in names]


def wait_after(label: str, reroute_only: bool = False) -> dict[str, str]:
    """Where the agent stops and asks the engine (``waitFor``): after which of its events, for what."""
    if label == BLUE:
        return {"BeforeBlockTraffic": BLOCK}
    gates = {"BeforeAllowTraffic": ALLOW}
    return gates if reroute_only else {"ValidateService": REROUTE, **gates}


def plan_statuses(statuses: list[tuple[str, str]], phase: str) -> list[tuple[str, str]]:
    """Instance statuses as the engine's ``plan`` should count them in a phase: while installing, a green
    that is Ready is done (Succeeded); while rerouting, a Ready green has yet to start (Pending)."""
    if phase in ("provision", "install"):
        return [(n, "Succeeded" if s == "Ready" else s) for n, s in statuses]
    if phase == "reroute":
        return [(n, "Pending" if s == "Ready" else s) for n, s in statuses]
    return statuses


def continue_problem(doc: JsonObject, wait_type: str | None) -> Problem | None:
    """ContinueDeployment's checks of a blue/green deployment (``wait_type`` default READY_WAIT)."""
    kind = wait_type or "READY_WAIT"
    if kind not in WAIT_TYPES:
        return ("InvalidDeploymentWaitTypeException", f"deploymentWaitType must be READY_WAIT or TERMINATION_WAIT, "
                                                      f"not {kind!r}")
    phase = doc.get("_phase")
    if kind == "READY_WAIT" and phase != "ready":
        return ("DeploymentIsNotInReadyStateException",
                f"The deployment {doc['deploymentId']} is not in the Ready state (it is {doc['status']})")
    if kind == "TERMINATION_WAIT" and phase != "termination-wait":
        return ("DeploymentNotStartedException" if phase in ("provision", "install", "ready", "reroute", "block")
                else "InvalidDeploymentStatusException",
                f"The deployment {doc['deploymentId']} is not waiting to terminate the original instances")
    return None


def status_message(phase: str, doc: JsonObject) -> str:
    """The deploymentStatusMessages line for entering a phase."""
    _action, minutes = ready_option(doc)
    _term, term_minutes = termination_option(doc)
    return {
        "provision": "Copying the Auto Scaling group: launching the replacement instances",
        "install": "Installing the application revision on the replacement instances",
        "ready": f"The replacement instances are ready: traffic will be rerouted when the deployment is continued "
                 f"(ContinueDeployment READY_WAIT) within {minutes} minutes",
        "reroute": "Rerouting traffic to the replacement instances",
        "block": "Blocking traffic to the original instances",
        "termination-wait": f"Waiting {term_minutes} minutes before terminating the original instances",
        "terminating": "Terminating the original instances",
    }.get(phase, phase)
