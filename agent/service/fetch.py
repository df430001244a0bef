"""Fetching a service revision onto this machine: the agent's DownloadBundle for S3 and GitHub.

``revision_of`` turns a command's revision (the service's JSON) into the revision types of
``agent.revision``, checking every field again (``agent.service.revisions``); ``fetch`` puts its bundle
in a folder and returns the ``LocalRevision`` the engine deploys. S3 objects come from the server's S3
(signed GET); GitHub revisions are ``git archive`` of a local repository under a configured GitHub root.
The hook variables of a fetched revision are ``agent.revision.revision_env`` of what ``revision_of``
returned (the engine applies them: ``DeploymentRequest.fetched_from``).
Must not import the server, the API or the engine's store.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from agent.errors import EnvironmentProblem
from agent.revision import GitHubRevision, LocalRevision, S3Revision
from agent.service import revisions
from agent.service.auth import Credentials
from agent.service.client import download
from agent.service.revisions import RevisionError

__all__ = ["fetch", "revision_of"]


def revision_of(revision: Mapping[str, Any]) -> S3Revision | GitHubRevision:
    """The revision a command names; RevisionError when a field is refused."""
    kind = revision.get("revisionType")
    if kind == "S3":
        s3 = revision["s3Location"]
        bundle_type = revisions.check_bundle_type(s3.get("bundleType"))
        return S3Revision(bucket=revisions.check_bucket(s3.get("bucket")), key=revisions.check_key(s3.get("key")),
                          bundle_type=bundle_type, version=s3.get("version"), etag=s3.get("eTag"))
    if kind == "GitHub":
        gh = revision["gitHubLocation"]
        commit = revisions.check_commit(gh.get("commitId"))
        repository = revisions.check_repository_name(gh.get("repository"))
        # owner/name as the agent's GitHubRevision holds it; an absolute path (cdsim's service allows
        # one under a GitHub root) has no owner
        account, _sep, name = ("", "", repository) if os.path.isabs(repository) else repository.partition("/")
        return GitHubRevision(account=account, repository=name, commit_id=commit,
                              bundle_type="tar")
    raise RevisionError(f"unsupported revision type {kind!r}")


def fetch(revision: S3Revision | GitHubRevision, folder: str, *, s3_endpoint: str | None,
          credentials: Credentials | None, github_roots: Sequence[str]) -> LocalRevision:
    """Put the revision's bundle in ``folder``; EnvironmentProblem or RevisionError when that fails."""
    if isinstance(revision, S3Revision):
        if not s3_endpoint:
            raise EnvironmentProblem("the server has no S3 endpoint for an S3 revision")
        bundle = os.path.join(folder, "bundle." + revision.bundle_type)
        download(s3_endpoint, revision.bucket, revision.key, revision.version, bundle, credentials=credentials)
        return LocalRevision(bundle, revision.bundle_type)
    full_name = f"{revision.account}/{revision.repository}" if revision.account else revision.repository
    repo = revisions.github_repository(full_name, list(github_roots))
    bundle = os.path.join(folder, "bundle.tar")
    commit = revision.commit_id
    # the commit after --end-of-options: git reads it as a revision even if it looked like an option
    done = subprocess.run(["git", "-C", repo, "archive", "--format=tar", "-o", bundle, "--end-of-options",
                           commit], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EnvironmentProblem(f"git archive of {commit} in {repo} failed: {done.stderr.strip()}")
    return LocalRevision(bundle, "tar")
