"""Figures 1-3 of issue 9: DownloadBundle + Install of a bundle against the system tools.

    python bench/install.py [--figure dir tgz big] [--files 20000] [--runs 5] [--where /dev/shm /var/tmp]

  dir: 20,000 files of 1-8 KiB, directory bundle. floor: `cp -a bundle archive` + `cp -a archive dest`
  tgz: the same bundle as a tgz.                   floor: `tar -xzf bundle.tgz -C archive` + `cp -a archive dest`
  big: 200 files of 1 MiB, directory and tgz bundle, the same floors.
cdsim: agent.bundle.fetch_and_unpack into a deployment folder, the appspec parsed, agent.install.install
(cleanup, generation, install.json, execution with the cleanup journal), in this process (start-up is
figure 8's business). Each run starts from nothing; medians of per-pair ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Row, clear, common_args, make_bundle, make_tgz, paired, print_rows, run, timed

from agent.appspec import parse_appspec
from agent.bundle import fetch_and_unpack
from agent.install import install
from agent.revision import LocalRevision

TARGETS = {"dir": 1.3, "tgz": 1.3, "big": 1.2, "big-tgz": 1.0}


def deploy(location: str, kind: str, root: str) -> None:
    """DownloadBundle + Install as the engine runs them, into deployment root ``root``."""
    deployment_dir = os.path.join(root, "g", "d-1")
    os.makedirs(deployment_dir)
    archive = fetch_and_unpack(LocalRevision(location, kind), deployment_dir)
    with open(os.path.join(archive, "appspec.yml"), "rb") as f:
        spec = parse_appspec(f.read())
    install(spec, archive, os.path.join(root, "deployment-instructions"), "g", None)


def floor_unpack(location: str, kind: str, archive: str) -> None:
    if kind == "directory":
        run(["cp", "-a", location, archive])
    else:
        os.mkdir(archive)
        run(["tar", "-xzf", location, "-C", archive])


def measure(where: str, label: str, kind: str, files: int, size: tuple[int, int], runs: int,
            target: float) -> Row:
    base = tempfile.mkdtemp(prefix="cdsim-bench-", dir=where)
    try:
        bundle, work = os.path.join(base, "bundle"), os.path.join(base, "work")
        dest = os.path.join(work, "dest")
        make_bundle(bundle, dest, files, size, seed=files)
        location = bundle
        if kind == "tgz":
            location = os.path.join(base, "bundle.tgz")
            make_tgz(bundle, location)

        def floor() -> float:
            os.makedirs(work)
            archive = os.path.join(work, "archive")
            return timed(lambda: (floor_unpack(location, kind, archive), run(["cp", "-a", archive, dest])))

        def ours() -> float:
            os.makedirs(work)
            return timed(lambda: deploy(location, kind, os.path.join(work, "root")))

        fl, us, ratio = paired(floor, ours, runs, reset=lambda: clear(work))
    finally:
        clear(base)
    floor_name = ("cp -a" if kind == "directory" else "tar -xzf") + " + cp -a"
    return Row(label, where, floor_name, fl, us, ratio, "x", target)


def rows(figures: list[str], files: int, runs: int, where: list[str]) -> list[Row]:
    out = []
    for fig in figures:
        for w in where:
            if fig == "dir":
                out.append(measure(w, f"DownloadBundle+Install, {files} files, directory", "directory",
                                   files, (1024, 8192), runs, TARGETS[fig]))
            elif fig == "tgz":
                out.append(measure(w, f"DownloadBundle+Install, {files} files, tgz", "tgz",
                                   files, (1024, 8192), runs, TARGETS[fig]))
            else:
                for kind in ("directory", "tgz"):
                    out.append(measure(w, f"DownloadBundle+Install, 200 x 1 MiB, {kind}", kind,
                                       200, (1 << 20, 1 << 20), runs, TARGETS["big-tgz" if kind == "tgz" else fig]))
            print_rows(out[-1:] if fig != "big" else out[-2:])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figure", nargs="+", choices=("dir", "tgz", "big"), default=["dir", "tgz", "big"])
    common_args(ap)
    args = ap.parse_args()
    rows(args.figure, args.files, max(5, args.runs), args.where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
