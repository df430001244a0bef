"""The README's server section, as written, in a fresh virtual environment.

The project is installed the way the section says (``pip install '.[aws]'``: cdsim with what `cdsim
server` needs, plus the aws CLI for the example), then the section's command block runs line by line in
bash, in that environment only: the server in the background, ``eval "$(cdsim server env)"`` (which also
names the server's state folder, so `fleet` and `wait` find it without ``--state``), a fleet of three
instances, ``aws deploy push`` / ``create-deployment | cdsim wait -`` / ``aws deploy wait``, ``fleet down``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import agent.instance as inst
from tests.lib import REPO, needs_root

pytestmark = needs_root("the fleet's sandboxed instances need root here (CI runs as root)")


def section_block() -> list[str]:
    """The command lines of the README's server section (comments dropped, continuations joined)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A local CodeDeploy", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    lines, pending = [], ""
    for raw in block.splitlines():
        line = raw.split("  #", 1)[0].rstrip()
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        if (pending + line).strip():
            lines.append((pending + line).strip())
        pending = ""
    return lines


def test_server_section_as_written(tmp_path):
    install, *lines = section_block()
    assert install.startswith("pip install '.[")
    assert lines[0] == "cdsim server &" and lines[1] == 'eval "$(cdsim server env)"'
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDSIM_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               CDSIM_STATE_DIR=str(tmp_path / "state"), AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-creds"), PYTHONNOUSERSITE="1")
    done = subprocess.run(["bash", "-c", install.replace("'.[", f"'{REPO}[")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    server = subprocess.Popen(["cdsim", "server"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            line = server.stdout.readline()
            assert line and time.monotonic() < deadline, "the server did not start"
            if line.startswith("export CDSIM_STATE_DIR="):
                break
        script = "set -euo pipefail\n" + "\n".join(lines[1:])
        # the one placeholder of the section: the id create-deployment printed (cdsim wait reads it)
        script = script.replace("--deployment-id d-...",
                                '--deployment-id "$(aws deploy list-deployments --query "deployments[0]" '
                                '--output text)"')
        run = subprocess.run(["bash", "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=900, check=False)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert "Succeeded" in run.stdout or "succeeded" in run.stdout, run.stdout
        assert inst.list_instances(state=str(tmp_path / "state")) == []   # fleet down removed them
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
        for status in inst.list_instances(state=str(tmp_path / "state")):
            inst.destroy(inst.get(status.name, state=str(tmp_path / "state")))
