"""The whole CodeDeploy API of botocore's model against `cdsim server`, with boto3 as SDK scripts use it.

One server (real HTTP, signed requests, no S3, no agents) serves the file. A walk calls every operation
of the model botocore ships with a minimal valid input and checks the raw answer: a success shaped like
the operation's output shape (no member the shape lacks, every value of its type), or an error whose
``__type`` the model lists for the operation or is one of AWS's generic ones. A boto3 script (a process
of its own, pointed at the server by environment variables only) tags, renames and deletes, and leaves
the server as it found it. A server started on a database of an older cdsim works on it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.model import ListShape, MapShape, OperationModel, Shape, StringShape, StructureShape

from tests.lib import needs_tool

REGION = "us-east-1"
ACCOUNT = "000000000000"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/CodeDeployRole"
S3_REVISION = {"revisionType": "S3", "s3Location": {"bucket": "walk-bucket", "key": "app.tgz", "bundleType": "tgz"}}
# AWS's generic errors of JSON 1.1 services, which any operation may answer (documented in README/SECURITY)
GENERIC = {"ValidationException", "SerializationException"}
# operations only blue/green, ECS or Lambda deployments have: cdsim checks their input, then says so
IN_PLACE_UNSUPPORTED = {"ContinueDeployment", "SkipWaitTimeForInstanceTermination",
                        "PutLifecycleEventHookExecutionStatus"}
# what may answer with an error in the walk, and why; every other operation must succeed
WALK_ERRORS = {
    **{op: {"UnsupportedActionForDeploymentTypeException", "DeploymentAlreadyCompletedException"}
       for op in IN_PLACE_UNSUPPORTED},
    "DeleteGitHubAccountToken": {"GitHubAccountTokenDoesNotExistException"},   # cdsim holds no token
}


def arn(kind: str, name: str) -> str:
    return f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:{kind}:{name}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from agent.service.server import Service
    state = tmp_path_factory.mktemp("api") / "state"
    with Service(str(state), s3=False, agents=False) as service:
        yield service


@pytest.fixture(scope="module")
def client(server):
    creds = server.credentials
    return boto3.session.Session().client(
        "codedeploy", region_name=REGION, endpoint_url=server.endpoint, aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key, config=Config(retries={"max_attempts": 1}))


def service_model():
    return botocore.session.get_session().get_service_model("codedeploy")


# -- an independent check of a raw answer against the model's output shape ---------------------------
def shape_problems(value, shape: Shape, path: str) -> list[str]:
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is no structure"]
        out = [f"{path}.{k}: not a member of {shape.name}" for k in value if k not in shape.members]
        for k, v in value.items():
            if k in shape.members and v is not None:
                out += shape_problems(v, shape.members[k], f"{path}.{k}")
        return out
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{path}: {value!r} is no list"]
        return [p for i, v in enumerate(value) for p in shape_problems(v, shape.member, f"{path}[{i}]")]
    if isinstance(shape, MapShape):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is no map"]
        return [p for k, v in value.items() for p in shape_problems(v, shape.value, f"{path}[{k}]")]
    if isinstance(shape, StringShape):
        if not isinstance(value, str):
            return [f"{path}: {value!r} is no string"]
        return [f"{path}: {value!r} is not one of {shape.enum}"] if shape.enum and value not in shape.enum else []
    expected = {"boolean": (bool,), "integer": (int,), "long": (int,), "timestamp": (int, float),
                "double": (int, float), "float": (int, float)}.get(shape.type_name, (object,))
    if not isinstance(value, expected) or (shape.type_name != "boolean" and isinstance(value, bool)):
        return [f"{path}: {value!r} is no {shape.type_name}"]
    return []


# -- minimal valid inputs -------------------------------------------------------------------------------
def values(ids: dict[str, str]) -> dict[str, object]:
    """The value of a member, by name, pointing at the resources the walk keeps."""
    return {
        "applicationName": "walk-app", "deploymentGroupName": "walk-group",
        "currentDeploymentGroupName": "walk-group", "deploymentConfigName": "walk-config",
        "deploymentId": ids["deployment"], "instanceName": "walk-instance", "instanceId": "walk-instance",
        "targetId": "walk-instance", "serviceRoleArn": ROLE, "revision": S3_REVISION, "revisions": [S3_REVISION],
        "applicationNames": ["walk-app"], "deploymentGroupNames": ["walk-group"],
        "deploymentIds": [ids["deployment"]], "instanceNames": ["walk-instance"], "instanceIds": ["walk-instance"],
        "targetIds": ["walk-instance"], "tags": [{"Key": "walk", "Value": "yes"}],
        "Tags": [{"Key": "walk", "Value": "yes"}], "TagKeys": ["walk"], "ResourceArn": arn("application", "walk-app"),
        "iamUserArn": f"arn:aws:iam::{ACCOUNT}:user/walk", "tokenName": "walk-token",
        "lifecycleEventHookExecutionId": "walk-hook", "status": "Succeeded", "externalId": "walk-stack",
        "newApplicationName": "walk-renamed",
    }


# an operation's own fresh names, so that a Create succeeds in a walk that keeps the others' resources
FRESH = {"CreateApplication": {"applicationName": "walk-fresh"},
         "CreateDeploymentGroup": {"deploymentGroupName": "walk-fresh"},
         "CreateDeploymentConfig": {"deploymentConfigName": "walk-fresh",
                                    "minimumHealthyHosts": {"type": "HOST_COUNT", "value": 0}},
         "CreateDeployment": {"deploymentGroupName": "walk-idle"},
         "RegisterOnPremisesInstance": {"instanceName": "walk-fresh"}}


def minimal(value, shape: Shape, name: str, given: dict[str, object]):
    if name in given:
        return given[name]
    if isinstance(shape, StructureShape):
        return {m: minimal(None, shape.members[m], m, given) for m in shape.required_members}
    if isinstance(shape, ListShape):
        return []
    if isinstance(shape, StringShape):
        return shape.enum[0] if shape.enum else "x" * max(1, shape.metadata.get("min", 1))
    return {"boolean": False, "integer": 0, "long": 0}.get(shape.type_name, 0)


def minimal_input(op: OperationModel, given: dict[str, object]) -> dict:
    if op.input_shape is None:
        return {}
    shape = op.input_shape
    fields = dict(given, **FRESH.get(op.name, {}))
    body = {m: minimal(None, shape.members[m], m, fields) for m in shape.required_members}
    # the optional members that name the walk's resources (UpdateApplication, ContinueDeployment ...)
    body.update({m: fields[m] for m in shape.members if m in fields and m not in body})
    return body


def ensure(client, *calls) -> None:
    for name, kwargs in calls:
        try:
            getattr(client, name)(**kwargs)
        except ClientError as e:
            assert e.response["Error"]["Code"].endswith("AlreadyExistsException") \
                or e.response["Error"]["Code"] == "InstanceNameAlreadyRegisteredException", e.response


def walk_resources(client) -> None:
    """The application, groups, configuration and on-premises instance the walk's calls name."""
    ensure(client,
           ("create_application", {"applicationName": "walk-app"}),
           ("register_on_premises_instance", {"instanceName": "walk-instance",
                                              "iamUserArn": f"arn:aws:iam::{ACCOUNT}:user/walk"}),
           ("create_deployment_config", {"deploymentConfigName": "walk-config",
                                         "minimumHealthyHosts": {"type": "HOST_COUNT", "value": 0}}),
           ("create_deployment_group", {"applicationName": "walk-app", "deploymentGroupName": "walk-group",
                                        "serviceRoleArn": ROLE, "onPremisesInstanceTagFilters": [
                                            {"Key": "walk", "Value": "yes", "Type": "KEY_AND_VALUE"}]}),
           ("create_deployment_group", {"applicationName": "walk-app", "deploymentGroupName": "walk-idle",
                                        "serviceRoleArn": ROLE}))
    client.add_tags_to_on_premises_instances(instanceNames=["walk-instance"], tags=[{"Key": "walk", "Value": "yes"}])
    client.register_application_revision(applicationName="walk-app", revision=S3_REVISION)


