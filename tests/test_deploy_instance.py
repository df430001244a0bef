"""`cdsim deploy` into sandboxed instances: the sample app end to end, and host/instance parity."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from test_instance import DOCKER_DEFAULT_LESS_MKNOD, HANDLE_PY, _cmdline, _poll

import agent.instance as inst
from tests import lib
from tests.lib import CLI, REPO, needs_root

SAMPLE = REPO / "sample_app"

pytestmark = needs_root("these tests deploy as root into instances and onto the host (CI runs as root); "
                        "test_instance.py covers unprivileged use")

cdsim = functools.partial(lib.cdsim, cwd=REPO, timeout=180)


def in_instance(name: str, *argv: str) -> subprocess.CompletedProcess:
    return cdsim("instance", "exec", name, "--", *argv)


class TestSampleApp:
    def test_sample_deploys_twice_and_serves_the_page(self, state):
        """Two deployments in a row: the second ApplicationStop stops the first server, ValidateService
        prints the page each time, and the instance diff lists the installed files; the host is untouched."""
        assert not os.path.exists("/home/ec2-user/sample-app/app.wsgi")
        first = cdsim("deploy", str(SAMPLE))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Hello from cdsim sample app" in first.stdout
        second = cdsim("deploy", str(SAMPLE))
        assert second.returncode == 0, second.stdout + second.stderr
        assert "stopped the server" in second.stdout
        assert second.stdout.count("Hello from cdsim sample app") >= 1
        page = in_instance("default", sys.executable, "-c",
                           "import urllib.request;print(urllib.request.urlopen('http://localhost/').read().decode())")
        assert "Hello from cdsim sample app" in page.stdout
        diff = cdsim("instance", "diff", "default", "--format", "json")
        assert diff.returncode == 0, diff.stderr
        added = {c["path"] for c in json.loads(diff.stdout) if c["kind"] == "added"}
        assert {"/var/www/sample-app/app.wsgi", "/etc/httpd/conf.d/sample_app.conf",
                "/home/ec2-user/sample-app/appspec.yml"} <= added
        owner = in_instance("default", "stat", "-c", "%U", "/home/ec2-user/sample-app/app.wsgi")
        assert owner.stdout.strip() == "ec2-user"
        assert not os.path.exists("/var/www/sample-app/app.wsgi")
        assert not os.path.exists("/etc/httpd/conf.d/sample_app.conf")
        stopped = cdsim("instance", "stop", "default")
        assert stopped.returncode == 0, stopped.stderr


def tree(root: str) -> dict:
    """Relative path -> (type, mode, content) for everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", oct(st.st_mode & 0o7777))
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", oct(st.st_mode & 0o7777), f.read())
    return out


class TestParity:
    def test_same_target_tree_on_host_and_in_instance(self, state, tmp_path):
        """The same bundle gives the same target tree on the host and inside an instance."""
        dest = tmp_path / "target"
        bundle = tmp_path / "b"
        (bundle / "sub").mkdir(parents=True)
        (bundle / "sub" / "a.txt").write_text("a")
        (bundle / "run.sh").write_text("#!/bin/sh\necho hi > \"$(dirname \"$0\")/../made-by-hook\"\n")
        (bundle / "run.sh").chmod(0o700)
        (bundle / "link").symlink_to("sub/a.txt")
        (bundle / "appspec.yml").write_text(
            f"version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: {dest}\n"
            f"permissions:\n  - object: {dest}\n    pattern: '*.txt'\n    mode: 600\n"
            "hooks:\n  AfterInstall:\n    - location: run.sh\n")
        host = cdsim("deploy", "--host", "--root-dir", str(tmp_path / "root"), str(bundle))
        assert host.returncode == 0, host.stdout + host.stderr
        on_host = tree(str(dest))
        import shutil
        shutil.rmtree(dest)
        boxed = cdsim("deploy", "--instance", "parity", str(bundle))
        assert boxed.returncode == 0, boxed.stdout + boxed.stderr
        assert not dest.exists()
        instance = inst.get("parity")
        in_box = tree(os.path.join(instance.upper, str(dest).lstrip("/")))
        assert in_box == on_host


