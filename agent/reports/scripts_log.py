"""Reading the agent's scripts.log back: which hook printed which lines (behaviour doc §7.5).

The file holds, per hook event, ``<time> LifecycleEvent - <event>``, then per script
``<time> Script - <location>`` followed by that script's ``<time> [stdout]...``/``[stderr]...``
lines. Pure parsing plus one reader; used by reports (when a stream predates the ``output`` field of
``hook.end``) and by ``cdsim logs``. Imports nothing from the engine.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.reports.model import DeploymentSummary

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


@dataclass
class ScriptSection:
    """The lines one script printed in one event, timestamps removed (``[stdout]hello\\n``...)."""

    event: str
    location: str
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def parse(text: str) -> list[ScriptSection]:
    """Sections in file order; a line before any ``Script -`` header is dropped (none is written)."""
    sections: list[ScriptSection] = []
    event = ""
    for raw in text.splitlines(keepends=True):
        line = _STAMP.sub("", raw, count=1)
        if line.startswith("LifecycleEvent - "):
            event = line[len("LifecycleEvent - "):].strip()
        elif line.startswith("Script - "):
            sections.append(ScriptSection(event, line[len("Script - "):].strip()))
        elif sections:
            sections[-1].lines.append(line if line.endswith("\n") else line + "\n")
    return sections


def read(path: str) -> list[ScriptSection]:
    """Sections of the scripts.log at ``path``; [] when it does not exist."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse(f.read())
    except FileNotFoundError:
        return []


def fill_missing_output(dep: DeploymentSummary) -> None:
    """Give hooks whose ``hook.end`` carried no ``output`` the lines scripts.log holds for them
    (matched in order per event and location, since a script may run in several events)."""
    wanted = [h for h in dep["hooks"] if h.get("output") is None]
    if not wanted:
        return
    logs = {log for h in wanted if (log := h.get("scripts_log"))}
    if not logs and dep.get("deployment_dir"):
        logs = {f"{dep['deployment_dir']}/logs/scripts.log"}
    sections: list[ScriptSection] = []
    for path in sorted(logs):
        sections.extend(read(path))
    for hook in wanted:
        match = next((s for s in sections
                      if s.event == hook.get("event") and s.location == hook.get("location")), None)
        if match is not None:
            sections.remove(match)
            hook["output"] = match.output
        else:
            hook["output"] = ""