def undo(client, operation: str) -> None:
    """Put back what an operation of the walk changed that the next ones name."""
    if operation == "UpdateApplication":
        client.update_application(applicationName="walk-renamed", newApplicationName="walk-app")
    if operation == "DeleteApplication":
        walk_resources(client)
    for name, kwargs in (("delete_application", {"applicationName": "walk-fresh"}),
                         ("delete_deployment_group", {"applicationName": "walk-app",
                                                      "deploymentGroupName": "walk-fresh"}),
                         ("delete_deployment_config", {"deploymentConfigName": "walk-fresh"})):
        try:
            getattr(client, name)(**kwargs)
        except ClientError:
            pass
    walk_resources(client)


def test_every_operation_of_the_model_gets_a_well_formed_answer(client):
    walk_resources(client)
    did = client.create_deployment(applicationName="walk-app", deploymentGroupName="walk-group",
                                   revision=S3_REVISION)["deploymentId"]
    raw: dict[str, tuple[int, dict]] = {}

    def keep(http_response, model, **_):
        raw[model.name] = (http_response.status_code, json.loads(http_response.content or b"{}"))
    client.meta.events.register("after-call.codedeploy", keep)

    model = service_model()
    answered: dict[str, str] = {}
    problems: list[str] = []
    try:
        for name in model.operation_names:
            op = model.operation_model(name)
            body = minimal_input(op, values({"deployment": did}))
            method = getattr(client, botocore.xform_name(name))
            try:
                method(**body)
            except ClientError:
                pass
            status, doc = raw.pop(name)
            if status == 200:
                answered[name] = "ok"
                if op.output_shape is not None:
                    problems += [f"{name}: {p}" for p in shape_problems(doc, op.output_shape, "")]
                elif doc:
                    problems.append(f"{name}: {doc} where the model has no output")
            else:
                kind = doc.get("__type", "")
                answered[name] = kind
                listed = {e.name for e in op.error_shapes} | GENERIC
                if status != 400 or kind not in listed or not doc.get("message"):
                    problems.append(f"{name}: HTTP {status} {doc} for {json.dumps(body)}")
            undo(client, name)
    finally:
        client.meta.events.unregister("after-call.codedeploy", keep)
    assert not problems, "\n".join(problems)
    assert set(answered) == set(model.operation_names)
    unexpected = {n: k for n, k in answered.items() if k != "ok" and k not in WALK_ERRORS.get(n, ())}
    assert not unexpected, f"operations that should work answered errors: {unexpected}"
    assert {n for n, k in answered.items() if k == "UnsupportedActionForDeploymentTypeException"} \
        == IN_PLACE_UNSUPPORTED


