"""Issue 9's table: every figure against its floor measured in the same run.

    python bench/all.py [--files 20000] [--runs 5] [--where /dev/shm /var/tmp] [--only NAME ...]
                        [--agent "codedeploy-local"]

NAMEs: dir tgz big redeploy plan hooks startup e2e fleet memory lb. File figures are measured on tmpfs
(/dev/shm: our code, not the disk) and on the disk (/var/tmp: slow for metadata here, so a full run takes
several minutes). Prints each figure as it is measured, then the table in Markdown, with the machine's
cores and load: each figure's "load" column gives the 1-minute load average at its start and the cores
other work kept busy while it was measured (LOADED above half the cores: its figure is not a quiet one).
With --agent, the e2e figures also time the real agent (codedeploy-local, or a stand-in taking its
flags) on the same bundles in the same run.

Each figure is measured in a forked copy of this process, so it starts from the same small heap: in one
process, the figures after the 20,000-file ones forked a larger heap (the per-hook overhead measured
2.3 ms alone and 3.4-4.4 ms after them; a fork copies the page tables of what earlier figures left).
Before each figure the run waits (20 s at most) until no other process has been running for a second,
so one figure's leftovers (the fleet's instances going down) do not weigh on the next.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import TMPFS, WHERE, LoadMeter, Row, table

NAMES = ("dir", "tgz", "big", "redeploy", "plan", "hooks", "startup", "e2e", "fleet", "memory", "lb")


HOOK_OUTPUT = 1.1  # target for the hook printing 200 MB, x its output sent to /dev/null


def hook_rows(runs: int) -> list[Row]:
    """Figures 6-7 through bench/hooks.py (the hooks runtime's own bench), at the issue's 200 MB."""
    try:
        import hooks
    except ImportError as e:
        return [Row("per-hook overhead, 50 no-op hooks", "", "subprocess.run", None, None, None, "ms each", 5.0,
                    note=f"not available: {e}"),
                Row("hook printing 200 MB in lines", "", "output to /dev/null", None, None, None, "x", HOOK_OUTPUT,
                    note=f"not available: {e}")]
    hooks.OUTPUT_BYTES = 200_000_000  # the figure; the script's own default is smaller
    work = tempfile.mkdtemp(prefix="cdsim-bench-", dir=TMPFS if os.path.isdir(TMPFS) else None)
    try:
        ours, bare, extra = hooks.overhead(work, runs)
        a = Row(f"per-hook overhead, {hooks.HOOKS} no-op hooks", TMPFS, "subprocess.run", bare, ours, extra,
                "ms each", 5.0)
        print(a.line(), flush=True)
        took, null, ratio = hooks.throughput(work, runs)
        b = Row("hook printing 200 MB in lines", TMPFS, "output to /dev/null", null, took, ratio, "x", HOOK_OUTPUT)
        print(b.line(), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [a, b]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--where", nargs="+", default=list(WHERE))
    ap.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    ap.add_argument("--cdsim", default=None,
                    help="the cdsim command the start-up and e2e figures time (default: the one beside this Python;"
                         " the README's table times a regular install, `pip install .` into its own venv)")
    ap.add_argument("--agent", default=None,
                    help='the real agent\'s command (e.g. "codedeploy-local"): e2e times it on the same bundles')
    args = ap.parse_args()
    runs = max(5, args.runs)
    started = time.monotonic()
    load_at_start = os.getloadavg()
    rows: list[Row] = []
    for name in NAMES:
        if name not in args.only:
            continue
        settle()
        with LoadMeter() as meter:
            got = isolated(name, args, runs)
        for r in got:
            r.load = meter.load
        rows += got
    cores = os.cpu_count()
    print()
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {cores} cores, load average {fmt_load(load_at_start)} at the "
          f"start and {fmt_load(os.getloadavg())} at the end, {time.monotonic() - started:.0f} s, median of {runs} "
          "pairs each")
    loaded = [r for r in rows if r.load and r.load.loaded]
    print("load column: 1-minute load at the figure's start / cores other work kept busy during it"
          + (f"; {len(loaded)} figure(s) LOADED (other work above half the cores): not quiet figures"
             if loaded else ""))
    print(table(rows))
    missed = [r for r in rows if r.met is False]
    return 1 if missed else 0


def settle(quiet: float = 1.0, at_most: float = 20.0) -> None:
    """Wait until no process but this one has been running for ``quiet`` seconds (/proc/loadavg's
    running count, looked at every 10 ms), ``at_most`` seconds in all."""
    end = time.monotonic() + at_most
    since = time.monotonic()
    while time.monotonic() < end:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        now = time.monotonic()
        if running > 1:
            since = now
        elif now - since >= quiet:
            return
        time.sleep(0.01)


def isolated(name: str, args: argparse.Namespace, runs: int) -> list[Row]:
    """``measure(name, ...)`` in a forked copy of this process (see the module docstring); its rows come
    back pickled through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        status = 0
        try:
            data = pickle.dumps(measure(name, args, runs))
        except BaseException:  # noqa: BLE001 - reported, and the parent stops on the empty answer
            traceback.print_exc()
            data, status = b"", 1
        sys.stdout.flush()
        sys.stderr.flush()
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise SystemExit(f"bench/all.py: the {name} figures failed (wait status {status})")
    rows: list[Row] = pickle.loads(data)
    return rows


def fmt_load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in avg)


def measure(name: str, args: argparse.Namespace, runs: int) -> list[Row]:
    rows: list[Row] = []
    if name in ("dir", "tgz", "big"):
        import install
        rows += install.rows([name], args.files, runs, args.where)
    elif name == "redeploy":
        import redeploy
        rows += redeploy.rows(args.files, runs, args.where)
    elif name == "plan":
        import plan
        rows += plan.rows(args.files, runs, args.where)
    elif name == "hooks":
        rows += hook_rows(runs)
    elif name == "startup":
        import shlex

        import startup
        rows += startup.rows(max(9, runs), shlex.split(args.cdsim) if args.cdsim else None)
    elif name == "e2e":
        import shlex

        import e2e
        rows += e2e.rows(5000, max(9, runs), args.where, cdsim=shlex.split(args.cdsim) if args.cdsim else None,
                         agent=shlex.split(args.agent) if args.agent else None)
    elif name == "fleet":
        import fleet
        rows += fleet.rows(runs)
    elif name == "memory":
        import memory
        rows += memory.rows(args.files, runs, [TMPFS])
    elif name == "lb":
        import lb
        rows += lb.rows()
    return rows


if __name__ == "__main__":
    sys.exit(main())
