"""The Markdown report: a deployment as a GitHub job summary (``$GITHUB_STEP_SUMMARY``), or any Markdown page.

Per deployment: a heading with the outcome and duration, the error, a table of the lifecycle events
(status, duration, hooks), a table of the hook runs (script, status, duration, exit status or signal),
the tail of the failed hook's output (the last ``TAIL_LINES`` lines, at most ``TAIL_CHARS``
characters) in a fenced block, and the notices; ``findings`` renders `cdsim validate`'s findings as a
table. Everything that comes from the bundle or a hook (paths, messages, output) is escaped: in text
every ASCII punctuation character is backslash-escaped, so no link, image, HTML tag or table cell can be
made of it; output goes in a fence longer than any run of backticks it holds. Pure: summaries in, text out.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from agent.reports.model import DeploymentSummary, HookSummary, failure_outside_hooks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.reports.sarif import FindingLike

TAIL_LINES = 30
TAIL_CHARS = 4000
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def text(value: object) -> str:
    """``value`` as inline Markdown that shows as itself: punctuation escaped, one line."""
    shown = "" if value is None else str(value)
    shown = _CONTROL.sub(" ", shown.replace("\r\n", " ").replace("\n", " "))
    return _PUNCTUATION.sub(r"\\\1", shown)


def fenced(body: str) -> str:
    """``body`` in a fenced code block no line of it can close."""
    body = _CONTROL.sub("\ufffd", body.replace("\r\n", "\n").replace("\r", "\n"))
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{body.rstrip(chr(10))}\n{fence}\n"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def tail(output: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> tuple[str, bool]:
    """The last ``lines`` lines of ``output`` (at most ``chars`` characters), and whether it was cut."""
    kept = output.rstrip("\n").split("\n")
    cut = len(kept) > lines
    shown = "\n".join(kept[-lines:])
    if len(shown) > chars:
        shown, cut = shown[-chars:], True
    return shown, cut


def _outcome(hook: HookSummary) -> str:
    if hook.get("signal"):
        return f"signal {hook['signal']}"
    if hook.get("exit_status") is not None:
        return f"exit {hook['exit_status']}"
    return "-"


def _status(status: str | None, ignored: bool = False) -> str:
    shown = status or "Unfinished"
    return f"{shown} (ignored)" if ignored and shown != "Succeeded" else shown


def _deployment(dep: DeploymentSummary) -> list[str]:
    out: list[str] = []
    where = f" in {dep['failed_event']}" if dep["status"] == "Failed" and dep["failed_event"] else ""
    out.append(f"### cdsim: deployment {text(dep['deployment_id'])} {text(dep['status'])}{text(where)} "
               f"({duration(dep['duration'])})\n")
    facts = [("bundle", dep["bundle_location"]), ("application", dep["application"]),
             ("deployment group", dep["group_name"])]
    out.append("".join(f"- {name}: {text(value)}\n" for name, value in facts if value))
    if dep["error"]:
        out.append(f"\n**Error:** {text(dep['error'])}\n")
    if dep["events"]:
        out.append("\n| Event | Status | Duration | Hooks |\n| --- | --- | --- | --- |\n")
        for ev in dep["events"]:
            out.append(f"| {text(ev['event'])} | {text(_status(ev['status'], ev['ignored']))} | "
                       f"{duration(ev['duration'])} | {ev['hooks']} |\n")
    if dep["hooks"]:
        out.append("\n| Event | Script | Status | Duration | Result |\n| --- | --- | --- | --- | --- |\n")
        for hook in dep["hooks"]:
            out.append(f"| {text(hook['event'])} | {text(hook['location'])} | "
                       f"{text(_status(hook.get('status'), bool(hook.get('ignored'))))} | "
                       f"{duration(hook.get('duration'))} | {text(_outcome(hook))} |\n")
    for hook in dep["hooks"]:
        if hook.get("status") in (None, "Succeeded"):
            continue
        output = hook.get("output") or ""
        out.append(f"\n#### {text(hook['event'])} {text(hook['location'])} failed"
                   f"{' (ignored)' if hook.get('ignored') else ''}\n\n")
        if hook.get("message"):
            out.append(f"{text(hook['message'])}\n\n")
        if output.strip():
            shown, cut = tail(output)
            label = f"last {TAIL_LINES} lines of its output" if cut else "its output"
            out.append(f"{label}:\n\n{fenced(shown)}")
        else:
            out.append("it printed nothing\n")
    outside = failure_outside_hooks(dep)
    if outside is not None and not dep["error"]:
        out.append(f"\n**{text(outside['event'])} failed:** {text(outside['error'])}\n")
    if dep["notices"]:
        out.append("\n" + "".join(f"- note: {text(n['text'])}\n" for n in dep["notices"]))
    return out


def render(deployments: list[DeploymentSummary]) -> str:
    if not deployments:
        return "### cdsim: no deployment in the event stream\n"
    return "\n".join("".join(_deployment(dep)) for dep in deployments)


def findings(found: Sequence[FindingLike], paths: Sequence[str], verdict: str) -> str:
    """`cdsim validate`'s findings: a heading with the verdict, then a table (where, severity, code,
    message and hint)."""
    out = [f"### cdsim validate {' '.join(text(p) for p in paths)}: {text(verdict)}\n"]
    if found:
        out.append("\n| Where | Severity | Code | Message |\n| --- | --- | --- | --- |\n")
        for f in found:
            where = ":".join(str(x) for x in (f.file or "-", f.line, f.column) if x is not None)
            message = f.message + (f" (hint: {f.hint})" if f.hint else "")
            out.append(f"| {text(where)} | {text(f.severity)} | {text(f.code)} | {text(message)} |\n")
    return "".join(out)
