"""Attacks on the local CodeDeploy service (`cdsim server`), each performed against the real server.

GitHub revisions that would inject git options or name folders outside the GitHub roots; requests
that are unsigned, wrongly signed, skewed or tampered with (CodeDeploy API and S3); connection
floods, stalled and oversized bodies; and a ``kill -9`` of the server. SECURITY.md's section on the
local service is backed by these tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from agent.service.auth import Credentials, sign
from agent.service.client import ServiceError, call
from agent.service.revisions import RevisionError, check_commit, check_ref_name
from tests.lib import CLI, needs_root

TARGET = "CodeDeploy_20141006."


# -- helpers -----------------------------------------------------------------------------------------
def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path) -> str:
    os.makedirs(path)
    git(path, "init", "-q")
    (path / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "v1")
    return git(path, "rev-parse", "HEAD")


def send(endpoint: str, method: str, path: str, body: bytes = b"", headers: dict | None = None
         ) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(endpoint + path, data=body if method in ("PUT", "POST") else None,
                                 method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers.items()), e.read()


def api(endpoint: str, operation: str, body: dict, creds: Credentials | None, *, tamper: bytes | None = None
        ) -> tuple[int, dict, dict]:
    """A CodeDeploy API request signed with ``creds`` (None: unsigned); ``tamper`` replaces the body after signing."""
    data = json.dumps(body).encode()
    headers = {"X-Amz-Target": TARGET + operation, "Content-Type": "application/x-amz-json-1.1"}
    if creds is not None:
        headers = sign(creds, "POST", endpoint + "/", headers, data, service="codedeploy", region="us-east-1")
    status, out_headers, text = send(endpoint, "POST", "/", tamper if tamper is not None else data, headers)
    return status, out_headers, json.loads(text)


def s3(endpoint: str, method: str, path: str, body: bytes, creds: Credentials | None,
       tamper: bytes | None = None) -> tuple[int, dict, bytes]:
    headers = {"Content-Type": "application/octet-stream"} if method == "PUT" else {}
    if creds is not None:
        headers = sign(creds, method, endpoint + path, headers, body, service="s3", region="us-east-1")
    return send(endpoint, method, path, tamper if tamper is not None else body, headers)


def signed_at(creds: Credentials, endpoint: str, body: bytes, target: str, when: float) -> dict:
    """Headers of a request signed (with botocore's SigV4Auth) as if the clock said ``when``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    request = AWSRequest(method="POST", url=endpoint + "/", data=body, headers={
        "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1", "X-Amz-Date": stamp})
    request.context["timestamp"] = stamp
    signer = SigV4Auth(creds.to_botocore(), "codedeploy", "us-east-1")
    signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    signer._inject_signature_to_request(request, signature)
    return dict(request.headers.items())


@pytest.fixture
def service(tmp_path):
    """A server with S3, no agents; GitHub revisions may name repositories under tmp_path/github."""
    from agent.service.server import Service
    os.makedirs(tmp_path / "github")
    with Service(str(tmp_path / "state"), agents=False, github_root=[str(tmp_path / "github")]) as svc:
        yield svc


def group(ep: str) -> None:
    call(ep, "CreateApplication", {"applicationName": "A"})
    call(ep, "CreateDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G", "serviceRoleArn": "r"})


def github(repository: str, commit: str) -> dict:
    return {"revisionType": "GitHub", "gitHubLocation": {"repository": repository, "commitId": commit}}


def deploy(ep: str, revision: dict) -> str:
    return call(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "G",
                                         "revision": revision})["deploymentId"]


# -- 1. GitHub revisions -----------------------------------------------------------------------------
@pytest.mark.parametrize("commit", ["--output=/etc/passwd", "-o/tmp/x", "--remote=ext::sh", "-", "HEAD..main",
                                    "a b", "main~1", "x^{tree}", "ref:x", "refs/heads/.hidden", "x.lock", "a//b",
                                    "@", "x@{1}", "trailing/", "trailing.", "tab\there", "back\\slash", "",
                                    "star*", "q?", "[x"])
def test_commit_ids_that_are_no_commit_or_ref_name_are_refused(commit):
    assert not check_ref_name(commit)
    with pytest.raises(RevisionError):
        check_commit(commit)


