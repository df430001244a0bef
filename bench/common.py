"""Shared helpers of the bench scripts (issue 9): bundle generation, paired timing, the result row.

Every figure is timed against its floor in the same run: the floor and cdsim alternate (which goes
first alternates too), everything is removed and the page cache flushed to disk between runs (untimed),
and the figure is the median of the per-pair ratios. Not part of the agent package.
"""
from __future__ import annotations

import os
import random
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
    unit: str                  # "x" (ratio), "ms each", "s above", "MB"
    target: float
    note: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.target

    def line(self) -> str:
        if self.value is None:
            return f"{self.figure}: {self.note or 'not measured'}"
        where = f" on {self.where}" if self.where else ""
        return (f"{self.figure}{where}: floor ({self.floor}) {self.floor_value:.3f}, cdsim {self.cdsim_value:.3f} "
                f"-> {self.value:.2f} {self.unit} (target <= {self.target:g} {self.unit}: "
                f"{'met' if self.met else 'MISSED'}){' ' + self.note if self.note else ''}")


def print_rows(rows: list[Row]) -> None:
    for r in rows:
        print(r.line(), flush=True)


def table(rows: list[Row]) -> str:
    head = ("figure", "where", "floor", "floor", "cdsim", "value", "target", "met?")
    lines = [head]
    for r in rows:
        if r.value is None:
            lines.append((r.figure, r.where or "-", r.floor, "-", "-", "-", f"<= {r.target:g} {r.unit}",
                          r.note or "skipped"))
            continue
        fmt = "{:.3f}s" if r.unit in ("x", "s above") else "{:.2f}"
        lines.append((r.figure, r.where or "-", r.floor, fmt.format(r.floor_value), fmt.format(r.cdsim_value),
                      f"{r.value:.2f} {r.unit}", f"<= {r.target:g} {r.unit}", "yes" if r.met else "NO"))
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
