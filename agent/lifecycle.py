"""Lifecycle ordering: which events run, in which order, and which revision each event's scripts
come from (behaviour doc §1.3 rule 8, §1.5, §4.2). Pure: no I/O.
"""
from __future__ import annotations

import re

DEFAULT_EVENTS = (
    "BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop", "DownloadBundle", "BeforeInstall",
    "Install", "AfterInstall", "ApplicationStart", "ValidateService", "BeforeAllowTraffic",
    "AfterAllowTraffic",
)
BUILTIN_EVENTS = ("DownloadBundle", "Install")
HOOK_EVENTS = tuple(e for e in DEFAULT_EVENTS if e not in BUILTIN_EVENTS)
_PREVIOUS = ("BeforeBlockTraffic", "AfterBlockTraffic", "ApplicationStop")
_NEW = ("AfterInstall", "ApplicationStart", "BeforeAllowTraffic", "AfterAllowTraffic", "ValidateService")
_PASCAL = re.compile(r"^([A-Z][a-z0-9]+)+", re.MULTILINE)

# which marker an event falls back to when the current deployment has no archive yet (§4.2)
LAST_SUCCESSFUL = "last_successful"
MOST_RECENT = "most_recent"
CURRENT = "current"


def split_events(raw: str | None) -> list[str]:
    """Ruby ``String#split(',')``: empty pieces kept except trailing ones; no trimming."""
    if raw is None:
        return []
    parts = raw.split(",")
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def events_order_error(raw: str | None) -> str | None:
    """The agent's validation of ``--events`` order (§1.3 rule 8), or None."""
    events = split_events(raw)
    if "DownloadBundle" in events:
        before = events[: events.index("DownloadBundle")]
        if any(e in _NEW or e == "Install" for e in before):
            return ("The only events that can be specified before DownloadBundle are "
                    "BeforeBlockTraffic,AfterBlockTraffic,ApplicationStop. Please fix the order of "
                    f"your specified events: {raw}")
    if "Install" in events:
        before = events[: events.index("Install")]
        if any(e in _NEW for e in before):
            return ("The only events that can be specified before Install are "
                    "BeforeBlockTraffic,AfterBlockTraffic,ApplicationStop,DownloadBundle,BeforeInstall. "
                    f"Please fix the order of your specified events: {raw}")
    return None


def execution_order(raw: str | None) -> list[str]:
    """§1.5: the events to execute, in order (duplicates kept)."""
    user = split_events(raw)
    if not user:
        return list(DEFAULT_EVENTS)
    events = [e for e in BUILTIN_EVENTS if e not in user] + user
    if "Install" in events and "DownloadBundle" in events:
        i, d = events.index("Install"), events.index("DownloadBundle")
        if i < d:
            events[i], events[d] = events[d], events[i]
    return events


def all_possible_events(raw: str | None) -> list[str]:
    """The default list followed by user events not already in it (set union, order kept)."""
    out = list(DEFAULT_EVENTS)
    for e in split_events(raw):
        if e not in out:
            out.append(e)
    return out


def custom_events(raw: str | None) -> list[str]:
    return [e for e in all_possible_events(raw) if e not in DEFAULT_EVENTS]


def not_pascal_case(raw: str | None) -> str | None:
    """The first mapped event name the agent's executor rejects as not PascalCase, or None."""
    for e in all_possible_events(raw):
        if e in BUILTIN_EVENTS:
            continue
        if not _PASCAL.search(e):
            return e
    return None


def previous_revision_source(event: str, *, rollback_blue_green: bool = False) -> str:
    """Where an event's scripts come from when the current deployment has no archive yet (§4.2)."""
    if event in ("BeforeBlockTraffic", "AfterBlockTraffic"):
        return MOST_RECENT if rollback_blue_green else LAST_SUCCESSFUL
    if event == "ApplicationStop":
        return LAST_SUCCESSFUL
    if event in ("BeforeAllowTraffic", "AfterAllowTraffic") and rollback_blue_green:
        return LAST_SUCCESSFUL
    return CURRENT


def unknown_hooks(appspec_hooks: list[str], raw_events: str | None) -> list[str]:
    """§4.7: appspec hook names (then the hook mapping) not among all possible events."""
    possible = all_possible_events(raw_events)
    names = list(appspec_hooks)
    for e in possible:
        if e not in BUILTIN_EVENTS and e not in names:
            names.append(e)
    return [n for n in names if n not in possible]


def missing_custom_events(appspec_hooks: list[str], raw_events: str | None) -> list[str]:
    """§4.7: custom ``--events`` that are neither appspec hooks nor built-in hook names."""
    return [c for c in custom_events(raw_events)
            if c not in appspec_hooks and c not in HOOK_EVENTS and c not in BUILTIN_EVENTS]
