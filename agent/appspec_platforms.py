"""The AppSpec of Amazon ECS and AWS Lambda deployments: recognised, modelled and checked as the CodeDeploy
service documents it (the 'resources' and 'hooks' sections for ECS and Lambda), each problem at its line
and column.

Pure: no I/O (the caller reads the file and passes its bytes). Reuses agent.appspec's composer, which
keeps the position of every value and reads YAML and JSON alike (JSON is YAML's flow style; a file that
starts with ``{`` is also checked as strict JSON, so a JSON syntax error is reported at its position).
Must not import the CLI, agent.lint, the bundle, install or deploy modules: ``cdsim validate`` checks these
appspecs, and nothing in cdsim deploys them (agent.appspec refuses them with ``UnsupportedPlatform``).

Keys are matched without regard to case: the service's documentation writes them both ways (``Resources``,
``TargetService``, ``Properties`` in its examples; ``resources``, ``type``, ``currentversion`` in the
Lambda reference). ``schema(platform)`` is the JSON Schema of each, built from the same tables.
"""
from __future__ import annotations

import difflib
import re

from agent import appspec as A
from agent.errors import AppSpecError
from agent.records import field
from agent.records import record as dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import TypeAlias

    JsonSchema: TypeAlias = "dict[str, object]"

ECS = "ecs"
LAMBDA = "lambda"
PLATFORMS = (ECS, LAMBDA)
RESOURCE_TYPES = A.PLATFORM_RESOURCE_TYPES
PLATFORM_NAMES = {ECS: "Amazon ECS", LAMBDA: "AWS Lambda", None: "Amazon ECS or AWS Lambda"}
HOOK_EVENTS = A.PLATFORM_HOOK_EVENTS
SERVER_EVENTS = ("ApplicationStop", "BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStart",
                 "ValidateService", "DownloadBundle", "Install")
TOP_KEYS = ("version", "Resources", "Hooks")
RESOURCE_KEYS = ("Type", "Properties")
LAMBDA_KEYS = ("Name", "Alias", "CurrentVersion", "TargetVersion")
ECS_KEYS = ("TaskDefinition", "LoadBalancerInfo", "PlatformVersion", "NetworkConfiguration",
            "CapacityProviderStrategy")
ECS_REQUIRED = ("TaskDefinition", "LoadBalancerInfo")
LB_KEYS = ("ContainerName", "ContainerPort")
NETWORK_KEYS = ("AwsvpcConfiguration",)
AWSVPC_KEYS = ("Subnets", "SecurityGroups", "AssignPublicIp")   # all or none (the service's note)
CAPACITY_KEYS = ("CapacityProvider", "Base", "Weight")
ASSIGN_PUBLIC_IP = ("ENABLED", "DISABLED")
# Amazon ECS's own limits (API reference: AwsVpcConfiguration, CapacityProviderStrategyItem)
MAX_SUBNETS = 16
MAX_SECURITY_GROUPS = 5
MAX_CAPACITY_PROVIDERS = 6
MAX_BASE = 100_000
MAX_WEIGHT = 1_000
TASK_DEFINITION_ARN = re.compile(r"arn:aws[a-z-]*:ecs:[a-z0-9-]+:[0-9]{12}:task-definition/[A-Za-z0-9_-]{1,255}"
                                 r":[0-9]+\Z")
TASK_DEFINITION_PLACEHOLDER = "<TASK_DEFINITION>"   # CodePipeline's ECS blue/green action fills it in


