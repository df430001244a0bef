"""One deployment on one machine, for an agent: ``python -m agent.service.runner SPEC_JSON``.

The agent starts this inside the instance (or on the host for a host agent). It runs the engine of
``agent.sequencer`` and writes the instance's lifecycle events, as the service reports them, to stdout:
one JSON object per line, ``{"lifecycleEvents": [...]}`` after every change and finally
``{"status": "Succeeded"|"Failed", "lifecycleEvents": [...]}``. Diagnostics are shaped as the
service's: errorCode, scriptName, message and the §7.8 log tail of the failing event.

The spec names the fetched bundle (``bundle``, ``bundleType``) and the revision it was fetched from
(``fetchedFrom``, ``agent.revision.to_record``), whose ``BUNDLE_*`` variables the engine gives hooks.
With ``ignoreApplicationStopFailures`` a failed ApplicationStop is reported Failed and the deployment
goes on from the next event, as the service's option does (the engine's
``DeploymentRequest.ignore_application_stop_failures``, which `cdsim deploy` uses too).
With ``trafficControl`` the runner stops after a successful BeforeBlockTraffic and BeforeAllowTraffic,
prints ``{"lifecycleEvents": [...], "waitFor": "BlockTraffic"|"AllowTraffic"}`` and reads one line on
stdin: ``go`` goes on, anything else (the service's event failed) ends the deployment there.
A blue/green instance's spec names its events (``events``: the service's order, run exactly, no
DownloadBundle added: ``agent.service.bluegreen``) and where to stop and ask (``waitAfter``: event -> the
step waited for, e.g. a replacement instance's ``Reroute`` after ValidateService).
Imports the engine; nothing imports this.
"""
from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from agent.service.engine import LIFECYCLE_EVENTS
from agent.service.shapes import JsonObject, RunnerSpec
from agent.state import AGENT_LOG_DIR, AGENT_ROOT_DIR

# ScriptError codes (§7.7) as the service names them (LifecycleErrorCode); looked up with whatever a
# hook.end record holds (an int, or None when the hook has no code)
ERROR_CODES: dict[object, str] = {0: "Success", 1: "ScriptMissing", 2: "ScriptNotExecutable",
                                  3: "ScriptTimedOut", 4: "ScriptFailed", 5: "UnknownError", 6: "ScriptFailed",
                                  7: "UnknownError"}


# the service's own traffic events, and the agent event each follows (agent.service.traffic.AFTER)
TRAFFIC_AFTER = {"BeforeBlockTraffic": "BlockTraffic", "BeforeAllowTraffic": "AllowTraffic"}


class TrafficStopped(Exception):
    """The service's BlockTraffic or AllowTraffic failed: the deployment ends here."""


