"""The cdsim server: the CodeDeploy API over HTTP on loopback, S3 beside it, and the background work.

``Service`` owns the state folder's ``service/`` directory (0700: the SQLite file, ``server.json``
telling other commands where it listens, the credentials file, moto's records), an HTTP server
(werkzeug's threaded WSGI server with a large listen backlog, an idle timeout on every read, deadlines
for the headers and the body, and body size limits) whose WSGI application ``App`` refuses every
request not signed with the server's credentials (``agent.service.auth``), then answers AWS JSON 1.1
requests with ``X-Amz-Target`` and hands any other request to moto's S3 running in this process, so
one ``AWS_ENDPOINT_URL`` serves the aws CLI's ``deploy`` and ``s3`` calls; the engine thread and the
supervisor that runs an agent for every registered on-premises instance that is one of this state
folder's sandboxed instances. Those with a private network are EC2 instances of the state's local AWS,
and deployments show them by their EC2 instance ids (the engine's ``instance_ids``). For blue/green
deployments it launches instances into a copy of an Auto Scaling group (COPY_AUTO_SCALING_GROUP, as
`cdsim fleet scale` launches them) and destroys the original ones (TERMINATE) for the engine.
"""
from __future__ import annotations

import functools
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from agent.errors import EnvironmentProblem
from agent.fsutil import atomic_write
from agent.service import auth
from agent.service.api import AGENT_PREFIX, TARGET_PREFIX, AgentApi, Api, ApiError
from agent.service.client import SERVER_FILE, ServerInfo, remember
from agent.service.engine import Engine
from agent.service.revisions import github_roots, valid_instance_name
from agent.service.shapes import JsonObject
from agent.service.store import Store
from agent.state import resolve as resolve_state
from agent.state import service_dir

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from agent.service.agent_loop import Agent
    from agent.service.s3 import MotoS3

DB_FILE = "codedeploy.sqlite3"
LISTEN_BACKLOG = 1024            # pending connections the kernel queues (capped by net.core.somaxconn)
IDLE_TIMEOUT = 10.0              # seconds any one read of a request (line, headers, body) may wait
HEADER_DEADLINE = 15.0           # seconds from the connection to the end of the request's headers
BODY_DEADLINE = 30.0             # seconds a body may take, plus one second per MiB
API_BODY_LIMIT = 1 << 20         # bytes: CodeDeploy API requests are small JSON documents
S3_BODY_LIMIT = 256 << 20        # bytes: one S3 PUT or part (the aws CLI sends 8 MiB parts above 8 MiB)


@dataclass(frozen=True)
class _RunningAgent:
    """An agent the server runs for one of its sandboxed instances, and the thread it polls on."""

    agent: Agent
    thread: threading.Thread


