"""`cdsim deploy` into sandboxed instances: the sample app end to end, and host/instance parity."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import agent.instance as inst

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_app"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these tests deploy as root into instances and "
                                "onto the host (CI runs as root); test_instance.py covers unprivileged use")


def cdsim(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO)


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
