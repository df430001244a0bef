"""The blue/green rules of the local service (agent.service.bluegreen), as values: the group and deployment
checks with the model's error names, the phases' view of instance statuses, ContinueDeployment's checks.
The flow itself, with instances and a load balancer, is tests/test_blue_green.py."""
from __future__ import annotations

import pytest

from agent.service import bluegreen

LB = {"targetGroupInfoList": [{"name": "web-tg"}]}
STYLE = {"deploymentType": "BLUE_GREEN", "deploymentOption": "WITH_TRAFFIC_CONTROL"}
CONFIG = {"terminateBlueInstancesOnDeploymentSuccess": {"action": "KEEP_ALIVE"},
          "deploymentReadyOption": {"actionOnTimeout": "CONTINUE_DEPLOYMENT"},
          "greenFleetProvisioningOption": {"action": "DISCOVER_EXISTING"}}


def group(**changes: object) -> dict:
    return {"deploymentStyle": STYLE, "loadBalancerInfo": LB, "blueGreenDeploymentConfiguration": CONFIG, **changes}


def test_a_complete_blue_green_group_and_an_in_place_one_pass():
    assert bluegreen.check_group(group()) is None
    assert bluegreen.check_group({"deploymentStyle": {"deploymentType": "IN_PLACE",
                                                      "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"}}) is None


@pytest.mark.parametrize(("changes", "error", "says"), [
    ({"deploymentStyle": {"deploymentType": "SIDEWAYS"}}, "InvalidDeploymentStyleException", "IN_PLACE or BLUE_GREEN"),
    ({"deploymentStyle": {**STYLE, "deploymentOption": "WITHOUT_TRAFFIC_CONTROL"}}, "InvalidDeploymentStyleException",
     "WITH_TRAFFIC_CONTROL"),
    ({"loadBalancerInfo": {}}, "InvalidLoadBalancerInfoException", "needs a load balancer"),
    ({"blueGreenDeploymentConfiguration": None}, "InvalidBlueGreenDeploymentConfigurationException",
     "needs a blueGreenDeploymentConfiguration"),
    ({"blueGreenDeploymentConfiguration": {**CONFIG, "terminateBlueInstancesOnDeploymentSuccess": {
        "action": "TERMINATE", "terminationWaitTimeInMinutes": 2881}}},
     "InvalidBlueGreenDeploymentConfigurationException", "from 0 to 2880"),
    ({"blueGreenDeploymentConfiguration": {**CONFIG, "deploymentReadyOption": {
        "actionOnTimeout": "STOP_DEPLOYMENT", "waitTimeInMinutes": -1}}},
     "InvalidBlueGreenDeploymentConfigurationException", "waitTimeInMinutes"),
    ({"blueGreenDeploymentConfiguration": {**CONFIG, "greenFleetProvisioningOption": {"action": "BORROW"}}},
     "InvalidBlueGreenDeploymentConfigurationException", "DISCOVER_EXISTING, COPY_AUTO_SCALING_GROUP"),
])
def test_bad_groups_get_the_model_s_error(changes, error, says):
    problem = bluegreen.check_group(group(**changes))
    assert problem is not None and problem[0] == error and says in problem[1], problem


def test_target_instances_are_required_for_discover_existing_and_refused_in_place():
    tags = {"tagFilters": [{"Key": "Fleet", "Value": "green", "Type": "KEY_AND_VALUE"}]}
    assert bluegreen.check_deployment(group(), tags) is None
    assert bluegreen.check_deployment(group(), {"autoScalingGroups": ["green-asg"]}) is None
    missing = bluegreen.check_deployment(group(), None)
    assert missing is not None and missing[0] == "InvalidTargetInstancesException"
    in_place = bluegreen.check_deployment({"deploymentStyle": {"deploymentType": "IN_PLACE"}}, tags)
    assert in_place is not None and in_place[0] == "InvalidTargetInstancesException"
    assert bluegreen.check_deployment({"deploymentStyle": {"deploymentType": "IN_PLACE"}}, None) is None