class TestReportsFromInstance:
    def test_report_is_written_on_the_host(self, state, tmp_path):
        """--report with an instance: the report lands on the host, built from the run inside."""
        bundle = tmp_path / "b"
        bundle.mkdir()
        (bundle / "hi.sh").write_text("#!/bin/sh\necho from-inside\n")
        (bundle / "hi.sh").chmod(0o755)
        (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n"
                                            "    - location: hi.sh\n")
        r = cdsim("deploy", "--instance", "rep", "--report", f"junit={tmp_path}/j.xml", str(bundle))
        assert r.returncode == 0, r.stdout + r.stderr
        text = (tmp_path / "j.xml").read_text()
        assert "from-inside" in text and 'classname="AfterInstall"' in text


def _fresh_bundle(folder: Path, content: str) -> Path:
    """A bundle whose AfterInstall hook prints the installed copy of greeting.txt."""
    folder.mkdir(parents=True)
    (folder / "greeting.txt").write_text(content)
    (folder / "show.sh").write_text("#!/bin/sh\necho \"installed: $(cat /opt/fresh/greeting.txt)\"\n")
    (folder / "show.sh").chmod(0o755)
    (folder / "appspec.yml").write_text("version: 0.0\nos: linux\nfiles:\n  - source: greeting.txt\n"
                                        "    destination: /opt/fresh\nhooks:\n  AfterInstall:\n"
                                        "    - location: show.sh\n")
    return folder


def _deployed(bundle: Path, instance: str = "fresh") -> str:
    r = cdsim("deploy", "--instance", instance, "-b", "OVERWRITE", str(bundle))
    assert r.returncode == 0, r.stdout + r.stderr
    return next(line.split("installed: ", 1)[1] for line in r.stdout.splitlines() if "installed: " in line)


class TestBundleIsReadAsItIsNow:
    """The instance's / is an overlay of the host, and overlayfs does not follow changes to its lower
    layer: a bundle read through it after an edit may be the old one. Each deployment binds it afresh."""

    def test_edits_in_place_and_renames_over_reach_the_next_deployment(self, state, tmp_path):
        bundle = _fresh_bundle(tmp_path / "b", "one\n")
        greeting = bundle / "greeting.txt"
        assert _deployed(bundle) == "one"
        # sed -i: a new file renamed over the old one
        subprocess.run(["sed", "-i", "s/one/two/", str(greeting)], check=True)
        assert _deployed(bundle) == "two"
        # in place, same inode, longer than before
        inode = greeting.stat().st_ino
        with open(greeting, "r+") as f:
            f.write("three-and-more\n")
        assert greeting.stat().st_ino == inode
        assert _deployed(bundle) == "three-and-more"
        # an editor's save: write a new file, rename it over
        (bundle / "greeting.new").write_text("four\n")
        os.rename(bundle / "greeting.new", greeting)
        assert _deployed(bundle) == "four"
        # and the hook script itself, edited in place
        with open(bundle / "show.sh", "a") as f:
            f.write("echo 'second line'\n")
        r = cdsim("deploy", "--instance", "fresh", "-b", "OVERWRITE", str(bundle))
        assert "second line" in r.stdout, r.stdout + r.stderr

    def test_zip_replaced_with_mv_is_the_one_deployed(self, state, tmp_path):
        import zipfile

        def make_zip(path: Path, content: str) -> None:
            source = _fresh_bundle(tmp_path / f"src-{content}", content + "\n")
            with zipfile.ZipFile(path, "w") as z:
                for name in ("appspec.yml", "greeting.txt", "show.sh"):
                    z.write(source / name, name)

        bundle = tmp_path / "app.zip"
        make_zip(bundle, "first")
        assert _deployed(bundle) == "first"
        make_zip(tmp_path / "next.zip", "second-and-longer")
        subprocess.run(["mv", str(tmp_path / "next.zip"), str(bundle)], check=True)
        assert _deployed(bundle) == "second-and-longer"

    def test_local_instance_reads_the_bundle_as_it_is_now(self, state, tmp_path):
        """`cdsim local --instance` (the agent-exact CLI) binds the bundle (and its configuration file)
        the same way."""
        bundle = _fresh_bundle(tmp_path / "b", "one\n")
        config = tmp_path / "agent.yml"
        config.write_text(":root_dir: '/opt/local-root'\n:log_dir: '/var/log/local-agent/'\n")

        def local() -> str:
            r = cdsim("local", "--bundle-location", str(bundle), "--type", "directory",
                      "--file-exists-behavior", "OVERWRITE", "--agent-configuration-file", str(config),
                      "--instance", "fresh")
            assert r.returncode == 0, r.stdout + r.stderr
            log = in_instance("fresh", "sh", "-c", "cat $(ls -t /opt/local-root/"
                              "default-local-deployment-group/*/logs/scripts.log | head -1)")
            return [line for line in log.stdout.splitlines() if "installed: " in line][-1].split("installed: ")[1]

        assert local() == "one"
        subprocess.run(["sed", "-i", "s/one/two/", str(bundle / "greeting.txt")], check=True)
        assert local() == "two"

    def test_the_bind_mount_is_gone_after_the_deployment(self, state, tmp_path):
        """Nothing of a deployment's bind mount stays in the instance; the host bundle stays read-only
        to the hooks (root inside can't change it through the mount)."""
        bundle = _fresh_bundle(tmp_path / "b", "x\n")
        with open(bundle / "show.sh", "a") as f:
            f.write("for p in /run/cdsim/binds/*/b; do echo changed > \"$p/greeting.txt\" && echo WROTE; done\n"
                    "echo tried\n")
        r = cdsim("deploy", "--instance", "fresh", str(bundle))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "tried" in r.stdout and "WROTE" not in r.stdout and (bundle / "greeting.txt").read_text() == "x\n"
        left = in_instance("fresh", "sh", "-c", "ls -A /run/cdsim/binds; grep -c /run/cdsim /proc/self/mountinfo")
        assert left.stdout.split() == ["0"], left.stdout + left.stderr


