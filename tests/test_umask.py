"""Modes follow the umask, as the agent's do (behaviour doc §3, §6.8, Q40).

Real deployments (`cdsim local` and `cdsim deploy --host`, subprocesses started under umask 077, 027,
022 and 002) into a deployment root and log folder in tmp_path; every file and folder cdsim creates
there is listed with its exact mode and compared with the agent's rule: folders 0777 & ~umask, files
0666 & ~umask, deployment-archive copies of a directory bundle their source mode & ~umask. Also: an
atomic write killed half-way leaves the old file and the next write takes the umask; private state
(the instance store) stays 0600 whatever the umask.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.lib import CLI

UMASKS = (0o077, 0o027, 0o022, 0o002)
GROUP = "g1"
def run(argv: list[str], umask: int, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(umask), **kw)


def make_site(base: Path) -> tuple[Path, Path]:
    """A directory bundle (0644 file, 0755 hook, 0755 folders) and an agent config into ``base``."""
    rev = base / "rev"
    (rev / "scripts").mkdir(parents=True)
    (rev / "app.txt").write_text("app\n")
    (rev / "appspec.yml").write_text(textwrap.dedent(f"""\
        version: 0.0
        os: linux
        files:
          - source: app.txt
            destination: {base}/dest
        hooks:
          AfterInstall:
            - location: scripts/hook.sh
        """))
    (rev / "scripts" / "hook.sh").write_text('#!/bin/sh\necho "umask $(umask)"\n')
    for p, m in ((rev, 0o755), (rev / "scripts", 0o755), (rev / "app.txt", 0o644),
                 (rev / "appspec.yml", 0o644), (rev / "scripts" / "hook.sh", 0o755)):
        p.chmod(m)
    cfg = base / "agent.yml"
    cfg.write_text(f":root_dir: '{base}/root'\n:log_dir: '{base}/log/'\n:max_revisions: 5\n")
    (base / "cwd").mkdir()
    return rev, cfg


def deploy(kind: str, base: Path, rev: Path, cfg: Path, umask: int) -> str:
    """One deployment of ``rev`` into group g1 under ``umask``; returns the deployment id."""
    if kind == "local":
        argv = [*CLI, "local", "--bundle-location", str(rev), "--type", "directory",
                "--deployment-group", GROUP, "--agent-configuration-file", str(cfg)]
    else:
        argv = [*CLI, "deploy", "--host", "-q", "-c", str(cfg), "-g", GROUP,
                "--type", "directory", str(rev)]
    before = set(os.listdir(base / "root" / GROUP)) if (base / "root" / GROUP).is_dir() else set()
    r = run(argv, umask, base / "cwd")
    assert r.returncode == 0, r.stdout + r.stderr
    (did,) = set(os.listdir(base / "root" / GROUP)) - before
    return did


def tree(base: Path) -> dict[str, str]:
    """Every entry below ``base`` (``base`` itself as '.'): relative path -> 'd 0755' / 'f 0644'."""
    out = {".": f"d {stat.S_IMODE(base.lstat().st_mode):04o}"}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            kind = "d" if stat.S_ISDIR(st.st_mode) else "f" if stat.S_ISREG(st.st_mode) else "?"
            out[str(p.relative_to(base))] = f"{kind} {stat.S_IMODE(st.st_mode):04o}"
    return out


def expected_root(umask: int, did: str, hook_logs: bool = True) -> dict[str, str]:
    d, f = "d %04o" % (0o777 & ~umask), "f %04o" % (0o666 & ~umask)
    dep = f"{GROUP}/{did}"
    want = {
        ".": d,
        "deployment-instructions": d,
        f"deployment-instructions/{GROUP}-cleanup": f,
        f"deployment-instructions/{GROUP}-install.json": f,
        f"deployment-instructions/{GROUP}_last_successful_install": f,
        f"deployment-instructions/{GROUP}_most_recent_install": f,
        "deployment-logs": d,
        GROUP: d,
        dep: d,
        f"{dep}/deployment-archive": d,
        f"{dep}/deployment-archive/scripts": d,
        # a directory bundle's copy: source mode & ~umask (§4.4, §6.8)
        f"{dep}/deployment-archive/app.txt": "f %04o" % (0o644 & ~umask),
        f"{dep}/deployment-archive/appspec.yml": "f %04o" % (0o644 & ~umask),
        f"{dep}/deployment-archive/scripts/hook.sh": "f %04o" % (0o755 & ~umask),
        f"{dep}/logs": d,
    }
    if hook_logs:
        want["deployment-logs/codedeploy-agent-deployments.log"] = f
        want[f"{dep}/logs/scripts.log"] = f
    return want


def expected_log(umask: int, did: str) -> dict[str, str]:
    d, f = "d %04o" % (0o777 & ~umask), "f %04o" % (0o666 & ~umask)
    return {".": d, "codedeploy-local.log": f, "cdsim-events": d, f"cdsim-events/{GROUP}": d,
            f"cdsim-events/{GROUP}/{did}.jsonl": f}


def _is_hook_log(path: str) -> bool:
    return path == "deployment-logs/codedeploy-agent-deployments.log" or path.endswith("/logs/scripts.log")


@pytest.fixture(scope="module", params=[(k, u) for k in ("local", "deploy-host") for u in UMASKS],
                ids=lambda p: f"{p[0]}-{p[1]:03o}")
def deployed(request, tmp_path_factory):
    """(umask, base folder, deployment id) of one deployment, run once per module."""
    kind, umask = request.param
    base = tmp_path_factory.mktemp(f"umask-{kind}-{umask:03o}")
    rev, cfg = make_site(base)
    return umask, base, deploy(kind, base, rev, cfg, umask)


def test_root_and_log_folder_modes_follow_the_umask(deployed):
    """Every folder and file in the deployment root and the log folder (hook logs: next test)."""
    umask, base, did = deployed
    got = {p: m for p, m in tree(base / "root").items() if not _is_hook_log(p)}
    assert got == expected_root(umask, did, hook_logs=False)
    assert tree(base / "log") == expected_log(umask, did)


def test_scripts_log_and_deployments_log_modes_follow_the_umask(deployed):
    umask, base, did = deployed
    f = "f %04o" % (0o666 & ~umask)
    want = {"deployment-logs/codedeploy-agent-deployments.log": f, f"{GROUP}/{did}/logs/scripts.log": f}
    got = {p: m for p, m in tree(base / "root").items() if _is_hook_log(p)}
    assert got == want


def test_installed_files_keep_the_archive_copys_mode(deployed):
    """§6.8: a directory bundle's file is installed with source mode & ~umask, a new folder 0777 & ~umask."""
    umask, base, _ = deployed
    assert tree(base / "dest") == {".": "d %04o" % (0o777 & ~umask), "app.txt": "f %04o" % (0o644 & ~umask)}


