"""The sample app, its broken variants, the Vagrantfile and the Dockerfile.

What a user deploys first must be right: the appspec has the shape of the classic CodeDeploy sample and
parses the agent's way, every hook script can run (#! line, exec bit, LF endings, valid bash), the app
serves the expected page (as plain WSGI, through Flask and through serve.py on a real socket), each
broken variant carries exactly its one mistake, and the Vagrantfile and Dockerfile (which cannot run on
CI: no Vagrant, no Docker engine) are at least well formed and do the documented steps.
The deployments themselves (twice in an instance, the broken variants' diagnostics) are end-to-end tests
elsewhere.
"""
from __future__ import annotations

import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap
import urllib.request
import wsgiref.util
import wsgiref.validate
from pathlib import Path

import pytest
import yaml

from agent.appspec import parse_appspec
from tests.lib import CLI, REPO, needs_root, require_tool

SAMPLE = REPO / "sample_app"
BROKEN = REPO / "sample_app_broken"
EXPECTED_TEXT = "Hello from cdsim sample app"
# every bundle shipped with the project: the sample and each broken variant
BUNDLES = [SAMPLE, BROKEN / "output_attached", BROKEN / "crlf_script",
           BROKEN / "file_collision" / "v1", BROKEN / "file_collision" / "v2"]
CRLF_SCRIPT = BROKEN / "crlf_script" / "scripts" / "create_app_user"


def _appspec(bundle: Path) -> dict:
    return yaml.safe_load((bundle / "appspec.yml").read_text())


def _hook_scripts(bundle: Path) -> list[Path]:
    spec = parse_appspec((bundle / "appspec.yml").read_bytes())
    return [bundle / s.location.lstrip("/") for _, scripts in spec.hooks for s in scripts]


def _shell_settings(path: Path) -> dict[str, str]:
    """NAME=value assignments at the start of a line (values unquoted as bash would)."""
    found = {}
    for m in re.finditer(r"^([A-Z_]+)=(\"[^\"]*\"|\S+)", path.read_text(), re.MULTILINE):
        found[m.group(1)] = m.group(2).strip('"')
    return found


class TestAppspec:
    def test_files_mapping_is_the_classic_samples(self):
        """The files section maps app.wsgi, the whole revision and the Apache vhost like the AWS sample."""
        spec = _appspec(SAMPLE)
        assert spec["version"] == 0.0 and spec["os"] == "linux"
        assert spec["files"] == [
            {"source": "/app.wsgi", "destination": "/var/www/sample-app"},
            {"source": "/", "destination": "/home/ec2-user/sample-app"},
            {"source": "/conf/sample_app.conf", "destination": "/etc/httpd/conf.d"},
        ]

    def test_hooks_name_the_scripts_with_timeouts_and_runas_root(self):
        """Each lifecycle hook runs its script as root with a 300 s timeout."""
        hooks = _appspec(SAMPLE)["hooks"]
        assert {event: [s["location"] for s in scripts] for event, scripts in hooks.items()} == {
            "ApplicationStop": ["scripts/stop_server"],
            "BeforeInstall": ["scripts/create_app_user"],
            "AfterInstall": ["scripts/install_dependencies"],
            "ApplicationStart": ["scripts/start_server"],
            "ValidateService": ["scripts/validate_service"],
        }
        for scripts in hooks.values():
            assert all(s["timeout"] == 300 and s["runas"] == "root" for s in scripts)

    def test_app_files_are_owned_by_the_user_beforeinstall_creates(self):
        """The permissions owner is the user the BeforeInstall script creates (it must exist at Install)."""
        [perm] = _appspec(SAMPLE)["permissions"]
        assert perm == {"object": "/home/ec2-user/sample-app", "owner": "ec2-user", "group": "ec2-user"}
        assert "useradd" in (SAMPLE / "scripts" / "create_app_user").read_text()

    @pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: str(p.relative_to(REPO)))
    def test_every_bundle_parses_the_agents_way(self, bundle):
        """The agent's parser accepts every shipped appspec and every script it names is in the bundle."""
        spec = parse_appspec((bundle / "appspec.yml").read_bytes())
        assert spec.os == "linux"
        for script in _hook_scripts(bundle):
            assert script.is_file(), script

    def test_scripts_and_vhost_agree_with_the_appspec_paths(self):
        """The paths the scripts and the Apache vhost use are where the appspec installs things."""
        spec = _appspec(SAMPLE)
        wsgi_dir, app_home, conf_dir = (f["destination"] for f in spec["files"])
        settings = _shell_settings(SAMPLE / "scripts" / "common.sh")
        assert settings["WSGI_FILE"] == f"{wsgi_dir}/app.wsgi"
        assert settings["APP_HOME"] == app_home
        assert settings["APP_USER"] == spec["permissions"][0]["owner"]
        assert settings["EXPECTED_TEXT"] == EXPECTED_TEXT
        vhost = (SAMPLE / "conf" / "sample_app.conf").read_text()
        assert f"WSGIScriptAlias / {wsgi_dir}/app.wsgi" in vhost
        assert f"python-path={app_home}" in vhost
        assert conf_dir == "/etc/httpd/conf.d"


