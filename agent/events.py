"""The deployment's event stream: one JSON object per line, flushed per line.

An event is a plain dict built by small functions here; reports and live output are renderings of
this one stream. Schema (version 1): every record has ``schema``, ``type``, ``time`` (epoch seconds),
``deployment_id``; types: ``deployment.start``, ``event.start``, ``event.end``, ``hook.start``,
``hook.end``, ``deployment.end``, ``notice``. ``hook.start``/``hook.end`` say whose script ran:
``previous_revision`` (true when it is the last successful deployment's, spec §4.2),
``revision_deployment_id``, ``revision_archive``, ``revision_appspec``; a failure that
--ignore-application-stop-failures let pass has ``ignored: true`` on its ``hook.end`` and ``event.end``
(status stays ``Failed``). ``traffic`` records are not the engine's: `cdsim wait --traffic --report`
writes them (``instance``, ``event``, ``sent``, ``failed``, ``errors``, ``p50_ms``, ``p95_ms``, ``p99_ms``,
``versions``) beside the service's lifecycle events, which it turns into this schema's records.
"""
from __future__ import annotations

import json
import os
import time
from _thread import allocate_lock  # threading.Lock, without importing threading (start-up)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TextIO

    Record = dict[str, Any]  # one event: JSON data, the fields above plus each type's own
    Listener = Callable[[Record], None]

SCHEMA_VERSION = 1


class EventStream:
    """Fans each record out to the JSON-lines file (when given) and to listeners."""

    def __init__(self, deployment_id: str, path: str | None = None,
                 listeners: list[Listener] | None = None):
        self.deployment_id = deployment_id
        self.path = path
        self.listeners = list(listeners or [])
        self.records: list[Record] = []
        self._lock = allocate_lock()
        self._file: TextIO | None = None
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the stream's life; close()

    def emit(self, type_: str, **fields: object) -> Record:
        record = {"schema": SCHEMA_VERSION, "type": type_, "time": round(time.time(), 6),
                  "deployment_id": self.deployment_id, **fields}
        with self._lock:
            self.records.append(record)
            if self._file:
                self._file.write(json.dumps(record, default=str) + "\n")
                self._file.flush()
        for listener in self.listeners:
            listener(record)
        return record

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str) -> list[Record]:
    out: list[Record] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line after a crash
    return out