# The codes of the problems found here, each with what it means (for rule tables: SARIF, docs). Problems of
# YAML itself keep agent.appspec's codes (yaml-syntax, yaml-disallowed-class, ...).
CODES = {
    "missing-property": "a required key is missing (version, Resources, Type, Properties, a required property)",
    "unknown-key": "a key the ECS or Lambda AppSpec does not have (an error when it is a misspelt required key)",
    "duplicate-key": "a key given twice in one mapping (keys match in any case)",
    "wrong-type": "a value of the wrong type (a string ContainerPort, a mapping where a list goes, ...)",
    "invalid-value": "a value out of the documented set or range (Type, AssignPublicIp, ports, limits)",
    "invalid-version": "version is not 0.0",
    "same-version": "a Lambda TargetVersion equal to CurrentVersion: no traffic to shift",
    "unknown-lifecycle-event": "a hook on an event the platform does not have",
    "hook-duplicate": "two hooks on one event",
    "task-definition-not-arn": "a TaskDefinition that is not a task definition ARN",
    "json-syntax": "a JSON appspec that is not JSON",
    "yaml-alias": "a YAML alias (write the value out)",
}

# ---------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Problem:
    """One problem: severity 'error' (the service refuses the appspec) or 'warning'."""

    severity: str
    code: str
    message: str
    mark: A.Mark | None = None
    hint: str | None = None


@dataclass(frozen=True)
class AwsvpcConfiguration:
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: str


@dataclass(frozen=True)
class CapacityProviderItem:
    capacity_provider: str
    base: int = 0
    weight: int = 0


@dataclass(frozen=True)
class EcsService:
    resource: str                  # the resource's name in the appspec (TargetService)
    task_definition: str
    container_name: str
    container_port: int
    platform_version: str | None = None
    network: AwsvpcConfiguration | None = None
    capacity_provider_strategy: tuple[CapacityProviderItem, ...] = ()


@dataclass(frozen=True)
class LambdaFunction:
    resource: str                  # the resource's name in the appspec
    name: str
    alias: str
    current_version: int
    target_version: int


@dataclass(frozen=True)
class PlatformHook:
    event: str
    function: str                  # the Lambda function CodeDeploy invokes
    mark: A.Mark | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PlatformAppSpec:
    platform: str                  # ECS | LAMBDA
    resource: EcsService | LambdaFunction
    hooks: tuple[PlatformHook, ...] = ()
    filename: str = "appspec.yaml"


# ---------------------------------------------------------------------------------------------------
# Which platform


_key_text = A.key_text
detect_platform = A.detect_platform


# ---------------------------------------------------------------------------------------------------
# The checks


def _kind(node: A.Node) -> str:
    if node.id == "mapping":
        return "a mapping"
    if node.id == "sequence":
        return "a list"
    if node.id == "alias":
        return "an alias"
    try:
        v = A.scalar_value(node)
    except AppSpecError:
        return "a value"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"the number {v}"
    return f"the string {v!r}"


_REFUSED = object()


