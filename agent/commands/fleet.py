"""`cdsim fleet up|down|scale`: launch (or remove) tagged sandboxed instances registered with a cdsim server.

The local equivalent of the CloudFormation template that launches tagged EC2 instances with the
agent: ``up`` creates N instances named after the tag value (``demofleet-1`` ...), registers them as
on-premises instances with the tag (the server's agents poll by those names), and creates the
application and a deployment group selecting the tag when they are missing: by EC2 tag filters for
private-network instances (EC2 instances of the local AWS, shown by their EC2 instance ids in
deployments), by on-premises tag filters for host-network ones. With ``--target-group``,
``--load-balancer`` or ``--auto-scaling-group`` it also puts them behind that target group / Classic Load
Balancer or in that Auto Scaling group of the local AWS. The server runs an agent for each. ``down``
deregisters and destroys them.
``scale`` changes the fleet's Auto Scaling group of the local AWS: new instances (named, tagged and
registered as their group's first member) are attached to it, and the server deploys the last successful
revision to them; removed ones (the highest numbered) are detached, deregistered from every target group,
drained (destroyed only once their target groups' deregistration delay has passed or they show
``unused``, as an Auto Scaling group behind a load balancer does) and deregistered from the server.
``scale --wait`` follows the automatic deployment to the new instances as `cdsim wait` does, and
``--traffic URL[,RATE]`` (implying ``--wait``) rehearses the scaling under load with `cdsim wait`'s probe:
requests from before the first launch (or deregistration) until the deployment (or the draining) ended,
reported per instance and lifecycle event (``Draining`` and ``Terminate`` for a scale-in), exit 9 when more
than ``--max-failed-requests`` failed.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from typing import TYPE_CHECKING

from agent.errors import DeploymentError, ExitStatus, UsageError

if TYPE_CHECKING:
    from agent.instance.store import Instance

SUMMARY = "launch or remove a fleet of tagged instances registered with the cdsim server"
ROLE_ARN = "arn:aws:iam::000000000000:role/cdsim-codedeploy"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fleet", help=SUMMARY, description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    up = actions.add_parser("up", help="create, tag and register instances (and the app and group)")
    up.add_argument("--instances", type=int, default=3)
    up.add_argument("--tag", required=True, help="KEY=VALUE tag the deployment group selects")
    up.add_argument("--application", default=None)
    up.add_argument("--deployment-group", default=None)
    up.add_argument("--deployment-config", default=None, help="the group's deployment configuration")
    up.add_argument("--network", choices=("private", "host"), default="private")
    up.add_argument("--image", metavar="REF", default=None,
                    help="make new instances from this image (see cdsim instance create --image)")
    up.add_argument("--target-group", default=None, metavar="NAME",
                    help="register the instances in this ELBv2 target group of the local AWS (made when missing; "
                         "the instances start, and the local AWS keeps it while they run); when a load balancer "
                         "of the local AWS has an HTTP listener, its traffic is served too (cdsim lb list)")
    up.add_argument("--load-balancer", default=None, metavar="NAME",
                    help="register the instances with this Classic Load Balancer of the local AWS (made when "
                         "missing: HTTP 80 in the instances' zone)")
    up.add_argument("--auto-scaling-group", default=None, metavar="NAME",
                    help="attach the instances to this Auto Scaling group of the local AWS (made when missing)")
    down = actions.add_parser("down", help="deregister and destroy the instances with a tag")
    down.add_argument("--tag", required=True)
    scale = actions.add_parser("scale", help="change the number of instances of a fleet's Auto Scaling group")
    scale.add_argument("group", metavar="NAME", help="the Auto Scaling group (fleet up --auto-scaling-group)")
    scale.add_argument("--desired", required=True, metavar="N",
                       help="the number of instances: N, or +N / -N relative to now")
    scale.add_argument("--wait", action="store_true",
                       help="follow the automatic deployment to the new instances to its end, as cdsim wait")
    scale.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    scale.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    scale.add_argument("-q", "--quiet", action="store_true", help="with --wait: print only the outcome")
    from agent.commands.wait import add_traffic_options
    from agent.reports import add_report_option
    add_report_option(scale)
    add_traffic_options(scale)
    for a in (up, down, scale):
        a.add_argument("--state", default=None)
        a.add_argument("--endpoint", default=None)
    p.set_defaults(func=run, parser=p)


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise UsageError(f"--tag {text!r} is not KEY=VALUE", reference="fleet-tag-invalid")
    return key, value


def instance_names(value: str, count: int) -> list[str]:
    prefix = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:50] or "instance"
    return [f"{prefix}-{i}" for i in range(1, count + 1)]


def fleet_up(endpoint: str, *, count: int, tag: str, application: str | None = None,
             group: str | None = None, config: str | None = None, network: str = "private",
             state: str | None = None, target_group: str | None = None, load_balancer: str | None = None,
             auto_scaling_group: str | None = None, image: str | None = None) -> list[str]:
    """Create, register and tag ``count`` instances; create the app and group if given and missing;
    with ``target_group`` / ``load_balancer`` / ``auto_scaling_group``, start them and register them in
    that target group / with that Classic Load Balancer / attach them to that Auto Scaling group of the
    local AWS (each made when missing). ``image``: new instances are made from it."""
    from agent import instance as instances
    from agent.instance import imds
    from agent.service.client import ServiceError, call

    if count < 1:
        raise UsageError("--instances must be at least 1")
    local_aws = target_group or load_balancer or auto_scaling_group
    if local_aws and network != "private":
        raise UsageError("--target-group, --load-balancer and --auto-scaling-group need instances with a "
                         "private network: "
                         + imds.HOST_NETWORK_NOTE, reference="fleet-target-group-host")
    key, value = parse_tag(tag)
    names = instance_names(value, count)
    for name in names:
        made = instances.get_or_create(name, network=network, state=state, image_ref=image)
        if made.network == "private":   # an EC2 instance of the local AWS with the fleet's tag
            imds.modify_options(made, tags={**imds.load(made)["tags"], key: value})
        try:
            info = call(endpoint, "GetOnPremisesInstance", {"instanceName": name})["instanceInfo"]
            registered = not info.get("deregisterTime")
        except ServiceError:
            registered = False
        if not registered:
            call(endpoint, "RegisterOnPremisesInstance", {
                "instanceName": name, "iamSessionArn": f"arn:aws:sts::000000000000:assumed-role/cdsim/{name}"})
        call(endpoint, "AddTagsToOnPremisesInstances",
             {"instanceNames": [name], "tags": [{"Key": key, "Value": value}]})
    if local_aws:
        _join_local_aws(names, target_group, load_balancer, auto_scaling_group, state)
    if application:
        try:
            call(endpoint, "GetApplication", {"applicationName": application})
        except ServiceError as e:
            if e.kind != "ApplicationDoesNotExistException":
                raise
            call(endpoint, "CreateApplication", {"applicationName": application})
        if group:
            try:
                call(endpoint, "GetDeploymentGroup", {"applicationName": application, "deploymentGroupName": group})
            except ServiceError as e:
                if e.kind != "DeploymentGroupDoesNotExistException":
                    raise
                # private instances are EC2 instances of the local AWS: selected by their EC2 tags, and
                # deployments show their EC2 instance ids, as on AWS
                call(endpoint, "CreateDeploymentGroup", {
                    "applicationName": application, "deploymentGroupName": group, "serviceRoleArn": ROLE_ARN,
                    "ec2TagFilters" if network == "private" else "onPremisesInstanceTagFilters":
                        [{"Key": key, "Value": value, "Type": "KEY_AND_VALUE"}],
                    **({"deploymentConfigName": config} if config else {})})
    return names


def _join_local_aws(names: list[str], target_group: str | None, load_balancer: str | None,
                    auto_scaling_group: str | None, state: str | None) -> None:
    from agent import instance as instances
    from agent.instance import imds, localaws
    from agent.state import state_dir

    made = [instances.get(name, state=state) for name in names]
    for inst in made:
        instances.start(inst)
    folder = state or state_dir()
    localaws.ensure(folder)
    identity = imds.load(made[0])
    ids = [imds.load(inst)["instance_id"] for inst in made]
    if target_group:
        localaws.register_targets(folder, target_group, ids, region=identity["region"])
        from agent.instance import loadbalancer
        if loadbalancer.listeners_exist(folder):   # a load balancer to carry traffic to them: serve it
            loadbalancer.ensure(folder)
    if load_balancer:
        localaws.register_with_load_balancer(folder, load_balancer, ids, zone=identity["availability_zone"],
                                             region=identity["region"])
    if auto_scaling_group:
        localaws.attach_to_auto_scaling_group(folder, auto_scaling_group, ids, image_id=identity["ami_id"],
                                              instance_type=identity["instance_type"],
                                              zone=identity["availability_zone"], region=identity["region"])


def fleet_down(endpoint: str, *, tag: str, state: str | None = None) -> list[str]:
    """Deregister the registered instances with the tag and destroy those that are local instances."""
    from agent import instance as instances
    from agent.instance import store as instance_store
    from agent.service.client import call

    key, value = parse_tag(tag)
    names: list[str] = call(endpoint, "ListOnPremisesInstances", {
        "registrationStatus": "Registered",
        "tagFilters": [{"Key": key, "Value": value, "Type": "KEY_AND_VALUE"}]})["instanceNames"]
    for name in names:
        call(endpoint, "DeregisterOnPremisesInstance", {"instanceName": name})
        inst = instance_store.load(name, state)
        if inst is not None:
            instances.destroy(inst)
    return names


ASG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
DESIRED = re.compile(r"([+-]?)([0-9]{1,4})")
AUTOSCALING = {"Version": "2011-01-01"}
ELBV2 = {"Version": "2015-12-01"}
FIND_DEPLOYMENT = 60.0   # seconds --wait gives the service to start the deployment to new instances


def desired_count(text: str, current: int) -> int:
    """``--desired``: N, +N or -N (relative to ``current``); never below 0."""
    match = DESIRED.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--desired {text!r} is not N, +N or -N", reference="fleet-desired-invalid")
    sign, n = match.group(1), int(match.group(2))
    wanted = current + n if sign == "+" else current - n if sign == "-" else n
    if wanted < 0:
        raise UsageError(f"--desired {text}: the group has {current} instances", reference="fleet-desired-invalid")
    return wanted


def fleet_scale(endpoint: str, group: str, desired: str, *, state: str | None = None) -> tuple[list[str], list[str]]:
    """Set the number of instances of the local Auto Scaling group ``group``; (launched, terminated) names.
    New instances copy the first member's tags (service and instance metadata) and continue its names'
    numbering; they are started and attached, not registered in any target group (the deployment's
    AllowTraffic does that when its group controls traffic)."""
    from agent import instance as instances
    from agent.instance import autoscaling, imds, localaws
    from agent.service.client import call
    from agent.state import state_dir

    if not ASG_NAME.fullmatch(group):
        raise UsageError(f"{group!r} is not an Auto Scaling group name", reference="fleet-asg-invalid")
    folder = state or state_dir()
    localaws.ensure(folder)
    found = autoscaling.members(folder, group)
    if found is None:
        raise UsageError(f"no Auto Scaling group {group!r} in the local AWS of {folder}",
                         reference="fleet-asg-unknown", hint="make it with `cdsim fleet up --auto-scaling-group`")
    members, local = found
    wanted = desired_count(desired, len(members))
    if wanted > len(members):
        if not members:
            raise UsageError(f"Auto Scaling group {group!r} has no instance of this state to copy",
                             reference="fleet-asg-empty")
        return _scale_out(endpoint, folder, group, local[members[0]], wanted - len(members), set(local)), []
    removed = members[wanted:][::-1] if wanted < len(members) else []
    draining: list[tuple[str, str, float]] = []
    for name in removed:
        iid = imds.load(local[name])["instance_id"]
        localaws.query(folder, "autoscaling", {**AUTOSCALING, "Action": "DetachInstances",
                                               "AutoScalingGroupName": group, "InstanceIds.member.1": iid,
                                               "ShouldDecrementDesiredCapacity": "true"})
        draining += _leave_target_groups(folder, iid)
    _drained(folder, draining)
    for name in removed:
        call(endpoint, "DeregisterOnPremisesInstance", {"instanceName": name})
        instances.destroy(local[name])
    return [], removed


def _scale_out(endpoint: str, folder: str, group: str, template: Instance, count: int, taken: set[str]) -> list[str]:
    from agent.instance import autoscaling
    from agent.service.client import call

    tags = call(endpoint, "GetOnPremisesInstance", {"instanceName": template.name})["instanceInfo"].get("tags") or []

    def register(name: str) -> None:
        call(endpoint, "RegisterOnPremisesInstance", {
            "instanceName": name, "iamSessionArn": f"arn:aws:sts::000000000000:assumed-role/cdsim/{name}"})
        if tags:
            call(endpoint, "AddTagsToOnPremisesInstances", {"instanceNames": [name], "tags": tags})

    names = autoscaling.next_names(template.name, count, lambda n: n in taken or _registered(endpoint, n))
    autoscaling.launch(template, names, state=folder, group=group, register=register)
    return names


def _registered(endpoint: str, name: str) -> bool:
    from agent.service.client import ServiceError, call

    try:
        return not call(endpoint, "GetOnPremisesInstance", {"instanceName": name})["instanceInfo"].get("deregisterTime")
    except ServiceError:
        return False


def _leave_target_groups(folder: str, instance_id: str) -> list[tuple[str, str, float]]:
    """Deregister an instance from every ELBv2 target group of the local AWS that lists it; (target group
    ARN, instance id, time by which its deregistration delay has passed) for each."""
    from agent.instance import localaws

    groups = localaws.query(folder, "elasticloadbalancing", {**ELBV2, "Action": "DescribeTargetGroups"})
    left = []
    for arn in (e.text or "" for e in groups.iterfind(".//TargetGroups/member/TargetGroupArn")):
        if instance_id in _target_states(folder, arn, instance_id):
            localaws.query(folder, "elasticloadbalancing", {**ELBV2, "Action": "DeregisterTargets",
                                                            "TargetGroupArn": arn, "Targets.member.1.Id": instance_id})
            found = localaws.query(folder, "elasticloadbalancing", {
                **ELBV2, "Action": "DescribeTargetGroupAttributes", "TargetGroupArn": arn})
            delay = next((float(m.findtext("Value") or 300) for m in found.iterfind(".//Attributes/member")
                          if m.findtext("Key") == "deregistration_delay.timeout_seconds"), 300.0)
            left.append((arn, instance_id, time.monotonic() + delay))
    return left


def _target_states(folder: str, arn: str, instance_id: str) -> dict[str, str]:
    """{instance id: state} of ``instance_id``'s registrations in target group ``arn`` (empty: not listed)."""
    from agent.instance import localaws

    health = localaws.query(folder, "elasticloadbalancing", {**ELBV2, "Action": "DescribeTargetHealth",
                                                             "TargetGroupArn": arn})
    return {m.findtext("Target/Id") or "": m.findtext("TargetHealth/State") or ""
            for m in health.iterfind(".//TargetHealthDescriptions/member") if m.findtext("Target/Id") == instance_id}


