"""`cdsim server`: a local CodeDeploy endpoint (and S3) for the aws CLI; `cdsim server env` prints
the shell lines that point the aws CLI at the running one, with its credentials (every request must be
signed with them; only the server's user can read them)."""
from __future__ import annotations

import argparse
import os

from agent.errors import EnvironmentProblem

SUMMARY = "run a local CodeDeploy service (the aws CLI's deploy commands work against it)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("server", help=SUMMARY, description=__doc__)
    p.add_argument("action", nargs="?", choices=("run", "env"), default="run",
                   help="run (default): start the server; env: print the export lines of the running one")
    p.add_argument("--state", default=None, help="state folder (default: $CDSIM_STATE_DIR or ~/.local/state/cdsim)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-s3", action="store_true", help="do not start the S3 emulator (moto)")
    p.add_argument("--agent-timeout", type=float, default=600.0,
                   help="seconds an instance's agent has to pick up its deployment before the instance "
                        "fails (default 600)")
    p.add_argument("--github-root", action="append", default=[], metavar="DIR",
                   help="a folder of git repositories (owner/name) or a repository that GitHub revisions may "
                        "name; repeatable (also $CDSIM_GITHUB_ROOT). Without one, GitHub revisions are refused")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.service.auth import read
    from agent.service.client import server_info
    from agent.service.server import env_lines, serve
    from agent.state import service_dir

    if args.action == "env":
        folder = service_dir(args.state)
        if os.path.isdir(folder) and not os.access(folder, os.R_OK | os.X_OK):
            raise EnvironmentProblem(f"cannot read {folder}: only the server's user may use its credentials",
                                     reference="server-credentials",
                                     hint="run `cdsim server env` as the user who runs the server")
        info = server_info(args.state)
        if info is None:
            raise EnvironmentProblem(f"no cdsim server is running for {service_dir(args.state)}",
                                     reference="server-not-running", hint="start one with `cdsim server`")
        creds = read(service_dir(args.state))
        if creds is None:
            raise EnvironmentProblem(f"cannot read the server's credentials in {service_dir(args.state)}",
                                     reference="server-credentials",
                                     hint="run `cdsim server env` as the user who runs the server")
        print("\n".join(env_lines(info, creds)))
        return 0
    return serve(args.state, args.port, s3=not args.no_s3, quiet=not args.verbose, agent_timeout=args.agent_timeout,
                 github_root=args.github_root)