class TestScripts:
    @pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: str(p.relative_to(REPO)))
    def test_every_hook_script_has_a_shebang_and_the_exec_bit(self, bundle):
        """Each hook script starts with #! and is executable by everyone (as git stores it: 755)."""
        for script in _hook_scripts(bundle):
            assert script.read_bytes().startswith(b"#!/bin/bash"), script
            assert script.stat().st_mode & 0o111 == 0o111, script

    def test_sample_scripts_are_strict_lf_bash(self):
        """The sample's scripts use LF endings, set -euo pipefail and pass bash's syntax check."""
        for script in [*_hook_scripts(SAMPLE), SAMPLE / "scripts" / "common.sh"]:
            data = script.read_bytes()
            assert b"\r" not in data, script
            if script.name != "common.sh":
                assert b"\nset -euo pipefail\n" in data, script
            done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr

    def test_the_crlf_script_really_has_crlf_endings(self):
        """Every line of the broken script ends in CR LF, its #! line included."""
        data = CRLF_SCRIPT.read_bytes()
        assert data.startswith(b"#!/bin/bash\r\n")
        lines = data.split(b"\n")
        assert lines[-1] == b"" and all(line.endswith(b"\r") for line in lines[:-1])

    def test_git_keeps_the_crlf_bytes_and_lf_elsewhere(self):
        """.gitattributes stops git from converting the CRLF script, and pins LF on the sample's scripts."""
        if shutil.which("git") is None or not (REPO / ".git").exists():
            pytest.skip("not a git checkout")
        done = subprocess.run(["git", "check-attr", "text", "eol", "--",
                               str(CRLF_SCRIPT.relative_to(REPO)), "sample_app/scripts/start_server"],
                              cwd=REPO, capture_output=True, text=True, check=True)
        assert f"{CRLF_SCRIPT.relative_to(REPO)}: text: unset" in done.stdout
        assert "sample_app/scripts/start_server: eol: lf" in done.stdout

    def test_the_attached_server_keeps_the_hooks_output(self):
        """The broken start script backgrounds its server with no redirection, under a short timeout."""
        bundle = BROKEN / "output_attached"
        [start] = _appspec(bundle)["hooks"]["ApplicationStart"]
        assert start["timeout"] == 20
        commands = [line for line in (bundle / start["location"]).read_text().splitlines()
                    if line and not line.startswith("#")]
        background = [line for line in commands if line.rstrip().endswith("&")]
        assert background == ["python3 -m http.server 8080 &"]

    def test_release_1_writes_the_file_release_2_installs(self):
        """v1's hook writes a file into a destination; v2 ships that file; v1 does not."""
        v1, v2 = BROKEN / "file_collision" / "v1", BROKEN / "file_collision" / "v2"
        dest = "/etc/sample-app"
        for bundle in (v1, v2):
            assert _appspec(bundle)["files"] == [{"source": "/config", "destination": dest}]
            assert "file_exists_behavior" not in _appspec(bundle)   # DISALLOW, the default
        assert not (v1 / "config" / "settings.ini").exists()
        assert (v2 / "config" / "settings.ini").is_file()
        assert f"> {dest}/settings.ini" in (v1 / "scripts" / "write_settings").read_text()


