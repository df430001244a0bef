"""Calling a cdsim server: the signed JSON 1.1 request, its errors, S3 downloads, finding the endpoint
and the credentials to sign with.

Every request is signed (AWS Signature Version 4, ``agent.service.auth``) with the credentials known
for its endpoint: those of a server started in this process (``remember``), else those in the state
folder of the server that listens there (readable by the server's user only), else
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (what ``cdsim server env`` exports).
Used by the CLI commands and the agents. Must not import the server, the API or the engine.
"""
from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import TypedDict

from agent.errors import EnvironmentProblem, UsageError
from agent.service.auth import Credentials, read, sign
from agent.service.shapes import JsonObject
from agent.state import service_dir

TARGET_PREFIX = "CodeDeploy_20141006"
AGENT_PREFIX = "CdsimAgent_20261127"
SERVER_FILE = "server.json"


class ServerInfo(TypedDict):
    """What a running server writes about itself to ``<state>/service/server.json``."""

    pid: int
    endpoint: str
    s3Endpoint: str | None
    region: str
    state: str


class ServiceError(UsageError):
    """The server answered with an error (``kind`` is its ``__type``)."""

    reference = "service-error"

    def __init__(self, kind: str, message: str, status: int):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.status = status


_KNOWN: dict[str, Credentials] = {}
_KNOWN_LOCK = threading.Lock()


def remember(endpoint: str, creds: Credentials | None) -> None:
    """Sign this process's calls to ``endpoint`` with ``creds`` (None: forget them)."""
    with _KNOWN_LOCK:
        if creds is None:
            _KNOWN.pop(endpoint.rstrip("/"), None)
        else:
            _KNOWN[endpoint.rstrip("/")] = creds


def credentials_for(endpoint: str) -> Credentials | None:
    with _KNOWN_LOCK:
        known = _KNOWN.get(endpoint.rstrip("/"))
    if known:
        return known
    info = server_info()
    if info and info.get("endpoint") == endpoint.rstrip("/"):
        creds = read(service_dir())
        if creds:
            return creds
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return Credentials(key, secret) if key and secret else None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _signed(method: str, url: str, headers: dict[str, str], body: bytes, service: str,
            creds: Credentials | None) -> dict[str, str]:
    creds = creds or credentials_for(url.split("/", 3)[0] + "//" + url.split("/", 3)[2])
    if creds is None:
        return headers   # the server refuses it, and says why
    return sign(creds, method, url, headers, body, service=service, region=_region())


def call(endpoint: str, operation: str, body: JsonObject | None = None, *, prefix: str = TARGET_PREFIX,
         timeout: float = 30.0, credentials: Credentials | None = None) -> JsonObject:
    data = json.dumps(body or {}).encode()
    url = endpoint.rstrip("/") + "/"
    headers = _signed("POST", url, {"X-Amz-Target": f"{prefix}.{operation}",
                                    "Content-Type": "application/x-amz-json-1.1"}, data, "codedeploy", credentials)
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer: JsonObject = json.loads(resp.read() or b"{}")   # the server answers objects only
            return answer
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


def download(endpoint: str, bucket: str, key: str, version: str | None, dest: str, *,
             credentials: Credentials | None = None, timeout: float = 300.0) -> None:
    """GET an S3 object of the server into ``dest`` (signed); EnvironmentProblem naming the S3 error otherwise."""
    path = "/" + urllib.parse.quote(bucket, safe="") + "/" + urllib.parse.quote(key, safe="/~")
    if version:
        path += "?versionId=" + urllib.parse.quote(version, safe="")
    url = endpoint.rstrip("/") + path
    req = urllib.request.Request(url, method="GET", headers=_signed("GET", url, {}, b"", "s3", credentials))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
    except urllib.error.HTTPError as e:
        with e:
            text = e.read()[:300].decode(errors="replace")
        raise EnvironmentProblem(f"cannot download s3://{bucket}/{key} from {endpoint}: HTTP {e.code} {text}",
                                 reference="s3-download") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise EnvironmentProblem(f"cannot download s3://{bucket}/{key} from {endpoint}: "
                                 f"{getattr(e, 'reason', e)}", reference="s3-download") from None


def server_info(state: str | None = None) -> ServerInfo | None:
    """What the running server of a state folder wrote about itself, or None."""
    path = os.path.join(service_dir(state), SERVER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            info: ServerInfo = json.load(f)
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info


def find_endpoint(explicit: str | None = None, state: str | None = None) -> str:
    """--endpoint, else the aws CLI's variables, else the running server of the state folder.

    When the state folder's running server listens there and this user can read its credentials,
    this process's calls to it are signed with them."""
    info = server_info(state)
    if info is not None:
        creds = read(service_dir(state))
        if creds:
            remember(info["endpoint"], creds)
    if explicit:
        return explicit
    for var in ("AWS_ENDPOINT_URL_CODEDEPLOY", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    if info is None:
        raise EnvironmentProblem(f"no cdsim server is running for {service_dir(state)}",
                                 reference="server-not-running",
                                 hint="start one with `cdsim server`, or give --endpoint URL")
    return info["endpoint"]
