"""Time DownloadBundle's unpacking against the system tools, on a generated bundle.

    python bench/unpack.py [--files 20000] [--dir /dev/shm] [--repeat 5]

Directory bundles are compared with ``cp -a`` (the floor), tar/tgz with ``tar -xpf``, zip with
``unzip -qo``. Prints the best-of-N seconds and the ratio per bundle type.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.bundle import fetch_and_unpack
from agent.revision import LocalRevision


def make_bundle(top: str, files: int) -> None:
    rnd = random.Random(42)
    os.makedirs(top)
    with open(os.path.join(top, "appspec.yml"), "w") as f:
        f.write("version: 0.0\nos: linux\n")
    per_dir = 50
    for i in range(files):
        d = os.path.join(top, f"d{i // (per_dir * 20)}", f"s{(i // per_dir) % 20}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.txt"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(1024, 8192)))


def best_pair(a, b, repeat: int) -> tuple[float, float]:
    """Best-of-N of two functions, interleaved so both see the same machine load."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((a, times[0]), (b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(times[0]), min(times[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cdsim-bench-", dir=args.dir)
    try:
        src = os.path.join(work, "rev")
        make_bundle(src, args.files)
        archives = {"tar": os.path.join(work, "rev.tar"), "tgz": os.path.join(work, "rev.tgz"),
                    "zip": os.path.join(work, "rev.zip")}
        # Archives as users make them: GNU tar (no pax headers) and Python's zipfile.
        subprocess.run(["tar", "-cf", archives["tar"], "."], cwd=src, check=True)
        subprocess.run(["tar", "-czf", archives["tgz"], "."], cwd=src, check=True)
        with zipfile.ZipFile(archives["zip"], "w", zipfile.ZIP_DEFLATED) as z:
            for dirpath, _dirs, names in os.walk(src):
                for name in names:
                    full = os.path.join(dirpath, name)
                    z.write(full, os.path.relpath(full, src))
        counter = iter(range(10**6))

        def fresh() -> str:
            d = os.path.join(work, f"dep{next(counter)}")
            os.mkdir(d)
            return d

        def ours(kind: str, location: str):
            return lambda: fetch_and_unpack(LocalRevision(location, kind), fresh())

        def tool(argv_for):
            def run():
                d = os.path.join(fresh(), "deployment-archive")
                os.mkdir(d)
                subprocess.run(argv_for(d), check=True, cwd=d)
            return run

        rows = [
            ("directory", ours("directory", src), "cp -a",
             lambda: subprocess.run(["cp", "-a", src, os.path.join(fresh(), "deployment-archive")], check=True)),
            ("tar", ours("tar", archives["tar"]), "tar -xpf", tool(lambda d: ["tar", "-xpf", archives["tar"]])),
            ("tgz", ours("tgz", archives["tgz"]), "tar -zxpf", tool(lambda d: ["tar", "-zxpf", archives["tgz"]])),
            ("zip", ours("zip", archives["zip"]), "unzip -qo",
             tool(lambda d: ["unzip", "-qo", archives["zip"], "-d", d])),
        ]
        print(f"{args.files} files of 1-8 KiB under {args.dir}, best of {args.repeat}")
        for kind, mine, floor_name, floor in rows:
            if shutil.which(floor_name.split()[0]) is None:
                continue
            t_floor, t_mine = best_pair(floor, mine, args.repeat)
            print(f"{kind:10} cdsim {t_mine:7.3f}s   {floor_name:10} {t_floor:7.3f}s   ratio {t_mine / t_floor:5.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
