"""The `cdsim-validate` pre-commit hook (.pre-commit-hooks.yaml), run by the real pre-commit in a throwaway
project: a commit with a broken appspec is refused with the finding; fixed, it goes in.

pre-commit installs a hook repository by cloning it at a revision and pip-installing it into a virtualenv
of its own, so the test gives it a repository as a user's config would (`repo: PATH`, `rev: SHA`), not
`repo: local` (which never reads .pre-commit-hooks.yaml and so would not test it). That repository is a
snapshot of this checkout's files (tracked and untracked, as git lists them without the ignored ones)
committed into a fresh git repository: under CI it equals HEAD, by hand it holds the edits not yet
committed, as `pre-commit try-repo` does. PRE_COMMIT_HOME is one folder per test session, so the hook's
virtualenv is built once (about 30 s: cdsim and its dependencies from the package index).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lib import require_tool, snapshot_checkout

PRE_COMMIT = (sys.executable, "-m", "pre_commit")
BROKEN = """\
version: 0.0
os: linux
hooks:
  AfterInstal:
    - location: scripts/start.sh
"""
FIXED = BROKEN.replace("AfterInstal:", "AfterInstall:")


def _run(argv: list[str] | tuple[str, ...], cwd: Path, env: dict[str, str],
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    proc = _run(["git", *args], cwd, env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def git_env(tmp_path_factory) -> dict[str, str]:
    """git with a fixed identity and no user or system configuration (a global core.hooksPath would make
    `pre-commit install` refuse); one PRE_COMMIT_HOME for the session."""
    require_tool("git", "git")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1",
               PRE_COMMIT_HOME=str(tmp_path_factory.mktemp("pre-commit-home")))
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


@pytest.fixture(scope="session")
def hook_repo(tmp_path_factory, git_env) -> tuple[Path, str]:
    """A git repository holding this checkout's files, committed: (its path, the commit)."""
    snapshot = snapshot_checkout(tmp_path_factory.mktemp("cdsim-hook-repo"))
    _git(snapshot, git_env, "init", "-q")
    _git(snapshot, git_env, "add", "-A")
    _git(snapshot, git_env, "commit", "-q", "-m", "snapshot")
    return snapshot, _git(snapshot, git_env, "rev-parse", "HEAD").strip()


def _project(tmp_path: Path, env: dict[str, str], hook_repo: tuple[Path, str], args: list[str] | None = None) -> Path:
    """A git repository whose .pre-commit-config.yaml uses the hook, with `pre-commit install` done."""
    repo, rev = hook_repo
    project = tmp_path / "project"
    project.mkdir()
    _git(project, env, "init", "-q")
    config = f"repos:\n  - repo: {repo}\n    rev: {rev}\n    hooks:\n      - id: cdsim-validate\n"
    if args is not None:
        config += f"        args: {args!r}\n"
    (project / ".pre-commit-config.yaml").write_text(config)
    proc = _run([*PRE_COMMIT, "install"], project, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _git(project, env, "add", ".pre-commit-config.yaml")
    return project


def _bundle(project: Path, appspec: str, script: str = "#!/bin/sh\necho started\n") -> None:
    (project / "app" / "scripts").mkdir(parents=True, exist_ok=True)
    (project / "app" / "appspec.yml").write_text(appspec)
    start = project / "app" / "scripts" / "start.sh"
    start.write_text(script)
    start.chmod(0o755)


def _commit(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    _git(project, env, "add", "-A")
    # the first commit builds the hook's virtualenv (pip install of the hook repository)
    return _run(["git", "commit", "-m", "change"], project, env, timeout=900)


def test_a_broken_appspec_is_refused_with_the_finding_and_the_fixed_one_commits(tmp_path, git_env, hook_repo):
    """The git hook runs cdsim validate on the staged appspec: its error, at file:line:col, stops the
    commit; the same appspec with the event's name fixed is committed."""
    project = _project(tmp_path, git_env, hook_repo)
    _bundle(project, BROKEN)
    refused = _commit(project, git_env)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out
    assert "app/appspec.yml:4:3: error: appspec.yml file contains unknown lifecycle events" in out, out
    assert "[unknown-lifecycle-event]" in out and "did you mean AfterInstall" in out, out
    assert _run(["git", "rev-parse", "--verify", "-q", "HEAD"], project, git_env).returncode != 0  # no commit

    _bundle(project, FIXED)
    accepted = _commit(project, git_env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "cdsim validate" in accepted.stdout + accepted.stderr
    assert _git(project, git_env, "ls-files").split() == [".pre-commit-config.yaml", "app/appspec.yml",
                                                          "app/scripts/start.sh"]


def test_strict_through_args_refuses_warnings_and_the_bundle_around_the_appspec_is_read(tmp_path, git_env, hook_repo):
    """args: [--strict] makes a warning refuse the commit; the warning is about the script beside the
    appspec (no #! line), so the hook reads the bundle, not just the YAML."""
    project = _project(tmp_path, git_env, hook_repo, args=["--strict"])
    _bundle(project, FIXED, script="echo no shebang\n")
    refused = _commit(project, git_env)
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out
    assert "warning: script scripts/start.sh (AfterInstall) has no #! line" in out, out
    assert "[script-no-shebang]" in out

    _bundle(project, FIXED)
    accepted = _commit(project, git_env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_a_commit_without_an_appspec_skips_the_hook(tmp_path, git_env, hook_repo):
    """Only appspec.yml/appspec.yaml files trigger it: other YAML is none of its business."""
    project = _project(tmp_path, git_env, hook_repo)
    (project / "notes.yml").write_text("hooks: [this is not an appspec\n")
    (project / "myappspec.yml").write_text("version: 9\n")
    done = _commit(project, git_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(no files to check)Skipped" in done.stdout + done.stderr