class Service:
    def __init__(self, state: str | None = None, *, port: int = 0, s3: bool = True, agents: bool = True,
                 region: str = "us-east-1", quiet: bool = True, agent_timeout: float = 600.0,
                 github_root: list[str] | tuple[str, ...] = ()):
        self.state = resolve_state(state)
        self.folder = service_dir(self.state)
        auth.private_folder(self.folder)
        self.credentials = auth.load_or_create(self.folder)
        self.github_roots = github_roots(github_root)
        self.port = port
        self.region = region
        self.quiet = quiet
        self.store = Store(os.path.join(self.folder, DB_FILE))
        self.moto: MotoS3 | None = None
        if s3:
            from agent.service.s3 import MotoS3
            self.moto = MotoS3(os.path.join(self.folder, "s3"))
        self.engine = Engine(self.store, region=region, pickup_timeout=agent_timeout)
        from agent.instance import localaws
        self.engine.aws_query = functools.partial(localaws.query, self.state)
        self.engine.instance_ids = self._ec2_id   # traffic control's load balancers
        self.engine.terminate = self._terminate   # blue/green TERMINATE of the original instances
        self.engine.copy_auto_scaling_group = self._copy_auto_scaling_group   # blue/green COPY_AUTO_SCALING_GROUP
        self.api = Api(self.store, self.engine, self.github_roots)
        self.agent_api = AgentApi(self.engine)
        self.run_agents = agents
        self.agents: dict[str, _RunningAgent] = {}
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.httpd: ThreadedWSGIServer | None = None
        self.deadlines = HeaderDeadlines()
        self.endpoint = ""

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> Service:
        try:
            return self._start()
        except BaseException:
            if self.moto:
                self.moto.stop()
            self.store.close()
            raise

    def _start(self) -> Service:
        from agent.service.client import server_info
        running = server_info(self.state)
        if running:
            raise EnvironmentProblem(f"a cdsim server (pid {running['pid']}) already serves {self.folder} "
                                     f"on {running['endpoint']}", reference="server-running",
                                     hint="use it (`cdsim server env`), or stop it first")
        if self.moto:
            self.moto.start()
        try:
            self.httpd = _Server("127.0.0.1", self.port, App(self), handler=_handler(self.quiet, self.deadlines))
        except OSError as e:
            raise EnvironmentProblem(f"cannot listen on 127.0.0.1:{self.port}: {e.strerror or e}",
                                     reference="server-port", hint="choose another --port, or 0 for any") from None
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        if self.moto:
            self.engine.s3_endpoint = self.endpoint
        remember(self.endpoint, self.credentials)
        if self.run_agents:
            self.engine.fail_orphaned_commands(set(self._local_instances()))
        for target in (self._serve, self._engine_loop, self._supervise, self._cut_slow_headers):
            t = threading.Thread(target=target, daemon=True, name=f"cdsim{target.__name__}")
            t.start()
            self.threads.append(t)
        atomic_write(os.path.join(self.folder, SERVER_FILE), json.dumps(self.info()).encode(), private=True)
        return self

    def info(self) -> ServerInfo:
        return {"pid": os.getpid(), "endpoint": self.endpoint, "s3Endpoint": self.engine.s3_endpoint,
                "region": self.region, "state": self.state}

    def close(self) -> None:
        self.stopping.set()
        self.engine.notify()
        for t in self.threads[1:]:   # the engine and the supervisor: no agent starts after this
            t.join(timeout=60)
        # agents finish the command they run and report it while the HTTP server still answers
        for running in self.agents.values():
            running.agent.stop_event.set()
        for running in self.agents.values():
            running.thread.join(timeout=600)
        if self.httpd:
            self.httpd.shutdown()
            self.threads[0].join(timeout=60)
            self.httpd.server_close()
        if self.moto:
            self.moto.stop()
        remember(self.endpoint, None)
        try:
            with open(os.path.join(self.folder, SERVER_FILE), encoding="utf-8") as f:
                if json.load(f).get("pid") == os.getpid():
                    os.unlink(os.path.join(self.folder, SERVER_FILE))
        except (OSError, ValueError):
            pass
        self.store.close()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- background work ------------------------------------------------------------------------
    def _cut_slow_headers(self) -> None:
        while not self.stopping.wait(0.5):
            self.deadlines.expire()

    def _serve(self) -> None:
        assert self.httpd is not None, "_start makes the server before this thread"
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
            # a name registered before names were checked is no sandboxed instance (load would refuse it)
            if not doc.get("deregisterTime") and valid_instance_name(doc["instanceName"]) \
                    and instance_store.load(doc["instanceName"], self.state):
                names.append(doc["instanceName"])
        return names

    def _ec2_id(self, name: str) -> str | None:
        """A sandboxed instance's EC2 id in the state's local AWS (traffic control), or None."""
        from agent.instance import imds
        from agent.instance import store as instance_store
        found = instance_store.load(name, self.state) if valid_instance_name(name) else None
        return imds.load(found)["instance_id"] if found is not None and found.network == "private" else None

    def _terminate(self, names: list[str]) -> list[str]:
        """A blue/green deployment's original instances terminated, as `cdsim fleet down` removes them:
        deregistered, and destroyed when they are sandboxed instances of this state (their agents stop
        with them); notes for the deployment's status messages of those that could not be."""
        from agent import instance as instances
        from agent.errors import CdsimError
        from agent.instance import store as instance_store
        notes = []
        for name in names:
            with self.store.transaction():
                doc = self.store.get("instance", name)
                if doc is not None and not doc.get("deregisterTime"):
                    self.store.put("instance", name, dict(doc, deregisterTime=time.time()))
            found = instance_store.load(name, self.state) if valid_instance_name(name) else None
            if found is None:
                notes.append(f"{name} is no sandboxed instance of this state: deregistered only")
                continue
            try:
                instances.destroy(found)
            except (OSError, CdsimError) as e:   # e.g. an instance this server's user may not remove
                notes.append(f"{name} was not destroyed ({e}): deregistered and marked terminated")
        return notes

    def _copy_auto_scaling_group(self, source: str, copy: str) -> list[str]:
        """COPY_AUTO_SCALING_GROUP: the Auto Scaling group ``copy`` of the local AWS, with as many new
        instances as ``source`` holds of this state, launched as `cdsim fleet scale` launches them (named on
        from the first member's numbering, with its tags, registered, started); their names."""
        from agent.instance import autoscaling

        found = autoscaling.members(self.state, source, region=self.region)
        if not found or not found[0]:
            return []
        members, local = found
        template = local[members[0]]
        tags = (self.store.get("instance", template.name) or {}).get("tags") or []

        def taken(name: str) -> bool:
            doc = self.store.get("instance", name)
            return name in local or (doc is not None and not doc.get("deregisterTime"))

        def register(name: str) -> None:
            self.store.put("instance", name, {
                "instanceName": name, "instanceArn": self.engine.instance_arn(name), "registerTime": time.time(),
                "tags": tags, "iamSessionArn": f"arn:aws:sts::000000000000:assumed-role/cdsim/{name}"})

        names = autoscaling.next_names(template.name, len(members), taken)
        autoscaling.launch(template, names, state=self.state, group=copy, register=register)
        return names

    def _supervise(self) -> None:
        from agent.service.agent_loop import Agent
        while not self.stopping.is_set():
            if self.run_agents:
                wanted = set(self._local_instances())
                for name in wanted - set(self.agents):
                    agent = Agent(self.endpoint, name, state=self.state, local=True,
                                  work_dir=os.path.join(self.folder, "work"), credentials=self.credentials,
                                  github_roots=self.github_roots)
                    thread = threading.Thread(target=agent.run, daemon=True, name=f"cdsim-agent-{name}")
                    thread.start()
                    self.agents[name] = _RunningAgent(agent, thread)
                for name in set(self.agents) - wanted:
                    running = self.agents[name]
                    running.agent.stop_event.set()
                    if not running.thread.is_alive():
                        del self.agents[name]
            self.stopping.wait(0.5)

    # -- HTTP ----------------------------------------------------------------------------------
    def handle(self, target: str | None, raw: bytes) -> tuple[int, JsonObject]:
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


