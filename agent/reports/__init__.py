"""Reports rendered from a deployment's event stream (agent.events): junit, json, html, github, markdown.

The CLI's ``--report KIND=FILE`` (repeatable) goes through :func:`parse_report_option`; after the
deployment, :func:`write_reports` writes every requested report from the stream's records (each file
written atomically) and, when ``GITHUB_ACTIONS=true``, prints GitHub annotations. ``FILE`` may be
``-`` for standard output. Renderers are pure (``model``, ``junit``, ``json_report``, ``html``,
``github``, ``markdown``: a GitHub job summary; ``sarif`` renders validate's findings, not a stream);
this module is the one place that reads scripts.log for streams without ``output`` and writes
files. Must not import the deploy engine, hooks_runtime or the CLI.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

from agent.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `cdsim local` imports this module,
if TYPE_CHECKING:      # and the model (with typing) only when a report is written
    import argparse
    from typing import TextIO

    from agent.reports.model import DeploymentSummary, Record

__all__ = ["KINDS", "add_report_option", "load_records", "parse_report_option", "render", "render_text",
           "write_reports"]

KINDS = ("github", "html", "json", "junit", "markdown")


def parse_report_option(text: str) -> tuple[str, str]:
    """``"junit=out/junit.xml"`` -> ``("junit", "out/junit.xml")``; UsageError when malformed."""
    kind, eq, path = text.partition("=")
    kind = kind.strip().lower()
    if not eq or not path:
        raise UsageError(f"--report {text!r}: expected KIND=FILE, e.g. junit=report.xml",
                         reference="report-option-invalid", hint=f"KIND is one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise UsageError(f"--report {text!r}: unknown report kind {kind!r}",
                         reference="report-kind-unknown", hint=f"KIND is one of {', '.join(KINDS)}")
    return kind, path


def add_report_option(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--report KIND=FILE`` option to an argparse parser (``args.report``: a list
    of (kind, path)); a malformed value is a usage error at parse time."""
    import argparse  # the commands calling this have imported it; `cdsim local` imports this module without

    def kind_and_path(text: str) -> tuple[str, str]:
        try:
            return parse_report_option(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(f"{e.message} ({e.hint})") from None

    parser.add_argument("--report", action="append", default=[], type=kind_and_path, metavar="KIND=FILE",
                        help=f"write a report of the deployment (KIND: {', '.join(KINDS)}; FILE '-' for "
                             "standard output); repeatable")


def _deployments(records: list[Record]) -> list[DeploymentSummary]:
    from agent.reports import model, scripts_log

    deps = model.summarize_all(records)
    for dep in deps:
        scripts_log.fill_missing_output(dep)
    return deps


def render_text(kind: str, records: Iterable[Record], *, workspace: str | None = None) -> str:
    """The report of ``kind`` as text."""
    records = list(records)
    deps = _deployments(records)
    if kind == "junit":
        from agent.reports import junit
        return junit.render(deps)
    if kind == "json":
        from agent.reports import json_report
        return json_report.render(records, deps)
    if kind == "html":
        from agent.reports import html
        return html.render(deps)
    if kind == "github":
        from agent.reports import github
        return github.render(deps, workspace or os.getcwd())
    if kind == "markdown":
        from agent.reports import markdown
        return markdown.render(deps)
    raise UsageError(f"unknown report kind {kind!r}", reference="report-kind-unknown",
                     hint=f"KIND is one of {', '.join(KINDS)}")


def render(kind: str, records: Iterable[Record], path: str, *, workspace: str | None = None) -> None:
    """Write the report of ``kind`` to ``path`` (``-``: standard output), atomically."""
    from agent.fsutil import atomic_write

    text = render_text(kind, records, workspace=workspace)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, text)


def load_records(path: str) -> list[Record]:
    """The records of a JSON-lines event file (what ``cdsim local`` reports are made from)."""
    from agent.events import read_events
    return read_events(path)


def write_reports(specs: Iterable[str | tuple[str, str]], records: Iterable[Record], *,
                  env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> list[str]:
    """Write each ``KIND=FILE`` (or ``(kind, path)``) report; returns the paths written.

    When ``env`` (default: os.environ) has ``GITHUB_ACTIONS=true``, also prints the GitHub annotations
    to ``stream`` (default: stdout), where the runner picks them up; call it even with no specs.
    """
    env = os.environ if env is None else env
    records = list(records)
    parsed = [parse_report_option(s) if isinstance(s, str) else s for s in specs]
    written = []
    for kind, path in parsed:
        render(kind, records, path, workspace=env.get("GITHUB_WORKSPACE"))
        written.append(path)
    if env.get("GITHUB_ACTIONS") == "true" and not any(kind == "github" and path == "-" for kind, path in parsed):
        out = stream or sys.stdout
        out.write(render_text("github", records, workspace=env.get("GITHUB_WORKSPACE")))
        out.flush()
    return written
