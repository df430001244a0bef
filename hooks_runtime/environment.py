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
import re
import shutil
import subprocess
from collections.abc import Mapping

__all__ = ["AGENT_REMOVED_VARIABLES", "SYSTEMD_PATH", "UNIT_COMMAND", "missing_command_hint", "missing_commands",
           "service_environment", "systemd_environment", "without_aws_variables"]

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


def without_aws_variables(env: Mapping[str, str], *, every: bool = False) -> dict[str, str]:
    """``env`` less the AWS key variables the agent removes at start (``AGENT_REMOVED_VARIABLES``, spec
    §7.3), or with ``every`` less every ``AWS_*`` variable: what cdsim's own agent keeps from the
    processes it starts (its signing credentials, endpoint and region are its own, not the hooks')."""
    if every:
        return {k: v for k, v in env.items() if not k.startswith("AWS_")}
    return {k: v for k, v in env.items() if k not in AGENT_REMOVED_VARIABLES}


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
    env = without_aws_variables(env)
    # what bash -a exports about itself, as it is when systemd (pid 1) starts the unit's line
    env["_"] = AGENT_PROGRAM
    if "BASH_EXECUTION_STRING" in env:
        env["BASH_EXECUTION_STRING"] = UNIT_COMMAND
    if "PPID" in env:
        env["PPID"] = "1"
    return env


_NOT_FOUND = (
    re.compile(r": line \d+: ([^\s:/][^\s:]*): command not found\s*$"),   # bash script
    re.compile(r"^\S*sh: ([^\s:/][^\s:]*): command not found\s*$"),       # bash -c
    re.compile(r": \d+: ([^\s:/][^\s:]*): not found\s*$"),                # dash
    re.compile(r"command not found: ([^\s:/]\S*)\s*$"),                   # zsh
    # #!/usr/bin/env NAME; in a UTF-8 locale env quotes the name with U+2018 and U+2019
    re.compile(r"env: ['\u2018]([^'\u2019/]+)['\u2019]: No such file or directory\s*$"),
)


def missing_commands(output: str) -> list[str]:
    """Commands a shell said it could not find, in the order it said so, each once."""
    found: list[str] = []
    for line in output.splitlines():
        text = line[8:] if line.startswith(("[stdout]", "[stderr]")) else line
        for pattern in _NOT_FOUND:
            match = pattern.search(text)
            if match and match.group(1) not in found:
                found.append(match.group(1))
                break
    return found


def missing_command_hint(output: str, exit_code: int | None, hook_path: str, caller_path: str | None) -> str | None:
    """Why a hook that exited 127 or said "command not found" may pass in a terminal and fail as a
    hook: the commands it could not find that the caller's PATH has, where they are, and the hook's
    PATH. None when there is nothing to say."""
    names = missing_commands(output)
    if not names and exit_code != 127:
        return None
    located = [(name, shutil.which(name, path=caller_path)) for name in names] if caller_path else []
    located = [(name, where) for name, where in located
               if where and not shutil.which(name, path=hook_path)]
    if located:
        what = ", ".join(f"{name} is {where}" for name, where in located)
        return (f"not found on the hook's PATH, but on yours: {what}. Hooks get the agent service's "
                f"environment, as on an EC2 instance, with PATH={hook_path}; call the command by its full "
                "path or set PATH in the script (--inherit-env gives hooks your environment instead)")
    if names:
        return f"{', '.join(names)}: not found on the hook's PATH={hook_path}"
    return f"exit code 127 is the shell's 'command not found'; the hook's PATH was {hook_path}"
