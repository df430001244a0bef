"""Where a command looks: the sandboxed instance `cdsim deploy` uses (``default``), another one
(``--instance NAME``) or this machine (``--host``), shared by the commands that follow a deployment
(logs, history, plan, doctor); and the bundle argument, given as ``BUNDLE`` or, as codedeploy-local
users type it, ``-l/--bundle-location BUNDLE``.

Parses and resolves only: reads an instance's metadata through agent.instance, starts nothing.
Must not import the deploy engine.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent.instance import Instance

__all__ = ["DEFAULT_INSTANCE", "Where", "add_bundle_argument", "add_where_options", "existing_instance",
           "resolve"]

# the instance `cdsim deploy` deploys into, and every command that follows a deployment looks in, by default
DEFAULT_INSTANCE = "default"


class _BundleAction(argparse.Action):
    """Stores the bundle from the positional or from -l, refusing two of them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        if option_string is None and values is self.default:
            return   # the optional positional matched nothing: keep what -l gave, or the default
        given = getattr(namespace, "_bundle_from", None)
        if given:
            parser.error(f"the bundle is given twice ({given} and {option_string or self.metavar}): give one")
        namespace._bundle_from = option_string or self.metavar
        setattr(namespace, self.dest, values)


def add_bundle_argument(parser: argparse.ArgumentParser, *, default: str | None,
                        help: str,  # noqa: A002 - passed on as add_argument's help=, named as there
                        metavar: str = "BUNDLE", dest: str = "bundle") -> None:
    """The optional positional bundle, and ``-l/--bundle-location`` for the same value."""
    parser.add_argument(dest, nargs="?", default=default, metavar=metavar, action=_BundleAction, help=help)
    parser.add_argument("-l", "--bundle-location", dest=dest, metavar=metavar, action=_BundleAction,
                        default=default, help=f"the same as {metavar} (as codedeploy-local takes it)")


def add_where_options(parser: argparse.ArgumentParser, *, instance_help: str, host_help: str) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--instance", metavar="NAME",
                       help=f"{instance_help} (default: the instance {DEFAULT_INSTANCE!r}, where `cdsim deploy` "
                            "deploys)")
    where.add_argument("--host", action="store_true", help=host_help)


@dataclass(frozen=True)
class Where:
    """The place chosen: an instance by name, or this machine (``instance`` None)."""

    instance: str | None
    explicit: bool          # named on the command line (not the default)

    @property
    def host(self) -> bool:
        return self.instance is None

    def describe(self) -> str:
        return "this machine" if self.host else f"instance {self.instance}"


def resolve(args: argparse.Namespace) -> Where:
    """--host, --instance NAME, else this machine when a --root-dir is given (a host path), else
    the instance `cdsim deploy` uses by default."""
    if getattr(args, "host", False):
        return Where(None, True)
    if getattr(args, "instance", None):
        return Where(args.instance, True)
    if getattr(args, "root_dir", None):
        return Where(None, False)
    return Where(DEFAULT_INSTANCE, False)


def existing_instance(name: str) -> Instance | None:
    """The instance called ``name``, or None when it was never created."""
    from agent import instance as instances
    from agent.errors import UsageError

    try:
        return instances.get(name)
    except UsageError as e:
        if e.reference == "instance-unknown":
            return None
        raise
