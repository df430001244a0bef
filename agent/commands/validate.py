"""`cdsim validate [PATH ...]`: every problem of a bundle and its appspec, at once (agent.lint).

Parses arguments, calls agent.lint.validate_bundle for each PATH (several: what the pre-commit hook
passes, one appspec file per bundle), prints text, JSON or SARIF (agent.reports.sarif). Imports nothing
heavy at module level: the CLI imports this module to build its parser, so YAML and the linter load only
when it runs.
"""
from __future__ import annotations

import argparse
import json

from agent.errors import ExitStatus

FORMATS = ("text", "json", "sarif", "github", "markdown")
SUMMARY = "check a bundle and its appspec: every problem the agent would hit, in one pass"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "validate", help=SUMMARY, description=SUMMARY + ". Errors are what makes the agent fail the "
        "deployment; warnings are what it accepts but probably not what you meant.")
    from agent.commands.where import add_bundle_argument  # PATH, or -l/--bundle-location PATH
    add_bundle_argument(p, default=".", metavar="PATH", dest="path",
                        help="a bundle directory, a zip/tar/tgz bundle, or an appspec file (default: .)")
    p.add_argument("more_paths", nargs="*", metavar="PATH", default=[],
                   help="more bundles or appspec files, each validated the same way")
    p.add_argument("--appspec-filename", metavar="NAME",
                   help="the appspec name the deployment will use (as codedeploy-local's option)")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="text: FILE:LINE:COL: severity: message [code]; json: one object with a findings "
                        "list (severity, code, message, file, line, column, hint); sarif: a SARIF 2.1.0 log "
                        "for code scanning (rule ids are the codes, paths relative to the current folder); "
                        "github: workflow commands (annotations at each finding); markdown: a table, for a "
                        "GitHub job summary")
    p.add_argument("--strict", action="store_true", help="warnings make the bundle invalid too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.lint import Finding, summary, validate_bundle

    paths: list[str] = [args.path, *args.more_paths]
    per_path = [(path, validate_bundle(path, args.appspec_filename)) for path in paths]
    findings: list[Finding] = [f for _path, found in per_path for f in found]
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    invalid = bool(errors or (args.strict and warnings))
    if args.format == "json":
        where: dict[str, str | list[str]] = {"path": args.path} if len(paths) == 1 else {"paths": paths}
        print(json.dumps({**where, "valid": not invalid, "errors": errors, "warnings": warnings,
                          "findings": [f.to_dict() for f in findings]}, indent=2))
    elif args.format == "sarif":
        import os

        from agent import __version__
        from agent.reports import sarif
        print(sarif.render(findings, validated=args.path, base=os.getcwd(), version=__version__), end="")
    elif args.format == "github":
        import os

        from agent.reports import github
        for line in github.finding_commands(findings, os.environ.get("GITHUB_WORKSPACE") or os.getcwd()):
            print(line)
    elif args.format == "markdown":
        from agent.reports import markdown
        print(markdown.findings(findings, paths, summary(findings, args.strict)), end="")
    else:
        for path, found in per_path:
            for f in found:
                print(f.render())
            print(f"{path}: {summary(found, args.strict)}")
    return int(ExitStatus.INVALID if invalid else ExitStatus.SUCCESS)