class _Checker:
    def __init__(self, filename: str, platform: str | None):
        self.filename = filename
        self.platform = platform
        self.problems: list[Problem] = []

    def add(self, severity: str, code: str, message: str, node: A.Node | A.Mark | None,
            hint: str | None = None) -> None:
        mark = node if isinstance(node, A.Mark) or node is None else A.node_mark(node)
        self.problems.append(Problem(severity, code, message, mark, hint))

    def value(self, node: A.Node) -> object:
        """A scalar's value (a collection node stays itself), or, after a problem, _REFUSED for a value
        YAML refuses (an alias, a date)."""
        if node.id == "alias":
            self.add("error", "yaml-alias", f"alias *{node.anchor}: write the value out in full", node)
            return _REFUSED
        if node.id != "scalar":
            return node
        try:
            return A.scalar_value(node, self.filename)
        except AppSpecError as e:
            self.add("error", e.code or "yaml-invalid", e.message, node, e.hint)
            return _REFUSED

    def fields(self, node: A.Node, where: str, known: tuple[str, ...], required: tuple[str, ...],
               owner: A.Node | A.Mark) -> dict[str, tuple[A.Node, A.Node]] | None:
        """A mapping's entries by canonical key: (key node, value node). Reports a value that is not a
        mapping, duplicate keys, unknown keys (with "did you mean") and missing required keys; a
        misspelt required key is one error at the misspelling, not also a missing key."""
        if node.id != "mapping":
            self.add("error", "wrong-type", f"{where} must be a mapping, not {_kind(node)}", node)
            return None
        lower = {k.lower(): k for k in known}
        out: dict[str, tuple[A.Node, A.Node]] = {}
        unknown: list[tuple[A.Node, str]] = []
        for k, v in node.value:
            text = _key_text(k)
            if text is None:
                self.add("error", "wrong-type", f"a key of {where} must be a string, not {_kind(k)}", k)
                continue
            canon = lower.get(text.lower())
            if canon is None:
                unknown.append((k, text))
            elif canon in out:
                self.add("warning", "duplicate-key", f"{canon} appears again in {where} (first on line "
                         f"{A.node_mark(out[canon][0]).line}); YAML keeps only one of them", k)
            else:
                out[canon] = (k, v)
        missing = [r for r in required if r not in out]
        for k, text in unknown:
            close = difflib.get_close_matches(text.lower(), list(lower), n=1, cutoff=0.6)
            meant = lower[close[0]] if close else None
            if meant is not None and meant in missing:
                missing.remove(meant)
                self.add("error", "unknown-key", f"unknown key {text!r} in {where}, and its required key "
                         f"{meant} is missing", k, hint=f"did you mean {meant}?")
                continue
            hint = f"did you mean {meant}?" if meant else f"the keys of {where} are: {', '.join(known)}"
            where_events = _event_platform(text)
            if where_events and where == "the appspec":
                hint = f"did you mean to put {text} under Hooks?"
            self.add("warning", "unknown-key", f"unknown key {text!r} in {where}: it is not part of the "
                     f"{PLATFORM_NAMES[self.platform]} AppSpec", k, hint)
        for r in missing:
            self.add("error", "missing-property", f"{where} has no {r} (required)", owner,
                     hint=f"add {r}: to {where}")
        return out

    # -- scalars
    def string(self, entry: tuple[A.Node, A.Node] | None, what: str) -> str | None:
        if entry is None:
            return None
        node = entry[1]
        v = self.value(node)
        if v is _REFUSED:
            return None
        if node.id != "scalar" or not isinstance(v, str):
            hint = f"quote it: {what}: \"{node.value}\"" if node.id == "scalar" and v is not None else None
            self.add("error", "wrong-type", f"{what} must be a string, not {_kind(node)}", node, hint)
            return None
        if not v.strip():
            self.add("error", "invalid-value", f"{what} is empty", node)
            return None
        return v

    def integer(self, entry: tuple[A.Node, A.Node] | None, what: str, low: int, high: int,
                strings: bool = False) -> int | None:
        """An integer in [low, high]; ``strings``: also a string of digits (Lambda versions)."""
        if entry is None:
            return None
        node = entry[1]
        v = self.value(node)
        if v is _REFUSED:
            return None
        if strings and isinstance(v, str) and v.strip().isdigit() and v.strip().isascii():
            v = int(v.strip())
        if node.id != "scalar" or isinstance(v, bool) or not isinstance(v, int):
            hint = None
            if isinstance(v, str) and v.strip().isdigit():
                hint = f"write {what}: {v.strip()} without quotes (a number, not a string)"
            self.add("error", "wrong-type", f"{what} must be {'a positive integer' if strings else 'an integer'},"
                     f" not {_kind(node)}", node, hint)
            return None
        if not low <= v <= high:
            self.add("error", "invalid-value", f"{what} {v} is out of range ({low} to {high})", node)
            return None
        return v

    def strings(self, entry: tuple[A.Node, A.Node] | None, what: str, limit: int) -> tuple[str, ...]:
        if entry is None:
            return ()
        node = entry[1]
        if node.id != "sequence":
            hint = None
            if node.id == "scalar" and "," in str(self.value(node)):
                hint = f"write a list: {what}: [{', '.join(repr(s.strip()) for s in str(self.value(node)).split(','))}]"
            self.add("error", "wrong-type", f"{what} must be a list of strings, not {_kind(node)}", node, hint)
            return ()
        if not node.value:
            self.add("error", "invalid-value", f"{what} is empty: give at least one", node)
            return ()
        if len(node.value) > limit:
            self.add("error", "invalid-value", f"{what} has {len(node.value)} entries; Amazon ECS allows at "
                     f"most {limit}", node.value[limit])
        out = []
        for item in node.value:
            s = self.string((item, item), f"an entry of {what}")
            if s is not None:
                out.append(s)
        return tuple(out)

    # -- the document
    def check(self, root: A.Node) -> PlatformAppSpec | None:
        top = self.fields(root, "the appspec", TOP_KEYS, ("version", "Resources"), root)
        if top is None:
            return None
        self.version(top.get("version"))
        resource = self.resources(top["Resources"]) if "Resources" in top else None
        hooks = self.hooks(top["Hooks"]) if "Hooks" in top else ()
        if resource is None or self.platform is None or any(p.severity == "error" for p in self.problems):
            return None
        return PlatformAppSpec(self.platform, resource, hooks, self.filename)

    def version(self, entry: tuple[A.Node, A.Node] | None) -> None:
        if entry is None:
            return
        v = self.value(entry[1])
        if v is _REFUSED:
            return
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0) or v == "0.0"
        if not ok:
            self.add("error", "invalid-version", f"version must be 0.0, not {_kind(entry[1])}", entry[1],
                     hint="write version: 0.0 (the only version CodeDeploy knows)")

    def resources(self, entry: tuple[A.Node, A.Node]) -> EcsService | LambdaFunction | None:
        knode, node = entry
        if node.id == "mapping":
            self.add("error", "wrong-type", "Resources must be a list with one entry, not a mapping", node,
                     hint="start the resource's line with '- ', as in: - TargetService:")
            return None
        if node.id != "sequence" or not node.value:
            self.add("error", "wrong-type" if node.id != "sequence" else "invalid-value",
                     f"Resources must be a list with one {self._target()}, not {_kind(node)}"
                     if node.id != "sequence" else f"Resources is empty: give the {self._target()} to deploy",
                     node if node.id != "sequence" else knode)
            return None
        if len(node.value) > 1:
            self.add("error", "invalid-value", f"Resources has {len(node.value)} entries: a deployment updates "
                     f"one {self._target()}", node.value[1], hint="one deployment (and appspec) per target")
        item = node.value[0]
        if item.id != "mapping" or len(item.value) != 1:
            what = _kind(item) if item.id != "mapping" else f"a mapping of {len(item.value)} keys"
            self.add("error", "wrong-type", f"an entry of Resources must be one name (e.g. TargetService) "
                     f"with its Type and Properties, not {what}", item,
                     hint="indent Type: and Properties: under the resource's name")
            return None
        name_node, body = item.value[0]
        name = _key_text(name_node) or ""
        fields = self.fields(body, f"resource {name}", RESOURCE_KEYS, RESOURCE_KEYS, name_node)
        if fields is None:
            return None
        self.resource_type(fields.get("Type"))
        if "Properties" not in fields or self.platform is None:
            return None
        pname, pnode = fields["Properties"]
        if self.platform == LAMBDA:
            return self.lambda_function(name, pnode, pname)
        return self.ecs_service(name, pnode, pname)

    def _target(self) -> str:
        return {ECS: "Amazon ECS service", LAMBDA: "Lambda function"}.get(self.platform or "",
                                                                          "ECS service or Lambda function")

    def resource_type(self, entry: tuple[A.Node, A.Node] | None) -> None:
        if entry is None:
            return
        node = entry[1]
        v = self.value(node)
        types = list(RESOURCE_TYPES.values())
        if isinstance(v, str) and v in types:
            return
        if v is _REFUSED:
            return
        hint = f"Type is {' or '.join(types)}"
        if isinstance(v, str):
            close = difflib.get_close_matches(v.lower(), [t.lower() for t in types], n=1, cutoff=0.6)
            if close:
                hint = f"did you mean {types[[t.lower() for t in types].index(close[0])]}?"
        what = repr(v) if isinstance(v, str) else f"must be a string, not {_kind(node)}: it"
        self.add("error", "invalid-value", f"Type {what} is not a resource type CodeDeploy deploys", node, hint)

    def lambda_function(self, name: str, node: A.Node, owner: A.Node) -> LambdaFunction | None:
        f = self.fields(node, "Properties", LAMBDA_KEYS, LAMBDA_KEYS, owner)
        if f is None:
            return None
        fname = self.string(f.get("Name"), "Name")
        alias = self.string(f.get("Alias"), "Alias")
        current = self.integer(f.get("CurrentVersion"), "CurrentVersion", 1, 2**63, strings=True)
        target = self.integer(f.get("TargetVersion"), "TargetVersion", 1, 2**63, strings=True)
        if current is not None and target is not None and current == target:
            self.add("error", "same-version", f"CurrentVersion and TargetVersion are both {current}: there is "
                     "no traffic to shift", f["TargetVersion"][1],
                     hint="TargetVersion is the version to shift traffic to (publish a new version first)")
            return None
        if None in (fname, alias, current, target):
            return None
        assert fname is not None and alias is not None and current is not None and target is not None
        return LambdaFunction(name, fname, alias, current, target)

    def ecs_service(self, name: str, node: A.Node, owner: A.Node) -> EcsService | None:
        f = self.fields(node, "Properties", ECS_KEYS, ECS_REQUIRED, owner)
        if f is None:
            return None
        task = self.string(f.get("TaskDefinition"), "TaskDefinition")
        if task is not None and task != TASK_DEFINITION_PLACEHOLDER and not TASK_DEFINITION_ARN.match(task):
            self.add("warning", "task-definition-not-arn", f"TaskDefinition {task!r} is not a task definition "
                     "ARN", f["TaskDefinition"][1], hint="arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:"
                     "REVISION (or <TASK_DEFINITION> for CodePipeline to fill in)")
        container_name = container_port = None
        if "LoadBalancerInfo" in f:
            lk, lv = f["LoadBalancerInfo"]
            lb = self.fields(lv, "LoadBalancerInfo", LB_KEYS, LB_KEYS, lk)
            if lb is not None:
                container_name = self.string(lb.get("ContainerName"), "ContainerName")
                container_port = self.integer(lb.get("ContainerPort"), "ContainerPort", 1, 65535)
        version = self.string(f.get("PlatformVersion"), "PlatformVersion")
        network = self.network(f["NetworkConfiguration"]) if "NetworkConfiguration" in f else None
        strategy = self.capacity(f["CapacityProviderStrategy"][1]) if "CapacityProviderStrategy" in f else ()
        if task is None or container_name is None or container_port is None:
            return None
        return EcsService(name, task, container_name, container_port, version, network, strategy)

    def network(self, entry: tuple[A.Node, A.Node]) -> AwsvpcConfiguration | None:
        nf = self.fields(entry[1], "NetworkConfiguration", NETWORK_KEYS, NETWORK_KEYS, entry[0])
        if nf is None or "AwsvpcConfiguration" not in nf:
            return None
        ak, av = nf["AwsvpcConfiguration"]
        a = self.fields(av, "AwsvpcConfiguration", AWSVPC_KEYS, AWSVPC_KEYS, ak)
        if a is None:
            return None
        subnets = self.strings(a.get("Subnets"), "Subnets", MAX_SUBNETS)
        groups = self.strings(a.get("SecurityGroups"), "SecurityGroups", MAX_SECURITY_GROUPS)
        ip = None
        if "AssignPublicIp" in a:
            node = a["AssignPublicIp"][1]
            v = self.value(node)
            if isinstance(v, str) and v in ASSIGN_PUBLIC_IP:
                ip = v
            elif v is not _REFUSED:
                hint = "AssignPublicIp is ENABLED or DISABLED"
                if isinstance(v, str) and v.upper() in ASSIGN_PUBLIC_IP:
                    hint = f"did you mean {v.upper()}? (upper case)"
                elif isinstance(v, bool) and node.id == "scalar":
                    hint = f"did you mean {'ENABLED' if v else 'DISABLED'}? (YAML reads {node.value} as a boolean)"
                self.add("error", "invalid-value", f"AssignPublicIp must be ENABLED or DISABLED, not {_kind(node)}",
                         node, hint)
        if not subnets or not groups or ip is None:
            return None
        return AwsvpcConfiguration(subnets, groups, ip)

    def capacity(self, node: A.Node) -> tuple[CapacityProviderItem, ...]:
        if node.id != "sequence":
            self.add("error", "wrong-type", f"CapacityProviderStrategy must be a list, not {_kind(node)}", node)
            return ()
        if len(node.value) > MAX_CAPACITY_PROVIDERS:
            self.add("error", "invalid-value", f"CapacityProviderStrategy has {len(node.value)} entries; Amazon "
                     f"ECS allows at most {MAX_CAPACITY_PROVIDERS}", node.value[MAX_CAPACITY_PROVIDERS])
        out: list[CapacityProviderItem] = []
        with_base: list[A.Node] = []
        for item in node.value:
            f = self.fields(item, "a CapacityProviderStrategy entry", CAPACITY_KEYS, ("CapacityProvider",), item)
            if f is None:
                continue
            provider = self.string(f.get("CapacityProvider"), "CapacityProvider")
            base = self.integer(f.get("Base"), "Base", 0, MAX_BASE)
            weight = self.integer(f.get("Weight"), "Weight", 0, MAX_WEIGHT)
            if base:
                with_base.append(f["Base"][1])
            if provider is not None:
                out.append(CapacityProviderItem(provider, base or 0, weight or 0))
        if len(with_base) > 1:
            self.add("error", "invalid-value", "more than one capacity provider has a Base: Amazon ECS allows a "
                     f"Base on one only (first on line {A.node_mark(with_base[0]).line})", with_base[1])
        return tuple(out)

    def hooks(self, entry: tuple[A.Node, A.Node]) -> tuple[PlatformHook, ...]:
        node = entry[1]
        if node.id == "scalar" and self.value(node) is None:
            return ()
        if node.id != "sequence":
            hint = None
            if node.id == "mapping" and node.value:
                first = _key_text(node.value[0][0]) or "BeforeAllowTraffic"
                hint = f"start each hook's line with '- ', as in: - {first}: FunctionName"
            self.add("error", "wrong-type", f"Hooks must be a list of EventName: FunctionName entries, not "
                     f"{_kind(node)}", node, hint)
            return ()
        events = HOOK_EVENTS.get(self.platform or "", tuple(dict.fromkeys(HOOK_EVENTS[ECS] + HOOK_EVENTS[LAMBDA])))
        seen: dict[str, A.Node] = {}
        out: list[PlatformHook] = []
        for item in node.value:
            if item.id != "mapping" or len(item.value) != 1:
                what = _kind(item) if item.id != "mapping" else f"a mapping of {len(item.value)} keys"
                self.add("error", "wrong-type", f"a Hooks entry must be one EventName: FunctionName, not {what}",
                         item, hint="one event per list entry, each starting with '- '")
                continue
            k, v = item.value[0]
            event = _key_text(k)
            if event is None:
                self.add("error", "wrong-type", f"a lifecycle event name must be a string, not {_kind(k)}", k)
                continue
            if event not in events:
                self.add("error", "unknown-lifecycle-event", f"{event} is not a lifecycle event of "
                         f"{PLATFORM_NAMES[self.platform]} deployments (they are: {', '.join(events)})", k,
                         hint=self._event_hint(event, events))
                continue
            if event in seen:
                self.add("error", "hook-duplicate", f"{event} has a hook already (line "
                         f"{A.node_mark(seen[event]).line}): each event runs one Lambda function", k)
                continue
            seen[event] = k
            function = self.string((k, v), f"the hook of {event}")
            if function is not None:
                out.append(PlatformHook(event, function, A.node_mark(k)))
        return tuple(out)

    def _event_hint(self, event: str, events: tuple[str, ...]) -> str | None:
        lower = {e.lower(): e for e in events}
        close = difflib.get_close_matches(event.lower(), list(lower), n=1, cutoff=0.6)
        if close:
            return f"did you mean {lower[close[0]]}?"
        other = _event_platform(event)
        if other:
            return f"{event} is an event of {other} deployments"
        return None


