"""Figure 4 of issue 9: redeploy of the 20,000-file bundle (the cleanup of the previous install + Install).

    python bench/redeploy.py [--files 20000] [--runs 5] [--where /dev/shm /var/tmp]

Before each timed run (untimed) the bundle is deployed once, so the destination holds 20,000 files and
the group's cleanup file lists them. floor: `rm -rf dest` + `cp -a archive dest`. cdsim: agent.install.install
again for the same group (run_cleanup of the journal, generation, install.json, execution), in this process.
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Row, clear, make_bundle, paired, rows_per_place, run, script_main, timed
from install import deploy

from agent.appspec import parse_appspec
from agent.install import install

TARGET = 1.3


def measure(where: str, files: int, runs: int) -> Row:
    base = tempfile.mkdtemp(prefix="cdsim-bench-", dir=where)
    try:
        bundle, work = os.path.join(base, "bundle"), os.path.join(base, "work")
        dest = os.path.join(work, "dest")
        make_bundle(bundle, dest, files, (1024, 8192), seed=files)

        def floor() -> float:
            os.makedirs(work)
            archive = os.path.join(work, "archive")
            run(["cp", "-a", bundle, archive])
            run(["cp", "-a", archive, dest])
            return timed(lambda: (run(["rm", "-rf", dest]), run(["cp", "-a", archive, dest])))

        def ours() -> float:
            os.makedirs(work)
            root = os.path.join(work, "root")
            deploy(bundle, "directory", root)
            archive = os.path.join(root, "g", "d-1", "deployment-archive")

            def again() -> None:
                with open(os.path.join(archive, "appspec.yml"), "rb") as f:
                    spec = parse_appspec(f.read())
                install(spec, archive, os.path.join(root, "deployment-instructions"), "g", None)
            return timed(again)

        fl, us, ratio = paired(floor, ours, runs, reset=lambda: clear(work))
    finally:
        clear(base)
    return Row(f"redeploy (cleanup + Install), {files} files", where, "rm -rf + cp -a", fl, us, ratio, "x", TARGET)


def rows(files: int, runs: int, where: list[str]) -> list[Row]:
    return rows_per_place(measure, files, runs, where)


if __name__ == "__main__":
    sys.exit(script_main(__doc__, rows))
