"""Benchmark: cdsim's DownloadBundle + Install of a directory bundle against the `cp -a` floor.

Two bundles (issue 3): N files of 1-8 KiB in nested folders (default 5,000) and 200 files of 1 MiB.
For each, on tmpfs (/dev/shm, which measures our code) and on the disk (/var/tmp):
  floor: `cp -a bundle archive && cp -a archive dest`
  cdsim: agent.bundle.fetch_and_unpack (the directory-bundle copy into deployment-archive) + parse the
         appspec + agent.install.install (cleanup, generation, install.json, execution with the journal)
Runs alternate floor/cdsim, everything is removed between runs (untimed), median of --runs.

    python bench/install.py [--files 5000] [--runs 5] [--where /dev/shm /var/tmp]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agent.appspec import parse_appspec
from agent.install import install

try:
    from agent.bundle import fetch_and_unpack
    from agent.revision import LocalRevision
except ImportError:  # before agent.bundle existed: a plain copy stands in for DownloadBundle
    fetch_and_unpack = None


def make_bundle(path: str, dest: str, files: int, size: tuple[int, int], seed: int) -> None:
    rnd = random.Random(seed)
    os.makedirs(path)
    with open(os.path.join(path, "appspec.yml"), "w") as f:
        f.write(f"version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: {dest}\n")
    per_leaf = 50
    for n in range(files):
        leaf = n // per_leaf
        folder = os.path.join(path, f"d{leaf // 10:02d}", f"s{leaf % 10}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{n:05d}.dat"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(*size)))


def floor(bundle: str, work: str) -> float:
    archive, dest = os.path.join(work, "archive"), os.path.join(work, "dest")
    t = time.perf_counter()
    subprocess.run(["cp", "-a", bundle, archive], check=True)
    subprocess.run(["cp", "-a", archive, dest], check=True)
    return time.perf_counter() - t


def ours(bundle: str, root: str) -> float:
    deployment_dir = os.path.join(root, "g", "d-1")
    t = time.perf_counter()
    os.makedirs(deployment_dir)
    if fetch_and_unpack is not None:
        archive = fetch_and_unpack(LocalRevision(bundle, "directory"), deployment_dir)
    else:
        archive = os.path.join(deployment_dir, "deployment-archive")
        shutil.copytree(bundle, archive, symlinks=True)
    with open(os.path.join(archive, "appspec.yml"), "rb") as f:
        spec = parse_appspec(f.read())
    install(spec, archive, os.path.join(root, "deployment-instructions"), "g", None)
    return time.perf_counter() - t


def clear(*paths: str) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def bench(where: str, files: int, runs: int) -> list[tuple[str, float, float]]:
    base = tempfile.mkdtemp(prefix="cdsim-bench-", dir=where)
    results = []
    try:
        for label, count, size in ((f"{files} files of 1-8 KiB", files, (1024, 8192)),
                                   ("200 files of 1 MiB", 200, (1 << 20, 1 << 20))):
            bundle = os.path.join(base, "bundle")
            work = os.path.join(base, "work")
            dest = os.path.join(work, "dest")
            make_bundle(bundle, dest, count, size, seed=count)
            a, b = [], []
            for _ in range(runs):
                os.makedirs(work)
                a.append(floor(bundle, work))
                clear(work)
                os.makedirs(work)
                b.append(ours(bundle, os.path.join(work, "root")))
                clear(work)
            results.append((label, statistics.median(a), statistics.median(b)))
            clear(bundle)
    finally:
        clear(base)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--where", nargs="+", default=["/dev/shm", "/var/tmp"])
    args = ap.parse_args()
    if fetch_and_unpack is None:
        print("note: agent.bundle is missing; shutil.copytree stands in for DownloadBundle")
    print(f"{'where':10} {'bundle':24} {'cp -a floor':>12} {'cdsim':>9} {'ratio':>7}")
    for where in args.where:
        for label, fl, us in bench(where, args.files, args.runs):
            print(f"{where:10} {label:24} {fl:11.3f}s {us:8.3f}s {us / fl:6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