def _event_platform(event: str) -> str | None:
    """Which platform's deployments have the event (for hints), or None."""
    if event in SERVER_EVENTS:
        return "EC2/On-Premises"
    if event in HOOK_EVENTS[ECS]:
        return PLATFORM_NAMES[ECS]
    return None


# YAML that does not compose: its top-level keys, read as text (a Resources key and no os key)
_LOOKS_ECS_OR_LAMBDA = re.compile(r"""^["']?resources["']?[ \t]*:""", re.MULTILINE | re.IGNORECASE)


def _is_json(text: str) -> bool:
    return text.lstrip("\ufeff \t\r\n").startswith("{")


def _json_problem(text: str) -> Problem | None:
    """A file that starts with '{' is JSON: its syntax error, at its position, or None."""
    import json

    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return Problem("error", "json-syntax", f"not valid JSON: {e.msg}", A.Mark(e.lineno, e.colno))
    except RecursionError:
        return None   # the composer reports the nesting
    return None


def check(root: A.Node, filename: str = "appspec.yaml", platform: str | None = None
          ) -> tuple[PlatformAppSpec | None, list[Problem]]:
    """(the appspec, when it has no error; every problem) of a composed ECS or Lambda appspec.
    ``platform``: ECS or LAMBDA, or None to detect it (detect_platform)."""
    if platform is None:
        platform = detect_platform(root) or None
    checker = _Checker(filename, platform)
    spec = checker.check(root)
    return spec, checker.problems


