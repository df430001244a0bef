"""`cdsim agent`: poll a cdsim server for one instance's deployments and run them.

By default the deployments run inside the sandboxed instance NAME of this machine; with --host they
run on this machine itself (say inside a Vagrant box whose agent serves a server on the host).
Its calls are signed with the server's credentials: the state folder's, when this user runs that
server, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (`eval "$(cdsim server env)"` on the server's side).
"""
from __future__ import annotations

import argparse
import os
import signal

SUMMARY = "run an agent that polls a cdsim server for an instance's deployments"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help=SUMMARY, description=__doc__)
    p.add_argument("--endpoint", default=None, help="the server's URL (default: the running server's)")
    p.add_argument("--instance", required=True, help="the on-premises instance name it serves")
    p.add_argument("--host", action="store_true", help="deploy onto this machine, not into an instance")
    p.add_argument("--root-dir", default=None,
                   help="with --host: folder for the deployment root and logs (default: in the state folder)")
    p.add_argument("--state", default=None, help="state folder (default: $CDSIM_STATE_DIR or ~/.local/state/cdsim)")
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--github-root", action="append", default=[], metavar="DIR",
                   help="a folder of git repositories (owner/name) or a repository that GitHub revisions may "
                        "name; repeatable (also $CDSIM_GITHUB_ROOT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.service.agent_loop import Agent
    from agent.service.client import find_endpoint
    from agent.state import agent_work_dir, service_host_dir

    endpoint = find_endpoint(args.endpoint, args.state)
    work = agent_work_dir(args.instance, args.state)
    root = None
    if args.host:
        root = os.path.abspath(args.root_dir or service_host_dir(args.instance, args.state))
    agent = Agent(endpoint, args.instance, work_dir=work, state=args.state, host_root=root,
                  poll_interval=args.poll_interval, github_roots=args.github_root)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    print(f"cdsim agent: instance {args.instance}, polling {endpoint}", flush=True)
    agent.run()
    return 0
