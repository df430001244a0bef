"""Sandboxed instances: isolation of files, processes, hostname and network; diff; stop; destroy.

Every test that starts an instance runs real namespaces and overlays (CI runs as root). Safety checks
only ever touch files the test itself created on the host, and snapshot them before and after.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

import agent.instance as inst
from agent.errors import ExitStatus, UsageError
from agent.instance.diff import Change, changes
from agent.instance.idmap import plan, subordinate_range
from agent.instance.overlay import layered_mounts, shadow_lines, synthesize_accounts
from tests import lib
from tests.lib import REPO, require_tool, user_python

needs_root = lib.needs_root("instances need root on this machine (CI runs as root); "
                            "the unprivileged case is test_unprivileged_user_*")

# Docker's default capability set without mknod: chown, dac_override, fowner, fsetid, kill, setgid,
# setuid, setpcap, net_bind_service, net_raw, sys_chroot, audit_write, setfcap
DOCKER_DEFAULT_LESS_MKNOD = sum(1 << n for n in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 29, 31))

HANDLE_PY = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
handle = ctypes.create_string_buffer((128).to_bytes(4, "little") + bytes(132))
mount_id = ctypes.c_int()
named = libc.name_to_handle_at(-100, b"/dev/null", handle, ctypes.byref(mount_id), 0)
mount_fd = os.open("/dev/null", os.O_RDONLY)
opened = libc.open_by_handle_at(mount_fd, handle, os.O_RDONLY)
print("name_to_handle_at", "ok" if named == 0 else "failed")
print("open_by_handle_at", "opened" if opened >= 0 else errno.errorcode[ctypes.get_errno()])
"""


cli = functools.partial(lib.cdsim, "instance")   # `cdsim instance ARGS`


def run_in(instance, script: str, **kw) -> subprocess.CompletedProcess:
    """Run a shell script inside; return its status and output."""
    out = os.path.join(instance.path, f"out-{uuid.uuid4().hex}")
    with open(out, "w+") as f:
        status = inst.exec_in(instance, ["/bin/sh", "-c", script], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, **kw)
        f.seek(0)
        text = f.read()
    os.unlink(out)
    return subprocess.CompletedProcess(script, status, text, "")


def make_host_files(conf: str, edit: str, folder: str) -> None:
    """Host files the test owns (never real system files): a file to delete, one to edit, a folder."""
    with open(conf, "w") as f:
        f.write("host\n")
    with open(edit, "w") as f:
        f.write("original\n")
    os.makedirs(folder + "/sub")
    with open(folder + "/sub/data", "w") as f:
        f.write("data\n")


