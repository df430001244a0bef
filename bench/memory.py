"""Figure 10 of issue 9: peak memory of a 20,000-file deployment (`cdsim deploy --host`).

    python bench/memory.py [--files 20000] [--runs 5] [--where /dev/shm]

Runs `cdsim deploy --host -q` of a directory bundle and of the same bundle as a tgz in a child process,
with its state and deployment root in a temporary folder, and reads the child's peak resident set
(getrusage RUSAGE_CHILDREN of a one-child wrapper, so earlier runs do not count). Target: <= 150 MB.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import TMPFS, Row, clear, make_bundle, make_tgz, print_rows
from startup import default_cdsim

TARGET = 150.0
_WRAPPER = ("import resource, subprocess, sys\n"
            "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
            "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def peak_mb(argv: list[str], env: dict[str, str], cwd: str) -> float:
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], env=env, cwd=cwd, check=True,
                         capture_output=True, text=True).stdout.split()
    if out[0] != "0":
        raise SystemExit(f"{' '.join(argv)} failed with status {out[0]}")
    return int(out[1]) / 1024  # ru_maxrss is in KiB on Linux


def rows(files: int, runs: int, where: list[str]) -> list[Row]:
    out = []
    for w in where:
        base = tempfile.mkdtemp(prefix="cdsim-bench-", dir=w)
        try:
            bundle = os.path.join(base, "bundle")
            make_bundle(bundle, os.path.join(base, "work", "dest"), files, (1024, 8192), seed=files)
            tgz = os.path.join(base, "bundle.tgz")
            make_tgz(bundle, tgz)
            env = dict(os.environ, CDSIM_STATE_DIR=os.path.join(base, "state"))
            baseline = statistics.median(peak_mb([sys.executable, "-c", "pass"], env, base) for _ in range(3))
            for kind, location in (("directory", bundle), ("tgz", tgz)):
                peaks = []
                for _ in range(runs):
                    clear(os.path.join(base, "work"), os.path.join(base, "state"))
                    peaks.append(peak_mb([*default_cdsim(), "deploy", "--host", "-q", "--type", kind,
                                          "--root-dir", os.path.join(base, "work", "root"), location], env, base))
                peak = statistics.median(peaks)
                out.append(Row(f"peak memory, {files}-file deployment, {kind}", w, "python -c pass",
                               baseline, peak, peak, "MB", TARGET))
                print_rows(out[-1:])
        finally:
            clear(base)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--where", nargs="+", default=[TMPFS])
    args = ap.parse_args()
    rows(args.files, max(5, args.runs), args.where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
