"""`cdsim wait [DEPLOYMENT_ID|-]`: follow a deployment to its end, as a pipeline's gate.

Reads the id, or the JSON ``aws deploy create-deployment`` prints, from stdin when given ``-`` (or
nothing). Prints each instance's progress; exits 0 when the deployment succeeded, otherwise non-zero
(a hook's failure: its exit status; anything else: DEPLOYMENT_FAILED) after printing the failing
instance, lifecycle event, message and log tail.
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

SUMMARY = "wait for a deployment to finish; exit non-zero with the failure when it fails"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("wait", help=SUMMARY, description=__doc__)
    p.add_argument("deployment", nargs="?", default="-", help="deployment id, or - to read it from stdin")
    p.add_argument("--endpoint", default=None)
    p.add_argument("--state", default=None)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the outcome")
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from agent.service.client import call, find_endpoint

    did = read_deployment_id(args.deployment)
    endpoint = find_endpoint(args.endpoint, args.state)
    deadline = time.monotonic() + args.timeout
    seen: dict[str, str] = {}
    while True:
        info = call(endpoint, "GetDeployment", {"deploymentId": did})["deploymentInfo"]
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
    if info["status"] == "Succeeded":
        print(f"Deployment {did} succeeded ({counts})", flush=True)
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