ODD_VALUES = (None, "", 0, [], {}, "-x" * 600, [{"Key": None}], "../../etc/passwd")


def test_odd_values_in_every_member_get_a_listed_error_never_a_crash(server, client):
    """Each member of each operation's input, in turn, given values of every JSON type, empty, long or
    path-like, the rest of the body minimal and valid: the answer is a success or a listed error, with
    a message, and never the 500 of a handler that trusted its input."""
    from agent.service.client import ServiceError, call
    walk_resources(client)
    model = service_model()
    problems = []
    for name in model.operation_names:
        op = model.operation_model(name)
        if op.input_shape is None or name.startswith("Delete") or name in ("UpdateApplication", "StopDeployment"):
            continue   # (what changes the walk's resources is covered by the walk)
        base = minimal_input(op, values({"deployment": "d-AAAAAAAAA"}))
        listed = {e.name for e in op.error_shapes} | GENERIC
        for member in op.input_shape.members:
            for odd in ODD_VALUES:
                try:
                    call(server.endpoint, name, dict(base, **{member: odd}))
                except ServiceError as e:
                    if e.status != 400 or e.kind not in listed or str(e) == f"{e.kind}: ":
                        problems.append(f"{name}.{member}={odd!r:.40}: {e.status} {e}")
        undo(client, name)
    assert not problems, "\n".join(problems)


def error_of(call, **kwargs) -> tuple[str, str]:
    with pytest.raises(ClientError) as e:
        call(**kwargs)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


