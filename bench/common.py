"""Shared helpers of the bench scripts (issue 9): bundle generation, paired timing, the result row.

Every figure is timed against its floor in the same run: the floor and cdsim alternate (which goes
first alternates too), everything is removed and the page cache flushed to disk between runs (untimed),
and the figure is the median of the per-pair ratios. Not part of the agent package.
"""
from __future__ import annotations

import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TMPFS = "/dev/shm"
DISK = "/var/tmp"
WHERE = (TMPFS, DISK)


@dataclass
class Row:
    """One line of the table. ``value`` is compared with ``target`` (ratio, ms, s or MB per ``unit``)."""

    figure: str
    where: str                 # /dev/shm, /var/tmp, or "" for figures that are not about files
    floor: str                 # what the floor is
    floor_value: float | None  # seconds (or ms/MB as the unit says); None when skipped
    cdsim_value: float | None
    value: float | None        # what the target applies to
    unit: str                  # "x" (ratio), "ms each", "s above", "s", "MB", "x faster"
    target: float | None       # None: a figure reported, not judged (e.g. the real agent against cdsim)
    note: str = ""
    load: Load | None = None   # the machine's load while this figure was measured (all.py fills it)

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.value <= self.target

    def line(self) -> str:
        if self.value is None:
            return f"{self.figure}: {self.note or 'not measured'}"
        where = f" on {self.where}" if self.where else ""
        judged = ("" if self.target is None else
                  f" (target <= {self.target:g} {self.unit}: {'met' if self.met else 'MISSED'})")
        load = f" [{self.load.text()}]" if self.load else ""
        return (f"{self.figure}{where}: floor ({self.floor}) {self.floor_value:.3f}, cdsim {self.cdsim_value:.3f} "
                f"-> {self.value:.2f} {self.unit}{judged}{' ' + self.note if self.note else ''}{load}")


# ------------------------------------------------------------------------------------------- load

LOADED = 0.5  # a figure is marked as measured under load above this many busy cores per core


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), None where unreadable."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process (all threads) and of its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Load:
    """How busy the machine was with *other* work while one figure was measured: the 1-minute load
    average at its start, and the cores other processes kept busy on average during it (the machine's
    busy CPU time from /proc/stat less this benchmark's own and its children's, over the wall time)."""

    load1: float
    others: float | None  # cores busy with other work, on average
    cores: int

    @property
    def loaded(self) -> bool:
        """Other work kept more than LOADED x cores busy (where /proc/stat is unreadable: the 1-minute
        load average, which also counts this benchmark's own previous figure, said so)."""
        busy = self.load1 if self.others is None else self.others
        return busy > LOADED * self.cores

    def text(self) -> str:
        others = "?" if self.others is None else f"{self.others:.2f}"
        return f"load {self.load1:.2f}, others {others} cores" + (" UNDER LOAD" if self.loaded else "")


class LoadMeter:
    """``with LoadMeter() as m: ...`` then ``m.load``: the machine's load during the block."""

    def __enter__(self) -> LoadMeter:
        self.load1 = os.getloadavg()[0]
        self.t0, self.busy0, self.own0 = time.monotonic(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self.t0, 1e-6)
        busy1 = _busy_seconds()
        others = None
        if self.busy0 is not None and busy1 is not None:
            others = max(0.0, ((busy1 - self.busy0) - (_own_seconds() - self.own0)) / wall)
        self.load = Load(self.load1, others, os.cpu_count() or 1)


def print_rows(rows: list[Row]) -> None:
    for r in rows:
        print(r.line(), flush=True)


