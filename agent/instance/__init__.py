"""Sandboxed instances: a simulated EC2 instance made of Linux namespaces.

Inside an instance `/` is an overlay of the host (lower) and the instance's upper layer, so every write
lands in the instance's folder (an instance made with ``image_ref=REF`` has the image's unpacked tree as lower
layer instead, see ``image``); processes get a private PID, UTS (hostname = instance name), IPC and
mount namespace and, unless the instance was created with ``network="host"``, a private network
namespace (their own loopback). Root gets this directly; other users through a user namespace that
maps them as root and, where the system gives them subordinate ids, 1..N to those (``idmap``).
A keeper process per running instance holds the namespaces; :func:`exec_in` enters them.

Every process inside holds at most Docker's default capabilities less mknod, under a seccomp filter
(``confine``); :func:`exec_in` enters through cdsim's own launcher (``enter``), which confines the
command before anything of the instance's tree runs, and can bind host paths in afresh for one command
(:func:`bind_target`): through the overlay a host file may read as it was when the instance started.

Module map: ``store`` (an instance folder's files and metadata; ``agent.state`` names the folders),
``namespaces`` (system calls), ``overlay`` (the root file system), ``image`` (images: the cache of
unpacked layers, the lower folder, how cdsim's Python runs inside), ``keeper`` (start/stop), ``idmap``
(user namespace id maps), ``confine`` (capabilities, seccomp), ``enter`` (the launcher), ``diff`` (what
changed), ``services`` (the per-instance daemon serving its network: ``imds`` the instance metadata,
``awsnet`` its resolver, CA and the proxy to ``localaws``, the state's moto; ``netlink`` the links),
``loadbalancer`` (the state's load balancer daemon carrying ELBv2 traffic to instances; ``lbview`` what
it shows through the local AWS's answers).
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from agent.errors import EnvironmentProblem, UsageError
from agent.instance import confine, enter, idmap, image, keeper, store
from agent.instance.diff import Change
from agent.instance.diff import changes as _changes
from agent.instance.store import Instance
from agent.state import instance_dir, instances_dir, state_dir

# what subprocess accepts for a child's stdin, stdout or stderr
Stdio = int | IO[Any] | None

__all__ = [
    "Change",
    "Instance",
    "InstanceStatus",
    "agent_command",
    "bind_target",
    "command_in",
    "create",
    "destroy",
    "diff",
    "exec_in",
    "get",
    "get_or_create",
    "id_map_problem",
    "list_instances",
    "made_from_image",
    "processes",
    "running",
    "start",
    "state_dir",
    "stop",
    "unmapped_user_problem",
]

# What root inside an instance keeps (Docker's default set, less mknod): no module loading, raw I/O,
# reboot, clock, mounts, file handles, network configuration or device nodes, so even a real-root hook
# can't reach the host around the overlay. See agent.instance.confine (also the seccomp filter).
CAPABILITIES = confine.KEPT


@dataclass(frozen=True)
class InstanceStatus:
    """What `list_instances` tells about one instance."""

    name: str
    running: bool
    network: str
    processes: int
    path: str
    image: str | None = None   # the image reference it was made from; None: an overlay of this machine


def create(name: str, *, network: str = "private", state: str | None = None,
           exist_ok: bool = False, image_ref: str | None = None) -> Instance:
    """Make a new (stopped) instance folder; UsageError if it exists, unless ``exist_ok``. With
    ``image_ref`` its lower layer is that image (unpacked into the cache first unless it is there)."""
    store.check_name(name)
    if network not in store.NETWORKS:
        raise UsageError(f"unknown network {network!r}: use one of {', '.join(store.NETWORKS)}",
                         reference="instance-network-invalid")
    existing = store.load(name, state)
    if existing:
        if exist_ok:
            _check_same_image(existing, image_ref, state)
            return existing
        raise UsageError(f"instance {name!r} exists already ({existing.path})", reference="instance-exists",
                         hint=f"use it, or remove it first with `cdsim instance destroy {name}`")
    lower = image.ensure(image_ref, state) if image_ref is not None else None
    path = instance_dir(name, state)
    os.makedirs(instances_dir(state), exist_ok=True)
    os.mkdir(path, 0o700)
    for sub in ("upper", "work", "root"):
        os.mkdir(os.path.join(path, sub), 0o755)
    inst = Instance(name=name, path=path, network=network)
    store.write_meta(inst, lower)   # last: a folder without meta.json is not an instance
    return inst


def _check_same_image(inst: Instance, image_ref: str | None, state: str | None) -> None:
    if image_ref is None:
        return
    recorded = store.read_meta(inst.path).get("image")
    wanted = os.path.abspath(image_ref)
    if recorded is None or (recorded["ref"] != wanted and recorded["id"] != image.ensure(wanted, state)["id"]):
        what = f"image {recorded['ref']}" if recorded else "the host as lower layer"
        raise UsageError(f"instance {inst.name!r} exists already with {what}, not {wanted}",
                         reference="instance-image-mismatch",
                         hint=f"use another --instance, or `cdsim instance destroy {inst.name}` first")


def made_from_image(instance: Instance) -> bool:
    """Whether the instance's lower layer is an image (not this machine's tree)."""
    return store.read_meta(instance.path).get("image") is not None


def agent_command(instance: Instance, module: str = "agent") -> list[str]:
    """The command line that runs ``python -m MODULE`` (cdsim's) inside ``instance``: the host's
    interpreter for an instance of the host; for one made from an image, the host's interpreter brought
    in read-only under /opt/cdsim (see agent.instance.image). Append the module's arguments."""
    if store.read_meta(instance.path).get("image") is None:
        return [sys.executable, "-m", module]
    return image.module_command(image.runtime(), module)


def get(name: str, *, state: str | None = None) -> Instance:
    """The instance called ``name``; UsageError if there is none."""
    inst = store.load(name, state)
    if inst is None:
        raise UsageError(f"no instance named {name!r} (in {instances_dir(state)})",
                         reference="instance-unknown", hint=f"create it with `cdsim instance create {name}`")
    return inst


def get_or_create(name: str, *, network: str = "private", state: str | None = None,
                  image_ref: str | None = None) -> Instance:
    return create(name, network=network, state=state, exist_ok=True, image_ref=image_ref)


def list_instances(*, state: str | None = None) -> list[InstanceStatus]:
    out = []
    for name in store.names(state):
        inst = store.load(name, state)
        if inst is None:
            continue
        record = keeper.running(inst)
        made_from = store.read_meta(inst.path).get("image")
        out.append(InstanceStatus(name=name, running=record is not None, network=inst.network,
                                  processes=len(keeper.processes(inst, record)) if record else 0,
                                  path=inst.path, image=made_from["ref"] if made_from else None))
    return out


def start(instance: Instance) -> int:
    """Start the instance's keeper unless it runs; returns the host pid of the instance's init."""
    _check_owner(instance)
    return keeper.start(instance)["init_pid"]


def running(instance: Instance) -> bool:
    return keeper.running(instance) is not None


def processes(instance: Instance) -> list[int]:
    """Host pids of the processes running in the instance (its init included)."""
    return keeper.processes(instance)


def _check_owner(instance: Instance) -> None:
    meta = store.read_meta(instance.path)
    if meta.get("owner_uid") != os.geteuid():
        raise EnvironmentProblem(
            f"instance {instance.name!r} belongs to uid {meta.get('owner_uid')}, not to you "
            f"(uid {os.geteuid()}): its files and id map are that user's",
            reference="instance-owner", hint="use your own state folder (CDSIM_STATE_DIR)")


def _enter_command(instance: Instance, record: store.KeeperRecord, cwd: str | None,
                   binds: dict[str, str] | None) -> list[str]:
    meta = store.read_meta(instance.path)
    spec: enter.LaunchSpec = {"pid": record["init_pid"], "started": record["init_started"],
            "userns": bool(meta.get("user_namespace")), "private_net": instance.network == "private",
            "cwd": cwd, "binds": [[host, inside] for host, inside in (binds or {}).items()]}
    for host, inside in spec["binds"]:
        if not inside.startswith(enter.BIND_ROOT + "/") or not os.path.exists(host):
            raise UsageError(f"cannot bind {host!r} into the instance at {inside!r}: "
                             f"give a path from bind_target() for a host path that exists",
                             reference="instance-bind")
    # the launcher (host code, loaded before it joins the namespaces) confines the command itself:
    # nothing of the instance's tree runs before the capabilities are dropped and the filter is on
    return enter.launcher_argv(spec, [])


def bind_target(host_path: str) -> str:
    """A fresh path inside an instance where one :func:`exec_in` / :func:`command_in` call given
    ``binds={host_path: this}`` sees ``host_path`` (file or folder) read-only, as it is on disk at that
    moment: a bind mount made for that call and removed when it ends. The instance's / is an overlay
    of the host, which may keep showing a host file as it was when the instance started."""
    name = os.path.basename(os.path.normpath(host_path)) or "root"
    return f"{enter.BIND_ROOT}/{uuid.uuid4().hex}/{name}"


def command_in(instance: Instance, argv: list[str], *, cwd: str | None = None,
               binds: dict[str, str] | None = None) -> list[str]:
    """The host command line that runs ``argv`` inside the instance (starting it if needed), for a
    caller that spawns and supervises the process itself (timeouts, process groups, output pumps):
    the launcher stays the child's parent outside the instance and exits with its status. ``binds``
    maps host paths to paths from :func:`bind_target`."""
    if not argv:
        raise UsageError("nothing to run: give a command", reference="instance-exec-empty")
    _check_owner(instance)
    record = keeper.start(instance)
    return _enter_command(instance, record, cwd, binds) + list(argv)


def exec_in(instance: Instance, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
            stdin: Stdio = None, stdout: Stdio = None, stderr: Stdio = None,
            binds: dict[str, str] | None = None) -> int:
    """Run ``argv`` inside the instance (starting it if needed) as its root; return its exit status.

    Stdio is inherited unless given (anything subprocess accepts). Processes it leaves behind keep
    running in the instance until :func:`stop`. ``binds``: as :func:`command_in`.
    """
    cmd = command_in(instance, argv, cwd=cwd, binds=binds)
    completed = subprocess.run(cmd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, check=False)
    return completed.returncode


def unmapped_user_problem(uid: int, uid_map: str = "/proc/self/uid_map") -> str | None:
    """Why this process can't switch to ``uid`` (runas), or None if it can. Call it inside an instance:
    one started by a non-root user without subordinate ids maps only that user (as root), so no other
    user can be run as."""
    try:
        with open(uid_map, encoding="ascii") as f:
            ranges = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return None
    if any(inside <= uid < inside + count for inside, _outside, count in ranges):
        return None
    outside = next((o for i, o, _c in ranges if i == 0), None)
    try:
        user = pwd.getpwuid(outside).pw_name if outside is not None else "USER"
    except KeyError:
        user = str(outside)
    return (f"uid {uid} does not exist in this instance's user namespace: an instance started by a "
            "non-root user without subordinate ids maps only that user (as root), so hooks can't run as "
            f"another user (runas); start the instance as root (sudo), or {idmap.fix_hint(user)}")


def id_map_problem(instance: Instance) -> str | None:
    """Why only its creator is mapped into the instance (no useradd, su or runas inside) and how to fix
    it, or None when the instance maps other users too (root's, or one with subordinate ids)."""
    return store.read_meta(instance.path).get("id_map_problem")


def stop(instance: Instance) -> list[int]:
    """End every process in the instance; returns their host pids (empty if it was not running)."""
    return keeper.stop(instance)


def destroy(instance: Instance) -> None:
    """Stop the instance and remove its folder, and nothing else."""
    stop(instance)
    real = os.path.realpath(instance.path)
    if os.path.dirname(real) != os.path.realpath(os.path.dirname(instance.path)) or \
            not os.path.isfile(os.path.join(real, "meta.json")):
        raise EnvironmentProblem(f"refusing to remove {real}: not an instance folder", reference="instance-path")
    if store.read_meta(real).get("id_helpers") and os.geteuid() != 0:
        # files of users made inside belong to the caller's subordinate ids, which the caller can't
        # remove as itself: remove the folder as root of a user namespace with the instance's maps
        remover = ("import sys; from agent.instance import idmap, store; "
                   "sys.exit(idmap.remove_folder(sys.argv[1], store.read_meta(sys.argv[1])))")
        done = subprocess.run([sys.executable, "-c", remover, real],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/",
                              env=keeper.package_env(), check=False)
        if not os.path.lexists(real):
            return
        try:   # the maps may be gone (uidmap removed): without files of other users, we can still
            _remove_as_caller(real)
        except OSError as e:
            raise EnvironmentProblem(f"cannot remove instance {instance.name!r}: {done.stderr.strip()}; "
                                     f"as yourself: {e}", reference="instance-remove",
                                     hint=f"as root: rm -rf {shlex.quote(real)}") from e
        return
    _remove_as_caller(real)


def _remove_as_caller(real: str) -> None:
    # rmtree never follows symlinks; overlayfs leaves its work folders mode 000, so open them up first
    def allow(func: Callable[[str], object], path: str, _exc: object) -> None:
        parent = os.path.dirname(path)
        os.chmod(parent, 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, onerror=allow)
        else:
            func(path)

    shutil.rmtree(real, onerror=allow)


def diff(instance: Instance) -> list[Change]:
    """What the instance added, changed and deleted compared with the host (or its image), sorted by path."""
    meta = store.read_meta(instance.path)
    made_from = meta.get("image")
    return _changes(instance.upper, meta, host_root=made_from["lower"] if made_from else "/",
                    synthesized=store.read_synthesized(instance))
