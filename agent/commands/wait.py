"""`cdsim wait [DEPLOYMENT_ID|-]`: follow a deployment to its end, as a pipeline's gate.

Reads the id, or the JSON ``aws deploy create-deployment`` prints, from stdin when given ``-`` (or
nothing). Prints each instance's progress (and, once, that a blue/green deployment in the Ready state
waits for ``aws deploy continue-deployment``: it goes on waiting); exits 0 when the deployment
succeeded, otherwise non-zero (a hook's failure: its exit status; anything else: DEPLOYMENT_FAILED)
after printing the failing instance, lifecycle event, message and log tail.

``--traffic URL[,RATE]`` rehearses the deployment under load: ``agent.probe`` sends GET requests to URL
(default 20 per second) from the first poll until the deployment ends, then reports them per instance and
lifecycle event (the window each request was sent in, from the events' start and end times the service
reports): sent, failed (connection errors, timeouts, 5xx), latency p50/p95/p99 and which version answered
(``--traffic-version-header NAME``, or ``--traffic-version-regex`` on the body). More failed requests than
``--max-failed-requests`` (default 0) exit TRAFFIC_FAILED (9) when the deployment itself succeeded.
``--traffic-report FILE`` writes the figures as JSON, with every request (``samples``: sent and answered
times, status or error, version), so a test can check which version answered when. The URL's host must
be this machine's (loopback, or an address of its own) unless ``--traffic-allow-remote``.

``--report KIND=FILE`` (junit, json, html, github) renders the deployment as event-stream records
(``agent.reports.fleet``: each instance's lifecycle events, and the rehearsal's figures as ``traffic``
records) with the same renderers as `cdsim local`'s reports.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from agent.errors import ExitStatus, UsageError

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from agent.probe import Probe, WindowSummary

SUMMARY = "wait for a deployment to finish; exit non-zero with the failure when it fails"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("wait", help=SUMMARY, description=__doc__)
    p.add_argument("deployment", nargs="?", default="-", help="deployment id, or - to read it from stdin")
    p.add_argument("--endpoint", default=None)
    p.add_argument("--state", default=None)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the outcome")
    from agent.reports import add_report_option
    add_report_option(p)
    add_traffic_options(p)
    p.set_defaults(func=run)


def add_traffic_options(p: argparse.ArgumentParser) -> None:
    """The rehearsal's options (``--traffic`` ...), for `cdsim wait` and the commands that deploy to a fleet."""
    t = p.add_argument_group("rehearsal (requests during the deployment)")
    t.add_argument("--traffic", metavar="URL[,RATE]", default=None,
                   help="send GET requests to URL at RATE per second (default 20) during the whole deployment")
    t.add_argument("--traffic-version-header", metavar="NAME", default=None,
                   help="the response header that names the version that answered")
    t.add_argument("--traffic-version-regex", metavar="REGEX", default=None,
                   help="a regex on the response body whose first group (or match) names the version")
    t.add_argument("--max-failed-requests", type=int, default=0, metavar="N",
                   help="fail (exit 9) when more requests failed (default 0)")
    t.add_argument("--traffic-report", metavar="FILE", default=None, help="write the figures as JSON to FILE")
    t.add_argument("--traffic-allow-remote", action="store_true",
                   help="allow a URL whose host is not this machine")
    t.add_argument("--traffic-timeout", type=float, default=2.0, metavar="SECONDS",
                   help="a request not answered in time failed (default 2)")


def read_deployment_id(arg: str, stdin: TextIO | None = None) -> str:
    text = arg
    if arg == "-":
        text = (stdin or sys.stdin).read().strip()
        try:
            doc = json.loads(text)
            text = doc.get("deploymentId", "") if isinstance(doc, dict) else str(doc)
        except ValueError:
            pass
    text = text.strip()
    if not text:
        raise UsageError("no deployment id given (as an argument, or create-deployment's output on stdin)")
    return text


def targets(endpoint: str, did: str) -> list[dict[str, Any]]:
    from agent.service.client import call
    ids = call(endpoint, "ListDeploymentTargets", {"deploymentId": did})["targetIds"]
    out = []
    for i in range(0, len(ids), 25):
        got = call(endpoint, "BatchGetDeploymentTargets", {"deploymentId": did, "targetIds": ids[i:i + 25]})
        out += [t["instanceTarget"] for t in got["deploymentTargets"]]
    return out


def _where(t: dict[str, Any]) -> str:
    running = [e["lifecycleEventName"] for e in t["lifecycleEvents"] if e["status"] == "InProgress"]
    return f" ({running[0]})" if running else ""


def start_probe(args: argparse.Namespace) -> Probe | None:
    """The rehearsal's probe, started, when --traffic is given (its options checked first)."""
    import re

    from agent import probe

    if args.traffic is None:
        return None
    url, rate = probe.parse_option(args.traffic)
    target = probe.check_target(url, allow_remote=args.traffic_allow_remote)
    pattern = None
    if args.traffic_version_regex is not None:
        try:
            pattern = re.compile(args.traffic_version_regex)
        except re.error as e:
            raise UsageError(f"--traffic-version-regex {args.traffic_version_regex!r}: {e}",
                             reference="traffic-regex-invalid") from None
    if args.max_failed_requests < 0 or not 0 < args.traffic_timeout <= 60:
        raise UsageError("--max-failed-requests must be 0 or more and --traffic-timeout from 0 to 60 seconds",
                         reference="traffic-option-invalid")
    return probe.Probe(target, rate, timeout=args.traffic_timeout, max_seconds=args.timeout,
                       max_requests=int(rate * args.timeout) + 1, version_header=args.traffic_version_header,
                       version_pattern=pattern).start()


