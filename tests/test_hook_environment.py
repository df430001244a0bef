"""What hooks see: the agent service's environment and cwd under `cdsim deploy` (spec §7.3, §9.1), the
caller's with `--inherit-env` and under `cdsim local`, and the hint for a command the hook's PATH lacks.

Real deployments through the CLI; each hook writes `env -0` and `pwd` into a file the test reads.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent.errors import ExitStatus
from hooks_runtime.environment import AGENT_REMOVED_VARIABLES, UNIT_COMMAND, service_environment
from tests import lib
from tests.lib import REPO

CALLER_ONLY = "CDSIM_TEST_CALLER_ONLY"
# variables the recording shell itself sets anew (exported by bash -a, so they show in its env)
SHELL_SETS = {"PPID", "PWD", "OLDPWD", "EPOCHREALTIME", "EPOCHSECONDS", "SRANDOM", "RANDOM", "LINENO"}


def hook_bundle(folder: Path, body: str, name: str = "hook.sh") -> Path:
    """A bundle whose only hook, BeforeInstall, is the shell script ``body``."""
    folder.mkdir(parents=True)
    (folder / name).write_text("#!/bin/sh\n" + body)
    (folder / name).chmod(0o755)
    (folder / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n"
                                        f"    - location: {name}\n")
    return folder


def recording_bundle(folder: Path, out: Path) -> Path:
    """A bundle whose BeforeInstall writes its environment (NUL-separated) and cwd under ``out``."""
    return hook_bundle(folder, f"env -0 > {out}/env\npwd > {out}/pwd\n", "record.sh")


def recorded(out: Path) -> tuple[dict[str, str], str]:
    pairs = (item.split("=", 1) for item in (out / "env").read_text().split("\0") if "=" in item)
    return dict(pairs), (out / "pwd").read_text().strip()


def cdsim(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    """cdsim from ``tmp_path``/cwd, state in ``tmp_path``/state, with variables only the caller has."""
    env = {CALLER_ONLY: "yes", "AWS_ACCESS_KEY_ID": "AKIDCALLER", "AWS_SECRET_ACCESS_KEY": "callersecret"}
    if path is not None:
        env["PATH"] = path
    caller_cwd = tmp_path / "cwd"
    caller_cwd.mkdir(exist_ok=True)
    return lib.cdsim(*args, state=tmp_path / "state", env=env, cwd=caller_cwd, timeout=180)


def assert_service_environment(env: dict[str, str], cwd: str) -> None:
    expected = service_environment()
    assert cwd == "/"
    assert CALLER_ONLY not in env
    for name in AGENT_REMOVED_VARIABLES:
        assert name not in env
    assert "HOME" not in env                    # systemd gives a root service none
    assert env["PATH"] == expected["PATH"]
    assert env["BASH_EXECUTION_STRING"] == UNIT_COMMAND
    assert env["_"] == "/opt/codedeploy-agent/bin/codedeploy-agent"
    assert env["LIFECYCLE_EVENT"] == "BeforeInstall" and env["DEPLOYMENT_ID"].startswith("d-")
    codedeploy = {"LIFECYCLE_EVENT", "DEPLOYMENT_ID", "APPLICATION_NAME", "DEPLOYMENT_GROUP_NAME",
                  "DEPLOYMENT_GROUP_ID"}
    assert set(env) - set(expected) == codedeploy   # nothing from the caller, nothing of cdsim's
    assert {k: v for k, v in env.items() if k not in codedeploy | SHELL_SETS} == \
        {k: v for k, v in expected.items() if k not in SHELL_SETS}


class TestDeploy:
    def test_host_deploy_gives_the_service_environment(self, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        proc = cdsim(tmp_path, "deploy", "--host", "--root-dir", str(tmp_path / "root"),
                     str(recording_bundle(tmp_path / "b", out)))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert_service_environment(*recorded(out))

    def test_inherit_env_gives_the_callers(self, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        proc = cdsim(tmp_path, "deploy", "--host", "--inherit-env", "--root-dir", str(tmp_path / "root"),
                     str(recording_bundle(tmp_path / "b", out)))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        env, cwd = recorded(out)
        assert cwd == str(tmp_path / "cwd")
        assert env[CALLER_ONLY] == "yes" and env["AWS_ACCESS_KEY_ID"] == "AKIDCALLER"
        assert env["PATH"] == os.environ["PATH"]

    @lib.needs_root("deploys into a root instance (CI runs as root); "
                    "test_unprivileged_sample.py covers an ordinary user")
    def test_instance_deploy_gives_the_service_environment_of_the_instance(self, tmp_path, state):
        out = Path("/tmp") / f"cdsim-hookenv-{os.getpid()}"   # inside the instance: its own /tmp layer
        bundle = hook_bundle(tmp_path / "b", f"mkdir -p {out}\nenv -0 > {out}/env\npwd > {out}/pwd\n")
        proc = cdsim(tmp_path, "deploy", str(bundle))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        import agent.instance as inst
        upper = inst.get("default", state=state).upper
        env, cwd = recorded(Path(upper + str(out)))
        assert cwd == "/" and CALLER_ONLY not in env and "AWS_ACCESS_KEY_ID" not in env
        assert "/usr/sbin" in env["PATH"].split(":")   # root's /etc/profile: groupadd, useradd are found
        assert env["_"] == "/opt/codedeploy-agent/bin/codedeploy-agent"


class TestLocal:
    def test_local_keeps_the_callers_environment_and_cwd(self, tmp_path):
        """`cdsim local` is codedeploy-local: the caller's environment (AWS keys included) and cwd."""
        out = tmp_path / "out"
        out.mkdir()
        config = tmp_path / "agent.yml"
        config.write_text(f":root_dir: {tmp_path / 'root'}\n:log_dir: {tmp_path / 'log'}\n")
        proc = cdsim(tmp_path, "local", "-l", str(recording_bundle(tmp_path / "b", out)), "-t", "directory",
                     "--agent-configuration-file", str(config))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        env, cwd = recorded(out)
        assert cwd == str(tmp_path / "cwd")
        assert env[CALLER_ONLY] == "yes" and env["AWS_ACCESS_KEY_ID"] == "AKIDCALLER"


