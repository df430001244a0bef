"""The commands that follow a deployment (logs, history, plan, doctor) look where `cdsim deploy`
deployed: the instance `default` unless --instance or --host says otherwise. Real instances, real
deployments, the CLI run as a subprocess."""
from __future__ import annotations

import functools
import json
import os
import pwd
import re
import subprocess
from pathlib import Path

import pytest

from agent.errors import ExitStatus
from tests import lib
from tests.lib import CLI, REPO


@pytest.fixture(scope="module")
def instances_here():
    """Sandboxed instances work on this machine (skipped by hand without them; CI must have them)."""
    from agent.pytest_plugin import instances_available

    ok, why = instances_available()
    if not ok:
        lib.skip_or_fail(f"sandboxed instances are unavailable here ({why}): apt-get install util-linux, "
                         "run as root")


cdsim = functools.partial(lib.cdsim, cwd=REPO, timeout=180)


def bundle(folder: Path, appspec: str, scripts: dict[str, str] | None = None,
           files: dict[str, str] | None = None) -> Path:
    """A directory bundle: appspec.yml, executable scripts and plain files."""
    folder.mkdir(parents=True)
    (folder / "appspec.yml").write_text(appspec)
    for name, body in (scripts or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)
    for name, body in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(body)
    return folder


def hook_bundle(folder: Path, body: str, event: str = "BeforeInstall") -> Path:
    return bundle(folder, f"version: 0.0\nos: linux\nhooks:\n  {event}:\n    - location: hook.sh\n",
                  {"hook.sh": "#!/bin/sh\n" + body})


def deployed_id(proc: subprocess.CompletedProcess) -> str:
    found = re.search(r"Deployment (\S+) succeeded", proc.stdout)
    assert found, proc.stdout + proc.stderr
    return found.group(1)


def instance_exists(state: str, name: str) -> bool:
    return os.path.isfile(os.path.join(state, "instances", name, "meta.json"))


