"""`cdsim local` / `codedeploy-local`: the agent's developer CLI, flags and output unchanged
(behaviour doc §1). Parses the command line the way docopt 0.5 does, validates in the agent's order,
prints the agent's lines; our extras (the hook's failure reason, notices) go to stderr.
"""
from __future__ import annotations

import os
import re
import sys

from agent.errors import ExitStatus

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from agent.config import AgentConfig
    from agent.errors import HookFailed
    from agent.revision import Revision

SUMMARY = "run a revision exactly as codedeploy-local does (same flags, output and on-disk layout)"

# long name -> (short, takes argument)
OPTIONS = {
    "--bundle-location": "-l", "--type": "-t", "--file-exists-behavior": "-b",
    "--deployment-group": "-g", "--deployment-group-name": "-d", "--application-name": "-a",
    "--events": "-e", "--agent-configuration-file": "-c", "--appspec-filename": "-A",
    "--grace-period": None, "--instance": None, "--report": None,
}
REPEATABLE = ("--report",)
FLAGS = {"--help": "-h", "--version": "-v", "--ignore-application-stop-failures": None}
SHORT = {v: k for k, v in {**OPTIONS, **FLAGS}.items() if v}
TYPES = ("tgz", "tar", "zip", "directory")
_BAD_URI_CHARS = set(' "<>[\\]^`{|}')


class _Usage(Exception):
    """A docopt-style exit: lines to print on stdout, exit status 1."""

    def __init__(self, *lines: str, detail: str | None = None):
        self.lines = lines
        self.detail = detail


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # `cdsim local` is dispatched before argparse (agent.cli.main); this entry only lists it in --help
    p = sub.add_parser("local", help=SUMMARY, add_help=False)
    p.set_defaults(func=lambda args: run_argv([]))


def _program() -> str:
    return os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "codedeploy-local"


def usage_lines() -> tuple[str, str]:
    return ("Usage:", f"  {_program()} [options]")


def help_text(root_dir: str) -> str:
    return f"""\
CodeDeploy Local Deployments (cdsim {_agent_version()}: drop-in for codedeploy-local 1.8.1)

Usage:
  {_program()} [options]

Options:
  -l, --bundle-location <bundle-location>
        Bundle location: a local directory or archive file (default: the current directory,
        {os.getcwd()}). s3:// and GitHub locations are recognised but not downloaded by cdsim.
  -t, --type <bundle-type>
        tgz, tar, zip or directory [default: directory].
  -b, --file-exists-behavior <behavior>
        DISALLOW, OVERWRITE or RETAIN for files already present at a destination [default: DISALLOW].
        The appspec's file_exists_behavior wins over this option.
  -g, --deployment-group <deployment-group-id>
        Deployment group id [default: default-local-deployment-group]. Your configuration shows it
        would be placed in {root_dir}/<deployment-group>.
  -d, --deployment-group-name <name>      DEPLOYMENT_GROUP_NAME of the hooks [default: LocalFleet].
  -a, --application-name <name>           APPLICATION_NAME of the hooks [default: the bundle location].
  -e, --events <comma-separated-list>     Lifecycle events to run instead of the default list.
  -c, --agent-configuration-file <path>   [default: /etc/codedeploy-agent/conf/codedeployagent.yml]
  -A, --appspec-filename <name>           AppSpec file name in the bundle [default: appspec.yml].
  --grace-period <seconds>                cdsim: seconds between SIGTERM and SIGKILL on timeout [default: 5].
  --instance <name>                       cdsim: deploy inside this sandboxed instance.
  --report <kind>=<file>                  cdsim: write a junit, json or html report (repeatable).
  --ignore-application-stop-failures      cdsim: as the service's option, a failing ApplicationStop (the
        last successful revision's script) is reported and ignored; the deployment goes on.
  -h, --help                              This help (exits 1, as the agent does).
  -v, --version                           Print the version (exits 1, as the agent does).
"""


def _agent_version() -> str:
    from agent import __version__
    return __version__


