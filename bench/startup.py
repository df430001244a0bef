"""Figure 8 of issue 9: wall time of `cdsim validate` on the sample app against `python -c pass`.

    python bench/startup.py [--runs 9] [--cdsim CMD]

CMD defaults to the cdsim console script installed beside this Python (not a pyenv shim, which is a
shell script of its own), else "<python> -m agent". Median of the runs each; the figure is the difference
(target: at most 0.25 s above `python -c pass`).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ROOT, Row, print_rows

TARGET = 0.25


def default_cdsim() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "cdsim")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "agent"]


def interpreter_of(cdsim: list[str]) -> str:
    """The Python that runs ``cdsim`` (its script's ``#!`` line), so the ``python -c pass`` floor starts
    the same interpreter with the same site-packages: an editable install's import hook, loaded by
    every start of that venv's Python, then weighs on both sides (about 4 ms), and a regular install
    (``pip install .``, as the README's Quick start) is measured against its own Python."""
    try:
        with open(cdsim[0], "rb") as f:
            first = f.readline(512)
    except OSError:
        return sys.executable
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        if words and "python" in os.path.basename(words[0]) and os.access(words[0], os.X_OK):
            return words[0]
    return cdsim[0] if "python" in os.path.basename(cdsim[0]) else sys.executable


def once(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                       cwd=ROOT)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return took


def rows(runs: int, cdsim: list[str] | None = None) -> list[Row]:
    cdsim = cdsim or default_cdsim()
    cmd = [*cdsim, "validate", os.path.join(ROOT, "sample_app")]
    python = interpreter_of(cdsim)
    base, ours = [], []
    for _ in range(runs):  # interleaved, so both see the same machine
        base.append(once([python, "-c", "pass"]))
        ours.append(once(cmd))
    b, o = statistics.median(base), statistics.median(ours)
    row = Row("cdsim validate of the sample app, wall", "", "python -c pass", b, o, o - b, "s above", TARGET)
    print_rows([row])
    return [row]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--cdsim", default=None, help="the cdsim command to time")
    args = ap.parse_args()
    rows(max(5, args.runs), shlex.split(args.cdsim) if args.cdsim else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
