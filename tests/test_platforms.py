"""Amazon ECS and AWS Lambda appspecs: `cdsim validate` recognises and checks them (agent.appspec_platforms),
`cdsim schema --platform ecs|lambda` describes them, and `cdsim deploy`/`cdsim local` refuse them.

The corpus (tests/data/appspecs/) holds the CodeDeploy User Guide's examples, YAML and JSON: each validates
clean. Each rule is attacked by one mutation of a corpus file, which must give exactly one finding, of the
rule's code, at the line and column marked in the mutation ('|' in ANCHOR).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agent import appspec as A
from agent import appspec_platforms as P
from agent.errors import AppSpecError, ExitStatus, UnsupportedPlatform
from agent.lint import validate_bundle
from tests import lib

CORPUS = Path(__file__).parent / "data" / "appspecs"
CORPUS_FILES = sorted(p.name for p in CORPUS.iterdir())


def position(text: str, anchor: str) -> tuple[int, int]:
    """1-based (line, column) of the '|' in ``anchor``, found in ``text`` (once)."""
    bare = anchor.replace("|", "")
    assert text.count(bare) == 1, f"anchor {bare!r} is not unique in the mutated text"
    at = text.index(bare) + anchor.index("|")
    return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1


# ---------------------------------------------------------------------------------------------------
# The corpus


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_every_documented_example_validates_clean(name):
    """The User Guide's ECS and Lambda examples (YAML and JSON): no finding, and the model holds their values."""
    assert validate_bundle(str(CORPUS / name)) == []
    spec = P.parse_platform_appspec((CORPUS / name).read_bytes(), name)
    assert spec.platform == name.split("-")[0]


def test_the_model_holds_the_ecs_example():
    spec = P.parse_platform_appspec((CORPUS / "ecs-example.json").read_bytes(), "ecs-example.json")
    assert spec.resource == P.EcsService(
        "TargetService", "arn:aws:ecs:us-east-1:111222333444:task-definition/my-task-definition-family-name:1",
        "SampleApplicationName", 80, "LATEST",
        P.AwsvpcConfiguration(("subnet-1234abcd", "subnet-5678abcd"), ("sg-12345678",), "ENABLED"),
        (P.CapacityProviderItem("FARGATE_SPOT", 1, 2), P.CapacityProviderItem("FARGATE", 0, 1)))
    assert [h.event for h in spec.hooks] == list(P.HOOK_EVENTS[P.ECS])


def test_the_model_holds_the_lambda_reference_with_lower_case_keys():
    spec = P.parse_platform_appspec((CORPUS / "lambda-reference.yaml").read_bytes())
    assert spec.resource == P.LambdaFunction("my-function", "my-function", "live", 3, 4)
    assert [(h.event, h.function) for h in spec.hooks] == [
        ("BeforeAllowTraffic", "BeforeAllowTrafficHookFunctionName"),
        ("AfterAllowTraffic", "AfterAllowTrafficHookFunctionName")]


def test_a_bundle_folder_with_appspec_yaml_only_is_fine_for_ecs(tmp_path):
    """ECS pipelines name it appspec.yaml: the EC2 agent's "appspec.yaml without appspec.yml" error
    does not apply, and the folder's other files are not a bundle to check."""
    (tmp_path / "appspec.yaml").write_bytes((CORPUS / "ecs-example.yaml").read_bytes())
    (tmp_path / "taskdef.json").write_text("{}")
    assert validate_bundle(str(tmp_path)) == []


def test_the_cli_says_valid_and_exits_0():
    proc = lib.cdsim("validate", "--format", "json", CORPUS / "lambda-example.json")
    assert proc.returncode == ExitStatus.SUCCESS, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert (out["valid"], out["errors"], out["warnings"]) == (True, 0, 0)


# ---------------------------------------------------------------------------------------------------
# One mutation per rule