def test_ref_names_are_checked_as_git_check_ref_format_does():
    """git itself is the oracle (names starting with '-' are ours to refuse, whatever git says)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    def git_says(name: str) -> bool:
        return subprocess.run(["git", "check-ref-format", "--allow-onelevel", name], capture_output=True,
                              check=False).returncode == 0

    samples = ["a", "a/b", "a..b", "a/.b", "a.lock", "a/", "/a", "a//b", "a@{b", "@", "a b", "a~", "a^", "a:",
               "a?", "a*", "a[", "a\\b", "a.", "é", "a/b.lock/c", ".a", "a@b", "@a", "a.lock.b", "x/.lock",
               "a/-b", "refs/heads/main", "v1.0", "a\x7fb", "a\tb"]
    for name in samples:
        assert check_ref_name(name) == git_says(name), name

    @settings(max_examples=150, deadline=None)
    @given(st.text(alphabet="ab./@{}~^:?*[\\ -\x01é", min_size=1, max_size=12))
    def agrees(name):
        if not name.startswith("-") and "\x00" not in name:
            assert check_ref_name(name) == git_says(name), repr(name)

    agrees()


@pytest.mark.parametrize("commit", ["0123abc", "a" * 40, "b" * 64, "main", "v1.2.3", "refs/tags/v1.0",
                                    "feature/login-page", "release_2026.12"])
def test_commit_ids_and_ref_names_are_accepted(commit):
    assert check_commit(commit) == commit


def test_option_injection_through_commit_id_is_refused_and_the_file_stays(service, tmp_path):
    """`commitId: --output=FILE` once made `git archive` truncate FILE: the API refuses it, and so does the agent."""
    from agent.service.agent_loop import Agent

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    repo = tmp_path / "github" / "owner" / "app"
    make_repo(repo)
    group(service.endpoint)
    with pytest.raises(ServiceError) as e:
        deploy(service.endpoint, github(str(repo), f"--output={victim}"))
    assert e.value.kind == "InvalidRevisionException" and "not a commit id or a valid ref name" in str(e.value)
    assert call(service.endpoint, "ListDeployments", {})["deployments"] == []
    # the agent's own check, for a command that got past the API (say, stored before it checked)
    agent = Agent(service.endpoint, "box", work_dir=str(tmp_path / "work"), github_roots=[str(tmp_path / "github")])
    os.makedirs(tmp_path / "work")
    command = {"deploymentId": "d-ABCDEFGH1", "revision": github(str(repo), f"--output={victim}")}
    with pytest.raises(RevisionError):
        agent._spec(command, str(tmp_path / "work"))
    with pytest.raises(RevisionError, match="not a folder under a configured GitHub root"):
        agent._spec({**command, "revision": github("/", git(repo, "rev-parse", "HEAD"))}, str(tmp_path / "work"))
    assert victim.read_text() == "precious\n"
    # a ref name is passed after --end-of-options and fetched as it should
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    spec = agent._spec({**command, "revision": github("owner/app", branch),
                        "applicationName": "A", "deploymentGroupName": "G", "deploymentGroupId": "g",
                        "creator": "user", "fileExistsBehavior": None, "ignoreApplicationStopFailures": False},
                       str(tmp_path / "work"))
    assert subprocess.run(["tar", "-tf", spec["bundle"]], capture_output=True, text=True).stdout == "appspec.yml\n"
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("repository, why", [
    ("/", "not a folder under a configured GitHub root"),
    ("/etc", "not a folder under a configured GitHub root"),
    ("{github}/../victim-repo", "must not contain '..'"),
    ("../victim-repo", "not of the form owner/name"),
    ("owner/..", "not of the form owner/name"),
    ("-C/x", "not of the form owner/name"),
    ("owner/missing", "not a folder under a configured GitHub root"),
    ("owner/escape", "not a folder under a configured GitHub root"),      # a symlink out of the root
    ("{github}/owner/escape", "not a folder under a configured GitHub root"),
])
def test_repositories_outside_the_github_roots_are_refused(service, tmp_path, repository, why):
    make_repo(tmp_path / "victim-repo")
    os.makedirs(tmp_path / "github" / "owner")
    os.symlink(tmp_path / "victim-repo", tmp_path / "github" / "owner" / "escape")
    group(service.endpoint)
    sha = git(tmp_path / "victim-repo", "rev-parse", "HEAD")
    with pytest.raises(ServiceError) as e:
        deploy(service.endpoint, github(repository.format(github=tmp_path / "github"), sha))
    assert e.value.kind == "InvalidRevisionException" and why in str(e.value)
    assert call(service.endpoint, "ListDeployments", {})["deployments"] == []


def test_repositories_under_a_github_root_are_deployable(service, tmp_path):
    sha = make_repo(tmp_path / "github" / "owner" / "app")
    group(service.endpoint)
    assert deploy(service.endpoint, github("owner/app", sha)).startswith("d-")
    call(service.endpoint, "CreateDeploymentGroup", {"applicationName": "A", "deploymentGroupName": "G2",
                                                     "serviceRoleArn": "r"})
    assert call(service.endpoint, "CreateDeployment", {
        "applicationName": "A", "deploymentGroupName": "G2",
        "revision": github(str(tmp_path / "github" / "owner" / "app"), sha)})["deploymentId"].startswith("d-")


def test_without_a_github_root_github_revisions_are_refused(tmp_path, monkeypatch):
    from agent.service.server import Service
    monkeypatch.delenv("CDSIM_GITHUB_ROOT", raising=False)
    sha = make_repo(tmp_path / "repo")
    with Service(str(tmp_path / "state"), s3=False, agents=False) as svc:
        group(svc.endpoint)
        with pytest.raises(ServiceError) as e:
            deploy(svc.endpoint, github(str(tmp_path / "repo"), sha))
    assert e.value.kind == "InvalidRevisionException" and "no GitHub root is configured" in str(e.value)


@pytest.mark.parametrize("location, why", [
    ({"bucket": "../other", "key": "k.zip"}, "not a valid S3 bucket name"),
    ({"bucket": "a/b", "key": "k.zip"}, "not a valid S3 bucket name"),
    ({"bucket": "b", "key": "k\n.zip"}, "not a valid object key"),
    ({"bucket": "b", "key": "k.zip", "bundleType": "../../x"}, "'revision.s3Location.bundleType' failed to satisfy"),
    ({"bucket": "b", "key": "k.zip", "version": "x" * 1025}, "version must be a string"),
    # a value of the wrong JSON type: the model check refuses it as AWS does
    ({"bucket": "b", "key": "k.zip", "version": ["x"]}, "SerializationException"),
])
def test_s3_locations_that_could_become_paths_are_refused(service, location, why):
    group(service.endpoint)
    with pytest.raises(ServiceError) as e:
        deploy(service.endpoint, {"revisionType": "S3", "s3Location": location})
    kind = "SerializationException" if why == "SerializationException" else "InvalidRevisionException"
    assert e.value.kind == kind and why in str(e.value)


def test_instance_names_that_could_become_paths_are_refused(service):
    for name in ("../../etc", "a/b", ".hidden", "-rf", "x" * 101):
        with pytest.raises(ServiceError) as e:
            call(service.endpoint, "RegisterOnPremisesInstance", {"instanceName": name, "iamUserArn": "arn:x"})
        assert e.value.kind == "InvalidInstanceNameException"
    call(service.endpoint, "RegisterOnPremisesInstance", {"instanceName": "web-1.example_2", "iamUserArn": "arn:x"})


# -- 2. every request is signed ----------------------------------------------------------------------
def test_unsigned_api_calls_are_refused_and_nothing_runs(service):
    ep = service.endpoint
    status, headers, doc = api(ep, "CreateApplication", {"applicationName": "Evil"}, None)
    assert (status, headers["Content-Type"]) == (400, "application/x-amz-json-1.1")
    assert set(doc) == {"__type", "message"} and doc["__type"] == "UnrecognizedClientException"
    group(ep)
    status, _, doc = api(ep, "CreateDeployment", {"applicationName": "A", "deploymentGroupName": "G", "revision": {
        "revisionType": "S3", "s3Location": {"bucket": "b", "key": "k.zip"}}}, None)
    assert (status, doc["__type"]) == (400, "UnrecognizedClientException")
    assert call(ep, "ListApplications", {})["applications"] == ["A"]
    assert call(ep, "ListDeployments", {})["deployments"] == []
    # the agents' operations too: no command can be taken or reported without the credentials
    status, _, doc = send(ep, "POST", "/", b'{"instanceName": "x"}',
                          {"X-Amz-Target": "CdsimAgent_20261127.PollCommand"})
    assert (status, json.loads(doc)["__type"]) == (400, "UnrecognizedClientException")


def test_wrong_secret_unknown_key_tampered_body_and_skew_are_refused(service):
    ep, good = service.endpoint, service.credentials
    body = {"applicationName": "Evil"}
    status, _, doc = api(ep, "CreateApplication", body, Credentials(good.access_key, "not-the-secret"))
    assert (status, doc["__type"]) == (400, "InvalidSignatureException")
    status, _, doc = api(ep, "CreateApplication", body, Credentials("CDSIMNOTAREALKEY0000", good.secret_key))
    assert (status, doc["__type"]) == (400, "UnrecognizedClientException")
    status, _, doc = api(ep, "CreateApplication", body, good, tamper=b'{"applicationName": "Other"}')
    assert (status, doc["__type"]) == (400, "InvalidSignatureException")
    data = json.dumps(body).encode()
    for skew in (-16 * 60, 16 * 60):
        headers = signed_at(good, ep, data, TARGET + "CreateApplication", time.time() + skew)
        status, _, text = send(ep, "POST", "/", data, headers)
        assert (status, json.loads(text)["__type"]) == (400, "InvalidSignatureException")
        assert "Signature expired" in json.loads(text)["message"]
    assert call(ep, "ListApplications", {})["applications"] == []
    headers = signed_at(good, ep, data, TARGET + "CreateApplication", time.time() - 60)   # within the window
    assert send(ep, "POST", "/", data, headers)[0] == 200


def test_s3_requests_must_be_signed(service):
    ep, good = service.endpoint, service.credentials
    status, headers, text = s3(ep, "PUT", "/bucket/app.zip", b"PK evil", None)
    assert status == 403 and headers["Content-Type"] == "application/xml" and b"<Code>AccessDenied</Code>" in text
    status, _, text = s3(ep, "PUT", "/bucket/app.zip", b"PK evil", Credentials(good.access_key, "wrong"))
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in text
    status, _, text = s3(ep, "PUT", "/bucket/app.zip", b"PK evil", Credentials("CDSIMNOTAREALKEY0000", "x"))
    assert status == 403 and b"<Code>InvalidAccessKeyId</Code>" in text
    status, _, text = s3(ep, "PUT", "/bucket/app.zip", b"PK good", good, tamper=b"PK evil")
    assert status == 400 and b"<Code>XAmzContentSHA256Mismatch</Code>" in text
    assert s3(ep, "GET", "/bucket/app.zip", b"", good)[0] == 404     # none of them stored anything
    assert s3(ep, "GET", "/bucket/app.zip", b"", None)[0] == 403
    assert s3(ep, "PUT", "/bucket/app.zip", b"PK good", good)[0] == 200
    assert s3(ep, "GET", "/bucket/app.zip", b"", good)[2] == b"PK good"
    # moto's own control API (reset, data dump) is not reachable, signed or not
    for creds in (None, good):
        status, _, text = s3(ep, "POST", "/moto-api/reset", b"", creds)
        assert status == 403 and b"AccessDenied" in text
    assert s3(ep, "GET", "/bucket/app.zip", b"", good)[2] == b"PK good"


def test_credentials_file_and_folder_are_private(tmp_path):
    from agent.service.server import Service
    state = tmp_path / "state"
    with Service(str(state), s3=False, agents=False) as svc:
        first = svc.credentials
        folder = svc.folder
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    path = os.path.join(folder, "credentials.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        saved = json.load(f)
    assert saved == {"accessKeyId": first.access_key, "secretAccessKey": first.secret_key}
    with Service(str(state), s3=False, agents=False) as svc:
        assert svc.credentials == first       # kept across restarts
    os.chmod(path, 0o644)
    os.chmod(folder, 0o755)
    with Service(str(state), s3=False, agents=False) as svc:
        assert svc.credentials != first       # a file others could read is replaced, and the folder closed again
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


@needs_root("needs root to run a command as another user")
def test_another_user_cannot_read_the_credentials(service):
    probe = subprocess.run(["/bin/cat", os.path.join(service.folder, "credentials.json")], user=65534,
                           capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr and probe.stdout == ""


def test_server_env_prints_the_credentials_the_server_checks(service):
    done = subprocess.run([*CLI, "server", "env", "--state", service.state],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    env = dict(line[len("export "):].split("=", 1) for line in done.stdout.splitlines())
    assert env == {"AWS_ENDPOINT_URL": service.endpoint, "AWS_ACCESS_KEY_ID": service.credentials.access_key,
                   "AWS_SECRET_ACCESS_KEY": service.credentials.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                   "CDSIM_STATE_DIR": service.state}


# -- 3. limits -----------------------------------------------------------------------------------------
def test_200_concurrent_calls_all_get_an_answer(service):
    ep = service.endpoint
    start = threading.Barrier(200)
    answers: list = []

    def one():
        start.wait()
        try:
            answers.append(call(ep, "ListDeploymentConfigs", {}, timeout=120)["deploymentConfigsList"][:1])
        except Exception as e:  # noqa: BLE001 - the assertion shows which
            answers.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert answers == [["CodeDeployDefault.OneAtATime"]] * 200


def raw_socket(ep: str) -> socket.socket:
    host, port = ep.rsplit("/", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_stalled_body_is_cut_after_the_timeout_and_blocks_nobody(service):
    from agent.service.server import IDLE_TIMEOUT
    ep = service.endpoint
    stalled = []
    for path, extra in (("/bucket/big.zip", "PUT {path} HTTP/1.1\r\n"),
                        ("/", "POST {path} HTTP/1.1\r\nX-Amz-Target: CodeDeploy_20141006.ListApplications\r\n")):
        sock = raw_socket(ep)
        sock.sendall((extra.format(path=path) + f"Host: {ep[7:]}\r\nContent-Length: "
                      f"{99_999_999 if path != '/' else 100_000}\r\n\r\n").encode())
        stalled.append((sock, time.monotonic()))
    # while both wait for their bodies, other callers are answered
    assert call(ep, "ListApplications", {})["applications"] == []
    for sock, began in stalled:
        answer = read_answer(sock)
        sock.close()
        assert answer.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout", answer[:200]
        assert b"RequestTimeout" in answer
        assert time.monotonic() - began >= IDLE_TIMEOUT - 1


def test_an_oversized_body_is_refused_unread(service):
    from agent.service.server import API_BODY_LIMIT, S3_BODY_LIMIT
    ep = service.endpoint
    for request, limit, shape in (
            ("POST / HTTP/1.1\r\nX-Amz-Target: CodeDeploy_20141006.ListApplications\r\n", API_BODY_LIMIT,
             b'"__type": "EntityTooLarge"'),
            ("PUT /bucket/huge.zip HTTP/1.1\r\n", S3_BODY_LIMIT, b"<Code>EntityTooLarge</Code>")):
        sock = raw_socket(ep)
        # announces one byte over the limit and sends none of it: the answer comes without the body
        sock.sendall((request + f"Host: {ep[7:]}\r\nContent-Length: {limit + 1}\r\n\r\n").encode())
        sock.settimeout(8)   # under the idle timeout: the answer does not wait for the body
        answer = b""
        while b"\r\n\r\n" not in answer or shape not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        sock.close()
        assert answer.split(b"\r\n")[0] == b"HTTP/1.1 413 Content Too Large", answer[:200]


# -- 4. nothing outlives the server ------------------------------------------------------------------
def test_kill_9_of_the_server_leaves_no_s3_process(tmp_path):
    """S3 runs inside the server's process: there is no moto child to outlive a kill -9."""
    import psutil

    state = str(tmp_path / "state")
    proc = subprocess.Popen([*CLI, "server", "--state", state],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any(line.startswith("export AWS_DEFAULT_REGION=") for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        env = dict(line.strip()[len("export "):].split("=", 1) for line in lines if line.startswith("export "))
        ep = env["AWS_ENDPOINT_URL"]
        creds = Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        assert s3(ep, "PUT", "/bucket/app.zip", b"PK", creds)[0] == 200
        assert s3(ep, "GET", "/bucket/app.zip", b"", creds)[2] == b"PK"
        assert psutil.Process(proc.pid).children(recursive=True) == []
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert not [p.pid for p in psutil.process_iter(["cmdline"])
                if "moto.server" in " ".join(p.info["cmdline"] or []) and state in " ".join(p.info["cmdline"] or [])]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(ep.rsplit(":", 1)[1])), timeout=5).close()