def _drained(folder: str, draining: list[tuple[str, str, float]]) -> None:
    """Wait until each deregistered target is no longer draining (or its deregistration delay passed):
    requests in flight to it finish before the instance goes."""
    for arn, iid, by in draining:
        while time.monotonic() < by and _target_states(folder, arn, iid).get(iid) == "draining":
            time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    from agent.service.client import find_endpoint

    if not getattr(args, "action", None):
        args.parser.print_help()
        return 2
    endpoint = find_endpoint(args.endpoint, args.state)
    if args.action == "up":
        names = fleet_up(endpoint, count=args.instances, tag=args.tag, application=args.application,
                         group=args.deployment_group, config=args.deployment_config, network=args.network,
                         state=args.state, target_group=args.target_group, load_balancer=args.load_balancer,
                         auto_scaling_group=args.auto_scaling_group, image=args.image)
        print(f"fleet up: {', '.join(names)} registered with tag {args.tag}"
              + (f"; application {args.application}" if args.application else "")
              + (f", deployment group {args.deployment_group}" if args.deployment_group else "")
              + (f"; in target group {args.target_group}" if args.target_group else "")
              + (f"; behind load balancer {args.load_balancer}" if args.load_balancer else "")
              + (f"; in Auto Scaling group {args.auto_scaling_group}" if args.auto_scaling_group else ""))
        return 0
    if args.action == "scale":
        return scale(args, endpoint)
    names = fleet_down(endpoint, tag=args.tag, state=args.state)
    print(f"fleet down: {', '.join(names) if names else 'no instances'}")
    return 0


