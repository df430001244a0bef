"""The one module that sequences a deployment's I/O: events in order, DownloadBundle, Install and
hook events, exactly as the agent's command executor does (behaviour doc §4), writing the event
stream as it goes.

Imports the pure modules (lifecycle, appspec), the I/O modules (bundle, install, deployment_root)
and hooks_runtime. Nothing here prints: the CLI renders the event stream. The package exports
``deploy``, ``DeploymentRequest`` and ``DeploymentResult`` as ``agent.deploy(...)`` and so on (this
module is not called ``deploy`` so that importing it never hides that function).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from agent import lifecycle, ruby
from agent.agentlog import AgentLog
from agent.config import AgentConfig
from agent.deployment_root import DeploymentRoot, join, new_deployment_id
from agent.errors import AppSpecNotFound, CdsimError, DeploymentError, HookFailed, HookTimedOut
from agent.events import EventStream
from agent.records import field
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up
from agent.revision import LocalRevision, RemoteRevision, Revision, revision_env
from agent.state import events_file

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any, TypedDict

    from agent.appspec import AppSpec
    from agent.events import Listener
    from hooks_runtime import HookResult
    from hooks_runtime.diagnostics import ProcInfo

    class _RevisionOrigin(TypedDict):
        """Whose scripts a hook event runs (the hook.start and hook.end fields of events.py)."""

        previous_revision: bool
        revision_deployment_id: str
        revision_archive: str
        revision_appspec: str

DEFAULT_GROUP_ID = "default-local-deployment-group"
DEFAULT_GROUP_NAME = "LocalFleet"


@dataclass(frozen=True)
class DeploymentRequest:
    """Everything one deployment needs; what codedeploy-local's flags and the config file give."""

    revision: Revision
    config: AgentConfig
    deployment_group_id: str = DEFAULT_GROUP_ID
    deployment_group_name: str = DEFAULT_GROUP_NAME
    application_name: str = ""
    events: str | None = None                 # raw --events string
    service_events: tuple[str, ...] | None = None  # the daemon's way: exactly these events, in this order, as
                                                   # the service's commands name them (no DownloadBundle or
                                                   # Install added: a blue/green original instance's)
    file_exists_behavior: str = "DISALLOW"    # raw CLI value; upper-cased when resolved
    appspec_filename: str | None = None
    deployment_id: str | None = None
    cwd: str | None = None                    # hooks' working directory (local: the caller's)
    base_env: Mapping[str, str] | None = None  # hooks' environment before our variables
    grace_seconds: float = 5.0
    deployment_creator: str = "user"
    deployment_type: str = "IN_PLACE"
    events_path: str | None = None            # where the JSON-lines event stream goes
    ignore_application_stop_failures: bool = False  # the service's option: a failed ApplicationStop
                                                    # is reported (ignored: true) and the deployment goes on
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)  # Install's (done, total)
    fetched_from: RemoteRevision | None = None  # the S3/GitHub revision ``revision`` was fetched from: its
                                                # BUNDLE_* variables are the hooks'


@dataclass
class DeploymentResult:
    deployment_id: str
    deployment_dir: str          # as the agent prints it: plain concatenation of the configured root
    succeeded: bool
    error: CdsimError | None = None
    entered_event_loop: bool = False
    failed_event: str | None = None
    hooks: list[tuple[str, HookResult]] = field(default_factory=list)  # (event, its hook's result), in run order
    events_path: str | None = None

    @property
    def exit_status(self) -> int:
        from agent.errors import ExitStatus
        if self.succeeded:
            return int(ExitStatus.SUCCESS)
        assert self.error is not None, "a failed deployment carries its error"
        return int(self.error.exit_status)

    @property
    def scripts_log(self) -> str:
        return f"{self.deployment_dir}/logs/scripts.log"


def _os_error(e: OSError) -> DeploymentError:
    """An OS error as the agent prints it: the errno text and the path."""
    text = e.strerror or str(e)
    if e.filename:
        text += f" - {e.filename}"
    return DeploymentError(text)


