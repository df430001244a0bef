"""Issue 9's table: every figure against its floor measured in the same run.

    python bench/all.py [--files 20000] [--runs 5] [--where /dev/shm /var/tmp] [--only NAME ...]

NAMEs: dir tgz big redeploy plan hooks startup fleet memory. File figures are measured on tmpfs
(/dev/shm: our code, not the disk) and on the disk (/var/tmp: slow for metadata here, so a full run takes
several minutes). Prints each figure as it is measured, then the table in Markdown.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import TMPFS, WHERE, Row, table

NAMES = ("dir", "tgz", "big", "redeploy", "plan", "hooks", "startup", "fleet", "memory")


def hook_rows(runs: int) -> list[Row]:
    """Figures 6-7 through bench/hooks.py (the hooks runtime's own bench), at the issue's 200 MB."""
    try:
        import hooks
    except ImportError as e:
        return [Row("per-hook overhead, 50 no-op hooks", "", "subprocess.run", None, None, None, "ms each", 5.0,
                    note=f"not available: {e}"),
                Row("hook printing 200 MB in lines", "", "output to /dev/null", None, None, None, "x", 1.15,
                    note=f"not available: {e}")]
    hooks.OUTPUT_BYTES = 200_000_000  # the figure; the script's own default is smaller
    work = tempfile.mkdtemp(prefix="cdsim-bench-", dir=TMPFS if os.path.isdir(TMPFS) else None)
    try:
        ours, bare, extra = hooks.overhead(work, runs)
        a = Row(f"per-hook overhead, {hooks.HOOKS} no-op hooks", TMPFS, "subprocess.run", bare, ours, extra,
                "ms each", 5.0)
        print(a.line(), flush=True)
        took, null, ratio = hooks.throughput(work, runs)
        b = Row("hook printing 200 MB in lines", TMPFS, "output to /dev/null", null, took, ratio, "x", 1.15)
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
    args = ap.parse_args()
    runs = max(5, args.runs)
    started = time.monotonic()
    rows: list[Row] = []
    for name in NAMES:
        if name not in args.only:
            continue
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
            import startup
            rows += startup.rows(max(9, runs))
        elif name == "fleet":
            import fleet
            rows += fleet.rows(runs)
        elif name == "memory":
            import memory
            rows += memory.rows(args.files, runs, [TMPFS])
    print()
    print(f"cores: {os.cpu_count()}, {time.monotonic() - started:.0f} s, median of {runs} pairs each")
    print(table(rows))
    missed = [r for r in rows if r.met is False]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
