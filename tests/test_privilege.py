"""Privilege (issue 10): ``runas`` gives a hook that user's rights and no more; the deployment root and
the logs get the agent's modes; secrets in the environment reach hooks but never a file or an output
cdsim writes; an unprivileged ``--host`` deployment works where root is not needed and says clearly
where it is.

Real CLI processes; a real user made with useradd (tests/conftest.py); folders in /tmp that the user
can enter (pytest's tmp_path is private to root).
"""
from __future__ import annotations

import os
import stat
import uuid

import pytest
from hostile.harness import GROUP, Site, appspec, interpreter_for, run_cli

from agent.errors import ExitStatus
from tests.lib import needs_root

pytestmark = needs_root("runas and user switching need root (CI runs as root)")


def hooked_revision(site: Site, script: str, *, runas: str | None = None, timeout: int = 30,
                    event: str = "AfterInstall") -> str:
    rev = site.new_dir()
    (rev / "app").mkdir()
    (rev / "app" / "index.txt").write_text("hello\n")
    hooks = f"  {event}:\n    - location: hook.sh\n      timeout: {timeout}\n"
    if runas:
        hooks += f"      runas: {runas}\n"
    (rev / "appspec.yml").write_text(appspec(str(site.target), hooks))
    (rev / "hook.sh").write_text("#!/bin/sh\n" + script)
    (rev / "hook.sh").chmod(0o755)
    for path in (rev, rev / "app"):
        path.chmod(0o755)
    return str(rev)


def scripts_log(site: Site) -> str:
    return "".join(p.read_text(errors="replace") for p in site.root.glob(f"{GROUP}/*/logs/scripts.log"))


def test_runas_hook_has_only_that_users_rights(runas_user, shared_dir):
    """A runas hook runs with the user's uid and groups: it cannot write or read a root-only file, nor
    write into a root-owned folder; the deployment fails as the agent's does (the script's exit 1)."""
    site = Site(shared_dir)
    secret = site.outside / "root-only.txt"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    site.outside.chmod(0o755)
    script = (f'id -u; id -G\n'
              f'cat {secret} && echo READ-ROOT-ONLY\n'
              f'echo pwned >> {secret} && echo WROTE-ROOT-ONLY\n'
              f'touch {site.outside}/new && echo CREATED-IN-ROOT-FOLDER\n'
              f'exit 1\n')
    rev = hooked_revision(site, script, runas=runas_user.pw_name)
    before = site.outside_snapshot()
    run = site.deploy(rev)
    assert run.returncode == ExitStatus.HOOK_FAILED, run.explain()
    assert f"run as user {runas_user.pw_name} failed with exit code 1" in run.output
    log = scripts_log(site)
    assert f"[stdout]{runas_user.pw_uid}\n" in log
    assert f"[stdout]{runas_user.pw_gid}\n" in log  # no supplementary groups (root's included)
    for flag in ("READ-ROOT-ONLY", "WROTE-ROOT-ONLY", "CREATED-IN-ROOT-FOLDER", "root only"):
        assert flag not in log
    assert "Permission denied" in log
    assert site.outside_snapshot() == before


def test_root_and_logs_get_the_agents_modes(tmp_path):
    """Under umask 022 every folder cdsim creates in the deployment root and the log folder is 0755
    and every file 0644 (the revision's own files keep their bundle modes)."""
    site = Site(tmp_path)
    rev = hooked_revision(site, "echo hi\n")
    old = os.umask(0o022)
    try:
        run = site.deploy(rev)
        run2 = site.local(rev, "directory")
    finally:
        os.umask(old)
    assert run.returncode == 0, run.explain()
    assert run2.returncode == 0, run2.explain()
    seen = 0
    for top in (site.root, site.logs):
        for dirpath, dirnames, filenames in os.walk(top):
            if "deployment-archive" in dirpath.split(os.sep):
                continue
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if name == "deployment-archive":
                    continue
                mode = os.lstat(path).st_mode
                want = 0o755 if stat.S_ISDIR(mode) else 0o644
                assert stat.S_IMODE(mode) == want, f"{path}: {oct(stat.S_IMODE(mode))}"
                seen += 1
    assert seen >= 15
    assert stat.S_IMODE(os.stat(site.root).st_mode) == 0o755


