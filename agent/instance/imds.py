"""The EC2 instance metadata service (IMDS) of one instance: its identity, its settings and the answers.

What an instance is on EC2 (instance id, AMI, type, region, private address, MAC, role, tags, user
data) is made up once per instance and kept in its folder (``ec2.json``, with the metadata options
``aws ec2 modify-instance-metadata-options`` names: HttpTokens, HttpEndpoint, InstanceMetadataTags);
:class:`Metadata` answers the requests a process inside sends to 169.254.169.254 as the real service
does: IMDSv2 session tokens (``PUT /latest/api/token``), 401 without one when tokens are required
(the default, as on Amazon Linux 2023) or with one that is unknown or expired, 400 for a bad TTL, 404
for a path outside the tree, listings one entry a line with a ``/`` after folders. Credentials under
``iam/security-credentials/ROLE`` are made up too (shaped like STS's, expiring): they open nothing but
the local AWS cdsim runs for the instances. Requests refused because they came without a token are
recorded (``imds-refused.jsonl``) so a failed deployment can name the cause.

No sockets here (agent.instance.services serves this from inside the instance's network namespace).
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from agent.errors import UsageError
from agent.fsutil import atomic_write
from agent.instance.store import Instance

ADDRESS = "169.254.169.254"
PORT = 80
ACCOUNT = "000000000000"
ROLE = "cdsim-instance-role"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "x-aws-ec2-metadata-token"
MAX_TTL = 21600
CREDENTIAL_PERIOD = 3600        # new credentials each hour ...
CREDENTIAL_LIFETIME = 6 * 3600  # ... each valid for six, as the real service hands them out
SETTINGS_FILE = "ec2.json"
REFUSED_FILE = "imds-refused.jsonl"
VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
            "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01", "2012-01-12", "2014-02-25",
            "2014-11-05", "2015-10-20", "2016-04-19", "2016-06-30", "2016-09-02", "2018-03-28",
            "2018-08-17", "2018-09-24", "2019-10-01", "2020-10-27", "2021-01-03", "2021-03-23",
            "2021-07-15", "2022-09-24", "latest")
OPTION_VALUES = {"HttpTokens": ("required", "optional"), "HttpEndpoint": ("enabled", "disabled"),
                 "InstanceMetadataTags": ("enabled", "disabled")}
HOST_NETWORK_NOTE = (
    "instance metadata (169.254.169.254) is not available in an instance with the host's network: the "
    "address would have to be added to the host's own network, and on EC2 it is the real service's; "
    "use a private network (the default, `--network private`) for hooks that ask the instance who it is")

class Options(TypedDict):
    HttpTokens: str
    HttpEndpoint: str
    InstanceMetadataTags: str


class Identity(TypedDict):
    """Who the instance is on (local) EC2: written once, at its first start."""

    instance_id: str
    ami_id: str
    instance_type: str
    region: str
    availability_zone: str
    local_ipv4: str
    mac: str
    launched: float
    role: str
    secret: str               # seeds its credentials
    tags: dict[str, str]
    user_data: str | None     # base64 of the bytes, or None when not set
    options: Options


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def new_identity(name: str, region: str = "us-east-1") -> Identity:
    seed = secrets.token_hex(16)
    octets = hashlib.sha256((seed + "ip").encode()).digest()
    mac_bytes = hashlib.sha256((seed + "mac").encode()).digest()[:5]
    return Identity(
        instance_id="i-0" + _hex(seed + name, 16), ami_id="ami-0" + _hex("cdsim-ami", 16),
        instance_type="t3.micro", region=region, availability_zone=region + "a",
        local_ipv4=f"172.31.{octets[0] % 16}.{4 + octets[1] % 250}",   # the default VPC's first subnet
        mac="0e:" + ":".join(f"{b:02x}" for b in mac_bytes), launched=time.time(), role=ROLE,
        secret=secrets.token_hex(20), tags={}, user_data=None,
        options=Options(HttpTokens="required", HttpEndpoint="enabled", InstanceMetadataTags="disabled"))


def settings_path(inst: Instance) -> str:
    return os.path.join(inst.path, SETTINGS_FILE)


def load(inst: Instance) -> Identity:
    """The instance's identity and metadata options, made (and saved) on first use."""
    try:
        with open(settings_path(inst), encoding="utf-8") as f:
            data: Identity = json.load(f)
        return data
    except FileNotFoundError:
        identity = new_identity(inst.name)
        save(inst, identity)
        return identity


