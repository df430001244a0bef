"""Every ExitStatus, provoked through the real command line (`python -m agent ...` in a subprocess).

Deployments run with `cdsim deploy --host --root-dir <tmp>`, so no instance is needed; each test
builds the smallest bundle that fails the way it wants and asserts the exit status and the message.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.errors import ExitStatus
from tests import lib


def bundle(folder: Path, *, hook: str | None = None, timeout: int = 30, files_to: Path | None = None,
           extra: str = "") -> Path:
    """A directory bundle: an optional BeforeInstall hook (shell body), an optional file mapping."""
    folder.mkdir(parents=True)
    lines = ["version: 0.0", "os: linux"]
    if files_to is not None:
        (folder / "app").mkdir()
        (folder / "app" / "index.txt").write_text("hello\n")
        lines += ["files:", "  - source: app", f"    destination: {files_to}"]
    if hook is not None:
        (folder / "hook.sh").write_text("#!/bin/sh\n" + hook)
        (folder / "hook.sh").chmod(0o755)
        lines += ["hooks:", "  BeforeInstall:", "    - location: hook.sh", f"      timeout: {timeout}"]
    (folder / "appspec.yml").write_text("\n".join(lines) + "\n" + extra)
    return folder


def cdsim(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """cdsim in ``tmp_path``, with its state in ``tmp_path``/state."""
    return lib.cdsim(*args, state=tmp_path / "state", env=env, cwd=tmp_path, timeout=60)


def deploy(tmp_path: Path, source: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cdsim(tmp_path, "deploy", "--host", "--root-dir", str(tmp_path / "root"), str(source), *args, env=env)


class TestDeployExitStatus:
    def test_success(self, tmp_path):
        """A deployment whose hook succeeds exits SUCCESS (0)."""
        proc = deploy(tmp_path, bundle(tmp_path / "b", hook="echo ok\n", files_to=tmp_path / "dest"))
        assert proc.returncode == ExitStatus.SUCCESS == 0, proc.stdout + proc.stderr
        assert (tmp_path / "dest" / "index.txt").read_text() == "hello\n"

    def test_hook_failed(self, tmp_path):
        """A hook exiting non-zero exits HOOK_FAILED (1)."""
        proc = deploy(tmp_path, bundle(tmp_path / "b", hook="exit 9\n"))
        assert proc.returncode == ExitStatus.HOOK_FAILED == 1
        assert "failed with exit code 9" in proc.stdout

    def test_hook_timed_out(self, tmp_path):
        """A hook outliving its timeout exits HOOK_TIMED_OUT (4), not HOOK_FAILED."""
        proc = deploy(tmp_path, bundle(tmp_path / "b", hook="sleep 30\n", timeout=1), "--grace-period", "0.2")
        assert proc.returncode == ExitStatus.HOOK_TIMED_OUT == 4, proc.stdout + proc.stderr
        assert "did not finish within 1 s" in proc.stderr

    def test_invalid_appspec(self, tmp_path):
        """An appspec the agent rejects exits INVALID (3), naming file, line and column."""
        b = bundle(tmp_path / "b", hook="true\n")
        (b / "appspec.yml").write_text((b / "appspec.yml").read_text().replace("timeout: 30", "timeout: abc"))
        proc = deploy(tmp_path, b)
        assert proc.returncode == ExitStatus.INVALID == 3
        assert "appspec.yml:6:16:" in proc.stdout

    def test_invalid_bundle(self, tmp_path):
        """An archive that is not one exits INVALID (3)."""
        (tmp_path / "bundle.zip").write_bytes(b"this is not a zip file\n")
        proc = deploy(tmp_path, tmp_path / "bundle.zip")
        assert proc.returncode == ExitStatus.INVALID
        assert "not a readable zip archive" in proc.stdout

    def test_file_collision(self, tmp_path):
        """A destination file already present (DISALLOW) exits FILE_COLLISION (5)."""
        (tmp_path / "dest").mkdir()
        (tmp_path / "dest" / "index.txt").write_text("someone else's\n")
        proc = deploy(tmp_path, bundle(tmp_path / "b", files_to=tmp_path / "dest"))
        assert proc.returncode == ExitStatus.FILE_COLLISION == 5
        assert (tmp_path / "dest" / "index.txt").read_text() == "someone else's\n"

    def test_deployment_failed(self, tmp_path):
        """A failure that is none of the above (an --events name the appspec lacks) exits
        DEPLOYMENT_FAILED (6)."""
        proc = deploy(tmp_path, bundle(tmp_path / "b", hook="true\n"), "--events", "NoSuchEvent")
        assert proc.returncode == ExitStatus.DEPLOYMENT_FAILED == 6
        assert "NoSuchEvent" in proc.stdout

    def test_usage_error(self, tmp_path):
        """An unknown option and a bundle that does not exist both exit USAGE (2)."""
        assert cdsim(tmp_path, "deploy", "--no-such-option").returncode == ExitStatus.USAGE == 2
        proc = deploy(tmp_path, tmp_path / "missing")
        assert proc.returncode == ExitStatus.USAGE and "does not exist" in proc.stderr

    def test_environment_problem(self, tmp_path):
        """An appspec needing ACLs on a machine without setfacl (a PATH without it) exits ENVIRONMENT (7)."""
        b = bundle(tmp_path / "b", files_to=tmp_path / "dest",
                   extra=f"permissions:\n  - object: {tmp_path / 'dest' / 'index.txt'}\n    acls:\n      - u:root:rw\n")
        empty = tmp_path / "empty-path"
        empty.mkdir()
        proc = deploy(tmp_path, b, env={"PATH": str(empty)})
        assert proc.returncode == ExitStatus.ENVIRONMENT == 7, proc.stdout + proc.stderr
        assert "setfacl" in proc.stdout

    def test_unsupported_platform(self, tmp_path):
        """An Amazon ECS appspec in a tgz (read only once unpacked, so the parser refuses it at BeforeInstall)
        exits UNSUPPORTED_PLATFORM (8); no hook runs."""
        import tarfile
        folder = tmp_path / "b"
        folder.mkdir()
        (folder / "appspec.yml").write_text(
            "version: 0.0\nResources:\n  - TargetService:\n      Type: AWS::ECS::Service\n      Properties:\n"
            "        TaskDefinition: arn:aws:ecs:us-east-1:111122223333:task-definition/web:1\n"
            "        LoadBalancerInfo: {ContainerName: web, ContainerPort: 80}\n")
        with tarfile.open(tmp_path / "b.tgz", "w:gz") as tf:
            tf.add(folder / "appspec.yml", "appspec.yml")
        proc = deploy(tmp_path, tmp_path / "b.tgz")
        assert proc.returncode == ExitStatus.UNSUPPORTED_PLATFORM == 8, proc.stdout + proc.stderr
        assert "this is an Amazon ECS appspec" in proc.stdout and "Traceback" not in proc.stderr

    def test_internal_error_without_traceback_unless_debug(self, tmp_path):
        """An error cdsim does not expect (its state folder is a regular file, so creating the event
        stream's folder fails outside the engine's error handling) exits INTERNAL (70) with one line;
        --debug shows the traceback."""
        (tmp_path / "state-file").write_text("not a folder\n")
        b = bundle(tmp_path / "b", hook="true\n")
        env = {"CDSIM_STATE_DIR": str(tmp_path / "state-file")}
        proc = cdsim(tmp_path, "deploy", "--host", str(b), env=env)
        assert proc.returncode == ExitStatus.INTERNAL == 70
        assert "internal error" in proc.stderr and "Traceback" not in proc.stderr
        debug = cdsim(tmp_path, "--debug", "deploy", "--host", str(b), env=env)
        assert debug.returncode != 0 and "Traceback" in debug.stderr


class TestOtherCommands:
    def test_validate_invalid_appspec(self, tmp_path):
        """`cdsim validate` uses the same INVALID status for a bad appspec."""
        b = bundle(tmp_path / "b", hook="true\n")
        (b / "appspec.yml").write_text((b / "appspec.yml").read_text().replace("timeout: 30", "timeout: abc"))
        assert cdsim(tmp_path, "validate", str(b)).returncode == ExitStatus.INVALID

    def test_local_hook_failed_and_usage(self, tmp_path):
        """`cdsim local` maps a failing hook to HOOK_FAILED and a bad flag to USAGE."""
        b = bundle(tmp_path / "b", hook="exit 2\n")
        config = tmp_path / "agent.yml"
        config.write_text(f":root_dir: {tmp_path / 'root'}\n:log_dir: {tmp_path / 'log'}\n")
        proc = cdsim(tmp_path, "local", "-l", str(b), "-c", str(config))
        assert proc.returncode == ExitStatus.HOOK_FAILED, proc.stdout + proc.stderr
        assert cdsim(tmp_path, "local", "--bogus").returncode == ExitStatus.USAGE

    @pytest.mark.parametrize("command", ["logs", "history", "schema", "doctor", "watch"])
    def test_unknown_option_is_usage_for_every_command(self, tmp_path, command):
        """Every command of this issue turns a bad option into USAGE (2)."""
        assert cdsim(tmp_path, command, "--no-such-option").returncode == ExitStatus.USAGE