def test_the_hook_inherits_the_umask(deployed):
    umask, base, did = deployed
    log = (base / "root" / GROUP / did / "logs" / "scripts.log").read_text()
    assert f"[stdout]umask {umask:04o}\n" in log


def test_a_second_deployment_under_another_umask(tmp_path):
    """Folders and appended files made under 077 keep their modes under 002; the deployment's new
    folders and files take 002; the markers and install.json, replaced atomically, take 002 too
    (the agent truncates and rewrites them in place, keeping 0600: see README, differences)."""
    rev, cfg = make_site(tmp_path)
    first = deploy("local", tmp_path, rev, cfg, 0o077)
    second = deploy("local", tmp_path, rev, cfg, 0o002)
    root = tree(tmp_path / "root")
    for path in (".", "deployment-instructions", "deployment-logs", GROUP, f"{GROUP}/{first}",
                 f"{GROUP}/{first}/logs"):
        assert root[path] == "d 0700", path
    assert root["deployment-logs/codedeploy-agent-deployments.log"] == "f 0600"   # appended to
    assert root[f"{GROUP}/{first}/logs/scripts.log"] == "f 0600"
    for path in (f"{GROUP}/{second}", f"{GROUP}/{second}/logs", f"{GROUP}/{second}/deployment-archive"):
        assert root[path] == "d 0775", path
    for name in (f"{GROUP}-cleanup", f"{GROUP}-install.json", f"{GROUP}_last_successful_install",
                 f"{GROUP}_most_recent_install"):
        assert root[f"deployment-instructions/{name}"] == "f 0664", name
    assert tree(tmp_path / "log")["codedeploy-local.log"] == "f 0600"   # appended to


# Python ignores SIGXFSZ at start-up (a write past the limit then raises): restore the default, a crash
ATOMIC_WRITE = ("import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
                "from agent.fsutil import atomic_write; atomic_write(sys.argv[1], sys.argv[2] * 100000)")


def test_an_interrupted_atomic_write_leaves_the_right_mode_on_the_next_one(tmp_path):
    """A marker written under 022, then a write under 077 killed half-way (SIGXFSZ at a 4 KiB file
    size limit, the signal's default action): the marker is untouched (content and 0644), a temp file
    is left beside it; the next deployment under 077 replaces the marker with a 0600 one."""
    import resource

    rev, cfg = make_site(tmp_path)
    did = deploy("local", tmp_path, rev, cfg, 0o022)
    marker = tmp_path / "root" / "deployment-instructions" / f"{GROUP}_most_recent_install"
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644

    def limited():
        os.umask(0o077)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", ATOMIC_WRITE, str(marker), "x"], env=env, capture_output=True,
                       timeout=60, preexec_fn=limited)
    assert r.returncode == -signal.SIGXFSZ, r
    assert marker.read_text().endswith(f"/{GROUP}/{did}")
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644
    (leftover,) = [p for p in marker.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftover.name.startswith(f".{marker.name}.") and leftover.stat().st_size == 4096
    assert stat.S_IMODE(leftover.stat().st_mode) == 0o600

    did2 = deploy("local", tmp_path, rev, cfg, 0o077)
    assert marker.read_text().endswith(f"/{GROUP}/{did2}")
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600


@pytest.mark.parametrize("umask", UMASKS, ids=lambda u: f"{u:03o}")
def test_an_atomic_write_takes_0666_minus_the_umask_and_private_0600(tmp_path, umask):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    code = ("from agent.fsutil import atomic_write; import sys; "
            "atomic_write(sys.argv[1], 'a'); atomic_write(sys.argv[2], 'b', private=True)")
    r = run([sys.executable, "-c", code, str(tmp_path / "plain"), str(tmp_path / "private")], umask,
            tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600 & ~umask


def test_the_instance_store_stays_private_under_a_loose_umask(tmp_path):
    """`cdsim instance create` under umask 002: the instance folder 0700, meta.json 0600."""
    env = dict(os.environ, CDSIM_STATE_DIR=str(tmp_path / "state"))
    r = run([*CLI, "instance", "create", "umask-probe"], 0o002, tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    inst = tmp_path / "state" / "instances" / "umask-probe"
    assert stat.S_IMODE(inst.stat().st_mode) == 0o700
    assert stat.S_IMODE((inst / "meta.json").stat().st_mode) == 0o600
