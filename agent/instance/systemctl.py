"""The ``systemctl`` of an instance: a thin client of the instance's unit manager.

Inside an instance, /usr/bin/systemctl (and /bin/systemctl) is this file, and so is journalctl, bind-mounted over the
image's or host's own by the instance's init (agent.instance.keeper), behind a ``#!`` line naming
cdsim's interpreter (:func:`wrapper_text`). It sends its arguments to the unit manager
(agent.instance.systemctl_manager, a child of the instance's init) over the socket :data:`SOCKET`,
prints what the manager answers and exits with its status: the manager, not the hook, starts and owns
the services, so a service outlives the hook that started it, as under systemd.

In an instance of the host the file is this module behind ``#!PYTHON -EsS`` (:func:`wrapper_text`); in
an image instance, where cdsim's interpreter runs only through the host's loader brought in under
/opt/cdsim, a ``/bin/sh`` script that execs that command line (:func:`shell_wrapper_text`; the keeper
chooses). Either way it needs only the interpreter's standard library (os, sys, socket, json).
Imports nothing of cdsim.
"""
from __future__ import annotations

import json
import os
import socket
import sys

SOCKET = "/run/systemd/cdsim-systemctl.sock"
# where the stand-in is mounted inside an instance (each that exists as a file; /bin may be a link to usr/bin)
PATHS = ("/usr/bin/systemctl", "/bin/systemctl")
# the same file is the instance's journalctl: run under that name, it asks for the units' logs
JOURNALCTL_PATHS = ("/usr/bin/journalctl", "/bin/journalctl")
JOURNALCTL = "__journalctl"
NO_MANAGER = ("System has not been booted with systemd as init system (PID 1). Can't operate.\n"
              "Failed to connect to bus: Host is down\n")


def wrapper_text(python: str) -> bytes:
    """The executable file an instance gets as ``systemctl``: this module's source behind a ``#!`` line
    that runs it with ``python`` (a path inside the instance). ValueError if that path can't stand in a
    ``#!`` line (white space, or too long for the kernel)."""
    if not python.startswith("/") or any(c.isspace() for c in python) or len(python) > 200:
        raise ValueError(f"cannot name {python!r} in a #! line: give an absolute path without white space")
    source = os.path.abspath(__file__)
    if source.endswith((".pyc", ".pyo")):
        source = source[:-1]
    with open(source, "rb") as f:
        body = f.read()
    return b"#!" + os.fsencode(python) + b" -EsS\n" + body


def shell_wrapper_text(command: list[str]) -> bytes:
    """The ``systemctl`` file for an instance whose userland can't run cdsim's interpreter by a path in
    a ``#!`` line (an image instance: agent.instance.image brings the host's Python in, run through the
    host's loader): a ``/bin/sh`` script that execs ``command`` (this file run by that Python, as the
    instance sees them) with its arguments; called as ``journalctl``, it says so in the first one."""
    quoted = " ".join("'" + word.replace("'", "'\\''") + "'" for word in command)
    return ("#!/bin/sh\n# cdsim's systemctl and journalctl stand-in (agent/instance/systemctl.py)\n"
            f'case "${{0##*/}}" in journalctl) set -- {JOURNALCTL} "$@" ;; esac\n'
            f'exec {quoted} "$@"\n').encode()


def request(argv: list[str], path: str = SOCKET) -> tuple[int, str, str]:
    """Ask the manager to run one systemctl command line; (status, stdout, stderr). OSError if no
    manager answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(json.dumps({"argv": argv}).encode())
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    reply = json.loads(b"".join(chunks) or b"{}")
    return int(reply.get("status", 1)), str(reply.get("stdout", "")), str(reply.get("stderr", ""))


def main(argv: list[str]) -> int:
    if os.path.basename(sys.argv[0]) == "journalctl":
        argv = [JOURNALCTL, *argv]
    try:
        status, out, err = request(argv)
    except (OSError, ValueError):
        sys.stderr.write(NO_MANAGER)
        return 1
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
