"""Where a bundle comes from: the revision source seam (behaviour doc §1.4, §7.3).

Owns the ``Revision`` values (a local directory or archive, an S3 object, a GitHub commit), the
classification of a ``--bundle-location`` string into one of them with the agent's messages, the
``BUNDLE_*`` variables each kind gives hook scripts (``revision_env``, the one place they are made) and
the plain record of an S3 or GitHub revision (``to_record``/``from_record``) that crosses a process.

The engine deploys local revisions only. An S3 or GitHub revision of the local service is fetched by
``agent.service.fetch`` into a ``LocalRevision``; the engine is then told where it came from
(``DeploymentRequest.fetched_from``) for its hook variables. `cdsim local` with an s3:// or GitHub
location stops at ``bundle.fetch_and_unpack`` (``revision-unsupported``): it has no service to fetch from.

Pure: no I/O (``cwd`` is passed in). Must not import the bundle, install or CLI modules.
"""
from __future__ import annotations

import posixpath
import re

from agent.errors import UsageError
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from urllib.parse import SplitResult

__all__ = ["BUNDLE_TYPES", "GitHubRevision", "LocalRevision", "RemoteRevision", "Revision", "S3Revision",
           "classify_location", "from_record", "revision_env", "to_record"]

BUNDLE_TYPES = ("tgz", "tar", "zip", "directory")

# RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class LocalRevision:
    """A directory or archive on this machine; ``location`` is absolute."""

    location: str
    bundle_type: str  # directory | tar | tgz | zip

    @property
    def revision_type(self) -> str:
        """The agent's RevisionType for it (also what its agent log line says)."""
        return "Local Directory" if self.bundle_type == "directory" else "Local File"


@dataclass(frozen=True)
class S3Revision:
    """An S3 object; ``key`` keeps its percent-escapes, as the agent's does."""

    bucket: str
    key: str
    bundle_type: str
    version: str | None = None
    etag: str | None = None


@dataclass(frozen=True)
class GitHubRevision:
    """A GitHub commit archive. cdsim's service also names a local repository by absolute path: then
    ``account`` is empty and ``repository`` is that path."""

    account: str
    repository: str
    commit_id: str
    bundle_type: str  # zip | tar


Revision = LocalRevision | S3Revision | GitHubRevision
RemoteRevision = S3Revision | GitHubRevision


def revision_env(revision: Revision) -> dict[str, str | None]:
    """The BUNDLE_* hook variables of a revision (§7.3); ``None`` means "remove from the environment"."""
    if isinstance(revision, S3Revision):
        return {"BUNDLE_BUCKET": revision.bucket, "BUNDLE_KEY": revision.key,
                "BUNDLE_VERSION": revision.version, "BUNDLE_ETAG": revision.etag}
    if isinstance(revision, GitHubRevision):
        return {"BUNDLE_COMMIT": revision.commit_id}
    return {}


def to_record(revision: RemoteRevision) -> dict[str, str | None]:
    """A JSON-ready record of an S3 or GitHub revision (``from_record`` reads it back)."""
    if isinstance(revision, S3Revision):
        return {"type": "S3", "bucket": revision.bucket, "key": revision.key, "bundle_type": revision.bundle_type,
                "version": revision.version, "etag": revision.etag}
    return {"type": "GitHub", "account": revision.account, "repository": revision.repository,
            "commit_id": revision.commit_id, "bundle_type": revision.bundle_type}


def from_record(record: Mapping[str, object]) -> RemoteRevision:
    """The revision ``to_record`` wrote; ValueError for anything else."""
    def text(key: str) -> str:
        value = record.get(key)
        if not isinstance(value, str):
            raise ValueError(f"revision record without {key}: {record!r}")
        return value

    def optional(key: str) -> str | None:
        return None if record.get(key) is None else text(key)

    if record.get("type") == "S3":
        return S3Revision(text("bucket"), text("key"), text("bundle_type"), optional("version"), optional("etag"))
    if record.get("type") == "GitHub":
        return GitHubRevision(text("account"), text("repository"), text("commit_id"), text("bundle_type"))
    raise ValueError(f"not a revision record: {record!r}")


def classify_location(location: str, bundle_type: str, cwd: str) -> Revision:
    """Turn a validated ``--bundle-location`` into a Revision, as the agent does (§1.4).

    Raises ``UsageError`` whose message is the agent's ValidationError text (the caller prints
    ``ERROR: {message}``). Unlike the agent's validator, a ``file:///abs/path`` URL is accepted here as
    the local path it names (the agent rejects it earlier, §1.3 rule 4; that is the validator's job).
    """
    m = _SCHEME.match(location)
    scheme = m.group(1).lower() if m else None
    if scheme == "s3":
        return _s3(location, bundle_type)
    if scheme == "https":
        from urllib.parse import urlsplit  # here: a local path (nearly every run) needs no URL parsing

        parts = urlsplit(location)
        if _host(parts.netloc).endswith("github.com"):
            return _github(location, parts, bundle_type)
    elif scheme is None or len(scheme) == 1:  # one letter: a Windows drive, taken as a local path
        return LocalRevision(_absolute(location, cwd), bundle_type)
    elif scheme == "file":
        return LocalRevision(_file_url_path(location), bundle_type)
    raise UsageError(f"unknown location {location} cannot be determined to be S3, Github, "
                     "or a local file / directory")


def _absolute(path: str, cwd: str) -> str:
    # Like Ruby's File.expand_path against the cwd: '.' and '..' resolved textually, no symlinks.
    return posixpath.normpath(posixpath.join(cwd, path))


def _host(netloc: str) -> str:
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host
    return host.partition(":")[0]


def _s3(location: str, bundle_type: str) -> S3Revision:
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(location)
    if not parts.path.startswith("/"):
        raise UsageError(f"s3 location {location} not in the expected format of 's3://bucket/key'")
    query = parse_qs(parts.query, keep_blank_values=True)
    # The key keeps its percent-escapes, as the agent's does (it takes the URI's raw path).
    return S3Revision(bucket=_host(parts.netloc), key=parts.path[1:], bundle_type=bundle_type,
                      version=query.get("versionId", [None])[0], etag=query.get("etag", [None])[0])


def _github(location: str, parts: SplitResult, bundle_type: str) -> GitHubRevision:
    gh_type = bundle_type if bundle_type in ("zip", "tar") else "zip"  # Q28: tgz/directory become zip
    if _host(parts.netloc) == "github.com":
        m = re.fullmatch(r"/([^/]+)/(.+)", parts.path)
        if m:
            return GitHubRevision(m.group(1), m.group(2), "HEAD", gh_type)
    m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/[^/]+/([^/]+)", parts.path)
    if m:
        return GitHubRevision(m.group(1), m.group(2), m.group(3), gh_type)
    raise UsageError(
        f"github location {location} not in the expected format of "
        "'https://github.com/<owner>/<repository_name>'(assumes HEAD commit) or "
        "'https://api.github.com/repos/<owner>/<repository_name>/tarball/<commit>' or "
        "'https://api.github.com/repos/<owner>/<repository_name>/zipball/<commit>'")


def _file_url_path(location: str) -> str:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(location)
    if _host(parts.netloc) not in ("", "localhost") or not parts.path.startswith("/"):
        raise UsageError(f"location {location} is not a file URL of this machine "
                         "(expected file:///absolute/path)")
    return posixpath.normpath(unquote(parts.path))
