"""What every report shows, gathered from a deployment's event stream (agent.events, schema 1).

Pure: takes the records as plain dicts and returns plain dicts (shaped by the TypedDicts below);
reads no files and imports nothing from the engine, so reports are renderings of the one stream and
never separate bookkeeping. Tolerates records it does not know and fields that are absent (older
streams, a torn last line).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Required, TypedDict

# one event record as read back from JSON (agent.events): open by design, new fields may appear
Record = dict[str, Any]

# events cdsim runs itself rather than through hook scripts
ENGINE_EVENTS = ("DownloadBundle", "Install")


class EventSummary(TypedDict):
    """One lifecycle event: from its ``event.start`` and ``event.end``."""

    event: str | None
    status: str
    started: float | None
    ended: float | None
    duration: float | None
    error: str | None
    reference: str | None
    hooks: int
    ignored: bool


class HookSummary(TypedDict, total=False):
    """One hook script run. A ``hook.end`` whose ``hook.start`` is missing from the stream gives a hook
    with only the Required keys and what that end record carried, hence ``total=False``."""

    event: Required[str | None]
    location: Required[str | None]
    path: Required[str | None]
    timeout: Required[int | None]
    runas: Required[str | None]
    status: str
    started: float | None
    ended: float | None
    duration: float | None
    message: str
    error_code: int | None
    exit_status: int | None
    signal: int | None
    peak_rss: int | None
    cpu_time: float | None
    notes: list[str]
    killed: list[Any]
    output_holders: list[Any]
    left_running: list[Any]
    output: str | None
    output_truncated: bool
    scripts_log: str | None
    ignored: bool
    previous_revision: bool
    revision_deployment_id: str | None
    revision_archive: str | None
    revision_appspec: str | None


class TrafficWindow(TypedDict):
    """A ``traffic`` record: the rehearsal's requests sent while ``instance`` was in lifecycle ``event``
    (``cdsim wait --traffic``; instance ``*`` all of them, ``-`` those sent outside every event)."""

    instance: str
    event: str
    sent: int
    failed: int
    errors: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    versions: dict[str, int]


class Notice(TypedDict):
    time: float | None
    text: str


class DeploymentSummary(TypedDict):
    """One deployment's report data: its outcome, events, hooks (with output), install, notices."""

    deployment_id: str | None
    status: str
    error: str | None
    reference: str | None
    failed_event: str | None
    started: float | None
    ended: float | None
    duration: float | None
    deployment_dir: str | None
    group_id: str | None
    group_name: str | None
    application: str | None
    revision: str | None
    bundle_location: str | None
    events: list[EventSummary]
    hooks: list[HookSummary]
    install: dict[str, Any] | None      # the install.done record's own fields (agent.install's summary)
    files: list[dict[str, Any]]         # as install.done lists them; at least a "destination"
    notices: list[Notice]
    traffic: list[TrafficWindow]        # the rehearsal's figures, per instance and event (traffic records)
    error_file: str | None
    error_line: int | None
    error_column: int | None


class OutsideFailure(TypedDict):
    """A failure where no hook ran, as reports show it (see failure_outside_hooks)."""

    event: str
    error: str
    reference: str | None
    duration: float


_START_FIELDS: tuple[Literal["deployment_dir", "group_id", "group_name", "application", "revision",
                             "bundle_location"], ...] = (
    "deployment_dir", "group_id", "group_name", "application", "revision", "bundle_location")
_END_FIELDS: tuple[Literal["status", "error", "reference", "failed_event"], ...] = (
    "status", "error", "reference", "failed_event")
HookEndField = Literal["status", "message", "error_code", "exit_status", "signal", "peak_rss", "cpu_time",
                       "notes", "killed", "output_holders", "left_running", "output", "scripts_log",
                       "ignored", "previous_revision", "revision_deployment_id", "revision_archive",
                       "revision_appspec"]
