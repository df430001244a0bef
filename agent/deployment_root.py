"""The deployment root, laid out exactly as the agent lays it out (behaviour doc §3).

    <root>/<dg>/<did>/{bundle.tar, deployment-archive/, logs/scripts.log}
    <root>/deployment-instructions/{<dg>-cleanup, <dg>-install.json,
                                    <dg>_last_successful_install, <dg>_most_recent_install}
    <root>/deployment-logs/<program_name>-deployments.log

Owns: paths, deployment ids, the two marker files (written atomically), max_revisions retention.
Folders and files get the modes the process umask gives, as the agent's do (Q40): folders
``0777 & ~umask``, files ``0666 & ~umask`` (agent.fsutil.atomic_write); nothing is chmod'ed.
"""
from __future__ import annotations

import os
import re

from agent.fsutil import atomic_write
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def new_deployment_id() -> str:
    """``d-`` + 9 characters of A-Z0-9 + ``-local`` (§1.6), each uniform from the OS's random source (as
    ``secrets.choice`` would pick them, without importing secrets and hashlib at start-up)."""
    chars: list[str] = []
    while len(chars) < 9:
        # bytes below 252 (7 x 36) map evenly onto the 36 characters; the rest are drawn again
        chars.extend(_ID_ALPHABET[b % 36] for b in os.urandom(16) if b < 252)
    return "d-" + "".join(chars[:9]) + "-local"


def join(*parts: str) -> str:
    """Ruby ``File.join``: join with '/' and collapse repeated slashes, nothing else normalised."""
    return re.sub(r"/{2,}", "/", "/".join(parts))


@dataclass(frozen=True)
class DeploymentRoot:
    root_dir: str
    group: str

    # -- paths -------------------------------------------------------------------------------------
    @property
    def group_dir(self) -> str:
        return join(self.root_dir, self.group)

    def deployment_dir(self, deployment_id: str) -> str:
        return join(self.root_dir, self.group, deployment_id)

    def archive_dir(self, deployment_id: str) -> str:
        return join(self.deployment_dir(deployment_id), "deployment-archive")

    def scripts_log(self, deployment_id: str) -> str:
        return join(self.deployment_dir(deployment_id), "logs", "scripts.log")

    @property
    def instructions_dir(self) -> str:
        return join(self.root_dir, "deployment-instructions")

    @property
    def cleanup_file(self) -> str:
        return join(self.instructions_dir, f"{self.group}-cleanup")

    @property
    def install_json(self) -> str:
        return join(self.instructions_dir, f"{self.group}-install.json")

    @property
    def last_successful_marker(self) -> str:
        return join(self.instructions_dir, f"{self.group}_last_successful_install")

    @property
    def most_recent_marker(self) -> str:
        return join(self.instructions_dir, f"{self.group}_most_recent_install")

    # -- markers -----------------------------------------------------------------------------------
    def _read_marker(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return text[:-1] if text.endswith("\n") else text

    def last_successful(self) -> str | None:
        return self._read_marker(self.last_successful_marker)

    def most_recent(self) -> str | None:
        return self._read_marker(self.most_recent_marker)

    def ensure_instructions_dir(self) -> None:
        os.makedirs(self.instructions_dir, exist_ok=True)

    def mark_most_recent(self, deployment_id: str) -> None:
        self.ensure_instructions_dir()
        atomic_write(self.most_recent_marker, self.deployment_dir(deployment_id))

    def mark_last_successful(self, deployment_id: str) -> None:
        self.ensure_instructions_dir()
        atomic_write(self.last_successful_marker, self.deployment_dir(deployment_id))

    def ensure_deployment_dir(self, deployment_id: str) -> str:
        d = self.deployment_dir(deployment_id)
        os.makedirs(d, exist_ok=True)
        return d

    # -- retention ---------------------------------------------------------------------------------
    def retention_victims(self, deployment_id: str, max_revisions: int) -> list[str]:
        """§3.5: the entries of ``<root>/<dg>`` the agent deletes before DownloadBundle."""
        current = self.deployment_dir(deployment_id)
        try:
            names = os.listdir(self.group_dir)
        except FileNotFoundError:
            return []
        entries = [join(self.group_dir, n) for n in names]
        entries = [e for e in entries if e != current]
        extra = len(entries) - max_revisions + 1
        if extra <= 0:
            return []
        keep = self.last_successful()
        entries = [e for e in entries if e != keep]
        entries.sort(key=lambda p: os.lstat(p).st_mtime)
        return entries[:extra]

    def apply_retention(self, deployment_id: str, max_revisions: int) -> list[str]:
        victims = self.retention_victims(deployment_id, max_revisions)
        for path in victims:
            if path == "/":
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil

                shutil.rmtree(path)
            else:
                os.unlink(path)
        return victims
