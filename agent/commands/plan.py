"""``cdsim plan``: print what a deployment's Install would do on this machine; change nothing.

Thin: parses arguments, calls agent.plan, prints. Exit status: SUCCESS when the Install would succeed,
FILE_COLLISION when it would fail on a file collision, DEPLOYMENT_FAILED for other failures it foresees,
INVALID for an invalid appspec or bundle (raised, mapped by agent.cli).
"""
from __future__ import annotations

import argparse
import json

from agent import plan as planning

SUMMARY = "show what a deployment would install, delete and change on this machine, changing nothing"


def register(sub) -> None:
    p = sub.add_parser(
        "plan", help=SUMMARY, description=SUMMARY[0].upper() + SUMMARY[1:] + ".")
    p.add_argument("bundle", nargs="?", default=None,
                   help="a bundle directory or a zip/tar/tgz archive (default: the current directory)")
    p.add_argument("--deployment-group", "-g", default=planning.DEFAULT_GROUP,
                   help="deployment group id whose previous install the cleanup would remove "
                        f"(default: {planning.DEFAULT_GROUP})")
    p.add_argument("--file-exists-behavior", "-b", default=None,
                   help="DISALLOW, OVERWRITE or RETAIN (the appspec's file_exists_behavior wins; "
                        "default DISALLOW)")
    p.add_argument("--root-dir", default=planning.DEFAULT_ROOT_DIR, help=f"the agent's deployment root (default: {planning.DEFAULT_ROOT_DIR})")
    p.add_argument("--appspec-filename", default=None, help="appspec file name inside the bundle")
    p.add_argument("--type", dest="bundle_type", choices=("directory", "zip", "tar", "tgz"), default=None,
                   help="bundle type (default: from the path)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = planning.make_plan(
        args.bundle, deployment_group=args.deployment_group,
        file_exists_behavior=args.file_exists_behavior, root_dir=args.root_dir,
        appspec_filename=args.appspec_filename,
        bundle_type=None if args.bundle_type == "directory" else args.bundle_type)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(planning.render_text(result))
    return int(result.exit_status)
