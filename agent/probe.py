"""The rehearsal probe: HTTP requests to one URL at a steady rate, each one's outcome, and their summary
by time window.

:class:`Probe` sends GET requests (a new connection each, as a load balancer's client would) at ``rate``
per second from a small pool of threads, so a slow answer does not hold the next request back; it is
bounded in count (``max_requests``) and time (``max_seconds``) and stops by itself. Each request becomes a
:class:`Sample`: when it was sent and answered (epoch seconds), its HTTP status or its error, and which
version answered (a response header, or the first group of a regex on the body). A request *failed* on a
connection error, a timeout or a 5xx status.

:func:`summarize` groups samples by windows ``(subject, phase, start, end)`` that the caller gives (a
request counts in every window its send time falls in; one in none counts under ``OUTSIDE``): requests
sent, failed, latency percentiles (p50/p95/p99, nearest rank) and the versions that answered. It knows
nothing of deployments: the caller names the windows (``cdsim wait --traffic``: each instance's
lifecycle events).

By default the URL's host must be an address of this machine (loopback, or one a socket can bind here);
any other needs ``allow_remote``. Imports nothing of cdsim but agent.errors; must not import the
service, instances, the deploy engine or the CLI.
"""
from __future__ import annotations

import http.client
import ipaddress
import math
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypedDict

from agent.errors import UsageError

DEFAULT_RATE = 20.0
MAX_RATE = 1000.0
DEFAULT_TIMEOUT = 2.0
WORKERS = 8
OUTSIDE = ("-", "outside events")
BODY_LIMIT = 65536   # bytes of a body read for the version regex


@dataclass(frozen=True)
class Sample:
    """One request: sent and answered (epoch seconds), HTTP status or error, version that answered."""

    sent: float
    answered: float
    status: int | None = None
    error: str | None = None
    version: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.status is not None and self.status >= 500)

    @property
    def latency(self) -> float:
        return self.answered - self.sent


class WindowSummary(TypedDict):
    """The requests sent in one window (or all of them: subject and phase ``*``)."""

    subject: str
    phase: str
    sent: int
    failed: int
    errors: dict[str, int]          # why requests failed: "HTTP 503", "timeout", "connection refused", ...
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    versions: dict[str, int]


@dataclass(frozen=True)
class Target:
    """A checked probe target."""

    url: str
    host: str
    port: int
    path: str
    https: bool


def parse_option(text: str) -> tuple[str, float]:
    """``URL[,RATE]`` -> (URL, rate per second); UsageError when malformed."""
    url, sep, rate_text = text.rpartition(",")
    if not sep or "/" in rate_text:
        url, rate_text = text, ""
    try:
        rate = float(rate_text) if rate_text else DEFAULT_RATE
    except ValueError:
        raise UsageError(f"--traffic {text!r}: the rate {rate_text!r} is not a number",
                         reference="traffic-option-invalid", hint="--traffic URL[,RATE], e.g. "
                         "http://127.0.0.1:8080/,20") from None
    if not 0 < rate <= MAX_RATE or math.isnan(rate):
        raise UsageError(f"--traffic {text!r}: the rate must be above 0 and at most {MAX_RATE:g} requests/s",
                         reference="traffic-option-invalid")
    return url, rate