def parse_args(argv: list[str]) -> dict[str, Any]:
    """docopt 0.5 semantics: unique prefixes, --opt=value, -x value, no positionals or repeats.
    Option -> its value (None for a flag; a list for the repeatable ones)."""
    out: dict[str, Any] = {}
    value: str | None
    longs = list(OPTIONS) + list(FLAGS)
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            if i < len(argv):
                raise _Usage(*usage_lines(), detail="no positional arguments are accepted")
            continue
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            if name in longs:
                full = name
            else:
                matches = [o for o in longs if o.startswith(name)]
                if not matches:
                    raise _Usage(f"{name} is not recognized", *usage_lines())
                if len(matches) > 1:
                    raise _Usage(f"{name} is not a unique prefix: {', '.join(matches)}?", *usage_lines())
                full = matches[0]
            if full in FLAGS:
                if eq:
                    raise _Usage(f"{full} must not have an argument", *usage_lines())
                value = None
            elif not eq:
                if i >= len(argv):
                    raise _Usage("-- requires argument", *usage_lines(), detail=f"{full} needs a value")
                value = argv[i]
                i += 1
        elif a.startswith("-") and len(a) > 1:
            short, rest = a[:2], a[2:]
            if short not in SHORT:
                raise _Usage(f"{short} is not recognized", *usage_lines())
            full = SHORT[short]
            if full in FLAGS:
                value = None
                if rest:
                    argv = [*argv[:i], "-" + rest, *argv[i:]]
            elif rest:
                value = rest
            else:
                if i >= len(argv):
                    raise _Usage("-- requires argument", *usage_lines(), detail=f"{short} needs a value")
                value = argv[i]
                i += 1
        else:
            raise _Usage(*usage_lines(), detail=f"unexpected argument {a!r}: codedeploy-local takes none")
        if full in REPEATABLE:
            out.setdefault(full, []).append(value)
            continue
        if full in out:
            raise _Usage(*usage_lines(), detail=f"{full} given twice")
        out[full] = value
    return out


def _uri_problem(location: str) -> bool:
    """True when Ruby's RFC 3986 parser rejects the string (§1.3 rule 2)."""
    if any(ord(c) > 126 or ord(c) < 33 or c in _BAD_URI_CHARS for c in location):
        return True
    return re.search(r"%(?![0-9A-Fa-f]{2})", location) is not None


def _existing_local_path(location: str, cwd: str) -> bool:
    """A location without a URI scheme that names something on disk (absolute, or relative to cwd)."""
    if _scheme(location) is not None:
        return False
    try:
        return os.path.exists(os.path.join(cwd, location))
    except (ValueError, OSError):  # a NUL in the string
        return False


def _scheme(location: str) -> str | None:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", location)
    return m.group(1).lower() if m else None


def validate(opts: dict[str, Any], cwd: str) -> str | None:
    """§1.3 in order; the first failing rule's message, or None."""
    location = opts.get("--bundle-location") or cwd
    btype = opts.get("--type", "directory")
    if btype not in TYPES:
        return f"type {btype} is not a valid type. Must be one of tgz,tar,zip,directory"
    # cdsim, not the agent (Q27): a path with spaces, quotes or '$' that exists is a local bundle
    if _uri_problem(location) and not _existing_local_path(location, cwd):
        return f"location {location} is not a valid uri"
    scheme = _scheme(location)
    if scheme == "http":
        return f"location {location} cannot be http, only encrypted (https) url endpoints supported"
    remote = scheme in ("https", "s3")
    path = location if os.path.isabs(location) else os.path.join(cwd, location)
    if not remote and not os.path.exists(path):
        return f"location {location} is specified as a file or directory which does not exist"
    if not remote and btype == "directory" and os.path.isfile(path):
        return f"location {location} is specified with type directory but it is a file"
    if not remote and btype != "directory" and os.path.isdir(path):
        return f"location {location} is specified as a compressed local file but it is a directory"
    if not remote and btype == "directory" and os.path.isdir(path):
        name = opts.get("--appspec-filename")
        if name:
            if not os.path.exists(os.path.join(path, name)):
                return (f"Expecting appspec file at location {location}/{name} but it is not found there. "
                        f"Please either run the CLI from within a directory containing the {name} file or "
                        f"specify a bundle location containing an {name} file in its root directory")
        elif not (os.path.exists(os.path.join(path, "appspec.yml"))
                  or os.path.exists(os.path.join(path, "appspec.yaml"))):
            return (f"Expecting appspec file at location {location}/appspec.yml or {location}/appspec.yaml "
                    "but it is not found there. Please either run the CLI from within a directory containing "
                    "the appspec.yml or appspec.yaml file or specify a bundle location containing an "
                    "appspec.yml or appspec.yaml file in its root directory")
    from agent.lifecycle import events_order_error
    return events_order_error(opts.get("--events"))


def classify(location: str, btype: str, cwd: str) -> Revision:
    """§1.4: the revision for a validated location, or a UsageError with the agent's text."""
    from agent.revision import classify_location
    return classify_location(location, btype, cwd)


def run_argv(argv: list[str]) -> int:
    out = sys.stdout
    try:
        opts = parse_args(list(argv))
    except _Usage as u:
        for line in u.lines:
            print(line, file=out)
        if u.detail:
            print(f"cdsim: {u.detail}", file=sys.stderr)
        return int(ExitStatus.USAGE)
    return run(opts)


