"""Running cdsim as the tests do: ``python -m agent`` with this interpreter and this checkout, as this user
or, through su, as an ordinary one."""
from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping

import pytest

from .env import REPO

CLI = (sys.executable, "-m", "agent")
"""The argv that starts cdsim (for tests that need a Popen or a wrapper around it)."""

Arg = str | os.PathLike[str]


@functools.cache
def user_python(user: str) -> str | None:
    """An interpreter ``user`` can run that imports agent from this checkout (this one, else the
    system's), or None: a checkout under a folder other users can't enter can't be run by them."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(["su", user, "-c", f"PYTHONPATH={REPO} {candidate} -c 'import agent.cli'"],
                               capture_output=True, cwd="/", check=False)
        if probe.returncode == 0:
            return candidate
    return None


def cdsim(*args: Arg, cwd: Arg | None = None, env: Mapping[str, str] | None = None,
          environ: Mapping[str, str] | None = None, state: Arg | None = None,
          input: str | None = None,  # noqa: A002 -- subprocess.run's name for it, as the callers use
          timeout: float = 120, user: str | None = None,
          python: str | None = None) -> subprocess.CompletedProcess[str]:
    """``cdsim ARGS`` to completion; its exit status is the test's to check (never raises on one).

    Output is captured as text; stdin is ``input``, or empty. ``state`` sets ``CDSIM_STATE_DIR`` and ``env`` adds to
    the environment (over ``state``). Run as this user: the environment is ``environ`` (else this process's) plus
    those, the cwd ``cwd`` (else this one). With ``user``: run through ``su USER -c`` with only those variables (and
    PYTHONPATH naming this checkout), in ``cwd`` (else /), by ``python`` (else ``user_python(user)``;
    the test is skipped when there is none)."""
    extra = {} if state is None else {"CDSIM_STATE_DIR": os.fspath(state)}
    extra.update(env or {})
    stdin = None if input is not None else subprocess.DEVNULL
    if user is None:
        base = os.environ if environ is None else environ
        return subprocess.run([*CLI, *(os.fspath(a) for a in args)], env={**base, **extra}, cwd=cwd, input=input,
                              stdin=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if python is None:
        python = user_python(user)
        if python is None:
            pytest.skip(f"no interpreter both runnable by {user} and able to import agent from {REPO} "
                        f"({sys.executable} sits under a folder other users can't enter, /usr/bin/python3 "
                        "lacks PyYAML)")
    command = ["env", *(f"{k}={v}" for k, v in extra.items()), f"PYTHONPATH={REPO}", python, "-m", "agent",
               *(os.fspath(a) for a in args)]
    return subprocess.run(["su", user, "-c", shlex.join(command)], cwd=cwd or "/", input=input, stdin=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)
