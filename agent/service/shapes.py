"""The JSON shapes the service's parts share: the server and its store, the API, the client and agents.

Pure: types only; imports nothing from cdsim, so both sides (server and agent) may import it.
"""
from __future__ import annotations

from typing import Any, Required, TypedDict

# a JSON object: a stored document (its kind's AWS shape, plus private "_" fields) or a piece of one,
# a request or response body, a command or lifecycle event on the wire. Open by nature: the API checks
# what it reads from a request, and each document's shape is the AWS one of its kind.
JsonObject = dict[str, Any]


class RunnerSpec(TypedDict, total=False):
    """What an agent hands ``python -m agent.service.runner`` (as its one JSON argument): one deployment
    to run on this machine, from a PollCommand's command and the bundle the agent fetched for it."""

    deploymentId: Required[str]
    applicationName: Required[str]
    deploymentGroupName: Required[str]
    deploymentGroupId: Required[str]
    creator: Required[str]
    fileExistsBehavior: Required[str]
    ignoreApplicationStopFailures: Required[bool]
    bundle: Required[str]                          # the fetched bundle's path
    bundleType: Required[str]                      # tar, tgz or zip
    fetchedFrom: Required[dict[str, str | None]]   # the revision fetched (agent.revision.to_record): its
                                                   # BUNDLE_* variables are the hooks'
    trafficControl: bool                           # stop for the service's BlockTraffic and AllowTraffic
    deploymentType: str                            # IN_PLACE or BLUE_GREEN (the §4.2 rollback mapping)
    events: list[str]                              # blue/green: exactly these agent events, in this order
    waitAfter: dict[str, str]                      # blue/green: after which event to ask for which step
    rootDir: str                                   # host agents: the deployment root and log folder;
    logDir: str                                    # else the agent's own, inside the instance
