"""The seed pipeline's commands, unchanged, with the real aws CLI (awscli from PyPI) against `cdsim server`.

Only environment variables point the CLI at cdsim: the export lines the server prints (one
``AWS_ENDPOINT_URL`` for both CodeDeploy and S3, dummy keys, a region). The fleet is three real
sandboxed instances; the revision is the sample app, pushed to S3 (moto) by ``aws deploy push``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import agent.instance as inst
from tests.lib import CLI, REPO, cdsim, needs_root, needs_tool

EXPECTED_TEXT = "Hello from cdsim sample app"

pytestmark = [
    needs_root("sandboxed instances need root here (CI runs as root)"),
    needs_tool("aws", "awscli", "the aws CLI comes with the test extra: pip install -e '.[test]'"),
]


def start_server(state: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([*CLI, "server", "--state", state],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while not any(line.startswith("export AWS_DEFAULT_REGION=") for line in lines):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            stop_server(proc)
            raise AssertionError("the server did not start:\n" + "".join(lines))
        lines.append(line)
    return proc, [line.strip() for line in lines if line.startswith("export ")]


def stop_server(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def server(tmp_path):
    """`cdsim server --state DIR` as a process; yields (state, export lines); stops it and its fleet."""
    state = str(tmp_path / "state")
    proc, exports = start_server(state)
    try:
        yield state, exports
    finally:
        for status in inst.list_instances(state=state):
            inst.destroy(inst.get(status.name, state=state))
        stop_server(proc)


def aws_env(exports: list[str], tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for line in exports:
        name, _, value = line[len("export "):].partition("=")
        env[name] = value
    # no configuration of the machine's user may leak in
    env.update(AWS_CONFIG_FILE=str(tmp_path / "no-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-creds"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def sh(script: str, env: dict, cwd: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-o", "pipefail", "-ec", script], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, check=False)
    return done


def test_the_pipeline_with_the_real_aws_cli(server, tmp_path):
    state, exports = server
    assert [e.split("=")[0] for e in exports] == ["export AWS_ENDPOINT_URL", "export AWS_ACCESS_KEY_ID",
                                                  "export AWS_SECRET_ACCESS_KEY", "export AWS_DEFAULT_REGION"]
    again = cdsim("server", "env", "--state", state)
    assert again.returncode == 0 and again.stdout.split("\n")[:4] == exports
    env = aws_env(exports, tmp_path)
    up = cdsim("fleet", "up", "--state", state, "--instances", "3", "--tag", "Name=DemoFleet", environ=env)
    assert up.returncode == 0, up.stderr
    source = tmp_path / "app"
    shutil.copytree(os.path.join(REPO, "sample_app"), source)
    (source / ".hidden-notes").write_text("not part of the revision\n")

    steps = [
        "aws deploy create-application --application-name DemoApp",
        "aws deploy create-deployment-group --application-name DemoApp --deployment-group-name DemoGroup"
        " --on-premises-instance-tag-filters Key=Name,Value=DemoFleet,Type=KEY_AND_VALUE"
        " --service-role-arn arn:aws:iam::000000000000:role/CodeDeployRole",
        "aws deploy push --application-name DemoApp --s3-location s3://demo-bucket/demo-app.zip"
        " --ignore-hidden-files",
        "aws deploy create-deployment --application-name DemoApp"
        " --s3-location bucket=demo-bucket,key=demo-app.zip,bundleType=zip"
        " --deployment-group-name DemoGroup | tee created.json | cdsim wait -",
        'aws deploy wait deployment-successful --deployment-id "$(python3 -c \'import json,sys;'
        ' print(json.load(open("created.json"))["deploymentId"])\')"',
    ]
    outputs = []
    for step in steps:
        done = sh(step, env, cwd=str(source))
        assert done.returncode == 0, f"{step}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    assert "aws deploy create-deployment" in outputs[2]    # push's hint
    assert "succeeded (3 Succeeded)" in outputs[3]
    did = json.loads((source / "created.json").read_text())["deploymentId"]

    # the revision went through S3: what the CLI registered, without the hidden file
    got = json.loads(sh("aws deploy get-deployment --deployment-id " + did, env).stdout)["deploymentInfo"]
    assert got["status"] == "Succeeded" and got["revision"]["s3Location"]["bucket"] == "demo-bucket"
    listing = sh("aws s3 cp s3://demo-bucket/demo-app.zip bundle.zip && python3 -m zipfile -l bundle.zip",
                 env, cwd=str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    assert "appspec.yml" in listing.stdout and ".hidden-notes" not in listing.stdout

    # the sample app is served on all three instances (each on its own loopback)
    for name in ("demofleet-1", "demofleet-2", "demofleet-3"):
        page = tmp_path / f"page-{name}"
        with open(page, "w") as f:
            status = inst.exec_in(inst.get(name, state=state), [
                sys.executable, "-c", "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/').read().decode())"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert status == 0 and EXPECTED_TEXT in page.read_text(), page.read_text()

    # errors come back as the CLI shows AWS's
    missing = sh("aws deploy get-deployment --deployment-id d-NOTTHERE1", env)
    assert missing.returncode != 0 and "DeploymentDoesNotExistException" in missing.stderr
    down = cdsim("fleet", "down", "--state", state, "--tag", "Name=DemoFleet", environ=env)
    assert down.returncode == 0 and "demofleet-3" in down.stdout
    assert inst.list_instances(state=state) == []


def test_s3_objects_survive_a_server_restart(tmp_path):
    """moto keeps objects in memory; cdsim replays what went through it (plain and multipart uploads)."""
    state = str(tmp_path / "state")
    small, big = tmp_path / "small.zip", tmp_path / "big.bin"
    small.write_bytes(b"PK small revision")
    big.write_bytes(os.urandom(9 * 1024 * 1024))   # above the CLI's 8 MiB multipart threshold
    proc, exports = start_server(state)
    try:
        env = aws_env(exports, tmp_path)
        done = sh(f"aws s3 cp {small} s3://keep/small.zip && aws s3 cp {big} s3://keep/dir/big.bin", env)
        assert done.returncode == 0, done.stderr
    finally:
        stop_server(proc)
    proc, exports = start_server(state)
    try:
        env = aws_env(exports, tmp_path)
        done = sh(f"aws s3 cp s3://keep/small.zip {tmp_path}/small.out && "
                  f"aws s3 cp s3://keep/dir/big.bin {tmp_path}/big.out", env)
        assert done.returncode == 0, done.stderr
    finally:
        stop_server(proc)
    assert (tmp_path / "small.out").read_bytes() == small.read_bytes()
    assert (tmp_path / "big.out").read_bytes() == big.read_bytes()