def test_secrets_reach_hooks_but_no_file_or_output(tmp_path):
    """AWS credentials in cdsim's environment are passed to hooks (as the agent does) but appear in no
    log, event stream, state file or console output, also when a hook times out and is killed."""
    secrets = {"AWS_SECRET_ACCESS_KEY": f"sk-{uuid.uuid4().hex}", "AWS_SESSION_TOKEN": f"st-{uuid.uuid4().hex}",
               "AWS_ACCESS_KEY_ID": f"AKIA{uuid.uuid4().hex[:16].upper()}", "AWS_SECRET_KEY": f"sk2-{uuid.uuid4().hex}"}
    site = Site(tmp_path)
    env = site.env(**secrets)
    seen = site.base / "seen"   # outside the root, the logs and the CLI's folder
    seen.mkdir()
    check = "".join(f'printf %s "${k}" > {seen}/{k}\n' for k in secrets)
    ok = site.deploy(hooked_revision(site, check), env=env)
    assert ok.returncode == 0, ok.explain()
    slow = hooked_revision(site, check + "sleep 30 &\nsleep 30\n", timeout=1)
    timed_out = site.deploy(slow, env=env)
    assert timed_out.returncode == ExitStatus.HOOK_TIMED_OUT, timed_out.explain()
    local = site.local(slow, "directory", "--grace-period", "0.2", env=env)
    assert local.returncode == ExitStatus.HOOK_TIMED_OUT, local.explain()
    for k, v in secrets.items():
        assert (seen / k).read_text() == v, "the hook did not get the variable"
    leaks = []
    for top in (site.root, site.logs, site.cwd):
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                with open(os.path.join(dirpath, name), "rb") as f:
                    data = f.read()
                leaks += [f"{name}: {k}" for k, v in secrets.items() if v.encode() in data]
    for run in (ok, timed_out, local):
        leaks += [f"output: {k}" for k, v in secrets.items() if v in run.output]
    assert leaks == []


@pytest.fixture
def unprivileged(runas_user):
    found = interpreter_for(runas_user.pw_uid, runas_user.pw_gid)
    if found is None:
        pytest.skip("no Python interpreter with PyYAML is reachable by an unprivileged user")
    return found


def test_host_deploy_as_non_root_where_root_is_not_needed(runas_user, shared_dir, unprivileged):
    """An unprivileged `cdsim deploy --host` to a root and target it owns just works."""
    python, env = unprivileged
    site = Site(shared_dir)
    for d in (site.target, site.cwd, site.base):
        os.chown(d, runas_user.pw_uid, runas_user.pw_gid)
    env = dict(env, CDSIM_STATE_DIR=str(site.base / "state"))
    run = site.deploy(site.good_revision(), python=python, env=env)
    assert run.returncode == 0, run.explain()
    assert "root" not in run.stderr
    assert (site.target / "f0.txt").exists()
    assert os.stat(site.root).st_uid == runas_user.pw_uid


def test_host_deploy_as_non_root_where_root_is_needed(runas_user, shared_dir, unprivileged):
    """An unprivileged `cdsim deploy --host` into a root-owned deployment root fails at once with a
    clear message and hint (exit ENVIRONMENT), no traceback, nothing created."""
    python, env = unprivileged
    site = Site(shared_dir)
    state = site.base / "state"
    state.mkdir()
    for d in (site.cwd, state):
        os.chown(d, runas_user.pw_uid, runas_user.pw_gid)
    env = dict(env, CDSIM_STATE_DIR=str(state))
    protected = site.base / "protected"
    protected.mkdir(mode=0o755)
    root, logs = protected / "deployment-root", protected / "log"
    rev = str(site.good_revision())
    # a deployment root only root may create
    argv = [*python, "-m", "agent", "deploy", "--host", "--root-dir", str(root), rev]
    run = run_cli(argv, cwd=site.cwd, env=env)
    assert run.returncode == ExitStatus.ENVIRONMENT, run.explain()
    assert f"cannot use the deployment root {root}: permission denied" in run.output
    assert "needs root" in run.output and "Traceback" not in run.output
    # the agent-exact CLI with a log folder only root may create
    config = state / "agent.yml"
    config.write_text(f"root_dir: {state}/root\nlog_dir: {logs}\n")
    run = run_cli([*python, "-m", "agent", "local", "-l", rev, "-c", str(config)], cwd=site.cwd, env=env)
    assert run.returncode == ExitStatus.ENVIRONMENT, run.explain()
    assert f"ERROR: cannot write the log folder {logs}: permission denied" in run.stdout
    assert "needs root" in run.stderr and "Traceback" not in run.output
    assert os.listdir(protected) == []
