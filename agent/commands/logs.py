"""`cdsim logs [DEPLOYMENT] [--event E] [--follow]` and `cdsim history`: what hooks printed, and which
deployments ran.

Where: the instance `cdsim deploy` deploys into (``default``) unless ``--instance NAME`` or ``--host``
says otherwise; a ``--root-dir`` alone means this machine. In an instance the deployments are read from
its upper layer (what it wrote): event streams under /var/log/aws/codedeploy-agent/cdsim-events and
deployment folders under /opt/codedeploy-agent/deployment-root (or each ``--root-dir``, a path inside
it). On this machine: the state folder of `cdsim deploy --host` (``agent.state.host_dir()``),
each ``--root-dir`` and, unless one is given, the agent's default folders (`cdsim local`).

Deployments are found in two places and merged by id: event streams (``<log dir>/cdsim-events/<group>/
<id>.jsonl``, written by the engine; they tell status and timings) and deployment roots
(``<root>/<group>/<id>/logs/scripts.log``, the agent's layout; they hold the output). Reads files
only; imports no engine module. ``agent.commands.history`` registers `cdsim history` from here (the
CLI registers one command per module).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field

from agent.errors import ExitStatus, UsageError
from agent.state import AGENT_LOG_DIR, AGENT_ROOT_DIR, events_dir, host_log_dir, host_root_dir, in_upper

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

SUMMARY = "print what a deployment's hooks printed (the latest by default); --follow while it runs"
HISTORY_SUMMARY = "list past deployments (in the instance cdsim deploy uses, or --instance/--host), newest last"
_ID = re.compile(r"^d-[A-Z0-9]{9}(-local)?$|^[0-9a-f-]{36}$")


@dataclass
class FoundDeployment:
    """One deployment as found on disk; ``prefix`` maps paths recorded inside an instance to the host."""

    deployment_id: str
    group: str = ""
    started: float | None = None
    ended: float | None = None
    status: str = "Unknown"
    failed_event: str | None = None
    error: str | None = None
    events_path: str | None = None
    deployment_dir: str | None = None
    hooks: list[dict[str, Any]] = field(default_factory=list)
    prefix: str = ""

    @property
    def scripts_log(self) -> str | None:
        if not self.deployment_dir:
            return None
        return _host_path(f"{self.deployment_dir}/logs/scripts.log", self.prefix)

    def to_dict(self) -> dict[str, Any]:
        return {"deployment_id": self.deployment_id, "group": self.group, "started": self.started,
                "ended": self.ended, "status": self.status, "failed_event": self.failed_event,
                "error": self.error, "events_path": self.events_path, "scripts_log": self.scripts_log,
                "hooks": self.hooks}


def _host_path(path: str, prefix: str) -> str:
    """A path recorded inside an instance, seen from the host (its upper layer), when it exists there."""
    if prefix and not os.path.exists(path) and os.path.exists(prefix + path):
        return prefix + path
    return path


def _sources(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(root dir, log dir, path prefix) triples to search, for the place ``args`` names."""
    from agent.commands import where as places

    place = places.resolve(args)
    roots = getattr(args, "root_dir", None) or []
    if place.instance is not None:
        inst = places.existing_instance(place.instance)
        if inst is None:
            return []
        upper = inst.upper
        out = [(in_upper(upper, AGENT_ROOT_DIR), in_upper(upper, AGENT_LOG_DIR), upper)]
        # a --root-dir with an instance is a root inside it, as `cdsim deploy --instance --root-dir` uses
        out += [(upper + os.path.abspath(root), "", upper) for root in roots]
        return out
    out = [(host_root_dir(), host_log_dir(), "")]
    for root in roots:
        out.append((os.path.abspath(root), "", ""))
    if not roots:
        out.append((AGENT_ROOT_DIR, AGENT_LOG_DIR.rstrip("/"), ""))
    return out


def _nothing_found(args: argparse.Namespace) -> str:
    """What to say when no deployment is found where ``args`` looked."""
    from agent.commands import where as places

    place = places.resolve(args)
    if place.instance is None:
        return "no deployment found on this machine"
    if places.existing_instance(place.instance) is None:
        return f"no deployment in instance {place.instance} yet (it does not exist)"
    return f"no deployment in instance {place.instance} yet"


