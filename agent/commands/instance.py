"""`cdsim instance`: create, list, enter, inspect, stop and remove sandboxed instances.

Thin: parses arguments, calls agent.instance, prints. `diff` leaves out (or, with ``--all``, marks)
changes no deployment made on purpose: caches this machine's programs rebuild when they run inside
(the bytecode of this machine's Python code, ldconfig's cache), see :func:`incidental`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from agent.commands import instance_metadata
from agent.errors import UsageError

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.instance import Change

SUMMARY = "manage sandboxed instances (simulated EC2 instances made of Linux namespaces)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("instance", help=SUMMARY, description=SUMMARY)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    c = actions.add_parser("create", help="create a stopped instance")
    c.add_argument("name")
    c.add_argument("--network", choices=("private", "host"), default="private",
                   help="private: its own loopback (default); host: the host's network")
    c.add_argument("--image", metavar="REF", default=None,
                   help="its root file system: an image (docker save archive, OCI archive or layout folder), "
                        "unpacked once into the state folder's image cache, or a root file system folder; "
                        "default: an overlay of this machine")
    actions.add_parser("list", help="list instances: running or not, network, process count")
    s = actions.add_parser("shell", help="an interactive shell inside the instance (as its root)")
    s.add_argument("name")
    e = actions.add_parser("exec", help="run a command inside the instance; exits with its status")
    e.add_argument("name")
    e.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    d = actions.add_parser("diff", help="files the instance added (A), changed (M) and deleted (D)")
    d.add_argument("name")
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.add_argument("--all", action="store_true",
                   help="also list, marked, the caches this machine's programs rebuild when they run inside "
                        "(__pycache__ of this machine's Python code, ldconfig's cache)")
    for action, text in (("stop", "end every process in the instance"),
                         ("destroy", "stop the instance and remove its folder")):
        actions.add_parser(action, help=text).add_argument("name")
    instance_metadata.register(actions)
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    import agent.instance as inst  # not at import time: `cdsim --help` stays fast

    action = getattr(args, "action", None)
    if action is None:
        args.parser.print_help()
        return 2
    if action == "create":
        created = inst.create(args.name, network=args.network, image_ref=args.image)
        made = f", from image {args.image}" if args.image else ""
        print(f"created instance {created.name} ({created.network} network{made}) in {created.path}")
        if created.network == "host":
            from agent.instance.imds import HOST_NETWORK_NOTE
            print(f"cdsim: note: {HOST_NETWORK_NOTE}", file=sys.stderr)
        return 0
    if action == "list":
        rows = inst.list_instances()
        if not rows:
            print("no instances")
            return 0
        print(f"{'NAME':20} {'STATE':8} {'NETWORK':8} {'PROCESSES':9} IMAGE")
        for row in rows:
            print(f"{row.name:20} {'running' if row.running else 'stopped':8} {row.network:8} {row.processes:<9} "
                  f"{row.image or '-'}")
        return 0
    instance = inst.get(args.name)
    if action == "metadata-options":
        return instance_metadata.run(args, instance)
    if action == "shell":
        shell = "/bin/bash" if shutil.which("bash") and not inst.made_from_image(instance) else "/bin/sh"
        env = {"TERM": os.environ.get("TERM", "xterm"), "HOME": "/root", "USER": "root", "LOGNAME": "root",
               "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PS1": r"\u@\h:\w# "}
        return inst.exec_in(instance, [shell, "-i"], env=env, cwd="/root")
    if action == "exec":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise UsageError("nothing to run: cdsim instance exec NAME -- COMMAND [ARG...]",
                             reference="instance-exec-empty")
        return inst.exec_in(instance, command)
    if action == "diff":
        found = inst.diff(instance)
        why = incidental(found)
        shown = found if args.all else [c for c in found if c.path not in why]
        if args.format == "json":
            json.dump([{"path": c.path, "kind": c.kind} | ({"incidental": why.get(c.path)} if args.all else {})
                       for c in shown], sys.stdout, indent=2)
            print()
        else:
            for change in shown:
                mark = f"  (incidental: {why[change.path]})" if change.path in why else ""
                print(f"{change.letter} {change.path}{mark}")
        if why and not args.all:
            reasons = ", ".join(dict.fromkeys(why.values()))
            print(f"cdsim: left out {len(why)} incidental change(s) ({reasons}); --all lists them",
                  file=sys.stderr)
        return 0
    if action == "stop":
        pids = inst.stop(instance)
        print(f"stopped instance {instance.name} ({len(pids)} processes ended)" if pids
              else f"instance {instance.name} was not running")
        return 0
    if action == "destroy":
        inst.destroy(instance)
        print(f"destroyed instance {instance.name}")
        return 0
    raise UsageError(f"unknown action {action!r}")


# Files ldconfig rewrites whenever it runs (a package manager runs it after every library it installs).
LDCONFIG_CACHES = ("/etc/ld.so.cache", "/var/cache/ldconfig/aux-cache")
PYTHON_CACHE = "bytecode of this machine's Python code"
LDCONFIG_CACHE = "ldconfig's cache"


def incidental(found: list[Change], host_root: str = "/") -> dict[str, str]:
    """Path -> why, for changes no deployment made on purpose: ldconfig's caches, and a __pycache__
    entry whose source module is on this machine (``host_root``) and not itself changed in the
    instance (Python wrote it when code of this machine ran inside). A __pycache__ folder counts
    when everything listed inside it does."""
    changed = {c.path for c in found}

    def on_host(path: str) -> bool:
        return path not in changed and os.path.exists(os.path.join(host_root, path.lstrip("/")))

    why: dict[str, str] = {}
    folders = []
    for c in found:
        if c.path in LDCONFIG_CACHES:
            why[c.path] = LDCONFIG_CACHE
            continue
        folder, name = os.path.split(c.path)
        if os.path.basename(folder) == "__pycache__" and name.endswith(".pyc"):
            source = os.path.join(os.path.dirname(folder), name.split(".", 1)[0] + ".py")
            if on_host(source):
                why[c.path] = PYTHON_CACHE
        elif name == "__pycache__" and c.kind == "added":
            folders.append(c.path)
    for folder in folders:
        inside = [p for p in changed if p.startswith(folder + "/")]
        if inside and all(p in why for p in inside):
            why[folder] = PYTHON_CACHE
    return why
