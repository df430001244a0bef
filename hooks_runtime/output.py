"""Where a hook's messages go: scripts.log, the deployments log and the diagnostic tail (§7.5, §7.8).

Owns the agent's exact log formats, the 2 KiB tail algorithm, and the line pump that turns raw pipe
chunks into log lines. Output is handled a chunk at a time (split, prefixed and written by bytes
methods, one flush per chunk) so that a hook printing tens of megabytes is not slowed down; every
line of a chunk gets the time the chunk was read, which keeps timestamps right to the second.
Must not import ``agent``; spawns nothing.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO, Self

TAIL_BUDGET = 2048
_RUBY_WHITESPACE = " \t\n\v\f\r\0"          # what Ruby's String#strip removes
_RUBY_WHITESPACE_B = _RUBY_WHITESPACE.encode()
_TRAILING_WHITESPACE = {bytes([c]) for c in _RUBY_WHITESPACE_B if c != 0x0A}
_WHITESPACE_TO_1 = bytes.maketrans(b" \t\v\f\r\0", b"\1" * 6)


def _needs_strip(data: bytes, head: bytes) -> bool:
    """Whether a line of ``head + data`` ends in whitespace that Ruby's strip removes (an empty line
    needs nothing: the prefix stays alone). One translate and one search, both in C; a stray \\1
    byte only sends the chunk down the slow, exact path."""
    if data[:1] == b"\n" and head[-1:] in _TRAILING_WHITESPACE:
        return True
    return b"\1\n" in data.translate(_WHITESPACE_TO_1)


def trim_tail(entries: list[str]) -> None:
    """§7.8, in place: the agent's trimming loop, quirks included (the check looks at the entry
    before the one it subtracts, and an entry of 2048 characters or more empties the tail)."""
    i = len(entries)
    budget = TAIL_BUDGET
    while i > 0 and budget - len(entries[i - 1]) > 0:
        i -= 1
        budget -= len(entries[i - 1])   # at i == 0 this is entries[-1], as in Ruby
    if i > 0:
        del entries[:i]


class DiagnosticTail:
    """The last ~2 KiB of raw messages of one lifecycle event (§7.8).

    ``extend`` trims once per batch; that equals trimming after every append because the point where
    the loop stops can only move forward as entries are added (every check it makes only gets
    harder), which the tests confirm against the per-append loop on random inputs.
    """

    def __init__(self) -> None:
        self._entries: list[str] = []

    def append(self, entry: str) -> None:
        self._entries.append(entry or "")
        trim_tail(self._entries)

    def extend(self, entries: Sequence[str]) -> None:
        self._entries.extend(entries)
        trim_tail(self._entries)

    def extend_block(self, tag: str, data: bytes, end: int, head: bytes = b"") -> None:
        """Add one entry per line of ``head + data[:end]`` (lines keep their ``\\n``), decoding only
        the last lines that can survive the trim: once the entries before the newest add up to the
        budget, the loop is certain to stop inside them, so nothing older matters."""
        newest_first: list[str] = []
        total = 0
        while end > 0 or head:
            start = data.rfind(b"\n", 0, end - 1) + 1 if end > 0 else 0
            raw = data[start:end]
            if start == 0:
                raw, head = head + raw, b""
            entry = tag + raw.decode("utf-8", "surrogateescape")
            if newest_first:
                total += len(entry)
            newest_first.append(entry)
            if total >= TAIL_BUDGET:
                break
            end = start
        newest_first.reverse()
        self.extend(newest_first)

    def entries(self) -> list[str]:
        return list(self._entries)

    def text(self) -> str:
        return "".join(self._entries)


def _open_append(path: str) -> tuple[BinaryIO, bool]:
    """Open for appending, creating parent folders; returns (file, created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        created = True
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        created = False
    return os.fdopen(fd, "ab", buffering=1 << 16), created


class HookLog:
    """scripts.log, the deployments log and the diagnostic tail of one lifecycle event.

    Files are opened on the first message (the agent creates neither for an event without scripts)
    and appended to. ``deployments_log`` None means ``enable_deployments_log`` is off.
    ``on_line`` (optional) receives every message as it is logged, decoded, e.g. for live display.
    """

    def __init__(self, scripts_log: str, deployment_id: str, deployments_log: str | None,
                 on_line: Callable[[str], None] | None = None) -> None:
        self.scripts_log = scripts_log
        self.deployment_id = deployment_id
        self.deployments_log = deployments_log
        self._on_line = on_line
        self._lock = threading.Lock()
        self._tail = DiagnosticTail()
        self._scripts: BinaryIO | None = None
        self._deployments: BinaryIO | None = None
        self._did = f"[{deployment_id}]".encode()
        self._second = -1
        self._stamp = b""

    # -- files -------------------------------------------------------------------------------
    def _files(self) -> tuple[BinaryIO, BinaryIO | None]:
        if self._scripts is None:
            self._scripts, _ = _open_append(self.scripts_log)
            if self.deployments_log:
                self._deployments, created = _open_append(self.deployments_log)
                if created:
                    # Ruby Logger's header: Time#to_s, then the logger library's version.
                    header = time.strftime("%Y-%m-%d %H:%M:%S %z")
                    self._deployments.write(f"# Logfile created on {header} by logger.rb/v1.5.0\n".encode())
        return self._scripts, self._deployments

    def _stamps(self) -> tuple[bytes, bytes]:
        """(scripts.log time, deployments-log time), local time; the first is cached per second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)).encode()
        millis = int((now - second) * 1000)
        return self._stamp, b"[%s.%03d] " % (self._stamp, millis)

    # -- the §7.5 routine ------------------------------------------------------------------------
    def message(self, text: str) -> None:
        """Log one message (it carries its own ``\\n``), e.g. ``"LifecycleEvent - AfterInstall\\n"``."""
        with self._lock:
            self._tail.append(text)
            scripts, deployments = self._files()
            stamp, dstamp = self._stamps()
            scripts.write(stamp + b" " + text.encode("utf-8", "surrogateescape"))
            scripts.flush()
            if deployments is not None:
                stripped = text.strip(_RUBY_WHITESPACE).encode("utf-8", "surrogateescape")
                deployments.write(dstamp + self._did + stripped + b"\n")
                deployments.flush()
        if self._on_line:
            self._on_line(text)

    def output(self, tag: bytes, data: bytes, end: int, head: bytes = b"") -> None:
        """Log ``head + data[:end]`` from one stream, ``tag`` being ``b"[stdout]"`` or ``b"[stderr]"``:
        either whole lines (``data[end - 1]`` is ``\n``), or one final fragment without it (which
        scripts.log then glues to the next entry, Q17). One message per line, as the agent logs them.
        ``head`` is the start of the first line, left over from the previous read; bytes after ``end``
        are not logged (the caller keeps them for the next call). Passing the read buffer whole
        spares copying a chunk of megabytes: the bytes are only ever scanned by C code."""
        whole = end > 0 and data[end - 1] == 0x0A
        if not whole and not head:
            return
        with self._lock:
            self._tail.extend_block(tag.decode(), data, end, head)
            scripts, deployments = self._files()
            stamp, dstamp = self._stamps()
            self._write_prefixed(scripts, stamp + b" " + tag, data, end, head, whole)
            if deployments is not None:
                dprefix = dstamp + self._did + tag
                if whole and not _needs_strip(data, head):
                    self._write_prefixed(deployments, dprefix, data, end, head, whole)
                else:   # rare: some line ends in whitespace that Ruby's strip removes
                    body = head + data[:end - 1] if whole else head
                    deployments.write(b"".join(dprefix + line.rstrip(_RUBY_WHITESPACE_B) + b"\n"
                                               for line in body.split(b"\n")))
                    deployments.flush()
        if self._on_line:
            text = (head + data[:end]).decode("utf-8", "replace")
            for line in text.splitlines(keepends=True):
                self._on_line(tag.decode() + line)

    @staticmethod
    def _write_prefixed(file: BinaryIO, prefix: bytes, data: bytes, end: int, head: bytes,
                        whole: bool) -> None:
        file.write(prefix)
        file.write(head)
        if whole:
            # One bytes.replace pass; the prefix it puts after the last newline, and the bytes
            # after ``end``, are cut off by writing a view (no copy).
            marked = data.replace(b"\n", b"\n" + prefix)
            cut = len(marked) - len(prefix) - (len(data) - end)
            file.write(memoryview(marked)[:cut])
        file.flush()

    def tail(self) -> str:
        """The diagnostic tail (§7.8), joined with no separator."""
        with self._lock:
            return self._tail.text()

    def close(self) -> None:
        with self._lock:
            for f in (self._scripts, self._deployments):
                if f is not None:
                    f.close()
            self._scripts = self._deployments = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LinePump:
    """Reads one pipe in large chunks and hands complete lines to the log (split on ``\\n`` only,
    bytes unchanged); a last fragment without ``\\n`` is delivered at end of file, as is."""

    CHUNK = 1 << 20

    def __init__(self, fd: int, tag: bytes, log: HookLog) -> None:
        self.fd = fd
        self.tag = tag
        self._log = log
        self._partial = b""
        self.open = True

    def read(self) -> None:
        """Read what is available (the caller polled the fd); closes the pump at end of file."""
        data = os.read(self.fd, self.CHUNK)
        if not data:
            self.open = False
            if self._partial:
                self._log.output(self.tag, b"", 0, self._partial)
                self._partial = b""
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            self._partial += data
            return
        self._log.output(self.tag, data, cut, self._partial)
        self._partial = data[cut:]
