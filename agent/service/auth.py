"""Who may call a cdsim server: its credentials file, and AWS Signature Version 4 on every request.

The server creates an access key and secret at its first start in ``<state>/service/credentials.json``
(file 0600, folder 0700: only the server's user can read them). Every API and S3 request must carry a
SigV4 ``Authorization`` header made with them; ``verify`` recomputes the signature of the received
request with botocore's signer (``SigV4Auth`` for the CodeDeploy API, ``S3SigV4Auth`` for S3) and
raises ``AuthError`` (AWS's error code, message, HTTP status) otherwise. ``sign`` is the client side.
Must not import the server, the API, the engine or the agents.
"""
from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import string
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import EnvironmentProblem

if TYPE_CHECKING:   # botocore has no type information: these are Any to mypy, named for the reader
    from botocore.auth import SigV4Auth
    from botocore.credentials import Credentials as BotoCredentials

CREDENTIALS_FILE = "credentials.json"
MAX_SKEW = 15 * 60          # seconds, as AWS: a request signed further from now is refused
_AUTH = re.compile(r"^AWS4-HMAC-SHA256 +Credential=([^,\s]+), *SignedHeaders=([^,\s]+), *Signature=([0-9a-f]{64})$")
_SCOPE = re.compile(r"^([A-Z0-9]{16,128})/(\d{8})/([a-z0-9-]{1,32})/([a-z0-9-]{1,32})/aws4_request$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SIGNABLE_PAYLOADS = ("UNSIGNED-PAYLOAD",)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str

    def to_botocore(self) -> BotoCredentials:
        from botocore.credentials import Credentials as Boto
        return Boto(self.access_key, self.secret_key)


class AuthError(Exception):
    """A refused request: ``code`` is AWS's error code for it."""

    def __init__(self, code: str, message: str, status: int = 403):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# -- the credentials file --------------------------------------------------------------------------
def private_folder(folder: str) -> None:
    """Create ``folder`` (and parents) and make it 0700, owned by us."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise EnvironmentProblem(f"{folder} is not a folder of this user: the server keeps its credentials there",
                                 reference="service-folder-unsafe", hint="remove it, or choose another --state")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, 0o700)


def _new_credentials() -> Credentials:
    alphabet = string.ascii_uppercase + string.digits
    return Credentials("CDSIM" + "".join(secrets.choice(alphabet) for _ in range(15)), secrets.token_urlsafe(30))


def load_or_create(folder: str) -> Credentials:
    """The server's credentials: made at the first start; replaced when the file is not ours or not 0600."""
    private_folder(folder)
    path = os.path.join(folder, CREDENTIALS_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600:
                doc = json.load(f)
                return Credentials(doc["accessKeyId"], doc["secretAccessKey"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    creds = _new_credentials()
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump({"accessKeyId": creds.access_key, "secretAccessKey": creds.secret_key}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return creds


def read(folder: str) -> Credentials | None:
    """The credentials a server keeps in ``folder``, when this user can read them."""
    try:
        with open(os.path.join(folder, CREDENTIALS_FILE), encoding="utf-8") as f:
            doc = json.load(f)
        return Credentials(doc["accessKeyId"], doc["secretAccessKey"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- signing and verifying -------------------------------------------------------------------------
def _signer(creds: Credentials, service: str, region: str) -> SigV4Auth:
    from botocore.auth import S3SigV4Auth, SigV4Auth
    return (S3SigV4Auth if service == "s3" else SigV4Auth)(creds.to_botocore(), service, region)


def sign(creds: Credentials, method: str, url: str, headers: dict[str, str], body: bytes, *, service: str,
         region: str) -> dict[str, str]:
    """The headers of a request signed with ``creds`` (botocore's SigV4)."""
    from botocore.awsrequest import AWSRequest
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    _signer(creds, service, region).add_auth(request)
    return dict(request.headers.items())


def verify(creds: Credentials, *, method: str, url: str, headers: dict[str, str], body: bytes,
           service: str, now: float | None = None) -> None:
    """Raise AuthError unless the request is signed by ``creds`` for ``service`` within the skew window.

    ``url`` is the request line's target as received, behind ``http://<Host>``; ``headers`` maps
    lower-case names to values (repeated headers joined with commas)."""
    from botocore.awsrequest import AWSRequest

    s3 = service == "s3"
    auth = headers.get("authorization")
    if not auth:
        if s3:
            raise AuthError("AccessDenied", "Access Denied: the request is not signed")
        raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid: "
                        "the request is not signed (AWS Signature Version 4 with the server's credentials)", 400)
    match = _AUTH.match(auth.strip())
    scope = _SCOPE.match(match.group(1)) if match else None
    if not match or not scope:
        raise _bad_signature(s3, "the Authorization header is not an AWS Signature Version 4 header")
    access_key, day, region, scope_service = scope.groups()
    if not hmac.compare_digest(access_key.encode(), creds.access_key.encode()):
        if s3:
            raise AuthError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid.",
                        400)
    if scope_service != service:
        raise _bad_signature(s3, f"Credential should be scoped to correct service: '{service}'.")
    signed = match.group(2).split(";")
    if "host" not in signed or "x-amz-date" not in signed or any(h not in headers for h in signed):
        raise _bad_signature(s3, "the signed headers must include host and x-amz-date, and be present")
    stamp = headers["x-amz-date"]
    try:
        when = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise _bad_signature(s3, f"X-Amz-Date {stamp!r} is not of the form YYYYMMDDTHHMMSSZ") from None
    if stamp[:8] != day:
        raise _bad_signature(s3, "the credential scope's date is not the request's date")
    if abs((time.time() if now is None else now) - when) > MAX_SKEW:
        raise AuthError("RequestTimeTooSkewed" if s3 else "InvalidSignatureException",
                        f"Signature expired: {stamp} is more than 15 minutes from the server's time",
                        403 if s3 else 400)
    # the signature covers x-amz-content-sha256 in place of the body: the body must be what it says
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None or s3:
        if claimed is not None and _HEX64.match(claimed):
            if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), claimed):
                raise AuthError("XAmzContentSHA256Mismatch" if s3 else "InvalidSignatureException",
                                "The provided 'x-amz-content-sha256' header does not match what was computed.", 400)
        elif not s3 or claimed not in _SIGNABLE_PAYLOADS:
            raise _bad_signature(s3, "x-amz-content-sha256 must be the payload's SHA-256"
                                 + (" or UNSIGNED-PAYLOAD" if s3 else ""))
    request = AWSRequest(method=method, url=url, headers={h: headers[h] for h in signed}, data=body)
    request.context["timestamp"] = stamp
    signer = _signer(creds, service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, match.group(3)):
        if s3:
            raise AuthError("SignatureDoesNotMatch", "The request signature we calculated does not match the "
                                                     "signature you provided. Check your key and signing method.")
        raise AuthError("InvalidSignatureException", "The request signature we calculated does not match the "
                                                     "signature you provided. Check your AWS Secret Access Key "
                                                     "and signing method.", 400)


def _bad_signature(s3: bool, message: str) -> AuthError:
    if s3:
        return AuthError("AuthorizationHeaderMalformed" if "Authorization" in message else "SignatureDoesNotMatch",
                         message, 400 if "Authorization" in message else 403)
    return AuthError("InvalidSignatureException", message, 400)