def _wsgi_get(application, path: str = "/") -> tuple[str, dict, bytes]:
    environ: dict = {"SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.errors": io.StringIO()}
    wsgiref.util.setup_testing_defaults(environ)
    got: dict = {}

    def start_response(status, headers, exc_info=None):
        got["status"], got["headers"] = status, dict(headers)
        return lambda data: None

    result = wsgiref.validate.validator(application)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()
    return got["status"], got["headers"], body


@pytest.fixture
def flask_app(monkeypatch):
    """The sample's Flask app, imported from the bundle without leaving __pycache__ in it."""
    pytest.importorskip("flask", reason="Flask is not installed (pip install '.[sample]')")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(SAMPLE))
    for name in [n for n in sys.modules if n == "app" or n.startswith("app.")]:
        monkeypatch.delitem(sys.modules, name)
    import app
    yield app.app
    for name in [n for n in sys.modules if n == "app" or n.startswith("app.")]:
        del sys.modules[name]


class TestApp:
    def test_plain_wsgi_page_has_the_expected_text(self):
        """The page module is a valid WSGI app (standard library only) serving the expected page."""
        page = runpy.run_path(str(SAMPLE / "app" / "page.py"))
        assert page["EXPECTED_TEXT"] == EXPECTED_TEXT
        status, headers, body = _wsgi_get(page["application"])
        assert status == "200 OK" and headers["Content-Type"].startswith("text/html")
        assert EXPECTED_TEXT in body.decode()
        assert _wsgi_get(page["application"], "/nowhere")[0] == "404 Not Found"

    def test_flask_app_serves_the_page(self, flask_app):
        """Through Flask's test client, GET / answers 200 with the expected text."""
        response = flask_app.test_client().get("/")
        assert response.status_code == 200
        assert EXPECTED_TEXT in response.get_data(as_text=True)

    def test_serve_py_serves_app_wsgi_on_a_real_socket(self, tmp_path):
        """serve.py loads app.wsgi (as Apache would) and answers on loopback with the page."""
        pytest.importorskip("flask", reason="Flask is not installed (pip install '.[sample]')")
        env = {**os.environ, "SAMPLE_APP_HOME": str(SAMPLE), "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [sys.executable, str(SAMPLE / "serve.py"), "--host", "127.0.0.1", "--port", "0",
               "--wsgi", str(SAMPLE / "app.wsgi")]
        with subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as server:
            try:
                line = server.stdout.readline()
                port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    assert response.status == 200
                    assert EXPECTED_TEXT in response.read().decode()
            finally:
                server.terminate()
                server.wait(timeout=10)


def _vagrant_provision_script() -> str:
    text = (REPO / "Vagrantfile").read_text()
    body = re.search(r"<<~'SHELL'\n(.*?)\nSHELL\n", text, re.DOTALL)
    assert body, "the Vagrantfile has no PROVISION = <<~'SHELL' ... SHELL block"
    return textwrap.dedent(body.group(1))


