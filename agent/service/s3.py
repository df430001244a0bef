"""S3 beside the service: moto's server mode in a child process, and a record of uploaded objects.

moto keeps objects in memory, so every object PUT through cdsim's endpoint is also recorded (the
request as received) under ``<service>/s3/`` and replayed into a fresh moto after a restart: the
revisions a rollback needs survive. Must not import the engine, the API or the server.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid

from agent.errors import EnvironmentProblem


# moto refuses anonymous reads of private objects but checks no signature: any SigV4-shaped
# Authorization header is an authenticated caller to it (the agent talks only to cdsim's S3)
_AUTH = ("AWS4-HMAC-SHA256 Credential=cdsim/20000101/us-east-1/s3/aws4_request, "
         "SignedHeaders=host, Signature=" + "0" * 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(endpoint: str, method: str, path: str, body: bytes = b"", headers: dict | None = None,
            timeout: float = 60.0) -> tuple[int, list[tuple[str, str]], bytes]:
    parts = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


class MotoS3:
    """A moto server on a free loopback port; ``endpoint`` once started."""

    def __init__(self, folder: str):
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.endpoint: str | None = None

    def start(self, timeout: float = 30.0) -> str:
        os.makedirs(os.path.join(self.folder, "objects"), exist_ok=True)
        port = free_port()
        with open(os.path.join(self.folder, "moto.log"), "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                request(self.endpoint, "GET", "/moto-api/", timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise EnvironmentProblem("the S3 emulator (moto server) did not start; see "
                                             + os.path.join(self.folder, "moto.log"),
                                             reference="s3-unavailable",
                                             hint="install it: pip install 'moto[server]'") from None
                time.sleep(0.1)
        self._replay()
        return self.endpoint

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def ensure_bucket(self, path: str) -> None:
        """Create the bucket of an object PUT if it is missing (a local convenience: pipelines assume it)."""
        bucket = path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        if bucket and request(self.endpoint, "HEAD", "/" + bucket)[0] == 404:
            request(self.endpoint, "PUT", "/" + bucket)

    def record(self, method: str, path: str, headers: dict, body: bytes) -> None:
        """Keep an object PUT to replay after a restart."""
        name = os.path.join(self.folder, "objects", f"{time.time_ns()}-{uuid.uuid4().hex}")
        with open(name + ".body", "wb") as f:
            f.write(body)
        with open(name + ".json", "w", encoding="utf-8") as f:
            json.dump({"method": method, "path": path, "headers": headers}, f)

    def record_completed(self, path: str) -> None:
        """Keep a completed multipart upload as one plain PUT of the whole object."""
        status, _, body = request(self.endpoint, "GET", path, headers={"Authorization": _AUTH})
        if status == 200:
            self.record("PUT", path, {"Authorization": _AUTH}, body)

    def _replay(self) -> None:
        folder = os.path.join(self.folder, "objects")
        for entry in sorted(n for n in os.listdir(folder) if n.endswith(".json")):
            with open(os.path.join(folder, entry), encoding="utf-8") as f:
                req = json.load(f)
            with open(os.path.join(folder, entry[:-5] + ".body"), "rb") as f:
                body = f.read()
            self.ensure_bucket(req["path"])
            request(self.endpoint, req["method"], req["path"], body, req["headers"])


def download(endpoint: str, path: str, dest: str) -> None:
    """GET an object into ``dest``; EnvironmentProblem naming the S3 error otherwise."""
    status, _, body = request(endpoint, "GET", path, headers={"Authorization": _AUTH})
    if status != 200:
        raise EnvironmentProblem(f"cannot download s3 object {path} from {endpoint}: HTTP {status} "
                                 f"{body[:300].decode(errors='replace')}", reference="s3-download")
    with open(dest, "wb") as f:
        f.write(body)
