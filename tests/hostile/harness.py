"""Shared helpers of the hostile, crash, concurrency and privilege tests: a deployment *site* in a temp
folder (deployment root, log folder, target, a sentinel folder beside them), archive builders, tree
snapshots, and running the real CLI as a subprocess with its time and peak memory measured.

Test helper only: imports nothing from cdsim (it drives the CLI as a user would).
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.lib import CLI

GROUP = "g1"
REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
CHR, BLK, FIFO = tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE
MEMORY_LIMIT = 2 << 30      # RLIMIT_AS of every CLI run: a runaway allocation fails instead of swapping


def snapshot(top, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Everything under ``top``: type, mode, size, content and link target (folder mtimes aside).
    ``skip``: top-level names left out."""
    out: dict[str, tuple] = {}
    top = str(top)
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath == top:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, top)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[rel] = ("file", st.st_mode, st.st_uid, st.st_nlink, f.read(), st.st_mtime_ns)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            else:
                out[rel] = ("other", st.st_mode, st.st_uid)
    return out


def tree(top) -> dict[str, tuple]:
    """What a deployed tree *is* (type, permission bits, content, link text), without times or owners:
    equal for two deployments of the same revision."""
    out: dict[str, tuple] = {}
    top = str(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, top)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), f.read())
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            else:
                out[rel] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", stat.S_IMODE(st.st_mode))
    return out


def tar_with(path, *members: tuple[str, str, dict], fmt: int = tarfile.PAX_FORMAT) -> str:
    """A tar (gzip'ed when the name ends in gz) of (name, type, attrs) members; attrs may set data,
    linkname, mode, devmajor..."""
    with tarfile.open(path, "w:gz" if str(path).endswith("gz") else "w", format=fmt) as t:
        for name, kind, attrs in members:
            attrs = dict(attrs)
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.mode = 0o755 if kind == DIR else 0o644
            data = attrs.pop("data", b"")
            for key, value in attrs.items():
                setattr(ti, key, value)
            if kind == REG:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return str(path)