def save(inst: Instance, identity: Identity) -> None:
    atomic_write(settings_path(inst), json.dumps(identity, indent=2, sort_keys=True) + "\n", private=True)


def modify_options(inst: Instance, *, http_tokens: str | None = None, http_endpoint: str | None = None,
                   instance_metadata_tags: str | None = None, user_data: bytes | None = None,
                   tags: dict[str, str] | None = None) -> Identity:
    """Change the instance's metadata options (as `aws ec2 modify-instance-metadata-options`), its user
    data or tags; takes effect with the next request, running or not."""
    if inst.network != "private":
        raise UsageError(f"instance {inst.name!r}: {HOST_NETWORK_NOTE}", reference="imds-host-network")
    identity = load(inst)
    for key, value in (("HttpTokens", http_tokens), ("HttpEndpoint", http_endpoint),
                       ("InstanceMetadataTags", instance_metadata_tags)):
        if value is None:
            continue
        if value not in OPTION_VALUES[key]:
            raise UsageError(f"{key} {value!r} is not one of {', '.join(OPTION_VALUES[key])}",
                             reference="imds-option-invalid")
        identity["options"][key] = value   # type: ignore[literal-required]  # key is one of Options' keys
    if user_data is not None:
        identity["user_data"] = base64.b64encode(user_data).decode("ascii")
    if tags is not None:
        identity["tags"] = dict(tags)
    save(inst, identity)
    return identity


# ---- what a request gets -------------------------------------------------------------------------

