"""The cdsim server: the CodeDeploy API over HTTP on loopback, S3 beside it, and the background work.

``Service`` owns the state folder's ``service/`` directory (the SQLite file, ``server.json`` telling
other commands where it listens, moto's records), an HTTP server (AWS JSON 1.1 requests with
``X-Amz-Target``; any other request without that header is proxied to the S3 emulator, so one
``AWS_ENDPOINT_URL`` serves the aws CLI's ``deploy`` and ``s3`` calls), the engine thread and the
supervisor that runs an agent for every registered on-premises instance that is one of this state
folder's sandboxed instances.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.errors import EnvironmentProblem
from agent.fsutil import atomic_write
from agent.service.api import AGENT_PREFIX, TARGET_PREFIX, AgentApi, Api, ApiError
from agent.service.client import SERVER_FILE, service_dir
from agent.service.engine import Engine
from agent.service.store import Store

DB_FILE = "codedeploy.sqlite3"
DUMMY_KEY = "cdsim"


class Service:
    def __init__(self, state: str | None = None, *, port: int = 0, s3: bool = True, agents: bool = True,
                 region: str = "us-east-1", quiet: bool = True, agent_timeout: float = 600.0):
        from agent.instance import state_dir
        self.state = os.path.abspath(state) if state else state_dir()
        self.folder = service_dir(self.state)
        os.makedirs(self.folder, exist_ok=True)
        self.port = port
        self.region = region
        self.quiet = quiet
        self.store = Store(os.path.join(self.folder, DB_FILE))
        self.moto = None
        if s3:
            from agent.service.s3 import MotoS3
            self.moto = MotoS3(os.path.join(self.folder, "s3"))
        self.engine = Engine(self.store, region=region, pickup_timeout=agent_timeout)
        self.api = Api(self.store, self.engine)
        self.agent_api = AgentApi(self.engine)
        self.run_agents = agents
        self.agents: dict = {}
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.httpd: ThreadingHTTPServer | None = None
        self.endpoint = ""

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> "Service":
        try:
            return self._start()
        except BaseException:
            self.store.close()
            raise

    def _start(self) -> "Service":
        from agent.service.client import server_info
        running = server_info(self.state)
        if running:
            raise EnvironmentProblem(f"a cdsim server (pid {running['pid']}) already serves {self.folder} "
                                     f"on {running['endpoint']}", reference="server-running",
                                     hint="use it (`cdsim server env`), or stop it first")
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        except OSError as e:
            raise EnvironmentProblem(f"cannot listen on 127.0.0.1:{self.port}: {e.strerror or e}",
                                     reference="server-port", hint="choose another --port, or 0 for any") from None
        if self.moto:
            try:
                self.engine.s3_endpoint = self.moto.start()
            except BaseException:
                self.httpd.server_close()
                raise
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        if self.run_agents:
            self.engine.fail_orphaned_commands(set(self._local_instances()))
        for target in (self._serve, self._engine_loop, self._supervise):
            t = threading.Thread(target=target, daemon=True, name=f"cdsim{target.__name__}")
            t.start()
            self.threads.append(t)
        atomic_write(os.path.join(self.folder, SERVER_FILE), json.dumps(self.info()).encode())
        return self

    def info(self) -> dict:
        return {"pid": os.getpid(), "endpoint": self.endpoint, "s3Endpoint": self.engine.s3_endpoint,
                "region": self.region, "state": self.state}

    def close(self) -> None:
        self.stopping.set()
        self.engine.notify()
        for t in self.threads[1:]:   # the engine and the supervisor: no agent starts after this
            t.join(timeout=60)
        # agents finish the command they run and report it while the HTTP server still answers
        for agent in self.agents.values():
            agent.stop_event.set()
        for agent in self.agents.values():
            agent.thread.join(timeout=600)
        if self.httpd:
            self.httpd.shutdown()
            self.threads[0].join(timeout=60)
            self.httpd.server_close()
        if self.moto:
            self.moto.stop()
        try:
            with open(os.path.join(self.folder, SERVER_FILE), encoding="utf-8") as f:
                if json.load(f).get("pid") == os.getpid():
                    os.unlink(os.path.join(self.folder, SERVER_FILE))
        except (OSError, ValueError):
            pass
        self.store.close()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- background work ------------------------------------------------------------------------
    def _serve(self) -> None:
        self.httpd.serve_forever(poll_interval=0.05)   # shutdown() waits for one poll

    def _engine_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.engine.tick()
            except Exception as e:  # noqa: BLE001 - keep scheduling; a bug shows in the log
                print(f"cdsim server: engine error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            with self.engine.changed:
                if not self.stopping.is_set():
                    self.engine.changed.wait(0.5)

    def _local_instances(self) -> list[str]:
        from agent.instance import store as instance_store
        names = []
        for doc in self.store.values("instance"):
            if not doc.get("deregisterTime") and instance_store.load(doc["instanceName"], self.state):
                names.append(doc["instanceName"])
        return names

    def _supervise(self) -> None:
        from agent.service.agent_loop import Agent
        while not self.stopping.is_set():
            if self.run_agents:
                wanted = set(self._local_instances())
                for name in wanted - set(self.agents):
                    agent = Agent(self.endpoint, name, state=self.state, local=True,
                                  work_dir=os.path.join(self.folder, "work"))
                    agent.thread = threading.Thread(target=agent.run, daemon=True, name=f"cdsim-agent-{name}")
                    agent.thread.start()
                    self.agents[name] = agent
                for name in set(self.agents) - wanted:
                    agent = self.agents[name]
                    agent.stop_event.set()
                    if not agent.thread.is_alive():
                        del self.agents[name]
            self.stopping.wait(0.5)

    # -- HTTP ----------------------------------------------------------------------------------
    def handle(self, target: str | None, raw: bytes) -> tuple[int, dict]:
        """One API request: (status, JSON body). Never raises."""
        try:
            prefix, _, operation = (target or "").partition(".")
            if prefix not in (TARGET_PREFIX, AGENT_PREFIX) or not operation:
                raise ApiError("UnknownOperationException",
                               f"Unknown operation target {target!r}: expected {TARGET_PREFIX}.<Operation>")
            try:
                body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            except (UnicodeDecodeError, ValueError) as e:
                raise ApiError("SerializationException", f"The request body is not valid JSON: {e}") from None
            if not isinstance(body, dict):
                raise ApiError("SerializationException", "The request body must be a JSON object")
            api = self.api if prefix == TARGET_PREFIX else self.agent_api
            return 200, api.dispatch(operation, body)
        except ApiError as e:
            return e.status, e.body()
        except Exception as e:  # noqa: BLE001 - a bug answers as AWS does, without a traceback
            print(f"cdsim server: internal error in {target}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return 500, {"__type": "InternalFailure", "message": "The server encountered an internal error"}


def env_lines(info: dict) -> list[str]:
    """The shell lines that point the aws CLI at a running server."""
    return [f"export AWS_ENDPOINT_URL={info['endpoint']}",
            f"export AWS_ACCESS_KEY_ID={DUMMY_KEY}",
            f"export AWS_SECRET_ACCESS_KEY={DUMMY_KEY}",
            f"export AWS_DEFAULT_REGION={info['region']}"]


def _handler(service: Service):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cdsim"

        def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
            if not service.quiet:
                super().log_message(format, *args)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]],
                  length: str | None = None) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", length or str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _dispatch(self) -> None:
            try:
                raw = self._body()
            except (ValueError, OSError):
                self._send(400, b'{"__type":"SerializationException","message":"Unreadable request body"}',
                           [("Content-Type", "application/x-amz-json-1.1")])
                return
            target = self.headers.get("X-Amz-Target")
            if target is None and service.moto and not (self.command == "POST" and self.path == "/"):
                self._proxy_s3(raw)
                return
            status, doc = service.handle(target, raw)
            self._send(status, json.dumps(doc).encode(), [
                ("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", str(uuid.uuid4()))])

        def _proxy_s3(self, raw: bytes) -> None:
            from agent.service.s3 import request
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("connection", "transfer-encoding", "content-length", "expect")}
            object_put = self.command == "PUT" and "/" in self.path.lstrip("/").split("?")[0] \
                and "uploadId=" not in self.path
            try:
                if object_put:
                    service.moto.ensure_bucket(self.path)
                status, out_headers, body = request(service.moto.endpoint, self.command, self.path, raw, headers)
            except OSError as e:
                self._send(503, f"S3 emulator unavailable: {e}".encode(), [("Content-Type", "text/plain")])
                return
            if object_put and status == 200:
                service.moto.record(self.command, self.path, headers, raw)
            elif self.command == "POST" and "uploadId=" in self.path and status == 200:
                service.moto.record_completed(self.path.split("?")[0])
            # a HEAD answer keeps the object's length (there is no body to measure)
            length = next((v for k, v in out_headers if k.lower() == "content-length"), None) \
                if self.command == "HEAD" else None
            self._send(status, body, [(k, v) for k, v in out_headers
                                      if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                                           "server", "date")], length)

        do_POST = do_GET = do_PUT = do_DELETE = do_HEAD = _dispatch

    return Handler


def serve(state: str | None, port: int, *, s3: bool = True, quiet: bool = True,
          agent_timeout: float = 600.0) -> int:
    """Run until SIGINT/SIGTERM (the `cdsim server` command)."""
    import signal

    service = Service(state, port=port, s3=s3, quiet=quiet, agent_timeout=agent_timeout).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"cdsim server: CodeDeploy API on {service.endpoint}"
          + (f", S3 on {service.engine.s3_endpoint} (also through the same endpoint)" if service.moto else "")
          + f"; state in {service.folder}", flush=True)
    print("# point the aws CLI at it:", flush=True)
    for line in env_lines(service.info()):
        print(line, flush=True)
    while not done.wait(1.0):
        pass
    print("cdsim server: stopping", flush=True)
    service.close()
    return 0
