"""`cdsim schema [--platform server|ecs|lambda]`: print the JSON Schema of appspec.yml (the EC2/On-Premises
one is shipped as agent/appspec.schema.json; the Amazon ECS and AWS Lambda ones are built by
agent.appspec_platforms.schema from the tables validate checks with), for editors (e.g. the YAML
language server: `# yaml-language-server: $schema=appspec.schema.json`).

The schema describes the shape the agent (or the service) accepts; `cdsim validate` remains the
authority (it also knows the agent's quirks, line numbers and the bundle's files).
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources

from agent.errors import ExitStatus

SUMMARY = "print the JSON Schema of appspec.yml, for editors"
PLATFORMS = ("server", "ecs", "lambda")


def schema_text(platform: str = "server") -> str:
    """The schema of the platform's appspec, as text: server (EC2/On-Premises, shipped with the
    package), ecs or lambda."""
    if platform == "server":
        return resources.files("agent").joinpath("appspec.schema.json").read_text(encoding="utf-8")
    import json

    from agent.appspec_platforms import schema
    return json.dumps(schema(platform), indent=2) + "\n"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help=SUMMARY, description=__doc__)
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead of standard output")
    p.add_argument("--platform", choices=PLATFORMS, default="server",
                   help="the compute platform: server (EC2/On-Premises, the default), ecs (Amazon ECS) or "
                        "lambda (AWS Lambda)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = schema_text(args.platform)
    if args.output:
        from agent.fsutil import atomic_write
        atomic_write(args.output, text)
    else:
        sys.stdout.write(text)
    return int(ExitStatus.SUCCESS)