class TestLogsAndHistory:
    def test_right_after_deploy_they_show_that_deployment(self, state, tmp_path, instances_here):
        """`cdsim deploy` (no flags) then `cdsim history` and `cdsim logs` (no flags) show that
        deployment and its hook's output; --host does not (it was not made on this machine)."""
        b = hook_bundle(tmp_path / "b", "echo hello from inside the default instance\n")
        deployed = cdsim("deploy", str(b), cwd=tmp_path)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        deployment = deployed_id(deployed)

        history = cdsim("history", cwd=tmp_path)
        assert history.returncode == 0, history.stderr
        [line] = history.stdout.splitlines()
        assert deployment in line and "Succeeded" in line and "1 hook" in line

        logs = cdsim("logs", "--no-timestamps", cwd=tmp_path)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout == ("LifecycleEvent - BeforeInstall\nScript - hook.sh\n"
                               "[stdout]hello from inside the default instance\n")

        on_host = cdsim("history", "--host", "--format", "json", cwd=tmp_path)
        assert deployment not in on_host.stdout

    def test_follow_without_flags_follows_the_deployment_running_in_default(self, state, tmp_path,
                                                                             instances_here):
        """`cdsim logs --follow` while `cdsim deploy` runs in the default instance: the line printed
        before the hook pauses shows while the deployment still runs, and logs exits when it ends."""
        import glob
        import time

        b = hook_bundle(tmp_path / "b", "echo before the pause\nsleep 3\necho after the pause\n")
        deploy = subprocess.Popen([*CLI, "deploy", "-q", str(b)], cwd=tmp_path,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            events = os.path.join(state, "instances", "default", "upper", "var/log/aws/codedeploy-agent",
                                  "cdsim-events", "*", "*.jsonl")
            deadline = time.monotonic() + 60
            while not glob.glob(events):
                assert deploy.poll() is None and time.monotonic() < deadline, "no event stream appeared"
                time.sleep(0.05)
            follow = subprocess.Popen([*CLI, "logs", "--follow", "--no-timestamps"],
                                      cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
            with follow:
                line = follow.stdout.readline()
                while line and "before the pause" not in line:
                    line = follow.stdout.readline()
                assert "before the pause" in line
                assert deploy.poll() is None, "the deployment ended before its first line was shown"
                rest = follow.stdout.read()
                assert follow.wait(timeout=30) == 0
            assert "[stdout]after the pause\n" in rest
        finally:
            assert deploy.wait(timeout=60) == 0

    def test_named_instance_is_followed_with_instance_flag(self, state, tmp_path, instances_here):
        """A deployment into --instance NAME is shown by logs/history --instance NAME, not by the
        default view (the instance default has none)."""
        b = hook_bundle(tmp_path / "b", "echo in the named one\n")
        deployed = cdsim("deploy", "--instance", "named", str(b), cwd=tmp_path)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        logs = cdsim("logs", "--instance", "named", "--no-timestamps", cwd=tmp_path)
        assert "[stdout]in the named one\n" in logs.stdout
        default = cdsim("logs", cwd=tmp_path)
        assert default.returncode == ExitStatus.USAGE
        assert "no deployment in instance default yet" in default.stderr

    def test_nothing_deployed_yet_is_said_plainly(self, state, tmp_path):
        """Before any deployment: logs exits USAGE and history 0, both saying there is no deployment
        in instance default yet; neither creates the instance."""
        logs = cdsim("logs", cwd=tmp_path)
        assert logs.returncode == ExitStatus.USAGE
        assert "no deployment in instance default yet" in logs.stderr and "Traceback" not in logs.stderr
        history = cdsim("history", cwd=tmp_path)
        assert history.returncode == 0 and history.stdout == ""
        assert "no deployment in instance default yet" in history.stderr
        assert not instance_exists(state, "default")

    def test_help_speaks_to_users(self):
        """The --help of logs and history says what they show and where, not which module does it."""
        for command in ("logs", "history"):
            text = cdsim(command, "--help").stdout
            assert "agent.commands" not in text and "imports" not in text, text
            assert "--instance" in text and "--host" in text and "cdsim deploy" in text


# a user the host does not have, made inside the instance by a hook of an earlier deployment
APP_USER = f"cdsimpl{os.getpid() % 100000}"


@pytest.fixture
def instance_with_user(state, tmp_path, instances_here) -> str:
    """The instance `plan` made a user in, with a BeforeInstall hook (useradd)."""
    with pytest.raises(KeyError):
        pwd.getpwnam(APP_USER)
    b = hook_bundle(tmp_path / "mkuser", f"useradd -M -s /bin/sh {APP_USER}\n")
    made = cdsim("deploy", "--instance", "plan", str(b), cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    return "plan"


class TestPlan:
    def test_owner_made_by_an_earlier_hook_is_known_only_inside(self, tmp_path, instance_with_user):
        """A permissions owner created by a hook inside the instance: --instance predicts success,
        --host predicts the unknown owner (the host has no such user)."""
        dest = f"/srv/cdsim-plan-owner-{os.getpid()}"
        b = bundle(tmp_path / "owned",
                   f"version: 0.0\nos: linux\nfiles:\n  - source: app.txt\n    destination: {dest}\n"
                   f"permissions:\n  - object: {dest}\n    owner: {APP_USER}\n    type: [file]\n",
                   files={"app.txt": "x\n"})
        inside = cdsim("plan", "--instance", instance_with_user, str(b), cwd=tmp_path)
        assert inside.returncode == ExitStatus.SUCCESS, inside.stdout + inside.stderr
        assert f"against:          instance {instance_with_user}" in inside.stdout
        assert "Outcome: the Install would succeed." in inside.stdout
        assert f"{dest}/app.txt: owner {APP_USER}" in inside.stdout

        here = cdsim("plan", "--host", str(b), cwd=tmp_path)
        assert here.returncode == ExitStatus.DEPLOYMENT_FAILED, here.stdout + here.stderr
        assert f"can't find user for {APP_USER}" in here.stdout
        assert not os.path.exists(dest)

    def test_collision_inside_only_and_cleanup_of_the_instance_root(self, tmp_path, state, instances_here):
        """A file an earlier deployment (group a) put in the instance collides with the same file of
        group b with --instance only; the same bundle again in group a is predicted to replace it after
        the cleanup of the instance's deployment root; a stopped instance is started; planning changes
        nothing in the instance."""
        dest = f"/srv/cdsim-plan-collide-{os.getpid()}"
        spec = f"version: 0.0\nos: linux\nfiles:\n  - source: x.txt\n    destination: {dest}\n"
        first = bundle(tmp_path / "first", spec, files={"x.txt": "one\n"})
        second = bundle(tmp_path / "second", spec, files={"x.txt": "two\n"})
        done = cdsim("deploy", "--instance", "coll", "-g", "a", str(first), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        before = cdsim("instance", "diff", "coll").stdout
        assert cdsim("instance", "stop", "coll").returncode == 0   # plan starts it, as deploy would

        other_group = cdsim("plan", "--instance", "coll", "-g", "b", "--format", "json", str(second), cwd=tmp_path)
        assert other_group.returncode == ExitStatus.FILE_COLLISION, other_group.stdout + other_group.stderr
        found = json.loads(other_group.stdout)
        assert [c["destination"] for c in found["collisions"]] == [f"{dest}/x.txt"]
        assert found["root_dir"] == "/opt/codedeploy-agent/deployment-root"

        same_group = cdsim("plan", "--instance", "coll", "-g", "a", "--format", "json", str(second), cwd=tmp_path)
        assert same_group.returncode == ExitStatus.SUCCESS, same_group.stdout + same_group.stderr
        assert f"{dest}/x.txt" in json.loads(same_group.stdout)["cleanup"]["removes"]

        here = cdsim("plan", "--host", "-g", "b", str(second), cwd=tmp_path)
        assert here.returncode == ExitStatus.SUCCESS, here.stdout + here.stderr
        assert cdsim("instance", "diff", "coll").stdout == before

    def test_instance_not_made_yet_is_planned_against_this_machine(self, state, tmp_path):
        """Without the instance: a note says so, the plan reads this machine (what a new instance starts
        from) and no instance is created."""
        b = bundle(tmp_path / "b", f"version: 0.0\nos: linux\nfiles:\n  - source: x.txt\n"
                                   f"    destination: /srv/cdsim-plan-new-{os.getpid()}\n", files={"x.txt": "x"})
        proc = cdsim("plan", "-l", str(b), cwd=tmp_path)
        assert proc.returncode == ExitStatus.SUCCESS, proc.stdout + proc.stderr
        assert "instance default does not exist yet" in proc.stderr
        assert "against:          this machine (instance default does not exist yet" in proc.stdout
        assert not instance_exists(state, "default")


class TestDoctor:
    def test_command_missing_from_the_hook_path_is_reported_with_where_it_is(self, state, tmp_path,
                                                                              instances_here):
        """A hook script calls a tool found only on the caller's PATH: doctor --instance warns, naming
        the tool's path; the commands the hook PATH has (cat) are not reported."""
        tools = tmp_path / "tools"
        tools.mkdir()
        (tools / "cdsim-only-mine").write_text("#!/bin/sh\necho mine\n")
        (tools / "cdsim-only-mine").chmod(0o755)
        b = hook_bundle(tmp_path / "b", "set -e\nVERSION=1 cdsim-only-mine --version | cat\n")
        created = cdsim("instance", "create", "doc")
        assert created.returncode == 0, created.stderr
        proc = cdsim("doctor", "--instance", "doc", "--format", "json", str(b), cwd=tmp_path,
                     env={"PATH": f"{tools}:{os.environ['PATH']}"})
        report = json.loads(proc.stdout)
        found = {c["name"]: c for c in report["checks"]}
        assert found["enter instance"]["status"] == "ok"
        missing = found["command cdsim-only-mine"]
        assert missing["status"] == "warn" and missing["where"] == "instance doc"
        assert f"not on the hook PATH, but on yours: {tools}/cdsim-only-mine" in missing["detail"]
        assert found["hook PATH"]["detail"].startswith("hooks get PATH=")
        assert "command cat" not in found
        assert proc.returncode == ExitStatus.SUCCESS, proc.stderr   # a warning, not a failure

    def test_instance_not_made_yet_is_judged_by_this_machine(self, state, tmp_path):
        """doctor with no flags and no instance: says the instance does not exist yet, checks the
        bundle here, creates nothing."""
        b = hook_bundle(tmp_path / "b", "true\n")
        proc = cdsim("doctor", "--format", "json", str(b), cwd=tmp_path)
        found = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
        assert "does not exist yet" in found["instance"]["detail"]
        assert found["hook PATH"]["where"] == "this machine"
        assert not instance_exists(state, "default")


def _as_user(user, *args: str, state_dir: str) -> subprocess.CompletedProcess:
    """`cdsim ARGS` run as ``user`` via su (skipped when no interpreter it may run imports agent)."""
    return lib.cdsim(*args, user=user.pw_name, state=state_dir, timeout=180)


class TestDoctorIdMap:
    def test_unprivileged_caller_without_subordinate_ids_fails_a_runas_bundle(self, shared_dir, instances_here,
                                                                               user_without_subids):
        """As a user without subordinate ids, for a bundle whose hook runs as ec2-user: doctor says the
        instance would map only that user, and fails (the deployment would fail the same way)."""
        user = user_without_subids
        b = Path(shared_dir) / "b"
        bundle(b, "version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: hook.sh\n"
                  "      runas: ec2-user\n", {"hook.sh": "#!/bin/sh\ntrue\n"})
        os.chmod(b, 0o755)
        state_dir = os.path.join(shared_dir, "state")
        os.mkdir(state_dir)
        os.chown(state_dir, user.pw_uid, user.pw_gid)
        proc = _as_user(user, "doctor", "--format", "json", str(b), state_dir=state_dir)
        assert proc.returncode == ExitStatus.ENVIRONMENT, proc.stdout + proc.stderr
        found = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
        assert found["id map"]["status"] == "FAIL"
        assert "ec2-user" in found["id map"]["detail"] and "subuid" in found["id map"]["detail"]

        created = _as_user(user, "instance", "create", "mine", state_dir=state_dir)
        assert created.returncode == 0, created.stderr
        try:
            inside = _as_user(user, "doctor", "--instance", "mine", "--format", "json", str(b), state_dir=state_dir)
            found = {c["name"]: c for c in json.loads(inside.stdout)["checks"]}
            assert found["enter instance"]["status"] == "ok", found["enter instance"]
            assert found["id map"]["status"] == "FAIL" and "ec2-user" in found["id map"]["detail"]
            assert found["runas ec2-user"]["where"] == "instance mine"
        finally:
            _as_user(user, "instance", "destroy", "mine", state_dir=state_dir)


class TestBundleLocation:
    def test_l_is_the_bundle_for_deploy_validate_and_doctor(self, tmp_path):
        """-l/--bundle-location names the bundle as the positional does; both at once is a usage error."""
        b = hook_bundle(tmp_path / "b", "echo via -l\n")
        deployed = cdsim("deploy", "--host", "--root-dir", str(tmp_path / "root"), "-l", str(b), cwd=tmp_path,
                         env={"CDSIM_STATE_DIR": str(tmp_path / "state")})
        assert deployed.returncode == 0 and "via -l" in deployed.stdout, deployed.stdout + deployed.stderr
        valid = cdsim("validate", "--bundle-location", str(b), cwd=tmp_path)
        assert valid.returncode == 0 and f"{b}: valid" in valid.stdout
        doctor = cdsim("doctor", "--host", "--format", "json", "-l", str(b), cwd=tmp_path)
        assert "hook PATH" in doctor.stdout
        both = cdsim("validate", "-l", str(b), str(b), cwd=tmp_path)
        assert both.returncode == ExitStatus.USAGE and "given twice" in both.stderr


class TestInstanceDiff:
    def test_caches_of_this_machine_are_left_out_unless_all(self, state, tmp_path, instances_here):
        """Python run inside on a module of this machine writes its __pycache__ there and ldconfig
        rewrites its cache: diff leaves them out (saying so) and --all marks them; the __pycache__ of a
        module made inside stays a change."""
        (tmp_path / "hostpkg").mkdir()
        (tmp_path / "hostpkg" / "hostmod.py").write_text("X = 1\n")
        made = f"/srv/cdsim-diff-{os.getpid()}"
        script = (f"cd {tmp_path}/hostpkg && python3 -c 'import hostmod' && mkdir -p {made} && cd {made} && "
                  "echo 'Y = 2' > madehere.py && python3 -c 'import madehere' && ldconfig")
        assert cdsim("instance", "create", "cache").returncode == 0
        ran = cdsim("instance", "exec", "cache", "--", "env", "-u", "PYTHONDONTWRITEBYTECODE", "sh", "-c", script)
        assert ran.returncode == 0, ran.stderr

        default = cdsim("instance", "diff", "cache")
        assert default.returncode == 0, default.stderr
        assert f"{tmp_path}/hostpkg/__pycache__" not in default.stdout
        assert "ld.so.cache" not in default.stdout and "aux-cache" not in default.stdout
        assert f"A {made}/__pycache__\n" in default.stdout and f"A {made}/madehere.py\n" in default.stdout
        assert "left out" in default.stderr and "--all" in default.stderr

        every = json.loads(cdsim("instance", "diff", "cache", "--all", "--format", "json").stdout)
        marked = {c["path"]: c["incidental"] for c in every}
        assert marked[f"{tmp_path}/hostpkg/__pycache__"] == "bytecode of this machine's Python code"
        assert [p for p in marked if p.startswith(f"{tmp_path}/hostpkg/__pycache__/hostmod.")]
        assert marked[f"{made}/__pycache__"] is None
        assert all(why == "ldconfig's cache" for p, why in marked.items()
                   if p in ("/etc/ld.so.cache", "/var/cache/ldconfig/aux-cache"))
