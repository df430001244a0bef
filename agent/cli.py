"""The cdsim command line: parse arguments, call the library, print, map errors to exit statuses.

Each subcommand lives in an ``agent.commands.<name>`` module exposing ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int``. Modules are imported lazily per command so start-up
stays fast.
"""
from __future__ import annotations

import os
import sys

from agent import __version__
from agent.errors import CdsimError, ExitStatus, exit_status_for

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import TypeVar

    _Args = TypeVar("_Args")  # parsed arguments (argparse.Namespace), or codedeploy-local's argv

# subcommand name -> module under agent.commands
COMMANDS = {
    "validate": "validate",
    "plan": "plan",
    "local": "local",
    "deploy": "deploy",
    "instance": "instance",
    "image": "image",
    "logs": "logs",
    "history": "history",
    "doctor": "doctor",
    "schema": "schema",
    "watch": "watch",
    "server": "server",
    "fleet": "fleet",
    "wait": "wait",
    "agent": "agent",
    "lb": "lb",
}


# The one-line help of each command, kept here so `cdsim --help` and `cdsim <command>` do not import
# every command module (and what they import) just to list them. Every command has one, equal to its
# module's SUMMARY (tests/test_public_api.py checks both).
SUMMARIES = {
    "validate": "check a bundle and its appspec: every problem the agent would hit, in one pass",
    "plan": "show what a deployment would install, delete and change where it would deploy, changing nothing",
    "local": "run a revision exactly as codedeploy-local does (same flags, output and on-disk layout)",
    "deploy": "deploy a revision into a sandboxed instance (default) or onto this machine (--host)",
    "instance": "manage sandboxed instances (simulated EC2 instances made of Linux namespaces)",
    "image": "list or remove the images unpacked for instances (cdsim instance create NAME --image REF)",
    "logs": "print what a deployment's hooks printed (the latest by default); --follow while it runs",
    "history": "list past deployments (in the instance cdsim deploy uses, or --instance/--host), newest last",
    "doctor": "check that a bundle can run where cdsim deploy puts it: namespaces, instance, users, tools, hook PATH",
    "schema": "print the JSON Schema of appspec.yml, for editors",
    "watch": "re-run a deployment whenever a file of the bundle changes; show what changed since the last run",
    "server": "run a local CodeDeploy service (the aws CLI's deploy commands work against it)",
    "fleet": "launch or remove a fleet of tagged instances registered with the cdsim server",
    "wait": "wait for a deployment to finish; exit non-zero with the failure when it fails",
    "agent": "run an agent that polls a cdsim server for an instance's deployments",
    "lb": "serve, list or stop the local load balancer that carries the local AWS's ELBv2 traffic",
}


def _base_parser() -> argparse.ArgumentParser:
    import argparse  # here, not at the top: `cdsim local` parses its command line the agent's way

    p = argparse.ArgumentParser(
        prog="cdsim",
        description="A local AWS CodeDeploy agent: validate, plan and run CodeDeploy revisions "
                    "on this machine or in a sandboxed instance, with no AWS account.")
    p.add_argument("--version", action="version", version=f"cdsim {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command; with ``only``, only that command's module is imported (the
    others are placeholders that still list in --help; ``only=""`` imports none)."""
    import importlib

    parser = _base_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            # a cheap placeholder so --help still lists every command
            sub.add_parser(name, help=SUMMARIES[name], add_help=False)
            continue
        importlib.import_module(f"agent.commands.{module}").register(sub)
    return parser


def _run(func: Callable[[_Args], int], args: _Args, debug: bool) -> int:
    try:
        return int(func(args))
    except CdsimError as e:
        print(f"cdsim: error: {e}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return int(e.exit_status)
    except KeyboardInterrupt:
        print("cdsim: interrupted", file=sys.stderr)
        return int(exit_status_for(KeyboardInterrupt()))
    except Exception as e:  # the one place that turns a bug into an exit status
        if debug:
            raise
        print(f"cdsim: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return int(ExitStatus.INTERNAL)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or bool(os.environ.get("CDSIM_DEBUG"))
    # `cdsim local ...` takes codedeploy-local's own command line, parsed the agent's way
    rest = [a for a in argv if a != "--debug"]
    if rest == ["--version"]:  # what argparse's version action prints, without importing argparse
        print(f"cdsim {__version__}")
        return 0
    if rest and rest[0] == "local":
        from agent.commands import local
        return _run(local.run_argv, rest[1:], debug)
    first = next((a for a in rest if not a.startswith("-")), None)
    # no command (--version, --help) or an unknown one: no command module is imported
    parser = build_parser(only=first if first in COMMANDS else "")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help/--version
        return int(ExitStatus.USAGE) if e.code not in (0, None) else 0
    if not getattr(args, "func", None):
        parser.print_help()
        return int(ExitStatus.USAGE)
    return _run(args.func, args, debug)


def codedeploy_local_main() -> int:
    """The ``codedeploy-local`` console script: the agent's command line, unchanged."""
    from agent.commands import local
    return _run(local.run_argv, sys.argv[1:], bool(os.environ.get("CDSIM_DEBUG")))
