"""The service's state: JSON documents in one SQLite file, so a restart keeps every deployment.

A document has a ``kind`` (application, group, revision, config, deployment, target, instance,
command, tags) and a key unique within the kind; ``seq`` keeps insertion order for listings. Every
operation holds one lock, and ``transaction()`` groups several into one SQLite transaction.
The file's ``PRAGMA user_version`` is its schema version: an older file is migrated in place when
opened (``MIGRATIONS``), a newer one (a later cdsim's) is refused untouched.
Must not import the engine, the API or the server.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agent.errors import EnvironmentProblem
from agent.service.shapes import JsonObject

SCHEMA = """
CREATE TABLE IF NOT EXISTS doc (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# what brings a file of version N-1 (index N-1) to version N; 0 is every file written before versions
MIGRATIONS: tuple[str, ...] = (
    "",   # 1: tags, kept as documents of kind "tags" keyed by resource ARN: no table changes
)
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """Documents by (kind, key). Thread-safe; one connection shared under a re-entrant lock."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise EnvironmentProblem(f"{path} was written by a newer cdsim (schema version {version}; this one "
                                     f"knows up to {SCHEMA_VERSION})", reference="server-database",
                                     hint="run the cdsim that wrote it, or start with another --state")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        for number, step in enumerate(MIGRATIONS[version:], version + 1):
            self._db.executescript(step)   # each step may be run again should a crash come before the stamp
            self._db.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def _next_seq(self) -> int:
        row = self._db.execute("SELECT value FROM counter WHERE name='seq'").fetchone()
        value = (row[0] if row else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO counter(name, value) VALUES ('seq', ?)", (value,))
        return value

    def put(self, kind: str, key: str, body: JsonObject) -> None:
        """Insert or replace; a replaced document keeps its place in listings."""
        with self.transaction():
            row = self._db.execute("SELECT seq FROM doc WHERE kind=? AND key=?", (kind, key)).fetchone()
            seq = row[0] if row else self._next_seq()
            self._db.execute("INSERT OR REPLACE INTO doc(kind, key, seq, body) VALUES (?, ?, ?, ?)",
                             (kind, key, seq, json.dumps(body, sort_keys=True)))

    def get(self, kind: str, key: str) -> JsonObject | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM doc WHERE kind=? AND key=?", (kind, key)).fetchone()
        if row is None:
            return None
        doc: JsonObject = json.loads(row[0])
        return doc

    def existing(self, kind: str, key: str) -> JsonObject:
        """A document the caller knows is there (the deployment of a target or a command, say);
        LookupError when it is not, which is a bug of the caller."""
        doc = self.get(kind, key)
        if doc is None:
            raise LookupError(f"no {kind} document {key!r} in {self.path}")
        return doc

    def delete(self, kind: str, key: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM doc WHERE kind=? AND key=?", (kind, key))

    def items(self, kind: str, prefix: str = "") -> list[tuple[str, JsonObject]]:
        """(key, document) of a kind whose key starts with ``prefix``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, body FROM doc WHERE kind=? AND substr(key, 1, ?)=? ORDER BY seq",
                (kind, len(prefix), prefix)).fetchall()
        return [(k, json.loads(b)) for k, b in rows]

    def values(self, kind: str, prefix: str = "") -> list[JsonObject]:
        return [doc for _, doc in self.items(kind, prefix)]
