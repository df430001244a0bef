"""The agent configuration file (``codedeployagent.yml``, behaviour doc §2).

Owns: reading the file with the agent's rules (``:key:`` and ``key:`` both work, shallow merge over
defaults), the keys and built-in defaults, ``max_revisions`` conversion. Does no other I/O.
"""
from __future__ import annotations

import os
import re

from agent.errors import DeploymentError, UsageError
from agent.records import field, replace
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up
from agent.state import AGENT_LOG_DIR as DEFAULT_LOG_DIR
from agent.state import AGENT_ROOT_DIR as DEFAULT_ROOT_DIR

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONFIG_PATH = "/etc/codedeploy-agent/conf/codedeployagent.yml"
DEFAULT_ON_PREMISES_CONFIG = "/etc/codedeploy-agent/conf/codedeploy.onpremises.yml"

# the built-in defaults of §2.2 (None = no built-in default)
BUILTIN: dict[str, object] = {
    "root_dir": None,
    "log_dir": None,
    "program_name": "codedeploy-agent",
    "verbose": False,
    "max_revisions": None,
    "enable_deployments_log": True,
    "on_premises_config_file": DEFAULT_ON_PREMISES_CONFIG,
    "proxy_uri": None,
}

# the keys of the shipped conf/codedeployagent.yml
SHIPPED = {
    "log_aws_wire": False,
    "log_dir": DEFAULT_LOG_DIR,
    "pid_dir": "/opt/codedeploy-agent/state/.pid/",
    "program_name": "codedeploy-agent",
    "root_dir": DEFAULT_ROOT_DIR,
    "verbose": False,
    "wait_between_runs": 1,
    "proxy_uri": None,
    "max_revisions": 5,
    "disable_imds_v1": False,
}


@dataclass(frozen=True)
class AgentConfig:
    """The settings a deployment uses. ``raw`` keeps every key of the file (symbols stripped)."""

    root_dir: str
    log_dir: str | None
    program_name: str = "codedeploy-agent"
    verbose: bool = False
    max_revisions_raw: object = None
    enable_deployments_log: bool = True
    on_premises_config_file: str | None = DEFAULT_ON_PREMISES_CONFIG
    path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def max_revisions(self) -> int:
        """§2.3: nil → 5; strict integer conversion ("5" and 5.7 → 5; "abc", "5.7" fail)."""
        v = self.max_revisions_raw
        if v is None:
            return 5
        if isinstance(v, bool):
            raise DeploymentError(f"Invalid configuration :max_revision={v}")
        if isinstance(v, (int, float)):
            return int(v)
        if isinstance(v, str) and re.fullmatch(r"\s*[+-]?\d+\s*", v):
            return int(v)
        raise DeploymentError(f"Invalid configuration :max_revision={v}",
                              hint="max_revisions must be a whole number >= 1")

    @property
    def deployments_log(self) -> str | None:
        if not self.enable_deployments_log:
            return None
        return os.path.join(self.root_dir, "deployment-logs", f"{self.program_name}-deployments.log")

    def with_root(self, root_dir: str) -> AgentConfig:
        return replace(self, root_dir=root_dir)


def parse_config_text(text: str, path: str) -> dict[str, Any]:
    """The file's mapping with leading colons stripped from keys (§2.1)."""
    from agent.yaml_import import load_yaml

    yaml = load_yaml()

    def broken(inner: str) -> DeploymentError:
        return DeploymentError(
            f"An error occurred loading the CodeDeploy agent config file at {path}. Error message: {inner}")

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise broken(str(e).replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise broken("the file is empty or not a mapping")
    return {str(k).lstrip(":"): v for k, v in data.items()}


def read_config_file(path: str) -> dict[str, Any]:
    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        raise UsageError(f"configuration file {path} does not exist or is not readable")
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_config_text(f.read(), path)


def load_local_config(path: str | None) -> AgentConfig:
    """Configuration as ``codedeploy-local`` builds it (§1.2, Q21).

    The default file's keys are loaded first and the ``-c`` file is merged over them. Where neither
    gives ``root_dir`` the agent uses the config file *path* as the root (Q21); we keep that quirk
    out: cdsim falls back to the shipped default root and says so in the differences list.
    """
    merged: dict[str, Any] = {}
    if os.path.isfile(DEFAULT_CONFIG_PATH) and os.access(DEFAULT_CONFIG_PATH, os.R_OK):
        try:
            merged.update(read_config_file(DEFAULT_CONFIG_PATH))
        except Exception:  # noqa: BLE001, S110 - step 1 of §1.2 ignores any failure of the default file
            pass
    chosen = path or DEFAULT_CONFIG_PATH
    merged.update(read_config_file(chosen))
    return config_from_mapping(merged, chosen)


def config_from_mapping(values: dict[str, Any], path: str | None = None) -> AgentConfig:
    v: dict[str, Any] = dict(BUILTIN)  # the file's YAML values over the defaults
    v.update(values)
    return AgentConfig(
        root_dir=str(v.get("root_dir") or DEFAULT_ROOT_DIR),
        log_dir=str(v["log_dir"]) if v.get("log_dir") else None,
        program_name=str(v.get("program_name") or "codedeploy-agent"),
        verbose=bool(v.get("verbose")),
        max_revisions_raw=v.get("max_revisions"),
        enable_deployments_log=v.get("enable_deployments_log") is not False,
        on_premises_config_file=v.get("on_premises_config_file"),
        path=path,
        raw=dict(values),
    )
