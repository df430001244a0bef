"""CodeDeploy's service model as botocore ships it, and the input checks it drives.

``operations()`` names every operation of the model; ``check_input(operation, body)`` walks a request
body against the operation's input shape (required members, types, lengths, ranges, enums, patterns)
and returns the first problem as ``(error name, message)``, or None. The error is the one the model
lists for the operation when there is one for the member (``ApplicationNameRequiredException`` for a
missing ``applicationName``, ``InvalidFileExistsBehaviorException`` for an unknown
``fileExistsBehavior``), else the generic errors every AWS JSON service answers with:
``SerializationException`` for a value of the wrong JSON type and ``ValidationException`` ("1 validation
error detected: Value ... at '...' failed to satisfy constraint: ...") for a broken constraint.
Members the model does not know are ignored, as the service does. Reads the model once (botocore's
loader); must not import the API, the engine, the store or the server.
"""
from __future__ import annotations

import functools
import json
import re
from typing import Any

from botocore.loaders import Loader
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StringShape, StructureShape

SERVICE = "codedeploy"
API_VERSION = "2014-10-06"

# a member whose own name does not give its error's name (``<Member>RequiredException`` /
# ``Invalid<Member>Exception``): the errors the model lists for it, tried in this order
REQUIRED_ALIASES: dict[str, tuple[str, ...]] = {
    "serviceRoleArn": ("RoleRequiredException",),
    "currentDeploymentGroupName": ("DeploymentGroupNameRequiredException",),
    "tags": ("TagRequiredException",),
    "Tags": ("TagRequiredException",),
    "TagKeys": ("TagRequiredException",),
    "instanceNames": ("InstanceNameRequiredException",),
    "applicationNames": ("ApplicationNameRequiredException",),
    "deploymentGroupNames": ("DeploymentGroupNameRequiredException",),
    "deploymentIds": ("DeploymentIdRequiredException",),
    "instanceIds": ("InstanceIdRequiredException",),
    "targetId": ("DeploymentTargetIdRequiredException",),
    "targetIds": ("DeploymentTargetIdRequiredException",),
    "revisions": ("RevisionRequiredException",),
    "tokenName": ("GitHubAccountTokenNameRequiredException",),
}
INVALID_ALIASES: dict[str, tuple[str, ...]] = {
    "currentDeploymentGroupName": ("InvalidDeploymentGroupNameException",),
    "newDeploymentGroupName": ("InvalidDeploymentGroupNameException",),
    "newApplicationName": ("InvalidApplicationNameException",),
    "applicationNames": ("InvalidApplicationNameException",),
    "deploymentGroupNames": ("InvalidDeploymentGroupNameException",),
    "ec2TagFilters": ("InvalidEC2TagException",),
    "onPremisesInstanceTagFilters": ("InvalidTagException",),
    "tagFilters": ("InvalidTagFilterException",),
    "autoRollbackConfiguration": ("InvalidAutoRollbackConfigException",),
    "minimumHealthyHosts": ("InvalidMinimumHealthyHostValueException",),
    "deployed": ("InvalidDeployedStateFilterException",),
    "targetFilters": ("InvalidTargetFilterNameException",),
    "tags": ("InvalidTagsToAddException", "InvalidTagException"),
    "Tags": ("InvalidTagsToAddException",),
    "TagKeys": ("InvalidTagsToAddException",),
    "ResourceArn": ("InvalidArnException",),
    "status": ("InvalidLifecycleEventHookExecutionStatusException",),
    "lifecycleEventHookExecutionId": ("InvalidLifecycleEventHookExecutionIdException",),
    "triggerConfigurations": ("InvalidTriggerConfigException",),
    "alarmConfiguration": ("InvalidAlarmConfigException",),
    "loadBalancerInfo": ("InvalidLoadBalancerInfoException",),
    "blueGreenDeploymentConfiguration": ("InvalidBlueGreenDeploymentConfigurationException",),
    "trafficRoutingConfig": ("InvalidTrafficRoutingConfigurationException",),
    "createTimeRange": ("InvalidTimeRangeException",),
    "targetInstances": ("InvalidTargetInstancesException",),
    "instanceStatusFilter": ("InvalidInstanceStatusException",),
    "includeOnlyStatuses": ("InvalidDeploymentStatusException",),
    "autoScalingGroups": ("InvalidAutoScalingGroupException",),
    "ec2TagSet": ("InvalidEC2TagException",),
    "onPremisesTagSet": ("InvalidTagException",),
}
VALIDATION = "ValidationException"
SERIALIZATION = "SerializationException"

Problem = tuple[str, str]


@functools.cache
def service_model() -> ServiceModel:
    return ServiceModel(Loader().load_service_model(SERVICE, "service-2", API_VERSION), SERVICE)


@functools.cache
def operations() -> tuple[str, ...]:
    return tuple(service_model().operation_names)


@functools.cache
def errors_of(operation: str) -> frozenset[str]:
    """The error names the model lists for ``operation``."""
    return frozenset(e.name for e in service_model().operation_model(operation).error_shapes)


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


