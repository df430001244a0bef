"""cdsim: a local AWS CodeDeploy agent.

The public API; every CLI command is a thin layer over these. Names are loaded lazily so that
``import agent`` (and the CLI's start-up) stays cheap.

    validate_bundle(path, appspec_filename=None) -> list[Finding]     cdsim validate
    make_plan(bundle, ...) -> Plan                                    cdsim plan
    deploy(DeploymentRequest(...)) -> DeploymentResult                cdsim deploy / cdsim local
    parse_appspec(text, filename) -> AppSpec
"""
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:  # the lazily loaded names, for type checkers
    from agent.appspec import AppSpec as AppSpec
    from agent.appspec import parse_appspec as parse_appspec
    from agent.config import AgentConfig as AgentConfig
    from agent.errors import CdsimError as CdsimError
    from agent.errors import ExitStatus as ExitStatus
    from agent.lint import Finding as Finding
    from agent.lint import validate_bundle as validate_bundle
    from agent.plan import Plan as Plan
    from agent.plan import make_plan as make_plan
    from agent.revision import LocalRevision as LocalRevision
    from agent.sequencer import DeploymentRequest as DeploymentRequest
    from agent.sequencer import DeploymentResult as DeploymentResult
    from agent.sequencer import deploy as deploy

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