class TestCommandNotFound:
    def test_127_names_where_the_command_is_and_the_hooks_path(self, tmp_path):
        """A command only on the caller's PATH: the hook fails with 127 and the hint says where it is."""
        tools = tmp_path / "tools"
        tools.mkdir()
        (tools / "cdsim-only-here").write_text("#!/bin/sh\nexit 0\n")
        (tools / "cdsim-only-here").chmod(0o755)
        bundle = hook_bundle(tmp_path / "b", "echo before\ncdsim-only-here --now\n")
        caller_path = f"{tools}:{os.environ['PATH']}"
        proc = cdsim(tmp_path, "deploy", "--host", "--root-dir", str(tmp_path / "root"), str(bundle),
                     path=caller_path)
        assert proc.returncode == ExitStatus.HOOK_FAILED, proc.stdout + proc.stderr
        assert "failed with exit code 127" in proc.stdout
        assert f"cdsim-only-here is {tools}/cdsim-only-here" in proc.stdout
        assert f"PATH={service_environment()['PATH']}" in proc.stdout
        assert "--inherit-env" in proc.stdout
        again = cdsim(tmp_path, "deploy", "--host", "--inherit-env", "--root-dir", str(tmp_path / "root"),
                      str(bundle), path=caller_path)
        assert again.returncode == 0, again.stdout + again.stderr

    def test_127_without_a_name_still_shows_the_path(self, tmp_path):
        bundle = hook_bundle(tmp_path / "b", "exit 127\n")
        proc = cdsim(tmp_path, "deploy", "--host", "--root-dir", str(tmp_path / "root"), str(bundle))
        assert proc.returncode == ExitStatus.HOOK_FAILED
        assert "exit code 127 is the shell's 'command not found'; the hook's PATH was" in proc.stdout


class TestCrlfHint:
    def test_crlf_script_failure_says_how_to_fix_it(self, tmp_path):
        """sample_app_broken/crlf_script fails at deploy time with the fix validate gives."""
        proc = cdsim(tmp_path, "deploy", "--host", "--root-dir", str(tmp_path / "root"),
                     str(REPO / "sample_app_broken" / "crlf_script"))
        assert proc.returncode == ExitStatus.HOOK_FAILED, proc.stdout + proc.stderr
        assert ("hint: the #! line of scripts/create_app_user ends with a carriage return (CRLF line endings)"
                in proc.stdout)
        assert "dos2unix scripts/create_app_user" in proc.stdout
