"""A progress bar for long copies (Install), for a person at a terminal.

Matches agent.install's ``progress(done, total)`` callback. Draws one line on stderr, only when that
is a terminal, only once the work has taken longer than ``delay`` seconds (short installs print
nothing), at most ten times a second, and clears the line when done. ``NO_COLOR`` (any value) turns
the colour off; ``TERM=dumb`` or a non-terminal turns the bar off. No I/O besides writing to the
stream it is given.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str = "Install", *, stream: TextIO | None = None, delay: float = 0.5,
                 env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.stream = stream or sys.stderr
        self.label = label
        self.delay = delay
        self.enabled = _isatty(self.stream) and env.get("TERM") != "dumb"
        self.color = self.enabled and "NO_COLOR" not in env
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if done >= total:
            self.close()
            return
        if now - self.started < self.delay or now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        self.shown = True
        width = max(10, min(40, shutil.get_terminal_size((80, 24)).columns - len(self.label) - 20))
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        if self.color:
            bar = f"\033[32m{'#' * filled}\033[0m{'-' * (width - filled)}"
        self.stream.write(f"\r{self.label} [{bar}] {100 * done // total:3d}% ({done}/{total})")
        self.stream.flush()

    def close(self) -> None:
        """Clear the bar's line (if it was drawn), so the next output starts on a clean line."""
        if self.shown:
            self.stream.write("\r\033[K" if self.color else "\r" + " " * 79 + "\r")
            self.stream.flush()
            self.shown = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:   # a closed stream
        return False