# (id, corpus file, old text, new text, severity, code, ANCHOR: where the finding is, at '|')
MUTATIONS = [
    # ECS: types and values
    ("container-port-string", "ecs-example.yaml", "ContainerPort: 80", 'ContainerPort: "80"',
     "error", "wrong-type", 'ContainerPort: |"80"'),
    ("container-port-range", "ecs-example.yaml", "ContainerPort: 80", "ContainerPort: 70000",
     "error", "invalid-value", "ContainerPort: |70000"),
    ("container-port-json-string", "ecs-example.json", '"ContainerPort": 80', '"ContainerPort": "80"',
     "error", "wrong-type", '"ContainerPort": |"80"'),
    ("assign-public-ip-case", "ecs-example.yaml", 'AssignPublicIp: "ENABLED"', "AssignPublicIp: enabled",
     "error", "invalid-value", "AssignPublicIp: |enabled"),
    ("assign-public-ip-boolean", "ecs-example.json", '"AssignPublicIp": "ENABLED"', '"AssignPublicIp": true',
     "error", "invalid-value", '"AssignPublicIp": |true'),
    ("subnets-not-a-list", "ecs-example.yaml", 'Subnets: ["subnet-1234abcd","subnet-5678abcd"]',
     'Subnets: "subnet-1234abcd,subnet-5678abcd"', "error", "wrong-type", 'Subnets: |"subnet-1234abcd,'),
    ("subnets-empty", "ecs-example.yaml", 'Subnets: ["subnet-1234abcd","subnet-5678abcd"]', "Subnets: []",
     "error", "invalid-value", "Subnets: |[]"),
    ("security-groups-over-the-limit", "ecs-example.yaml", 'SecurityGroups: ["sg-12345678"]',
     'SecurityGroups: ["sg-1", "sg-2", "sg-3", "sg-4", "sg-5", "sg-6"]', "error", "invalid-value",
     '|"sg-6"'),
    ("network-all-or-none", "ecs-example.yaml", '            AssignPublicIp: "ENABLED"\n', "",
     "error", "missing-property", "|AwsvpcConfiguration:"),
    ("two-capacity-providers-with-base", "ecs-example.yaml", "- Base: 0", "- Base: 3",
     "error", "invalid-value", "- Base: |3"),
    ("capacity-weight-range", "ecs-example.yaml", "Weight: 2", "Weight: 5000",
     "error", "invalid-value", "Weight: |5000"),
    ("capacity-provider-missing", "ecs-example.yaml", '            CapacityProvider: "FARGATE"\n', "",
     "error", "missing-property", "- |Base: 0"),
    ("task-definition-missing", "ecs-example.yaml", "        TaskDefinition: ", "        # TaskDefinition: ",
     "error", "missing-property", "      |Properties:"),
    ("container-name-misspelt", "ecs-example.yaml", "ContainerName:", "ContainerNme:",
     "error", "unknown-key", "|ContainerNme:"),
    ("optional-key-misspelt", "ecs-example.yaml", "PlatformVersion:", "PlatfromVersion:",
     "warning", "unknown-key", "|PlatfromVersion:"),
    ("task-definition-not-an-arn", "ecs-example.json",
     '"arn:aws:ecs:us-east-1:111222333444:task-definition/my-task-definition-family-name:1"', '"my-family"',
     "warning", "task-definition-not-arn", '"TaskDefinition": |"my-family"'),
    ("resource-type", "ecs-example.yaml", "Type: AWS::ECS::Service", "Type: AWS::ECS::Servce",
     "error", "invalid-value", "Type: |AWS::ECS::Servce"),
    ("resources-a-mapping", "lambda-example.yaml", "  - myLambdaFunction:", "    myLambdaFunction:",
     "error", "wrong-type", "    |myLambdaFunction:"),
    ("version", "ecs-example.yaml", "version: 0.0", "version: 1.0", "error", "invalid-version", "version: |1.0"),
    ("version-missing", "lambda-example.yaml", "version: 0.0\n", "", "error", "missing-property", "|Resources:"),
    ("top-level-key-misspelt", "ecs-example.yaml", "Hooks:", "Hook:", "warning", "unknown-key", "|Hook:"),
    ("key-twice-in-two-cases", "lambda-reference.yaml", "        alias: live\n",
     "        alias: live\n        Alias: live\n", "warning", "duplicate-key", "|Alias: live"),
    ("yaml-alias", "lambda-reference.yaml", "        name: my-function\n        alias: live\n",
     "        name: &n my-function\n        alias: *n\n", "error", "yaml-alias", "alias: |*n"),
    # hooks
    ("ecs-event-misspelt", "ecs-example.yaml", "- AfterAllowTestTraffic:", "- AfterAllowTestTrafic:",
     "error", "unknown-lifecycle-event", "- |AfterAllowTestTrafic:"),
    ("ecs-event-in-a-lambda-appspec", "lambda-example.yaml", "- BeforeAllowTraffic:", "- BeforeInstall:",
     "error", "unknown-lifecycle-event", "- |BeforeInstall:"),
    ("ec2-event-in-an-ecs-appspec", "ecs-example.json", '"AfterInstall":', '"ApplicationStart":',
     "error", "unknown-lifecycle-event", '|"ApplicationStart":'),
    ("event-twice", "ecs-example.yaml", '- AfterInstall: "LambdaFunctionToValidateAfterInstall"',
     '- BeforeInstall: "LambdaFunctionToValidateAfterInstall"', "error", "hook-duplicate",
     '- |BeforeInstall: "LambdaFunctionToValidateAfterInstall"'),
    ("hooks-as-a-mapping", "lambda-example.yaml", "  - BeforeAllowTraffic: \"LambdaFunctionToValidateBefore"
     "TrafficShift\"\n  - AfterAllowTraffic:", "  BeforeAllowTraffic: \"LambdaFunctionToValidateBeforeTraffic"
     "Shift\"\n  AfterAllowTraffic:", "error", "wrong-type", "  |BeforeAllowTraffic:"),
    ("hook-function-not-a-string", "lambda-example.yaml",
     '- AfterAllowTraffic: "LambdaFunctionToValidateAfterTrafficShift"', "- AfterAllowTraffic: [f]",
     "error", "wrong-type", "- AfterAllowTraffic: |[f]"),
    # Lambda
    ("same-version", "lambda-example.yaml", 'TargetVersion: "2"', 'TargetVersion: "1"',
     "error", "same-version", 'TargetVersion: |"1"'),
    ("same-version-lower-case", "lambda-reference.yaml", "targetversion: 4", "targetversion: 3",
     "error", "same-version", "targetversion: |3"),
    ("version-not-a-number", "lambda-example.json", '"CurrentVersion": "1"', '"CurrentVersion": "one"',
     "error", "wrong-type", '"CurrentVersion": |"one"'),
    ("version-not-positive", "lambda-example.yaml", 'CurrentVersion: "1"', 'CurrentVersion: "0"',
     "error", "invalid-value", 'CurrentVersion: |"0"'),
    ("alias-missing", "lambda-example.yaml", '        Alias: "myLambdaFunctionAlias"\n', "",
     "error", "missing-property", "      |Properties:"),
    ("name-empty", "lambda-tutorial.yaml", 'Name: "my-date-time-app-myDateTimeFunction-1B8A9IEXAMPLE"',
     'Name: ""', "error", "invalid-value", 'Name: |""'),
    ("lambda-type-misspelt", "lambda-example.json", '"AWS::Lambda::Function"', '"AWS::Lambda::Funtion"',
     "error", "invalid-value", '"Type": |"AWS::Lambda::Funtion"'),
    ("json-syntax", "lambda-example.json", '"Alias": "myLambdaFunctionAlias",', '"Alias": "myLambdaFunctionAlias"',
     "error", "json-syntax", '|"CurrentVersion"'),
]