@pytest.mark.parametrize("operation, body, kind", [
    # required members: the operation's own error when the model lists one, else ValidationException
    ("CreateApplication", {}, "ApplicationNameRequiredException"),
    ("CreateDeploymentGroup", {"applicationName": "a", "deploymentGroupName": "g"}, "RoleRequiredException"),
    ("TagResource", {"Tags": [{"Key": "k"}]}, "ResourceArnRequiredException"),
    ("GetDeploymentTarget", {"deploymentId": "d-AAAAAAAAA"}, "DeploymentTargetIdRequiredException"),
    ("ListTagsForResource", {}, "ResourceArnRequiredException"),
    # lengths, patterns and enums
    ("CreateApplication", {"applicationName": "x" * 101}, "InvalidApplicationNameException"),
    ("CreateApplication", {"applicationName": "has space"}, "InvalidApplicationNameException"),
    ("CreateApplication", {"applicationName": "a", "computePlatform": "Mainframe"},
     "InvalidComputePlatformException"),
    ("ListApplicationRevisions", {"applicationName": "a", "sortBy": "size"}, "InvalidSortByException"),
    ("ListApplicationRevisions", {"applicationName": "a", "deployed": "maybe"}, "InvalidDeployedStateFilterException"),
    ("ListTagsForResource", {"ResourceArn": "a" * 1012}, "InvalidArnException"),
    ("PutLifecycleEventHookExecutionStatus", {"deploymentId": "d-AAAAAAAAA", "status": "Done"},
     "InvalidLifecycleEventHookExecutionStatusException"),
    ("ListDeployments", {"includeOnlyStatuses": ["Sleeping"]}, "InvalidDeploymentStatusException"),
    ("CreateDeploymentGroup", {"applicationName": "a", "deploymentGroupName": "g", "serviceRoleArn": ROLE,
                               "ec2TagFilters": [{"Key": "k", "Type": "SOME"}]}, "InvalidEC2TagException"),
    ("ContinueDeployment", {"deploymentWaitType": "FOREVER"}, "InvalidDeploymentWaitTypeException"),
    # every list answers in one page: no token was handed out
    ("ListApplications", {"nextToken": "abc"}, "InvalidNextTokenException"),
    ("ListDeploymentGroups", {"applicationName": "a", "nextToken": "abc"}, "InvalidNextTokenException"),
    # types
    ("CreateApplication", {"applicationName": ["a"]}, "SerializationException"),
    ("BatchGetApplications", {"applicationNames": "a"}, "SerializationException"),
    ("StopDeployment", {"deploymentId": "d-AAAAAAAAA", "autoRollbackEnabled": "yes"}, "SerializationException"),
    # no error of the operation's own: the generic one, worded as AWS does
    ("CreateDeploymentConfig", {"deploymentConfigName": "c", "computePlatform": "Mainframe"},
     "InvalidComputePlatformException"),
    ("ListDeploymentTargets", {"deploymentId": "d-AAAAAAAAA", "targetFilters": {"Color": ["x"]}},
     "InvalidTargetFilterNameException"),
])
def test_inputs_are_checked_against_the_model(server, operation, body, kind):
    from agent.service.client import ServiceError, call
    with pytest.raises(ServiceError) as e:
        call(server.endpoint, operation, body)
    assert (e.value.kind, e.value.status) == (kind, 400), e.value
    assert str(e.value) and "Traceback" not in str(e.value)


def test_a_broken_constraint_without_an_error_of_its_own_is_a_validation_exception(server):
    from agent.service.client import ServiceError, call
    with pytest.raises(ServiceError) as e:
        call(server.endpoint, "BatchGetDeploymentInstances", {"deploymentId": "d-AAAAAAAAA",
                                                               "instanceIds": ["i"], "x": 1, "instanceTypeFilter": 3})
    assert e.value.kind == "DeploymentDoesNotExistException"   # unknown members are ignored
    with pytest.raises(ServiceError) as e:
        call(server.endpoint, "ListDeploymentInstances", {"deploymentId": "d-AAAAAAAAA",
                                                          "instanceStatusFilter": ["Pending"],
                                                          "instanceTypeFilter": ["Purple"]})
    assert e.value.kind == "InvalidInstanceTypeException"
    with pytest.raises(ServiceError) as e:
        call(server.endpoint, "GetDeploymentGroup", {"applicationName": "a", "deploymentGroupName": ""})
    assert e.value.kind == "DeploymentGroupNameRequiredException"
    with pytest.raises(ServiceError) as e:
        call(server.endpoint, "CreateDeployment", {"applicationName": "a", "deploymentMode": "LATER"})
    assert e.value.kind == "ValidationException"
    assert "Value 'LATER' at 'deploymentMode' failed to satisfy constraint: Member must satisfy enum value set" \
        in str(e.value)


