"""The public surface of the agent package is locked: a change here is a deliberate API change."""
import agent


def test_all_is_locked():
    """__all__ lists exactly the public names, sorted."""
    assert agent.__all__ == [
        "AgentConfig", "AppSpec", "CdsimError", "DeploymentRequest", "DeploymentResult", "ExitStatus",
        "Finding", "LocalRevision", "Plan", "__version__", "deploy", "make_plan", "parse_appspec",
        "validate_bundle",
    ]


def test_deploy_is_callable_from_the_package(tmp_path):
    """agent.deploy(request) runs a deployment, although agent.deploy is also a module."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    cfg = agent.AgentConfig(root_dir=str(tmp_path / "root"), log_dir=str(tmp_path / "log"))
    result = agent.deploy(agent.DeploymentRequest(agent.LocalRevision(str(bundle), "directory"), cfg))
    assert result.succeeded
    assert (tmp_path / "root" / "default-local-deployment-group" / result.deployment_id /
            "deployment-archive" / "appspec.yml").is_file()


def test_every_public_name_resolves():
    """Each lazily loaded name is importable and is what its module defines."""
    for name in agent.__all__:
        assert getattr(agent, name) is not None
    assert callable(agent.deploy) and agent.deploy.__call__ is not None


def test_cli_summaries_match_the_command_modules():
    """cdsim --help lists every command from static summaries; each equals its module's SUMMARY."""
    import importlib

    from agent.cli import COMMANDS, SUMMARIES
    assert set(SUMMARIES) == set(COMMANDS)
    for name, module in COMMANDS.items():
        assert importlib.import_module(f"agent.commands.{module}").SUMMARY == SUMMARIES[name], name


def test_deploy_stays_the_function_after_any_import():
    """Importing the engine's module or the deploy command (as the CLI does) never rebinds agent.deploy:
    no submodule is called deploy."""
    import subprocess
    import sys
    code = ("import agent.sequencer, agent.commands.deploy, agent, inspect; "
            "print(inspect.isfunction(agent.deploy), agent.deploy is agent.sequencer.deploy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
