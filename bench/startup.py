"""Start-up cost of `cdsim validate`: median wall time on a small bundle vs `python -c pass`.

Usage: python bench/startup.py [--runs N] [--cdsim CMD]
CMD defaults to "<this python> -m agent"; pass e.g. --cdsim cdsim to time the installed console script.
The target is a median under 0.3 s for `cdsim validate` on a small bundle.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPSPEC = """\
version: 0.0
os: linux
files:
  - source: /app
    destination: /srv/app
permissions:
  - object: /srv/app
    mode: '0755'
hooks:
  BeforeInstall:
    - location: scripts/before.sh
      timeout: 60
  AfterInstall:
    - location: scripts/after.sh
      runas: root
"""


def make_bundle(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "index.html").write_text("<h1>hi</h1>\n")
    (root / "scripts").mkdir()
    for name in ("before.sh", "after.sh"):
        p = root / "scripts" / name
        p.write_text("#!/bin/sh\necho ok\n")
        p.chmod(0o755)
    (root / "appspec.yml").write_text(APPSPEC)
    return root


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        r = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9, help="runs per command (at least 7)")
    ap.add_argument("--cdsim", default=f"{shlex.quote(sys.executable)} -m agent",
                    help="the cdsim command to time")
    args = ap.parse_args()
    runs = max(7, args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "bundle")
        validate = median_seconds([*shlex.split(args.cdsim), "validate", str(bundle)], runs)
        baseline = median_seconds([sys.executable, "-c", "pass"], runs)
    print(f"cdsim validate (small bundle): {validate * 1000:.1f} ms median of {runs}")
    print(f"python -c pass:               {baseline * 1000:.1f} ms median of {runs}")
    print(f"difference:                   {(validate - baseline) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