Tree = dict[str, "Tree | str"]


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def credentials(identity: Identity, now: float) -> dict[str, str]:
    """This hour's credentials for the instance role: derived from the instance's secret and the hour,
    so every request of the hour gets the same, and they expire as STS's do."""
    period = int(now // CREDENTIAL_PERIOD)
    key = hmac.new(identity["secret"].encode(), str(period).encode(), hashlib.sha256).digest()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    access = "ASIA" + "".join(alphabet[b % 32] for b in key[:16])
    secret = base64.b64encode(hashlib.sha256(key + b"secret").digest())[:40].decode()
    token = base64.b64encode(hashlib.sha512(key + b"token").digest() * 3).decode()
    issued = period * CREDENTIAL_PERIOD
    return {"Code": "Success", "LastUpdated": _stamp(issued), "Type": "AWS-HMAC", "AccessKeyId": access,
            "SecretAccessKey": secret, "Token": token, "Expiration": _stamp(issued + CREDENTIAL_LIFETIME)}


def hostname(identity: Identity) -> str:
    ip = identity["local_ipv4"].replace(".", "-")
    domain = "ec2.internal" if identity["region"] == "us-east-1" else f"{identity['region']}.compute.internal"
    return f"ip-{ip}.{domain}"


def identity_document(identity: Identity) -> str:
    doc = {"accountId": ACCOUNT, "architecture": os.uname().machine.replace("aarch64", "arm64"),
           "availabilityZone": identity["availability_zone"], "billingProducts": None,
           "devpayProductCodes": None, "marketplaceProductCodes": None, "imageId": identity["ami_id"],
           "instanceId": identity["instance_id"], "instanceType": identity["instance_type"], "kernelId": None,
           "pendingTime": _stamp(identity["launched"]), "privateIp": identity["local_ipv4"], "ramdiskId": None,
           "region": identity["region"], "version": "2017-09-30"}
    return json.dumps(doc, indent=2, separators=(",", " : "))


def network_ids(identity: Identity) -> dict[str, str]:
    seed = identity["instance_id"]
    return {"interface": "eni-0" + _hex(seed + "eni", 16), "subnet": "subnet-0" + _hex(identity["region"], 16),
            "vpc": "vpc-0" + _hex(identity["region"] + "vpc", 16), "sg": "sg-0" + _hex(identity["region"] + "sg", 16)}


def tree(identity: Identity, now: float) -> Tree:
    """Everything under /latest/ for this instance, as nested folders of text."""
    ids = network_ids(identity)
    host = hostname(identity)
    mac = identity["mac"]
    interface: Tree = {
        "device-number": "0", "interface-id": ids["interface"], "local-hostname": host,
        "local-ipv4s": identity["local_ipv4"], "mac": mac, "owner-id": ACCOUNT,
        "security-group-ids": ids["sg"], "security-groups": "default", "subnet-id": ids["subnet"],
        "subnet-ipv4-cidr-block": "172.31.0.0/20", "vpc-id": ids["vpc"], "vpc-ipv4-cidr-block": "172.31.0.0/16",
        "vpc-ipv4-cidr-blocks": "172.31.0.0/16"}
    profile = f"arn:aws:iam::{ACCOUNT}:instance-profile/{identity['role']}"
    info = {"Code": "Success", "LastUpdated": _stamp(now), "InstanceProfileArn": profile,
            "InstanceProfileId": "AIPA" + _hex(profile, 17).upper()}
    meta: Tree = {
        "ami-id": identity["ami_id"], "ami-launch-index": "0", "ami-manifest-path": "(unknown)",
        "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
        "hostname": host, "instance-action": "none", "instance-id": identity["instance_id"],
        "instance-life-cycle": "on-demand", "instance-type": identity["instance_type"], "local-hostname": host,
        "local-ipv4": identity["local_ipv4"], "mac": mac,
        "network": {"interfaces": {"macs": {mac: interface}}},
        "placement": {"availability-zone": identity["availability_zone"],
                      "availability-zone-id": identity["region"][:3] + "1-az1", "region": identity["region"]},
        "profile": "default-hvm", "reservation-id": "r-0" + _hex(identity["instance_id"] + "r", 16),
        "security-groups": "default", "services": {"domain": "amazonaws.com", "partition": "aws"},
        "iam": {"info": json.dumps(info, indent=2),
                "security-credentials": {identity["role"]: json.dumps(credentials(identity, now), indent=2)}},
    }
    if identity["options"]["InstanceMetadataTags"] == "enabled":
        meta["tags"] = {"instance": dict(identity["tags"])}
    latest: Tree = {"dynamic": {"instance-identity": {"document": identity_document(identity)}}, "meta-data": meta}
    if identity["user_data"] is not None:
        latest["user-data"] = base64.b64decode(identity["user_data"]).decode("utf-8", "surrogateescape")
    return latest


def listing(folder: Tree) -> str:
    """A folder as the service prints it: one entry a line, folders with a trailing slash, no final newline."""
    return "\n".join(k + ("/" if isinstance(v, dict) else "") for k, v in sorted(folder.items()))


def lookup(root: Tree, parts: list[str]) -> Tree | str | None:
    node: Tree | str = root
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# ---- tokens and requests -------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed"}


def error_page(status: int) -> str:
    title = f"{status} - {_REASONS.get(status, 'Error')}"
    return ('<?xml version="1.0" encoding="iso-8859-1"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
            '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
            f' <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n')


def _error(status: int) -> Reply:
    return Reply(status, error_page(status), {"Content-Type": "text/html"})


Refusal = Literal["no-token", "bad-token"]


class Metadata:
    """The service of one instance: its tokens (kept in memory: a token of another instance, or of
    this one before it restarted, is unknown) and its answers. ``load`` reads the instance's identity
    and options afresh for each request; ``refused`` is told about each request refused for want of a
    valid token."""

    def __init__(self, load_identity: Callable[[], Identity],
                 refused: Callable[[str, Refusal], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._load = load_identity
        self._refused = refused
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def _new_token(self, ttl: int) -> str:
        token = base64.urlsafe_b64encode(secrets.token_bytes(42)).decode()
        with self._lock:
            now = self._clock()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ttl
        return token

    def _token_valid(self, token: str) -> bool:
        with self._lock:
            expires = self._tokens.get(token)
        return expires is not None and expires > self._clock()

    def handle(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        """Answer one request. ``headers``: names in lower case."""
        identity: Identity = self._load()
        if identity["options"]["HttpEndpoint"] != "enabled":
            return _error(403)
        path = path.split("?", 1)[0]
        if path == "/latest/api/token":
            if method != "PUT":
                return _error(405)
            if "x-forwarded-for" in headers:
                return _error(403)   # the service refuses tokens asked for through a proxy
            ttl = headers.get(TTL_HEADER, "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
                return _error(400)
            return Reply(200, self._new_token(int(ttl)), {TTL_HEADER: ttl, "Content-Type": "text/plain"})
        if method not in ("GET", "HEAD"):
            return _error(405)
        token = headers.get(TOKEN_HEADER)
        if token is not None and not self._token_valid(token):
            self._note(path, "bad-token")
            return _error(401)
        if token is None and identity["options"]["HttpTokens"] == "required":
            self._note(path, "no-token")
            return _error(401)
        parts = [p for p in path.split("/") if p]
        if not parts:
            return Reply(200, "\n".join(VERSIONS), {"Content-Type": "text/plain"})
        if parts[0] not in VERSIONS:
            return _error(404)
        node = lookup(tree(identity, self._clock()), parts[1:])
        if node is None:
            return _error(404)
        if isinstance(node, dict):   # the version's own listing names its folders without a slash
            body = "\n".join(sorted(node)) if len(parts) == 1 else listing(node)
        else:
            body = node
        kind = "application/octet-stream" if parts[1:2] == ["user-data"] else "text/plain"
        return Reply(200, body, {"Content-Type": kind})

    def _note(self, path: str, why: Refusal) -> None:
        if self._refused is not None:
            self._refused(path, why)


def record_refusal(inst: Instance, path: str, why: Refusal) -> None:
    """Append a refused request to the instance's record (read by :func:`refusals_since`)."""
    line = json.dumps({"time": time.time(), "path": path[:200], "why": why}) + "\n"
    fd = os.open(os.path.join(inst.path, REFUSED_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def refusals_since(inst: Instance, since: float) -> list[dict[str, str | float]]:
    """Requests the instance's metadata service refused for want of a valid token since ``since``."""
    try:
        with open(os.path.join(inst.path, REFUSED_FILE), encoding="utf-8") as f:
            lines = f.readlines()[-1000:]
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("time", 0) >= since:
            found.append(entry)
    return found


def refusal_advice(inst: Instance, since: float) -> str | None:
    """What to tell the user about a failure when the instance's metadata service refused requests
    without a token (IMDSv1) since ``since``, or None."""
    found = refusals_since(inst, since)
    if not found:
        return None
    paths = ", ".join(dict.fromkeys(str(e["path"]) for e in found[:5]))
    if any(e.get("why") == "no-token" for e in found):
        return (f"instance metadata refused {len(found)} request(s) without a session token (IMDSv1) with 401: "
                f"{paths}. The instance requires IMDSv2 tokens (HttpTokens=required, the default here and on "
                "Amazon Linux 2023). Fix the script: get a token with `TOKEN=$(curl -sX PUT "
                "http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600')` and "
                "send it with `-H \"X-aws-ec2-metadata-token: $TOKEN\"`; or allow IMDSv1 on this instance with "
                f"`cdsim instance metadata-options {inst.name} --http-tokens optional`")
    return (f"instance metadata refused {len(found)} request(s) with an unknown or expired session token (401): "
            f"{paths}. Tokens belong to one instance and expire after their TTL: ask for a new one")
