"""Whole-process figures of issue 17: start-up and `cdsim local` end to end, and the real agent beside them.

    python bench/e2e.py [--files 5000] [--runs 9] [--where /dev/shm] [--cdsim CMD] [--agent CMD]

  version: `cdsim --version` against `python -c pass` (the same interpreter), wall; target <= 0.02 s above.
  trivial: `cdsim local` of a bundle holding only an appspec (directory bundle), wall; target <= 0.06 s.
  e2e:     `cdsim local` of a 5,000-file directory bundle (1-8 KiB each, `files: / -> dest`), the whole
           process, start-up included, against `cp -a bundle archive` + `cp -a archive dest`; target <= 1.4x.
With --agent "COMMAND" (codedeploy-local as installed, or any stand-in taking its flags), the same
trivial and 5,000-file deployments are timed with that command in the same run, paired with cdsim's,
and reported as "N x faster" (the agent's time over cdsim's, median of per-pair ratios; not judged).
Every deployment gets its own agent configuration (root and log folders under the work folder).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import TMPFS, Row, clear, make_bundle, paired, print_rows, run, timed
from startup import default_cdsim, interpreter_of

VERSION_TARGET = 0.02
TRIVIAL_TARGET = 0.06
E2E_TARGET = 1.4


def _quiet(argv: list[str], cwd: str | None = None) -> None:
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")


def _config(work: str) -> str:
    conf = os.path.join(work, "codedeployagent.yml")
    with open(conf, "w") as f:
        f.write(f":root_dir: {work}/root\n:log_dir: {work}/log\n")
    return conf


def _local(cmd: list[str], bundle: str, conf: str) -> list[str]:
    # the long flags both codedeploy-local and `cdsim local` take
    return [*cmd, "--bundle-location", bundle, "--type", "directory", "--agent-configuration-file", conf]


def version_row(cdsim: list[str], runs: int) -> Row:
    base, ours = [], []
    for _ in range(runs):  # interleaved, so both see the same machine
        base.append(timed(lambda: _quiet([interpreter_of(cdsim), "-c", "pass"])))
        ours.append(timed(lambda: _quiet([*cdsim, "--version"])))
    b, o = statistics.median(base), statistics.median(ours)
    return Row("cdsim --version, wall", "", "python -c pass", b, o, o - b, "s above", VERSION_TARGET)


def _deployments(where: str, files: int, cdsim: list[str], agent: list[str] | None, runs: int,
                 trivial: bool) -> list[Row]:
    """``cdsim``, ``agent``: the commands taking codedeploy-local's flags (``cdsim local``, ``codedeploy-local``)."""
    base = tempfile.mkdtemp(prefix="cdsim-bench-", dir=where)
    try:
        bundle, work = os.path.join(base, "bundle"), os.path.join(base, "work")
        dest = os.path.join(work, "dest")
        if trivial:
            os.makedirs(bundle)
            with open(os.path.join(bundle, "appspec.yml"), "w") as f:
                f.write("version: 0.0\nos: linux\n")
        else:
            make_bundle(bundle, dest, files, (1024, 8192), seed=files)

        def deployment(cmd: list[str]) -> float:
            os.makedirs(work)
            conf = _config(work)
            return timed(lambda: _quiet(_local(cmd, bundle, conf), cwd=work))

        rows = []
        label = "appspec-only bundle" if trivial else f"{files} files"
        if trivial:
            took = []
            for _ in range(runs):
                took.append(deployment(cdsim))
                clear(work)
            t = statistics.median(took)
            python = interpreter_of(cdsim)
            base_t = statistics.median([timed(lambda: _quiet([python, "-c", "pass"])) for _ in range(3)])
            rows.append(Row(f"cdsim local, {label}, wall", where, "python -c pass", base_t, t, t, "s",
                            TRIVIAL_TARGET))
        else:
            def floor() -> float:
                os.makedirs(work)
                archive = os.path.join(work, "archive")
                return timed(lambda: (run(["cp", "-a", bundle, archive]), run(["cp", "-a", archive, dest])))

            fl, us, ratio = paired(floor, lambda: deployment(cdsim), runs, reset=lambda: clear(work))
            rows.append(Row(f"cdsim local, {label}, whole process", where, "cp -a + cp -a", fl, us, ratio, "x",
                            E2E_TARGET))
        if agent:
            # the agent in the floor's place, paired with cdsim: value = the agent's time over cdsim's
            ag, us, ratio = paired(lambda: deployment(agent), lambda: deployment(cdsim), runs,
                                   reset=lambda: clear(work))
            rows.append(Row(f"cdsim local against the agent, {label}", where, shlex.join(agent), ag, us,
                            1 / ratio, "x faster", None))
        return rows
    finally:
        clear(base)


def rows(files: int, runs: int, where: list[str], cdsim: list[str] | None = None,
         agent: list[str] | None = None) -> list[Row]:
    cmd = cdsim or default_cdsim()
    out = [version_row(cmd, runs)]
    print_rows(out[-1:])
    place = where[0] if where else TMPFS
    for trivial in (True, False):
        got = _deployments(place, files, [*cmd, "local"], agent, runs, trivial)
        print_rows(got)
        out += got
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--where", nargs="+", default=[TMPFS])
    ap.add_argument("--cdsim", default=None, help="the cdsim command to time (default: the one beside this Python)")
    ap.add_argument("--agent", default=None, help='the real agent\'s command, e.g. "codedeploy-local"')
    args = ap.parse_args()
    t = time.monotonic()
    rows(args.files, max(5, args.runs), args.where, shlex.split(args.cdsim) if args.cdsim else None,
         shlex.split(args.agent) if args.agent else None)
    print(f"{time.monotonic() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
