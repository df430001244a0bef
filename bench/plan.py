"""Figure 5 of issue 9: `cdsim plan` of the 20,000-file directory bundle.

    python bench/plan.py [--files 20000] [--runs 5] [--where /dev/shm /var/tmp]

The bundle was deployed once before (untimed), so the plan previews a 20,000-entry cleanup and judges
every file against a populated destination. floor: one os.walk of the bundle and of the destination
with an lstat of every entry. cdsim: agent.plan.make_plan + render_text (what `cdsim plan` prints), in
this process; the caches are warm for both (each runs right after the other).
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Row, clear, make_bundle, paired, rows_per_place, script_main, timed
from install import deploy

from agent.plan import make_plan, render_text

TARGET = 3.0


def walk_lstat(*tops: str) -> int:
    n = 0
    for top in tops:
        for dirpath, dirs, names in os.walk(top):
            for name in dirs + names:
                os.lstat(os.path.join(dirpath, name))
                n += 1
    return n


def measure(where: str, files: int, runs: int) -> Row:
    base = tempfile.mkdtemp(prefix="cdsim-bench-", dir=where)
    try:
        bundle = os.path.join(base, "bundle")
        dest = os.path.join(base, "dest")
        root = os.path.join(base, "root")
        make_bundle(bundle, dest, files, (1024, 8192), seed=files)
        deploy(bundle, "directory", root)

        def floor() -> float:
            return timed(lambda: walk_lstat(bundle, dest))

        def ours() -> float:
            def go() -> None:
                p = make_plan(bundle, deployment_group="g", root_dir=root, cwd=base)
                render_text(p)
                assert p.error is None, p.error
            return timed(go)

        fl, us, ratio = paired(floor, ours, runs)
    finally:
        clear(base)
    return Row(f"cdsim plan, {files} files", where, "os.walk + lstat", fl, us, ratio, "x", TARGET)


def rows(files: int, runs: int, where: list[str]) -> list[Row]:
    return rows_per_place(measure, files, runs, where)


if __name__ == "__main__":
    sys.exit(script_main(__doc__, rows))
