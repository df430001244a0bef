"""`cdsim history`: the deployments made in an instance or on this machine. Lives in agent.commands.logs
(same finder); this module only lets the CLI register it under its own name."""
from __future__ import annotations

from agent.commands.logs import HISTORY_SUMMARY as SUMMARY
from agent.commands.logs import register_history as register

__all__ = ["SUMMARY", "register"]
