"""Where cdsim keeps things: every folder of the state folder, and the agent's folders on a machine.

Pure path arithmetic: reads the environment (``CDSIM_STATE_DIR``, ``XDG_STATE_HOME``, ``HOME``) and does
no other I/O; creating, locking and reading these folders is the business of the modules that use them.
Imports nothing of cdsim (every layer may import it).

The state folder (``state_dir()``) holds::

    host/deployment-root/                     `cdsim deploy --host`'s deployment root  (host_root_dir)
    host/log/                                 its log folder: codedeploy-local.log, cdsim-events/  (host_log_dir)
    instances/<name>/                         one sandboxed instance; agent.instance.store names its files
    service/                                  `cdsim server`'s folder: credentials, server.json, S3 data
    service/agent-work/<instance>/            a `cdsim agent`'s downloads  (agent_work_dir)
    service/hosts/<instance>/                 a `cdsim agent --host`'s machine: deployment-root/, log/
    aws/                                      the local AWS of instances: moto.sock, the CA, certs/  (aws_dir)
    images/<id>/                              an image unpacked for instances: rootfs/, image.json  (images_dir)

A log folder holds the event streams, the one source of every report:
``<log dir>/cdsim-events/<deployment group id>/<deployment id>.jsonl`` (``events_dir``, ``events_file``).
On a machine (inside an instance, or a real host) the agent's folders are ``AGENT_ROOT_DIR`` and
``AGENT_LOG_DIR``, as the agent's shipped configuration names them; ``in_upper`` gives such a path as
seen from the host through an instance's upper layer.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AGENT_LOG_DIR", "AGENT_ROOT_DIR", "EVENTS_FOLDER", "STATE_DIR_VARIABLE", "agent_work_dir", "aws_dir",
           "events_dir", "events_file", "host_dir", "host_log_dir", "host_root_dir", "images_dir", "in_upper",
           "instance_dir", "instances_dir", "machine_log_dir", "machine_root_dir", "resolve", "service_dir",
           "service_host_dir", "state_dir"]

STATE_DIR_VARIABLE = "CDSIM_STATE_DIR"
# the shipped codedeployagent.yml's :root_dir: and :log_dir: (behaviour doc §2), kept as written there
AGENT_ROOT_DIR = "/opt/codedeploy-agent/deployment-root"
AGENT_LOG_DIR = "/var/log/aws/codedeploy-agent/"
# beside the agent's log, never inside the deployment root (whose layout must stay the agent's)
EVENTS_FOLDER = "cdsim-events"


def state_dir(environ: Mapping[str, str] | None = None) -> str:
    """cdsim's state folder: $CDSIM_STATE_DIR, else $XDG_STATE_HOME/cdsim (when absolute), else
    ~/.local/state/cdsim. ``environ`` defaults to the process environment."""
    env = os.environ if environ is None else environ
    explicit = env.get(STATE_DIR_VARIABLE)
    if explicit:
        return os.path.abspath(explicit)
    xdg = env.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        base = xdg
    else:
        home = env.get("HOME") if environ is not None else None
        base = os.path.join(home or os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "cdsim")


def resolve(state: str | None = None) -> str:
    """The state folder a caller named (made absolute), or the default one."""
    return os.path.abspath(state) if state else state_dir()


def host_dir(state: str | None = None) -> str:
    """What `cdsim deploy --host` (and plan, logs, watch with --host) use on this machine."""
    return os.path.join(resolve(state), "host")


def host_root_dir(state: str | None = None) -> str:
    return machine_root_dir(host_dir(state))


def host_log_dir(state: str | None = None) -> str:
    return machine_log_dir(host_dir(state))


def instances_dir(state: str | None = None) -> str:
    return os.path.join(resolve(state), "instances")


def instance_dir(name: str, state: str | None = None) -> str:
    """An instance's folder (``name`` must already be checked: agent.instance.store.check_name)."""
    return os.path.join(instances_dir(state), name)


def service_dir(state: str | None = None) -> str:
    return os.path.join(resolve(state), "service")


def aws_dir(state: str | None = None) -> str:
    return os.path.join(resolve(state), "aws")


def images_dir(state: str | None = None) -> str:
    """The image cache: one folder per unpacked image (agent.instance.image), shared read-only as the
    lower layer of every instance made from it."""
    return os.path.join(resolve(state), "images")


def agent_work_dir(instance: str, state: str | None = None) -> str:
    """Where a `cdsim agent` for ``instance`` downloads and unpacks revisions."""
    return os.path.join(service_dir(state), "agent-work", instance)


def service_host_dir(instance: str, state: str | None = None) -> str:
    """The machine of a `cdsim agent --host` for ``instance``: its deployment-root/ and log/."""
    return os.path.join(service_dir(state), "hosts", instance)


def machine_root_dir(machine: str) -> str:
    """The deployment root of a machine folder (``host_dir()`` or ``service_host_dir()``)."""
    return os.path.join(machine, "deployment-root")


def machine_log_dir(machine: str) -> str:
    """The log folder of a machine folder (``host_dir()`` or ``service_host_dir()``)."""
    return os.path.join(machine, "log")


def events_dir(log_dir: str, group: str | None = None) -> str:
    """The event streams of a log folder, or of one deployment group in it."""
    folder = os.path.join(log_dir, EVENTS_FOLDER)
    return os.path.join(folder, group) if group is not None else folder


def events_file(log_dir: str, group: str, deployment_id: str) -> str:
    """One deployment's event stream."""
    return os.path.join(events_dir(log_dir, group), f"{deployment_id}.jsonl")


def in_upper(upper: str, path: str) -> str:
    """An absolute path of a machine (``AGENT_LOG_DIR``, ...) as seen from the host through an instance's
    upper layer (no trailing slash)."""
    return upper + path.rstrip("/")