def env_lines(info: ServerInfo, creds: auth.Credentials) -> list[str]:
    """The shell lines that point the aws CLI at a running server, with its credentials."""
    lines = [f"export AWS_ENDPOINT_URL={info['endpoint']}",
             f"export AWS_ACCESS_KEY_ID={creds.access_key}",
             f"export AWS_SECRET_ACCESS_KEY={creds.secret_key}",
             f"export AWS_DEFAULT_REGION={info['region']}"]
    if info.get("state"):  # so `cdsim fleet`, `wait` and `server env` find a server started with --state
        lines.append(f"export CDSIM_STATE_DIR={shlex.quote(info['state'])}")
    return lines


class _Server(ThreadedWSGIServer):
    request_queue_size = LISTEN_BACKLOG


class HeaderDeadlines:
    """Connections still sending their request line and headers, and when they must be done: a client
    that trickles them a byte at a time (each read within IDLE_TIMEOUT) is cut at HEADER_DEADLINE."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[socket.socket, float] = {}

    def add(self, conn: socket.socket) -> None:
        with self.lock:
            self.pending[conn] = time.monotonic() + HEADER_DEADLINE

    def done(self, conn: socket.socket) -> None:
        with self.lock:
            self.pending.pop(conn, None)

    def expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            late = [c for c, deadline in self.pending.items() if deadline <= now]
            for conn in late:
                del self.pending[conn]
        for conn in late:
            try:
                conn.shutdown(socket.SHUT_RDWR)   # the blocked read returns; the handler ends
            except OSError:
                pass


def _handler(quiet: bool, deadlines: HeaderDeadlines) -> type[WSGIRequestHandler]:
    class Handler(WSGIRequestHandler):
        timeout = IDLE_TIMEOUT           # the socket's timeout: every read of the request
        server_version = "cdsim"

        def setup(self) -> None:
            super().setup()
            deadlines.add(self.connection)

        def run_wsgi(self) -> None:      # the request line and headers are in
            deadlines.done(self.connection)
            super().run_wsgi()

        def finish(self) -> None:
            deadlines.done(self.connection)
            super().finish()

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if not quiet:
                super().log_request(code, size)

        def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 - the base class's names
            # quiet: a client's bad or timed-out request is no news (a failure of ours is the
            # server's log, "Error on request", and still shows)
            if not quiet:
                super().log(type, message, *args)

    return Handler


class RequestRefused(Exception):
    """A request answered with an error before it reaches the API or S3."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """The request body, or RequestRefused: larger than ``limit`` (refused unread when its length is
    announced), or not complete within BODY_DEADLINE plus a second per MiB (each read also times out
    after IDLE_TIMEOUT)."""
    length = environ.get("CONTENT_LENGTH") or ""
    chunked = environ.get("wsgi.input_terminated", False)
    if length:
        try:
            remaining = int(length)
            if remaining < 0:
                raise ValueError
        except ValueError:
            raise RequestRefused("BadRequest", f"Content-Length {length!r} is not a length", 400) from None
        if remaining > limit:
            raise RequestRefused("EntityTooLarge", f"The request body ({remaining} bytes) is larger than this "
                                                   f"server's limit of {limit} bytes", 413)
    elif chunked:
        remaining = limit + 1
    else:
        return b""
    stream = environ["wsgi.input"]
    sock = environ.get("werkzeug.socket")
    deadline = time.monotonic() + BODY_DEADLINE + min(remaining, limit) / (1 << 20)
    parts, total = [], 0
    read = getattr(stream, "read1", None) or stream.read
    try:
        while remaining > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(min(IDLE_TIMEOUT, left))
            chunk = read(min(remaining, 1 << 16))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            remaining -= len(chunk)
            if total > limit:
                raise RequestRefused("EntityTooLarge",
                                     f"The request body is larger than this server's limit of {limit} bytes", 413)
    except TimeoutError:
        raise RequestRefused("RequestTimeout", "The request body did not arrive in time; the connection is "
                                               "closed", 408) from None
    except (OSError, ValueError) as e:
        raise RequestRefused("BadRequest", f"The request body could not be read: {e}", 400) from None
    if length and total < int(length):
        raise RequestRefused("IncompleteBody", "The request body is shorter than its Content-Length", 400)
    return b"".join(parts)


def request_headers(environ: WSGIEnvironment) -> dict[str, str]:
    """The request's headers, lower-case names (as WSGI passes them: repeated ones joined by commas)."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out[key[5:].lower().replace("_", "-")] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            out[key.lower().replace("_", "-")] = value
    return out


