"""A fleet's Auto Scaling group of the local AWS as sandboxed instances: which instances of a state are its
members, the names new ones get, and launching copies of a member into a group. One copy of the rules for
`cdsim fleet scale` (``agent.commands.fleet``) and the service's blue/green COPY_AUTO_SCALING_GROUP
(``agent.service.server``).

Names continue the first member's numbering (``web-2`` is followed by ``web-3``, or the first number no
instance of the state has and the caller's ``taken`` does not refuse). A copy gets the member's instance
metadata tags, private network, is registered by the caller's ``register`` (the service's API for the
CLI, the service's own store for the service) before it starts, and is attached to the group with the
member's AMI, type and zone. Must not import the service or the commands.
"""
from __future__ import annotations

from collections.abc import Callable

from agent.instance import imds, localaws
from agent.instance.store import Instance

AUTOSCALING = {"Version": "2011-01-01"}


def number(name: str) -> tuple[str, int]:
    """An instance name's prefix and number (``web-2``: ``web``, 2), for the next names of a fleet."""
    prefix, _, n = name.rpartition("-")
    return (prefix, int(n)) if n.isdigit() else (name, 0)


def members(state: str, group: str, *, region: str = "us-east-1") -> tuple[list[str], dict[str, Instance]] | None:
    """The names of the instances of ``state`` in Auto Scaling group ``group`` (by number), and every
    instance of the state by name; None when the local AWS has no such group."""
    from agent import instance as instances

    found = localaws.query(state, "autoscaling", {**AUTOSCALING, "Action": "DescribeAutoScalingGroups",
                                                  "AutoScalingGroupNames.member.1": group}, region=region)
    asg = found.find(".//AutoScalingGroups/member")
    if asg is None:
        return None
    ids = {e.text or "" for e in asg.iterfind(".//Instances/member/InstanceId")}
    local = {s.name: instances.get(s.name, state=state) for s in instances.list_instances(state=state)}
    by_id = {imds.load(i)["instance_id"]: name for name, i in local.items() if i.network == "private"}
    return sorted((by_id[i] for i in ids if i in by_id), key=number), local


def next_names(template: str, count: int, taken: Callable[[str], bool]) -> list[str]:
    """``count`` names after ``template``'s number that ``taken`` does not refuse."""
    prefix, n = number(template)
    names: list[str] = []
    while len(names) < count:
        n += 1
        if not taken(f"{prefix}-{n}"):
            names.append(f"{prefix}-{n}")
    return names


def launch(template: Instance, names: list[str], *, state: str, group: str,
           register: Callable[[str], None]) -> None:
    """Instances ``names`` made like ``template`` (private network, its metadata tags), each registered
    (``register(name)``) and started, then attached to Auto Scaling group ``group`` (made when missing)."""
    from agent import instance as instances

    identity = imds.load(template)
    made = []
    for name in names:
        new = instances.get_or_create(name, network="private", state=state)
        imds.modify_options(new, tags=dict(identity["tags"]))
        register(name)
        instances.start(new)
        made.append(new)
    localaws.attach_to_auto_scaling_group(state, group, [imds.load(i)["instance_id"] for i in made],
                                          image_id=identity["ami_id"], instance_type=identity["instance_type"],
                                          zone=identity["availability_zone"], region=identity["region"])
