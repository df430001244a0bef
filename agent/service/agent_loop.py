"""The cdsim agent: polls a cdsim server for its instance's next command and runs it.

A command is a whole deployment to the instance. The agent fetches the revision onto this machine
(``agent.service.fetch``: S3 from the server's S3, GitHub as ``git archive`` of a local repository
under a configured GitHub root; every revision field is checked again there; not for a blue/green original
instance, whose command runs only hooks of a revision it has), runs
``agent.service.runner`` inside the sandboxed instance (``agent.instance.exec_in``) or, for a host
agent, here, with no ``AWS_*`` variable of its own, and forwards every lifecycle-event update the
runner prints to the server. With traffic control the runner stops before the service's BlockTraffic
and AllowTraffic (a blue/green replacement instance also before the reroute: a ``waitFor`` line): the
agent asks the server (ReportCommand with ``waitFor``) until it answers go or stop, and writes that to
the runner's stdin.
Must not import the server, the API or the engine's store.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from agent.errors import CdsimError, EnvironmentProblem
from agent.revision import to_record
from agent.service import fetch, revisions
from agent.service.auth import Credentials
from agent.service.client import AGENT_PREFIX, call
from agent.service.revisions import RevisionError
from agent.service.shapes import JsonObject, RunnerSpec
from agent.state import machine_log_dir, machine_root_dir
from hooks_runtime.environment import without_aws_variables

WAIT_FOR_LIMIT = 3600.0   # seconds an agent waits for the service's BlockTraffic / AllowTraffic at most
# a blue/green replacement instance waits for the reroute as long as a deployment may stay Ready (2880
# minutes, the model's most), and an hour more
REROUTE_WAIT_LIMIT = (2880 + 60) * 60.0


class Agent:
    """One instance's agent. ``host_root`` set: deploy onto this machine under that deployment root."""

    def __init__(self, endpoint: str, instance: str, *, work_dir: str, state: str | None = None,
                 host_root: str | None = None, poll_interval: float = 0.3, local: bool = False,
                 credentials: Credentials | None = None, github_roots: list[str] | tuple[str, ...] = ()):
        self.endpoint = endpoint
        self.credentials = credentials
        self.github_roots = revisions.github_roots(github_roots)
        self.instance = instance
        self.work_dir = work_dir
        self.state = state
        self.host_root = host_root
        self.poll_interval = poll_interval
        self.local = local
        self.stop_event = threading.Event()

    def _call(self, operation: str, body: JsonObject) -> JsonObject:
        return call(self.endpoint, operation, body, prefix=AGENT_PREFIX, credentials=self.credentials)

    def run(self) -> None:
        """Poll until stopped; errors back off (as the real agent's poll loop does, §8.1, but shorter)."""
        errors = 0
        while not self.stop_event.is_set():
            try:
                command = self._call("PollCommand", {"instanceName": self.instance, "local": self.local})["command"]
                errors = 0
            except CdsimError:
                errors += 1
                self.stop_event.wait(min(0.5 * 2 ** errors, 10))
                continue
            if command:
                try:
                    self.execute(command)
                except Exception as e:  # noqa: BLE001 - an agent outlives any one command
                    print(f"cdsim agent {self.instance}: command {command.get('commandId')} failed: "
                          f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            else:
                self.stop_event.wait(self.poll_interval)

    # -- one command ----------------------------------------------------------------------------
    def execute(self, command: JsonObject) -> None:
        cid = command["commandId"]
        try:
            revisions.check_deployment_id(command.get("deploymentId"))
            revisions.check_group_id(command.get("deploymentGroupId"))
            if not revisions.valid_instance_name(self.instance):
                raise RevisionError(f"the instance name {self.instance!r} is not valid")
        except RevisionError as e:
            self._call("ReportCommand", {"commandId": cid, "status": "Failed", "lifecycleEvents": failed_events(
                None, str(e), "DownloadBundle", command.get("events"))})
            return
        folder = os.path.join(self.work_dir, f"{command['deploymentId']}-{self.instance}")
        os.makedirs(folder, exist_ok=True)
        last: list[JsonObject] = []
        try:
            try:
                spec = self._spec(command, folder)
            except (CdsimError, RevisionError) as e:
                # fetching the revision is DownloadBundle's work: nothing before it ran
                self._call("ReportCommand", {"commandId": cid, "status": "Failed", "lifecycleEvents": failed_events(
                    None, str(e), "DownloadBundle", command.get("events"))})
                return
            final = None
            gate: list[int] = []
            for update in self._run_runner(spec, folder, gate):
                last = update.get("lifecycleEvents") or last
                if "status" in update:
                    final = update
                elif update.get("waitFor"):
                    answer = self._wait_for(cid, str(update["waitFor"]), last)
                    os.write(gate[0], f"{answer}\n".encode())
                else:
                    self._call("ReportCommand", {"commandId": cid, "lifecycleEvents": last})
            if final is None:
                raise EnvironmentProblem("the deployment ended without a result: " + self._stderr_tail(folder))
            if final.get("error"):
                raise EnvironmentProblem(final["error"])
            self._call("ReportCommand", {"commandId": cid, "lifecycleEvents": final["lifecycleEvents"],
                                         "status": final["status"]})
        except CdsimError as e:
            self._call("ReportCommand", {"commandId": cid, "status": "Failed",
                                         "lifecycleEvents": failed_events(last, str(e))})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _spec(self, command: JsonObject, folder: str) -> RunnerSpec:
        source = fetch.revision_of(command["revision"])
        if command.get("events") and "DownloadBundle" not in command["events"]:
            # a blue/green original instance runs hooks of a revision it has: nothing to fetch
            location, bundle_type = folder, "directory"
        else:
            local = fetch.fetch(source, folder, s3_endpoint=command.get("s3Endpoint"),
                                credentials=self.credentials, github_roots=self.github_roots)
            location, bundle_type = local.location, local.bundle_type
        spec: RunnerSpec = {
            "deploymentId": command["deploymentId"], "applicationName": command["applicationName"],
            "deploymentGroupName": command["deploymentGroupName"], "deploymentGroupId": command["deploymentGroupId"],
            "creator": command["creator"], "fileExistsBehavior": command["fileExistsBehavior"],
            "ignoreApplicationStopFailures": command["ignoreApplicationStopFailures"],
            "bundle": location, "bundleType": bundle_type, "fetchedFrom": to_record(source),
            "trafficControl": bool(command.get("trafficControl"))}
        if command.get("deploymentType"):   # blue/green (agent.service.bluegreen): its events and gates
            spec["deploymentType"] = str(command["deploymentType"])
        if command.get("events"):
            spec["events"] = [str(e) for e in command["events"]]
        if command.get("waitAfter"):
            spec["waitAfter"] = {str(k): str(v) for k, v in command["waitAfter"].items()}
        if self.host_root:
            spec["rootDir"] = machine_root_dir(self.host_root)
            spec["logDir"] = machine_log_dir(self.host_root)
        return spec

    def _wait_for(self, cid: str, step: str, events: list[JsonObject]) -> str:
        """Ask the server until its ``step`` (BlockTraffic, AllowTraffic) is done: ``go`` or ``stop``."""
        deadline = time.monotonic() + (REROUTE_WAIT_LIMIT if step == "Reroute" else WAIT_FOR_LIMIT)
        while time.monotonic() < deadline:
            try:
                answer = self._call("ReportCommand", {"commandId": cid, "lifecycleEvents": events,
                                                      "waitFor": step}).get("proceed", "go")
            except CdsimError:
                answer = "wait"   # the server is busy or restarting: ask again
            if answer != "wait":
                return "go" if answer == "go" else "stop"
            time.sleep(self.poll_interval)
        return "stop"

    def _run_runner(self, spec: RunnerSpec, folder: str, gate: list[int]) -> Iterator[JsonObject]:
        """Start the runner and yield each JSON line it prints; ``gate`` gets the write end of its stdin."""
        argv = [sys.executable, "-m", "agent.service.runner", json.dumps(spec)]
        env = without_aws_variables(os.environ, every=True)
        read_fd, write_fd = os.pipe()
        stdin_read, stdin_write = os.pipe()
        gate.append(stdin_write)
        status: list[int] = []
        with open(os.path.join(folder, "runner.stderr"), "wb") as err:
            if self.host_root:
                proc = subprocess.Popen(argv, stdin=stdin_read, stdout=write_fd, stderr=err,
                                        env=env, cwd="/")
                waiter = threading.Thread(target=lambda: status.append(proc.wait()))
            else:
                from agent import instance as instances
                inst = instances.get(self.instance, state=self.state)
                binds: dict[str, str] = {}
                if instances.made_from_image(inst):
                    # an image has nothing of this machine: its interpreter comes in under /opt/cdsim and
                    # the fetched bundle through a bind mount
                    binds[spec["bundle"]] = instances.bind_target(spec["bundle"])
                    argv = [*instances.agent_command(inst, "agent.service.runner"),
                            json.dumps({**spec, "bundle": binds[spec["bundle"]]})]
                waiter = threading.Thread(target=lambda: status.append(instances.exec_in(
                    inst, argv, env=dict(env, CDSIM_INSIDE_INSTANCE=self.instance), cwd="/",
                    stdin=stdin_read, stdout=write_fd, stderr=err, binds=binds)))
            waiter.start()
            try:
                with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as reader:
                    # our copy of the write end closes once the child has it; EOF then means it ended
                    if self.host_root:
                        os.close(write_fd)
                        write_fd = -1
                    else:
                        threading.Thread(target=_close_after, args=(waiter, write_fd), daemon=True).start()
                        write_fd = -1
                    for line in reader:
                        try:
                            yield json.loads(line)
                        except ValueError:
                            continue
            finally:
                if write_fd >= 0:
                    os.close(write_fd)
                os.close(stdin_write)   # EOF: a runner still waiting stops
                waiter.join()
                os.close(stdin_read)

    def _stderr_tail(self, folder: str) -> str:
        try:
            with open(os.path.join(folder, "runner.stderr"), encoding="utf-8", errors="replace") as f:
                return f.read()[-1500:]
        except OSError:
            return ""


def _close_after(thread: threading.Thread, fd: int) -> None:
    # exec_in blocks until the command ends; only then may the write end close
    thread.join()
    os.close(fd)


def failed_events(events: list[JsonObject] | None, message: str, at: str | None = None,
                  names: list[str] | None = None) -> list[JsonObject]:
    """Lifecycle events after an agent-side failure: event ``at`` (default, or when the command's events
    ``names`` lack it: the running or first pending one) Failed, every other one not run Skipped."""
    from agent.service.engine import pending_events
    if names and at not in names:
        at = None
    initial = [{"lifecycleEventName": n, "status": "Pending"} for n in names] if names else pending_events()
    events = [dict(e) for e in (events or initial)]
    now = time.time()
    failed = False
    for e in events:
        if at and e["lifecycleEventName"] != at and not failed:
            e["status"] = "Skipped"
        elif not failed and e["status"] in ("InProgress", "Pending"):
            e.update(status="Failed", endTime=now, diagnostics={"errorCode": "UnknownError", "scriptName": "",
                                                                 "message": message, "logTail": ""})
            e.setdefault("startTime", now)
            failed = True
        elif failed and e["status"] == "Pending":
            e["status"] = "Skipped"
    return events
