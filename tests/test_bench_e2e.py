"""bench/e2e.py runs end to end, the --agent code path included (with `cdsim local` standing in for
codedeploy-local, which is not installed here), and bench/common's load meter reads this machine."""
import os
import subprocess
import sys

from tests.lib import REPO


def test_e2e_bench_times_cdsim_and_a_stand_in_agent(tmp_path):
    cdsim = f"{sys.executable} -m agent"
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "e2e.py"), "--files", "40", "--runs", "5",
                        "--where", str(tmp_path), "--cdsim", cdsim, "--agent", f"{cdsim} local"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for figure in ("cdsim --version, wall", "cdsim local, appspec-only bundle, wall",
                   "cdsim local, 40 files, whole process", "cdsim local against the agent, appspec-only bundle",
                   "cdsim local against the agent, 40 files"):
        assert any(line.startswith(figure) for line in lines), (figure, r.stdout)
    assert sum("x faster" in line for line in lines) == 2
    assert os.listdir(tmp_path) == []  # every bundle and deployment removed


def test_the_load_meter_sees_other_work():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        from common import LoadMeter
    finally:
        sys.path.pop(0)
    # a child of ours keeping a core busy for a second: its CPU time is the bench's own, not "others"
    with LoadMeter() as meter:
        subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1: pass"]
                         ).wait()
    load = meter.load
    assert load.cores == os.cpu_count()
    assert load.others is not None and load.others >= 0
    assert load.loaded == (load.others > 0.5 * load.cores)
    assert load.text().startswith(f"load {load.load1:.2f}, others {load.others:.2f} cores")