def platform_problems(data: str | bytes, filename: str = "appspec.yaml"
                      ) -> tuple[str | None, PlatformAppSpec | None, list[Problem]]:
    """(platform: ECS, LAMBDA, '' or None for an EC2 appspec; the appspec; its problems) of an appspec
    file's bytes. A JSON file (it starts with '{') that is not JSON is '' with its JSON error; YAML that
    does not compose is None (the EC2 reading reports it, as for any appspec)."""
    if A.has_top_level_os(data):
        return None, None, []   # an os: key at the top: EC2/On-Premises (the common case, without composing)
    root: A.Node | None = None
    syntax: AppSpecError | None = None
    try:
        root = A.compose_appspec(data, filename)
    except AppSpecError as e:
        syntax = e
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if syntax is not None and _is_json(text) and _json_problem(text) is None and "\t" in text:
        # valid JSON that YAML refused: tabs, which PyYAML's pure-Python reader (without libyaml) takes
        # for indentation. Outside its strings (JSON strings hold no raw tab) a tab is blank: one space
        # for one tab keeps every line and column.
        try:
            root, syntax = A.compose_appspec(text.replace("\t", " "), filename), None
        except AppSpecError:
            pass
    platform = detect_platform(root)
    if (platform is not None or syntax is not None) and _is_json(text):
        problem = _json_problem(text)   # JSON's own error before YAML's reading of it
        if problem is not None:
            return platform if platform is not None else "", None, [problem]
    if syntax is not None:
        if _LOOKS_ECS_OR_LAMBDA.search(text):
            mark = A.Mark(syntax.line, syntax.column or 1) if syntax.line is not None else None
            return "", None, [Problem("error", syntax.code or "yaml-syntax", syntax.message, mark, syntax.hint)]
        return None, None, []   # the EC2 reading reports the YAML error
    if platform is None or root is None:
        return None, None, []
    spec, problems = check(root, filename, platform or None)
    return platform, spec, problems


