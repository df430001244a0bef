"""The agent's own log (``{log_dir}/codedeploy-local.log``, behaviour doc §3.6), line for line.

Format: ``{YYYY-MM-DDTHH:MM:SS} {LEVEL:<5} [{program_name}({pid})]: {Class}: {message}``.
The file is opened for appending per line; created by the first line with mode ``0666 & ~umask`` and
its folder ``0777 & ~umask``, as the agent's (Q40); an existing file keeps its mode.
"""
from __future__ import annotations

import os
import time
from _thread import allocate_lock  # threading.Lock, without importing threading (start-up)

PLUGIN = "InstanceAgent::Plugins::CodeDeployPlugin::"
_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARN", "WARNING": "WARN", "ERROR": "ERROR"}


class AgentLog:
    def __init__(self, log_dir: str | None, program_name: str = "codedeploy-agent",
                 file_name: str = "codedeploy-local.log", verbose: bool = False):
        self.path = os.path.join(log_dir, file_name) if log_dir else None
        self.program_name = program_name
        self.verbose = verbose
        self._lock = allocate_lock()
        if log_dir:  # there is a path
            os.makedirs(log_dir, exist_ok=True)

    def log(self, level: str, cls: str, message: str) -> None:
        level = _LEVELS.get(level.upper(), level.upper())
        if level == "DEBUG" and not self.verbose:
            return
        if not self.path:
            return
        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {level:<5} "
                f"[{self.program_name}({os.getpid()})]: {PLUGIN}{cls}: {message}\n")
        with self._lock, open(self.path, "a", encoding="utf-8", errors="surrogateescape") as f:
            f.write(line)

    def info(self, cls: str, message: str) -> None:
        self.log("INFO", cls, message)
