"""What a revision may name: GitHub commits and repositories, S3 buckets and keys, ids used as paths.

Checked twice: by the API at CreateDeployment / RegisterApplicationRevision (``RevisionError`` becomes
AWS's ``InvalidRevisionException``) and by the agent before it runs ``git`` or writes a file. A GitHub
``commitId`` is a commit id (hex) or a ref name as ``git check-ref-format`` allows it, never starting
with ``-``; a ``repository`` is ``owner/name`` under a configured GitHub root or an absolute path that
resolves (symlinks followed) inside one. Only ``github_repository`` touches the file system (it
resolves paths); nothing here runs a command. Must not import the server, the API or the engine.
"""
from __future__ import annotations

import os
import re

GITHUB_ROOT_ENV = "CDSIM_GITHUB_ROOT"
BUNDLE_TYPES = ("tar", "tgz", "zip", "YAML", "JSON")
_HEX = re.compile(r"^[0-9a-fA-F]{7,64}$")
_OWNER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
# S3's legacy (us-east-1) bucket names: a superset of today's rules, and never a path
_BUCKET = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")
_DEPLOYMENT_ID = re.compile(r"^d-[A-Z0-9]{9}$")
_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,99}$")


class RevisionError(ValueError):
    """A revision field that is refused; the message says which and why."""


def check_ref_name(name: str) -> bool:
    """True for a ref name ``git check-ref-format --allow-onelevel`` accepts that does not start with ``-``."""
    if not name or len(name) > 255 or name.startswith("-") or name == "@":
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7f or c in " ~^:?*[\\" for c in name):
        return False
    if ".." in name or "@{" in name or "//" in name or name.startswith("/") or name.endswith(("/", ".")):
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in name.split("/"))


def check_commit(commit: object) -> str:
    if not isinstance(commit, str) or not (_HEX.match(commit) or check_ref_name(commit)):
        raise RevisionError(f"The commitId {commit!r} is not a commit id or a valid ref name")
    return commit


def github_roots(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The folders GitHub repositories may be in: ``extra`` and ``$CDSIM_GITHUB_ROOT`` (os.pathsep-separated)."""
    roots = list(extra) + [r for r in os.environ.get(GITHUB_ROOT_ENV, "").split(os.pathsep) if r]
    return [os.path.realpath(r) for r in roots]


def check_repository_name(repository: object) -> str:
    """The form alone: ``owner/name`` or an absolute path without ``..``."""
    if not isinstance(repository, str) or not repository or len(repository) > 4096 or "\0" in repository:
        raise RevisionError(f"The repository {repository!r} is not a repository name")
    if os.path.isabs(repository):
        if ".." in repository.split("/"):
            raise RevisionError(f"The repository {repository!r} must not contain '..'")
        return repository
    if not _OWNER_NAME.match(repository) or any(p in (".", "..") or p.startswith("-")
                                                for p in repository.split("/")):
        raise RevisionError(f"The repository {repository!r} is not of the form owner/name or an absolute path")
    return repository


def github_repository(name: object, roots: list[str]) -> str:
    """The local repository a GitHub revision names, resolved (symlinks followed) inside one of ``roots``."""
    repository = check_repository_name(name)
    if not roots:
        raise RevisionError(f"GitHub revisions are not enabled: no GitHub root is configured "
                            f"(cdsim server --github-root DIR, or ${GITHUB_ROOT_ENV})")
    candidates = [repository] if os.path.isabs(repository) else [os.path.join(r, repository) for r in roots]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        for root in roots:
            if os.path.commonpath([real, root]) == root and os.path.isdir(real):
                return real
    raise RevisionError(f"The repository {repository!r} is not a folder under a configured GitHub root")


def check_bucket(bucket: object) -> str:
    if not isinstance(bucket, str) or not _BUCKET.match(bucket) or ".." in bucket:
        raise RevisionError(f"The bucket name {bucket!r} is not a valid S3 bucket name")
    return bucket


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key.encode()) > 1024 \
            or any(ord(c) < 0x20 or ord(c) == 0x7f for c in key):
        raise RevisionError(f"The S3 key {key!r} is not a valid object key")
    return key


def check_bundle_type(kind: object) -> str:
    if not isinstance(kind, str) or kind not in BUNDLE_TYPES:
        raise RevisionError(f"The bundle type must be one of {', '.join(BUNDLE_TYPES)} (got {kind!r})")
    return kind


def check_deployment_id(did: object) -> str:
    if not isinstance(did, str) or not _DEPLOYMENT_ID.match(did):
        raise RevisionError(f"The deployment id {did!r} is not of the form d-XXXXXXXXX")
    return did


def check_group_id(gid: object) -> str:
    """A deployment group id (the server makes UUIDs): it names a folder of the deployment root."""
    if not isinstance(gid, str) or not _GROUP_ID.match(gid):
        raise RevisionError(f"The deployment group id {gid!r} is not an id")
    return gid


def valid_instance_name(name: object) -> bool:
    return isinstance(name, str) and bool(_INSTANCE_NAME.match(name))