def parse_platform_appspec(data: str | bytes, filename: str = "appspec.yaml") -> PlatformAppSpec:
    """The ECS or Lambda appspec; raises AppSpecError with its first error (ValueError: not one of those)."""
    platform, spec, problems = platform_problems(data, filename)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        p = errors[0]
        raise AppSpecError(p.message, code=p.code, hint=p.hint, file=filename,
                           line=p.mark.line if p.mark else None, column=p.mark.column if p.mark else None)
    if platform is None or spec is None:
        raise ValueError(f"{filename} is not an Amazon ECS or AWS Lambda appspec")
    return spec


# ---------------------------------------------------------------------------------------------------
# JSON Schema, for editors (cdsim schema --platform ecs|lambda)


def _obj(props: dict[str, JsonSchema], required: tuple[str, ...] = (), description: str | None = None
         ) -> JsonSchema:
    out: JsonSchema = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def _str(description: str) -> JsonSchema:
    return {"type": "string", "minLength": 1, "description": description}


def schema(platform: str) -> JsonSchema:
    """The JSON Schema (draft 2020-12) of the ECS or Lambda appspec, keys as the examples write them.
    ``cdsim validate`` remains the authority (it also accepts the lower-case keys the reference uses)."""
    if platform == LAMBDA:
        props = _obj({
            "Name": _str("the name of the Lambda function to deploy"),
            "Alias": _str("the alias whose traffic shifts"),
            "CurrentVersion": {"type": ["string", "integer"], "pattern": "^[1-9][0-9]*$", "minimum": 1,
                               "description": "the version the alias points to now (a positive integer)"},
            "TargetVersion": {"type": ["string", "integer"], "pattern": "^[1-9][0-9]*$", "minimum": 1,
                              "description": "the version to shift traffic to (differs from CurrentVersion)"},
        }, LAMBDA_KEYS)
    elif platform == ECS:
        strings = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
        props = _obj({
            "TaskDefinition": _str("the task definition's ARN"),
            "LoadBalancerInfo": _obj({
                "ContainerName": _str("the container that receives traffic"),
                "ContainerPort": {"type": "integer", "minimum": 1, "maximum": 65535,
                                  "description": "its port (a number)"},
            }, LB_KEYS),
            "PlatformVersion": _str("the Fargate platform version (default LATEST)"),
            "NetworkConfiguration": _obj({"AwsvpcConfiguration": _obj({
                "Subnets": {**strings, "maxItems": MAX_SUBNETS},
                "SecurityGroups": {**strings, "maxItems": MAX_SECURITY_GROUPS},
                "AssignPublicIp": {"enum": list(ASSIGN_PUBLIC_IP)},
            }, AWSVPC_KEYS, "all three or none")}, NETWORK_KEYS),
            "CapacityProviderStrategy": {"type": "array", "maxItems": MAX_CAPACITY_PROVIDERS, "items": _obj({
                "CapacityProvider": _str("e.g. FARGATE, FARGATE_SPOT"),
                "Base": {"type": "integer", "minimum": 0, "maximum": MAX_BASE},
                "Weight": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT},
            }, ("CapacityProvider",))},
        }, ECS_REQUIRED)
    else:
        raise ValueError(f"no schema for platform {platform!r}")
    resource = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": _obj({
        "Type": {"const": RESOURCE_TYPES[platform]}, "Properties": props}, RESOURCE_KEYS)}
    hook = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
            "properties": {e: _str("the Lambda function CodeDeploy invokes") for e in HOOK_EVENTS[platform]}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://cdsim.invalid/appspec-{platform}.schema.json",
        "title": f"AppSpec file of {PLATFORM_NAMES[platform]} deployments (CodeDeploy)",
        **_obj({
            "version": {"enum": [0.0, "0.0"]},
            "Resources": {"type": "array", "minItems": 1, "maxItems": 1, "items": resource},
            "Hooks": {"type": ["array", "null"], "items": hook},
        }, ("version", "Resources")),
    }