def _host_dev() -> dict:
    """The host's /dev: every name, and the device nodes an instance binds, with owner, mode and times."""
    out = {"names": sorted(os.listdir("/dev"))}
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        st = os.stat("/dev/" + node)
        out[node] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev)
    return out


class TestHooksAreConfined:
    """A root hook holds Docker's default capabilities less mknod, under a seccomp filter, with a /dev of
    its own: the attacks below are what a hook could do with more."""

    def test_file_handles_capabilities_dev_and_user_namespaces(self, state, tmp_path):
        tag = os.urandom(4).hex()
        bundle = tmp_path / "b"
        bundle.mkdir()
        (bundle / "handle.py").write_text(HANDLE_PY)
        (bundle / "attack.sh").write_text(
            "#!/bin/sh\n"
            "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status\n"
            "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/1/status | sed 's/^/init-/'\n"
            "python3 \"$(dirname \"$0\")/handle.py\"\n"
            "unshare -U true 2>/dev/null; echo \"unshare-U=$?\"\n"
            "unshare -Ur true 2>/dev/null; echo \"unshare-Ur=$?\"\n"
            # harmless even if it reached the host: the same mode and owner, only times would move
            "echo x > /dev/null; echo \"write-null=$?\"\n"
            "chmod 666 /dev/null /dev/zero 2>/dev/null; chown 0:0 /dev/null 2>/dev/null; "
            "touch /dev/null /dev/zero 2>/dev/null\n"
            f"touch /dev/cdsim-test-{tag}; echo \"dev-file=$?\"\n"
            "head -c 4 /dev/zero | od -An -tx1 | tr -d ' \\n'; echo ' =zero'\n"
            "cp /bin/true /dev/shm/t && /dev/shm/t 2>/dev/null; echo \"shm-exec=$?\"\n")
        (bundle / "attack.sh").chmod(0o755)
        (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n"
                                            "    - location: attack.sh\n")
        before = _host_dev()
        r = cdsim("deploy", "--instance", "confined", str(bundle))
        assert r.returncode == 0, r.stdout + r.stderr
        out = [line.strip()[1:].strip() for line in r.stdout.splitlines() if line.strip().startswith("|")]
        caps = {k: int(v, 16) for k, v in (line.split(":", 1) for line in out if "Cap" in line)}
        for who in ("", "init-"):
            for kind in ("CapBnd", "CapPrm", "CapEff"):
                assert caps[who + kind] == DOCKER_DEFAULT_LESS_MKNOD, (who + kind, r.stdout)
            assert caps[who + "CapInh"] == 0 and caps[who + "CapAmb"] == 0, r.stdout
        assert "name_to_handle_at ok" in out and "open_by_handle_at EPERM" in out, r.stdout
        assert "unshare-U=1" in out and "unshare-Ur=1" in out, r.stdout
        assert {"write-null=0", "dev-file=0", "00000000 =zero", "shm-exec=126"} <= set(out), r.stdout
        assert _host_dev() == before
        assert not os.path.exists(f"/dev/cdsim-test-{tag}")
        seen = in_instance("confined", "ls", f"/dev/cdsim-test-{tag}")
        assert seen.returncode == 0, seen.stderr   # it landed in the instance's own /dev

    def test_programs_replaced_inside_never_run_with_more(self, state):
        """Entering an instance runs nothing of the instance's tree before the capabilities are dropped:
        a root hook that replaces setpriv and nsenter (what cdsim used to run inside) gains nothing."""
        i = inst.create("replaced")
        probe = "#!/bin/sh\ngrep CapEff /proc/self/status > /root/ran-with\nexec /bin/true\n"
        for tool in ("/usr/bin/setpriv", "/usr/bin/nsenter"):
            r = subprocess.run([*CLI, "instance", "exec", "replaced", "--", "sh", "-c",
                                f"cat > {tool} && chmod 755 {tool}"], input=probe, capture_output=True,
                               text=True, timeout=120, cwd=REPO)
            assert r.returncode == 0, r.stderr
        r = in_instance("replaced", "sh", "-c", "cat /root/ran-with 2>/dev/null; grep CapEff /proc/self/status")
        caps = [int(line.split()[1], 16) for line in r.stdout.splitlines()]
        assert caps and all(c == DOCKER_DEFAULT_LESS_MKNOD for c in caps), r.stdout
        assert inst.running(i)


