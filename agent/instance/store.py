"""What is in an instance's folder (agent.state says where that folder is) and its metadata.

An instance folder holds ``meta.json`` (what the instance is: name, network, id maps, the image it is
made from if any (agent.instance.image: its reference, cache id and lower folder); written once),
``keeper.json`` (the running keeper, if any), ``synthesized.json`` (files cdsim itself put in the upper
layer, with their sha256: no change of the instance's), ``upper/`` and ``work/`` (the overlay layers),
``root/`` (the mount point of the merged tree, used only inside the keeper's mount namespace) and ``keeper.log``.
The folder is 0700 and the three state files are written private (0600 & ~umask), whatever the umask.
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import NotRequired, TypedDict, cast

from agent.errors import UsageError
from agent.fsutil import atomic_write
from agent.instance import idmap
from agent.instance.idmap import IdMaps
from agent.instance.image import InstanceImage
from agent.state import instance_dir, instances_dir

NETWORKS = ("private", "host")
# a hostname label: the instance name becomes the hostname inside
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class InstanceMeta(IdMaps):
    """``meta.json``: what the instance is, with the id maps it was made with (:class:`IdMaps`)."""

    schema: int
    name: str
    network: str
    created: float
    owner_uid: int
    image: NotRequired[InstanceImage]   # absent: the host's / is the lower layer


class KeeperRecord(TypedDict):
    """``keeper.json``: the running keeper and the instance's init (host pids), to tell it is still them."""

    keeper_pid: int | None
    init_pid: int
    init_started: int
    pid_namespace: str | None
    started: float


@dataclass(frozen=True)
class Instance:
    """A sandboxed instance: its name, its folder and its network mode ('private' or 'host')."""

    name: str
    path: str
    network: str

    @property
    def upper(self) -> str:
        return os.path.join(self.path, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.path, "work")

    @property
    def root(self) -> str:
        return os.path.join(self.path, "root")

    @property
    def meta_file(self) -> str:
        return os.path.join(self.path, "meta.json")

    @property
    def keeper_file(self) -> str:
        return os.path.join(self.path, "keeper.json")

    @property
    def log_file(self) -> str:
        return os.path.join(self.path, "keeper.log")

    @property
    def synthesized_file(self) -> str:
        return os.path.join(self.path, "synthesized.json")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.path, "lock")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(
            f"invalid instance name {name!r}: use 1 to 63 letters, digits and dashes "
            "(not starting or ending with a dash); it becomes the hostname inside",
            reference="instance-name-invalid")
    return name


def id_maps() -> IdMaps:
    """How ids inside the instance map to ids on disk (see agent.instance.idmap): identity for root;
    else the caller as root, plus the caller's subordinate ranges when the system provides them."""
    return idmap.current()


def write_meta(inst: Instance, image: InstanceImage | None = None) -> None:
    # cast: mypy can't tell a ** item leaves the NotRequired "image" out on purpose
    meta = cast(InstanceMeta, {"schema": 1, "name": inst.name, "network": inst.network, "created": time.time(),
                               "owner_uid": os.geteuid(), **id_maps()})
    if image is not None:
        meta["image"] = image
    atomic_write(inst.meta_file, json.dumps(meta, indent=2, sort_keys=True) + "\n", private=True)


def refresh_id_maps(inst: Instance) -> bool:
    """Give a stopped instance made when only its creator could be mapped the subordinate ranges this
    machine has now (newuidmap installed, ranges added since). Safe: every file in it belongs to the
    creator, root inside, whom the old and the new maps map alike. True when the maps changed."""
    meta = read_meta(inst.path)
    if not meta.get("id_map_problem"):
        return False
    now = id_maps()
    if now.get("id_map_problem") or now["uid_map"][0] != meta["uid_map"][0] or now["gid_map"][0] != meta["gid_map"][0]:
        return False
    del meta["id_map_problem"]
    meta = {**meta, **now}
    atomic_write(inst.meta_file, json.dumps(meta, indent=2, sort_keys=True) + "\n", private=True)
    return True


def read_meta(path: str) -> InstanceMeta:
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        return cast(InstanceMeta, json.load(f))   # written by write_meta only (0600, ours)


def load(name: str, state: str | None = None) -> Instance | None:
    path = instance_dir(check_name(name), state)
    try:
        meta = read_meta(path)
    except FileNotFoundError:
        return None
    return Instance(name=meta["name"], path=path, network=meta["network"])


def names(state: str | None = None) -> list[str]:
    try:
        entries = sorted(os.listdir(instances_dir(state)))
    except FileNotFoundError:
        return []
    return [e for e in entries if os.path.isfile(os.path.join(instances_dir(state), e, "meta.json"))]


def write_keeper(inst: Instance, record: KeeperRecord) -> None:
    atomic_write(inst.keeper_file, json.dumps(record, sort_keys=True) + "\n", private=True)


def read_keeper(inst: Instance) -> KeeperRecord | None:
    try:
        with open(inst.keeper_file, encoding="utf-8") as f:
            return cast(KeeperRecord, json.load(f))   # written by write_keeper only
    except (FileNotFoundError, ValueError):
        return None


def clear_keeper(inst: Instance) -> None:
    try:
        os.unlink(inst.keeper_file)
    except FileNotFoundError:
        pass


def read_synthesized(inst: Instance) -> dict[str, str]:
    """{path inside: sha256} of the files cdsim wrote into the upper layer itself."""
    try:
        with open(inst.synthesized_file, encoding="utf-8") as f:
            return cast(dict[str, str], json.load(f))   # written by add_synthesized only
    except (FileNotFoundError, ValueError):
        return {}


def add_synthesized(inst: Instance, written: dict[str, str]) -> None:
    if written:
        atomic_write(inst.synthesized_file, json.dumps({**read_synthesized(inst), **written}, sort_keys=True) + "\n",
                     private=True)