def test_the_content_sha_header_is_checked_against_the_body(service):
    """A signed S3 PUT whose x-amz-content-sha256 is not the body's hash is refused (the body is signed)."""
    ep, good = service.endpoint, service.credentials
    headers = sign(good, "PUT", ep + "/bucket/x.zip", {"Content-Type": "application/octet-stream"}, b"a",
                   service="s3", region="us-east-1")
    assert headers["X-Amz-Content-SHA256"] == hashlib.sha256(b"a").hexdigest()
    assert send(ep, "PUT", "/bucket/x.zip", b"b", headers)[0] == 400
    assert send(ep, "PUT", "/bucket/x.zip", b"a", headers)[0] == 200


@pytest.mark.parametrize("check, value", [("check_deployment_id", "../../etc"), ("check_deployment_id", "d-abc"),
                                          ("check_group_id", "../x"), ("check_group_id", "-rf"),
                                          ("check_group_id", "a/b")])
def test_the_agent_refuses_ids_that_would_leave_its_folders(check, value):
    """The agent's second line: ids it joins into paths (work folder, deployment root) are checked again."""
    from agent.service import revisions
    with pytest.raises(RevisionError):
        getattr(revisions, check)(value)


def test_a_moto_child_left_by_an_earlier_version_is_ended_at_start(tmp_path):
    """Earlier servers ran moto as a child that outlived a kill -9; the next start ends it (and only it)."""
    import psutil

    from agent.service.server import Service

    def free_port_for_test() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    folder = tmp_path / "state" / "service" / "s3"
    os.makedirs(folder)
    other = tmp_path / "other.log"
    children = []
    for log in (folder / "moto.log", other):     # the second is some other folder's: left alone
        with open(log, "ab") as out:
            children.append(subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                              str(free_port_for_test())], stdout=out, stderr=out,
                                             stdin=subprocess.DEVNULL))
    try:
        with Service(str(tmp_path / "state"), agents=False):
            assert children[0].wait(timeout=30) is not None
            assert children[1].poll() is None and psutil.pid_exists(children[1].pid)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()