def test_bind_mounts_of_a_killed_launcher_are_removed_by_the_next(state, tmp_path):
    """A launcher killed with its command (SIGKILL to the process group: no clean-up) leaves its bind
    mount; the next command given a bind mount removes it, and only it while its owner runs."""
    import signal

    folder = tmp_path / "shared"
    folder.mkdir()
    i = inst.create("sweep")

    def spawn(seconds: int) -> subprocess.Popen:
        target = inst.bind_target(str(folder))
        return subprocess.Popen(inst.command_in(i, ["sh", "-c", f"ls {target} >/dev/null && echo up && "
                                                    f"exec sleep {seconds}"], binds={str(folder): target}),
                                stdout=subprocess.PIPE, text=True, process_group=0)

    def binds() -> list[str]:
        r = in_instance("sweep", "sh", "-c", "ls /run/cdsim/binds")
        return r.stdout.split()

    killed, alive = spawn(301), spawn(302)
    try:
        assert killed.stdout.readline() == "up\n" and alive.stdout.readline() == "up\n"
        assert len(binds()) == 2
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        # the command holds the lock too: wait until the kernel has ended it
        assert _poll(lambda: not [p for p in inst.processes(i) if _cmdline(p) == "sleep 301"], timeout=10)
        target = inst.bind_target(str(folder))
        assert inst.exec_in(i, ["true"], binds={str(folder): target}) == 0
        assert len(binds()) == 1   # the running one's stays
    finally:
        for p in (killed, alive):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()
    assert inst.exec_in(i, ["true"], binds={str(folder): inst.bind_target(str(folder))}) == 0
    assert binds() == []
