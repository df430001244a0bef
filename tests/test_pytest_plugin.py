"""The pytest plugin: pytest runs in a subprocess on a test file that uses the cdsim_deploy fixture
against bundles built here, once per mode (a fresh instance; this machine)."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

INNER_TESTS = '''
import os

BUNDLE, DEST = os.environ["GOOD_BUNDLE"], os.environ["DEST"]
# the upgrade test has bundles of its own installing elsewhere: on the host, tests share the machine
BUNDLE2, BROKEN2, DEST2 = os.environ["GOOD_BUNDLE2"], os.environ["BROKEN_BUNDLE2"], os.environ["DEST2"]


def test_good_bundle(cdsim_deploy):
    with open(os.environ["MODE_FILE"], "w") as f:
        f.write(cdsim_deploy.mode)
    result = cdsim_deploy(BUNDLE)
    assert result.succeeded, result.stdout + result.stderr
    hook = result.hook("BeforeInstall")
    assert hook.succeeded and hook.exit_status == 0
    assert hook.output == "[stdout]hello from the hook\\n[stderr]a warning\\n"
    assert f"{DEST}/index.txt" in result.files
    assert result.exec("cat", f"{DEST}/index.txt").stdout == "version 1\\n"
    assert result.hook("ValidateService").output == "[stdout]version 1\\n"


def test_upgrade_then_broken_release(cdsim_deploy):
    assert cdsim_deploy(BUNDLE2).succeeded
    result = cdsim_deploy(BROKEN2)
    assert not result.succeeded and result.exit_status == 1
    assert result.failed_event == "AfterInstall"
    failed = result.hook("AfterInstall")
    assert failed.status == "Failed" and failed.exit_status == 3
    assert "failed with exit code 3" in failed.message
    assert failed.output == "[stderr]config missing\\n"
    assert result.exec("cat", f"{DEST2}/index.txt").stdout == "version 2\\n"
'''


def _bundle(folder: Path, dest: Path, version: int, after_install: str) -> Path:
    (folder / "app").mkdir(parents=True)
    (folder / "scripts").mkdir()
    (folder / "app" / "index.txt").write_text(f"version {version}\n")
    scripts = {"hello.sh": "echo hello from the hook\necho a warning >&2\n",
               "after.sh": after_install, "validate.sh": f"cat {dest}/index.txt\n"}
    for name, body in scripts.items():
        (folder / "scripts" / name).write_text("#!/bin/sh\n" + body)
        (folder / "scripts" / name).chmod(0o755)
    (folder / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: app\n"
        f"    destination: {dest}\nhooks:\n  BeforeInstall:\n    - location: scripts/hello.sh\n"
        "  AfterInstall:\n    - location: scripts/after.sh\n"
        "  ValidateService:\n    - location: scripts/validate.sh\n")
    return folder


def _plugin_installed() -> bool:
    return any(ep.value.startswith("agent.pytest_plugin")
               for ep in importlib.metadata.entry_points(group="pytest11"))


@pytest.mark.parametrize("mode", ["host", "instance"])
def test_fixture_deploys_and_reports_hooks_files_and_exec(tmp_path, mode):
    """Both inner tests pass: outcomes, hook output, installed files and exec are right, in a fresh
    instance (which leaves this machine's files alone) or on this machine."""
    if mode == "instance":
        from agent.pytest_plugin import instances_available
        ok, why = instances_available()
        if not ok:
            pytest.skip(f"sandboxed instances are unavailable here: {why}")
    dest, dest2 = tmp_path / "installed", tmp_path / "installed2"
    good = _bundle(tmp_path / "good", dest, 1, "true\n")
    good2 = _bundle(tmp_path / "good2", dest2, 1, "true\n")
    broken2 = _bundle(tmp_path / "broken2", dest2, 2, "echo config missing >&2\nexit 3\n")
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "test_bundle.py").write_text(INNER_TESTS)
    env = dict(os.environ, GOOD_BUNDLE=str(good), DEST=str(dest), GOOD_BUNDLE2=str(good2),
               BROKEN_BUNDLE2=str(broken2), DEST2=str(dest2),
               MODE_FILE=str(tmp_path / "mode"))
    plugin = [] if _plugin_installed() else ["-p", "agent.pytest_plugin"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                           f"--cdsim-mode={mode}", "--basetemp", str(tmp_path / "basetemp"), "test_bundle.py"],
                          cwd=tmp_path / "inner", env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    assert (tmp_path / "mode").read_text() == mode
    if mode == "instance":
        assert not dest.exists() and not dest2.exists(), "an instance deployment wrote to the host"
    else:
        assert (dest / "index.txt").read_text() == "version 1\n"
        assert (dest2 / "index.txt").read_text() == "version 2\n"


def test_failing_expectation_fails_the_inner_test(tmp_path):
    """A wrong expectation about a hook's output fails the inner run (the fixture reports real data)."""
    good = _bundle(tmp_path / "good", tmp_path / "installed", 1, "true\n")
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "test_wrong.py").write_text(
        "import os\n\ndef test_wrong(cdsim_deploy):\n"
        "    assert cdsim_deploy(os.environ['GOOD_BUNDLE']).hook('BeforeInstall').output == 'nothing'\n")
    plugin = [] if _plugin_installed() else ["-p", "agent.pytest_plugin"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                           "--cdsim-mode=host", "--basetemp", str(tmp_path / "basetemp"), "test_wrong.py"],
                          cwd=tmp_path / "inner", env=dict(os.environ, GOOD_BUNDLE=str(good)),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "1 failed" in proc.stdout
    assert "hello from the hook" in proc.stdout