class _Deployment:
    def __init__(self, request: DeploymentRequest, stream: EventStream,
                 notify: Callable[[str], None] | None, on_output: Callable[[str], None] | None):
        self.req = request
        self.cfg = request.config
        self.stream = stream
        self.notify = notify
        self.on_output = on_output
        self.did = stream.deployment_id
        self.root = DeploymentRoot(self.cfg.root_dir, request.deployment_group_id)
        self.console_dir = f"{self.cfg.root_dir}/{request.deployment_group_id}/{self.did}"
        self.agent_log = AgentLog(self.cfg.log_dir, self.cfg.program_name, verbose=self.cfg.verbose)
        self.hooks: list[tuple[str, HookResult]] = []  # (event, its hook's result), in run order
        self._parsed: dict[tuple[str, bytes], AppSpec] = {}  # (file name, bytes) -> its parse
        self.marker_file: str | None = None   # the marker a previous-revision event read (spec §4.2)

    # -- events --------------------------------------------------------------------------------------
    def run(self) -> None:
        self._max_revisions = self._retention_setting()
        order = (list(self.req.service_events) if self.req.service_events is not None
                 else lifecycle.execution_order(self.req.events))
        for event in order:
            self.root.ensure_deployment_dir(self.did)
            self.stream.emit("event.start", event=event)
            try:
                if event == "DownloadBundle":
                    self.download_bundle()
                elif event == "Install":
                    self.install()
                else:
                    self.hook_event(event)
            except CdsimError as e:
                if self._ignored(event):
                    # the service's ignoreApplicationStopFailures: reported failed, then on to the next event
                    self.stream.emit("event.end", event=event, status="Failed", error=str(e),
                                     reference=e.reference, ignored=True)
                    self._notice(f"{event} failed and was ignored (--ignore-application-stop-failures): {e}")
                    continue
                self.stream.emit("event.end", event=event, status="Failed", error=str(e),
                                 reference=e.reference)
                e.event = e.event or event
                raise
            except OSError as e:
                err = _os_error(e)
                self.stream.emit("event.end", event=event, status="Failed", error=str(err),
                                 reference=err.reference)
                err.event = event
                raise err from e
            self.stream.emit("event.end", event=event, status="Succeeded")

    def _ignored(self, event: str) -> bool:
        return self.req.ignore_application_stop_failures and event == "ApplicationStop"

    def _retention_setting(self) -> int | None:
        try:
            n = self.cfg.max_revisions
        except DeploymentError as e:
            self.agent_log.log("ERROR", "CommandExecutor", e.message)
            return None  # the agent fails later, at DownloadBundle
        if n < 1:
            # the agent also SIGTERMs its parent here (Q22); we only log
            self.agent_log.log("ERROR", "CommandExecutor",
                               f"Invalid configuration :max_revision={self.cfg.max_revisions_raw}")
        self.agent_log.info("CommandExecutor", f"Archives to retain is: {n}}}")
        return n

    def download_bundle(self) -> None:
        from agent import bundle

        max_revisions = self._max_revisions
        if max_revisions is None:
            max_revisions = self.cfg.max_revisions  # raises the configuration error
        removed = self.root.apply_retention(self.did, max_revisions)
        rev = self.req.revision
        if isinstance(rev, LocalRevision):
            if rev.bundle_type == "directory":
                self.agent_log.info("CommandExecutor", f"Handle local directory {rev.location}")
            else:
                self.agent_log.info("CommandExecutor",
                                    f"Handle local file {join(self.root.deployment_dir(self.did), 'bundle.tar')}")
        archive = bundle.fetch_and_unpack(rev, self.root.deployment_dir(self.did), warn=self._notice)
        bundle.check_archive_links(archive)
        self.root.mark_most_recent(self.did)
        self.stream.emit("bundle.unpacked", archive=archive, retention_removed=removed)

    def _install_appspec_path(self, archive: str) -> str:
        """§4.6 Install rule: the option's name, else appspec.yaml, else appspec.yml."""
        name = self.req.appspec_filename or "appspec.yml"
        for candidate in (name, "appspec.yaml", "appspec.yml"):
            path = join(archive, candidate)
            if os.path.exists(path):
                return path
        return join(archive, "appspec.yml")

    def _parse(self, path: str) -> AppSpec:
        from agent.appspec import parse_appspec

        # cdsim, not the agent: an appspec that is a link out of the revision is not read (its values
        # would be echoed in error messages: a bundle could make us print a host file)
        cut = path.rfind("/deployment-archive/")
        if cut >= 0:
            real, top = os.path.realpath(path), os.path.realpath(path[:cut + len("/deployment-archive")])
            if not real.startswith(top + "/"):
                from agent.errors import UnsafeBundle
                raise UnsafeBundle(f"{os.path.basename(path)} is a symbolic link to {real}, outside the "
                                   "revision; cdsim reads only the revision's own appspec")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DeploymentError(f"No such file or directory @ rb_sysopen - {path}") from None
        except IsADirectoryError:
            raise DeploymentError(f"Is a directory @ io_fread - {path}") from None
        # The file is read for every event, as the agent reads it (a hook may change it); the same
        # bytes parse to the same spec, so a parse is kept for the next event that reads them.
        key = (os.path.basename(path), data)
        spec = self._parsed.get(key)
        if spec is None:
            spec = self._parsed[key] = parse_appspec(data, filename=key[0])
        return spec

    def install(self) -> None:
        from agent import install as installer

        self.root.ensure_instructions_dir()
        archive = self.root.archive_dir(self.did)
        path = self._install_appspec_path(archive)
        spec = self._parse(path)
        base = os.path.basename(path)
        hooks = list(spec.hook_names())
        unknown = lifecycle.unknown_hooks(hooks, self.req.events)
        if unknown:
            raise DeploymentError(
                f"{base} file contains unknown lifecycle events: {ruby.inspect_list(unknown)}")
        missing = lifecycle.missing_custom_events(hooks, self.req.events)
        if missing:
            raise DeploymentError(
                "You specified a lifecycle event which is not a default one and doesn't exist in "
                f"your {base} file: {','.join(missing)}")
        summary = installer.install(spec, archive, self.root.instructions_dir,
                                    self.req.deployment_group_id, self.req.file_exists_behavior,
                                    progress=self.req.progress)
        self.root.mark_last_successful(self.did)
        self.stream.emit("install.done", **summary.to_dict())

    def _revision_dir_for(self, event: str) -> str | None:
        current = self.root.deployment_dir(self.did)
        source = lifecycle.previous_revision_source(
            event, rollback_blue_green=(self.req.deployment_creator == "codeDeployRollback"
                                        and self.req.deployment_type == "BLUE_GREEN"))
        if source == lifecycle.CURRENT or os.path.exists(self.root.archive_dir(self.did)):
            return current
        self.marker_file = (self.root.last_successful_marker if source == lifecycle.LAST_SUCCESSFUL
                            else self.root.most_recent_marker)
        marker = (self.root.last_successful() if source == lifecycle.LAST_SUCCESSFUL
                  else self.root.most_recent())
        return marker  # None: the group has no such revision, the event is a no-op

    def hook_env(self, event: str) -> dict[str, str]:
        env = dict(os.environ if self.req.base_env is None else self.req.base_env)
        env.update({
            "LIFECYCLE_EVENT": event,
            "DEPLOYMENT_ID": self.did,
            "APPLICATION_NAME": self.req.application_name,
            "DEPLOYMENT_GROUP_NAME": self.req.deployment_group_name,
            "DEPLOYMENT_GROUP_ID": self.req.deployment_group_id,
        })
        for k, v in revision_env(self.req.fetched_from or self.req.revision).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def hook_event(self, event: str) -> None:
        from agent.appspec import appspec_not_found_message

        rev_dir = self._revision_dir_for(event)
        if rev_dir is None:
            return
        name = self.req.appspec_filename or "appspec.yml"
        path = join(rev_dir, "deployment-archive", name)
        if not os.path.isfile(path):
            hint = None
            if rev_dir != self.root.deployment_dir(self.did):
                hint = (f"{event} reads the previous deployment's appspec (from the marker {self.marker_file}), "
                        f"and {rev_dir} no longer has it: remove that marker, and the next deployment skips "
                        "the previous revision's hooks as a group's first deployment does")
            raise AppSpecNotFound(appspec_not_found_message(name, rev_dir), hint=hint)
        spec = self._parse(path)
        scripts = spec.scripts_for(event)
        if not scripts:
            return
        # here, not at the top: a deployment without hooks never imports the hooks runtime (start-up)
        from hooks_runtime import HookLog, Script, run_script
        from hooks_runtime.environment import missing_command_hint

        # cdsim, not the agent (§5.5 allows '..'): a script must be a file of the revision
        archive = os.path.normpath(join(rev_dir, "deployment-archive"))
        previous = rev_dir != self.root.deployment_dir(self.did)
        origin: _RevisionOrigin = {
            "previous_revision": previous, "revision_deployment_id": os.path.basename(rev_dir.rstrip("/")),
            "revision_archive": join(rev_dir, "deployment-archive"), "revision_appspec": path}
        for s in scripts:
            if not os.path.normpath(join(archive, s.location)).startswith(archive + "/"):
                from agent.errors import UnsafeBundle
                raise UnsafeBundle(f"the {event} script {s.location} is outside the revision; "
                                   "cdsim only runs scripts of the revision (the agent would run it)",
                                   hint="give a location relative to the revision root, without '..'")
        env = self.hook_env(event)
        cwd = self.req.cwd or os.getcwd()
        captured = _Capture()

        def on_line(text: str) -> None:
            if text.startswith(("[stdout]", "[stderr]")):
                captured.add(text)
                if self.on_output:
                    self.on_output(text)

        log = HookLog(self.root.scripts_log(self.did), self.did, self.cfg.deployments_log, on_line=on_line)
        with log:
            log.message(f"LifecycleEvent - {event}\n")
            for s in scripts:
                script = Script(path=join(rev_dir, "deployment-archive", s.location),
                                location=s.location, timeout=s.timeout, runas=s.runas, sudo=s.sudo)
                captured.reset()
                self.stream.emit("hook.start", event=event, location=s.location, path=script.path,
                                 timeout=s.timeout, runas=s.runas, revision_dir=rev_dir, **origin)
                result = run_script(script, env=env, cwd=cwd, log=log,
                                    grace_seconds=self.req.grace_seconds,
                                    agent_log=lambda level, msg: self.agent_log.log(level, "HookExecutor", msg),
                                    notify=self._notice)
                self.hooks.append((event, result))
                self.stream.emit("hook.end", event=event, **_hook_fields(result),
                                 scripts_log=self.root.scripts_log(self.did),
                                 output=captured.text(), output_truncated=captured.truncated,
                                 **origin, **({"ignored": True} if self._ignored(event) else {}))
                if not result.succeeded:
                    cls = HookTimedOut if result.error_code == 3 else HookFailed
                    hint = (_crlf_hint(script.path, s.location) or
                            missing_command_hint(captured.text(), result.exit_status, env.get("PATH", ""),
                                                 os.environ.get("PATH")))
                    if previous:
                        hint = "; ".join(h for h in (self._previous_revision_hint(
                            event, origin, script.path), hint) if h)
                    raise cls(result.message, result=result, event=event, hint=hint,
                              script_path=f"{self.console_dir}/deployment-archive/{s.location}")

    def _previous_revision_hint(self, event: str, origin: _RevisionOrigin, script_path: str) -> str:
        """Why a fixed script does not help: the failing one is the last successful revision's (§4.2)."""
        which = "most recent" if self.marker_file == self.root.most_recent_marker else "last successful"
        remove = (f"remove the marker of the {which} deployment, {self.marker_file} (then the next deployment "
                  f"has no previous revision and skips {event}, as a group's first deployment does)")
        ways = (f"Two ways out: deploy again with --ignore-application-stop-failures, or {remove}"
                if event == "ApplicationStop" else f"The way out: {remove}")
        return (f"this {event} script is the previous revision's, not this one's: {script_path}, from the "
                f"{which} deployment {origin['revision_deployment_id']} ({origin['revision_archive']}); "
                f"this revision's {event} script will not run until "
                + ("a deployment succeeds" if which == "last successful" else "a deployment downloads it")
                + f". {ways}")

    def _notice(self, text: str) -> None:
        self.stream.emit("notice", text=text)
        if self.notify:
            self.notify(text)


