"""Calling a cdsim server: the JSON 1.1 request, its errors, and finding the endpoint.

Used by the CLI commands and the agents. Must not import the server, the API or the engine.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from agent.errors import EnvironmentProblem, UsageError

TARGET_PREFIX = "CodeDeploy_20141006"
AGENT_PREFIX = "CdsimAgent_20261127"
SERVER_FILE = "server.json"


class ServiceError(UsageError):
    """The server answered with an error (``kind`` is its ``__type``)."""

    reference = "service-error"

    def __init__(self, kind: str, message: str, status: int):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.status = status


def call(endpoint: str, operation: str, body: dict | None = None, *, prefix: str = TARGET_PREFIX,
         timeout: float = 30.0) -> dict:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(endpoint.rstrip("/") + "/", data=data, method="POST", headers={
        "X-Amz-Target": f"{prefix}.{operation}", "Content-Type": "application/x-amz-json-1.1"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        with e:
            text = e.read()
        try:
            err = json.loads(text)
        except ValueError:
            err = {"__type": f"HTTP{e.code}", "message": text.decode(errors="replace")[:500]}
        raise ServiceError(str(err.get("__type")).rpartition("#")[2], err.get("message") or "", e.code) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise EnvironmentProblem(f"cannot reach the cdsim server at {endpoint}: {getattr(e, 'reason', e)}",
                                 reference="server-unreachable",
                                 hint="start it with `cdsim server` (and check --state)") from None


def service_dir(state: str | None = None) -> str:
    from agent.instance import state_dir
    return os.path.join(os.path.abspath(state) if state else state_dir(), "service")


def server_info(state: str | None = None) -> dict | None:
    """What the running server of a state folder wrote about itself, or None."""
    path = os.path.join(service_dir(state), SERVER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info


def find_endpoint(explicit: str | None = None, state: str | None = None) -> str:
    """--endpoint, else the aws CLI's variables, else the running server of the state folder."""
    if explicit:
        return explicit
    for var in ("AWS_ENDPOINT_URL_CODEDEPLOY", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    info = server_info(state)
    if info is None:
        raise EnvironmentProblem(f"no cdsim server is running for {service_dir(state)}",
                                 reference="server-not-running",
                                 hint="start one with `cdsim server`, or give --endpoint URL")
    return info["endpoint"]
