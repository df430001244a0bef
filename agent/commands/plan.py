"""``cdsim plan``: print what a deployment's Install would do where `cdsim deploy` would deploy; change
nothing.

Thin: parses arguments, calls agent.plan, prints. Where: the instance `cdsim deploy` uses (``default``),
the one ``--instance`` names, or this machine (``--host``, or a ``--root-dir`` alone). For an instance,
the planning runs inside it (started if stopped, as `cdsim deploy` does), as `cdsim plan --host` with
the instance's deployment root, so its files, its users and its previous deployment's cleanup count; an
instance that does not exist yet is planned against this machine, which is what a new instance starts
from. Exit status: SUCCESS when the Install would succeed, FILE_COLLISION when it would fail on a file
collision, DEPLOYMENT_FAILED for other failures it foresees, INVALID for an invalid appspec or bundle
(raised, mapped by agent.cli).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from agent import plan as planning
from agent.commands import where as places
from agent.errors import UsageError
from agent.state import AGENT_ROOT_DIR

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.instance import Instance

SUMMARY = "show what a deployment would install, delete and change where it would deploy, changing nothing"
DESCRIPTION = (
    "Show what a deployment's Install would do, changing nothing: the previous install's cleanup, the "
    "folders and files it would create, collisions, permissions, and the failures it would meet. It plans "
    "where `cdsim deploy` deploys: inside the instance default (or the one --instance names), against "
    "that instance's files, users and previous deployment; --host plans against this machine.")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help=SUMMARY, description=DESCRIPTION)
    places.add_bundle_argument(p, default=None,
                               help="a bundle directory or a zip/tar/tgz archive (default: the current directory)")
    places.add_where_options(p, instance_help="plan against this sandboxed instance (started if stopped)",
                             host_help="plan against this machine, as `cdsim deploy --host` would deploy")
    p.add_argument("--deployment-group", "-g", default=planning.DEFAULT_GROUP,
                   help="deployment group id whose previous install the cleanup would remove "
                        f"(default: {planning.DEFAULT_GROUP})")
    p.add_argument("--file-exists-behavior", "-b", default=None,
                   help="DISALLOW, OVERWRITE or RETAIN (the appspec's file_exists_behavior wins; "
                        "default DISALLOW)")
    p.add_argument("--root-dir", default=None,
                   help="the agent's deployment root (default: the one `cdsim deploy` uses there: "
                        f"{AGENT_ROOT_DIR} in an instance, the state folder's with --host); alone, "
                        "it plans against this machine")
    p.add_argument("--appspec-filename", default=None, help="appspec file name inside the bundle")
    p.add_argument("--type", dest="bundle_type", choices=("directory", "zip", "tar", "tgz"), default=None,
                   help="bundle type (default: from the path)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    place = places.resolve(args)
    if place.instance is None:
        inside = os.environ.get("CDSIM_INSIDE_INSTANCE")
        return _plan_here(args, args.root_dir or _host_root(inside),
                          f"instance {inside}" if inside else "this machine")
    inst = places.existing_instance(place.instance)
    if inst is None:
        print(f"cdsim: note: instance {place.instance} does not exist yet: planning against this machine, "
              "whose files and users a new instance starts from", file=sys.stderr, flush=True)
        return _plan_here(args, args.root_dir or AGENT_ROOT_DIR,
                          f"this machine (instance {place.instance} does not exist yet; a new one starts "
                          "from this machine's files)")
    return _plan_in_instance(args, inst)


def _host_root(inside: str | None) -> str:
    """The root `cdsim deploy --host` uses where this process runs."""
    if inside:
        return AGENT_ROOT_DIR
    from agent.state import host_root_dir
    return host_root_dir()


def _plan_here(args: argparse.Namespace, root_dir: str, place: str) -> int:
    result = planning.make_plan(
        args.bundle, deployment_group=args.deployment_group,
        file_exists_behavior=args.file_exists_behavior, root_dir=root_dir,
        appspec_filename=args.appspec_filename,
        bundle_type=None if args.bundle_type == "directory" else args.bundle_type, place=place)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(planning.render_text(result))
    return int(result.exit_status)


def _plan_in_instance(args: argparse.Namespace, inst: Instance) -> int:
    """`cdsim plan --host` run inside the instance, as `cdsim deploy` runs its engine there: the same
    interpreter and checkout (the host's files are the instance's lower layer), the bundle by its
    absolute path, which the instance sees too."""
    from agent import instance as instances

    bundle = os.path.abspath(args.bundle or ".")
    if not os.path.exists(bundle):
        raise UsageError(f"no bundle at {bundle}", reference="bundle-not-found")
    problem = instances.id_map_problem(inst)
    if problem:
        print(f"cdsim: note: {problem}", file=sys.stderr, flush=True)
    # option=value forms and `--`: no value can be read as an option inside
    argv = [sys.executable, "-m", "agent", "plan", "--host", f"--deployment-group={args.deployment_group}",
            f"--root-dir={args.root_dir or AGENT_ROOT_DIR}", f"--format={args.format}"]
    for flag, value in (("--file-exists-behavior", args.file_exists_behavior),
                        ("--appspec-filename", args.appspec_filename), ("--type", args.bundle_type)):
        if value:
            argv.append(f"{flag}={value}")
    argv += ["--", bundle]
    # no __pycache__ written into the instance's upper layer by the planning itself
    env = dict(os.environ, CDSIM_INSIDE_INSTANCE=inst.name, PYTHONDONTWRITEBYTECODE="1")
    return instances.exec_in(inst, argv, env=env, cwd=os.getcwd())
