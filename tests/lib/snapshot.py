"""A copy of this checkout as a user would get it from git: the files git lists (tracked and untracked,
without the ignored ones such as .venv and build/), so installing it never writes into the checkout and
edits not yet committed are in it (under CI, where nothing is uncommitted, it equals HEAD)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .env import REPO


def snapshot_checkout(dest: Path) -> Path:
    """Copy this checkout's files (as ``git ls-files --cached --others --exclude-standard`` lists them)
    into ``dest``; skip the test when the checkout is not a git work tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: {listed.stderr.strip()}")
    for rel in filter(None, listed.stdout.split("\0")):
        source = REPO / rel
        if not source.is_file() and not source.is_symlink():
            continue   # deleted in the work tree, not yet in the index
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest
