"""`cdsim lb serve|list|stop`: the state's load balancer (agent.instance.loadbalancer).

``serve`` starts the daemon that carries the traffic of the local AWS's application load balancers
(HTTP listeners forwarding to a target group) on loopback ports, and prints each URL; ``list`` prints
load balancer -> URL -> targets and their health (``--json`` for the daemon's whole view); ``stop`` ends
the daemon (it also ends by itself once no instance of the state runs). Thin: parses, calls, prints.
"""
from __future__ import annotations

import argparse
import json

from agent.errors import EnvironmentProblem

# the modules named in annotations only are imported for the type checker, not at run time
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.instance.lbview import Status

SUMMARY = "serve, list or stop the local load balancer that carries the local AWS's ELBv2 traffic"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lb", help=SUMMARY, description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("serve", help="start the load balancer (if not running) and print its URLs")
    listing = actions.add_parser("list", help="load balancer -> URL -> targets and their health")
    listing.add_argument("--json", action="store_true", help="the daemon's whole view, as JSON")
    actions.add_parser("stop", help="stop the load balancer")
    for a in actions.choices.values():
        a.add_argument("--state", default=None, help="the cdsim state folder (default: $CDSIM_STATE_DIR ...)")
    p.set_defaults(func=run, parser=p)


def _lines(status: Status | None) -> list[str]:
    if status is None:
        return ["no load balancer runs (cdsim lb serve)"]
    groups = {g["arn"]: g for g in status["target_groups"]}
    lines = []
    for lb in status["load_balancers"]:
        for listener in lb["listeners"]:
            group = groups.get(listener["target_group_arn"])
            lines.append(f"{lb['name']} :{listener['port']} -> {listener['url']} -> "
                         f"{group['name'] if group else listener['target_group_arn']}")
            for t in group["targets"] if group else []:
                lines.append(f"  {t['id']}:{t['port']} {t['address'] or '-'} {t['state']}"
                             + (f" ({t['reason']})" if t["reason"] else ""))
    return lines or ["the load balancer runs, but no load balancer has an HTTP listener forwarding to a target group"]


def run(args: argparse.Namespace) -> int:
    from agent.instance import loadbalancer
    from agent.state import resolve

    if not getattr(args, "action", None):
        args.parser.print_help()
        return 2
    state = resolve(args.state)
    if args.action == "serve":
        from agent.instance import localaws

        if not localaws.instances_running(state):
            raise EnvironmentProblem(
                f"no instance of the state {state} runs: the load balancer serves the local AWS of running "
                "instances (it stops once none runs)", reference="lb-no-instances",
                hint="start them first: cdsim fleet up ... --target-group NAME, or cdsim instance start NAME")
        try:
            loadbalancer.ensure(state)
        except OSError as e:
            raise EnvironmentProblem(str(e), reference="lb-start",
                                     hint="the load balancer needs a running instance of the state "
                                          "(cdsim fleet up, cdsim instance start)") from e
        print("\n".join(_lines(loadbalancer.status(state))))
        return 0
    if args.action == "list":
        view = loadbalancer.status(state)
        print(json.dumps(view, indent=1) if args.json else "\n".join(_lines(view)))
        return 0
    print("load balancer stopped" if loadbalancer.stop(state) else "no load balancer ran")
    return 0