def _nothing_found_hint(args: argparse.Namespace) -> str:
    from agent.commands import where as places

    place = places.resolve(args)
    if place.host:
        return ("run one with `cdsim deploy --host`, or say where with --root-dir; deployments in an "
                "instance: --instance NAME")
    flag = f" --instance {place.instance}" if place.explicit else ""
    return f"run one with `cdsim deploy{flag}`; deployments made on this machine: --host"


def _from_events(path: str, prefix: str) -> FoundDeployment | None:
    from agent.events import read_events
    from agent.reports.model import summarize

    try:
        records = read_events(path)
    except OSError:
        return None
    if not records:
        return None
    dep = summarize(records)
    return FoundDeployment(
        deployment_id=str(dep["deployment_id"]), group=dep.get("group_id") or os.path.basename(os.path.dirname(path)),
        started=dep["started"], ended=dep["ended"] if dep["status"] != "Unfinished" else None,
        status=dep["status"], failed_event=dep["failed_event"], error=dep["error"], events_path=path,
        deployment_dir=dep["deployment_dir"], prefix=prefix,
        hooks=[{k: h.get(k) for k in ("event", "location", "status", "duration", "message")} for h in dep["hooks"]])


def find_deployments(args: argparse.Namespace) -> list[FoundDeployment]:
    """Every deployment found, oldest first."""
    found: dict[str, FoundDeployment] = {}
    for root, log_dir, prefix in _sources(args):
        if log_dir:
            for path in glob.glob(os.path.join(events_dir(log_dir), "*", "*.jsonl")):
                dep = _from_events(path, prefix)
                if dep and (dep.deployment_id not in found or not found[dep.deployment_id].events_path):
                    found[dep.deployment_id] = dep
        for folder in glob.glob(os.path.join(root, "*", "*")):
            did = os.path.basename(folder)
            if not _ID.match(did) or not os.path.isdir(folder):
                continue
            group = os.path.basename(os.path.dirname(folder))
            inside = folder[len(prefix):] if prefix else folder
            if did in found:
                if not found[did].deployment_dir:
                    found[did].deployment_dir = inside
                continue
            try:
                started = os.stat(folder).st_mtime
            except OSError:
                continue
            found[did] = FoundDeployment(deployment_id=did, group=group, started=started,
                                         deployment_dir=inside, prefix=prefix)
    return sorted(found.values(), key=lambda d: (d.started or 0.0, d.deployment_id))


def pick(deployments: list[FoundDeployment], wanted: str | None,
         args: argparse.Namespace | None = None) -> FoundDeployment:
    """The deployment named by id (or a unique prefix of it), or the latest."""
    if not deployments:
        raise UsageError(_nothing_found(args) if args is not None else "no deployment found",
                         reference="deployment-unknown",
                         hint=_nothing_found_hint(args) if args is not None else None)
    if not wanted or wanted == "latest":
        return deployments[-1]
    exact = [d for d in deployments if d.deployment_id == wanted]
    matches = exact or [d for d in deployments if d.deployment_id.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no deployment {wanted!r} found", reference="deployment-unknown",
                         hint="`cdsim history` lists the deployments found")
    raise UsageError(f"{wanted!r} names {len(matches)} deployments: "
                     + ", ".join(d.deployment_id for d in matches), reference="deployment-ambiguous")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    from agent.commands import where as places

    places.add_where_options(p, instance_help="look at the deployments made in this sandboxed instance",
                             host_help="look at the deployments made on this machine (`cdsim deploy --host`, "
                                       "`cdsim local`)")
    p.add_argument("--root-dir", action="append", metavar="DIR",
                   help="also look in this deployment root (repeatable): on this machine unless --instance "
                        "is given, then inside that instance; on this machine the agent's default root is "
                        "then not searched")


LOGS_DESCRIPTION = (
    "Print what the hooks of a deployment printed (its scripts.log), the latest one unless you name it. "
    "It looks where `cdsim deploy` deploys: the instance default, or the one --instance names; --host "
    "looks at deployments made on this machine (`cdsim deploy --host`, `cdsim local`). --follow keeps "
    "printing while the deployment runs and stops when it ends.")