class App:
    """The WSGI application: authenticate, then the CodeDeploy API or moto's S3."""

    def __init__(self, service: Service):
        self.service = service

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        service = self.service
        headers = request_headers(environ)
        method = environ["REQUEST_METHOD"]
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or "/"
        target = headers.get("x-amz-target")
        moto = service.moto if target is None and not (method == "POST" and raw_uri == "/") else None
        s3 = moto is not None
        try:
            body = read_body(environ, S3_BODY_LIMIT if s3 else API_BODY_LIMIT)
            auth.verify(service.credentials, method=method, url=f"http://{headers.get('host', '')}{raw_uri}",
                        headers=headers, body=body, service="s3" if s3 else "codedeploy")
        except (RequestRefused, auth.AuthError) as e:
            code = e.code
            return (self._s3_error if s3 else self._api_error)(start_response, e.status, code, e.message)
        if moto is not None:
            return self._s3(moto, environ, start_response, method, raw_uri, headers, body)
        status, doc = service.handle(target, body)
        return self._json(start_response, status, doc)

    # -- answers -----------------------------------------------------------------------------------
    @staticmethod
    def _json(start_response: StartResponse, status: int, doc: JsonObject) -> list[bytes]:
        data = json.dumps(doc).encode()
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", str(uuid.uuid4())),
            ("Content-Length", str(len(data)))])
        return [data]

    def _api_error(self, start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
        return self._json(start_response, status, {"__type": code, "message": message})

    @staticmethod
    def _s3_error(start_response: StartResponse, status: int, code: str, message: str) -> list[bytes]:
        rid = uuid.uuid4().hex[:16].upper()
        data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
                f"<Message>{escape(message)}</Message><RequestId>{rid}</RequestId></Error>").encode()
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "application/xml"), ("x-amz-request-id", rid), ("Content-Length", str(len(data)))])
        return [data]

    def _s3(self, moto: MotoS3, environ: WSGIEnvironment, start_response: StartResponse, method: str,
            raw_uri: str, headers: dict[str, str], body: bytes) -> list[bytes]:
        import io

        from werkzeug.test import run_wsgi_app

        path = raw_uri.split("?", 1)[0]
        if path.startswith("/moto-api") or path == "/favicon.ico":
            return self._s3_error(start_response, 403, "AccessDenied", "Access Denied")
        object_put = method == "PUT" and "/" in path.lstrip("/") and "uploadId=" not in raw_uri
        environ = dict(environ, **{"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
                                   "wsgi.input_terminated": False})
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        try:
            if object_put:
                moto.ensure_bucket(raw_uri)
            app_iter, status, out_headers = run_wsgi_app(moto.wsgi, environ)
            try:
                data = b"".join(app_iter)
            finally:
                getattr(app_iter, "close", lambda: None)()
            code = int(status.split()[0])
            if object_put and code == 200:
                moto.record(method, raw_uri, {k: v for k, v in headers.items()
                                              if k not in ("authorization", "host", "content-length", "expect",
                                                           "transfer-encoding", "connection")}, body)
            elif method == "POST" and "uploadId=" in raw_uri and code == 200:
                moto.record_completed(path)
        except Exception as e:  # noqa: BLE001 - a bug in the emulator answers as S3 does, without a traceback
            print(f"cdsim server: S3 error on {method} {path}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return self._s3_error(start_response, 500, "InternalError", "We encountered an internal error.")
        keep = [(k, v) for k, v in out_headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date")]
        # a HEAD answer keeps the object's length (there is no body to measure)
        length = out_headers.get("Content-Length") if method == "HEAD" else str(len(data))
        start_response(status, [*keep, ("Content-Length", length or "0")])
        return [] if method == "HEAD" else [data]


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
            413: "Content Too Large", 500: "Internal Server Error"}


def serve(state: str | None, port: int, *, s3: bool = True, quiet: bool = True,
          agent_timeout: float = 600.0, github_root: list[str] | tuple[str, ...] = ()) -> int:
    """Run until SIGINT/SIGTERM (the `cdsim server` command)."""
    import signal

    service = Service(state, port=port, s3=s3, quiet=quiet, agent_timeout=agent_timeout,
                      github_root=github_root).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"cdsim server: CodeDeploy API{' and S3' if service.moto else ''} on {service.endpoint}"
          f"; state and credentials in {service.folder}", flush=True)
    print("# point the aws CLI at it:", flush=True)
    for line in env_lines(service.info(), service.credentials):
        print(line, flush=True)
    while not done.wait(1.0):
        pass
    print("cdsim server: stopping", flush=True)
    service.close()
    return 0