@pytest.mark.parametrize(("base", "old", "new", "severity", "code", "anchor"),
                         [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_one_mutation_gives_one_finding_at_its_place(tmp_path, base, old, new, severity, code, anchor):
    text = (CORPUS / base).read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {base}"
    mutated = text.replace(old, new)
    path = tmp_path / base
    path.write_text(mutated)
    findings = validate_bundle(str(path))
    assert len(findings) == 1, "\n".join(f.render() for f in findings)
    f = findings[0]
    assert (f.severity, f.code) == (severity, code), f.render()
    assert (f.file, f.line, f.column) == (str(path), *position(mutated, anchor)), f.render()


def test_every_rule_has_a_mutation_and_a_description():
    """CODES (for rule tables) names every code the mutations produce, and each of its codes is attacked
    by a mutation above."""
    produced = {m[5] for m in MUTATIONS}
    assert produced <= set(P.CODES)
    assert set(P.CODES) == produced


def test_misspellings_get_did_you_mean(tmp_path):
    text = (CORPUS / "ecs-example.yaml").read_text()
    cases = {"ContainerName:": ("ContainerNme:", "did you mean ContainerName?"),
             "- AfterAllowTestTraffic:": ("- AfterAllowTestTrafic:", "did you mean AfterAllowTestTraffic?"),
             'AssignPublicIp: "ENABLED"': ("AssignPublicIp: enabled", "did you mean ENABLED?"),
             "Type: AWS::ECS::Service": ("Type: AWS::ECS::Servce", "did you mean AWS::ECS::Service?")}
    for old, (new, hint) in cases.items():
        path = tmp_path / "appspec.yaml"
        path.write_text(text.replace(old, new))
        (finding,) = validate_bundle(str(path))
        assert finding.hint and finding.hint.startswith(hint), finding.render()


def test_a_lambda_hook_on_an_ecs_event_names_the_platform(tmp_path):
    path = tmp_path / "appspec.yaml"
    path.write_text((CORPUS / "lambda-example.yaml").read_text().replace("- BeforeAllowTraffic:", "- AfterInstall:"))
    (finding,) = validate_bundle(str(path))
    assert "AfterInstall is not a lifecycle event of AWS Lambda deployments" in finding.message
    assert finding.hint == "AfterInstall is an event of Amazon ECS deployments"


def test_an_appspec_whose_kind_cannot_be_told_says_what_type_is_missing(tmp_path):
    path = tmp_path / "appspec.yaml"
    path.write_text("version: 0.0\nResources:\n  - Target:\n      Properties: {}\n")
    findings = validate_bundle(str(path))
    assert [(f.code, f.line, f.column) for f in findings] == [("missing-property", 3, 5)], findings
    assert "has no Type" in findings[0].message


def test_a_yaml_syntax_error_is_reported_once_at_its_place(tmp_path):
    path = tmp_path / "appspec.yaml"
    path.write_text((CORPUS / "ecs-example.yaml").read_text().replace("ContainerPort: 80", "ContainerPort: [80"))
    (finding,) = validate_bundle(str(path))
    assert finding.code == "yaml-syntax" and finding.line is not None


# ---------------------------------------------------------------------------------------------------
# EC2 appspecs are what they were


def test_an_ec2_appspec_without_os_still_gets_the_agents_message(tmp_path):
    (tmp_path / "appspec.yml").write_text("version: 0.0\nfiles:\n  - source: /\n    destination: /tmp/x\n")
    (finding,) = [f for f in validate_bundle(str(tmp_path)) if f.severity == "error"]
    assert finding.code == "unsupported-os" and "unsupported operating system" in finding.message


def test_ec2_hooks_written_with_a_capital_h_still_get_the_ec2_hint(tmp_path):
    (tmp_path / "appspec.yml").write_text("version: 0.0\nos: linux\nHooks:\n  BeforeInstall:\n    - location: x\n")
    (finding,) = validate_bundle(str(tmp_path))
    assert (finding.code, finding.hint) == ("unknown-key", "did you mean hooks? (keys are case-sensitive)")


@pytest.mark.parametrize("text", ["version: 0.0\nos: linux\n", "version: 0.0\nhooks:\n  - ApplicationStart: x\n",
                                  "version: 0.0\nhooks:\n  - BeforeInstall:\n      - location: x.sh\n",
                                  "- Resources\n", "Resources\n", ""])
def test_detection_leaves_ec2_and_odd_documents_alone(text):
    root = A.compose_appspec(text)
    assert A.detect_platform(root) is None


# ---------------------------------------------------------------------------------------------------
# cdsim schema --platform


@pytest.mark.parametrize("platform", P.PLATFORMS)
def test_schema_accepts_the_examples_and_refuses_a_string_port(platform):
    import jsonschema

    proc = lib.cdsim("schema", "--platform", platform)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for name in CORPUS_FILES:
        if name.startswith(platform) and name != "lambda-reference.yaml":   # lower-case keys: validate only
            text = (CORPUS / name).read_text()
            doc = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            assert not list(validator.iter_errors(doc)), name
    doc = yaml.safe_load((CORPUS / f"{platform}-example.yaml").read_text())
    props = doc["Resources"][0][next(iter(doc["Resources"][0]))]["Properties"]
    if platform == "ecs":
        props["LoadBalancerInfo"]["ContainerPort"] = "80"
    else:
        props["Alias"] = 7
    assert list(validator.iter_errors(doc))
    if platform == "lambda":
        props["Alias"], props["CurrentVersion"] = "live", "0"
        assert [e.validator for e in validator.iter_errors(doc)] == ["pattern"]


def test_schema_of_the_server_platform_is_the_shipped_one():
    proc = lib.cdsim("schema", "--platform", "server")
    assert json.loads(proc.stdout) == json.loads((lib.REPO / "agent" / "appspec.schema.json").read_text())


# ---------------------------------------------------------------------------------------------------
# Deploying one: refused, with one message and its own exit status, before anything runs


def test_deploy_refuses_an_ecs_appspec_before_anything_runs(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "appspec.yml").write_bytes((CORPUS / "ecs-example.yaml").read_bytes())
    proc = lib.cdsim("deploy", "--host", "--root-dir", tmp_path / "root", bundle, state=tmp_path / "state")
    assert proc.returncode == ExitStatus.UNSUPPORTED_PLATFORM == 8, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("this is an Amazon ECS appspec") == 1, proc.stderr
    assert f"{bundle}/appspec.yml:2:1" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_local_refuses_a_lambda_appspec(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "appspec.yaml").write_bytes((CORPUS / "lambda-example.yaml").read_bytes())
    conf = tmp_path / "agent.yml"
    conf.write_text(f"root_dir: {tmp_path / 'root'}\nlog_dir: {tmp_path / 'log'}\n")
    proc = lib.cdsim("local", "--bundle-location", bundle, "--type", "directory",
                     "--agent-configuration-file", conf, state=tmp_path / "state")
    assert proc.returncode == ExitStatus.UNSUPPORTED_PLATFORM, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"ERROR: {bundle}/appspec.yaml:2:1: this is an AWS Lambda appspec (Resources, no os): cdsim deploys "
        "EC2/On-Premises appspecs only; check this one with cdsim validate"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "root").exists()


def test_the_parser_refuses_it_too_for_archives_and_the_service():
    """An archive's appspec is read only once unpacked: the parser refuses it there, same error."""
    with pytest.raises(UnsupportedPlatform) as e:
        A.parse_appspec((CORPUS / "ecs-example.json").read_bytes(), "appspec.yml")
    assert e.value.exit_status == ExitStatus.UNSUPPORTED_PLATFORM
    assert isinstance(e.value, AppSpecError) and e.value.code == "unsupported-platform"


def test_a_folder_with_appspec_json_only_points_at_the_file(tmp_path):
    (tmp_path / "appspec.json").write_bytes((CORPUS / "lambda-example.json").read_bytes())
    (finding,) = validate_bundle(str(tmp_path))
    assert finding.code == "appspec-not-found"
    assert finding.hint == ("an Amazon ECS or AWS Lambda appspec may be JSON: name the file, cdsim validate "
                            f"{tmp_path}/appspec.json")
    assert validate_bundle(str(tmp_path / "appspec.json")) == []


# ---------------------------------------------------------------------------------------------------
# Hostile input: any document of these keys gives findings, never an exception, each inside the file

PLATFORM_KEYS = ["version", "Resources", "resources", "Hooks", "TargetService", "Type", "Properties",
                 "TaskDefinition", "LoadBalancerInfo", "ContainerName", "ContainerPort", "PlatformVersion",
                 "NetworkConfiguration", "AwsvpcConfiguration", "Subnets", "SecurityGroups", "AssignPublicIp",
                 "CapacityProviderStrategy", "CapacityProvider", "Base", "Weight", "Name", "Alias",
                 "CurrentVersion", "TargetVersion", "BeforeInstall", "AfterAllowTraffic", "ApplicationStart", "x"]


def test_random_documents_never_raise(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.sampled_from(["0.0", "AWS::ECS::Service", "AWS::Lambda::Function", "ENABLED", "1",
                                         "<TASK_DEFINITION>", ""]), st.text(max_size=12))
    docs = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(PLATFORM_KEYS), inner, max_size=4)),
        max_leaves=25)

    @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.sampled_from(PLATFORM_KEYS), docs, max_size=4), st.booleans())
    def run(doc, as_json):
        doc.setdefault("Resources", [])
        text = json.dumps(doc, indent=1) if as_json else yaml.safe_dump(doc, allow_unicode=True)
        path = tmp_path / ("appspec.json" if as_json else "appspec.yaml")
        path.write_text(text)
        lines = text.count("\n") + 1
        for f in validate_bundle(str(path)):
            assert f.severity in ("error", "warning") and f.message, f
            assert f.line is None or 1 <= f.line <= lines, f.render()

    run()