def local_address(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves only to addresses of this machine."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _type, _proto, _name, address in infos:
        ip = ipaddress.ip_address(address[0])
        if ip.is_loopback:
            continue
        try:   # an address a socket can bind to is one of this machine's
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((address[0], 0))
        except OSError:
            return False
    return bool(infos)


def check_target(url: str, *, allow_remote: bool = False) -> Target:
    """The URL as a probe target: http(s), a host and a port; a host not of this machine only with
    ``allow_remote``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--traffic {url!r}: expected an http:// or https:// URL with a host",
                         reference="traffic-url-invalid")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"--traffic {url!r}: the port is not a number from 0 to 65535",
                         reference="traffic-url-invalid") from None
    if not allow_remote and not local_address(parts.hostname):
        raise UsageError(f"--traffic {url!r}: {parts.hostname} is not an address of this machine",
                         reference="traffic-remote-refused",
                         hint="the rehearsal sends to loopback and this machine's own addresses only; "
                              "--traffic-allow-remote sends elsewhere")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url, parts.hostname, port, path, parts.scheme == "https")


@dataclass
class Probe:
    """Requests to ``target`` at ``rate`` per second between :meth:`start` and :meth:`stop`."""

    target: Target
    rate: float = DEFAULT_RATE
    timeout: float = DEFAULT_TIMEOUT
    max_requests: int = 100_000
    max_seconds: float = 3600.0
    version_header: str | None = None
    version_pattern: re.Pattern[str] | None = None
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(WORKERS)
        self._threads: list[threading.Thread] = []
        self._scheduler: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> Probe:
        self._scheduler = threading.Thread(target=self._schedule, daemon=True, name="cdsim-probe")
        self._scheduler.start()
        return self

    def finish(self, timeout: float) -> list[Sample]:
        """Wait (at most ``timeout`` seconds) until the count or time bound ends the sending, then :meth:`stop`."""
        if self._scheduler is not None:
            self._scheduler.join(timeout)
        return self.stop()

    def stop(self) -> list[Sample]:
        """Stop sending; wait for the requests in flight (each ends by its timeout); the samples in send order."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join()
        for t in list(self._threads):
            t.join()
        with self._lock:
            return sorted(self.samples, key=lambda s: s.sent)

    def _schedule(self) -> None:
        began = time.monotonic()
        interval = 1.0 / self.rate
        n = 0
        while n < self.max_requests and time.monotonic() - began < self.max_seconds:
            due = began + n * interval
            if self._stop.wait(max(due - time.monotonic(), 0.0)):
                return
            while not self._slots.acquire(timeout=0.1):   # all in flight: send as soon as one ends
                if self._stop.is_set():
                    return
            worker = threading.Thread(target=self._one, daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [worker]
            worker.start()
            n += 1

    def _one(self) -> None:
        try:
            sample = self.request()
            with self._lock:
                self.samples.append(sample)
        finally:
            self._slots.release()

    def request(self) -> Sample:
        """One GET of the target."""
        t = self.target
        cls = http.client.HTTPSConnection if t.https else http.client.HTTPConnection
        sent = time.time()
        connection = cls(t.host, t.port, timeout=self.timeout)
        try:
            connection.request("GET", t.path, headers={"User-Agent": "cdsim-rehearsal", "Connection": "close"})
            reply = connection.getresponse()
            body = reply.read(BODY_LIMIT)
            version = None
            if self.version_header:
                version = reply.getheader(self.version_header)
            elif self.version_pattern is not None:
                found = self.version_pattern.search(body.decode("utf-8", "replace"))
                version = (found.group(1) if found.groups() else found.group(0)) if found else None
            return Sample(sent, time.time(), status=reply.status, version=version)
        except TimeoutError:
            return Sample(sent, time.time(), error="timeout")
        except ConnectionRefusedError:
            return Sample(sent, time.time(), error="connection refused")
        except (OSError, http.client.HTTPException) as e:
            return Sample(sent, time.time(), error=type(e).__name__)
        finally:
            connection.close()


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank ``p``th percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def _summary(subject: str, phase: str, samples: list[Sample]) -> WindowSummary:
    latencies = [s.latency * 1000 for s in samples if not s.failed]
    errors: dict[str, int] = {}
    versions: dict[str, int] = {}
    for s in samples:
        if s.failed:
            why = s.error or f"HTTP {s.status}"
            errors[why] = errors.get(why, 0) + 1
        elif s.version is not None:
            versions[s.version] = versions.get(s.version, 0) + 1

    def ms(p: float) -> float | None:
        value = percentile(latencies, p)
        return None if value is None else round(value, 2)

    return {"subject": subject, "phase": phase, "sent": len(samples), "failed": sum(s.failed for s in samples),
            "errors": errors, "p50_ms": ms(50), "p95_ms": ms(95), "p99_ms": ms(99), "versions": versions}


def summarize(samples: Iterable[Sample], windows: Iterable[tuple[str, str, float, float]]) -> list[WindowSummary]:
    """Per window ``(subject, phase, start, end)`` (in the order given; windows without requests left
    out), then the requests in no window (``OUTSIDE``), then all of them (``*``, ``*``)."""
    samples = list(samples)
    windows = list(windows)
    rows: list[WindowSummary] = []
    placed: set[int] = set()
    for subject, phase, start, end in windows:
        inside = [i for i, s in enumerate(samples) if start <= s.sent < end]
        placed.update(inside)
        if inside:
            rows.append(_summary(subject, phase, [samples[i] for i in inside]))
    outside = [s for i, s in enumerate(samples) if i not in placed]
    if outside:
        rows.append(_summary(*OUTSIDE, outside))
    rows.append(_summary("*", "*", samples))
    return rows


def render(rows: list[WindowSummary]) -> list[str]:
    """The summary as text lines, one per window."""
    lines = []
    for r in rows:
        where = "all requests" if r["subject"] == "*" else f"{r['subject']} {r['phase']}"
        lat = "" if r["p50_ms"] is None else f", p50 {r['p50_ms']:g} ms, p95 {r['p95_ms']:g} ms, p99 {r['p99_ms']:g} ms"
        errors = "" if not r["errors"] else " (" + ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) + ")"
        versions = "" if not r["versions"] else ", versions " + ", ".join(
            f"{k}: {v}" for k, v in sorted(r["versions"].items()))
        lines.append(f"{where}: {r['sent']} sent, {r['failed']} failed{errors}{lat}{versions}")
    return lines
