"""Share a run of independent file operations between this process and forked copies of it.

Copying many small files (a bundle into its archive folder, an Install's copies) is bound by the CPU
time of its system calls, and two processes copying different files take half the time of one: two
10,000-file ``cp -a`` side by side took 0.14 s on tmpfs here, one after the other 0.27 s. Threads do
not get that, because every system call hands the GIL over to the other thread. So ``run_parts``
splits the items into contiguous parts; this process runs the first, a forked copy of it each other
(and any part a fork failed for: a limit on processes slows the work down, it does not fail it).

Each part goes in order and stops at its first failure. The caller gets, per part, how far it got,
what ``collect()`` returned in that process at its end (a worker's counters are its own) and the
failure, and decides what a failure means: agent.install undoes what came after the first failure, so
the outcome is the one a single process going in order would have left.

A worker shares the caller's data as it was at the fork, reports through a pipe and leaves with
``os._exit`` (no atexit handlers, no flushing of buffers it inherited). It takes the default actions of
SIGINT and SIGTERM back, so a Ctrl-C or a stop of the process group ends it with the caller; if the
caller fails while workers run, it kills them before it returns.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable

from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up

MAX_WORKERS = 4
MIN_PER_PART = 256  # fewer items than this per part are not worth a fork (about 1 ms with a large heap)


@dataclass
class Part:
    start: int
    stop: int
    done: int                    # items [start, done) succeeded; with ``error``, item ``done`` failed
    error: BaseException | None
    tally: object = None         # a worker's ``collect()`` after its part; None for this process's part


class WorkerLost(Exception):
    """A worker ended without its report (killed, or its report could not be read)."""


def available(limit: int = MAX_WORKERS) -> int:
    """How many processes to share work between: the CPUs this process may run on (``taskset`` limits
    them), ``limit`` at most. The machine's load is not asked. Executing 20,000 copies on 2 CPUs, one
    process against two: 0.355 s and 0.199 s when idle, 0.335 s and 0.295 s beside one process spinning,
    0.516 s and 0.391 s beside two; and every guess from /proc/loadavg tried (the processes running at
    that instant, the 1-minute average, the smaller of both) kept some runs of a benchmark in one process
    and not others (one look at the instant counts the kernel's threads freeing thousands of unlinked
    files; the average trails a finished job by minutes)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(limit, cpus))


def split(n: int, workers: int, minimum: int = MIN_PER_PART) -> list[tuple[int, int]]:
    """[start, stop) ranges covering ``range(n)``: ``workers`` of them at most, each ``minimum`` long at least
    (one range when ``n`` is small)."""
    count = max(1, min(workers, n // max(1, minimum)))
    bounds = [n * k // count for k in range(count + 1)]
    return list(itertools.pairwise(bounds))


def run_parts(n: int, work: Callable[[int], object], workers: int,
              collect: Callable[[], object] = lambda: None) -> list[Part]:
    """Call ``work(i)`` for every ``i`` in ``range(n)``, the items split as ``split`` says, the first part
    here and each other in a forked worker. Returns the parts in order. An exception from ``work`` ends
    its part and is returned in it (a worker's pickled; one that cannot be pickled arrives as a
    WorkerLost naming it); an exception that is not an Exception (KeyboardInterrupt) here is raised,
    after the workers are killed."""
    ranges = split(n, workers)
    here = ranges[:1]  # the ranges this process runs: the first, and any a fork failed for
    children: list[tuple[int, int, int, int]] = []  # pid, read end of its pipe, start, stop
    if len(ranges) > 1:
        import pickle  # noqa: F401 - imported before the forks, as signal and warnings: they are used in them
        import signal  # noqa: F401
        import warnings  # noqa: F401
    try:
        for start, stop in ranges[1:]:
            r, w = os.pipe()
            try:
                pid = _fork()
            except BaseException as e:
                os.close(r)
                os.close(w)
                if not isinstance(e, OSError):
                    raise
                here.append((start, stop))  # no process to spare (EAGAIN, a pids limit): run it here
                continue
            if pid == 0:
                os.close(r)
                _worker(w, start, stop, work, collect)  # never returns
            os.close(w)
            children.append((pid, r, start, stop))
        parts = []
        for start, stop in here:
            done, error = _run(start, stop, work)
            parts.append(Part(start, stop, done, error))
        while children:
            parts.append(_join(*children[0]))
            children.pop(0)
        return sorted(parts, key=lambda part: part.start)
    finally:
        for pid, r, _, _ in children:
            try:
                os.kill(pid, 9)  # SIGKILL (the signal module is imported only when work is shared)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os.close(r)


def _run(start: int, stop: int, work: Callable[[int], object]) -> tuple[int, Exception | None]:
    i = start
    try:
        while i < stop:
            work(i)
            i += 1
    except Exception as e:  # noqa: BLE001 - the part's failure, returned to the caller who decides
        return i, e
    return i, None


def _fork() -> int:
    import warnings

    with warnings.catch_warnings():
        # Python 3.12 warns on a fork while other threads exist, for a child that would take a lock one of
        # them held. A worker runs ``work`` (system calls on its own items) and reports; it takes no lock.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _worker(w: int, start: int, stop: int, work: Callable[[int], object], collect: Callable[[], object]) -> None:
    status = 0
    try:
        import pickle
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        done, error = _run(start, stop, work)
        tally = collect()
        try:
            report = pickle.dumps((done, error, tally))
        except Exception:  # noqa: BLE001 - an error that does not pickle still reaches the caller, by name
            report = pickle.dumps((done, WorkerLost(f"{type(error).__name__}: {error}"), tally))
        view = memoryview(report)
        while view:
            view = view[os.write(w, view):]
    except BaseException:  # noqa: BLE001 - the caller sees the missing report and the status
        status = 70
    finally:
        os._exit(status)


def _join(pid: int, r: int, start: int, stop: int) -> Part:
    import pickle

    chunks = []
    try:
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    try:
        done, error, tally = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - no report (killed, or cut short): the part is lost
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")
        return Part(start, stop, start, WorkerLost(f"a worker process ended without its report ({how})"))
    return Part(start, stop, done, error, tally)
