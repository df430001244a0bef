"""S3 beside the service: moto's S3 as a WSGI application inside the server's process, and a record
of uploaded objects.

moto runs in-process (no child process outlives the server); the server hands it only requests it
has authenticated. moto keeps objects in memory, so every object PUT through cdsim's endpoint is also
recorded (the request as received) under ``<service>/s3/`` and replayed into moto at the next start:
the revisions a rollback needs survive a restart. Must not import the engine, the API or the server.
"""
from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from agent.errors import EnvironmentProblem

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

# moto refuses anonymous reads of private objects but checks no signature: any SigV4-shaped
# Authorization header is an authenticated caller to it. The server has checked the real one.
_AUTH = ("AWS4-HMAC-SHA256 Credential=cdsim/20000101/us-east-1/s3/aws4_request, "
         "SignedHeaders=host, Signature=" + "0" * 64)


class MotoS3:
    """moto's S3 application in this process; ``app`` once started.

    moto keeps S3 in one store per process: the first server of a process starts it empty (then
    replays its records); a second server in the same process (tests) shares it."""

    _active = 0
    _active_lock = threading.Lock()

    def __init__(self, folder: str):
        self.folder = folder
        self.app: WSGIApplication | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        from agent.service.auth import private_folder
        private_folder(self.folder)
        stop_stale_children(self.folder)
        os.makedirs(os.path.join(self.folder, "objects"), exist_ok=True)
        try:
            from moto.moto_server.werkzeug_app import create_backend_app
        except ImportError as e:
            raise EnvironmentProblem(f"the S3 emulator (moto) cannot be loaded: {e}", reference="s3-unavailable",
                                     hint="install it: pip install 'moto[server]' (or run with --no-s3)") from None
        from moto.s3.models import s3_backends
        with MotoS3._active_lock:
            if MotoS3._active == 0:
                for account in list(s3_backends.values()):
                    account.reset()
            MotoS3._active += 1
        self.app = create_backend_app("s3")
        self._replay()

    def stop(self) -> None:
        if self.app is not None:
            with MotoS3._active_lock:
                MotoS3._active -= 1
        self.app = None

    def _started(self) -> WSGIApplication:
        if self.app is None:
            raise RuntimeError("moto's S3 is not started (MotoS3.start)")
        return self.app

    def wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Hand one (already authenticated) request to moto."""
        return self._started()(environ, start_response)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to moto from the server itself."""
        from werkzeug.datastructures import Headers
        from werkzeug.test import EnvironBuilder, run_wsgi_app
        hdrs = {"Host": "127.0.0.1", **(headers or {})}
        hdrs.setdefault("Authorization", _AUTH)
        raw_path, _, query = path.partition("?")
        builder = EnvironBuilder(method=method, path=raw_path, query_string=query, headers=Headers(hdrs),
                                 input_stream=io.BytesIO(body), content_length=len(body))
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        environ["RAW_URI"] = environ["REQUEST_URI"] = path
        app_iter, status, out_headers = run_wsgi_app(self._started(), environ)
        try:
            data = b"".join(app_iter)
        finally:
            getattr(app_iter, "close", lambda: None)()
        return int(status.split()[0]), list(out_headers.items()), data

    def ensure_bucket(self, path: str) -> None:
        """Create the bucket of an object PUT if it is missing (a local convenience: pipelines assume it)."""
        bucket = path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        with self.lock:
            if bucket and self.request("HEAD", "/" + bucket)[0] == 404:
                self.request("PUT", "/" + bucket)

    def record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Keep an object PUT to replay after a restart."""
        name = os.path.join(self.folder, "objects", f"{time.time_ns()}-{uuid.uuid4().hex}")
        with open(name + ".body", "wb") as f:
            f.write(body)
        with open(name + ".json", "w", encoding="utf-8") as f:
            json.dump({"method": method, "path": path, "headers": headers}, f)

    def record_completed(self, path: str) -> None:
        """Keep a completed multipart upload as one plain PUT of the whole object."""
        status, _, body = self.request("GET", path)
        if status == 200:
            self.record("PUT", path, {}, body)

    def _replay(self) -> None:
        folder = os.path.join(self.folder, "objects")
        for entry in sorted(n for n in os.listdir(folder) if n.endswith(".json")):
            with open(os.path.join(folder, entry), encoding="utf-8") as f:
                req = json.load(f)
            with open(os.path.join(folder, entry[:-5] + ".body"), "rb") as f:
                body = f.read()
            self.ensure_bucket(req["path"])
            headers = {k: v for k, v in req["headers"].items() if k.lower() not in ("authorization", "host")}
            self.request(req["method"], req["path"], body, headers)


def stop_stale_children(folder: str) -> list[int]:
    """End moto servers that an earlier cdsim (which ran moto as a child) left behind for this folder.

    Such a child is recognised by three facts, all required: it belongs to this user, its command line
    is ``python -m moto.server``, and its standard output is this folder's ``moto.log``. Returns the pids ended."""
    import psutil

    log = os.path.realpath(os.path.join(folder, "moto.log"))
    ended = []
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["uids"] is None or proc.info["uids"].real != os.getuid() \
                    or cmd[1:3] != ["-m", "moto.server"]:
                continue
            if os.path.realpath(f"/proc/{proc.pid}/fd/1") != log:
                continue
            proc.terminate()
            try:
                proc.wait(5)
            except psutil.TimeoutExpired:
                proc.kill()
            ended.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return ended
