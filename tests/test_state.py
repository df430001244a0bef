"""agent.state names every folder of cdsim's state folder; the commands find their files where it says."""
import os
import subprocess
import sys

from agent import state
from tests.lib import CLI, REPO


class TestStateDir:
    """Which state folder: $CDSIM_STATE_DIR, then $XDG_STATE_HOME/cdsim, then ~/.local/state/cdsim."""

    def test_explicit_variable_wins_and_is_made_absolute(self, tmp_path, monkeypatch):
        """A relative $CDSIM_STATE_DIR is taken from the current folder, before XDG_STATE_HOME."""
        monkeypatch.chdir(tmp_path)
        env = {"CDSIM_STATE_DIR": "rel/state", "XDG_STATE_HOME": "/xdg", "HOME": "/home/x"}
        assert state.state_dir(env) == str(tmp_path / "rel" / "state")

    def test_xdg_only_when_absolute(self):
        """A relative $XDG_STATE_HOME is ignored, as the XDG base directory spec says."""
        assert state.state_dir({"XDG_STATE_HOME": "/xdg"}) == "/xdg/cdsim"
        assert state.state_dir({"XDG_STATE_HOME": "xdg", "HOME": "/home/x"}) == "/home/x/.local/state/cdsim"

    def test_empty_variables_count_as_unset(self):
        """CDSIM_STATE_DIR= and XDG_STATE_HOME= fall through to the home folder."""
        env = {"CDSIM_STATE_DIR": "", "XDG_STATE_HOME": "", "HOME": "/home/x"}
        assert state.state_dir(env) == "/home/x/.local/state/cdsim"

    def test_process_environment_by_default(self, tmp_path, monkeypatch):
        """Without a mapping the process environment is read, at each call."""
        monkeypatch.setenv("CDSIM_STATE_DIR", str(tmp_path / "a"))
        assert state.state_dir() == str(tmp_path / "a")
        monkeypatch.setenv("CDSIM_STATE_DIR", str(tmp_path / "b"))
        assert state.resolve() == str(tmp_path / "b")
        assert state.resolve("given") == os.path.abspath("given")


class TestLayout:
    """Every folder is named from one state folder, and the names are the ones on disk since 0.1."""

    def test_every_folder_of_the_state_folder(self, tmp_path):
        """host/, instances/, service/ and the agent folders under service/."""
        s = str(tmp_path)
        assert state.host_root_dir(s) == f"{s}/host/deployment-root"
        assert state.host_log_dir(s) == f"{s}/host/log"
        assert state.instance_dir("web-1", s) == f"{s}/instances/web-1"
        assert state.instances_dir(s) == f"{s}/instances"
        assert state.service_dir(s) == f"{s}/service"
        assert state.agent_work_dir("i-1", s) == f"{s}/service/agent-work/i-1"
        assert state.service_host_dir("i-1", s) == f"{s}/service/hosts/i-1"
        machine = state.service_host_dir("i-1", s)
        assert state.machine_root_dir(machine) == f"{machine}/deployment-root"
        assert state.machine_log_dir(machine) == f"{machine}/log"

    def test_event_streams_beside_the_agent_log(self):
        """<log>/cdsim-events/<group>/<id>.jsonl, whether the log folder ends in a slash or not."""
        assert state.events_dir("/l") == "/l/cdsim-events"
        assert state.events_dir(state.AGENT_LOG_DIR, "g") == "/var/log/aws/codedeploy-agent/cdsim-events/g"
        assert state.events_file("/l/", "g", "d-1") == "/l/cdsim-events/g/d-1.jsonl"

    def test_machine_paths_seen_through_an_upper_layer(self):
        """An instance's /var/log/aws/codedeploy-agent/ is <upper>/var/log/aws/codedeploy-agent on the host."""
        assert state.in_upper("/s/instances/x/upper", state.AGENT_LOG_DIR) == \
            "/s/instances/x/upper/var/log/aws/codedeploy-agent"
        assert state.in_upper("/u", state.AGENT_ROOT_DIR) == "/u/opt/codedeploy-agent/deployment-root"

    def test_agent_defaults_are_the_shipped_configuration(self):
        """The agent's configuration defaults are these folders (behaviour doc §2)."""
        from agent.config import SHIPPED
        assert SHIPPED["root_dir"] == state.AGENT_ROOT_DIR
        assert SHIPPED["log_dir"] == state.AGENT_LOG_DIR


def test_host_deploy_writes_where_the_state_module_says(tmp_path):
    """`cdsim deploy --host` writes its deployment and event stream under state.host_dir(), and
    `cdsim history --host` finds it there."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    st = str(tmp_path / "state")
    env = {**os.environ, "CDSIM_STATE_DIR": st}
    done = subprocess.run([*CLI, "deploy", "--host", "-q", str(bundle)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    [stream] = os.listdir(state.events_dir(state.host_log_dir(st), "default-local-deployment-group"))
    deployment_id = stream.removesuffix(".jsonl")
    assert os.path.isfile(state.events_file(state.host_log_dir(st), "default-local-deployment-group",
                                            deployment_id))
    assert os.path.isdir(os.path.join(state.host_root_dir(st), "default-local-deployment-group", deployment_id))
    history = subprocess.run([*CLI, "history", "--host"], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=120, check=False)
    assert history.returncode == 0, history.stderr
    assert deployment_id in history.stdout


def test_the_state_module_imports_nothing_of_cdsim():
    """agent.state is imported by every layer, so it imports no other cdsim module."""
    code = ("import sys, agent.state; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('agent', 'hooks_runtime')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['agent', 'agent.state']"
