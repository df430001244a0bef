"""The CodeDeploy operations (service version 2014-10-06) over the store, with AWS-shaped errors.

``Api.dispatch(operation, body)`` returns the response document or raises ``ApiError`` (its
``__type``, message and HTTP status). Every operation of botocore's CodeDeploy model has a handler;
a body is first checked against the model (``agent.service.model``), then by the handler. Operations
only blue/green, ECS or Lambda deployments have check their input and answer
``UnsupportedActionForDeploymentTypeException`` for an in-place deployment, as CodeDeploy does;
ContinueDeployment and SkipWaitTimeForInstanceTermination act on EC2 blue/green deployments
(``agent.service.bluegreen``: the checks of groups, deployments and these two). Tags are
kept per resource ARN (application, deployment group, deployment configuration). Also the two operations
cdsim's agents use (``AGENT_PREFIX``.PollCommand / ReportCommand). Must not import the server or the
agent side.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from agent.service import bluegreen, model, revisions
from agent.service.engine import ACTIVE, BUILTIN_CONFIGS, DONE, Engine, launch_hook, public, selection_of, tag_matches
from agent.service.revisions import RevisionError
from agent.service.shapes import JsonObject
from agent.service.store import Store

TARGET_PREFIX = "CodeDeploy_20141006"
AGENT_PREFIX = "CdsimAgent_20261127"
FILE_EXISTS = ("DISALLOW", "OVERWRITE", "RETAIN")
_DEPLOYMENT_ID = re.compile(r"^d-[A-Z0-9]{9}$")
BUILTIN_PREFIX = "CodeDeployDefault."
MAX_TAGS = 50                        # per resource: AWS's usual tagging limit
_ARN = re.compile(r"arn:aws[a-z-]*:(?P<service>[a-z0-9-]+):(?P<region>[a-z0-9-]*):(?P<account>[0-9]*):"
                  r"(?P<resource>.+)")


class ApiError(Exception):
    """An error response: ``{"__type": kind, "message": message}`` with ``status``."""

    def __init__(self, kind: str, message: str, status: int = 400):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status

    def body(self) -> JsonObject:
        return {"__type": self.kind, "message": self.message}


def _str(body: JsonObject, field: str) -> str | None:
    """A string field; None when it is missing or empty."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError("SerializationException", f"{field}: expected a string, got {type(value).__name__}")
    return value


def _required(body: JsonObject, field: str, exception: str, what: str) -> str:
    """A string field that must be given: ``exception`` (``what`` must be specified) when it is missing or empty."""
    value = _str(body, field)
    if value is None:
        raise ApiError(exception, f"{what} must be specified")
    return value


def _list(body: JsonObject, field: str) -> list[Any]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError("SerializationException", f"{field}: expected a list")
    return value


def _dict(body: JsonObject, field: str) -> JsonObject | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError("SerializationException", f"{field}: expected a structure")
    return value


def _tags(tags: list[Any]) -> list[JsonObject]:
    out = []
    for t in tags:
        if not isinstance(t, dict):
            raise ApiError("InvalidTagException", "A tag must be a structure with Key and Value")
        out.append({"Key": t.get("Key"), "Value": t.get("Value")})
    return out


def _filters(filters: list[Any], kind: str) -> list[JsonObject]:
    for f in filters:
        if not isinstance(f, dict) or f.get("Type") not in (None, "KEY_ONLY", "VALUE_ONLY", "KEY_AND_VALUE"):
            raise ApiError(kind, f"Invalid tag filter: {json.dumps(f)}")
    return filters


def revision_key(rev: JsonObject) -> str:
    return json.dumps(rev, sort_keys=True)


def check_revision(rev: object) -> JsonObject:
    """A RevisionLocation as stored: S3 (bucket, key, bundleType) or GitHub (repository, commitId).

    Every field that later reaches a command line or a path is checked here (``agent.service.revisions``);
    whether a GitHub repository is under a configured root is checked at CreateDeployment."""
    if not isinstance(rev, dict) or not rev:
        raise ApiError("RevisionRequiredException", "Revision must be specified")
    kind = rev.get("revisionType")
    try:
        if kind == "S3":
            s3 = rev.get("s3Location")
            if not isinstance(s3, dict) or not s3.get("bucket") or not s3.get("key"):
                raise ApiError("InvalidRevisionException", "S3 revisions must specify a bucket and a key")
            revisions.check_bucket(s3["bucket"])
            revisions.check_key(s3["key"])
            bundle = s3.get("bundleType")
            if bundle is None:
                key = s3["key"].lower()
                bundle = next((b for b in ("tgz", "tar", "zip") if key.endswith("." + b) or
                               (b == "tgz" and key.endswith(".tar.gz"))), None)
            revisions.check_bundle_type(bundle)
            for field in ("version", "eTag"):
                if s3.get(field) is not None and (not isinstance(s3[field], str) or len(s3[field]) > 1024):
                    raise ApiError("InvalidRevisionException", f"The S3 {field} must be a string")
            loc = {k: s3[k] for k in ("bucket", "key", "version", "eTag") if s3.get(k)}
            return {"revisionType": "S3", "s3Location": dict(loc, bundleType=bundle)}
        if kind == "GitHub":
            gh = rev.get("gitHubLocation")
            if not isinstance(gh, dict) or not gh.get("repository") or not gh.get("commitId"):
                raise ApiError("InvalidRevisionException",
                               "GitHub revisions must specify a repository and a commitId")
            return {"revisionType": "GitHub", "gitHubLocation": {
                "repository": revisions.check_repository_name(gh["repository"]),
                "commitId": revisions.check_commit(gh["commitId"])}}
    except RevisionError as e:
        raise ApiError("InvalidRevisionException", str(e)) from None
    raise ApiError("InvalidRevisionException",
                   f"Unsupported revision type {kind!r} for the Server compute platform (S3 or GitHub)")