@pytest.mark.parametrize("name", [n for n in CORPUS_FILES if n.endswith(".json")])
def test_json_with_tabs_reads_the_same_without_libyaml(monkeypatch, name):
    """PyYAML's pure-Python reader refuses the tabs the guide's JSON example is indented with: valid
    JSON is read with each tab as one space, so lines and columns stay the same."""
    data = (CORPUS / name).read_bytes()
    old, new = {"lambda-example.json": (b'"CurrentVersion": "1"', b'"CurrentVersion": "one"'),
                "ecs-example.json": (b'"ContainerPort": 80', b'"ContainerPort": "80"')}[name]
    bad = data.replace(old, new)
    with_libyaml = P.platform_problems(bad, name)[2]
    assert [p.code for p in with_libyaml] == ["wrong-type"]
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    assert P.platform_problems(data, name)[0::2] == (name.split("-")[0], [])
    assert P.platform_problems(bad, name)[2] == with_libyaml


@pytest.mark.parametrize(("text", "platform"), [
    ("version: 0.0\nHooks:\n  - AfterAllowTestTraffic: fn\n", "ecs"),        # an ECS-only event, no Resources
    ("version: 0.0\nHooks:\n  - BeforeAllowTraffic: fn\n", ""),               # either platform's
    ("version: 0.0\nResources:\n  - f:\n      Properties: {Alias: live}\n", "lambda"),
    ("version: 0.0\nResoures:\n  - t:\n      Type: AWS::ECS::Service\n", "ecs"),  # a near miss of Resources
])
def test_detection_by_events_properties_and_near_misses(text, platform):
    assert A.detect_platform(A.compose_appspec(text)) == platform
