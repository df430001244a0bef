"""The README's promise: `cdsim deploy sample_app` works without root.

A real user made with useradd (with subordinate uid/gid ranges, as useradd gives on Debian, or usermod
adds) deploys the sample app twice into its default instance: BeforeInstall's `useradd ec2-user` under
`su root`, Install's chown to ec2-user, the server on port 80 and ValidateService all happen inside the
instance; `cdsim instance destroy default` as that user then removes everything, files of ec2-user
(a subordinate uid on disk) included. The host gains no user and no file.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import pytest
from test_instance import subordinate_ids

from tests import lib
from tests.lib import REPO, require_tool, user_python

EXPECTED_TEXT = "Hello from cdsim sample app"

pytestmark = lib.needs_root("creating a user with useradd and su to it needs root (CI runs as root)")


@pytest.fixture
def deployer():
    """A fresh user with subordinate ids, removed afterwards."""
    name = f"cdsimdp{os.getpid() % 100000}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        subordinate_ids(name)
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


def _user_processes(uid: int) -> list[int]:
    left = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if os.stat(f"/proc/{pid}").st_uid == uid and state not in "ZX":
                left.append(pid)
        except OSError:
            continue
    return left


def test_unprivileged_user_deploys_the_sample_twice_and_destroy_removes_everything(deployer, shared_dir):
    """As a non-root user with subordinate ids: two deployments of sample_app succeed (ValidateService
    prints the page), ec2-user's files belong to a subordinate uid inside the instance folder, destroy
    as that user removes it all, and the host has no ec2-user and no /home/ec2-user/sample-app."""
    require_tool("newuidmap", "uidmap")
    require_tool("newgidmap", "uidmap")
    python = user_python(deployer.pw_name)
    if python is None:   # as in test_instance: a checkout other users can't read can't be run by them
        pytest.skip(f"no interpreter both runnable by {deployer.pw_name} and able to import agent from {REPO}")
    host_user = subprocess.run(["id", "ec2-user"], capture_output=True, check=False).returncode == 0
    host_app = os.path.lexists("/home/ec2-user/sample-app")
    bundle = os.path.join(shared_dir, "sample_app")
    shutil.copytree(os.path.join(REPO, "sample_app"), bundle)
    subprocess.run(["chmod", "-R", "a+rX", bundle], check=True)
    state = os.path.join(shared_dir, "state")
    os.mkdir(state)
    os.chown(state, deployer.pw_uid, deployer.pw_gid)
    # an ordinary Debian user's PATH (no /usr/sbin, where groupadd and useradd are): hooks get the agent
    # service's environment, not this one, so the sample's BeforeInstall still finds them
    path = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"

    def cdsim(*args: str) -> subprocess.CompletedProcess:
        return lib.cdsim(*args, user=deployer.pw_name, python=python, env={"PATH": path}, state=state,
                         cwd=shared_dir, timeout=180)

    folder = os.path.join(state, "instances", "default")
    try:
        first = cdsim("deploy", bundle)
        assert first.returncode == 0, first.stdout + first.stderr
        assert EXPECTED_TEXT in first.stdout and "ValidateService passed" in first.stdout
        assert host_user or "created user ec2-user" in first.stdout
        second = cdsim("deploy", bundle)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "stopped the server" in second.stdout and "user ec2-user exists" in second.stdout
        assert EXPECTED_TEXT in second.stdout

        with open(os.path.join(folder, "meta.json")) as f:
            assert '"id_helpers": true' in f.read()
        app = os.stat(os.path.join(folder, "upper", "home", "ec2-user", "sample-app", "serve.py"))
        assert app.st_uid not in (0, deployer.pw_uid)   # chowned to ec2-user: a subordinate uid

        destroyed = cdsim("instance", "destroy", "default")
        assert destroyed.returncode == 0, destroyed.stderr
        assert os.listdir(os.path.join(state, "instances")) == []
        assert _user_processes(deployer.pw_uid) == []
    finally:
        if os.path.isdir(folder):
            cdsim("instance", "destroy", "default")
    assert (subprocess.run(["id", "ec2-user"], capture_output=True, check=False).returncode == 0) == host_user
    assert os.path.lexists("/home/ec2-user/sample-app") == host_app


def test_without_subordinate_ids_the_sample_stops_at_once_with_the_exact_fix(user_without_subids, shared_dir):
    """An ordinary user without subordinate ids: `cdsim deploy sample_app` (which needs ec2-user inside)
    stops before any hook with one message naming the free range to add; a bundle that needs no other
    user deploys, and says nothing about ids."""
    from agent.instance.idmap import SUBGID_FILE, SUBUID_FILE, free_range
    python = user_python(user_without_subids.pw_name)
    if python is None:
        pytest.skip(f"no interpreter both runnable by {user_without_subids.pw_name} and able to import agent")
    bundle = os.path.join(shared_dir, "sample_app")
    shutil.copytree(os.path.join(REPO, "sample_app"), bundle)
    plain = os.path.join(shared_dir, "plain")
    os.mkdir(plain)
    with open(os.path.join(plain, "appspec.yml"), "w") as f:
        f.write("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: hi.sh\n")
    with open(os.path.join(plain, "hi.sh"), "w") as f:
        f.write("#!/bin/sh\necho hello from $(id -un)\n")
    subprocess.run(["chmod", "-R", "a+rX", bundle, plain], check=True)
    os.chmod(os.path.join(plain, "hi.sh"), 0o755)
    state = os.path.join(shared_dir, "state")
    os.mkdir(state)
    os.chown(state, user_without_subids.pw_uid, user_without_subids.pw_gid)

    def cdsim(*args: str) -> subprocess.CompletedProcess:
        return lib.cdsim(*args, user=user_without_subids.pw_name, python=python,
                         env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, state=state, cwd=shared_dir, timeout=180)

    with open(SUBUID_FILE) as u, open(SUBGID_FILE) as g:
        start = free_range(u.read(), g.read())
    try:
        refused = cdsim("deploy", bundle)
        assert refused.returncode == 7, refused.stdout + refused.stderr
        assert "BeforeInstall" not in refused.stdout and EXPECTED_TEXT not in refused.stdout
        errors = [line for line in refused.stderr.splitlines() if line.startswith("cdsim: error:")]
        assert len(errors) == 1, refused.stderr
        assert "the bundle needs ec2-user inside instance 'default'" in errors[0]
        assert (f"`usermod --add-subuids {start}-{start + 65535} --add-subgids {start}-{start + 65535} "
                f"{user_without_subids.pw_name}`") in errors[0]
        fine = cdsim("deploy", plain)
        assert fine.returncode == 0, fine.stdout + fine.stderr
        assert "hello from root" in fine.stdout and "subordinate" not in fine.stdout + fine.stderr
        # the administrator runs the command: the running instance is re-mapped, the sample deploys
        require_tool("newuidmap", "uidmap")
        subprocess.run(["usermod", "--add-subuids", f"{start}-{start + 65535}", "--add-subgids",
                        f"{start}-{start + 65535}", user_without_subids.pw_name], check=True)
        again = cdsim("deploy", bundle)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "restarting instance 'default' so that it maps your subordinate ids" in again.stderr
        assert EXPECTED_TEXT in again.stdout
    finally:
        cdsim("instance", "destroy", "default")