def test_tags_follow_resources_and_are_refused_where_aws_refuses_them(client):
    client.create_application(applicationName="t-app", tags=[{"Key": "team", "Value": "a"}])
    client.create_deployment_group(applicationName="t-app", deploymentGroupName="t-g", serviceRoleArn=ROLE,
                                   tags=[{"Key": "tier", "Value": "web"}])
    client.create_deployment_config(deploymentConfigName="t-c", minimumHealthyHosts={"type": "HOST_COUNT", "value": 0})
    app, group = arn("application", "t-app"), arn("deploymentgroup", "t-app/t-g")
    config = arn("deploymentconfig", "t-c")
    assert client.list_tags_for_resource(ResourceArn=group)["Tags"] == [{"Key": "tier", "Value": "web"}]
    client.tag_resource(ResourceArn=app, Tags=[{"Key": "team", "Value": "b"}, {"Key": "cost", "Value": "1"}])
    client.tag_resource(ResourceArn=config, Tags=[{"Key": "k", "Value": ""}])
    assert client.list_tags_for_resource(ResourceArn=app)["Tags"] == [{"Key": "team", "Value": "b"},
                                                                      {"Key": "cost", "Value": "1"}]
    client.untag_resource(ResourceArn=app, TagKeys=["team", "absent"])
    assert client.list_tags_for_resource(ResourceArn=app)["Tags"] == [{"Key": "cost", "Value": "1"}]
    assert client.list_tags_for_resource(ResourceArn=config)["Tags"] == [{"Key": "k", "Value": ""}]

    assert error_of(client.tag_resource, ResourceArn="not-an-arn", Tags=[{"Key": "k"}])[0] == "InvalidArnException"
    assert error_of(client.list_tags_for_resource, ResourceArn="arn:aws:s3:::bucket")[0] == "ArnNotSupportedException"
    assert error_of(client.list_tags_for_resource,   # instances have tags of their own (AddTagsToOnPremises...)
                    ResourceArn=f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:instance/i")[0] == "ArnNotSupportedException"
    assert error_of(client.tag_resource, ResourceArn=arn("application", "nope"),
                    Tags=[{"Key": "k"}])[0] == "ApplicationDoesNotExistException"
    assert error_of(client.tag_resource, ResourceArn=arn("deploymentgroup", "t-app/nope"),
                    Tags=[{"Key": "k"}])[0] == "DeploymentGroupDoesNotExistException"
    assert error_of(client.tag_resource, ResourceArn=arn("deploymentconfig", "CodeDeployDefault.AllAtOnce"),
                    Tags=[{"Key": "k"}])[0] == "DeploymentConfigDoesNotExistException"
    assert error_of(client.tag_resource, ResourceArn=app, Tags=[{"Key": "aws:reserved", "Value": "x"}])[0] \
        == "InvalidTagsToAddException"
    assert error_of(client.tag_resource, ResourceArn=app,
                    Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])[0] == "InvalidTagsToAddException"
    assert error_of(client.tag_resource, ResourceArn=app, Tags=[])[0] == "TagRequiredException"
    assert client.list_tags_for_resource(ResourceArn=app)["Tags"] == [{"Key": "cost", "Value": "1"}]

    # a renamed group and application take their tags along; deleted, nothing is left
    client.update_deployment_group(applicationName="t-app", currentDeploymentGroupName="t-g",
                                   newDeploymentGroupName="t-h")
    client.update_application(applicationName="t-app", newApplicationName="t-app2")
    assert client.list_tags_for_resource(ResourceArn=arn("deploymentgroup", "t-app2/t-h"))["Tags"] \
        == [{"Key": "tier", "Value": "web"}]
    assert client.list_tags_for_resource(ResourceArn=arn("application", "t-app2"))["Tags"] \
        == [{"Key": "cost", "Value": "1"}]
    assert error_of(client.list_tags_for_resource, ResourceArn=app)[0] == "ApplicationDoesNotExistException"
    client.delete_application(applicationName="t-app2")
    client.create_application(applicationName="t-app2")
    assert client.list_tags_for_resource(ResourceArn=arn("application", "t-app2"))["Tags"] == []
    client.create_deployment_group(applicationName="t-app2", deploymentGroupName="t-h", serviceRoleArn=ROLE,
                                   deploymentConfigName="t-c")
    assert client.list_tags_for_resource(ResourceArn=arn("deploymentgroup", "t-app2/t-h"))["Tags"] == []
    assert error_of(client.delete_deployment_config, deploymentConfigName="t-c")[0] == "DeploymentConfigInUseException"
    client.delete_application(applicationName="t-app2")
    client.delete_deployment_config(deploymentConfigName="t-c")
    for name in ("CodeDeployDefault.OneAtATime", "CodeDeployDefault.LambdaAllAtOnce"):
        assert error_of(client.delete_deployment_config, deploymentConfigName=name)[0] == "InvalidOperationException"


