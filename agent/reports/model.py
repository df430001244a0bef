"""What every report shows, gathered from a deployment's event stream (agent.events, schema 1).

Pure: takes the records as plain dicts and returns plain dicts; reads no files and imports nothing
from the engine, so reports are renderings of the one stream and never separate bookkeeping.
Tolerates records it does not know and fields that are absent (older streams, a torn last line).
"""
from __future__ import annotations

from collections.abc import Iterable

# events cdsim runs itself rather than through hook scripts
ENGINE_EVENTS = ("DownloadBundle", "Install")


def split_by_deployment(records: Iterable[dict]) -> list[list[dict]]:
    """Records grouped per ``deployment_id``, in the order each deployment first appears."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        if isinstance(r, dict) and "type" in r:
            groups.setdefault(str(r.get("deployment_id", "")), []).append(r)
    return list(groups.values())


def _num(value, default: float | None = None) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def summarize(records: list[dict]) -> dict:
    """One deployment's report data: its outcome, events, hooks (with output), install, notices."""
    dep: dict = {"deployment_id": records[0].get("deployment_id") if records else None,
                 "status": "Unfinished", "error": None, "reference": None, "failed_event": None,
                 "started": None, "ended": None, "duration": None, "deployment_dir": None,
                 "group_id": None, "group_name": None, "application": None, "revision": None,
                 "bundle_location": None, "events": [], "hooks": [], "install": None, "files": [],
                 "notices": [], "error_file": None, "error_line": None, "error_column": None}
    open_events: dict[str, dict] = {}
    open_hooks: dict[tuple[str, str], dict] = {}
    times = [t for t in (_num(r.get("time")) for r in records) if t is not None]
    for r in records:
        t, when = r.get("type"), _num(r.get("time"))
        if t == "deployment.start":
            dep["started"] = when
            for key in ("deployment_dir", "group_id", "group_name", "application", "revision",
                        "bundle_location"):
                dep[key] = r.get(key)
        elif t == "event.start":
            ev = {"event": r.get("event"), "status": "Unfinished", "started": when, "ended": None,
                  "duration": None, "error": None, "reference": None, "hooks": 0, "ignored": False}
            dep["events"].append(ev)
            open_events[ev["event"]] = ev
        elif t == "event.end":
            ev = open_events.pop(r.get("event"), None)
            if ev is None:
                continue
            ev.update(status=r.get("status", "Succeeded"), ended=when, error=r.get("error"),
                      reference=r.get("reference"), ignored=bool(r.get("ignored", False)))
            if ev["started"] is not None and when is not None:
                ev["duration"] = when - ev["started"]
        elif t == "hook.start":
            hook = {"event": r.get("event"), "location": r.get("location"), "path": r.get("path"),
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
            ev = open_events.get(hook["event"])
            if ev is not None:
                ev["hooks"] += 1
        elif t == "hook.end":
            hook = open_hooks.pop((r.get("event"), r.get("location")), None)
            if hook is None:   # a stream cut before hook.start: keep what the end tells
                hook = {"event": r.get("event"), "location": r.get("location"), "path": None,
                        "timeout": None, "runas": None}
                dep["hooks"].append(hook)
            for key in ("status", "message", "error_code", "exit_status", "signal", "peak_rss",
                        "cpu_time", "notes", "killed", "output_holders", "left_running", "output",
                        "scripts_log", "ignored", "previous_revision", "revision_deployment_id",
                        "revision_archive", "revision_appspec"):
                if key in r:
                    hook[key] = r[key]
            hook["output_truncated"] = bool(r.get("output_truncated", False))
            hook["started"] = _num(r.get("started"), hook.get("started"))
            hook["ended"] = _num(r.get("ended"), when)
            hook["duration"] = _num(r.get("duration"))
            if hook["duration"] is None and hook["started"] is not None and hook["ended"] is not None:
                hook["duration"] = hook["ended"] - hook["started"]
        elif t == "install.done":
            dep["install"] = {k: v for k, v in r.items()
                              if k not in ("schema", "type", "time", "deployment_id", "files")}
            files = r.get("files")
            if isinstance(files, list):
                dep["files"] = [f if isinstance(f, dict) else {"destination": str(f)} for f in files]
        elif t == "notice":
            dep["notices"].append({"time": when, "text": r.get("text", "")})
        elif t == "deployment.end":
            dep["ended"] = when
            for key in ("status", "error", "reference", "failed_event"):
                dep[key] = r.get(key, dep[key])
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


def summarize_all(records: Iterable[dict]) -> list[dict]:
    return [summarize(group) for group in split_by_deployment(records)]


def failure_outside_hooks(dep: dict) -> dict | None:
    """The failed event when the deployment failed somewhere no hook ran (DownloadBundle, Install,
    an appspec that would not parse), else None: reports show it as a test case of its own."""
    if dep["status"] != "Failed":
        return None
    if any(h.get("status") == "Failed" and not h.get("ignored") for h in dep["hooks"]):
        return None
    failed = next((e for e in dep["events"] if e["status"] == "Failed" and not e.get("ignored")), None)
    return {"event": (failed or {}).get("event") or dep.get("failed_event") or "deployment",
            "error": (failed or {}).get("error") or dep.get("error") or "failed",
            "reference": (failed or {}).get("reference") or dep.get("reference"),
            "duration": (failed or {}).get("duration") or 0.0}
