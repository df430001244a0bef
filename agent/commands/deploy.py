"""`cdsim deploy`: the agent's engine with friendlier defaults.

By default the deployment runs inside a sandboxed instance (created on first use), so the host is
never touched; ``--host`` deploys to this machine as the agent does. Prints each event and hook as
it runs, with the hook's output live.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time

from agent.commands.where import DEFAULT_INSTANCE
from agent.errors import EnvironmentProblem, UsageError
from agent.state import AGENT_LOG_DIR, AGENT_ROOT_DIR, events_dir, host_log_dir, host_root_dir, in_upper

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from agent.config import AgentConfig
    from agent.instance import Instance
    from agent.sequencer import DeploymentResult

SUMMARY = "deploy a revision into a sandboxed instance (default) or onto this machine (--host)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("deploy", help=SUMMARY, description=__doc__)
    from agent.commands.where import add_bundle_argument  # BUNDLE, or -l/--bundle-location BUNDLE
    add_bundle_argument(p, default=".", help="bundle directory or zip/tar/tgz file (default: .)")
    p.add_argument("-t", "--type", choices=("directory", "zip", "tar", "tgz"),
                   help="bundle type (default: from the file name)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--instance", help=f"sandboxed instance to deploy into (default: {DEFAULT_INSTANCE})")
    where.add_argument("--host", action="store_true", help="deploy onto this machine, as the agent does")
    p.add_argument("--network", choices=("private", "host"), default="private",
                   help="network of a newly created instance (default: private)")
    add_image_option(p)
    p.add_argument("-g", "--deployment-group", default="default-local-deployment-group")
    p.add_argument("-d", "--deployment-group-name", default="LocalFleet")
    p.add_argument("-a", "--application-name", default=None)
    p.add_argument("-e", "--events", default=None, help="comma-separated lifecycle events to run")
    p.add_argument("-b", "--file-exists-behavior", default="DISALLOW")
    p.add_argument("-A", "--appspec-filename", default=None)
    p.add_argument("-c", "--agent-configuration-file", default=None,
                   help="agent configuration file (default: none; cdsim's own defaults)")
    p.add_argument("--root-dir", default=None, help="deployment root (default: in the state folder)")
    p.add_argument("--grace-period", type=float, default=5.0,
                   help="seconds between SIGTERM and SIGKILL when a hook times out (default 5)")
    p.add_argument("--inherit-env", action="store_true",
                   help="give hooks your environment and working directory instead of the agent "
                        "service's (cwd /, the systemd unit's environment, as on an EC2 instance)")
    add_ignore_option(p)
    from agent.reports import add_report_option
    add_report_option(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", action="store_true", help="print only the outcome")
    out.add_argument("-v", "--verbose", action="store_true", help="also print where logs and events are")
    p.set_defaults(func=run)


def deployment_options(args: argparse.Namespace) -> list[str]:
    """The options of a deployment that `cdsim deploy` and `cdsim watch` pass on, unchanged, to the
    `cdsim deploy` they start (inside an instance, or for each change)."""
    argv = ["-g", args.deployment_group, "-b", args.file_exists_behavior, "--grace-period", str(args.grace_period)]
    for flag, value in (("-e", args.events), ("-A", args.appspec_filename), ("--root-dir", args.root_dir)):
        if value:
            argv += [flag, value]
    if args.quiet:
        argv.append("-q")
    if args.inherit_env:
        argv.append("--inherit-env")
    if args.ignore_application_stop_failures:
        argv.append("--ignore-application-stop-failures")
    return argv


def add_image_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", metavar="REF", default=None,
                   help="make a newly created instance from this image (docker save or OCI archive, OCI layout or "
                        "root file system folder) instead of this machine (see cdsim instance create --image)")


def add_ignore_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ignore-application-stop-failures", action="store_true",
                   help="as the service's ignoreApplicationStopFailures: a failing ApplicationStop (which runs "
                        "the last successful revision's script) is reported failed-and-ignored and the "
                        "deployment goes on")


def guess_type(path: str) -> str:
    if os.path.isdir(path):
        return "directory"
    low = path.lower()
    if low.endswith((".tgz", ".tar.gz")):
        return "tgz"
    if low.endswith(".tar"):
        return "tar"
    if low.endswith(".zip"):
        return "zip"
    raise UsageError(f"cannot tell the bundle type of {path}", hint="give --type zip|tar|tgz|directory")


def run(args: argparse.Namespace) -> int:
    bundle = os.path.abspath(args.bundle)
    if not os.path.exists(bundle):
        raise UsageError(f"bundle {args.bundle} does not exist")
    btype = args.type or guess_type(bundle)
    from agent.commands.unsupported import refuse_platform_appspec
    refuse_platform_appspec(bundle, btype, args.appspec_filename)
    if args.host:
        return deploy_here(args, bundle, btype)
    return deploy_in_instance(args, bundle, btype)


def _config(args: argparse.Namespace, root_default: str, log_default: str) -> AgentConfig:
    from agent.config import config_from_mapping, load_local_config
    if args.agent_configuration_file:
        cfg = load_local_config(args.agent_configuration_file)
    else:
        cfg = config_from_mapping({"root_dir": root_default, "log_dir": log_default})
    if args.root_dir:
        cfg = cfg.with_root(args.root_dir)
    return cfg


def deploy_here(args: argparse.Namespace, bundle: str, btype: str) -> int:
    """Run the engine in this process (on the host, or already inside an instance)."""
    from agent.reports.progress import ProgressBar
    from agent.revision import LocalRevision
    from agent.sequencer import DeploymentRequest, deploy

    if os.environ.get("CDSIM_INSIDE_INSTANCE"):
        root_default, log_default = AGENT_ROOT_DIR, AGENT_LOG_DIR
    else:
        root_default, log_default = host_root_dir(), host_log_dir()
    cfg = _config(args, root_default, log_default)
    printer = Printer(quiet=args.quiet, verbose=args.verbose)
    request = DeploymentRequest(
        revision=LocalRevision(bundle, btype), config=cfg,
        deployment_group_id=args.deployment_group, deployment_group_name=args.deployment_group_name,
        application_name=args.application_name or bundle, events=args.events,
        file_exists_behavior=args.file_exists_behavior.upper(),
        appspec_filename=args.appspec_filename, grace_seconds=args.grace_period,
        ignore_application_stop_failures=args.ignore_application_stop_failures,
        **hook_environment(args.inherit_env),
        progress=None if args.quiet else ProgressBar("  copying files"))
    records: list[dict[str, Any]] = []
    result = deploy(request, listeners=[printer.on_record, records.append], notify=printer.notice,
                    on_output=None if args.quiet else printer.output_line)
    printer.finish(result)
    if not os.environ.get("CDSIM_INSIDE_INSTANCE"):  # inside, the outer cdsim writes the reports
        _reports(args, records)
    return result.exit_status


def hook_environment(inherit: bool) -> dict[str, Any]:
    """The hooks' ``base_env`` and ``cwd`` for a DeploymentRequest: the agent service's (spec §7.3,
    §9.1: cwd ``/``, the systemd unit's environment, AWS key variables removed), or with ``inherit``
    the caller's, as codedeploy-local gives them."""
    if inherit:
        return {"base_env": dict(os.environ), "cwd": os.getcwd()}
    from hooks_runtime.environment import service_environment
    return {"base_env": service_environment(), "cwd": "/"}


def _reports(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    from agent.reports import write_reports
    for path in write_reports(args.report, records):
        if not args.quiet and path != "-":
            print(f"report: {path}", file=sys.stderr)


def deploy_in_instance(args: argparse.Namespace, bundle: str, btype: str) -> int:
    from agent import instance as instances

    name = args.instance or DEFAULT_INSTANCE
    inst = instances.get_or_create(name, network=args.network, image_ref=args.image)
    _check_id_map(inst, name, bundle, args.appspec_filename, quiet=args.quiet)
    # the bundle (and configuration file) reach the run inside through bind mounts made for this
    # deployment: through the instance's / (an overlay of the host) they may read as they were when
    # the instance started
    binds = {bundle: instances.bind_target(bundle)}
    config_file = args.agent_configuration_file
    if config_file and os.path.isfile(config_file):
        config_file = os.path.abspath(config_file)
        binds[config_file] = instances.bind_target(config_file)
        config_file = binds[config_file]
    argv = [*instances.agent_command(inst), "deploy", "--host", binds[bundle], "--type", btype,
            "-d", args.deployment_group_name, "-a", args.application_name or bundle,
            *deployment_options(args)]
    if config_file:
        argv += ["-c", config_file]
    if args.verbose:
        argv.append("-v")
    if not args.quiet:
        print(f"cdsim: deploying into instance {name!r} (cdsim instance shell {name} to look around)",
              flush=True)
    env = dict(os.environ, CDSIM_INSIDE_INSTANCE=name)
    started = time.time()
    cwd = "/" if instances.made_from_image(inst) else os.getcwd()   # the image has not this machine's folders
    status = instances.exec_in(inst, argv, env=env, cwd=cwd, binds=binds)
    if status != 0:
        from agent.instance.imds import refusal_advice
        advice = refusal_advice(inst, started)
        if advice:
            print(f"cdsim: {advice}", file=sys.stderr, flush=True)
    if args.report or os.environ.get("GITHUB_ACTIONS") == "true":
        _reports(args, _records_from_instance(inst, args.deployment_group, started))
    return status


def _check_id_map(inst: Instance, name: str, bundle: str, appspec_filename: str | None, *, quiet: bool) -> None:
    """Stop before the first hook when the bundle needs users other than root inside an instance that
    can map only its creator (an ordinary user without subordinate ids), with the exact fix; say nothing
    for bundles that need no other user. An instance made before this machine could map other users is
    re-mapped when it next starts: a running one is restarted for a bundle that needs it."""
    from agent import instance as instances
    from agent.commands.doctor import users_needed
    from agent.instance import idmap

    problem = instances.id_map_problem(inst)
    if not problem:
        return
    needed = users_needed(bundle, appspec_filename)
    if not needed:
        return   # none, or an appspec the deployment will refuse with its own message
    if not idmap.current().get("id_map_problem"):
        if instances.running(inst):
            if not quiet:
                print(f"cdsim: restarting instance {name!r} so that it maps your subordinate ids "
                      "(its processes end)", file=sys.stderr, flush=True)
            instances.stop(inst)
        return   # re-mapped as it starts
    raise EnvironmentProblem(f"the bundle needs {', '.join(needed)} inside instance {name!r}, but {problem}",
                             reference="instance-id-map",
                             hint="or deploy as root, or onto this machine with --host")


def _records_from_instance(inst: Instance, group: str, since: float) -> list[dict[str, Any]]:
    """The event stream the run inside wrote, read from the instance's upper layer."""
    import glob

    from agent.events import read_events
    folder = events_dir(in_upper(inst.upper, AGENT_LOG_DIR), group)
    fresh = [p for p in glob.glob(os.path.join(folder, "*.jsonl")) if os.path.getmtime(p) >= since - 1]
    if not fresh:
        return []
    return read_events(max(fresh, key=os.path.getmtime))


def run_local_in_instance(opts: dict[str, Any]) -> int:
    """`cdsim local --instance NAME ...`: the agent-exact CLI, run inside an instance."""
    from agent import instance as instances

    name = opts.pop("--instance")
    inst = instances.get_or_create(name)
    binds = {}
    location = opts.get("--bundle-location") or os.getcwd()
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location):   # a local path: bound fresh, as in deploy
        host = os.path.abspath(location)
        binds[host] = instances.bind_target(host)
        opts["--bundle-location"] = binds[host]
        opts.setdefault("--application-name", location)
    config_file = opts.get("--agent-configuration-file")
    if config_file and os.path.isfile(config_file):
        host = os.path.abspath(config_file)
        binds[host] = opts["--agent-configuration-file"] = instances.bind_target(host)
    argv = [*instances.agent_command(inst), "local"]
    for k, v in opts.items():
        if k == "--report":
            continue  # written inside, a report would land in the instance's overlay
        argv += [k] if v is None else [k, v]
    env = dict(os.environ, CDSIM_INSIDE_INSTANCE=name)
    cwd = "/" if instances.made_from_image(inst) else os.getcwd()
    return instances.exec_in(inst, argv, env=env, cwd=cwd, binds=binds)


class Printer:
    """Renders the event stream for a person: events, hooks, live output, the outcome."""

    def __init__(self, quiet: bool = False, verbose: bool = False, stream: TextIO | None = None):
        self.quiet = quiet
        self.verbose = verbose
        self.out = stream or sys.stdout
        self.tty = self.out.isatty()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._ticker: threading.Event | None = None

    def _p(self, text: str) -> None:
        with self._lock:
            # on a terminal the last line may be the hook's elapsed-time status: overwrite it
            print(("\r\033[K" if self._ticker else "") + text, file=self.out, flush=True)

    def _start_ticker(self, location: str, timeout: int) -> None:
        """On a terminal, a status line with the running hook's elapsed time against its timeout."""
        if not self.tty or self.quiet:
            return
        stop = self._ticker = threading.Event()
        began = time.monotonic()

        def tick() -> None:
            while not stop.wait(1.0):
                with self._lock:
                    if stop.is_set():
                        return
                    self.out.write(f"\r\033[K    {location}: {time.monotonic() - began:.0f}s of {timeout}s")
                    self.out.flush()

        threading.Thread(target=tick, daemon=True).start()

    def _stop_ticker(self) -> None:
        if self._ticker:
            self._ticker.set()
            with self._lock:
                self.out.write("\r\033[K")
                self.out.flush()
            self._ticker = None

    def on_record(self, r: dict[str, Any]) -> None:
        t = r["type"]
        if t == "deployment.start":
            if self.verbose:
                self._p(f"Deployment {r['deployment_id']} in {r['deployment_dir']}")
            return
        if self.quiet:
            return
        if t == "event.start":
            # hook events without scripts are no-ops: name an event only once something happens in it
            self.pending = r["event"]
            if r["event"] in ("DownloadBundle", "Install"):
                self._event_header()
        elif t == "event.end" and r.get("status") == "Failed" and not str(r.get("reference")).startswith("hook-"):
            self._event_header()
            self._p(f"{r['event']} failed: {r.get('error')}"
                    + (" (ignored: --ignore-application-stop-failures)" if r.get("ignored") else ""))
        elif t == "hook.start":
            self._event_header()
            runas = f", runas {r['runas']}" if r.get("runas") is not None else ""
            self._p(f"  {r['location']} (timeout {r['timeout']}s{runas})")
            if r.get("previous_revision"):
                self._p(f"    from the previous revision: deployment {r.get('revision_deployment_id')}, "
                        f"archive {r.get('revision_archive')}, appspec {r.get('revision_appspec')}")
            self._start_ticker(r["location"], r["timeout"])
        elif t == "hook.end":
            self._stop_ticker()
            if r["status"] == "Succeeded":
                self._p(f"  {r['location']} succeeded in {r['duration']:.2f}s")
            else:
                self._p(f"  {r['location']} FAILED after {r['duration']:.2f}s: {r['message']}"
                        + (" (ignored: --ignore-application-stop-failures)" if r.get("ignored") else ""))
            for note in r.get("notes") or ():
                self._p(f"    {note}")

    pending: str | None = None

    def _event_header(self) -> None:
        if self.pending:
            self._p(self.pending)
            self.pending = None

    def output_line(self, text: str) -> None:
        tag, line = text[:8], text[8:].rstrip("\n")
        self._p(("    | " if tag == "[stdout]" else "    ! ") + line)

    def notice(self, text: str) -> None:
        print(f"cdsim: {text}", file=sys.stderr, flush=True)

    def finish(self, result: DeploymentResult) -> None:
        took = time.monotonic() - self.started
        if result.succeeded:
            self._p(f"Deployment {result.deployment_id} succeeded in {took:.1f}s")
        else:
            err = result.error
            assert err is not None   # a deployment that did not succeed carries its error
            where = f"{err.location()}: " if err.location() else ""
            print(f"Deployment {result.deployment_id} failed"
                  + (f" at {result.failed_event}" if result.failed_event else "")
                  + f": {where}{err.message}", file=self.out, flush=True)
            if err.hint:
                self._p(f"  hint: {err.hint}")
            self._p(f"  hook output: {result.scripts_log}")
        if self.verbose and result.events_path:
            self._p(f"  events: {result.events_path}")