def test_update_application_moves_groups_revisions_and_deployments(client):
    client.create_application(applicationName="u-app")
    client.create_deployment_group(applicationName="u-app", deploymentGroupName="g", serviceRoleArn=ROLE)
    client.register_application_revision(applicationName="u-app", revision=S3_REVISION, description="first")
    did = client.create_deployment(applicationName="u-app", deploymentGroupName="g",
                                   revision=S3_REVISION)["deploymentId"]
    client.create_application(applicationName="u-taken")
    assert error_of(client.update_application, applicationName="u-app",
                    newApplicationName="u-taken")[0] == "ApplicationAlreadyExistsException"
    assert error_of(client.update_application, applicationName="u-none",
                    newApplicationName="u-x")[0] == "ApplicationDoesNotExistException"
    client.update_application(applicationName="u-app", newApplicationName="u-new")
    names = client.batch_get_applications(applicationNames=["u-new", "u-taken"])["applicationsInfo"]
    assert [a["applicationName"] for a in names] == ["u-new", "u-taken"]
    groups = client.batch_get_deployment_groups(applicationName="u-new", deploymentGroupNames=["g", "nope"])
    assert [g["applicationName"] for g in groups["deploymentGroupsInfo"]] == ["u-new"]
    assert "nope" in groups["errorMessage"]
    revs = client.batch_get_application_revisions(applicationName="u-new", revisions=[S3_REVISION])["revisions"]
    assert revs[0]["genericRevisionInfo"]["description"] == "first"
    assert client.get_deployment(deploymentId=did)["deploymentInfo"]["applicationName"] == "u-new"
    assert client.list_deployments(applicationName="u-new", deploymentGroupName="g")["deployments"] == [did]
    assert error_of(client.get_application, applicationName="u-app")[0] == "ApplicationDoesNotExistException"
    client.delete_application(applicationName="u-new")
    client.delete_application(applicationName="u-taken")


def dump(client) -> dict:
    """Every list-* answer of the server, and the tags of what they list."""
    out: dict = {"applications": client.list_applications()["applications"],
                 "configs": client.list_deployment_configs()["deploymentConfigsList"],
                 "instances": client.list_on_premises_instances()["instanceNames"],
                 "tokens": client.list_git_hub_account_token_names()["tokenNameList"],
                 "deployments": client.list_deployments()["deployments"]}
    for app in out["applications"]:
        groups = client.list_deployment_groups(applicationName=app)["deploymentGroups"]
        out[f"app:{app}"] = {
            "tags": client.list_tags_for_resource(ResourceArn=arn("application", app))["Tags"],
            "revisions": client.list_application_revisions(applicationName=app)["revisions"],
            "groups": {g: client.list_tags_for_resource(ResourceArn=arn("deploymentgroup", f"{app}/{g}"))["Tags"]
                       for g in groups}}
    for config in out["configs"]:
        if not config.startswith("CodeDeployDefault."):
            out[f"config:{config}"] = client.list_tags_for_resource(ResourceArn=arn("deploymentconfig", config))["Tags"]
    return out


