"""Service revisions: the command's JSON becomes agent.revision's types, and the hook variables of a
fetched revision come from revision_env alone."""
import pytest

import agent
from agent.revision import GitHubRevision, S3Revision, from_record, revision_env, to_record
from agent.service.fetch import revision_of
from agent.service.revisions import RevisionError


class TestRevisionOf:
    """revision_of checks every field and keeps what the hooks are told."""

    def test_s3(self):
        """bucket, key, version and eTag become the S3Revision's, hence BUNDLE_*."""
        rev = revision_of({"revisionType": "S3", "s3Location": {"bucket": "b", "key": "k/a.zip",
                                                                "bundleType": "zip", "eTag": "e1"}})
        assert rev == S3Revision("b", "k/a.zip", "zip", None, "e1")
        assert revision_env(rev) == {"BUNDLE_BUCKET": "b", "BUNDLE_KEY": "k/a.zip", "BUNDLE_VERSION": None,
                                     "BUNDLE_ETAG": "e1"}

    def test_github_owner_name_and_path(self):
        """owner/name splits as the agent's GitHubRevision; an absolute path has no owner."""
        rev = revision_of({"revisionType": "GitHub", "gitHubLocation": {"repository": "me/app", "commitId": "main"}})
        assert rev == GitHubRevision("me", "app", "main", "tar")
        rev = revision_of({"revisionType": "GitHub", "gitHubLocation": {"repository": "/srv/git/app",
                                                                        "commitId": "abc1234"}})
        assert rev == GitHubRevision("", "/srv/git/app", "abc1234", "tar")
        assert revision_env(rev) == {"BUNDLE_COMMIT": "abc1234"}

    @pytest.mark.parametrize("revision", [
        {"revisionType": "S3", "s3Location": {"bucket": "../x", "key": "k", "bundleType": "zip"}},
        {"revisionType": "S3", "s3Location": {"bucket": "b", "key": "k", "bundleType": "exe"}},
        {"revisionType": "GitHub", "gitHubLocation": {"repository": "me/app", "commitId": "--output=x"}},
        {"revisionType": "String", "string": {}},
    ])
    def test_refused(self, revision):
        """A field that could be read as a path or an option is refused before anything runs."""
        with pytest.raises(RevisionError):
            revision_of(revision)

    def test_record_round_trip(self):
        """What crosses to the runner reads back as the same revision."""
        for rev in (S3Revision("b", "k", "tgz", "v1", None), GitHubRevision("", "/r", "abc1234", "tar")):
            assert from_record(to_record(rev)) == rev
        with pytest.raises(ValueError):
            from_record({"type": "Local", "location": "/x"})


def test_hooks_see_the_fetched_revisions_variables(tmp_path):
    """A deployment of a fetched bundle gives hooks the origin's BUNDLE_* variables, and removes a
    BUNDLE_VERSION the base environment had when the origin has no version."""
    bundle = tmp_path / "b"
    (bundle / "scripts").mkdir(parents=True)
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n"
                                        "    - location: scripts/env.sh\n")
    out = tmp_path / "env.txt"
    script = bundle / "scripts" / "env.sh"
    script.write_text(f"#!/bin/sh\nenv | grep '^BUNDLE_' | sort > {out}\n")
    script.chmod(0o755)
    cfg = agent.AgentConfig(root_dir=str(tmp_path / "root"), log_dir=str(tmp_path / "log"))
    request = agent.DeploymentRequest(agent.LocalRevision(str(bundle), "directory"), cfg,
                                      base_env={"PATH": "/usr/bin:/bin", "BUNDLE_VERSION": "stale"},
                                      fetched_from=S3Revision("bkt", "a/b.zip", "zip", None, "etag1"))
    assert agent.deploy(request).succeeded
    assert out.read_text().splitlines() == ["BUNDLE_BUCKET=bkt", "BUNDLE_ETAG=etag1", "BUNDLE_KEY=a/b.zip"]
