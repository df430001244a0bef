"""The environment the agent's service gives hook scripts (spec §7.3, §9.1), built on this machine.

On an instance the agent runs under systemd with the unit ``codedeploy-agent.service``, whose
``ExecStart`` is ``/bin/bash -a -c '[ -f /etc/profile ] && source /etc/profile; /opt/codedeploy-agent/
bin/codedeploy-agent start'``. So a hook sees: what systemd gives every system service (a fixed
``PATH``, the locale of ``/etc/locale.conf``, no ``HOME``, no ``USER``, no terminal), then everything
``/etc/profile`` and ``/etc/profile.d/*.sh`` set (``bash -a`` exports every variable they assign: on
Amazon Linux ``PATH`` gains ``/usr/sbin``-style entries, ``USER``, ``LOGNAME``, ``MAIL``,
``HOSTNAME``, ``HISTSIZE``, ...), less the AWS key variables the agent removes at start, with cwd
``/``. ``service_environment`` reproduces that by running the same ``bash -a`` line on this machine,
or inside the instance, whose ``/etc/profile`` is the one that counts, with systemd's starting
environment, and printing the result instead of starting the agent.

Not reproduced: systemd's per-invocation variables (``INVOCATION_ID``, ``JOURNAL_STREAM``,
``SYSTEMD_EXEC_PID``), which name a journal and a unit that do not exist here.

Must not import ``agent``.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess

__all__ = ["AGENT_REMOVED_VARIABLES", "SYSTEMD_PATH", "UNIT_COMMAND", "service_environment", "systemd_environment"]

# systemd's default PATH for services (merged /usr, as on Amazon Linux 2023)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
# removed by the agent at start (InstanceAgent::Plugins::CodeDeployPlugin, spec §7.3)
AGENT_REMOVED_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CREDENTIAL_FILE")
AGENT_PROGRAM = "/opt/codedeploy-agent/bin/codedeploy-agent"
# the unit's ExecStart (init.d/codedeploy-agent.service of the agent's repository)
UNIT_COMMAND = f"[ -f /etc/profile ] && source /etc/profile; {AGENT_PROGRAM} start"
_LOCALE_VARIABLES = ("LANG", "LANGUAGE", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY",
                     "LC_MESSAGES", "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT",
                     "LC_IDENTIFICATION", "LC_ALL")
_PROBE_TIMEOUT = 15.0


def _read_locale(paths: tuple[str, ...]) -> dict[str, str]:
    """``KEY=value`` lines of the first locale file that exists (systemd reads /etc/locale.conf;
    Debian keeps the same lines in /etc/default/locale)."""
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        found = {}
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if sep and key in _LOCALE_VARIABLES:
                found[key] = value.strip().strip('"').strip("'")
        return found
    return {}


def systemd_environment(root: str = "/") -> dict[str, str]:
    """What systemd gives a system service before its ExecStart runs."""
    env = {"PATH": SYSTEMD_PATH}
    env.update(_read_locale((os.path.join(root, "etc/locale.conf"), os.path.join(root, "etc/default/locale"))))
    return env


@functools.lru_cache(maxsize=4)
def _probe(profile: str) -> tuple[tuple[str, str], ...]:
    shell = shutil.which("bash", path="/usr/bin:/bin") or "/bin/sh"
    # the unit's line, with the agent replaced by env (not exec'd: the agent is bash's child too)
    script = f"[ -f {profile} ] && source {profile}; /usr/bin/env -0"
    proc = subprocess.run([shell, "-a", "-c", script], env=systemd_environment(), cwd="/",
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          timeout=_PROBE_TIMEOUT, check=False)
    pairs = []
    for item in proc.stdout.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            pairs.append((os.fsdecode(key), os.fsdecode(value)))
    return tuple(pairs)


def service_environment(*, profile: str = "/etc/profile") -> dict[str, str]:
    """The agent service's environment on this machine: systemd's, then ``profile`` sourced by
    ``bash -a``, less the AWS key variables. ``bash -a`` also exports its own variables (``BASH``,
    ``BASH_VERSION``, ``EUID``, ``PPID``, ``SHLVL``, ``TERM=dumb``, ...): the agent inherits them, and
    so do hooks; ``_`` names the agent program, as bash sets it when it starts the agent. Computed once
    per process. If the shell cannot run, systemd's environment."""
    try:
        env = dict(_probe(profile))
    except (OSError, subprocess.SubprocessError):
        env = {}
    if not env.get("PATH"):
        env = systemd_environment()
    for name in AGENT_REMOVED_VARIABLES:
        env.pop(name, None)
    # what bash -a exports about itself, as it is when systemd (pid 1) starts the unit's line
    env["_"] = AGENT_PROGRAM
    if "BASH_EXECUTION_STRING" in env:
        env["BASH_EXECUTION_STRING"] = UNIT_COMMAND
    if "PPID" in env:
        env["PPID"] = "1"
    return env