_HOOK_END_FIELDS: tuple[HookEndField, ...] = (
    "status", "message", "error_code", "exit_status", "signal", "peak_rss", "cpu_time", "notes", "killed",
    "output_holders", "left_running", "output", "scripts_log", "ignored", "previous_revision",
    "revision_deployment_id", "revision_archive", "revision_appspec")


def split_by_deployment(records: Iterable[Record]) -> list[list[Record]]:
    """Records grouped per ``deployment_id``, in the order each deployment first appears."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        # a line of the file may hold any JSON value, not only an object (read_events checks only syntax)
        if isinstance(r, dict) and "type" in r:
            groups.setdefault(str(r.get("deployment_id", "")), []).append(r)
    return list(groups.values())


def _num(value: object, default: float | None = None) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def summarize(records: list[Record]) -> DeploymentSummary:
    """One deployment's report data: its outcome, events, hooks (with output), install, notices."""
    dep: DeploymentSummary = {
        "deployment_id": records[0].get("deployment_id") if records else None,
        "status": "Unfinished", "error": None, "reference": None, "failed_event": None,
        "started": None, "ended": None, "duration": None, "deployment_dir": None,
        "group_id": None, "group_name": None, "application": None, "revision": None,
        "bundle_location": None, "events": [], "hooks": [], "install": None, "files": [],
        "notices": [], "traffic": [], "error_file": None, "error_line": None, "error_column": None}
    open_events: dict[str | None, EventSummary] = {}
    open_hooks: dict[tuple[str | None, str | None], HookSummary] = {}
    times = [t for t in (_num(r.get("time")) for r in records) if t is not None]
    for r in records:
        t, when = r.get("type"), _num(r.get("time"))
        if t == "deployment.start":
            dep["started"] = when
            for key in _START_FIELDS:
                dep[key] = r.get(key)
        elif t == "event.start":
            ev: EventSummary = {
                "event": r.get("event"), "status": "Unfinished", "started": when, "ended": None,
                "duration": None, "error": None, "reference": None, "hooks": 0, "ignored": False}
            dep["events"].append(ev)
            open_events[ev["event"]] = ev
        elif t == "event.end":
            ending = open_events.pop(r.get("event"), None)
            if ending is None:
                continue
            ending["status"] = r.get("status", "Succeeded")
            ending["ended"] = when
            ending["error"] = r.get("error")
            ending["reference"] = r.get("reference")
            ending["ignored"] = bool(r.get("ignored", False))
            if ending["started"] is not None and when is not None:
                ending["duration"] = when - ending["started"]
        elif t == "hook.start":
            hook: HookSummary = {
                "event": r.get("event"), "location": r.get("location"), "path": r.get("path"),
                "timeout": r.get("timeout"), "runas": r.get("runas"), "status": "Unfinished",
                "started": when, "ended": None, "duration": None, "message": "", "error_code": None,
                "exit_status": None, "signal": None, "peak_rss": None, "cpu_time": None,
                "notes": [], "killed": [], "output_holders": [], "left_running": [],
                "output": None, "output_truncated": False, "scripts_log": None, "ignored": False,
                # where the script came from: the previous revision's for ApplicationStop (spec §4.2)
                "previous_revision": bool(r.get("previous_revision", False)),
                "revision_deployment_id": r.get("revision_deployment_id"),
                "revision_archive": r.get("revision_archive"), "revision_appspec": r.get("revision_appspec")}
            dep["hooks"].append(hook)
            open_hooks[(hook["event"], hook["location"])] = hook
            owner = open_events.get(hook["event"])
            if owner is not None:
                owner["hooks"] += 1
        elif t == "hook.end":
            ended = open_hooks.pop((r.get("event"), r.get("location")), None)
            if ended is None:   # a stream cut before hook.start: keep what the end tells
                ended = {"event": r.get("event"), "location": r.get("location"), "path": None,
                         "timeout": None, "runas": None}
                dep["hooks"].append(ended)
            for field in _HOOK_END_FIELDS:
                if field in r:
                    ended[field] = r[field]
            ended["output_truncated"] = bool(r.get("output_truncated", False))
            ended["started"] = _num(r.get("started"), ended.get("started"))
            ended["ended"] = _num(r.get("ended"), when)
            ended["duration"] = _num(r.get("duration"))
            if ended["duration"] is None and ended["started"] is not None and ended["ended"] is not None:
                ended["duration"] = ended["ended"] - ended["started"]
        elif t == "install.done":
            dep["install"] = {k: v for k, v in r.items()
                              if k not in ("schema", "type", "time", "deployment_id", "files")}
            files = r.get("files")
            if isinstance(files, list):
                dep["files"] = [f if isinstance(f, dict) else {"destination": str(f)} for f in files]
        elif t == "notice":
            dep["notices"].append({"time": when, "text": r.get("text", "")})
        elif t == "traffic":
            dep["traffic"].append({
                "instance": str(r.get("instance", "")), "event": str(r.get("event", "")),
                "sent": int(_num(r.get("sent"), 0) or 0), "failed": int(_num(r.get("failed"), 0) or 0),
                "errors": dict(r.get("errors") or {}), "p50_ms": _num(r.get("p50_ms")),
                "p95_ms": _num(r.get("p95_ms")), "p99_ms": _num(r.get("p99_ms")),
                "versions": dict(r.get("versions") or {})})
        elif t == "deployment.end":
            dep["ended"] = when
            for end_key in _END_FIELDS:
                dep[end_key] = r.get(end_key, dep[end_key])
            dep["error_file"], dep["error_line"], dep["error_column"] = (
                r.get("file"), r.get("line"), r.get("column"))
    if dep["started"] is None and times:
        dep["started"] = min(times)
    if dep["ended"] is None and times:
        dep["ended"] = max(times)   # unfinished (crashed or still running): up to the last record
    if dep["started"] is not None and dep["ended"] is not None:
        dep["duration"] = dep["ended"] - dep["started"]
    if dep["bundle_location"] is None and isinstance(dep["revision"], str):
        dep["bundle_location"] = _location_from_repr(dep["revision"])
    if dep["error"] and dep["error_line"] is None:
        dep["error_file"], dep["error_line"], dep["error_column"] = _location_from_message(dep["error"])
    return dep