def test_an_api_body_must_match_a_signed_content_hash(service):
    """A JSON request may sign x-amz-content-sha256 in place of its body: the body must then be that one."""
    ep, good = service.endpoint, service.credentials
    data = b'{"applicationName": "Good"}'
    headers = sign(good, "POST", ep + "/", {"X-Amz-Target": TARGET + "CreateApplication",
                                            "Content-Type": "application/x-amz-json-1.1",
                                            "X-Amz-Content-SHA256": hashlib.sha256(data).hexdigest()},
                   data, service="codedeploy", region="us-east-1")
    status, _, text = send(ep, "POST", "/", b'{"applicationName": "Evil"}', headers)
    assert (status, json.loads(text)["__type"]) == (400, "InvalidSignatureException")
    assert send(ep, "POST", "/", data, headers)[0] == 200
    assert call(ep, "ListApplications", {})["applications"] == ["Good"]


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_deadline(service):
    """Each byte comes well within the idle timeout, but the headers never end: the server closes it."""
    from agent.service.server import HEADER_DEADLINE
    ep = service.endpoint
    sock = raw_socket(ep)
    sock.sendall(b"POST / HTTP/1.1\r\nX-Slow: ")
    began = time.monotonic()
    closed = False
    while time.monotonic() - began < HEADER_DEADLINE + 30:
        try:
            sock.sendall(b"a")
            sock.settimeout(1)
            if sock.recv(65536) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    sock.close()
    assert closed and time.monotonic() - began >= HEADER_DEADLINE - 1
    assert call(ep, "ListApplications", {})["applications"] == []


def test_the_server_listens_on_loopback_only(service):
    assert service.httpd.server_address[0] == "127.0.0.1" and service.endpoint.startswith("http://127.0.0.1:")
    import psutil
    port = service.httpd.server_address[1]
    listening = [c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


@needs_root("needs root to give a folder or file to another user")
def test_a_service_folder_or_credentials_file_of_another_user_is_not_trusted(tmp_path):
    from agent.errors import EnvironmentProblem
    from agent.service.server import Service

    foreign = tmp_path / "foreign" / "service"
    os.makedirs(foreign)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(EnvironmentProblem) as e:
        Service(str(tmp_path / "foreign"), s3=False, agents=False)
    assert e.value.reference == "service-folder-unsafe"
    state = tmp_path / "state"
    os.makedirs(state / "service", mode=0o700)
    planted = state / "service" / "credentials.json"
    planted.write_text('{"accessKeyId": "CDSIMPLANTEDKEY00000", "secretAccessKey": "known-to-the-planter"}')
    os.chmod(planted, 0o600)
    os.chown(planted, 65534, 65534)
    with Service(str(state), s3=False, agents=False) as svc:
        assert svc.credentials.access_key != "CDSIMPLANTEDKEY00000"
        assert os.stat(planted).st_uid == 0
