"""`cdsim watch [BUNDLE]`: re-run the deployment whenever a file of the bundle changes.

Watches the bundle (a directory, or an archive file) with watchdog; changes are debounced (a burst of
saves makes one run) and a change during a run queues one more run. Each run is `cdsim deploy` in a
subprocess (into the same instance, or onto the host with --host), with its live output; after it,
a summary of what changed since the previous run: the outcome, and per hook its outcome and duration.
Ctrl-C stops watching and leaves the instance, its processes and the deployed files as they are.
Reads the run's event stream (agent.events) for the summary; imports no engine module itself.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import threading
import time

from agent.errors import ExitStatus, UsageError

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUMMARY = "re-run a deployment whenever a file of the bundle changes; show what changed since the last run"
DESCRIPTION = """Deploy the bundle, then deploy it again each time one of its files changes (a burst of
saves makes one run; a change during a run queues one more). Runs go into the same instance as `cdsim
deploy` (or onto this machine with --host), with their live output; after each, what changed since the
previous run: the outcome, and per hook its outcome and duration. Ctrl-C stops watching and leaves the
instance, its processes and the deployed files as they are."""
# editor and tool droppings that are not a change of the bundle
_IGNORED_PARTS = (".git", "__pycache__", ".hg", ".svn", ".idea", ".vscode", "node_modules")
_IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".swo", ".tmp", ".part", ".pyc")
_CHANGE_EVENTS = ("created", "modified", "deleted", "moved")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("watch", help=SUMMARY, description=DESCRIPTION)
    p.add_argument("bundle", nargs="?", default=".", help="bundle directory or zip/tar/tgz file (default: .)")
    p.add_argument("-l", "--bundle-location", dest="bundle_location", default=None,
                   help="the bundle, as codedeploy-local takes it (instead of the positional argument)")
    p.add_argument("-e", "--events", default=None, help="comma-separated lifecycle events to run each time")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--instance", help="sandboxed instance to deploy into (default: cdsim deploy's)")
    where.add_argument("--host", action="store_true", help="deploy onto this machine")
    p.add_argument("--image", metavar="REF", default=None,
                   help="make a newly created instance from this image (see cdsim instance create --image)")
    p.add_argument("--root-dir", default=None, help="deployment root (with --host: default in the state folder)")
    p.add_argument("-g", "--deployment-group", default="default-local-deployment-group")
    p.add_argument("-b", "--file-exists-behavior", default="DISALLOW",
                   help="for files already present that no earlier run installed (default DISALLOW)")
    p.add_argument("-A", "--appspec-filename", default=None)
    p.add_argument("--grace-period", type=float, default=5.0)
    p.add_argument("--debounce", type=float, default=0.3, metavar="SECONDS",
                   help="wait this long after the last change before running (default 0.3)")
    p.add_argument("--inherit-env", action="store_true",
                   help="give hooks your environment and working directory instead of the agent service's")
    from agent.commands.deploy import add_ignore_option
    add_ignore_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary of each run, not its output")
    p.set_defaults(func=run)


def _relevant(path: str) -> bool:
    parts = path.split(os.sep)
    return not any(p in _IGNORED_PARTS for p in parts) and not path.endswith(_IGNORED_SUFFIXES) \
        and not os.path.basename(path).startswith(".#")


class _Changes:
    """Paths changed since the last run, and when the last change came (the debounce clock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paths: set[str] = set()
        self.created: set[str] = set()   # paths that appeared since the last run
        self.last = 0.0

    def add(self, path: str, kind: str = "modified") -> None:
        """``kind``: created, modified, or gone (deleted, or moved away)."""
        with self.lock:
            self.last = time.monotonic()
            if kind == "created":
                self.created.add(path)
            elif kind == "gone" and path in self.created:
                # a temporary file of an editor's or sed -i's save: it came and went, no change of the bundle
                self.created.discard(path)
                self.paths.discard(path)
                return
            self.paths.add(path)

    def take_if_quiet(self, debounce: float) -> list[str] | None:
        with self.lock:
            if not self.paths or time.monotonic() - self.last < debounce:
                return None
            taken, self.paths, self.created = sorted(self.paths), set(), set()
            return taken


def _events_dir(args: argparse.Namespace) -> str:
    """Where the runs' event streams appear, as seen from here."""
    from agent.state import AGENT_LOG_DIR, events_dir, host_log_dir, in_upper
    if args.host:
        return events_dir(host_log_dir(), args.deployment_group)
    from agent import instance as instances
    from agent.commands.where import DEFAULT_INSTANCE

    inst = instances.get_or_create(args.instance or DEFAULT_INSTANCE, image_ref=args.image)
    return events_dir(in_upper(inst.upper, AGENT_LOG_DIR), args.deployment_group)


def _deploy_argv(args: argparse.Namespace, bundle: str) -> list[str]:
    from agent.commands.deploy import deployment_options

    argv = [sys.executable, "-m", "agent", "deploy", bundle]
    if args.host:
        argv.append("--host")
    elif args.instance:
        argv += ["--instance", args.instance]
    if args.image and not args.host:
        argv += ["--image", os.path.abspath(args.image)]
    argv += deployment_options(args)
    return argv


def _outcome(records: list[dict[str, Any]]) -> dict[str, Any]:
    from agent.reports.model import summarize

    dep = summarize(records) if records else None
    if dep is None:
        return {"status": "Unknown", "failed_event": None, "duration": None, "hooks": {}}
    hooks = {}
    for h in dep["hooks"]:
        key = f"{h['event']} {h['location']}"
        n = 2
        while key in hooks:   # the same script twice in one event
            key, n = f"{h['event']} {h['location']} #{n}", n + 1
        hooks[key] = {"status": h.get("status", "Unfinished") + (" (ignored)" if h.get("ignored") else ""),
                      "duration": h.get("duration"), "message": h.get("message") or "",
                      # ApplicationStop runs the last successful revision's script (spec §4.2): say whose
                      "previous": (f"deployment {h.get('revision_deployment_id')}, archive "
                                   f"{h.get('revision_archive')}") if h.get("previous_revision") else None}
    return {"status": dep["status"], "failed_event": dep["failed_event"], "duration": dep["duration"],
            "error": dep["error"], "hooks": hooks}


def _secs(v: float | None) -> str:
    return "?" if v is None else f"{v:.2f}s"


def describe(number: int, changed: list[str], now: dict[str, Any], before: dict[str, Any] | None) -> list[str]:
    """The summary lines of run ``number`` compared with the previous run's outcome."""
    head = f"cdsim watch: run {number}"
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        head += f" (changed: {shown})"
    head += f": {now['status']}"
    if now.get("failed_event"):
        head += f" at {now['failed_event']}"
    head += f" in {_secs(now['duration'])}"
    if before is not None and before["status"] != now["status"]:
        head += f" (was {before['status']})"
    lines = [head]
    if now["status"] == "Failed" and now.get("error"):
        lines.append(f"  error: {now['error']}")
    old_hooks = before["hooks"] if before else {}
    for key, h in now["hooks"].items():
        old = old_hooks.get(key)
        if old is None:
            change = "new" if before is not None else ""
            lines.append(f"  {key}: {h['status']} {_secs(h['duration'])}" + (f" ({change})" if change else ""))
            if h.get("previous"):
                lines.append(f"    script of the previous revision: {h['previous']}")
            continue
        delta = ""
        if h["duration"] is not None and old["duration"] is not None:
            delta = f" ({h['duration'] - old['duration']:+.2f}s)"
        if old["status"] != h["status"]:
            lines.append(f"  {key}: {old['status']} -> {h['status']} {_secs(h['duration'])}{delta}")
        else:
            lines.append(f"  {key}: {h['status']} {_secs(h['duration'])}{delta}")
        if h.get("previous"):
            lines.append(f"    script of the previous revision: {h['previous']}")
    for key in old_hooks:
        if key not in now["hooks"]:
            lines.append(f"  {key}: did not run this time (was {old_hooks[key]['status']})")
    return lines


def _one_run(args: argparse.Namespace, bundle: str, events_dir: str) -> tuple[int, dict[str, Any]]:
    before = set(glob.glob(os.path.join(events_dir, "*.jsonl")))
    proc = subprocess.run(_deploy_argv(args, bundle), stdin=subprocess.DEVNULL, check=False)
    new = sorted(set(glob.glob(os.path.join(events_dir, "*.jsonl"))) - before, key=os.path.getmtime)
    records: list[dict[str, Any]] = []
    if new:
        from agent.events import read_events
        records = read_events(new[-1])
    return proc.returncode, _outcome(records)


def run(args: argparse.Namespace) -> int:
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    if args.bundle_location is not None:
        if args.bundle != ".":
            raise UsageError("give the bundle once: as an argument or with -l/--bundle-location")
        args.bundle = args.bundle_location
    bundle = os.path.abspath(args.bundle)
    if not os.path.exists(bundle):
        raise UsageError(f"bundle {args.bundle} does not exist")
    root = os.path.abspath(args.root_dir) if args.root_dir else None
    watch_dir = bundle if os.path.isdir(bundle) else os.path.dirname(bundle)
    changes = _Changes()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type not in _CHANGE_EVENTS:
                return   # opened/closed events: a deployment reading the bundle is no change
            kinds = {"created": "created", "deleted": "gone", "moved": "gone"}
            for path, kind in ((event.src_path, kinds.get(event.event_type, "modified")),
                               (getattr(event, "dest_path", "") or "", "created")):
                path = os.fsdecode(path)
                if not path or (root and (path + os.sep).startswith(root + os.sep)):
                    continue
                if os.path.isdir(bundle):
                    rel = os.path.relpath(path, bundle)
                    if rel != "." and _relevant(rel) and not (event.is_directory and event.event_type == "modified"):
                        changes.add(rel, kind)
                elif path == bundle:
                    changes.add(os.path.basename(bundle))

    events_dir = _events_dir(args)
    observer = Observer()
    observer.schedule(Handler(), watch_dir, recursive=os.path.isdir(bundle))
    observer.start()
    print(f"cdsim watch: watching {bundle} (Ctrl-C to stop; the instance and files stay as they are)",
          flush=True)
    previous = None
    number = 0
    changed: list[str] = []
    try:
        while True:
            number += 1
            _code, outcome = _one_run(args, bundle, events_dir)
            for line in describe(number, changed, outcome, previous):
                print(line, flush=True)
            previous = outcome
            print("cdsim watch: waiting for changes", flush=True)
            while True:
                taken = changes.take_if_quiet(args.debounce)
                if taken is not None:
                    changed = taken
                    break
                time.sleep(0.05)
    except KeyboardInterrupt:
        print("\ncdsim watch: stopped; the instance and the deployed files are left as they are", flush=True)
        return int(ExitStatus.SUCCESS)
    finally:
        observer.stop()
        observer.join(timeout=5)
