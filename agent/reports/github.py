"""GitHub Actions annotations (workflow commands) for a deployment's failures.

``::error file=F,line=L,col=C,title=T::message`` for the failed hook (the script file in the bundle)
or for an appspec error (the appspec file at its line), ``::warning::`` for notices and for a failure
--ignore-application-stop-failures let pass. A previous revision's script (ApplicationStop, spec §4.2)
is named by its deployment and archive, never as the bundle's file. ``finding_commands`` does the same
for `cdsim validate --format github`'s findings (each at its file, line and column). Paths are made
relative to the workspace, as GitHub resolves them from the repository root. Pure: summaries (or
findings) and a workspace folder in, lines out.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from agent.reports.model import DeploymentSummary

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.reports.sarif import FindingLike


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def _command(level: str, message: str, **props: object) -> str:
    given = ",".join(f"{k}={_prop(str(v))}" for k, v in props.items() if v is not None)
    return f"::{level}{' ' + given if given else ''}::{_data(message)}"


def _in_bundle(dep: DeploymentSummary, name: str, workspace: str) -> str | None:
    """``name`` inside a directory bundle, relative to the workspace; None for archives."""
    bundle = dep["bundle_location"]
    if not bundle or not os.path.isdir(bundle):
        return None
    path = os.path.join(bundle, name.lstrip("/"))
    return os.path.relpath(path, workspace) if os.path.isabs(path) else path


def workflow_commands(deployments: list[DeploymentSummary], workspace: str) -> list[str]:
    lines = []
    for dep in deployments:
        did = dep["deployment_id"]
        for hook in dep["hooks"]:
            if hook.get("status") == "Failed":
                message = hook.get("message") or "hook failed"
                file = _in_bundle(dep, str(hook["location"]), workspace)
                if hook.get("previous_revision"):
                    # not this bundle's script (spec §4.2): pointing at the bundle's file would mislead
                    file = None
                    message += (f" (the previous revision's script: deployment {hook.get('revision_deployment_id')}, "
                                f"archive {hook.get('revision_archive')})")
                ignored = bool(hook.get("ignored"))
                lines.append(_command(
                    "warning" if ignored else "error", message, file=file,
                    title=f"cdsim {did}: {hook['event']} {hook['location']} failed"
                          + (" (ignored)" if ignored else "")))
        if dep["status"] == "Failed" and not any(h.get("status") == "Failed" and not h.get("ignored")
                                                 for h in dep["hooks"]):
            file = _in_bundle(dep, dep["error_file"], workspace) if dep["error_file"] else None
            message = dep.get("error") or "deployment failed"
            if file and message.startswith(f"{dep['error_file']}:{dep['error_line']}"):
                message = message.split(": ", 1)[-1]   # the location is in the annotation already
            lines.append(_command("error", message, file=file,
                                  line=dep.get("error_line") if file else None,
                                  col=dep.get("error_column") if file else None,
                                  title=f"cdsim {did}: {dep.get('failed_event') or 'deployment'} failed"))
        for notice in dep["notices"]:
            lines.append(_command("warning", notice["text"], title=f"cdsim {did}"))
    return lines


def render(deployments: list[DeploymentSummary], workspace: str) -> str:
    return "".join(line + "\n" for line in workflow_commands(deployments, workspace))


def finding_commands(findings: Sequence[FindingLike], workspace: str) -> list[str]:
    """One ``::error``/``::warning`` per validate finding, at its file (relative to the workspace), line
    and column; an archive member's finding points at the archive."""
    lines = []
    for f in findings:
        file = f.file
        member = None
        if file:
            from agent.reports.sarif import split_member
            file, member = split_member(file)
            file = os.path.relpath(file, workspace) if os.path.isabs(file) else os.path.normpath(file)
        message = f.message + (f" (hint: {f.hint})" if f.hint else "") + (f" (in {member})" if member else "")
        lines.append(_command("warning" if f.severity == "warning" else "error", message, file=file,
                              line=f.line if file and not member else None,
                              col=f.column if file and not member else None, title=f"cdsim validate: {f.code}"))
    return lines