def _config_name(body: JsonObject) -> str:
    return _required(body, "deploymentConfigName", "DeploymentConfigNameRequiredException", "Deployment config name")


def _no_config(name: str) -> ApiError:
    return ApiError("DeploymentConfigDoesNotExistException", f"No deployment configuration found for name: {name}")


class Api:
    def __init__(self, store: Store, engine: Engine, github_roots: list[str] | tuple[str, ...] = ()):
        self.store = store
        self.engine = engine
        self.github_roots = list(github_roots)
        model.operations()   # read botocore's model now, not in the first request

    def _deployable(self, rev: JsonObject) -> JsonObject:
        """A GitHub revision's repository must be a folder under a configured GitHub root."""
        if rev.get("revisionType") == "GitHub":
            try:
                revisions.github_repository(rev["gitHubLocation"]["repository"], self.github_roots)
            except RevisionError as e:
                raise ApiError("InvalidRevisionException", str(e)) from None
        return rev

    def dispatch(self, operation: str, body: JsonObject) -> JsonObject:
        if operation not in model.operations():
            raise ApiError("UnknownOperationException", f"Unknown operation {operation}")
        problem = model.check_input(operation, body)
        if problem is not None:
            raise ApiError(*problem)
        token = body.get("nextToken") or body.get("NextToken")
        if token and "InvalidNextTokenException" in model.errors_of(operation):
            # every list answers in one page, so no token was ever handed out
            raise ApiError("InvalidNextTokenException", "The next token was specified in an invalid format")
        handler: Callable[[JsonObject], JsonObject] | None = getattr(self, "op_" + operation, None)
        if handler is None:   # an operation of a newer botocore model than this server knows
            raise ApiError("UnknownOperationException", f"cdsim does not implement {operation} yet")
        return handler(body)

    # -- ARNs and tags --------------------------------------------------------------------------
    def arn(self, kind: str, name: str) -> str:
        """The ARN of an application, a deploymentgroup (``app/group``) or a deploymentconfig."""
        return f"arn:aws:codedeploy:{self.engine.region}:{self.engine.account}:{kind}:{name}"

    def _resource(self, arn: str) -> str:
        """The stored resource an ARN names (its ARN, canonical), or the model's error for it."""
        m = _ARN.fullmatch(arn)
        if m is None:
            raise ApiError("InvalidArnException", f"The ARN {arn} is not valid")
        kind, _, name = m["resource"].partition(":")
        if m["service"] != "codedeploy" or kind not in ("application", "deploymentgroup", "deploymentconfig"):
            raise ApiError("ArnNotSupportedException",
                           f"The ARN {arn} is not supported: tags are kept on applications, deployment groups "
                           "and deployment configurations")
        ours = (m["region"], m["account"]) == (self.engine.region, self.engine.account)
        if kind == "application":
            if not ours or self.store.get("application", name) is None:
                raise ApiError("ApplicationDoesNotExistException", f"No application found for name: {name}")
        elif kind == "deploymentgroup":
            app, _, group = name.partition("/")
            if not ours or self.store.get("application", app) is None:
                raise ApiError("ApplicationDoesNotExistException", f"No application found for name: {app}")
            if not group or self.store.get("group", name) is None:
                raise ApiError("DeploymentGroupDoesNotExistException",
                               f"No Deployment Group found for name: {group}")
        elif not ours or name.startswith(BUILTIN_PREFIX) or self.store.get("config", name) is None:
            # built-in configurations are AWS's own resources: nobody's tags go on them
            raise _no_config(name)
        return self.arn(kind, name)

    def tags_of(self, arn: str) -> list[JsonObject]:
        doc = self.store.get("tags", arn)
        return list(doc["Tags"]) if doc else []

    def _set_tags(self, arn: str, tags: list[JsonObject]) -> None:
        if tags:
            self.store.put("tags", arn, {"Tags": tags})
        else:
            self.store.delete("tags", arn)

    def _add_tags(self, arn: str, new: list[JsonObject]) -> None:
        """Add or replace (by key) tags on a resource; of two new tags with one key, the later wins."""
        for t in new:
            key, value = t.get("Key"), t.get("Value", "")
            if not isinstance(key, str) or not key or len(key) > 128 or not isinstance(value, str) \
                    or len(value) > 256 or key.lower().startswith("aws:"):
                raise ApiError("InvalidTagsToAddException",
                               f"Invalid tag {json.dumps(t)}: a Key of 1 to 128 characters not starting with "
                               "aws:, a Value of up to 256")
        merged = {t["Key"]: t.get("Value", "") for t in self.tags_of(arn)}
        merged.update({t["Key"]: t.get("Value", "") for t in new})
        if len(merged) > MAX_TAGS:
            raise ApiError("InvalidTagsToAddException", f"A resource may have at most {MAX_TAGS} tags")
        self._set_tags(arn, [{"Key": k, "Value": v} for k, v in merged.items()])

    def op_TagResource(self, body: JsonObject) -> JsonObject:
        tags = _list(body, "Tags")
        if not tags:
            raise ApiError("TagRequiredException", "Tags must be specified")
        with self.store.transaction():
            self._add_tags(self._resource(body["ResourceArn"]), tags)
        return {}

    def op_UntagResource(self, body: JsonObject) -> JsonObject:
        keys = _list(body, "TagKeys")
        if not keys:
            raise ApiError("TagRequiredException", "Tag keys must be specified")
        with self.store.transaction():
            arn = self._resource(body["ResourceArn"])
            self._set_tags(arn, [t for t in self.tags_of(arn) if t["Key"] not in keys])
        return {}

    def op_ListTagsForResource(self, body: JsonObject) -> JsonObject:
        return {"Tags": self.tags_of(self._resource(body["ResourceArn"]))}

    # -- lookups --------------------------------------------------------------------------------
    def _app(self, body: JsonObject) -> JsonObject:
        name = _required(body, "applicationName", "ApplicationNameRequiredException", "Application name")
        app = self.store.get("application", name)
        if app is None:
            raise ApiError("ApplicationDoesNotExistException", f"No application found for name: {name}")
        return app

    def _group(self, body: JsonObject, field: str = "deploymentGroupName") -> JsonObject:
        app = self._app(body)
        name = _required(body, field, "DeploymentGroupNameRequiredException", "Deployment group name")
        group = self.store.get("group", f"{app['applicationName']}/{name}")
        if group is None:
            raise ApiError("DeploymentGroupDoesNotExistException", f"No Deployment Group found for name: {name}")
        return group

    def _deployment(self, body: JsonObject) -> JsonObject:
        did = _required(body, "deploymentId", "DeploymentIdRequiredException", "Deployment id")
        if not _DEPLOYMENT_ID.match(did):
            raise ApiError("InvalidDeploymentIdException", f"Specified DeploymentId is not in the valid format: {did}")
        doc = self.store.get("deployment", did)
        if doc is None:
            raise ApiError("DeploymentDoesNotExistException", f"The deployment {did} could not be found.")
        return doc

    def _deployment_info(self, doc: JsonObject) -> JsonObject:
        return dict(public(doc), deploymentOverview=self.engine.overview(doc["deploymentId"]))

    def _target(self, did: str, instance_id: str) -> JsonObject:
        """A deployment's target by its id (an EC2 instance id or an on-premises name) or ARN."""
        name = instance_id.rsplit("/", 1)[-1] if instance_id.startswith("arn:") else instance_id
        target = self.store.get("target", f"{did}/{name}") or next(
            (t for t in self.engine.targets(did) if t["targetId"] == name), None)
        if target is None:
            raise ApiError("InstanceDoesNotExistException",
                           f"The instance {instance_id} is not part of deployment {did}")
        return target

    def _register_revision(self, app: str, rev: JsonObject, description: str | None = None,
                           group: str | None = None) -> None:
        key = f"{app}/{revision_key(rev)}"
        now = time.time()
        doc = self.store.get("revision", key) or {"revision": rev, "registerTime": now, "deploymentGroups": []}
        if description is not None:
            doc["description"] = description
        if group:
            doc.setdefault("firstUsedTime", now)
            doc["lastUsedTime"] = now
            if group not in doc["deploymentGroups"]:
                doc["deploymentGroups"].append(group)
        self.store.put("revision", key, doc)

    # -- applications ---------------------------------------------------------------------------
    def op_CreateApplication(self, body: JsonObject) -> JsonObject:
        name = _required(body, "applicationName", "ApplicationNameRequiredException", "Application name")
        if len(name) > 100:
            raise ApiError("InvalidApplicationNameException", "The application name is too long")
        platform = _str(body, "computePlatform") or "Server"
        if platform != "Server":
            raise ApiError("InvalidComputePlatformException",
                           f"Only the Server compute platform is supported, not {platform}")
        with self.store.transaction():
            if self.store.get("application", name):
                raise ApiError("ApplicationAlreadyExistsException", f"Application {name} already exists")
            app = {"applicationId": str(uuid.uuid4()), "applicationName": name, "createTime": time.time(),
                   "linkedToGitHub": False, "computePlatform": "Server"}
            self.store.put("application", name, app)
            self._add_tags(self.arn("application", name), _list(body, "tags"))
        return {"applicationId": app["applicationId"]}

    def op_GetApplication(self, body: JsonObject) -> JsonObject:
        return {"application": self._app(body)}

    def op_BatchGetApplications(self, body: JsonObject) -> JsonObject:
        names = _list(body, "applicationNames")
        found = [self.store.get("application", n) for n in names]
        if any(a is None for a in found):
            raise ApiError("ApplicationDoesNotExistException",
                           "Applications not found: "
                           + ", ".join(n for n, a in zip(names, found, strict=True) if a is None))
        return {"applicationsInfo": found}

    def op_ListApplications(self, body: JsonObject) -> JsonObject:
        return {"applications": [k for k, _ in self.store.items("application")]}

    def op_DeleteApplication(self, body: JsonObject) -> JsonObject:
        name = _required(body, "applicationName", "ApplicationNameRequiredException", "Application name")
        with self.store.transaction():
            for kind in ("group", "revision"):
                for key, _ in self.store.items(kind, f"{name}/"):
                    self.store.delete(kind, key)
                    if kind == "group":
                        self.store.delete("tags", self.arn("deploymentgroup", key))
            self.store.delete("application", name)   # deleting a missing application succeeds, as AWS does
            self.store.delete("tags", self.arn("application", name))
        return {}

    def op_UpdateApplication(self, body: JsonObject) -> JsonObject:
        """Rename an application: its deployment groups, revisions, deployments and tags follow."""
        old = _required(body, "applicationName", "ApplicationNameRequiredException", "Application name")
        new = _str(body, "newApplicationName")
        with self.store.transaction():
            app = self._app(body)
            if new is None or new == old:
                return {}
            if self.store.get("application", new):
                raise ApiError("ApplicationAlreadyExistsException", f"Application {new} already exists")
            self.store.delete("application", old)
            self.store.put("application", new, dict(app, applicationName=new))
            self._move_tags(self.arn("application", old), self.arn("application", new))
            for key, group in self.store.items("group", f"{old}/"):
                self.store.delete("group", key)
                new_key = f"{new}/{group['deploymentGroupName']}"
                self.store.put("group", new_key, dict(group, applicationName=new))
                self._move_tags(self.arn("deploymentgroup", key), self.arn("deploymentgroup", new_key))
            for key, rev in self.store.items("revision", f"{old}/"):
                self.store.delete("revision", key)
                self.store.put("revision", new + key[len(old):], rev)
            for doc in self.store.values("deployment"):
                if doc["applicationName"] == old:
                    self.store.put("deployment", doc["deploymentId"], dict(doc, applicationName=new))
        return {}

    def _move_tags(self, old: str, new: str) -> None:
        tags = self.tags_of(old)
        self.store.delete("tags", old)
        self._set_tags(new, tags)

    # -- deployment groups ----------------------------------------------------------------------
    def _group_fields(self, body: JsonObject, group: JsonObject) -> JsonObject:
        config = _str(body, "deploymentConfigName")
        if config is not None:
            if self.engine.config(config) is None:
                raise _no_config(config)
            group["deploymentConfigName"] = config
        for field, kind in (("ec2TagFilters", "InvalidEC2TagException"),
                            ("onPremisesInstanceTagFilters", "InvalidTagException")):
            if field in body:
                group[field] = _filters(_list(body, field), kind)
        for field in ("ec2TagSet", "onPremisesTagSet", "alarmConfiguration", "deploymentStyle",
                      "loadBalancerInfo", "blueGreenDeploymentConfiguration"):
            if body.get(field) is not None:
                group[field] = _dict(body, field)
        auto = _dict(body, "autoRollbackConfiguration")
        if auto is not None:
            events = auto.get("events") or []
            known = ("DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_ALARM", "DEPLOYMENT_STOP_ON_REQUEST")
            if any(e not in known for e in events):
                raise ApiError("InvalidAutoRollbackConfigException", f"Invalid rollback events: {events}")
            group["autoRollbackConfiguration"] = {"enabled": bool(auto.get("enabled")), "events": events}
        for field in ("serviceRoleArn", "outdatedInstancesStrategy"):
            if body.get(field) is not None:
                group[field] = _str(body, field)
        if "autoScalingGroups" in body:   # names in; AutoScalingGroup shapes (name, launch hook) out
            group["autoScalingGroups"] = [launch_hook(group, name) for name in _list(body, "autoScalingGroups")]
            # the launch hook the service installs: instances in the groups now are members, any launched
            # from now on gets the last successful revision (the engine's next look, not its first, sees it)
            group["_asgMembers"] = self.engine.auto_scaling_instances(group)
        if "triggerConfigurations" in body:
            group["triggerConfigurations"] = _list(body, "triggerConfigurations")
        problem = bluegreen.check_group(group)
        if problem is not None:
            raise ApiError(*problem)
        return group

    def op_CreateDeploymentGroup(self, body: JsonObject) -> JsonObject:
        app = self._app(body)
        name = _required(body, "deploymentGroupName", "DeploymentGroupNameRequiredException", "Deployment group name")
        _required(body, "serviceRoleArn", "RoleRequiredException", "Service role ARN")
        with self.store.transaction():
            key = f"{app['applicationName']}/{name}"
            if self.store.get("group", key):
                raise ApiError("DeploymentGroupAlreadyExistsException",
                               f"A deployment group named {name} already exists for application "
                               f"{app['applicationName']}")
            group = {"applicationName": app["applicationName"], "deploymentGroupId": str(uuid.uuid4()),
                     "deploymentGroupName": name, "deploymentConfigName": "CodeDeployDefault.OneAtATime",
                     "ec2TagFilters": [], "onPremisesInstanceTagFilters": [], "autoScalingGroups": [],
                     "triggerConfigurations": [], "alarmConfiguration": {"enabled": False, "alarms": []},
                     "autoRollbackConfiguration": {"enabled": False, "events": []},
                     "deploymentStyle": {"deploymentType": "IN_PLACE", "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"},
                     "outdatedInstancesStrategy": "UPDATE", "computePlatform": "Server",
                     "terminationHookEnabled": False}
            group = self._group_fields(body, group)
            self.store.put("group", key, group)
            self._add_tags(self.arn("deploymentgroup", key), _list(body, "tags"))
        return {"deploymentGroupId": group["deploymentGroupId"]}

    def op_GetDeploymentGroup(self, body: JsonObject) -> JsonObject:
        return {"deploymentGroupInfo": public(self._group(body))}

    def op_BatchGetDeploymentGroups(self, body: JsonObject) -> JsonObject:
        app = self._app(body)
        out, missing = [], []
        for name in _list(body, "deploymentGroupNames"):
            g = self.store.get("group", f"{app['applicationName']}/{name}")
            (out.append(public(g)) if g else missing.append(name))
        return {"deploymentGroupsInfo": out,
                "errorMessage": f"Deployment groups not found: {', '.join(missing)}" if missing else ""}

    def op_ListDeploymentGroups(self, body: JsonObject) -> JsonObject:
        app = self._app(body)
        return {"applicationName": app["applicationName"],
                "deploymentGroups": [g["deploymentGroupName"] for g in
                                     self.store.values("group", f"{app['applicationName']}/")]}

    def op_UpdateDeploymentGroup(self, body: JsonObject) -> JsonObject:
        group = self._group(body, "currentDeploymentGroupName")
        app = group["applicationName"]
        with self.store.transaction():
            old_key = f"{app}/{group['deploymentGroupName']}"
            new_name = _str(body, "newDeploymentGroupName")
            if new_name and new_name != group["deploymentGroupName"]:
                if self.store.get("group", f"{app}/{new_name}"):
                    raise ApiError("DeploymentGroupAlreadyExistsException",
                                   f"A deployment group named {new_name} already exists")
                self.store.delete("group", old_key)
                self._move_tags(self.arn("deploymentgroup", old_key), self.arn("deploymentgroup", f"{app}/{new_name}"))
                group["deploymentGroupName"] = new_name
            group = self._group_fields(body, group)
            self.store.put("group", f"{app}/{group['deploymentGroupName']}", group)
        return {"hooksNotCleanedUp": []}

    def op_DeleteDeploymentGroup(self, body: JsonObject) -> JsonObject:
        with self.store.transaction():
            group = self._group(body)
            key = f"{group['applicationName']}/{group['deploymentGroupName']}"
            self.store.delete("group", key)
            self.store.delete("tags", self.arn("deploymentgroup", key))
        return {"hooksNotCleanedUp": []}

    # -- revisions ------------------------------------------------------------------------------
    def op_RegisterApplicationRevision(self, body: JsonObject) -> JsonObject:
        app = self._app(body)
        rev = check_revision(body.get("revision"))
        self._register_revision(app["applicationName"], rev, _str(body, "description") or "")
        return {}

    def op_GetApplicationRevision(self, body: JsonObject) -> JsonObject:
        app = self._app(body)
        rev = check_revision(body.get("revision"))
        doc = self.store.get("revision", f"{app['applicationName']}/{revision_key(rev)}")
        if doc is None:
            raise ApiError("RevisionDoesNotExistException", "No application revision found for revision.")
        info = {k: v for k, v in doc.items() if k != "revision"}
        return {"applicationName": app["applicationName"], "revision": rev, "revisionInfo": info}

    def op_BatchGetApplicationRevisions(self, body: JsonObject) -> JsonObject:
        app = self._app(body)
        out = []
        for r in _list(body, "revisions"):
            rev = check_revision(r)
            doc = self.store.get("revision", f"{app['applicationName']}/{revision_key(rev)}")
            if doc:
                info = {k: v for k, v in doc.items() if k != "revision"}
                out.append({"revisionLocation": rev, "genericRevisionInfo": info})
        return {"applicationName": app["applicationName"], "errorMessage": "", "revisions": out}

    def op_ListApplicationRevisions(self, body: JsonObject) -> JsonObject:
        app = self._app(body)
        docs = self.store.values("revision", f"{app['applicationName']}/")
        bucket, prefix = _str(body, "s3Bucket"), _str(body, "s3KeyPrefix")
        if bucket:
            docs = [d for d in docs if (d["revision"].get("s3Location") or {}).get("bucket") == bucket]
        if prefix:
            docs = [d for d in docs if (d["revision"].get("s3Location") or {}).get("key", "").startswith(prefix)]
        deployed = _str(body, "deployed")
        if deployed == "include":
            docs = [d for d in docs if d.get("deploymentGroups")]
        elif deployed == "exclude":
            docs = [d for d in docs if not d.get("deploymentGroups")]
        order = _str(body, "sortBy")
        if order:
            docs.sort(key=lambda d: d.get(order) or 0, reverse=_str(body, "sortOrder") == "descending")
        return {"revisions": [d["revision"] for d in docs]}

    # -- deployment configurations --------------------------------------------------------------
    def op_CreateDeploymentConfig(self, body: JsonObject) -> JsonObject:
        name = _config_name(body)
        if name.startswith(BUILTIN_PREFIX):
            raise ApiError("InvalidDeploymentConfigNameException", f"The {BUILTIN_PREFIX} prefix is reserved")
        mhh = _dict(body, "minimumHealthyHosts")
        if not mhh:
            raise ApiError("InvalidMinimumHealthyHostValueException", "minimumHealthyHosts must be specified")
        kind, value = mhh.get("type"), mhh.get("value")
        if kind not in ("HOST_COUNT", "FLEET_PERCENT") or not isinstance(value, int) or value < 0 \
                or (kind == "FLEET_PERCENT" and value > 100):
            raise ApiError("InvalidMinimumHealthyHostValueException",
                           f"The minimum healthy instance value is invalid: {json.dumps(mhh)}")
        with self.store.transaction():
            if self.store.get("config", name):
                raise ApiError("DeploymentConfigAlreadyExistsException", f"Deployment config {name} already exists")
            doc = {"deploymentConfigId": str(uuid.uuid4()), "deploymentConfigName": name,
                   "minimumHealthyHosts": {"type": kind, "value": value}, "createTime": time.time(),
                   "computePlatform": "Server"}
            self.store.put("config", name, doc)
        return {"deploymentConfigId": doc["deploymentConfigId"]}

    def op_GetDeploymentConfig(self, body: JsonObject) -> JsonObject:
        name = _config_name(body)
        doc = self.engine.config(name)
        if doc is None:
            raise _no_config(name)
        return {"deploymentConfigInfo": doc}

    def op_ListDeploymentConfigs(self, body: JsonObject) -> JsonObject:
        return {"deploymentConfigsList": list(BUILTIN_CONFIGS) + [k for k, _ in self.store.items("config")]}

    def op_DeleteDeploymentConfig(self, body: JsonObject) -> JsonObject:
        """Delete a configuration of the user's; AWS's own (``CodeDeployDefault.*``) are refused, and one a
        deployment group uses. Deleting one that does not exist succeeds, as on AWS."""
        name = _config_name(body)
        if name in BUILTIN_CONFIGS or name.startswith(BUILTIN_PREFIX):
            raise ApiError("InvalidOperationException",
                           f"{name} is a predefined deployment configuration and cannot be deleted")
        with self.store.transaction():
            users = [g for g in self.store.values("group") if g.get("deploymentConfigName") == name]
            if users:
                raise ApiError("DeploymentConfigInUseException",
                               f"The deployment configuration {name} is used by the deployment group "
                               f"{users[0]['applicationName']}/{users[0]['deploymentGroupName']}")
            self.store.delete("config", name)
            self.store.delete("tags", self.arn("deploymentconfig", name))
        return {}

    # -- deployments ----------------------------------------------------------------------------
    def op_CreateDeployment(self, body: JsonObject) -> JsonObject:
        group = self._group(body)
        rev = body.get("revision")
        rev = check_revision(rev) if rev is not None else group.get("targetRevision")
        if rev is None:
            raise ApiError("RevisionRequiredException", "Revision must be specified")
        self._deployable(rev)
        config = _str(body, "deploymentConfigName")
        if config and self.engine.config(config) is None:
            raise _no_config(config)
        behaviour = _str(body, "fileExistsBehavior") or "DISALLOW"
        if behaviour not in FILE_EXISTS:
            raise ApiError("InvalidFileExistsBehaviorException",
                           f"fileExistsBehavior must be one of {', '.join(FILE_EXISTS)}")
        auto = _dict(body, "autoRollbackConfiguration")
        if body.get("ignoreApplicationStopFailures") not in (None, True, False):
            raise ApiError("SerializationException", "ignoreApplicationStopFailures: expected a boolean")
        wanted = _dict(body, "targetInstances")
        problem = bluegreen.check_deployment(group, wanted)
        if problem is not None:
            raise ApiError(*problem)
        if wanted is not None:
            wanted = {k: v for k, v in wanted.items() if v}
            _filters(wanted.get("tagFilters") or [], "InvalidTargetInstancesException")
        if bluegreen.is_blue_green(group) and bluegreen.green_action(group) == "DISCOVER_EXISTING" \
                and not self.engine.selected_by(selection_of(wanted or {})):
            raise ApiError("InvalidTargetInstancesException",
                           "targetInstances selects no registered instance: the replacement instances must be "
                           "running and registered with the tags or Auto Scaling groups it names")
        app = group["applicationName"]
        with self.store.transaction():
            for d in self.store.values("deployment"):
                if d["status"] in ACTIVE and d["applicationName"] == app \
                        and d["deploymentGroupName"] == group["deploymentGroupName"]:
                    raise ApiError("DeploymentLimitExceededException",
                                   f"The deployment group {group['deploymentGroupName']} already has an active "
                                   f"deployment {d['deploymentId']}.")
            self._register_revision(app, rev, group=group["deploymentGroupName"])
            group["targetRevision"] = rev
            self.store.put("group", f"{app}/{group['deploymentGroupName']}", group)
            doc = self.engine.create(group, rev, config_name=config, description=_str(body, "description") or "",
                                     ignore_stop_failures=bool(body.get("ignoreApplicationStopFailures")),
                                     file_exists=behaviour,
                                     auto_rollback={"enabled": bool(auto.get("enabled")),
                                                    "events": auto.get("events") or []} if auto else None,
                                     target_instances=wanted)
        return {"deploymentId": doc["deploymentId"]}

    def op_GetDeployment(self, body: JsonObject) -> JsonObject:
        return {"deploymentInfo": self._deployment_info(self._deployment(body))}

    def op_BatchGetDeployments(self, body: JsonObject) -> JsonObject:
        docs = [self.store.get("deployment", d) for d in _list(body, "deploymentIds") if isinstance(d, str)]
        return {"deploymentsInfo": [self._deployment_info(d) for d in docs if d]}

    def op_ListDeployments(self, body: JsonObject) -> JsonObject:
        app_name, group_name = _str(body, "applicationName"), _str(body, "deploymentGroupName")
        if group_name and not app_name:
            raise ApiError("ApplicationNameRequiredException", "Application name must be specified")
        if app_name:
            self._app(body)
        if group_name:
            self._group(body)
        statuses = _list(body, "includeOnlyStatuses")
        window = _dict(body, "createTimeRange") or {}
        out = []
        for d in self.store.values("deployment"):
            if (app_name and d["applicationName"] != app_name) \
                    or (group_name and d["deploymentGroupName"] != group_name):
                continue
            if statuses and d["status"] not in statuses:
                continue
            if window.get("start") is not None and d["createTime"] < float(window["start"]):
                continue
            if window.get("end") is not None and d["createTime"] > float(window["end"]):
                continue
            out.append(d["deploymentId"])
        return {"deployments": list(reversed(out))}   # newest first

    def op_StopDeployment(self, body: JsonObject) -> JsonObject:
        doc = self._deployment(body)
        if doc["status"] in DONE:
            raise ApiError("DeploymentAlreadyCompletedException",
                           f"The deployment {doc['deploymentId']} is already completed.")
        status, message = self.engine.stop(doc["deploymentId"], bool(body.get("autoRollbackEnabled")))
        return {"status": status, "statusMessage": message}

    def _blue_green_only(self, body: JsonObject, what: str) -> JsonObject:
        """The checks of an operation only blue/green deployments have (here: EC2 ones; ECS and Lambda
        are not run): the deployment, active, and blue/green; else the error CodeDeploy answers."""
        doc = self._deployment(body)
        if doc["status"] in DONE:
            raise ApiError("DeploymentAlreadyCompletedException",
                           f"The deployment {doc['deploymentId']} is already completed.")
        if not bluegreen.is_blue_green(doc):
            raise ApiError("UnsupportedActionForDeploymentTypeException",
                           f"{what} is supported for blue/green deployments only; {doc['deploymentId']} is an "
                           "in-place deployment")
        return doc

    def op_ContinueDeployment(self, body: JsonObject) -> JsonObject:
        doc = self._blue_green_only(body, "ContinueDeployment")
        wait_type = _str(body, "deploymentWaitType") or "READY_WAIT"
        problem = bluegreen.continue_problem(doc, wait_type)
        if problem is not None:
            raise ApiError(*problem)
        self.engine.continue_deployment(doc["deploymentId"], wait_type)
        return {}

    def op_SkipWaitTimeForInstanceTermination(self, body: JsonObject) -> JsonObject:
        doc = self._blue_green_only(body, "SkipWaitTimeForInstanceTermination")
        problem = bluegreen.continue_problem(doc, "TERMINATION_WAIT")
        if problem is not None:
            kind = problem[0] if problem[0] == "DeploymentNotStartedException" else \
                "UnsupportedActionForDeploymentTypeException"
            raise ApiError(kind, problem[1])
        self.engine.continue_deployment(doc["deploymentId"], "TERMINATION_WAIT")
        return {}

    def op_PutLifecycleEventHookExecutionStatus(self, body: JsonObject) -> JsonObject:
        """ECS and Lambda deployments' hook functions report here; cdsim runs neither, so after the checks
        the answer is UnsupportedActionForDeploymentTypeException for the Server deployment named."""
        doc = self._deployment(body)
        if _str(body, "lifecycleEventHookExecutionId") is None:
            raise ApiError("InvalidLifecycleEventHookExecutionIdException",
                           "A lifecycle event hook execution id must be specified")
        if _str(body, "status") not in ("Succeeded", "Failed"):
            raise ApiError("InvalidLifecycleEventHookExecutionStatusException",
                           "The status must be Succeeded or Failed")
        raise ApiError("UnsupportedActionForDeploymentTypeException",
                       f"PutLifecycleEventHookExecutionStatus is for ECS and Lambda deployments; "
                       f"{doc['deploymentId']} is a Server deployment")

    def op_DeleteResourcesByExternalId(self, body: JsonObject) -> JsonObject:
        """CloudFormation's clean-up of the resources a stack made; cdsim's resources have no external id."""
        return {}

    # -- GitHub account tokens: cdsim reads GitHub revisions from local folders, and holds no token -------
    def op_ListGitHubAccountTokenNames(self, body: JsonObject) -> JsonObject:
        return {"tokenNameList": []}

    def op_DeleteGitHubAccountToken(self, body: JsonObject) -> JsonObject:
        name = _required(body, "tokenName", "GitHubAccountTokenNameRequiredException", "GitHub account token name")
        raise ApiError("GitHubAccountTokenDoesNotExistException", f"No GitHub account token found for name: {name}")

    def _summary(self, t: JsonObject) -> JsonObject:
        return {"deploymentId": t["deploymentId"], "instanceId": t["targetId"], "status": t["status"],
                "lastUpdatedAt": t["lastUpdatedAt"], "lifecycleEvents": t["lifecycleEvents"],
                "instanceType": t.get("instanceLabel", "Blue")}

    def op_ListDeploymentInstances(self, body: JsonObject) -> JsonObject:
        doc = self._deployment(body)
        wanted = _list(body, "instanceStatusFilter")
        kinds = _list(body, "instanceTypeFilter")
        if any(k not in (bluegreen.BLUE, bluegreen.GREEN) for k in kinds):
            raise ApiError("InvalidInstanceTypeException", f"Invalid instance type filter {kinds}: Blue or Green")
        if kinds and not bluegreen.is_blue_green(doc):
            raise ApiError("InvalidDeploymentInstanceTypeException",
                           "An instance type was specified for an in-place deployment: instance types are for "
                           "blue/green deployments only")
        return {"instancesList": [t["targetId"] for t in self.engine.targets(doc["deploymentId"])
                                  if (not wanted or t["status"] in wanted)
                                  and (not kinds or t.get("instanceLabel", "Blue") in kinds)]}

    def op_GetDeploymentInstance(self, body: JsonObject) -> JsonObject:
        doc = self._deployment(body)
        iid = _required(body, "instanceId", "InstanceIdRequiredException", "Instance id")
        return {"instanceSummary": self._summary(self._target(doc["deploymentId"], iid))}

    def op_BatchGetDeploymentInstances(self, body: JsonObject) -> JsonObject:
        doc = self._deployment(body)
        out = [self._summary(self._target(doc["deploymentId"], i)) for i in _list(body, "instanceIds")]
        return {"instancesSummary": out, "errorMessage": ""}

    def op_ListDeploymentTargets(self, body: JsonObject) -> JsonObject:
        doc = self._deployment(body)
        filters = _dict(body, "targetFilters") or {}
        wanted = filters.get("TargetStatus") or []
        labels = filters.get("ServerInstanceLabel") or []
        return {"targetIds": [t["targetId"] for t in self.engine.targets(doc["deploymentId"])
                              if (not wanted or t["status"] in wanted)
                              and (not labels or t.get("instanceLabel", "Blue") in labels)]}

    def op_BatchGetDeploymentTargets(self, body: JsonObject) -> JsonObject:
        doc = self._deployment(body)
        ids = _list(body, "targetIds")
        if not ids:
            raise ApiError("DeploymentTargetIdRequiredException", "Target ids must be specified")
        out = []
        for tid in ids:
            try:
                t = self._target(doc["deploymentId"], tid)
            except ApiError:
                raise ApiError("DeploymentTargetDoesNotExistException",
                               f"The target {tid} is not part of deployment {doc['deploymentId']}") from None
            out.append({"deploymentTargetType": "InstanceTarget", "instanceTarget": public(t)})
        return {"deploymentTargets": out}

    def op_GetDeploymentTarget(self, body: JsonObject) -> JsonObject:
        doc = self._deployment(body)
        tid = _required(body, "targetId", "DeploymentTargetIdRequiredException", "Target id")
        try:
            t = self._target(doc["deploymentId"], tid)
        except ApiError:
            raise ApiError("DeploymentTargetDoesNotExistException",
                           f"The target {tid} is not part of deployment {doc['deploymentId']}") from None
        return {"deploymentTarget": {"deploymentTargetType": "InstanceTarget", "instanceTarget": public(t)}}

    # -- on-premises instances ------------------------------------------------------------------
    def _instance(self, name: str) -> JsonObject:
        doc = self.store.get("instance", name)
        if doc is None or doc.get("deregisterTime"):
            raise ApiError("InstanceNotRegisteredException", f"The on-premises instance {name} is not registered.")
        return doc

    def op_RegisterOnPremisesInstance(self, body: JsonObject) -> JsonObject:
        name = _required(body, "instanceName", "InstanceNameRequiredException", "Instance name")
        if not revisions.valid_instance_name(name):
            raise ApiError("InvalidInstanceNameException",
                           f"The on-premises instance name {name!r} is not valid: use up to 100 letters, digits, "
                           "'_', '.', '@' and '-', not starting with '.', '@' or '-'")
        session, user = _str(body, "iamSessionArn"), _str(body, "iamUserArn")
        if not session and not user:
            raise ApiError("IamArnRequiredException", "An IAM user ARN or an IAM session ARN must be specified")
        if session and user:
            raise ApiError("MultipleIamArnsProvidedException", "Give an IAM user ARN or an IAM session ARN, not both")
        with self.store.transaction():
            old = self.store.get("instance", name)
            if old and not old.get("deregisterTime"):
                raise ApiError("InstanceNameAlreadyRegisteredException",
                               f"The on-premises instance {name} is already registered.")
            doc: JsonObject = {"instanceName": name, "instanceArn": self.engine.instance_arn(name),
                               "registerTime": time.time(), "tags": [],
                               **({"iamSessionArn": session} if session else {"iamUserArn": user})}
            self.store.put("instance", name, doc)
        return {}

    def op_DeregisterOnPremisesInstance(self, body: JsonObject) -> JsonObject:
        """Deregister an instance; one that is not registered (and has a valid name) is left as it is, with
        no error, since the model lists none for it."""
        name = _required(body, "instanceName", "InstanceNameRequiredException", "Instance name")
        with self.store.transaction():
            doc = self.store.get("instance", name)
            if doc is not None and not doc.get("deregisterTime"):
                self.store.put("instance", name, dict(doc, deregisterTime=time.time()))
            elif not revisions.valid_instance_name(name):
                raise ApiError("InvalidInstanceNameException", f"The on-premises instance name {name!r} is not valid")
        return {}

    def op_GetOnPremisesInstance(self, body: JsonObject) -> JsonObject:
        name = _required(body, "instanceName", "InstanceNameRequiredException", "Instance name")
        doc = self.store.get("instance", name)
        if doc is None:
            raise ApiError("InstanceNotRegisteredException", f"The on-premises instance {name} is not registered.")
        return {"instanceInfo": doc}

    def op_BatchGetOnPremisesInstances(self, body: JsonObject) -> JsonObject:
        docs = [self.store.get("instance", n) for n in _list(body, "instanceNames")]
        return {"instanceInfos": [d for d in docs if d]}

    def _tagging(self, body: JsonObject, add: bool) -> JsonObject:
        tags = _tags(_list(body, "tags"))
        names = _list(body, "instanceNames")
        if not tags:
            raise ApiError("TagRequiredException", "Tags must be specified")
        if not names:
            raise ApiError("InstanceNameRequiredException", "Instance names must be specified")
        with self.store.transaction():
            for name in names:
                doc = self._instance(name)
                keep = [t for t in doc["tags"] if all(t["Key"] != n["Key"] for n in tags)] if add else \
                    [t for t in doc["tags"] if t not in tags]
                doc["tags"] = keep + (tags if add else [])
                self.store.put("instance", name, doc)
        return {}

    def op_AddTagsToOnPremisesInstances(self, body: JsonObject) -> JsonObject:
        return self._tagging(body, True)

    def op_RemoveTagsFromOnPremisesInstances(self, body: JsonObject) -> JsonObject:
        return self._tagging(body, False)

    def op_ListOnPremisesInstances(self, body: JsonObject) -> JsonObject:
        status = _str(body, "registrationStatus")
        if status not in (None, "Registered", "Deregistered"):
            raise ApiError("InvalidRegistrationStatusException", f"Invalid registration status {status}")
        filters = _filters(_list(body, "tagFilters"), "InvalidTagFilterException")
        out = []
        for d in self.store.values("instance"):
            registered = not d.get("deregisterTime")
            if status and (status == "Registered") != registered:
                continue
            if filters and not any(tag_matches(d["tags"], f) for f in filters):
                continue
            out.append(d["instanceName"])
        return {"instanceNames": out}


class AgentApi:
    """What cdsim agents call: the next command of an instance, and progress reports."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def dispatch(self, operation: str, body: JsonObject) -> JsonObject:
        if operation == "PollCommand":
            name = _required(body, "instanceName", "InstanceNameRequiredException", "Instance name")
            return {"command": self.engine.poll(name, bool(body.get("local")))}
        if operation == "ReportCommand":
            cid = _required(body, "commandId", "InvalidInputException", "Command id")
            status = _str(body, "status")
            if status not in (None, "Succeeded", "Failed"):
                raise ApiError("InvalidInputException", f"Invalid command status {status}")
            return self.engine.report(cid, _list(body, "lifecycleEvents") or None, status,
                                      wait_for=_str(body, "waitFor"))
        raise ApiError("UnknownOperationException", f"Unknown operation {operation}")