def _crlf_hint(path: str, location: str) -> str | None:
    """The fix for a script whose #! line ends in a carriage return (the kernel looks for an interpreter
    named "/bin/bash\\r"), as `cdsim validate` gives it."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if first.startswith(b"#!") and first.rstrip(b"\n").endswith(b"\r"):
        return (f"the #! line of {location} ends with a carriage return (CRLF line endings): convert it to "
                f"LF line endings (dos2unix {location}); `cdsim validate` finds this before a deployment")
    return None


class _Capture:
    """The last OUTPUT_CAP characters a hook printed, for its hook.end record and reports."""

    OUTPUT_CAP = 256 * 1024

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        while self.size > self.OUTPUT_CAP and len(self.parts) > 1:
            self.size -= len(self.parts.pop(0))
            self.truncated = True

    def text(self) -> str:
        joined = "".join(self.parts)
        if len(joined) > self.OUTPUT_CAP:
            self.truncated = True
            return joined[-self.OUTPUT_CAP:]
        return joined


def _hook_fields(result: HookResult) -> dict[str, Any]:
    def procs(ps: tuple[ProcInfo, ...]) -> list[dict[str, Any]]:
        return [vars(p) for p in ps]

    return {
        "location": result.location, "status": "Succeeded" if result.succeeded else "Failed",
        "error_code": result.error_code, "message": result.message,
        "exit_status": result.exit_status, "signal": result.signal,
        "started": result.started, "ended": result.ended, "duration": result.duration,
        "peak_rss": result.peak_rss, "cpu_time": result.cpu_time,
        "killed": procs(result.killed), "output_holders": procs(result.output_holders),
        "left_running": procs(result.left_running), "notes": list(result.notes),
    }


def default_events_path(config: AgentConfig, group: str, deployment_id: str) -> str | None:
    """The event stream lives beside the agent log, never inside the deployment root (whose layout
    must stay identical to the agent's)."""
    if not config.log_dir:
        return None
    return events_file(config.log_dir, group, deployment_id)


def deploy(request: DeploymentRequest, *, listeners: list[Listener] | None = None,
           notify: Callable[[str], None] | None = None,
           on_output: Callable[[str], None] | None = None,
           lock: str | None = None) -> DeploymentResult:
    """Run one deployment to completion. Never raises for a failed deployment: see ``.error``.

    The deployment root is locked for the whole deployment (agent.locking): ``lock`` "wait" (the
    default, or $CDSIM_LOCK) or "fail" when another deployment holds it."""
    from agent.locking import deployment_lock

    did = request.deployment_id or new_deployment_id()
    events_path = request.events_path or default_events_path(
        request.config, request.deployment_group_id, did)
    log_dirs = [p for p in (request.config.log_dir, events_path and os.path.dirname(events_path)) if p]
    try:
        for folder in log_dirs:
            os.makedirs(folder, exist_ok=True)
    except PermissionError as e:  # e.g. the agent's /var/log/... as a non-root user: say so, no traceback
        from agent.errors import EnvironmentProblem
        error = EnvironmentProblem(
            f"cannot write the log folder {e.filename}: permission denied", reference="root-needed",
            hint="this log folder needs root: run cdsim with sudo, or choose another log_dir")
        return DeploymentResult(did, f"{request.config.root_dir}/{request.deployment_group_id}/{did}",
                                False, error=error)
    with EventStream(did, events_path, listeners) as stream:
        d = _Deployment(request, stream, notify, on_output)
        result = DeploymentResult(did, d.console_dir, False, events_path=events_path)
        stream.emit("deployment.start", deployment_dir=d.console_dir,
                    group_id=request.deployment_group_id, group_name=request.deployment_group_name,
                    application=request.application_name, revision=repr(request.revision),
                    bundle_location=getattr(request.revision, "location", None))
        try:
            bad = lifecycle.not_pascal_case(request.events)
            if bad is not None:
                raise DeploymentError(f"Received command is not in PascalCase form: {bad}",
                                      reference="events-invalid")
            with deployment_lock(request.config.root_dir, mode=lock, notice=d._notice):
                result.entered_event_loop = True
                d.run()
            result.succeeded = True
        except CdsimError as e:
            result.error = e
            result.failed_event = e.event
        except OSError as e:
            result.error = _os_error(e)
        result.hooks = d.hooks
        stream.emit("deployment.end", status="Succeeded" if result.succeeded else "Failed",
                    error=str(result.error) if result.error else None,
                    reference=result.error.reference if result.error else None,
                    file=result.error.file if result.error else None,
                    line=result.error.line if result.error else None,
                    column=result.error.column if result.error else None,
                    failed_event=result.failed_event)
    return result