def finish_probe(args: argparse.Namespace, running: Probe, did: str, current: list[dict[str, Any]] | None = None,
                 *, windows: list[tuple[str, str, float, float]] | None = None) -> list[WindowSummary]:
    """Stop the probe, print its figures per instance and event (and write them); the figures. The
    windows are the deployment ``did``'s targets' events (``current``), or the ``windows`` given (then
    ``did`` only names what ran)."""
    import dataclasses
    import os

    from agent import probe
    from agent.fsutil import atomic_write
    from agent.reports import fleet

    samples = running.stop()
    rows = probe.summarize(samples, windows if windows is not None else fleet.windows(current or [], time.time()))
    out = sys.stdout
    print(f"{did}: requests to {running.target.url} at {running.rate:g}/s, per instance and lifecycle event:",
          file=out)
    for line in probe.render(rows):
        print(f"  {line}", file=out)
    out.flush()
    if args.traffic_report:
        doc = {"deploymentId": did, "url": running.target.url, "rate": running.rate, "windows": rows,
               "samples": [dataclasses.asdict(s) for s in samples]}
        atomic_write(os.path.abspath(args.traffic_report), (json.dumps(doc, indent=2) + "\n").encode())
    return rows


def run(args: argparse.Namespace) -> int:
    from agent.service.client import find_endpoint

    did = read_deployment_id(args.deployment)
    endpoint = find_endpoint(args.endpoint, args.state)
    running = start_probe(args)
    try:
        status = follow(args, endpoint, did, running)
    finally:
        if running is not None and not running.stopped:
            running.stop()
    return status


def follow(args: argparse.Namespace, endpoint: str, did: str, running: Probe | None) -> int:
    from agent.service.client import call

    deadline = time.monotonic() + args.timeout
    seen: dict[str, str] = {}
    ready_said = False
    while True:
        info = call(endpoint, "GetDeployment", {"deploymentId": did})["deploymentInfo"]
        if info["status"] == "Ready" and not ready_said:   # blue/green STOP_DEPLOYMENT: not over, waiting
            ready_said = True
            print(f"{did}: Ready: the replacement instances are installed; traffic moves to them after "
                  f"`aws deploy continue-deployment --deployment-id {did} --deployment-wait-type READY_WAIT`",
                  flush=True)
        current = targets(endpoint, did)
        if not args.quiet:
            for t in current:
                line = t["status"] + _where(t)
                if seen.get(t["targetId"]) != line:
                    seen[t["targetId"]] = line
                    print(f"{did} {t['targetId']}: {line}", flush=True)
        if info["status"] in ("Succeeded", "Failed", "Stopped"):
            break
        if time.monotonic() > deadline:
            print(f"{did}: still {info['status']} after {args.timeout:g}s", file=sys.stderr)
            return int(ExitStatus.DEPLOYMENT_FAILED)
        time.sleep(args.interval)
    counts = ", ".join(f"{v} {k}" for k, v in info.get("deploymentOverview", {}).items() if v)
    figures = finish_probe(args, running, did, current) if running is not None else []
    failed_requests = figures[-1]["failed"] if figures else 0
    if args.report:
        from agent.reports import fleet, write_reports
        write_reports(args.report, fleet.records(info, current, figures))
    if info["status"] == "Succeeded":
        print(f"Deployment {did} succeeded ({counts})", flush=True)
        if failed_requests > args.max_failed_requests:
            print(f"{did}: {failed_requests} requests failed during the deployment (at most "
                  f"{args.max_failed_requests} allowed)", file=sys.stderr, flush=True)
            return int(ExitStatus.TRAFFIC_FAILED)
        return 0
    return report_failure(info, current, counts)


def report_failure(info: dict[str, Any], current: list[dict[str, Any]], counts: str) -> int:
    did = info["deploymentId"]
    err = info.get("errorInformation") or {}
    out = sys.stderr
    print(f"Deployment {did} {info['status'].lower()} ({counts})"
          + (f": {err.get('code')}: {err.get('message')}" if err else ""), file=out)
    status = ExitStatus.DEPLOYMENT_FAILED
    for t in current:
        if t["status"] != "Failed":
            continue
        for e in t["lifecycleEvents"]:
            if e["status"] != "Failed":
                continue
            d = e.get("diagnostics") or {}
            script = f" {d['scriptName']}" if d.get("scriptName") else ""
            print(f"  {t['targetId']}: {e['lifecycleEventName']} failed: {d.get('errorCode')}{script}: "
                  f"{d.get('message')}", file=out)
            origin = e.get("cdsimScriptRevision")
            if origin:
                print("    the script is the previous revision's (spec §4.2): "
                      f"deployment {origin.get('deploymentId')}, "
                      f"archive {origin.get('archive')}, appspec {origin.get('appspec')}; this revision's "
                      f"{e['lifecycleEventName']} script will not run until a deployment succeeds: deploy with "
                      "ignoreApplicationStopFailures, or remove the marker "
                      f"{origin.get('marker') or '<root>/deployment-instructions/<group>_last_successful_install'}"
                      f" on {t['targetId']}", file=out)
            if d.get("logTail"):
                print("    log tail:", file=out)
                for line in d["logTail"].rstrip("\n").split("\n"):
                    print(f"    | {line}", file=out)
            code = d.get("errorCode", "")
            if code == "ScriptTimedOut" and status == ExitStatus.DEPLOYMENT_FAILED:
                status = ExitStatus.HOOK_TIMED_OUT
            elif code.startswith("Script") and status == ExitStatus.DEPLOYMENT_FAILED:
                status = ExitStatus.HOOK_FAILED
    rollback = (info.get("rollbackInfo") or {}).get("rollbackDeploymentId")
    if rollback:
        print(f"  rolling back: deployment {rollback} redeploys the last successful revision", file=out)
    out.flush()
    return int(status)