def scale(args: argparse.Namespace, endpoint: str) -> int:
    """`cdsim fleet scale`, with ``--wait`` / ``--traffic`` (the probe starts before anything changes)."""
    from agent.commands import wait

    started = time.time()
    running = wait.start_probe(args)
    try:
        before = set(_deployments(endpoint)) if args.wait or running else set()
        added, removed = fleet_scale(endpoint, args.group, args.desired, state=args.state)
        print(f"fleet scale {args.group}: "
              + "; ".join([f"launched {', '.join(added)}"] * bool(added) + [f"terminated {', '.join(removed)}"]
                          * bool(removed)) if added or removed else f"fleet scale {args.group}: no change",
              flush=True)
        did = automatic_deployment(endpoint, args.group, added, before, state=args.state) \
            if added and (args.wait or running) else None
        if did is not None:
            print(f"fleet scale {args.group}: the service deploys to {', '.join(added)} in {did}", flush=True)
            return wait.follow(args, endpoint, did, running)
        if running is None:
            return 0
        # every request from the probe's start until it stops (in finish_probe) belongs to the scale-in
        windows = [(name, "ScaleIn", started, float("inf")) for name in removed]
        rows = wait.finish_probe(args, running, f"fleet scale {args.group}", windows=windows)
        failed = rows[-1]["failed"] if rows else 0
        if failed > args.max_failed_requests:
            print(f"fleet scale {args.group}: {failed} requests failed while it scaled (at most "
                  f"{args.max_failed_requests} allowed)", file=sys.stderr, flush=True)
            return int(ExitStatus.TRAFFIC_FAILED)
        return 0
    finally:
        if running is not None and not running.stopped:
            running.stop()


