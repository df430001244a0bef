"""Deployment root layout, markers, retention, and the agent configuration file (§2, §3)."""
import os
import re

import pytest

from agent.config import config_from_mapping, load_local_config, parse_config_text
from agent.deployment_root import DeploymentRoot, join, new_deployment_id
from agent.errors import DeploymentError, UsageError


def process_umask() -> int:
    """This process's umask, from /proc/self/status (reading it with os.umask() would change it)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))


class TestLayout:
    def test_deployment_id_shape(self):
        """Ids are d- + 9 of [A-Z0-9] + -local."""
        assert re.fullmatch(r"d-[A-Z0-9]{9}-local", new_deployment_id())

    def test_join_collapses_slashes_only(self):
        """File.join collapses duplicate slashes and keeps everything else."""
        assert join("/r/", "g", "d") == "/r/g/d"
        assert join("/r", "/x/../y") == "/r/x/../y"

    def test_marker_paths_use_the_agents_separators(self, tmp_path):
        """-cleanup and -install.json take a hyphen, the two markers an underscore."""
        r = DeploymentRoot(str(tmp_path), "g1")
        assert r.cleanup_file.endswith("deployment-instructions/g1-cleanup")
        assert r.install_json.endswith("deployment-instructions/g1-install.json")
        assert r.last_successful_marker.endswith("deployment-instructions/g1_last_successful_install")
        assert r.most_recent_marker.endswith("deployment-instructions/g1_most_recent_install")

    def test_markers_hold_the_path_without_newline(self, tmp_path):
        """Markers contain the deployment dir, no trailing newline, and nothing is left beside them."""
        r = DeploymentRoot(str(tmp_path), "g1")
        r.mark_most_recent("d-AAAAAAAAA-local")
        with open(r.most_recent_marker) as f:
            assert f.read() == f"{tmp_path}/g1/d-AAAAAAAAA-local"
        assert sorted(os.listdir(r.instructions_dir)) == ["g1_most_recent_install"]
        assert os.stat(r.most_recent_marker).st_mode & 0o777 == 0o666 & ~process_umask()  # Q40


class TestRetention:
    def _make(self, root, names):
        for i, n in enumerate(names):
            d = os.path.join(root.group_dir, n)
            os.makedirs(d)
            os.utime(d, (1000 + i, 1000 + i))

    def test_keeps_max_revisions_including_the_new_one(self, tmp_path):
        """With 5 kept and 5 old folders, the oldest one goes."""
        r = DeploymentRoot(str(tmp_path), "g")
        self._make(r, [f"d-{i}" for i in range(5)])
        assert r.apply_retention("d-new", 5) == [r.deployment_dir("d-0")]
        assert sorted(os.listdir(r.group_dir)) == ["d-1", "d-2", "d-3", "d-4"]

    def test_last_successful_is_never_deleted(self, tmp_path):
        """The last successful revision survives even when it is the oldest."""
        r = DeploymentRoot(str(tmp_path), "g")
        self._make(r, [f"d-{i}" for i in range(5)])
        r.mark_last_successful("d-0")
        r.apply_retention("d-new", 5)
        assert sorted(os.listdir(r.group_dir)) == ["d-0", "d-2", "d-3", "d-4"]

    def test_stray_files_count(self, tmp_path):
        """Files in the group folder count as entries and can be deleted."""
        r = DeploymentRoot(str(tmp_path), "g")
        self._make(r, ["d-1", "d-2"])
        open(os.path.join(r.group_dir, "stray"), "w").close()
        os.utime(os.path.join(r.group_dir, "stray"), (1, 1))
        assert r.apply_retention("d-new", 3) == [os.path.join(r.group_dir, "stray")]


class TestConfig:
    def test_colon_and_plain_keys(self, tmp_path):
        """:root_dir: and root_dir: both work."""
        assert parse_config_text(":root_dir: /a\nlog_dir: /b\n", "x") == {"root_dir": "/a", "log_dir": "/b"}

    def test_max_revisions_conversion(self):
        """nil -> 5, '5' and 5.7 -> 5, 'abc' fails with the agent's log text."""
        assert config_from_mapping({}).max_revisions == 5
        assert config_from_mapping({"max_revisions": "5"}).max_revisions == 5
        assert config_from_mapping({"max_revisions": 5.7}).max_revisions == 5
        with pytest.raises(DeploymentError, match=r"Invalid configuration :max_revision=abc"):
            _ = config_from_mapping({"max_revisions": "abc"}).max_revisions

    def test_missing_config_file(self, tmp_path):
        """A missing -c file is the agent's validation error."""
        p = tmp_path / "nope.yml"
        with pytest.raises(UsageError, match=f"configuration file {p} does not exist or is not readable"):
            load_local_config(str(p))

    @pytest.mark.parametrize("text", ["", "- a\n- b\n", "a: [\n"])
    def test_broken_config_file(self, tmp_path, text):
        """Empty, non-mapping or invalid YAML: the agent's loading error."""
        p = tmp_path / "c.yml"
        p.write_text(text)
        with pytest.raises(DeploymentError, match="An error occurred loading the CodeDeploy agent config file"):
            load_local_config(str(p))
