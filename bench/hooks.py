"""Benchmark of hooks_runtime.run_script (issue 4, "Speed").

(a) per-hook overhead: 50 no-op hooks through run_script vs 50 subprocess.run of the same script,
    median over rounds, in ms per hook (target <= 5 ms);
(b) output throughput: a hook printing 50 MB in lines vs the same script with its output sent to
    /dev/null (target ratio <= 1.2).
Runs under /dev/shm so the disk does not dominate. Usage: python bench/hooks.py [--rounds N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hooks_runtime import HookLog, Script, run_script

HOOKS = 50
OUTPUT_BYTES = 50_000_000

# Lines of ~100 bytes produced by awk (a fast, buffered producer, like a build or a package manager
# printing a log): 500 000 lines.
PRINTER = """#!/bin/sh
awk -v n={lines} 'BEGIN {{ for (i = 0; i < n; i++)
    printf "line %08d the quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv\\n", i }}'{redirect}
"""


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def overhead(work: str, rounds: int) -> tuple[float, float, float]:
    """(median ms per hook via run_script, median ms per subprocess.run, overhead ms per hook)."""
    script = os.path.join(work, "noop.sh")
    _write(script, "#!/bin/sh\nexit 0\n")
    env = dict(os.environ)
    ours, bare = [], []
    for r in range(rounds):
        t = time.perf_counter()
        for _ in range(HOOKS):
            subprocess.run([script], env=env, cwd=work, stdin=subprocess.DEVNULL,
                           capture_output=True, check=True)
        bare.append((time.perf_counter() - t) / HOOKS * 1000)
        with HookLog(os.path.join(work, f"logs{r}", "scripts.log"), "d-BENCH0000-local",
                     os.path.join(work, "deployment-logs", "deployments.log")) as log:
            log.message("LifecycleEvent - AfterInstall\n")
            t = time.perf_counter()
            for _ in range(HOOKS):
                result = run_script(Script(script, "noop.sh", 60), env=env, cwd=work, log=log)
                assert result.succeeded, result
            ours.append((time.perf_counter() - t) / HOOKS * 1000)
    m_ours, m_bare = statistics.median(ours), statistics.median(bare)
    return m_ours, m_bare, m_ours - m_bare


def throughput(work: str, rounds: int) -> tuple[float, float, float]:
    """(median s through run_script, median s to /dev/null, ratio)."""
    lines = OUTPUT_BYTES // 100
    loud = os.path.join(work, "loud.sh")
    quiet = os.path.join(work, "quiet.sh")
    _write(loud, PRINTER.format(lines=lines, redirect=""))
    _write(quiet, PRINTER.format(lines=lines, redirect=" > /dev/null"))
    env = dict(os.environ)
    ours, null = [], []
    for r in range(rounds):
        t = time.perf_counter()
        subprocess.run([quiet], env=env, cwd=work, check=True)
        null.append(time.perf_counter() - t)
        logs = os.path.join(work, f"big{r}")
        with HookLog(os.path.join(logs, "scripts.log"), "d-BENCH0000-local",
                     os.path.join(logs, "deployments.log")) as log:
            t = time.perf_counter()
            result = run_script(Script(loud, "loud.sh", 600), env=env, cwd=work, log=log)
            ours.append(time.perf_counter() - t)
        assert result.succeeded, result
        assert os.path.getsize(os.path.join(logs, "scripts.log")) > OUTPUT_BYTES
        shutil.rmtree(logs)
    m_ours, m_null = statistics.median(ours), statistics.median(null)
    return m_ours, m_null, m_ours / m_null


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = tempfile.mkdtemp(prefix="cdsim-bench-", dir=base)
    try:
        ours, bare, extra = overhead(work, args.rounds)
        print(f"(a) {HOOKS} no-op hooks, median of {args.rounds} rounds: run_script {ours:.2f} ms/hook, "
              f"subprocess.run {bare:.2f} ms/hook, overhead {extra:.2f} ms/hook (target <= 5)")
        took, null, ratio = throughput(work, args.rounds)
        print(f"(b) hook printing {OUTPUT_BYTES / 1e6:.0f} MB in lines, median of {args.rounds} rounds: "
              f"run_script {took:.2f} s, same script > /dev/null {null:.2f} s, ratio {ratio:.2f} (target <= 1.2)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