SCRIPT = """
import boto3
cd = boto3.client("codedeploy")
arn = "arn:aws:codedeploy:us-east-1:000000000000:"
cd.create_application(applicationName="script-app", tags=[{"Key": "owner", "Value": "script"}])
cd.create_deployment_group(applicationName="script-app", deploymentGroupName="script-group",
                           serviceRoleArn="arn:aws:iam::000000000000:role/r",
                           tags=[{"Key": "stage", "Value": "test"}])
print(cd.list_tags_for_resource(ResourceArn=arn + "application:script-app")["Tags"])
print(cd.list_tags_for_resource(ResourceArn=arn + "deploymentgroup:script-app/script-group")["Tags"])
cd.update_application(applicationName="script-app", newApplicationName="script-app-2")
print(cd.list_tags_for_resource(ResourceArn=arn + "deploymentgroup:script-app-2/script-group")["Tags"])
cd.delete_deployment_group(applicationName="script-app-2", deploymentGroupName="script-group")
cd.delete_application(applicationName="script-app-2")
"""


def test_a_boto3_script_tags_renames_and_deletes_and_leaves_the_server_as_it_found_it(server, client, tmp_path):
    client.create_application(applicationName="already-there", tags=[{"Key": "keep", "Value": "me"}])
    before = dump(client)
    creds = server.credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID=creds.access_key,
               AWS_SECRET_ACCESS_KEY=creds.secret_key, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[{'Key': 'owner', 'Value': 'script'}]",
                                        "[{'Key': 'stage', 'Value': 'test'}]",
                                        "[{'Key': 'stage', 'Value': 'test'}]"]
    assert dump(client) == before
    client.delete_application(applicationName="already-there")


@needs_tool("aws", "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'")
def test_the_aws_cli_creates_with_tags_and_lists_them_after_a_rename(server, client, tmp_path):
    """The aws CLI (its own botocore, its own model) as a pipeline calls the new operations."""
    creds = server.credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID=creds.access_key,
               AWS_SECRET_ACCESS_KEY=creds.secret_key, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    def aws(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["aws", "deploy", *args, "--output", "json"], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    made = aws("create-application", "--application-name", "cli-app", "--tags", "Key=team,Value=ops")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["applicationId"] == client.get_application(
        applicationName="cli-app")["application"]["applicationId"]
    client.update_application(applicationName="cli-app", newApplicationName="cli-app-2")
    listed = aws("list-tags-for-resource", "--resource-arn", arn("application", "cli-app-2"))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"Tags": [{"Key": "team", "Value": "ops"}]}
    client.delete_application(applicationName="cli-app-2")
    assert "cli-app" not in client.list_applications()["applications"]


def test_get_deployment_target_and_the_in_place_only_operations(client):
    client.create_application(applicationName="dt-app")
    client.register_on_premises_instance(instanceName="dt-i", iamUserArn=f"arn:aws:iam::{ACCOUNT}:user/dt")
    client.add_tags_to_on_premises_instances(instanceNames=["dt-i"], tags=[{"Key": "dt", "Value": "1"}])
    client.create_deployment_group(applicationName="dt-app", deploymentGroupName="g", serviceRoleArn=ROLE,
                                   onPremisesInstanceTagFilters=[{"Key": "dt", "Value": "1",
                                                                  "Type": "KEY_AND_VALUE"}])
    did = client.create_deployment(applicationName="dt-app", deploymentGroupName="g",
                                   revision=S3_REVISION)["deploymentId"]
    target = client.get_deployment_target(deploymentId=did, targetId="dt-i")["deploymentTarget"]
    assert target["deploymentTargetType"] == "InstanceTarget"
    assert target["instanceTarget"]["targetArn"] == f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:instance/dt-i"
    assert client.list_deployment_targets(deploymentId=did)["targetIds"] == ["dt-i"]
    assert error_of(client.get_deployment_target, deploymentId=did,
                    targetId="other")[0] == "DeploymentTargetDoesNotExistException"
    assert error_of(client.continue_deployment, deploymentId=did)[0] == "UnsupportedActionForDeploymentTypeException"
    assert error_of(client.put_lifecycle_event_hook_execution_status, deploymentId=did,
                    lifecycleEventHookExecutionId="h", status="Succeeded")[0] \
        == "UnsupportedActionForDeploymentTypeException"
    assert error_of(client.put_lifecycle_event_hook_execution_status, deploymentId=did,
                    status="Succeeded")[0] == "InvalidLifecycleEventHookExecutionIdException"
    assert error_of(client.put_lifecycle_event_hook_execution_status, deploymentId=did,
                    lifecycleEventHookExecutionId="h", status="Pending")[0] \
        == "InvalidLifecycleEventHookExecutionStatusException"
    assert error_of(client.put_lifecycle_event_hook_execution_status, deploymentId="d-NOTTHERE1",
                    lifecycleEventHookExecutionId="h", status="Failed")[0] == "DeploymentDoesNotExistException"
    assert error_of(client.skip_wait_time_for_instance_termination)[0] == "DeploymentIdRequiredException"
    client.stop_deployment(deploymentId=did)
    assert client.list_git_hub_account_token_names()["tokenNameList"] == []
    client.delete_application(applicationName="dt-app")
    client.deregister_on_premises_instance(instanceName="dt-i")