def test_copy_auto_scaling_group_needs_the_group_s_auto_scaling_group_and_no_target_instances():
    config = {**CONFIG, "greenFleetProvisioningOption": {"action": "COPY_AUTO_SCALING_GROUP"}}
    copy = group(blueGreenDeploymentConfiguration=config, autoScalingGroups=[{"name": "web-asg"}])
    assert bluegreen.check_group(copy) is None
    assert bluegreen.check_deployment(copy, None) is None
    named = bluegreen.check_deployment(copy, {"tagFilters": [{"Key": "Fleet", "Value": "green"}]})
    assert named is not None and named[0] == "InvalidTargetInstancesException"
    none = bluegreen.check_deployment(group(blueGreenDeploymentConfiguration=config), None)
    assert none is not None and none[0] == "InvalidAutoScalingGroupException"


def test_ready_greens_are_done_while_installing_and_yet_to_start_while_rerouting():
    statuses = [("g1", "Ready"), ("g2", "InProgress"), ("g3", "Failed")]
    assert bluegreen.plan_statuses(statuses, "install") == [("g1", "Succeeded"), ("g2", "InProgress"),
                                                            ("g3", "Failed")]
    assert bluegreen.plan_statuses(statuses, "reroute") == [("g1", "Pending"), ("g2", "InProgress"),
                                                            ("g3", "Failed")]


def test_each_instance_runs_its_side_of_the_switch():
    assert [e["lifecycleEventName"] for e in bluegreen.pending_events("Blue")] == [
        "BeforeBlockTraffic", "BlockTraffic", "AfterBlockTraffic"]
    assert [e["lifecycleEventName"] for e in bluegreen.pending_events("Green")][-4:] == [
        "ValidateService", "BeforeAllowTraffic", "AllowTraffic", "AfterAllowTraffic"]
    assert bluegreen.wait_after("Green") == {"ValidateService": "Reroute", "BeforeAllowTraffic": "AllowTraffic"}
    assert bluegreen.wait_after("Green", reroute_only=True) == {"BeforeAllowTraffic": "AllowTraffic"}
    assert bluegreen.agent_events("Green", reroute_only=True) == ("BeforeAllowTraffic", "AfterAllowTraffic")


@pytest.mark.parametrize(("phase", "wait_type", "error"), [
    ("ready", "READY_WAIT", None), ("termination-wait", "TERMINATION_WAIT", None),
    ("install", "READY_WAIT", "DeploymentIsNotInReadyStateException"),
    ("ready", "TERMINATION_WAIT", "DeploymentNotStartedException"),
    ("ready", "SOON", "InvalidDeploymentWaitTypeException"),
])
def test_continue_deployment_acts_only_in_its_wait(phase, wait_type, error):
    doc = {"deploymentId": "d-ABCDEFGHI", "status": "Ready" if phase == "ready" else "InProgress", "_phase": phase}
    problem = bluegreen.continue_problem(doc, wait_type)
    assert (problem[0] if problem else None) == error


def test_an_original_instance_runs_exactly_its_two_hooks_from_the_last_successful_revision(tmp_path):
    """What the runner asks of the sequencer on a blue instance (``service_events``, the daemon's way): the
    two events only, no DownloadBundle or Install (the bundle named does not even exist), their scripts
    from the group's last successful revision (spec §4.2)."""
    import agent

    bundle = tmp_path / "v1"
    bundle.mkdir()
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n" + "".join(
        f"  {e}:\n    - location: note.sh\n" for e in ("BeforeBlockTraffic", "AfterBlockTraffic")))
    note = tmp_path / "ran.log"
    (bundle / "note.sh").write_text(f'#!/bin/sh\necho "v1 $LIFECYCLE_EVENT" >> {note}\n')
    (bundle / "note.sh").chmod(0o755)
    cfg = agent.AgentConfig(root_dir=str(tmp_path / "root"), log_dir=str(tmp_path / "log"))
    first = agent.deploy(agent.DeploymentRequest(agent.LocalRevision(str(bundle), "directory"), cfg))
    assert first.succeeded, first.error
    assert not note.exists()   # the group's first deployment: no previous revision, no-ops (spec §4.2)
    records: list[dict] = []
    blue = agent.deploy(agent.DeploymentRequest(
        agent.LocalRevision(str(tmp_path / "no-such-bundle"), "directory"), cfg, deployment_type="BLUE_GREEN",
        service_events=bluegreen.BLUE_AGENT_EVENTS), listeners=[records.append])
    assert blue.succeeded, blue.error
    assert [r["event"] for r in records if r["type"] == "event.start"] == ["BeforeBlockTraffic", "AfterBlockTraffic"]
    assert note.read_text() == "v1 BeforeBlockTraffic\nv1 AfterBlockTraffic\n"