class Tracker:
    """Turns the engine's event stream into the service's lifecycle events."""

    def __init__(self, out: TextIO | None = None, *, gate: TextIO | None = None,
                 events: tuple[str, ...] = LIFECYCLE_EVENTS, wait_after: dict[str, str] | None = None) -> None:
        from hooks_runtime.output import DiagnosticTail

        self._tail_class = DiagnosticTail
        self.gate = gate    # traffic control: where the agent says whether to go on
        self.wait_after = TRAFFIC_AFTER if wait_after is None else wait_after
        self.out = out or sys.stdout
        self.events: dict[str, JsonObject] = {e: {"lifecycleEventName": e, "status": "Pending"}
                                              for e in events}
        self.tail = DiagnosticTail()
        self.failed_hook: JsonObject | None = None
        self.marker: str | None = None   # the group's <group>_last_successful_install, once known

    def send(self, **extra: str) -> None:
        self.out.write(json.dumps({"lifecycleEvents": list(self.events.values()), **extra}) + "\n")
        self.out.flush()

    def on_output(self, line: str) -> None:
        self.tail.append(line)

    def on_record(self, r: JsonObject) -> None:
        t = r["type"]
        if t == "event.start":
            self.tail = self._tail_class()
            self.failed_hook = None
            self.events[r["event"]] = {"lifecycleEventName": r["event"], "status": "InProgress",
                                       "startTime": r["time"]}
            self.send()
        elif t == "hook.start" and r.get("previous_revision"):
            # cdsim's own key (the AWS CLI ignores it; `cdsim wait` prints it): the script is the last
            # successful revision's, not this deployment's (spec §4.2)
            self.events[r["event"]]["cdsimScriptRevision"] = {
                "deploymentId": r.get("revision_deployment_id"), "archive": r.get("revision_archive"),
                "appspec": r.get("revision_appspec"), "marker": self.marker}
        elif t == "hook.end" and r.get("status") == "Failed":
            self.failed_hook = r
        elif t == "event.end":
            e = self.events.setdefault(r["event"], {"lifecycleEventName": r["event"], "startTime": r["time"]})
            e.update(status=r["status"], endTime=r["time"])
            if r.get("ignored"):
                e["cdsimIgnored"] = True   # ignoreApplicationStopFailures: failed, and the deployment went on
            if r["status"] == "Succeeded":
                e["diagnostics"] = {"errorCode": "Success", "scriptName": "", "message": "Succeeded",
                                    "logTail": ""}
            elif self.failed_hook is not None:
                h = self.failed_hook
                e["diagnostics"] = {"errorCode": ERROR_CODES.get(h.get("error_code"), "UnknownError"),
                                    "scriptName": h.get("location") or "", "message": h.get("message") or "",
                                    "logTail": self.tail.text()}
            else:
                e["diagnostics"] = {"errorCode": "UnknownError", "scriptName": "",
                                    "message": r.get("error") or "", "logTail": ""}
            self.send()
            if self.gate is not None and r["status"] == "Succeeded" and r["event"] in self.wait_after:
                self.wait_for(self.wait_after[r["event"]])

    def wait_for(self, step: str) -> None:
        """Stop until the agent says the service's ``step`` is done."""
        self.send(waitFor=step)
        if self.gate is None or self.gate.readline().strip() != "go":
            raise TrafficStopped(f"{step} failed")

    def finish(self, succeeded: bool) -> None:
        for e in self.events.values():
            if e["status"] == "Pending":
                e["status"] = "Skipped"
        self.send(status="Succeeded" if succeeded else "Failed")


def run(spec: RunnerSpec, out: TextIO | None = None) -> bool:
    from agent.config import config_from_mapping
    from agent.revision import LocalRevision, from_record
    from agent.sequencer import DeploymentRequest, deploy

    events = tuple(spec.get("events") or ()) or None
    tracker = Tracker(out, gate=sys.stdin if spec.get("trafficControl") else None,
                      events=events or LIFECYCLE_EVENTS, wait_after=spec.get("waitAfter"))
    config = config_from_mapping({"root_dir": spec.get("rootDir") or AGENT_ROOT_DIR,
                                  "log_dir": spec.get("logDir") or AGENT_LOG_DIR})
    from hooks_runtime.environment import service_environment
    env = service_environment()   # the agent service's environment (spec §7.3), cwd / below

    request = DeploymentRequest(
        revision=LocalRevision(spec["bundle"], spec["bundleType"]), config=config,
        fetched_from=from_record(spec["fetchedFrom"]),
        deployment_group_id=spec["deploymentGroupId"], deployment_group_name=spec["deploymentGroupName"],
        application_name=spec["applicationName"], events=None,
        file_exists_behavior=(spec.get("fileExistsBehavior") or "DISALLOW").upper(),
        deployment_id=spec["deploymentId"], cwd="/", base_env=env,
        deployment_creator=spec.get("creator") or "user",
        deployment_type=spec.get("deploymentType") or "IN_PLACE",
        service_events=events,
        ignore_application_stop_failures=bool(spec.get("ignoreApplicationStopFailures")))
    from agent.deployment_root import DeploymentRoot
    tracker.marker = DeploymentRoot(config.root_dir, spec["deploymentGroupId"]).last_successful_marker
    result = deploy(request, listeners=[tracker.on_record], on_output=tracker.on_output)
    tracker.finish(result.succeeded)
    return result.succeeded


def main(argv: list[str]) -> int:
    spec: RunnerSpec = json.loads(argv[0])   # written by agent_loop.Agent._spec
    started = time.time()
    try:
        ok = run(spec)
    except TrafficStopped as e:   # the service has failed the instance already; it ignores this report
        print(json.dumps({"status": "Failed", "error": str(e), "started": started}), flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - the agent must hear of any failure, as the service would
        print(json.dumps({"status": "Failed", "error": f"{type(e).__name__}: {e}", "started": started}),
              flush=True)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
