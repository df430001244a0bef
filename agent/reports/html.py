"""The HTML report: one self-contained page (no external files) per report.

Per deployment: the outcome, a timeline drawn to scale (one row per lifecycle event, one per hook
run; left and width are percentages of the deployment's span, with a minimum visible width so an
instant event still shows; under an event that got a rehearsal's requests, a strip red by its error
rate and the count beside it), the rehearsal's requests per instance and event with their error rate
(traffic records), a table of hooks, each hook's output, the files installed and notices.
The page is complete without JavaScript; a few lines of script only record each bar's laid-out pixel
box as data attributes, which lets a headless browser test check the drawing. Pure: summaries in,
text out.
"""
from __future__ import annotations

import datetime
from html import escape

from agent.reports.model import DeploymentSummary, HookSummary, TrafficWindow

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:2em}h3{font-size:1.05em}
.ok{color:#146c2e}.bad{color:#b3261e}.unk{color:#8a6d00}
.timeline{border:1px solid #ccc;padding:.5em;margin:1em 0}
.row{display:flex;align-items:center;height:20px}
.label{flex:0 0 22em;box-sizing:border-box;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-size:12px}
.row.hook .label{padding-left:1.5em}
.track{position:relative;flex:1 1 auto;height:14px;background:#f4f4f4}
.bar{position:absolute;top:1px;height:12px;min-width:3px;border-radius:2px;box-sizing:border-box}
.bar.event{background:#9ab7e0}.bar.hook{background:#3b78c4}
.bar.Failed{background:#d9534f}.bar.Unfinished{background:#e0b000}
.requests{position:absolute;bottom:0;height:4px;min-width:3px;background:#2e8b57}
.requests.failing{background:#c0392b}
.reqnote{flex:0 0 7em;padding-left:.5em;box-sizing:border-box;font-size:11px;color:#666;white-space:nowrap}
.with-requests .axis{margin-right:7em}
.axis{display:flex;justify-content:space-between;margin-left:22em;font-size:11px;color:#666}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.5em;overflow:auto;max-height:30em}
pre .stderr{color:#b3261e}
"""

# fills data-px-left / data-px-width on every bar once laid out (tests and curious readers)
_SCRIPT = """
document.querySelectorAll('.bar').forEach(function(b){
  var t=b.parentNode.getBoundingClientRect(), r=b.getBoundingClientRect();
  b.dataset.pxLeft=(r.left-t.left).toFixed(1); b.dataset.pxWidth=r.width.toFixed(1);
  b.dataset.pxTrack=t.width.toFixed(1);
});
document.body.dataset.rendered='1';
"""


def _cls(status: str | None) -> str:
    return {"Succeeded": "ok", "Failed": "bad"}.get(status or "", "unk")


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}s"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "?"
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bar(kind: str, name: str, status: str, start: float | None, end: float | None,
         t0: float, span: float, requests: TrafficWindow | None = None, noted: bool = False) -> str:
    """One row of the timeline; with ``requests`` (the rehearsal's window of this event) a strip under
    the bar, red when requests failed, and the error rate beside the track (in a column every row of a
    ``noted`` timeline has, so that the tracks stay aligned)."""
    start = t0 if start is None else start
    end = start if end is None else end
    left = max(0.0, min(100.0, (start - t0) / span * 100))
    width = max(0.0, min(100.0 - left, (end - start) / span * 100))
    title = f"{name}: {status}, {end - start:.3f}s"
    strip = ""
    note = '<span class="reqnote"></span>' if noted else ""
    if requests is not None:
        sent, failed = requests["sent"], requests["failed"]
        rate = 100.0 * failed / sent if sent else 0.0
        said = f"{sent} requests, {failed} failed ({rate:.1f}%)"
        title += f"; {said}"
        strip = (f'<div class="requests{" failing" if failed else ""}" data-sent="{sent}" data-failed="{failed}" '
                 f'data-error-rate="{rate:.1f}" style="left:{left:.4f}%;width:{width:.4f}%;opacity:'
                 f'{0.35 + 0.65 * rate / 100 if failed else 0.6:.2f}" title="{escape(said)}"></div>')
        note = f'<span class="reqnote">{escape(f"{failed}/{sent} failed" if failed else f"{sent} ok")}</span>'
    return (f'<div class="row {kind}"><span class="label" title="{escape(name)}">{escape(name)}</span>'
            f'<div class="track"><div class="bar {kind} {escape(status)}" data-kind="{kind}" '
            f'data-name="{escape(name)}" data-status="{escape(status)}" data-duration="{end - start:.6f}" '
            f'style="left:{left:.4f}%;width:{width:.4f}%" title="{escape(title)}"></div>{strip}</div>{note}</div>')


def _timeline(dep: DeploymentSummary) -> str:
    t0 = dep["started"] or 0.0
    span = max((dep["ended"] or t0) - t0, 1e-6)
    rows = []
    hooks_by_event: dict[str | None, list[HookSummary]] = {}
    for hook in dep["hooks"]:
        hooks_by_event.setdefault(hook["event"], []).append(hook)
    requests = {w["event"]: w for w in dep["traffic"] if w["instance"] not in ("*", "-")}
    for ev in dep["events"]:
        rows.append(_bar("event", str(ev["event"]), ev["status"], ev["started"], ev["ended"], t0, span,
                         requests.get(str(ev["event"])), bool(requests)))
        for hook in hooks_by_event.pop(ev["event"], []):
            rows.append(_bar("hook", f"{hook['event']} {hook['location']}", hook.get("status", "Unfinished"),
                             hook.get("started"), hook.get("ended"), t0, span, noted=bool(requests)))
    for hooks in hooks_by_event.values():   # hooks whose event.start is missing from the stream
        for hook in hooks:
            rows.append(_bar("hook", f"{hook['event']} {hook['location']}", hook.get("status", "Unfinished"),
                             hook.get("started"), hook.get("ended"), t0, span, noted=bool(requests)))
    ticks = "".join(f"<span>{span * i / 4:.2f}s</span>" for i in range(5))
    return (f'<div class="timeline{" with-requests" if requests else ""}" data-span="{span:.6f}">{"".join(rows)}'
            f'<div class="axis">{ticks}</div></div>')


def _output(text: str) -> str:
    parts = []
    for line in text.splitlines(keepends=True):
        if line.startswith("[stderr]"):
            parts.append(f'<span class="stderr">{escape(line)}</span>')
        else:
            parts.append(escape(line))
    return "".join(parts) or "(no output)"


def _hooks(dep: DeploymentSummary) -> str:
    if not dep["hooks"]:
        return "<p>No hook ran.</p>"
    rows = []
    details = []
    for i, h in enumerate(dep["hooks"]):
        status = h.get("status", "Unfinished")
        shown = f"{status} (ignored)" if h.get("ignored") else status
        origin = (f'<br><small>previous revision: deployment {escape(str(h.get("revision_deployment_id")))}, '
                  f'archive {escape(str(h.get("revision_archive")))}, appspec '
                  f'{escape(str(h.get("revision_appspec")))}</small>' if h.get("previous_revision") else "")
        rows.append(f'<tr><td>{escape(str(h["event"]))}</td><td>{escape(str(h["location"]))}{origin}</td>'
                    f'<td class="{_cls(status)}">{escape(shown)}</td><td>{_secs(h.get("duration"))}</td>'
                    f'<td>{escape(str(h.get("exit_status")))}</td><td>{escape(h.get("message") or "")}</td></tr>')
        notes = "".join(f"<li>{escape(str(n))}</li>" for n in h.get("notes") or ())
        truncated = " (truncated: the last 256 KiB)" if h.get("output_truncated") else ""
        details.append(
            f'<details class="hook-output" id="hook-{i}"{" open" if status != "Succeeded" else ""}>'
            f'<summary>{escape(str(h["event"]))} {escape(str(h["location"]))}: '
            f'<span class="{_cls(status)}">{escape(shown)}</span>{truncated}</summary>'
            + (f"<ul>{notes}</ul>" if notes else "")
            + f'<pre>{_output(h.get("output") or "")}</pre></details>')
    return ("<table><tr><th>Event</th><th>Script</th><th>Outcome</th><th>Duration</th><th>Exit status</th>"
            "<th>Message</th></tr>" + "".join(rows) + "</table>" + "".join(details))


def _files(dep: DeploymentSummary) -> str:
    parts = []
    if dep["files"]:
        items = "".join(f"<li>{escape(str(f.get('destination') or f))}"
                        + (f" &larr; {escape(str(f['source']))}" if f.get("source") else "") + "</li>"
                        for f in dep["files"])
        parts.append(f'<ul class="files">{items}</ul>')
    if dep["install"]:
        rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
                       for k, v in dep["install"].items())
        parts.append(f"<table class='install'>{rows}</table>")
    return "".join(parts) or "<p>Install did not run.</p>"


def _traffic(dep: DeploymentSummary) -> str:
    """The rehearsal's figures per instance and event, the error rate of each window shown."""
    if not dep["traffic"]:
        return ""

    def ms(v: float | None) -> str:
        return "" if v is None else f"{v:g}"

    rows = []
    for w in dep["traffic"]:
        rate = 100.0 * w["failed"] / w["sent"] if w["sent"] else 0.0
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(w["errors"].items()))
        versions = ", ".join(f"{k}: {v}" for k, v in sorted(w["versions"].items()))
        where = "all requests" if w["instance"] == "*" else f"{w['instance']}"
        rows.append(f'<tr class="{"traffic-failed" if w["failed"] else "traffic-ok"}"><td>{escape(where)}</td>'
                    f'<td>{escape(w["event"] if w["instance"] != "*" else "")}</td><td>{w["sent"]}</td>'
                    f'<td class="{_cls("Failed" if w["failed"] else "Succeeded")}">{w["failed"]}</td>'
                    f'<td><span class="errbar" style="display:inline-block;background:#c0392b;height:0.8em;'
                    f'width:{rate:.1f}px"></span> {rate:.1f}%</td><td>{escape(errors)}</td>'
                    f'<td>{ms(w["p50_ms"])}</td><td>{ms(w["p95_ms"])}</td><td>{ms(w["p99_ms"])}</td>'
                    f'<td>{escape(versions)}</td></tr>')
    return ('<h3>Requests during the deployment</h3><table class="traffic"><tr><th>Instance</th><th>Event</th>'
            "<th>Sent</th><th>Failed</th><th>Error rate</th><th>Why</th><th>p50 ms</th><th>p95 ms</th>"
            "<th>p99 ms</th><th>Versions</th></tr>" + "".join(rows) + "</table>")


def _deployment(dep: DeploymentSummary) -> str:
    status = dep["status"]
    error = (f'<p class="bad">Failed at {escape(str(dep.get("failed_event") or "?"))}: '
             f'{escape(str(dep["error"]))} [{escape(str(dep.get("reference")))}]</p>' if dep["error"] else "")
    notices = ("<h3>Notices</h3><ul>" + "".join(f"<li>{escape(n['text'])}</li>" for n in dep["notices"])
               + "</ul>") if dep["notices"] else ""
    return (f'<section class="deployment" id="{escape(str(dep["deployment_id"]))}">'
            f'<h2>Deployment {escape(str(dep["deployment_id"]))}: '
            f'<span class="{_cls(status)}">{escape(status)}</span> in {_secs(dep["duration"])}</h2>'
            f'<p>Started {_when(dep["started"])}; group {escape(str(dep.get("group_id")))}; '
            f'folder {escape(str(dep.get("deployment_dir")))}</p>{error}'
            f"<h3>Timeline</h3>{_timeline(dep)}{_traffic(dep)}<h3>Hooks</h3>{_hooks(dep)}"
            f"<h3>Files installed</h3>{_files(dep)}{notices}</section>")


def render(deployments: list[DeploymentSummary]) -> str:
    title = "cdsim deployment report"
    if len(deployments) == 1:
        title += f": {deployments[0]['deployment_id']} {deployments[0]['status']}"
    body = "".join(_deployment(d) for d in deployments) or "<p>No deployment in this event stream.</p>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
            f"<body><h1>{escape(title)}</h1>{body}<script>{_SCRIPT}</script></body></html>\n")
