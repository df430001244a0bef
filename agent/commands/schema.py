"""`cdsim schema`: print the JSON Schema of appspec.yml (shipped as agent/appspec.schema.json), for
editors (e.g. the YAML language server: `# yaml-language-server: $schema=appspec.schema.json`).

The schema describes the shape the agent accepts; `cdsim validate` remains the authority (it also
knows the agent's quirks, line numbers and the bundle's files).
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources

from agent.errors import ExitStatus

SUMMARY = "print the JSON Schema of appspec.yml, for editors"


def schema_text() -> str:
    """The schema shipped with the package, as text."""
    return resources.files("agent").joinpath("appspec.schema.json").read_text(encoding="utf-8")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help=SUMMARY, description=__doc__)
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead of standard output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = schema_text()
    if args.output:
        from agent.fsutil import atomic_write
        atomic_write(args.output, text)
    else:
        sys.stdout.write(text)
    return int(ExitStatus.SUCCESS)