HISTORY_DESCRIPTION = (
    "List past deployments, oldest first: when each started, its id, its outcome (and the event it "
    "failed at), how long it took, how many hooks ran, and its deployment group. It looks where "
    "`cdsim deploy` deploys: the instance default, or the one --instance names; --host lists the "
    "deployments made on this machine (`cdsim deploy --host`, `cdsim local`).")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("logs", help=SUMMARY, description=LOGS_DESCRIPTION)
    p.add_argument("deployment", nargs="?", metavar="DEPLOYMENT",
                   help="deployment id or a unique prefix of it (default: the latest)")
    p.add_argument("--event", "-e", action="append", metavar="EVENT",
                   help="only this lifecycle event's output (repeatable)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new output until the deployment ends (or Ctrl-C)")
    p.add_argument("--no-timestamps", action="store_true", help="leave out the time of each line")
    _add_search_options(p)
    p.set_defaults(func=run)


def register_history(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    h = sub.add_parser("history", help=HISTORY_SUMMARY, description=HISTORY_DESCRIPTION)
    h.add_argument("--limit", "-n", type=int, default=20, help="show the last N deployments (default 20, 0: all)")
    h.add_argument("--format", choices=("text", "json"), default="text")
    _add_search_options(h)
    h.set_defaults(func=run_history)


# ------------------------------------------------------------------------------------------- logs
class _Filter:
    """Passes scripts.log lines belonging to the chosen events (all when none chosen)."""

    _STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")

    def __init__(self, events: list[str] | None, timestamps: bool):
        self.events = set(events or ())
        self.timestamps = timestamps
        self.current = ""

    def __call__(self, line: str) -> str | None:
        body = self._STAMP.sub("", line, count=1)
        if body.startswith("LifecycleEvent - "):
            self.current = body[len("LifecycleEvent - "):].strip()
        if self.events and self.current not in self.events:
            return None
        return line if self.timestamps else body


def _ended(dep: FoundDeployment) -> bool:
    if not dep.events_path:
        return False
    try:
        with open(dep.events_path, encoding="utf-8") as f:
            return any('"deployment.end"' in line for line in f)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    dep = pick(find_deployments(args), args.deployment, args)
    keep = _Filter(args.event, timestamps=not args.no_timestamps)
    out = sys.stdout
    path = dep.scripts_log
    if not args.follow:
        if not path or not os.path.exists(path):
            print(f"cdsim: deployment {dep.deployment_id} has no hook output (no scripts.log"
                  + (f" at {path}" if path else "") + ")", file=sys.stderr)
            return int(ExitStatus.SUCCESS)
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                shown = keep(line)
                if shown is not None:
                    out.write(shown)
        out.flush()
        return int(ExitStatus.SUCCESS)
    return _follow(dep, keep, out)


def _follow(dep: FoundDeployment, keep: _Filter, out: TextIO) -> int:
    """Print scripts.log as it grows until the event stream records the deployment's end."""
    print(f"cdsim: following deployment {dep.deployment_id} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    f = None
    pending = ""
    try:
        while True:
            done = _ended(dep)   # checked before reading, so the last lines are never missed
            path = dep.scripts_log
            if f is None and path and os.path.exists(path):
                f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in finally, opened once it exists
            if f is not None:
                chunk = f.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        shown = keep(line + "\n")
                        if shown is not None:
                            out.write(shown)
                    out.flush()
            if done:
                tail = keep(pending) if pending else None
                if tail is not None:
                    out.write(tail + "\n")
                return int(ExitStatus.SUCCESS)
            time.sleep(0.2)
    except KeyboardInterrupt:
        return int(ExitStatus.SUCCESS)
    finally:
        if f is not None:
            f.close()


# ---------------------------------------------------------------------------------------- history
def _when(epoch: float | None) -> str:
    if epoch is None:
        return "?" * 19
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def run_history(args: argparse.Namespace) -> int:
    deps = find_deployments(args)
    if args.limit and args.limit > 0:
        deps = deps[-args.limit:]
    if args.format == "json":
        print(json.dumps([d.to_dict() for d in deps], indent=2))
        return int(ExitStatus.SUCCESS)
    if not deps:
        print(_nothing_found(args), file=sys.stderr)
        print(f"  hint: {_nothing_found_hint(args)}", file=sys.stderr)
        return int(ExitStatus.SUCCESS)
    for d in deps:
        took = f"{d.ended - d.started:7.2f}s" if d.ended and d.started else "       -"
        failed = f" at {d.failed_event}" if d.failed_event else ""
        hooks = f"{len(d.hooks)} hook{'s' if len(d.hooks) != 1 else ''}" if d.events_path else ""
        print(f"{_when(d.started)}  {d.deployment_id:<19} {d.status + failed:<28} {took}  {hooks:<9} {d.group}")
    return int(ExitStatus.SUCCESS)