def _location_from_repr(text: str) -> str | None:
    """``LocalRevision(location='/x', ...)`` -> '/x' (streams written before bundle_location)."""
    import re

    m = re.search(r"location='((?:[^'\\]|\\.)*)'", text)
    return m.group(1) if m else None


def _location_from_message(text: str) -> tuple[str | None, int | None, int | None]:
    """An error printed as ``file:line[:col]: message`` (CdsimError.__str__) -> its location."""
    import re

    m = re.match(r"^([^\s:][^:]*):(\d+)(?::(\d+))?: ", text)
    if not m:
        return None, None, None
    return m.group(1), int(m.group(2)), int(m.group(3)) if m.group(3) else None


def summarize_all(records: Iterable[Record]) -> list[DeploymentSummary]:
    return [summarize(group) for group in split_by_deployment(records)]


def failure_outside_hooks(dep: DeploymentSummary) -> OutsideFailure | None:
    """The failed event when the deployment failed somewhere no hook ran (DownloadBundle, Install,
    an appspec that would not parse), else None: reports show it as a test case of its own."""
    if dep["status"] != "Failed":
        return None
    if any(h.get("status") == "Failed" and not h.get("ignored") for h in dep["hooks"]):
        return None
    failed = next((e for e in dep["events"] if e["status"] == "Failed" and not e["ignored"]), None)
    if failed is None:
        return {"event": dep["failed_event"] or "deployment", "error": dep["error"] or "failed",
                "reference": dep["reference"], "duration": 0.0}
    return {"event": failed["event"] or dep["failed_event"] or "deployment",
            "error": failed["error"] or dep["error"] or "failed",
            "reference": failed["reference"] or dep["reference"],
            "duration": failed["duration"] or 0.0}
