"""`systemctl` in instances: cdsim's stand-in (agent.instance.systemctl, .systemctl_manager) and the
unit-file reading it rests on (agent.instance.systemctl_units).

One instance serves the file's instance tests (module fixture; the last test stops it). Hooks run real
`systemctl` command lines inside it; outcomes are read from the hooks' output, from `systemctl` run in
the instance, and from the host's view of the instance's processes and upper layer.
"""
from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

import agent.instance as inst
from agent.errors import ExitStatus
from agent.instance import systemctl_units as units
from tests import lib
from tests.lib import REPO

PYTHON = "/usr/bin/python3"   # the userland's: Debian's python3 (CI installs python3-venv)
PORT = 8181


def cdsim(state: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return lib.cdsim(*args, state=state, cwd=REPO, timeout=timeout)


# ---- the unit file syntax (pure) ----------------------------------------------------------------

class TestUnitFiles:
    def test_sections_continuations_comments_resets_and_dropins(self):
        """Keys as systemd reads them: a backslash joins lines, comments are skipped, an empty assignment
        resets a list, a later file (drop-in) adds to it, and a bad line is reported with its line."""
        unit = units.Unit("app.service", "/etc/systemd/system/app.service")
        units.parse("# comment\n[Unit]\nDescription=My app\n\n[Service]\nExecStartPre=/bin/a\n"
                    "ExecStartPre=\nExecStartPre=/bin/b \\\n  --flag\n; another\nEnvironment=A=1\n"
                    "nonsense line\n", unit, unit.path)
        units.parse("[Service]\nEnvironment=B=2\nUser=nobody\n", unit, "/etc/systemd/system/app.service.d/x.conf")
        assert unit.description == "My app"
        assert unit.values("Service", "ExecStartPre") == ["/bin/b  --flag"]
        assert unit.values("Service", "Environment") == ["A=1", "B=2"]
        assert unit.get("Service", "User") == "nobody"
        assert unit.problems == ["/etc/systemd/system/app.service:12: Missing '=', ignoring line."]
        assert unit.service_type == "oneshot"   # no ExecStart=: systemd's default

    def test_command_lines_quoting_prefixes_variables_and_specifiers(self):
        """`Exec*=` words with systemd's quoting and escapes, its prefixes, ${VAR} in place, a lone
        $VAR split into words, and %n/%N/%i."""
        cmd = units.command("-@/bin/echo echo \"a b\" 'c d' e\\ f ${X}y $W %n %i", {"n": "app@1.service", "i": "1"})
        assert cmd.ignore_failure and cmd.argv0 == "echo"
        assert units.expand_variables(cmd, {"X": "x", "W": "w1 w2"}) == [
            "/bin/echo", "a b", "c d", "e f", "xy", "w1", "w2", "app@1.service", "1"]
        assert units.command("+/bin/true", {}).privileged
        with pytest.raises(ValueError):
            units.command("/bin/echo 'unbalanced", {})
        with pytest.raises(ValueError):
            units.command("-", {})

    def test_environment_lines_files_and_time_spans(self):
        assert units.environment(['A=1 "B=two words" C', "A=3"]) == {"A": "3", "B": "two words"}
        assert units.environment_file("# c\n; c\nexport X=1\nY='a b'\nZ=\"q \\\"x\\\"\"\nbad\n") == {
            "X": "1", "Y": "a b", "Z": 'q "x"'}
        assert units.seconds("90") == 90 and units.seconds("1min 30s") == 90 and units.seconds("500ms") == 0.5
        assert units.seconds("infinity") == float("inf") and units.seconds("junk", 7) == 7

    def test_unit_names(self):
        assert units.unit_name("httpd") == "httpd.service"
        assert units.unit_name("multi-user.target") == "multi-user.target"
        for bad in ("", "-x", "a/b", "a\nb"):
            with pytest.raises(ValueError):
                units.unit_name(bad)


# ---- in an instance ------------------------------------------------------------------------------

UNIT = f"""\
[Unit]
Description=cdsim test web app

[Service]
WorkingDirectory=/var/www/cdsim-web
ExecStart={PYTHON} -m http.server {PORT} --bind 127.0.0.1
ExecStop=/bin/sh -c 'echo "stopped $MAINPID" >> /var/tmp/cdsim-web.stops'

[Install]
WantedBy=multi-user.target
"""

APPSPEC = """\
version: 0.0
os: linux
files:
  - source: app.service
    destination: /etc/systemd/system
  - source: index.html
    destination: /var/www/cdsim-web
file_exists_behavior: OVERWRITE
hooks:
  ApplicationStop:
    - location: stop.sh
  AfterInstall:
    - location: start.sh
  ValidateService:
    - location: validate.sh
"""

STOP = """\
#!/bin/sh
old=$(systemctl show -p MainPID --value app)
systemctl stop app
stopped=$?
active=$(systemctl is-active app)
echo "stop: $stopped is-active=$active ($?)"
if kill -0 "$old" 2>/dev/null; then echo "pid $old still runs"; else echo "pid $old gone"; fi
"""

START = """\
#!/bin/sh
systemctl daemon-reload && systemctl enable --now app
echo "start: $?"
"""

VALIDATE = f"""\
#!/bin/sh
exec {PYTHON} - <<'EOF'
import time, urllib.request
for attempt in range(100):
    try:
        body = urllib.request.urlopen("http://127.0.0.1:{PORT}/", timeout=5).read().decode()
        break
    except OSError:
        time.sleep(0.05)
print("validate:", body.strip())
EOF
"""


def web_bundle(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "appspec.yml").write_text(APPSPEC)
    (folder / "app.service").write_text(UNIT)
    (folder / "index.html").write_text(f"hello from {version}\n")
    for name, body in (("stop.sh", STOP), ("start.sh", START), ("validate.sh", VALIDATE)):
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def sysd(tmp_path_factory):
    """A running instance (root's), made for this file: (state folder, instance)."""
    if not lib.IS_ROOT:
        lib.skip_or_fail("these tests deploy into an instance as root (CI runs as root); "
                         "test_an_unprivileged_instance_has_the_stand_in_too covers an ordinary user")
    state = str(tmp_path_factory.mktemp("systemctl") / "state")
    assert cdsim(state, "instance", "create", "web").returncode == 0
    started = cdsim(state, "instance", "exec", "web", "--", "true")
    assert started.returncode == 0, started.stderr
    yield state, inst.get("web", state=state)
    cdsim(state, "instance", "destroy", "web")


def in_web(sysd, script: str) -> subprocess.CompletedProcess:
    return cdsim(sysd[0], "instance", "exec", "web", "--", "/bin/sh", "-c", script)


def deploy(sysd, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    return cdsim(sysd[0], "deploy", "--instance", "web", *extra, str(bundle))


def host_pids_running(instance, needle: str) -> list[int]:
    found = []
    for pid in inst.processes(instance):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle.encode() in f.read().replace(b"\0", b" "):
                    found.append(pid)
        except OSError:
            continue
    return found


def test_a_hook_starts_a_service_that_outlives_it_and_the_next_application_stop_stops_it(sysd, tmp_path):
    """AfterInstall runs `systemctl daemon-reload && systemctl enable --now app`, ValidateService reaches
    the service over HTTP, the service still runs after the deployment; the next deployment's
    ApplicationStop `systemctl stop`s it (its ExecStop runs, its process is gone) and AfterInstall starts
    the new revision's."""
    first = deploy(sysd, web_bundle(tmp_path / "v1", "v1"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "start: 0" in first.stdout and "validate: hello from v1" in first.stdout
    assert "Created symlink /etc/systemd/system/multi-user.target.wants/app.service \u2192 " \
           "/etc/systemd/system/app.service." in first.stdout + first.stderr + _scripts_logs(sysd)
    [server] = host_pids_running(sysd[1], f"http.server {PORT}")   # outlived the hook, seen from the host
    assert "http.server" not in first.stdout + first.stderr   # not the hook's: not among what it "left running"

    status = in_web(sysd, "systemctl status app; echo rc=$?; systemctl is-active app; echo rc=$?; "
                         "systemctl is-enabled app; echo rc=$?")
    lines = status.stdout.splitlines()
    assert lines[0] == "\u25cf app.service - cdsim test web app"
    assert lines[1] == "     Loaded: loaded (/etc/systemd/system/app.service; enabled; preset: disabled)"
    assert re.fullmatch(r"     Active: active \(running\) since \w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \w+; .+ ago",
                        lines[2]), lines[2]
    assert re.fullmatch(r"   Main PID: \d+ \(python3\)", lines[3]), lines[3]
    assert lines[-5:] == ["rc=0", "active", "rc=0", "enabled", "rc=0"], status.stdout
    journal = in_web(sysd, "journalctl -u app --no-pager -n 50; journalctl -n 1 -u nothing-here")
    assert re.search(r"^\w{3} \d\d \d\d:\d\d:\d\d web systemd\[1\]: Started app.service - cdsim test web app\.$",
                     journal.stdout, re.MULTILINE), journal.stdout
    assert journal.stdout.endswith("\n-- No entries --\n"), journal.stdout

    second = deploy(sysd, web_bundle(tmp_path / "v2", "v2"))
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.search(r"stop: 0 is-active=inactive \(3\)", second.stdout), second.stdout
    assert re.search(r"pid \d+ gone", second.stdout), second.stdout
    assert "validate: hello from v2" in second.stdout
    assert not os.path.exists(f"/proc/{server}") or server not in inst.processes(sysd[1])
    stops = (Path(sysd[1].upper) / "var/tmp/cdsim-web.stops").read_text()
    assert re.fullmatch(r"stopped \d+\n", stops), stops

    after = in_web(sysd, "systemctl stop app; systemctl status app; echo rc=$?; systemctl is-active app; echo rc=$?")
    lines = after.stdout.splitlines()
    assert lines[0] == "\u25cb app.service - cdsim test web app"
    assert re.fullmatch(r"     Active: inactive \(dead\) since .+ ago", lines[2]), lines[2]
    assert lines[-3:] == ["rc=3", "inactive", "rc=3"], after.stdout


def _scripts_logs(sysd) -> str:
    root = Path(sysd[1].upper) / "opt/codedeploy-agent/deployment-root"
    return "".join(p.read_text() for p in root.glob("*/*/logs/scripts.log"))


def test_a_timed_out_hook_does_not_take_the_service_it_started_with_it(sysd, tmp_path):
    """A hook that starts a unit and then hangs is killed at its timeout, with every process it
    started itself; the unit's service, which the manager started, keeps running."""
    bundle = tmp_path / "hang"
    bundle.mkdir()
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n"
                                        "    - location: hang.sh\n      timeout: 4\n")
    (bundle / "hang.sh").write_text(textwrap.dedent("""\
        #!/bin/sh
        mkdir -p /etc/systemd/system
        printf '[Service]\\nExecStart=/bin/sleep 4242\\n' > /etc/systemd/system/sleeper.service
        systemctl start sleeper && echo started
        /bin/sleep 4343 &
        wait
        """))
    (bundle / "hang.sh").chmod(0o755)
    done = deploy(sysd, bundle, "--grace-period", "0.5")
    assert done.returncode == ExitStatus.HOOK_TIMED_OUT, done.stdout + done.stderr
    assert "started" in done.stdout
    assert host_pids_running(sysd[1], "sleep 4242"), "the unit's service was killed with the hook"
    assert not host_pids_running(sysd[1], "sleep 4343"), "the hook's own child outlived its timeout"
    stopped = in_web(sysd, "systemctl stop sleeper && systemctl is-active sleeper")
    assert stopped.stdout == "inactive\n" and stopped.returncode == 3
    assert not host_pids_running(sysd[1], "sleep 4242")


SCRIPT = r"""
mkdir -p /etc/systemd/system /etc/default
cd /etc/systemd/system
printf '[Service]\nType=oneshot\nExecStart=/bin/false\n' > broken.service
cat > once.service <<'EOF'
[Service]
Type=oneshot
RemainAfterExit=yes
Environment="GREETING=hello there"
EnvironmentFile=/etc/default/once
EnvironmentFile=-/etc/default/missing
ExecStartPre=/bin/sh -c "echo pre > /var/tmp/once.pre"
ExecStart=/bin/sh -c "echo $GREETING $FROM_FILE $(id -un) $(pwd) > /var/tmp/once.out"
User=nobody
WorkingDirectory=/tmp
EOF
echo 'FROM_FILE="from file"' > /etc/default/once
cat > forker.service <<'EOF'
[Service]
Type=forking
PIDFile=/run/forker.pid
ExecStart=/bin/sh -c "sleep 4444 & echo $! > /run/forker.pid"
EOF
cat > notifier.service <<'EOF'
[Service]
Type=notify
ExecStart=PYTHON -c "import os, socket, time; time.sleep(0.3); \
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); \
    time.sleep(4545)"
EOF
printf '[Service]\nExecStart=/nonexistent/program\n' > missing.service
cat > flaky.service <<'EOF'
[Service]
ExecStart=/bin/sh -c "echo run >> /var/tmp/flaky.runs; exit 1"
Restart=on-failure
RestartSec=50ms
EOF
cd /
systemctl start broken; echo "broken start=$?"
systemctl status broken > /var/tmp/broken.status; echo "broken status=$?"
systemctl is-failed broken; echo "is-failed=$?"
systemctl start once
echo "once start=$? $(systemctl is-active once) $(cat /var/tmp/once.pre) $(cat /var/tmp/once.out)"
systemctl start forker
echo "forker start=$? $(systemctl is-active forker) main=$(systemctl show -p MainPID --value forker)" \
     "pidfile=$(cat /run/forker.pid)"
systemctl start notifier; echo "notifier start=$? $(systemctl is-active notifier)"
systemctl start missing; echo "missing start=$? $(systemctl is-active missing)"
systemctl start flaky
for i in $(seq 100); do [ "$(systemctl show -p Result --value flaky)" = start-limit-hit ] && break; sleep 0.1; done
echo "flaky $(systemctl is-active flaky) $(wc -l < /var/tmp/flaky.runs) $(systemctl show -p Result --value flaky)"
su nobody -s /bin/sh -c 'systemctl stop forker; echo "nobody stop=$?"; systemctl is-active forker; \
                         echo "nobody is-active=$?"'
systemctl stop forker notifier once
echo "stop all=$? $(systemctl is-active forker notifier once | paste -sd' ')"
systemctl start nope; echo "nope start=$?"
systemctl is-enabled nope; echo "nope is-enabled=$?"
systemctl frobnicate; echo "verb=$?"
systemctl --frob; echo "option=$?"
"""


def test_unit_types_environment_user_failures_and_exit_codes(sysd):
    """oneshot (failing, and with RemainAfterExit, ExecStartPre, Environment=, EnvironmentFile=, User=,
    WorkingDirectory=), forking with PIDFile=, notify (start waits for READY=1), a missing program,
    Restart=on-failure up to systemd's start limit, a non-root caller, unknown units, verbs and options:
    systemctl's words and exit codes."""
    done = in_web(sysd, SCRIPT.replace("PYTHON", PYTHON))
    out = done.stdout + done.stderr
    expected = [
        "Job for broken.service failed because the control process exited with error code.",
        "broken start=1", "broken status=3", "failed", "is-failed=0",
        "once start=0 active pre hello there from file nobody /tmp",
        "notifier start=0 active", "missing start=0 failed", "flaky failed 5 start-limit-hit",
        "Failed to stop forker.service: Access denied", "nobody stop=4", "nobody is-active=0",
        "stop all=0 inactive inactive inactive",
        "Failed to start nope.service: Unit nope.service not found.", "nope start=5",
        "Failed to get unit file state for nope.service: No such file or directory", "nope is-enabled=1",
        "Unknown command verb 'frobnicate'.", "verb=1", "systemctl: unrecognized option '--frob'", "option=1"]
    for line in expected:
        assert line in out.splitlines(), f"{line!r} not in:\n{out}"
    forker = re.search(r"forker start=0 active main=(\d+) pidfile=(\d+)", out)
    assert forker and forker.group(1) == forker.group(2), out
    status = (Path(sysd[1].upper) / "var/tmp/broken.status").read_text().splitlines()
    assert status[0] == "\u00d7 broken.service - broken.service"
    assert re.fullmatch(r"     Active: failed \(Result: exit-code\) since .+ ago", status[2]), status
    assert re.fullmatch(r"    Process: \d+ ExecStart=/bin/false \(code=exited, status=1/FAILURE\)", status[3]), status
    assert not host_pids_running(sysd[1], "sleep 4444")
    assert not host_pids_running(sysd[1], "4545")


def test_init_systemd_says_what_the_host_lacks(sysd):
    """`--init systemd` makes no instance: the error names what this host lacks (or that cdsim can't boot
    systemd yet) and points at the stand-in."""
    done = cdsim(sysd[0], "instance", "create", "booted", "--init", "systemd")
    assert done.returncode == ExitStatus.ENVIRONMENT, done.stdout + done.stderr
    assert "cannot create instance 'booted' with --init systemd: " in done.stderr
    assert "cdsim does not boot systemd as an instance's PID 1 yet" in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.exists(os.path.join(sysd[0], "instances", "booted"))


def test_instance_stop_ends_a_running_service_after_its_exec_stop(sysd):
    """`cdsim instance stop` ends a service still running, through the manager: its ExecStop= runs
    first (its mark lands in the upper layer), then nothing of it is left on the host."""
    started = in_web(sysd, "systemctl start app && systemctl is-active app")
    assert started.returncode == 0 and started.stdout == "active\n", started.stdout + started.stderr
    [server] = host_pids_running(sysd[1], f"http.server {PORT}")
    stops = Path(sysd[1].upper) / "var/tmp/cdsim-web.stops"
    before = stops.read_text().count("\n")
    began = time.monotonic()
    stopped = cdsim(sysd[0], "instance", "stop", "web")
    assert stopped.returncode == 0, stopped.stderr
    assert not os.path.exists(f"/proc/{server}") or server not in inst.processes(sysd[1])
    assert not inst.running(sysd[1])
    assert stops.read_text().count("\n") == before + 1, stops.read_text()
    assert time.monotonic() - began < 30


@lib.needs_root("creating a user with useradd and su to it needs root (CI runs as root)")
def test_an_unprivileged_instance_has_the_stand_in_too(runas_user, shared_dir):
    """An instance an ordinary user made (a user namespace) gets the same systemctl: a unit starts, serves,
    stops, and the instance stops cleanly."""
    from test_instance import _destroy_all, _user_cli

    as_user = _user_cli(runas_user, shared_dir)
    try:
        assert as_user("create", "mine").returncode == 0
        done = as_user("exec", "mine", script=(
            "mkdir -p /etc/systemd/system && "
            f"printf '[Service]\\nExecStart={PYTHON} -m http.server {PORT + 1} --bind 127.0.0.1\\n' "
            "> /etc/systemd/system/web.service && systemctl start web && "
            f"{PYTHON} -c \"import time, urllib.request\nfor _ in range(100):\n  try:\n"
            f"    print(urllib.request.urlopen('http://127.0.0.1:{PORT + 1}/').status); break\n"
            "  except OSError: time.sleep(0.05)\" && systemctl stop web && systemctl is-active web; "
            "echo rc=$?"))
        log = Path(as_user.state) / "instances/mine/keeper.log"
        assert done.stdout.splitlines()[-3:] == ["200", "inactive", "rc=3"], \
            done.stdout + done.stderr + (log.read_text() if log.exists() else "")
        assert as_user("stop", "mine").returncode == 0
    finally:
        _destroy_all(as_user)



def busybox_rootfs(rootfs: Path) -> Path:
    """A root file system with no Python: a static busybox and the applets the image tests use, root in
    /etc/passwd and /etc/group, an empty /var/www."""
    busybox = lib.require_tool("busybox", "busybox-static")
    for folder in ("bin", "etc", "tmp", "var/www", "proc", "sys", "dev", "run"):
        (rootfs / folder).mkdir(parents=True)
    (rootfs / "bin/busybox").write_bytes(Path(busybox).read_bytes())
    (rootfs / "bin/busybox").chmod(0o755)
    for tool in ("sh", "mkdir", "printf", "wget", "httpd", "sleep", "cat"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\n")
    return rootfs


@lib.needs_root("instances from a root file system folder are made as root here (CI runs as root)")
def test_an_image_instance_without_python_has_the_stand_in_too(tmp_path):
    """An instance made from an image with no Python (a static busybox): systemctl and journalctl are the
    stand-in (a /bin/sh script running cdsim's Python brought in), a unit starts busybox's httpd, which
    answers, and stops."""
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    (rootfs / "var/www/index.html").write_text("hello from the image\n")
    state = str(tmp_path / "state")
    try:
        assert cdsim(state, "instance", "create", "img", "--image", str(rootfs)).returncode == 0
        done = cdsim(state, "instance", "exec", "img", "--", "/bin/sh", "-c", (
            "mkdir -p /etc/systemd/system && printf '[Service]\\nExecStart=/bin/httpd -f -p 127.0.0.1:8080 "
            "-h /var/www\\n' > /etc/systemd/system/web.service && systemctl start web && "
            "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://127.0.0.1:8080/ && break; sleep 0.2; done; "
            "journalctl -u web -n 1; systemctl stop web; systemctl is-active web; echo rc=$?"))
        lines = done.stdout.splitlines()
        assert lines[0] == "hello from the image", done.stdout + done.stderr
        assert lines[1].endswith("Started web.service - web.service."), done.stdout
        assert lines[2:] == ["inactive", "rc=3"], done.stdout
    finally:
        cdsim(state, "instance", "destroy", "img")


IMAGE_APPSPEC = """\
version: 0.0
os: linux
files:
  - source: index.html
    destination: /var/www
file_exists_behavior: OVERWRITE
hooks:
  ApplicationStop:
    - location: stop.sh
  AfterInstall:
    - location: start.sh
  ValidateService:
    - location: validate.sh
"""


def test_in_an_image_a_hook_starts_the_images_unit_and_the_next_application_stop_stops_it(tmp_path):
    """Issue 19's scenario in an instance made from an image (a static busybox, no Python, the unit file
    /etc/systemd/system/web.service in the image): AfterInstall `systemctl start`s it, ValidateService
    reaches it over HTTP, the service outlives the deployment; the next deployment's ApplicationStop
    `systemctl stop`s it (its process gone) and starts the new revision's; `cdsim instance stop` ends that."""
    if not lib.IS_ROOT:
        lib.skip_or_fail("deploys into an instance as root (CI runs as root)")
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    (rootfs / "etc/systemd/system").mkdir(parents=True)
    (rootfs / "etc/systemd/system/web.service").write_text(
        "[Unit]\nDescription=the image's web server\n\n"
        "[Service]\nExecStart=/bin/httpd -f -p 127.0.0.1:8081 -h /var/www\n")
    scripts = {
        "stop.sh": "#!/bin/sh\nsystemctl stop web\necho \"stop: $? is-active=$(systemctl is-active web)\"\n",
        "start.sh": "#!/bin/sh\nsystemctl start web\necho \"start: $?\"\n",
        "validate.sh": "#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do\n"
                       "  body=$(wget -qO- http://127.0.0.1:8081/index.html) && break; sleep 0.25\ndone\n"
                       "echo \"validate: $body\"\n",
    }

    def bundle(version: str) -> str:
        folder = tmp_path / version
        folder.mkdir()
        (folder / "appspec.yml").write_text(IMAGE_APPSPEC)
        (folder / "index.html").write_text(f"hello from {version}\n")
        for name, body in scripts.items():
            (folder / name).write_text(body)
            (folder / name).chmod(0o755)
        return str(folder)

    state = str(tmp_path / "state")
    try:
        assert cdsim(state, "instance", "create", "img", "--image", str(rootfs)).returncode == 0
        instance = inst.get("img", state=state)
        first = cdsim(state, "deploy", "--instance", "img", bundle("v1"))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "start: 0" in first.stdout and "validate: hello from v1" in first.stdout, first.stdout
        [old] = host_pids_running(instance, "httpd -f -p 127.0.0.1:8081")   # outlived the hook
        second = cdsim(state, "deploy", "--instance", "img", bundle("v2"))
        assert second.returncode == 0, second.stdout + second.stderr
        assert "stop: 0 is-active=inactive" in second.stdout, second.stdout
        assert "validate: hello from v2" in second.stdout, second.stdout
        assert not os.path.exists(f"/proc/{old}"), "ApplicationStop's systemctl stop left the old server"
        [new] = host_pids_running(instance, "httpd -f -p 127.0.0.1:8081")
        assert new != old
        assert cdsim(state, "instance", "stop", "img").returncode == 0
        assert not os.path.exists(f"/proc/{new}"), "cdsim instance stop left the service running"
    finally:
        cdsim(state, "instance", "destroy", "img")