def run(opts: dict[str, Any]) -> int:
    from agent.config import DEFAULT_CONFIG_PATH, load_local_config
    from agent.errors import CdsimError

    out = sys.stdout
    cwd = os.getcwd()
    if "--help" in opts:
        try:
            root = load_local_config(None).root_dir
        except CdsimError:
            root = DEFAULT_CONFIG_PATH
        print(help_text(root), file=out)
        return 1
    if "--version" in opts:
        print("1.0", file=out)
        return 1
    try:
        config = load_local_config(opts.get("--agent-configuration-file"))
    except CdsimError as e:
        print(f"ERROR: {e.message}", file=out)
        return int(e.exit_status)
    from agent.reports import parse_report_option
    try:
        opts["--report"] = [parse_report_option(r) for r in opts.get("--report", [])]
    except CdsimError as e:
        print(f"cdsim: {e}" + (f" ({e.hint})" if e.hint else ""), file=sys.stderr)
        return int(e.exit_status)
    problem = validate(opts, cwd)
    if problem:
        print(f"ERROR: {problem}", file=out)
        return int(ExitStatus.USAGE)
    location = opts.get("--bundle-location") or cwd
    from agent.commands.unsupported import refuse_platform_appspec
    try:  # cdsim, not the agent: an ECS or Lambda appspec is refused before anything runs
        refuse_platform_appspec(os.path.join(cwd, location), opts.get("--type", "directory"),
                                opts.get("--appspec-filename"))
    except CdsimError as e:
        print(f"ERROR: {e}", file=out)
        return int(e.exit_status)
    if opts.get("--instance"):
        from agent.commands.deploy import run_local_in_instance
        return run_local_in_instance(opts)
    return _execute(opts, config, cwd)


def _execute(opts: dict[str, Any], config: AgentConfig, cwd: str) -> int:
    from agent.deployment_root import new_deployment_id
    from agent.errors import AppSpecError, CdsimError, HookFailed
    from agent.sequencer import DeploymentRequest, deploy

    out = sys.stdout
    location = opts.get("--bundle-location") or cwd
    btype = opts.get("--type", "directory")
    group = opts.get("--deployment-group", "default-local-deployment-group")
    did = new_deployment_id()
    console_dir = f"{config.root_dir}/{group}/{did}"
    print(f"Starting to execute deployment from within folder {console_dir}", file=out, flush=True)
    try:
        revision = classify(location, btype, cwd)
    except CdsimError as e:
        print(f"ERROR: {e.message}", file=out)
        return int(e.exit_status)
    grace = opts.get("--grace-period")
    request = DeploymentRequest(
        revision=revision, config=config, deployment_group_id=group,
        deployment_group_name=opts.get("--deployment-group-name") or "LocalFleet",
        application_name=opts.get("--application-name") or location,
        events=opts.get("--events"),
        file_exists_behavior=(opts.get("--file-exists-behavior") or "DISALLOW").upper(),
        appspec_filename=opts.get("--appspec-filename"), deployment_id=did, cwd=cwd,
        grace_seconds=float(grace) if grace else 5.0,
        ignore_application_stop_failures="--ignore-application-stop-failures" in opts)
    records: list[dict[str, Any]] = []
    result = deploy(request, listeners=[records.append],
                    notify=lambda text: print(f"cdsim: {text}", file=sys.stderr, flush=True))
    if not os.environ.get("CDSIM_INSIDE_INSTANCE"):
        from agent.reports import write_reports
        write_reports(opts["--report"], records, stream=sys.stderr)
    err = result.error
    if isinstance(err, HookFailed) and err.script_path:
        print(f"Your local deployment failed while trying to execute your script at {err.script_path}",
              file=out)
    if result.entered_event_loop:
        print(f"See the deployment log at {result.scripts_log} for more details", file=out)
    if result.succeeded:
        print("AppSpec file valid. Local deployment successful", file=out)
        return 0
    assert err is not None   # a deployment that did not succeed carries its error
    if isinstance(err, HookFailed):
        _explain_hook_failure(err)
    else:
        where = err.location()
        if where:
            code = err.code if isinstance(err, AppSpecError) and err.code else err.reference
            print(f"cdsim: {where}: {code}", file=sys.stderr)
        print(f"ERROR: {err.message}", file=out)
        if err.hint:
            print(f"cdsim: hint: {err.hint}", file=sys.stderr)
    return int(err.exit_status)


def _explain_hook_failure(err: HookFailed) -> None:
    """What the agent never prints (Q19): why the hook failed, and what we did about it."""
    r = err.result
    print(f"cdsim: {err.event}: {err.message}", file=sys.stderr)
    if r is not None:
        for note in getattr(r, "notes", ()):
            print(f"cdsim: {note}", file=sys.stderr)
    if err.hint:
        print(f"cdsim: hint: {err.hint}", file=sys.stderr)
