"""The event-stream records of a fleet deployment, from the service's answers: what `cdsim wait --report`
renders.

Each instance becomes a deployment of its own in the stream (``deployment_id`` ``D/INSTANCE``): its
lifecycle events as ``event.start``/``event.end`` (times, status, the diagnostics' message when it
failed), the rehearsal's figures for that instance as ``traffic`` records, and its outcome as
``deployment.end``; the deployment itself (``deployment_id`` ``D``) carries its outcome and the figures
that belong to no instance (requests outside every event, and all of them). Pure: service documents
(GetDeployment's deploymentInfo, instance targets with lifecycleEvents) and figures
(``agent.probe.WindowSummary`` shaped dicts) in, records out; must not import the service or the probe.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from agent.reports.model import Record

SCHEMA_VERSION = 1


def epoch(value: object) -> float | None:
    """A service time (epoch seconds, or ISO text as the aws CLI prints it) as epoch seconds."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def windows(targets: Iterable[Mapping[str, Any]], now: float) -> list[tuple[str, str, float, float]]:
    """(instance, lifecycle event, start, end) of every event that started (one still running ends
    ``now``), in each instance's order: the windows the rehearsal's requests are counted in."""
    out = []
    for t in targets:
        for e in t.get("lifecycleEvents") or []:
            start = epoch(e.get("startTime"))
            if start is None:
                continue
            end = epoch(e.get("endTime"))
            out.append((str(t.get("targetId") or t.get("instanceId")), str(e["lifecycleEventName"]), start,
                        now if end is None else end))
    return out


def _record(type_: str, did: str, when: float | None, **fields: object) -> Record:
    return {"schema": SCHEMA_VERSION, "type": type_, "time": when, "deployment_id": did, **fields}


def _traffic(did: str, when: float | None, row: Mapping[str, Any]) -> Record:
    return _record("traffic", did, when, instance=row["subject"], event=row["phase"], sent=row["sent"],
                   failed=row["failed"], errors=row["errors"], p50_ms=row["p50_ms"], p95_ms=row["p95_ms"],
                   p99_ms=row["p99_ms"], versions=row["versions"])


def records(info: Mapping[str, Any], targets: Iterable[Mapping[str, Any]],
            figures: Iterable[Mapping[str, Any]] = ()) -> list[Record]:
    """The records of deployment ``info`` over its instance ``targets``, with the rehearsal ``figures``."""
    did = str(info.get("deploymentId"))
    figures = list(figures)
    targets = list(targets)
    out: list[Record] = []
    for t in targets:
        name = str(t.get("targetId") or t.get("instanceId"))
        me = f"{did}/{name}"
        events = [e for e in t.get("lifecycleEvents") or [] if epoch(e.get("startTime")) is not None]
        first = epoch(events[0].get("startTime")) if events else epoch(info.get("createTime"))
        out.append(_record("deployment.start", me, first, application=info.get("applicationName"),
                           group_name=info.get("deploymentGroupName"), revision=str(info.get("revision"))))
        failed_event = None
        last = first
        for e in events:
            start, end = epoch(e.get("startTime")), epoch(e.get("endTime"))
            out.append(_record("event.start", me, start, event=e["lifecycleEventName"]))
            if end is None:
                continue
            last = end
            extra: dict[str, object] = {}
            if e.get("status") == "Failed":
                failed_event = failed_event or e["lifecycleEventName"]
                extra["error"] = (e.get("diagnostics") or {}).get("message") or "failed"
            out.append(_record("event.end", me, end, event=e["lifecycleEventName"], status=e.get("status"), **extra))
        out += [_traffic(me, last, row) for row in figures if row["subject"] == name]
        out.append(_record("deployment.end", me, last, status=t.get("status"), failed_event=failed_event))
    error = info.get("errorInformation") or {}
    started, ended = epoch(info.get("startTime") or info.get("createTime")), epoch(info.get("completeTime"))
    out.append(_record("deployment.start", did, started, application=info.get("applicationName"),
                       group_name=info.get("deploymentGroupName"), revision=str(info.get("revision"))))
    named = {str(t.get("targetId") or t.get("instanceId")) for t in targets}
    out += [_traffic(did, ended, row) for row in figures if row["subject"] not in named]
    out.append(_record("deployment.end", did, ended, status=info.get("status"),
                       error=(f"{error.get('code')}: {error.get('message')}" if error else None)))
    return out