class TestVagrantfile:
    def test_ruby_syntax(self):
        """`ruby -c Vagrantfile` says Syntax OK."""
        require_tool("ruby", "ruby")
        done = subprocess.run(["ruby", "-c", "Vagrantfile"], cwd=REPO, capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "Syntax OK" in done.stdout, done.stderr

    def test_box_is_amazon_linux_2023(self):
        """The box is Amazon Linux 2023 and port 80 is forwarded."""
        text = (REPO / "Vagrantfile").read_text()
        assert 'config.vm.box = "bento/amazonlinux-2023"' in text
        assert 'guest: 80' in text

    def test_provisioning_installs_cdsim_and_deploys_the_sample_as_root(self):
        """The provisioning script is valid bash that installs cdsim and deploys sample_app with cdsim local."""
        script = _vagrant_provision_script()
        done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert "dnf install -y python3.11 python3.11-pip" in script
        assert "python3.11 -m pip install --quiet /vagrant" in script
        assert "useradd" in script and "/home/ec2-user" in script
        config = re.search(r"codedeployagent\.yml <<'YAML'\n(.*?)\nYAML\n", script, re.DOTALL).group(1)
        assert yaml.safe_load(config)[":root_dir"] == "/opt/codedeploy-agent/deployment-root"
        assert yaml.safe_load(config)[":log_dir"] == "/var/log/aws/codedeploy-agent/"
        assert "/etc/codedeploy-agent/conf/codedeployagent.yml" in script
        assert "cdsim local --bundle-location /vagrant/sample_app --type directory" in script


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, args = line.strip().partition(" ")
            out.append((word.upper(), args.strip()))
    return out


class TestDockerfile:
    def test_shape(self):
        """FROM amazonlinux:2023, the project copied in and pip-installed, the agent config written."""
        steps = _dockerfile_instructions()
        assert steps[0] == ("FROM", "amazonlinux:2023")
        copies = [args for word, args in steps if word == "COPY"]
        assert copies == [". /opt/cdsim"]
        runs = " ".join(args for word, args in steps if word == "RUN")
        assert "python3.11" in runs and "pip install --no-cache-dir /opt/cdsim" in runs
        assert "/etc/codedeploy-agent/conf/codedeployagent.yml" in runs
        assert ":root_dir: '/opt/codedeploy-agent/deployment-root'" in runs
        assert ":log_dir: '/var/log/aws/codedeploy-agent/'" in runs

    def test_cmd_deploys_the_sample_then_stays_in_the_foreground(self):
        """CMD (exec form) runs cdsim local on the copied sample, then execs a foreground process."""
        [cmd] = [args for word, args in _dockerfile_instructions() if word == "CMD"]
        argv = json.loads(cmd)
        assert argv[:2] == ["/bin/bash", "-c"]
        assert argv[2].startswith("cdsim local --bundle-location /opt/cdsim/sample_app --type directory && exec ")
        done = subprocess.run(["bash", "-n"], input=argv[2], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr

    def test_dockerignore_keeps_what_the_build_needs(self):
        """The build context drops .git and caches but keeps the package, the sample and the README."""
        ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
        assert ".git" in ignored and "**/__pycache__" in ignored
        for needed in ("agent", "hooks_runtime", "sample_app", "pyproject.toml", "README.md"):
            assert needed not in ignored



class TestValidate:
    def test_validate_finds_no_errors_in_the_sample(self):
        """`cdsim validate --strict sample_app` exits 0: no error and no warning."""
        done = subprocess.run([*CLI, "validate", "--strict", str(SAMPLE)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert " 0 errors, 0 warnings" in done.stdout

    def test_validate_names_the_crlf_script(self):
        """`cdsim validate` flags the broken variant's CRLF #! line before any deployment."""
        done = subprocess.run([*CLI, "validate", str(BROKEN / "crlf_script")],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0
        assert "[script-crlf-shebang]" in done.stdout


# ---------------------------------------------------------------------------------------------------
# Real deployments with `cdsim local` (agent-exact, on "the host") inside private mount, PID and network
# namespaces: /etc is an overlay and /home, /var/www, /var/log, /run are empty tmpfs, so the hooks can
# create ec2-user, bind port 80 and write /etc/httpd while the real host stays untouched. Everything
# started inside ends with the namespace.

NAMESPACE_SETUP = r"""
set -euo pipefail
mount -t tmpfs tmpfs "$T/ns"
mkdir "$T/ns/up" "$T/ns/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/ns/up,workdir=$T/ns/work" /etc
for d in /home /var/www /var/log /run; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
"$PY" -c 'import fcntl, socket, struct
fcntl.ioctl(socket.socket(), 0x8914, struct.pack("16sH", b"lo", 0x41))'  # SIOCSIFFLAGS lo UP|RUNNING
cd "$T"
deploy() { "$PY" -m agent local -c "$T/agent.yml" --type directory "$@"; echo "exit status $?"; }
set +e
"""


def _namespaces_usable() -> str | None:
    """Why the namespaced deployments cannot run here, or None."""
    require_tool("unshare", "util-linux")
    done = subprocess.run(["unshare", "--mount", "--pid", "--net", "--fork", "true"], capture_output=True, check=False)
    if done.returncode != 0:
        return f"unshare is not permitted here: {done.stderr.decode().strip()}"
    return None


def _deploy_in_namespaces(tmp_path: Path, commands: str, timeout: float = 120) -> str:
    reason = _namespaces_usable()
    if reason:
        pytest.skip(reason)
    (tmp_path / "ns").mkdir()
    (tmp_path / "agent.yml").write_text(f":root_dir: {tmp_path}/root\n:log_dir: {tmp_path}/log\n")
    env = {**os.environ, "T": str(tmp_path), "PY": sys.executable,
           # the hooks' python3 is cdsim's (as with an activated virtual environment)
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(["unshare", "--mount", "--pid", "--net", "--fork", "--mount-proc", "bash", "-c",
                           NAMESPACE_SETUP + commands], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return done.stdout + done.stderr


def _scripts_logs(tmp_path: Path, group: str) -> list[str]:
    """scripts.log of each deployment of the group, oldest first."""
    dirs = sorted((tmp_path / "root" / group).glob("d-*"), key=lambda d: d.stat().st_mtime_ns)
    return [(d / "logs" / "scripts.log").read_text() if (d / "logs" / "scripts.log").exists() else ""
            for d in dirs]


@needs_root("private mount, PID and network namespaces and an overlay on /etc need root (CI runs as root)")
class TestDeployments:
    def test_sample_deploys_twice_and_the_second_stop_ends_the_first_server(self, tmp_path):
        """Two deployments succeed; the second ApplicationStop stops the first server; the page is served."""
        pytest.importorskip("flask", reason="Flask is not installed (pip install '.[sample]')")
        out = _deploy_in_namespaces(tmp_path, f"""
            deploy -l {SAMPLE} -g sample
            deploy -l {SAMPLE} -g sample
            stat -c '%U:%G %n' /home/ec2-user/sample-app/app/__init__.py /var/www/sample-app/app.wsgi \
                /etc/httpd/conf.d/sample_app.conf
            find /home/ec2-user/sample-app -name __pycache__
        """)
        assert out.count("AppSpec file valid. Local deployment successful") == 2, out
        assert out.count("exit status 0") == 2, out
        assert "ec2-user:ec2-user /home/ec2-user/sample-app/app/__init__.py" in out
        assert "root:root /var/www/sample-app/app.wsgi" in out
        assert "/etc/httpd/conf.d/sample_app.conf" in out and "__pycache__" not in out
        first, second = _scripts_logs(tmp_path, "sample")
        first_pid = re.search(r"serve\.py \(pid (\d+)\) serves", first).group(1)
        application_stop = second.split("LifecycleEvent - ApplicationStop")[1].split("LifecycleEvent - ")[0]
        assert f"[stdout]stopped the server (pid {first_pid})" in application_stop
        for log in (first, second):
            assert f"[stdout]<h1>{EXPECTED_TEXT}</h1>" in log
            assert "[stdout]ValidateService passed" in log

    def test_broken_crlf_script_fails_with_enoent(self, tmp_path):
        """The CRLF script cannot start: the agent's ENOENT message, and nothing installed."""
        out = _deploy_in_namespaces(tmp_path, f"deploy -l {BROKEN / 'crlf_script'} -g crlf")
        assert ("Script at specified location: scripts/create_app_user failed with error Errno::ENOENT "
                "with message No such file or directory - ") in out
        assert "exit status 0" not in out

    def test_broken_release_2_collides_with_the_file_release_1_wrote(self, tmp_path):
        """Release 1 deploys; release 2 fails Install on the file release 1's hook wrote (DISALLOW)."""
        out = _deploy_in_namespaces(tmp_path, f"""
            deploy -l {BROKEN / 'file_collision' / 'v1'} -g collision
            deploy -l {BROKEN / 'file_collision' / 'v2'} -g collision
        """)
        assert out.count("AppSpec file valid. Local deployment successful") == 1, out
        assert ("The deployment failed because a specified file already exists at this location: "
                "/etc/sample-app/settings.ini") in out

    def test_broken_attached_server_fails_to_close_stdout_after_the_timeout(self, tmp_path):
        """The backgrounded server keeps the hook's output: failure after the 20 s timeout, server ended."""
        out = _deploy_in_namespaces(tmp_path, f"""
            deploy -l {BROKEN / 'output_attached'} -g attached
            echo "left running: $(ps -eo args | grep -c '^python3 -m http.server')"
        """)
        assert "Script at specified location: scripts/start_server failed to close STDOUT" in out, out
        assert "python3 -m http.server 8080" in out            # cdsim names the process
        assert "left running: 0" in out, out                    # and none is left running