def snapshot(*paths: str) -> dict:
    """Type, mode, owner and content hash of each path and everything below it."""
    shot = {}
    for top in paths:
        walked = os.walk(top) if os.path.isdir(top) else [(os.path.dirname(top), [], [os.path.basename(top)])]
        for dirpath, dirs, files in walked:
            for name in ["", *dirs, *files]:
                path = os.path.join(dirpath, name) if name else dirpath
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    shot[path] = None
                    continue
                digest = None
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                shot[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, digest)
    return shot


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _poll(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def live(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


SERVE = "cd {folder} && nohup python3 -m http.server 80 >/dev/null 2>&1 &"
FETCH = ("import urllib.request,sys,time\n"
         "for _ in range(100):\n"
         "    try:\n"
         "        page = urllib.request.urlopen('http://127.0.0.1:80/index.html', timeout=2)\n"
         "        print(page.read().decode(), end=''); break\n"
         "    except OSError: time.sleep(0.1)\n"
         "else: sys.exit(9)\n")


@needs_root
class TestFilesStayInTheInstance:
    def test_writes_and_deletions_leave_the_host_unchanged_and_show_in_diff(self, state):
        """A hook's writes under /etc, /usr, /root and deletions of a host file and folder change only the instance."""
        tag = uuid.uuid4().hex[:12]
        host_conf = f"/etc/cdsim-test-{tag}.conf"
        host_dir = f"/usr/share/cdsim-test-{tag}"
        host_edit = f"/etc/cdsim-test-{tag}-edit.conf"
        new_paths = [f"/etc/cdsim-test-{tag}-new.conf", f"/usr/local/bin/cdsim-test-{tag}",
                     f"/root/cdsim-test-{tag}"]
        try:
            make_host_files(host_conf, host_edit, host_dir)
            before = snapshot(host_conf, host_dir, host_edit, *new_paths)
            i = inst.create("files")
            script = (f"echo new > {new_paths[0]} && touch {new_paths[1]} && mkdir {new_paths[2]} && "
                      f"echo changed >> {host_edit} && rm {host_conf} && rm -r {host_dir} && "
                      f"cat {host_edit} && ls {host_conf} {host_dir} 2>&1; true")
            result = run_in(i, script)
            assert "original\nchanged\n" in result.stdout
            assert "No such file" in result.stdout
            assert snapshot(host_conf, host_dir, host_edit, *new_paths) == before
            found = {c for c in inst.diff(i) if tag in c.path}
            assert found == {Change(new_paths[0], "added"), Change(new_paths[1], "added"),
                             Change(new_paths[2], "added"), Change(host_edit, "changed"),
                             Change(host_conf, "deleted"), Change(host_dir, "deleted")}
            # after a restart the instance still has its changes
            inst.stop(i)
            again = run_in(i, f"cat {new_paths[0]}; test -e {host_conf} || echo gone")
            assert again.stdout == "new\ngone\n"
        finally:
            os.unlink(host_conf)
            os.unlink(host_edit)
            shutil.rmtree(host_dir)

    def test_folder_removed_and_made_again_hides_the_host_entries(self, state):
        """`rm -r` then `mkdir` of a host folder makes it opaque: its host entries are deletions."""
        folder = f"/usr/share/cdsim-test-{uuid.uuid4().hex[:12]}"
        try:
            os.makedirs(folder + "/sub")
            for name in ("a", "sub/b"):
                with open(os.path.join(folder, name), "w") as f:
                    f.write(name)
            before = snapshot(folder)
            i = inst.create("opaque")
            assert run_in(i, f"rm -r {folder} && mkdir {folder} && touch {folder}/c && ls {folder}").stdout == "c\n"
            assert [c for c in inst.diff(i) if c.path.startswith(folder)] == [
                Change(folder + "/a", "deleted"), Change(folder + "/c", "added"), Change(folder + "/sub", "deleted")]
            assert snapshot(folder) == before
        finally:
            shutil.rmtree(folder)

    def test_touch_in_usr_local_bin_shows_in_cli_diff(self, state):
        """`touch /usr/local/bin/x` inside is an `A` line of `cdsim instance diff`, text and JSON."""
        name = f"x-{uuid.uuid4().hex[:8]}"
        assert cli("create", "diffy").returncode == 0
        done = cli("exec", "diffy", "--", "touch", f"/usr/local/bin/{name}")
        assert done.returncode == 0, done.stderr
        assert not os.path.exists(f"/usr/local/bin/{name}")
        text = cli("diff", "diffy")
        assert f"A /usr/local/bin/{name}" in text.stdout.splitlines()
        as_json = json.loads(cli("diff", "diffy", "--format", "json").stdout)
        assert {"path": f"/usr/local/bin/{name}", "kind": "added"} in as_json

    def test_stop_then_the_next_command_sees_host_changes(self, state, tmp_path):
        """README: a running instance may read a host file as it was (overlayfs does not follow its lower
        layer); after `instance stop`, the next command restarts it over the host as it is."""
        host = tmp_path / "conf.txt"
        host.write_text("one\n")
        i = inst.create("refresh")
        assert run_in(i, f"cat {host}").stdout == "one\n"
        (tmp_path / "conf.new").write_text("two\n")
        os.rename(tmp_path / "conf.new", host)   # as an editor saves: the old file is replaced
        assert cli("stop", "refresh").returncode == 0
        assert run_in(i, f"cat {host}").stdout == "two\n"
        assert inst.running(i)

    def test_instance_sees_files_the_host_has(self, state, tmp_path):
        """The lower layer is the host: a file the test writes is readable inside, and a bundle folder too."""
        marker = tmp_path / "marker.txt"
        marker.write_text("from the host\n")
        i = inst.create("lower")
        assert run_in(i, f"cat {marker}").stdout == "from the host\n"


@needs_root
class TestProcessesAndNetwork:
    def test_server_left_by_one_exec_answers_another(self, state):
        """A server started in the background by one exec_in still answers on port 80 in a later one."""
        i = inst.create("web")
        assert run_in(i, "mkdir -p /var/www && echo hello-web > /var/www/index.html && "
                         + SERVE.format(folder="/var/www")).returncode == 0
        fetched = run_in(i, f"python3 -c \"{FETCH}\"")
        assert fetched.returncode == 0 and fetched.stdout == "hello-web\n", fetched.stdout
        assert len(inst.processes(i)) >= 2   # init and the server

    def test_two_instances_bind_port_80_at_once(self, state):
        """Private networks: each instance has its own loopback and its own port 80."""
        pair = [inst.create(n) for n in ("one", "two")]
        for i in pair:
            assert run_in(i, f"mkdir -p /srv/w && echo {i.name} > /srv/w/index.html && "
                             + SERVE.format(folder="/srv/w")).returncode == 0
        for i in pair:
            assert run_in(i, f"python3 -c \"{FETCH}\"").stdout == f"{i.name}\n"

    def test_private_network_hides_host_loopback_and_host_network_shares_it(self, state):
        """A server on the host's loopback is unreachable from a private instance, reachable with --network host."""
        class Hello(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"host-side")

            def log_message(self, *args):
                pass

        server = HTTPServer(("127.0.0.1", 0), Hello)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            probe = ("python3 -c \"import urllib.request;"
                     f"print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3).read().decode())\"")
            private = run_in(inst.create("priv"), probe)
            assert private.returncode != 0 and "host-side" not in private.stdout
            shared = run_in(inst.create("shared", network="host"), probe)
            assert shared.returncode == 0 and shared.stdout == "host-side\n"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    def test_stop_leaves_no_process(self, state):
        """`instance stop` ends init, a background server and a process that ignores SIGTERM."""
        i = inst.create("stopper")
        run_in(i, "nohup sleep 300 >/dev/null 2>&1 & "
                  "nohup sh -c 'trap \"\" TERM; sleep 300' >/dev/null 2>&1 &")
        before = inst.processes(i)
        assert len(before) >= 3
        started = time.monotonic()
        done = cli("stop", "stopper")
        assert done.returncode == 0 and "processes ended" in done.stdout
        assert time.monotonic() - started < 20
        assert not [pid for pid in before if live(pid)]
        assert inst.processes(i) == []
        assert [s.running for s in inst.list_instances()] == [False]

    def test_hostname_pid_namespace_and_capabilities(self, state):
        """Inside: hostname = instance name, our init is PID 1, no CAP_SYS_ADMIN/SYS_MODULE/MKNOD."""
        i = inst.create("box-7")
        out = run_in(i, "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
                        "grep CapBnd /proc/self/status").stdout.splitlines()
        assert out[0] == "box-7"
        assert "agent.instance.keeper" in out[1]
        bounding = int(out[2].split()[1], 16)
        for cap in (21, 16, 27):   # sys_admin, sys_module, mknod
            assert not bounding & (1 << cap)
        assert socket.gethostname() != "box-7"

    def test_root_inside_cannot_mount_make_devices_or_change_kernel_settings(self, state, tmp_path):
        """Even a real-root hook can't mount, mknod or write /proc/sys, and can't read init's host fds.
        (Harmless on the host too: a test folder as mount point, drop_caches as the setting.)"""
        target = tmp_path / "mnt"
        target.mkdir()
        i = inst.create("hard")
        out = run_in(i, f"mount -t tmpfs x {target} 2>/dev/null; echo mount=$?; "
                        f"mknod {tmp_path}/dev b 8 0 2>/dev/null; echo mknod=$?; "
                        "(echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null; echo sysctl=$?; "
                        "readlink /proc/1/fd/1 >/dev/null 2>&1; echo fd=$?").stdout.split()
        assert len(out) == 4 and not [x for x in out if x.endswith("=0")], out
        assert not os.path.ismount(target) and not (tmp_path / "dev").exists()

    def test_shell_reads_commands_from_stdin_and_exec_in_honours_cwd(self, state):
        """`instance shell` runs an interactive shell inside; exec_in's cwd is a folder of the instance."""
        cli("create", "sh1")
        shell = cli("shell", "sh1",
                    input="echo in-$(hostname) > /root/shell-was-here; cat /root/shell-was-here\nexit 4\n")
        assert shell.returncode == 4 and "in-sh1" in shell.stdout
        i = inst.get("sh1")
        assert run_in(i, "mkdir -p /opt/app").returncode == 0
        assert run_in(i, "pwd", cwd="/opt/app").stdout == "/opt/app\n"

    def test_command_in_can_be_spawned_and_killed_as_a_process_group(self, state):
        """command_in gives a host command line; killing its process group ends the command inside."""
        i = inst.create("spawned")
        proc = subprocess.Popen(inst.command_in(i, ["sh", "-c", "echo started; exec sleep 300"]),
                                stdout=subprocess.PIPE, text=True, process_group=0)

        def sleeping() -> bool:
            return any(_cmdline(pid) == "sleep 300" for pid in inst.processes(i))

        try:
            assert proc.stdout.readline() == "started\n"
            assert _poll(sleeping)
            os.killpg(proc.pid, 9)
            assert proc.wait(timeout=10) != 0
            assert _poll(lambda: not sleeping())
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()

    def test_command_line_of_an_instance_stopped_since_says_so(self, state):
        """A command line from command_in whose instance was stopped before it ran exits with the
        environment status and says why, and runs nothing on the host."""
        i = inst.create("gone")
        cmd = inst.command_in(i, ["true"])
        inst.stop(i)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == ExitStatus.ENVIRONMENT
        assert "the instance stopped" in done.stderr

    def test_exec_returns_the_command_status(self, state):
        """`cdsim instance exec` exits with the command's status; stdin reaches the command."""
        cli("create", "codes")
        assert cli("exec", "codes", "--", "sh", "-c", "exit 3").returncode == 3
        echoed = cli("exec", "codes", "--", "cat", input="piped\n")
        assert echoed.stdout == "piped\n"


@needs_root
class TestUsers:
    def test_host_user_and_hook_created_user_work_with_su(self, state, runas_user):
        """A host user exists inside; a user added inside works in a later exec and never reaches the host."""
        i = inst.create("users")
        added = f"cdsimin{uuid.uuid4().hex[:6]}"
        assert run_in(i, f"useradd -m {added}").returncode == 0
        later = run_in(i, f"su {added} -c 'id -un; touch ~/mine; ls ~' && su {runas_user.pw_name} -c 'id -un'")
        assert later.stdout.split() == [added, "mine", runas_user.pw_name], later.stdout
        assert subprocess.run(["id", added], capture_output=True, check=False).returncode != 0
        assert not os.path.exists(f"/home/{added}")
        paths = {c.path for c in inst.diff(i)}
        assert {"/etc/passwd", "/etc/shadow", f"/home/{added}/mine"} <= paths


class TestLifecycle:
    def test_runas_is_possible_for_every_uid_as_root(self, tmp_path):
        """With the identity map (root) any uid can be run as; with a one-uid map only that one."""
        whole = tmp_path / "whole"
        whole.write_text("         0          0 4294967295\n")
        assert inst.unmapped_user_problem(1000, str(whole)) is None
        single = tmp_path / "single"
        single.write_text("         0       1003          1\n")
        assert inst.unmapped_user_problem(0, str(single)) is None
        assert "runas" in inst.unmapped_user_problem(1000, str(single))

    def test_create_get_list_destroy_remove_only_the_instance_folder(self, state):
        """destroy removes that instance's folder and nothing else in the state folder."""
        keep = inst.create("keep")
        gone = inst.create("gone", network="host")
        other = os.path.join(state, "instances", "not-an-instance.txt")
        with open(other, "w") as f:
            f.write("x")
        assert [s.name for s in inst.list_instances()] == ["gone", "keep"]
        assert inst.get("gone").network == "host"
        inst.destroy(gone)
        assert not os.path.exists(gone.path)
        assert os.path.isdir(keep.path) and os.path.isfile(other)
        assert [s.name for s in inst.list_instances()] == ["keep"]

    def test_errors_name_the_problem(self, state):
        """Unknown or duplicate instances and bad names are usage errors with stable references."""
        inst.create("dup")
        with pytest.raises(UsageError) as dup:
            inst.create("dup")
        assert dup.value.reference == "instance-exists"
        assert inst.get_or_create("dup").name == "dup"
        with pytest.raises(UsageError) as unknown:
            inst.get("nope")
        assert unknown.value.reference == "instance-unknown"
        with pytest.raises(UsageError) as bad:
            inst.create("../evil")
        assert bad.value.reference == "instance-name-invalid"
        assert cli("exec", "nope", "--", "true").returncode == ExitStatus.USAGE
        assert cli("create", "dup").returncode == ExitStatus.USAGE

    @needs_root
    def test_instance_that_cannot_start_is_an_environment_error(self, state):
        """When overlayfs refuses the layers, exec exits ENVIRONMENT with why and where to go instead."""
        broken = inst.create("broken")
        os.rmdir(broken.upper)
        with open(broken.upper, "w") as f:
            f.write("not a folder")
        failed = cli("exec", "broken", "--", "true")
        assert failed.returncode == ExitStatus.ENVIRONMENT
        assert "cannot start instance 'broken'" in failed.stderr and "Vagrantfile" in failed.stderr
        assert not inst.running(broken)

    def test_public_api_is_locked(self):
        """The names the lead wires `cdsim deploy` onto."""
        assert inst.__all__ == sorted(inst.__all__)
        assert set(inst.__all__) == {"Change", "Instance", "InstanceStatus", "agent_command", "bind_target",
                                     "command_in", "create", "destroy", "diff", "exec_in", "get", "get_or_create",
                                     "id_map_problem", "list_instances", "made_from_image", "processes",
                                     "running", "start", "state_dir", "stop", "unmapped_user_problem"}

    def test_state_dir_follows_environment(self, monkeypatch):
        """$CDSIM_STATE_DIR, then $XDG_STATE_HOME/cdsim, then ~/.local/state/cdsim."""
        monkeypatch.setenv("CDSIM_STATE_DIR", "/x/y")
        assert inst.state_dir() == "/x/y"
        monkeypatch.delenv("CDSIM_STATE_DIR")
        monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
        assert inst.state_dir() == "/xdg/cdsim"
        monkeypatch.delenv("XDG_STATE_HOME")
        monkeypatch.setenv("HOME", "/home/someone")
        assert inst.state_dir() == "/home/someone/.local/state/cdsim"


class TestDiffReadsTheUpperLayer:
    """diff over hand-made upper layers (what overlayfs writes), against a hand-made host tree."""

    MAPS: ClassVar[dict] = {"uid_map": [[0, 0, 4294967295]], "gid_map": [[0, 0, 4294967295]]}

    def make(self, tmp_path):
        host, upper = tmp_path / "host", tmp_path / "upper"
        (host / "etc" / "app").mkdir(parents=True)
        (host / "etc" / "app" / "a.conf").write_text("a")
        (host / "etc" / "app" / "b.conf").write_text("b")
        (host / "etc" / "keep.conf").write_text("same")
        (host / "etc" / "link").symlink_to("keep.conf")
        (upper / "etc").mkdir(parents=True)
        os.chmod(upper / "etc", os.stat(host / "etc").st_mode & 0o7777)
        return host, upper

    def test_added_changed_and_unchanged_copies(self, tmp_path):
        """New files are added; a copied-up file with the same content, mode and owner is not reported."""
        host, upper = self.make(tmp_path)
        (upper / "etc" / "keep.conf").write_text("same")
        os.chmod(upper / "etc" / "keep.conf", os.stat(host / "etc" / "keep.conf").st_mode & 0o7777)
        (upper / "etc" / "new.conf").write_text("n")
        (upper / "etc" / "link").symlink_to("elsewhere")
        assert changes(str(upper), self.MAPS, str(host)) == [
            Change("/etc/link", "changed"), Change("/etc/new.conf", "added")]

    @lib.needs_root("whiteouts (0/0 device nodes) and trusted.* xattrs need root")
    def test_whiteouts_and_opaque_folders_are_deletions(self, tmp_path):
        """A 0/0 char device and an xattr whiteout delete; an opaque folder deletes what the host had in it."""
        host, upper = self.make(tmp_path)
        os.mknod(upper / "etc" / "keep.conf", stat.S_IFCHR | 0o600, 0)
        (upper / "etc" / "link").write_bytes(b"")
        os.setxattr(upper / "etc" / "link", "trusted.overlay.whiteout", b"y")
        (upper / "etc" / "app").mkdir()
        os.chmod(upper / "etc" / "app", os.stat(host / "etc" / "app").st_mode & 0o7777)
        os.setxattr(upper / "etc" / "app", "trusted.overlay.opaque", b"y")
        (upper / "etc" / "app" / "b.conf").write_text("b2")
        os.mknod(upper / "etc" / "ghost", stat.S_IFCHR | 0o600, 0)   # whiteout of nothing the host has
        assert changes(str(upper), self.MAPS, str(host)) == [
            Change("/etc/app/a.conf", "deleted"), Change("/etc/app/b.conf", "changed"),
            Change("/etc/keep.conf", "deleted"), Change("/etc/link", "deleted")]

    def test_owners_are_read_through_the_id_map(self, tmp_path):
        """In a user namespace root's files are the caller's on disk: mapped back, they equal the host's."""
        host, upper = self.make(tmp_path)
        (upper / "etc" / "keep.conf").write_text("same")
        os.chmod(upper / "etc" / "keep.conf", os.stat(host / "etc" / "keep.conf").st_mode & 0o7777)
        uid, gid = os.getuid(), os.getgid()
        as_root = {"uid_map": [[uid, uid, 1]], "gid_map": [[gid, gid, 1]]}
        assert changes(str(upper), as_root, str(host)) == []
        shifted = {"uid_map": [[uid + 1, uid, 1]], "gid_map": [[gid, gid, 1]]}
        assert changes(str(upper), shifted, str(host)) == [Change("/etc", "changed"),
                                                            Change("/etc/keep.conf", "changed")]


class TestMountPlan:
    def test_every_host_mount_but_the_private_ones_is_layered_parents_first(self):
        """/proc, /sys, /dev, /run are the instance's own; other mounts get overlays, outermost first."""
        points = ["/", "/proc", "/sys/fs/cgroup", "/home/x", "/dev/pts", "/home", "/run/user/1000", "/boot",
                  "/home"]
        assert layered_mounts(points) == ["/home", "/boot", "/home/x"]


def _user_cli(user, shared_dir: str):
    """`cdsim instance ...` run as ``user`` (via su) with its own state folder in ``shared_dir``."""
    python = user_python(user.pw_name)
    if python is None:
        pytest.skip(f"no interpreter both runnable by {user.pw_name} and able to import agent "
                    f"({sys.executable} sits under a folder other users can't enter, /usr/bin/python3 "
                    "lacks PyYAML)")
    state_dir = os.path.join(shared_dir, f"state-{user.pw_name}")
    os.mkdir(state_dir)
    os.chown(state_dir, user.pw_uid, user.pw_gid)

    def as_user(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
        shell = [] if script is None else ["--", "/bin/sh", "-c", script]
        return lib.cdsim("instance", *args, *shell, user=user.pw_name, python=python, state=state_dir, timeout=180)

    as_user.user = user
    as_user.state = state_dir

    def meta(name: str) -> dict:
        with open(os.path.join(state_dir, "instances", name, "meta.json")) as f:
            return json.load(f)

    as_user.meta = meta
    return as_user


def _destroy_all(as_user) -> None:
    folder = os.path.join(as_user.state, "instances")
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        as_user("destroy", name)


@pytest.fixture
def unprivileged(runas_user, shared_dir):
    """Run `cdsim instance ...` as a real non-root user (via su) with its own state folder; destroys
    that user's instances afterwards."""
    as_user = _user_cli(runas_user, shared_dir)
    yield as_user
    _destroy_all(as_user)


def subordinate_ids(user: str) -> None:
    """Make sure ``user`` has subordinate uid and gid ranges (useradd gives them where login.defs says
    so; else usermod adds a range after every range already given)."""
    text = {}
    for path in ("/etc/subuid", "/etc/subgid"):
        with open(path, "a+") as f:
            f.seek(0)
            text[path] = f.read()
    if all(any(line.split(":")[0] == user for line in t.splitlines()) for t in text.values()):
        return
    ends = [int(f[1]) + int(f[2]) for t in text.values() for f in (line.split(":") for line in t.splitlines())
            if len(f) == 3 and f[1].isdigit() and f[2].isdigit()]
    start = max([100000, *ends])
    subprocess.run(["usermod", "--add-subuids", f"{start}-{start + 65535}", "--add-subgids",
                    f"{start}-{start + 65535}", user], check=True, capture_output=True)


@lib.needs_root("creating a user with useradd and su to it needs root (CI runs as root)")
class TestUnprivilegedUser:
    def test_unprivileged_instance_changes_only_itself(self, unprivileged):
        """As a non-root user: writes under /etc, /usr, /root and deletions of root-owned host files land
        in the instance; the host is unchanged; diff lists them; destroy leaves an empty state folder."""
        tag = uuid.uuid4().hex[:12]
        host_conf = f"/etc/cdsim-test-{tag}.conf"
        host_dir = f"/usr/share/cdsim-test-{tag}"
        host_edit = f"/etc/cdsim-test-{tag}-edit.conf"
        new_paths = [f"/etc/cdsim-test-{tag}-new.conf", f"/usr/local/bin/cdsim-test-{tag}",
                     f"/root/cdsim-test-{tag}", f"/var/www/cdsim-test-{tag}/index.html"]
        try:
            make_host_files(host_conf, host_edit, host_dir)
            before = snapshot(host_conf, host_dir, host_edit, *new_paths)
            assert unprivileged("create", "mine").returncode == 0
            # sed -i replaces the file (a root-owned host file can't be written in place from a user
            # namespace: see agent.instance.overlay)
            done = unprivileged("exec", "mine", script=(
                f"echo new > {new_paths[0]} && touch {new_paths[1]} && mkdir {new_paths[2]} && "
                f"mkdir -p $(dirname {new_paths[3]}) && echo page > {new_paths[3]} && "
                f"sed -i s/original/changed/ {host_edit} && rm {host_conf} && rm -r {host_dir} && "
                f"cat {host_edit} && id -u && hostname"))
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == ["changed", "0", "mine"]
            assert snapshot(host_conf, host_dir, host_edit, *new_paths) == before
            listed = unprivileged("diff", "mine").stdout.splitlines()
            assert {line for line in listed if tag in line} == {
                f"A {new_paths[0]}", f"A {new_paths[1]}", f"A {new_paths[2]}", f"A /var/www/cdsim-test-{tag}",
                f"A {new_paths[3]}", f"M {host_edit}", f"D {host_conf}", f"D {host_dir}"}
            runas = unprivileged("exec", "mine", script=(
                f"cd {REPO} && python3 -c 'from agent.instance import unmapped_user_problem as p; "
                f"print(p(0)); print(p({unprivileged.user.pw_uid}))'"))
            assert runas.stdout.splitlines()[0] == "None"
            if unprivileged.meta("mine").get("id_helpers"):   # subordinate ids: every uid up to 65536
                assert runas.stdout.splitlines()[1] == "None"
            else:
                assert "maps only that user" in runas.stdout.splitlines()[1]
            assert unprivileged("destroy", "mine").returncode == 0
            assert os.listdir(os.path.join(unprivileged.state, "instances")) == []
        finally:
            os.unlink(host_conf)
            os.unlink(host_edit)
            shutil.rmtree(host_dir)

    def test_unprivileged_instance_is_confined_too(self, unprivileged, shared_dir):
        """As a non-root user: the same capabilities (Docker's default less mknod) and seccomp filter as
        a root instance: no nested user namespace, no open_by_handle_at."""
        handle = os.path.join(shared_dir, "handle.py")
        with open(handle, "w") as f:
            f.write(HANDLE_PY)
        assert unprivileged("create", "uc").returncode == 0
        r = unprivileged("exec", "uc", script=(
            "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; "
            f"python3 {handle}; unshare -U true 2>/dev/null; echo unshare-U=$?"))
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()
        caps = {k: int(v, 16) for k, v in (line.split(":", 1) for line in out if line.startswith("Cap"))}
        assert caps == {"CapInh": 0, "CapPrm": DOCKER_DEFAULT_LESS_MKNOD, "CapEff": DOCKER_DEFAULT_LESS_MKNOD,
                        "CapBnd": DOCKER_DEFAULT_LESS_MKNOD, "CapAmb": 0}, r.stdout
        assert "open_by_handle_at EPERM" in out and "unshare-U=1" in out, r.stdout

    def test_unprivileged_deploy_reads_the_bundle_as_it_is_now(self, unprivileged, shared_dir):
        """As a non-root user: after `sed -i` of a bundle file, the next `cdsim deploy` into the running
        instance installs the new content (bound in afresh, from the user's own user namespace); the
        bind is read-only and gone afterwards; /dev is the instance's own."""
        bundle = os.path.join(shared_dir, "bundle")
        os.mkdir(bundle)
        with open(os.path.join(bundle, "greeting.txt"), "w") as f:
            f.write("one\n")
        with open(os.path.join(bundle, "show.sh"), "w") as f:
            f.write("#!/bin/sh\necho \"installed: $(cat /opt/fresh/greeting.txt)\"\n"
                    "echo x > \"$(ls -d /run/cdsim/binds/*/bundle)/greeting.txt\" 2>/dev/null && echo WROTE\n"
                    "echo x > /dev/null && touch /dev/cdsim-user-test && echo dev-ok\n")
        os.chmod(os.path.join(bundle, "show.sh"), 0o755)
        with open(os.path.join(bundle, "appspec.yml"), "w") as f:
            f.write("version: 0.0\nos: linux\nfiles:\n  - source: greeting.txt\n    destination: /opt/fresh\n"
                    "hooks:\n  AfterInstall:\n    - location: show.sh\n")
        def deploy() -> subprocess.CompletedProcess:
            return lib.cdsim("deploy", "--instance", "ud", "-b", "OVERWRITE", bundle, user=unprivileged.user.pw_name,
                             state=unprivileged.state, timeout=180)

        first = deploy()
        assert first.returncode == 0, first.stdout + first.stderr
        assert "installed: one" in first.stdout and "dev-ok" in first.stdout, first.stdout
        subprocess.run(["sed", "-i", "s/one/two/", os.path.join(bundle, "greeting.txt")], check=True)
        os.chmod(os.path.join(bundle, "greeting.txt"), 0o644)
        second = deploy()
        assert second.returncode == 0, second.stdout + second.stderr
        assert "installed: two" in second.stdout and "WROTE" not in second.stdout, second.stdout
        with open(os.path.join(bundle, "greeting.txt")) as f:
            assert f.read() == "two\n"
        assert not os.path.exists("/dev/cdsim-user-test")
        left = unprivileged("exec", "ud", script="ls -A /run/cdsim/binds; grep -c /run/cdsim /proc/self/mountinfo")
        assert left.stdout.split() == ["0"], left.stdout + left.stderr

    def test_unprivileged_servers_on_port_80_and_stop(self, unprivileged):
        """As a non-root user: two instances each serve port 80; a second exec reaches the server; stop ends all."""
        for name in ("ua", "ub"):
            assert unprivileged("create", name).returncode == 0
            started = unprivileged("exec", name, script=f"mkdir -p /srv/w && echo {name} > /srv/w/index.html && "
                                                        + SERVE.format(folder="/srv/w"))
            assert started.returncode == 0, started.stderr
        for name in ("ua", "ub"):
            fetched = unprivileged("exec", name, script=f"python3 -c \"{FETCH}\"")
            assert fetched.stdout == f"{name}\n", fetched.stderr
        listed = unprivileged("list").stdout
        assert "ua" in listed and "running" in listed
        for name in ("ua", "ub"):
            assert unprivileged("stop", name).returncode == 0
        uid = unprivileged.user.pw_uid
        left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _owned_by(pid, uid)]
        assert left == []


    def test_subordinate_ids_let_root_inside_add_users_and_destroy_removes_their_files(self, unprivileged):
        """With newuidmap and subordinate ranges: useradd, su and chown work inside, the host gets no
        user, files of the new user belong to a subordinate uid on disk, and destroy still removes them."""
        require_tool("newuidmap", "uidmap")
        require_tool("newgidmap", "uidmap")
        subordinate_ids(unprivileged.user.pw_name)
        added = f"cdsimin{uuid.uuid4().hex[:6]}"
        assert unprivileged("create", "subs").returncode == 0
        meta = unprivileged.meta("subs")
        assert meta["id_helpers"] and meta["uid_map"][0] == [0, unprivileged.user.pw_uid, 1]
        fresh = unprivileged("exec", "subs", script="cat /etc/shadow >/dev/null && grep -c '^root:' /etc/gshadow")
        assert fresh.returncode == 0 and fresh.stdout == "1\n", fresh.stderr
        assert not [line for line in unprivileged("diff", "subs").stdout.splitlines()
                    if "shadow" in line or ".pwd.lock" in line]   # cdsim's stand-ins are no change
        done = unprivileged("exec", "subs", script=(
            f"useradd -m {added} && su {added} -c 'id -un; touch ~/mine; chmod 700 ~' && id -u {added} && "
            f"install -d -o {added} -m 700 /srv/private-{added} && su root -c 'id -u'"))
        assert done.returncode == 0, done.stderr
        name, inside_uid, root = done.stdout.split()
        assert (name, root) == (added, "0")
        assert subprocess.run(["id", added], capture_output=True, check=False).returncode != 0
        assert not os.path.exists(f"/home/{added}") and not os.path.exists(f"/srv/private-{added}")
        listed = unprivileged("diff", "subs").stdout.splitlines()
        assert {"M /etc/passwd", "M /etc/shadow", f"A /home/{added}"} <= set(listed)
        folder = os.path.join(unprivileged.state, "instances", "subs")
        home = os.stat(os.path.join(folder, "upper", "home", added))
        assert home.st_uid == meta["uid_map"][1][1] + int(inside_uid) - 1 and stat.S_IMODE(home.st_mode) == 0o700
        destroyed = unprivileged("destroy", "subs")
        assert destroyed.returncode == 0, destroyed.stderr
        assert not os.path.exists(folder)

    def test_a_map_newuidmap_refuses_is_an_environment_error(self, unprivileged):
        """When newuidmap refuses the recorded map (a range that is not the user's), exec exits
        ENVIRONMENT naming newuidmap, no keeper or init is left running, and destroy still works."""
        require_tool("newuidmap", "uidmap")
        subordinate_ids(unprivileged.user.pw_name)
        assert unprivileged("create", "refused").returncode == 0
        meta_file = os.path.join(unprivileged.state, "instances", "refused", "meta.json")
        meta = unprivileged.meta("refused")
        meta["uid_map"][1] = [1, 1, 1000]   # the host's own uids 1..1000: never a user's subordinate range
        with open(meta_file, "w") as f:
            json.dump(meta, f)
        failed = unprivileged("exec", "refused", script="true")
        assert failed.returncode == ExitStatus.ENVIRONMENT
        assert "cannot start instance 'refused'" in failed.stderr and "newuidmap" in failed.stderr
        uid = unprivileged.user.pw_uid
        assert _poll(lambda: not [pid for pid in os.listdir("/proc") if pid.isdigit() and _owned_by(pid, uid)])
        # the maps can't be entered to remove it, but nothing in it belongs to another user: destroy works
        assert unprivileged("destroy", "refused").returncode == 0
        assert not os.path.exists(os.path.dirname(meta_file))

    def test_without_subordinate_ids_only_the_caller_is_mapped_and_the_fix_is_named(self, user_without_subids,
                                                                                     shared_dir):
        """A user without subordinate ranges still gets an instance (root inside = that user); runas of
        another uid and su fail, and the error names the usermod command that fixes it."""
        as_user = _user_cli(user_without_subids, shared_dir)
        from agent.instance.idmap import SUBGID_FILE, SUBUID_FILE, free_range
        with open(SUBUID_FILE) as u, open(SUBGID_FILE) as g:
            start = free_range(u.read(), g.read())   # a range no other user has, not a fixed one
        fix = (f"usermod --add-subuids {start}-{start + 65535} --add-subgids {start}-{start + 65535} "
               f"{user_without_subids.pw_name}")
        try:
            assert as_user("create", "plain").returncode == 0
            meta = as_user.meta("plain")
            assert meta["uid_map"] == [[0, user_without_subids.pw_uid, 1]] and not meta.get("id_helpers")
            problem = inst.id_map_problem(inst.get("plain", state=as_user.state))
            assert fix in problem and "/etc/subuid" in problem
            done = as_user("exec", "plain", script=(
                f"cd {REPO} && python3 -c 'from agent.instance import unmapped_user_problem as p; print(p(1000))' "
                "&& id -u && su root -c true"))   # su sets groups: denied with a one-id map
            assert fix in done.stdout and "runas" in done.stdout
            assert done.returncode != 0 and done.stdout.splitlines()[-1] == "0"
            assert as_user("destroy", "plain").returncode == 0
            assert os.listdir(os.path.join(as_user.state, "instances")) == []
        finally:
            _destroy_all(as_user)


def _run_filter(arch: int, nr: int, arg0: int = 0) -> int:
    """What the seccomp program returns for one system call (a classic BPF interpreter, enough for it)."""
    from agent.instance.confine import program
    data = {0: nr, 4: arch, 16: arg0 & 0xFFFFFFFF}
    code, acc, pc = program(), 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0x20:
            acc = data[k]
        elif op == 0x06:
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            pc += jt if taken else jf
        pc += 1


class TestSeccompProgram:
    """The filter's logic, pure (the real filter is exercised in TestHooksAreConfined)."""

    def test_refuses_namespaces_file_handles_and_other_abis_and_allows_the_rest(self):
        from agent.instance.confine import AUDIT_ARCH_X86_64 as X86_64
        from agent.instance.confine import RET_ALLOW, RET_ERRNO
        eperm, enosys = RET_ERRNO | 1, RET_ERRNO | 38
        assert _run_filter(X86_64, 0) == RET_ALLOW                       # read
        assert _run_filter(X86_64, 59) == RET_ALLOW                      # execve
        assert _run_filter(X86_64, 56, 0x01200011) == RET_ALLOW          # clone as fork() calls it
        assert _run_filter(X86_64, 56, 0x10000000 | 17) == eperm         # clone(CLONE_NEWUSER)
        assert _run_filter(X86_64, 56, 0x00020000) == eperm              # clone(CLONE_NEWNS)
        for nr in (272, 308, 165, 166, 304, 246, 321, 298, 250, 425):   # unshare ... io_uring_setup
            assert _run_filter(X86_64, nr) == eperm, nr
        assert _run_filter(X86_64, 303) == RET_ALLOW                     # name_to_handle_at
        assert _run_filter(X86_64, 435) == enosys                        # clone3: the C library falls back
        assert _run_filter(X86_64, 0x40000000 | 0) == enosys             # x32
        assert _run_filter(0x40000003, 3) == enosys                      # i386


class TestIdMaps:
    """Which ids an instance maps (pure), and the account files cdsim puts in the upper layer."""

    def test_root_gets_the_identity_and_no_user_namespace(self):
        """Root's instances see the host's ids as they are."""
        maps = plan(0, 0, "root", subuid="", subgid="", helpers=True)
        assert maps == {"user_namespace": False, "uid_map": [[0, 0, 4294967295]], "gid_map": [[0, 0, 4294967295]]}

    def test_subordinate_ranges_map_one_and_up(self):
        """With the helpers and both ranges: 0 = the caller, 1..N = the range (by name or by uid)."""
        maps = plan(1005, 1006, "ann", subuid="# x\nbob:100000:65536\nann:200000:65536\n",
                    subgid="1006:300000:1000\n", helpers=True)
        assert maps["uid_map"] == [[0, 1005, 1], [1, 200000, 65536]]
        assert maps["gid_map"] == [[0, 1006, 1], [1, 300000, 1000]]
        assert maps["id_helpers"] and "id_map_problem" not in maps

    def test_without_helpers_or_ranges_only_the_caller_with_the_fix(self):
        """Missing helpers or a missing (or empty) range: the one-id map, and a problem naming what is
        missing and the usermod command."""
        no_helpers = plan(1005, 1005, "ann", subuid="ann:200000:65536", subgid="ann:200000:65536", helpers=False)
        assert no_helpers["uid_map"] == [[0, 1005, 1]] and "newuidmap" in no_helpers["id_map_problem"]
        no_range = plan(1005, 1005, "ann", subuid="ann:200000:0\nbob:1:2", subgid="ann:200000:65536", helpers=True)
        assert no_range["gid_map"] == [[0, 1005, 1]] and not no_range.get("id_helpers")
        assert "/etc/subuid" in no_range["id_map_problem"] and "/etc/subgid" not in no_range["id_map_problem"]
        assert "`usermod --add-subuids 100000-165535 ann`" in no_range["id_map_problem"]   # only what is missing
        assert subordinate_range("ann:x:1\nann:5", "ann", 1) is None

    def test_shadow_stand_ins_lock_every_account(self):
        """The stand-ins list every account of passwd/group with a locked password, group members kept."""
        assert shadow_lines("shadow", "root:x:0:0:root:/root:/bin/bash\n\nann:x:1000:1000::/home/ann:/bin/sh\n") \
            == "root:*:::::::\nann:*:::::::\n"
        assert shadow_lines("gshadow-", "root:x:0:\nsudo:x:27:ann,bob\n") == "root:*::\nsudo:*::ann,bob\n"

    def test_stand_ins_are_written_once_and_are_no_change_until_edited(self, tmp_path):
        """synthesize_accounts writes shadow, gshadow (and a backup only where the host has one) once;
        diff skips them while they hold what cdsim wrote and reports them once edited."""
        host, upper = tmp_path / "host", tmp_path / "upper"
        (host / "etc").mkdir(parents=True)
        (upper / "etc").mkdir(parents=True)
        os.chmod(upper / "etc", os.stat(host / "etc").st_mode & 0o7777)
        (host / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (host / "etc" / "group").write_text("root:x:0:\n")
        for name in ("shadow", "gshadow", "gshadow-"):
            (host / "etc" / name).write_text("root:$6$secret:::::::\n")
            os.chmod(host / "etc" / name, 0o640)
        written = synthesize_accounts(str(host / "etc"), str(upper / "etc"))
        assert sorted(written) == ["/etc/gshadow", "/etc/gshadow-", "/etc/shadow"]
        assert (upper / "etc" / "shadow").read_text() == "root:*:::::::\n"
        assert stat.S_IMODE(os.stat(upper / "etc" / "shadow").st_mode) == 0o640
        assert synthesize_accounts(str(host / "etc"), str(upper / "etc")) == {}
        maps = {"uid_map": [[os.getuid(), os.getuid(), 1]], "gid_map": [[os.getgid(), os.getgid(), 1]]}
        assert changes(str(upper), maps, str(host), synthesized=written) == []
        (upper / "etc" / "shadow").write_text("root:*:::::::\nann:*:::::::\n")
        assert changes(str(upper), maps, str(host), synthesized=written) == [Change("/etc/shadow", "changed")]


def _owned_by(pid: str, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid and live(int(pid))
    except OSError:
        return False