# the store as cdsim wrote it before tags and the schema version (commit c3e80ff): one table of documents
OLD_SCHEMA = """
CREATE TABLE doc (kind TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
                  PRIMARY KEY (kind, key));
CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_a_server_on_an_older_database_keeps_its_data_and_serves_the_new_operations(tmp_path):
    from agent.service.client import call
    from agent.service.server import DB_FILE, Service
    state = tmp_path / "state"
    folder = state / "service"
    folder.mkdir(parents=True, mode=0o700)
    db = sqlite3.connect(folder / DB_FILE)
    db.executescript(OLD_SCHEMA)
    docs = [("application", "old", {"applicationId": "1", "applicationName": "old", "createTime": 1.0,
                                    "linkedToGitHub": False, "computePlatform": "Server"}),
            ("group", "old/g", {"applicationName": "old", "deploymentGroupId": "2", "deploymentGroupName": "g",
                                "deploymentConfigName": "CodeDeployDefault.OneAtATime", "serviceRoleArn": ROLE})]
    for seq, (kind, key, body) in enumerate(docs, 1):
        db.execute("INSERT INTO doc VALUES (?, ?, ?, ?)", (kind, key, seq, json.dumps(body)))
    db.execute("INSERT INTO counter VALUES ('seq', ?)", (len(docs),))
    db.commit()
    db.close()
    with Service(str(state), s3=False, agents=False) as service:
        ep = service.endpoint
        assert call(ep, "ListTagsForResource", {"ResourceArn": arn("application", "old")}) == {"Tags": []}
        call(ep, "TagResource", {"ResourceArn": arn("deploymentgroup", "old/g"), "Tags": [{"Key": "k", "Value": "v"}]})
        call(ep, "UpdateApplication", {"applicationName": "old", "newApplicationName": "new"})
        assert call(ep, "ListDeploymentGroups", {"applicationName": "new"})["deploymentGroups"] == ["g"]
        assert call(ep, "ListTagsForResource", {"ResourceArn": arn("deploymentgroup", "new/g")})["Tags"] \
            == [{"Key": "k", "Value": "v"}]
    with Service(str(state), s3=False, agents=False) as service:   # and again, on the database it migrated
        assert call(service.endpoint, "ListApplications", {})["applications"] == ["new"]


def test_a_database_of_a_newer_cdsim_is_refused_unchanged(tmp_path):
    from agent.errors import EnvironmentProblem
    from agent.service.server import DB_FILE, Service
    from agent.service.store import SCHEMA_VERSION
    folder = tmp_path / "state" / "service"
    folder.mkdir(parents=True, mode=0o700)
    db = sqlite3.connect(folder / DB_FILE)
    db.executescript(OLD_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION + 1};")
    db.close()
    with pytest.raises(EnvironmentProblem) as e:
        Service(str(tmp_path / "state"), s3=False, agents=False)
    assert DB_FILE in str(e.value) and "newer" in str(e.value)
    db = sqlite3.connect(folder / DB_FILE)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()
