"""Figure 9 of issue 9: a fleet of 20 instances, AllAtOnce, trivial revision, against one deployment
to one instance x 20 / cores.

    python bench/fleet.py [--instances 20] [--runs 5]

A cdsim server (agent.service, in this process, no S3) with 21 sandboxed instances (needs root): one
tagged Solo, 20 tagged Fleet, one application, a group per tag (CodeDeployDefault.AllAtOnce). The
revision is a commit of a local git repository installing one small file, no hooks. Each pair times,
from CreateDeployment to the deployment's end (polled every 20 ms), a deployment to the Solo group
(the floor: x 20 / cores) and one to the Fleet group. Prints a "not available yet" line when the
service cannot be driven on this machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Row, print_rows

TARGET = 1.5
FLOOR = "1 instance's deployment x 20 / cores"
FIGURE = "fleet of 20 instances, AllAtOnce"
APPSPEC = "version: 0.0\nos: linux\nfiles:\n  - source: /app.txt\n    destination: /srv/app\n"


def available() -> str | None:
    """None when the service can be driven here; else why not."""
    try:
        from agent.commands.fleet import fleet_up  # noqa: F401
        from agent.service.client import call  # noqa: F401
        from agent.service.server import Service  # noqa: F401
    except ImportError as e:
        return f"not available yet: {e}"
    if os.geteuid() != 0:
        return "not available: sandboxed instances need root"
    if shutil.which("git") is None:
        return "not available: the revision is a git commit and git is missing"
    return None


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, "-c", "user.name=b", "-c", "user.email=b@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def measure(instances: int, runs: int, where: str) -> Row:
    from agent import instance as inst
    from agent.commands.fleet import fleet_up
    from agent.service.client import call
    from agent.service.server import Service

    base = tempfile.mkdtemp(prefix="cdsim-bench-fleet-", dir=where)
    state = os.path.join(base, "state")
    saved = os.environ.get("CDSIM_STATE_DIR")
    os.environ["CDSIM_STATE_DIR"] = state
    service = None
    try:
        repo = os.path.join(base, "repo")
        os.makedirs(repo)
        _git(repo, "init", "-q")
        with open(os.path.join(repo, "appspec.yml"), "w") as f:
            f.write(APPSPEC)
        with open(os.path.join(repo, "app.txt"), "w") as f:
            f.write("v1\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "v1")
        revision = {"revisionType": "GitHub",
                    "gitHubLocation": {"repository": repo, "commitId": _git(repo, "rev-parse", "HEAD")}}
        service = Service(state, s3=False, github_root=[repo]).start()
        ep = service.endpoint
        fleet_up(ep, count=1, tag="Name=Solo", application="A", group="Solo",
                 config="CodeDeployDefault.AllAtOnce", state=state)
        fleet_up(ep, count=instances, tag="Name=Fleet", application="A", group="Fleet",
                 config="CodeDeployDefault.AllAtOnce", state=state)

        def deploy(group: str) -> float:
            t = time.perf_counter()
            did = call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": group,
                                                "revision": revision})["deploymentId"]
            while True:
                info = call(ep, "GetDeployment", {"deploymentId": did})["deploymentInfo"]
                if info["status"] in ("Succeeded", "Failed", "Stopped"):
                    break
                time.sleep(0.02)
            took = time.perf_counter() - t
            if info["status"] != "Succeeded":
                raise SystemExit(f"fleet bench: deployment to {group} ended {info['status']}: "
                                 f"{info.get('errorInformation')}")
            return took

        deploy("Solo")  # first deployments prepare the instances (untimed)
        deploy("Fleet")
        cores = os.cpu_count() or 1
        solo, fleet, ratios = [], [], []
        for _ in range(runs):
            one = deploy("Solo") * instances / cores
            many = deploy("Fleet")
            solo.append(one)
            fleet.append(many)
            ratios.append(many / one)
        return Row(f"{FIGURE} ({instances})", "", FLOOR.replace("20", str(instances)), statistics.median(solo),
                   statistics.median(fleet), statistics.median(ratios), "x", TARGET)
    finally:
        if service is not None:
            service.close()
        for status in inst.list_instances(state=state):
            inst.destroy(inst.get(status.name, state=state))
        if saved is None:
            os.environ.pop("CDSIM_STATE_DIR", None)
        else:
            os.environ["CDSIM_STATE_DIR"] = saved
        shutil.rmtree(base, ignore_errors=True)


def rows(runs: int = 5, instances: int = 20, where: str = "/var/tmp") -> list[Row]:
    why = available()
    if why:
        row = Row(FIGURE, "", FLOOR, None, None, None, "x", TARGET, note=why)
    else:
        row = measure(instances, runs, where)
    print_rows([row])
    return [row]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--where", default="/var/tmp", help="folder for the state and the instances")
    args = ap.parse_args()
    rows(max(5, args.runs), args.instances, args.where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
