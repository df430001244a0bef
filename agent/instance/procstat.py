"""A live process's state and start time, read from ``/proc/<pid>/stat``.

The instance code names a process it started by (pid, start time in clock ticks), so a recycled pid is
never taken for it. It reads /proc itself rather than through psutil: the instance code must run on a
bare system Python too. (agent/instance/enter.py keeps its own reader: the launcher imports nothing of
cdsim.)

Imports nothing of cdsim.
"""
from __future__ import annotations


def stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def start_ticks(pid: int) -> int | None:
    """The start time of a live process (a zombie or dead one counts as gone), or None."""
    st = stat(pid)
    return None if st is None or st[0] in "ZX" else st[1]