def table(rows: list[Row]) -> str:
    head = ("figure", "where", "floor", "floor", "cdsim", "value", "target", "met?", "load")
    lines = [head]
    for r in rows:
        target = "-" if r.target is None else f"<= {r.target:g} {r.unit}"
        load = "-" if r.load is None else (f"{r.load.load1:.2f} / " +
                                           ("?" if r.load.others is None else f"{r.load.others:.2f}") +
                                           (" LOADED" if r.load.loaded else ""))
        if r.value is None:
            lines.append((r.figure, r.where or "-", r.floor, "-", "-", "-", target, r.note or "skipped", load))
            continue
        fmt = "{:.3f}s" if r.unit in ("x", "s above", "s", "x faster") else "{:.2f}"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append((r.figure, r.where or "-", r.floor, fmt.format(r.floor_value), fmt.format(r.cdsim_value),
                      f"{r.value:.2f} {r.unit}", target, met, load))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ bundles

def write_appspec(bundle: str, destination: str) -> None:
    with open(os.path.join(bundle, "appspec.yml"), "w") as f:
        f.write(f"version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: {destination}\n")


def make_bundle(path: str, destination: str, files: int, size: tuple[int, int], seed: int = 1) -> None:
    """``files`` files of ``size`` bytes (random contents) in folders of 50, 10 folders per parent,
    and an appspec copying everything to ``destination``."""
    rnd = random.Random(seed)
    os.makedirs(path)
    write_appspec(path, destination)
    per_leaf = 50
    for n in range(files):
        leaf = n // per_leaf
        folder = os.path.join(path, f"d{leaf // 10:03d}", f"s{leaf % 10}")
        if n % per_leaf == 0:
            os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{n:05d}.dat"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(*size)))


def make_tgz(bundle: str, out: str) -> None:
    """A tgz as users make one (GNU tar, gzip -6)."""
    subprocess.run(["tar", "-czf", out, "-C", bundle, "."], check=True)


def clear(*paths: str) -> None:
    for p in paths:
        if os.path.lexists(p):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)


def settle() -> None:
    """Untimed: write dirty pages back so one run's writeback is not billed to the next."""
    os.sync()


def run(argv: list[str], **kw) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kw)


# ------------------------------------------------------------------------------------------- timing

def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def paired(floor: Callable[[], float], ours: Callable[[], float], runs: int,
           reset: Callable[[], None] | None = None) -> tuple[float, float, float]:
    """(median floor seconds, median cdsim seconds, median of per-pair ratios). ``floor``/``ours``
    return the seconds they measured (so untimed preparation can live inside them); ``reset`` runs,
    untimed, after each of them."""
    fl, us, ratios = [], [], []
    for i in range(runs):
        pair = {}
        order = (("floor", floor), ("ours", ours)) if i % 2 == 0 else (("ours", ours), ("floor", floor))
        for name, fn in order:
            pair[name] = fn()
            if reset:
                reset()
            settle()
        if os.environ.get("BENCH_VERBOSE"):
            print(f"  pair {i + 1}: floor {pair['floor']:.3f}s cdsim {pair['ours']:.3f}s", file=sys.stderr)
        fl.append(pair["floor"])
        us.append(pair["ours"])
        ratios.append(pair["ours"] / pair["floor"])
    return statistics.median(fl), statistics.median(us), statistics.median(ratios)


def common_args(parser, files: int = 20000, runs: int = 5) -> None:
    parser.add_argument("--files", type=int, default=files, help=f"small files in the bundle (default {files})")
    parser.add_argument("--runs", type=int, default=runs, help=f"pairs timed, median taken (default {runs}, min 5)")
    parser.add_argument("--where", nargs="+", default=list(WHERE),
                        help="folders to work in (default: /dev/shm, the tmpfs, and /var/tmp, the disk)")


def rows_per_place(measure: Callable[[str, int, int], Row], files: int, runs: int,
                   where: list[str]) -> list[Row]:
    """One row per place, printed as soon as it is measured."""
    out = []
    for w in where:
        out.append(measure(w, files, runs))
        print_rows(out[-1:])
    return out


def script_main(doc: str, rows: Callable[[int, int, list[str]], list[Row]]) -> int:
    """The command line of a one-figure bench script: --files, --runs, --where."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    common_args(ap)
    args = ap.parse_args()
    rows(args.files, max(5, args.runs), args.where)
    return 0
