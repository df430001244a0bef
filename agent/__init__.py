"""cdsim: a local AWS CodeDeploy agent.

The public API; every CLI command is a thin layer over these. Names are loaded lazily so that
``import agent`` (and the CLI's start-up) stays cheap.

    validate_bundle(path, appspec_filename=None) -> list[Finding]     cdsim validate
    make_plan(bundle, ...) -> Plan                                    cdsim plan
    deploy(DeploymentRequest(...)) -> DeploymentResult                cdsim deploy / cdsim local
    parse_appspec(text, filename) -> AppSpec
"""
__version__ = "0.1.0"

_LAZY = {
    "AppSpec": "agent.appspec",
    "parse_appspec": "agent.appspec",
    "AgentConfig": "agent.config",
    "DeploymentRequest": "agent.sequencer",
    "DeploymentResult": "agent.sequencer",
    "deploy": "agent.sequencer",
    "CdsimError": "agent.errors",
    "ExitStatus": "agent.errors",
    "Finding": "agent.lint",
    "validate_bundle": "agent.lint",
    "Plan": "agent.plan",
    "make_plan": "agent.plan",
    "LocalRevision": "agent.revision",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