def zip_with(path, *entries: tuple[str, bytes, int | None]) -> str:
    """A zip of (name, data, unix st_mode or None) entries."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data, mode in entries:
            zi = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            if mode is not None:
                zi.create_system = 3
                zi.external_attr = mode << 16
            z.writestr(zi, data)
    return str(path)


def appspec(destination: str, hooks: str = "", extra: str = "") -> str:
    text = f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: {destination}\n{extra}"
    if hooks:
        text += "hooks:\n" + hooks
    return text


@dataclass
class Run:
    argv: list
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    maxrss_kib: int

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def explain(self) -> str:
        return (f"{' '.join(map(str, self.argv))}\nexit {self.returncode} in {self.elapsed:.1f}s, "
                f"{self.maxrss_kib} KiB\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")


def run_cli(argv: list, *, cwd, env: dict | None = None, timeout: float = 120.0,
            memory_limit: int | None = MEMORY_LIMIT) -> Run:
    """Run a command to completion, measuring its wall time and peak RSS (wait4 on it alone)."""
    if memory_limit and shutil.which("prlimit"):  # prlimit execs the command: same pid, same rusage
        argv = ["prlimit", f"--as={memory_limit}", "--", *argv]
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        with proc:
            deadline = start + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    os.wait4(proc.pid, 0)
                    proc.returncode = -9
                    raise AssertionError(f"{argv} did not finish within {timeout}s")
                time.sleep(0.01)
            proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return Run(argv, proc.returncode, stdout, stderr, elapsed, usage.ru_maxrss)


class Site:
    """A deployment site under ``base``: ``root`` (deployment root), ``logs`` (log_dir), ``target``
    (where revisions install), ``outside`` (a sentinel tree that must never change), ``bundles``
    (the bundles we build), ``cwd`` (the CLI's working folder) and ``agent.yml``."""

    WRITABLE = ("root", "logs", "target")   # what a deployment may change

    def __init__(self, base):
        self.base = Path(base)
        self.root, self.logs, self.target = self.base / "root", self.base / "logs", self.base / "target"
        self.outside, self.bundles, self.cwd = self.base / "outside", self.base / "bundles", self.base / "cwd"
        self.cfg = self.base / "agent.yml"
        for d in (self.target, self.outside, self.bundles, self.cwd, self.outside / "sub"):
            d.mkdir(parents=True, exist_ok=True)
        (self.outside / "keep.txt").write_text("keep\n")
        (self.outside / "sub" / "keep2.txt").write_text("keep2\n")
        os.chmod(self.outside / "keep.txt", 0o644)
        self.cfg.write_text(f"root_dir: {self.root}\nlog_dir: {self.logs}\nmax_revisions: 5\n")
        self._n = 0

    # -- running the CLI -------------------------------------------------------------------------
    def env(self, **extra: str) -> dict:
        env = dict(os.environ, CDSIM_STATE_DIR=str(self.base / "state"), **extra)
        env.pop("CDSIM_DEBUG", None)
        return env

    def deploy(self, bundle, kind: str | None = None, *extra, timeout: float = 120.0, env=None,
               python: list | None = None, **kw) -> Run:
        """``cdsim deploy --host -c agent.yml -g g1 [--type kind] BUNDLE`` (``python``: the interpreter
        command, e.g. one that drops privileges first)."""
        argv = [*(python or [sys.executable]), "-m", "agent", "deploy", "--host", "-c", self.cfg,
                "-g", GROUP, "--grace-period", "0.5", *extra]
        if kind:
            argv += ["--type", kind]
        argv.append(bundle)
        return run_cli(argv, cwd=self.cwd, env=env or self.env(), timeout=timeout, **kw)

    def local(self, bundle, kind: str, *extra, timeout: float = 120.0, env=None, **kw) -> Run:
        """``cdsim local -l BUNDLE -t kind -g g1 -c agent.yml`` (the agent-exact CLI)."""
        argv = [*CLI, "local", "-l", bundle, "-t", kind, "-g", GROUP,
                "-c", self.cfg, *extra]
        return run_cli(argv, cwd=self.cwd, env=env or self.env(), timeout=timeout, **kw)

    # -- bundles -------------------------------------------------------------------------------------
    def new_dir(self, name: str | None = None) -> Path:
        self._n += 1
        d = self.bundles / (name or f"rev{self._n}")
        d.mkdir(parents=True)
        return d

    def good_revision(self, version: str = "1", files: int = 3) -> Path:
        """A directory bundle installing ``files`` small files into ``target``."""
        rev = self.new_dir(f"good{version}-{self._n}")
        (rev / "app").mkdir()
        for i in range(files):
            (rev / "app" / f"f{i}.txt").write_text(f"version {version} file {i}\n")
        (rev / "appspec.yml").write_text(appspec(str(self.target)))
        return rev

    # -- state ------------------------------------------------------------------------------------
    @property
    def instructions(self) -> Path:
        return self.root / "deployment-instructions"

    def state_files(self) -> dict[str, bytes | None]:
        """The four files of the group in deployment-instructions (None: absent)."""
        out = {}
        for name in (f"{GROUP}-cleanup", f"{GROUP}-install.json", f"{GROUP}_last_successful_install",
                     f"{GROUP}_most_recent_install"):
            try:
                out[name] = (self.instructions / name).read_bytes()
            except FileNotFoundError:
                out[name] = None
        return out

    def outside_snapshot(self) -> dict:
        """Everything the deployment must not change: the whole site except root, logs and target."""
        return snapshot(self.base, skip=self.WRITABLE)


def interpreter_for(uid: int, gid: int) -> tuple[list, dict] | None:
    """A Python command an unprivileged user can run cdsim with (the test interpreter may live under a
    private home, e.g. /root/.pyenv), and the environment it needs; None if there is none."""
    repo = str(Path(__file__).resolve().parents[2])
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    for py, extra in ((sys.executable, {}), ("/usr/bin/python3", {"PYTHONPATH": repo})):
        env = dict(os.environ, **extra)
        probe = subprocess.run([*drop, py, "-c", "import yaml, agent.cli"], env=env, cwd="/",
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return [*drop, py], env
    return None