def _deployments(endpoint: str) -> list[str]:
    from agent.service.client import call

    return list(call(endpoint, "ListDeployments", {})["deployments"])


def automatic_deployment(endpoint: str, group: str, added: list[str], before: set[str], *,
                         state: str | None = None) -> str | None:
    """The id of the deployment the service started for the instances ``added`` to Auto Scaling group
    ``group`` (one that is not in ``before``, by creator ``autoscaling``, targeting one of them); None (and
    a line saying why) when no deployment group on ``group`` has a successful deployment to give them."""
    from agent import instance as instances
    from agent.instance import imds
    from agent.service.client import call

    wanted = set(added) | {imds.load(instances.get(name, state=state))["instance_id"] for name in added}
    groups = []
    for app in call(endpoint, "ListApplications", {})["applications"]:
        names = call(endpoint, "ListDeploymentGroups", {"applicationName": app})["deploymentGroups"]
        if names:
            groups += call(endpoint, "BatchGetDeploymentGroups", {
                "applicationName": app, "deploymentGroupNames": names})["deploymentGroupsInfo"]
    if not any(g.get("lastSuccessfulDeployment") for g in groups
               if group in {a.get("name") for a in g.get("autoScalingGroups") or []}):
        print(f"fleet scale {group}: no deployment follows: no deployment group on {group} has a successful "
              "deployment yet", file=sys.stderr, flush=True)
        return None
    deadline = time.monotonic() + FIND_DEPLOYMENT
    while time.monotonic() < deadline:
        new = [d for d in _deployments(endpoint) if d not in before]
        if new:
            for info in call(endpoint, "BatchGetDeployments", {"deploymentIds": new})["deploymentsInfo"]:
                if info.get("creator") == "autoscaling":
                    targets = set(call(endpoint, "ListDeploymentTargets", {
                        "deploymentId": info["deploymentId"]})["targetIds"])
                    if targets & wanted:
                        return str(info["deploymentId"])
        time.sleep(0.2)
    raise DeploymentError(f"fleet scale {group}: the service started no deployment for {', '.join(added)} "
                          f"in {FIND_DEPLOYMENT:g} s")