class _Walk:
    def __init__(self, op: OperationModel):
        self.errors = errors_of(op.name)
        self.problems: list[Problem] = []

    def _pick(self, candidates: list[str]) -> str | None:
        return next((c for c in candidates if c in self.errors), None)

    def missing(self, member: str, path: str) -> None:
        kind = self._pick([f"{_cap(member)}RequiredException", *REQUIRED_ALIASES.get(member, ())])
        if kind:
            self.problems.append((kind, f"{_cap(_words(member))} must be specified"))
        else:
            self.problems.append((VALIDATION, f"Value null at '{path}' failed to satisfy constraint: "
                                              "Member must not be null"))

    def invalid(self, value: Any, shape: Shape, path: str, constraint: str) -> None:
        top, leaf = path.split(".")[0], _leaf(path)
        kind = self._pick([f"Invalid{_cap(leaf)}Exception", f"Invalid{shape.name}Exception",
                           *INVALID_ALIASES.get(leaf, ()), f"Invalid{_cap(top)}Exception",
                           *INVALID_ALIASES.get(top, ())])
        shown = json.dumps(value) if not isinstance(value, str) else value
        text = f"Value '{shown[:200]}' at '{path}' failed to satisfy constraint: Member must {constraint}"
        self.problems.append((kind or VALIDATION, text))

    def wrong_type(self, path: str, expected: str, value: Any) -> None:
        self.problems.append((SERIALIZATION, f"{path}: expected {expected}, got {_json_type(value)}"))

    def value(self, value: Any, shape: Shape, path: str) -> None:
        t = shape.type_name
        if isinstance(shape, StructureShape):
            if not isinstance(value, dict):
                return self.wrong_type(path, "a structure", value)
            for name in shape.required_members:
                v = value.get(name)
                if v is None or (v == "" and shape.members[name].type_name == "string"):
                    self.missing(name, f"{path}.{name}" if path else name)
            for name, member in shape.members.items():
                if value.get(name) is not None and not (value[name] == "" and name in shape.required_members):
                    self.value(value[name], member, f"{path}.{name}" if path else name)
        elif isinstance(shape, ListShape):
            if not isinstance(value, list):
                return self.wrong_type(path, "a list", value)
            self._length(value, shape, path)
            for i, item in enumerate(value):
                if item is None:
                    self.missing(_leaf(path), f"{path}.{i + 1}.member")
                else:
                    self.value(item, shape.member, f"{path}.{i + 1}.member")
        elif isinstance(shape, MapShape):
            if not isinstance(value, dict):
                return self.wrong_type(path, "a map", value)
            for k, v in value.items():
                self.value(k, shape.key, f"{path}.key")
                self.value(v, shape.value, f"{path}.{k}")
        elif isinstance(shape, StringShape):
            if not isinstance(value, str):
                return self.wrong_type(path, "a string", value)
            enum = shape.enum
            if enum and value not in enum:
                return self.invalid(value, shape, path, f"satisfy enum value set: [{', '.join(enum)}]")
            self._length(value, shape, path)
            pattern = shape.metadata.get("pattern")
            if pattern and re.fullmatch(pattern, value) is None:
                self.invalid(value, shape, path, f"satisfy regular expression pattern: {pattern}")
        elif t in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                return self.wrong_type(path, "an integer", value)
            lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
            if lo is not None and value < lo:
                self.invalid(value, shape, path, f"have value greater than or equal to {lo}")
            elif hi is not None and value > hi:
                self.invalid(value, shape, path, f"have value less than or equal to {hi}")
        elif t == "boolean":
            if not isinstance(value, bool):
                self.wrong_type(path, "a boolean", value)
        elif t in ("timestamp", "double", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.wrong_type(path, "a number", value)
        elif t == "blob" and not isinstance(value, str):
            self.wrong_type(path, "a base64 string", value)
        return None

    def _length(self, value: list[Any] | str, shape: Shape, path: str) -> None:
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        what = "have length"
        if lo is not None and len(value) < lo:
            self.invalid(value, shape, path, f"{what} greater than or equal to {lo}")
        elif hi is not None and len(value) > hi:
            self.invalid(value, shape, path, f"{what} less than or equal to {hi}")


def _leaf(path: str) -> str:
    """The last member name of a path like ``a.b.3.member.c`` (``c``), or of ``a.b.3.member`` (``b``)."""
    parts = [p for p in path.split(".") if p != "member" and not p.isdigit()]
    return parts[-1] if parts else path


def _words(member: str) -> str:
    """``deploymentGroupName`` -> ``deployment group name``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: " " + m.group(1).lower(), member).strip().lower()


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), "null")


def check_input(operation: str, body: dict[str, Any]) -> Problem | None:
    """The first problem of ``body`` as ``operation``'s input: an operation error's name when the model
    lists one for the member, else ValidationException (all constraint problems in one message, as AWS
    words it) or SerializationException. None when the body fits the model."""
    op = service_model().operation_model(operation)
    if op.input_shape is None:
        return None
    walk = _Walk(op)
    walk.value(body, op.input_shape, "")
    if not walk.problems:
        return None
    specific = [p for p in walk.problems if p[0] not in (VALIDATION,)]
    if specific:
        return specific[0]
    texts = [m for _, m in walk.problems]
    count = len(texts)
    return VALIDATION, f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(texts[:10])
