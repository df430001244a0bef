"""What an instance changed, read from its upper layer and compared with the host.

An entry of ``upper/`` that the host lacks is added; one the host has is changed when its type, mode,
owner, symlink target or content differ (a folder that is only there because something below it changed
is not reported); a whiteout (a 0/0 character device, or a file carrying an ``overlay.whiteout`` xattr)
is a deletion, and so is every host entry missing from an opaque folder. Owners on disk are translated
through the instance's id map first (in a user namespace, files root writes are owned by the caller
on disk); files cdsim itself wrote into the upper layer (stand-ins for /etc/shadow) are no change
while they keep the content it wrote. Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from agent.instance.idmap import IdMaps

KINDS = ("added", "changed", "deleted")
_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


@dataclass(frozen=True, order=True)
class Change:
    """One path the instance added, changed or deleted (``kind`` is one of KINDS)."""

    path: str
    kind: str

    @property
    def letter(self) -> str:
        return {"added": "A", "changed": "M", "deleted": "D"}[self.kind]


def _xattr(path: str, name: str) -> bytes | None:
    for prefix in _XATTR_PREFIXES:
        try:
            return os.getxattr(path, prefix + name, follow_symlinks=False)
        except OSError:
            continue
    return None


def is_whiteout(path: str, st: os.stat_result) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and _xattr(path, "whiteout") is not None


def is_opaque(path: str) -> bool:
    return _xattr(path, "opaque") == b"y"


def _inside_id(on_disk: int, mapping: list[list[int]]) -> int:
    for inside, outside, count in mapping:
        if outside <= on_disk < outside + count:
            return inside + (on_disk - outside)
    return 65534   # the overflow id: what the kernel shows for an unmapped id


def _same_content(a: str, b: str) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 16), fb.read(1 << 16)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _differs(upper_path: str, ust: os.stat_result, host_path: str, hst: os.stat_result, maps: IdMaps) -> bool:
    if stat.S_IFMT(ust.st_mode) != stat.S_IFMT(hst.st_mode):
        return True
    if stat.S_IMODE(ust.st_mode) != stat.S_IMODE(hst.st_mode) and not stat.S_ISLNK(ust.st_mode):
        return True
    # in a user namespace the host's folders are mirrored into the upper layer with the caller as owner
    # (the host's owners can't be set there): a folder's owner then says nothing
    folder_owner_unknown = maps.get("user_namespace") and stat.S_ISDIR(ust.st_mode)
    if not folder_owner_unknown and (_inside_id(ust.st_uid, maps["uid_map"]),
                                     _inside_id(ust.st_gid, maps["gid_map"])) != (hst.st_uid, hst.st_gid):
        return True
    if stat.S_ISLNK(ust.st_mode):
        return os.readlink(upper_path) != os.readlink(host_path)
    if stat.S_ISREG(ust.st_mode):
        # two empty files are the same even when only root may open the host's (/etc/.pwd.lock)
        return ust.st_size != hst.st_size or (ust.st_size > 0 and not _same_content(upper_path, host_path))
    if stat.S_ISCHR(ust.st_mode) or stat.S_ISBLK(ust.st_mode):
        return ust.st_rdev != hst.st_rdev
    return False


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def changes(upper: str, maps: IdMaps, host_root: str = "/", synthesized: dict[str, str] | None = None) -> list[Change]:
    """Every change recorded in ``upper`` against the tree at ``host_root``, sorted by path.
    ``synthesized`` ({path: sha256}) names files cdsim wrote itself: unchanged, they are no change."""
    found: list[Change] = []
    synthesized = synthesized or {}

    def walk(rel: str) -> None:
        folder = os.path.join(upper, rel)
        host_folder = os.path.join(host_root, rel)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        names = {e.name for e in entries}
        if rel and is_opaque(folder):
            try:
                host_names = os.listdir(host_folder)
            except OSError:
                host_names = []
            found.extend(Change("/" + os.path.join(rel, n), "deleted") for n in host_names if n not in names)
        for entry in entries:
            child = os.path.join(rel, entry.name)
            upper_path = os.path.join(upper, child)
            host_path = os.path.join(host_root, child)
            ust = entry.stat(follow_symlinks=False)
            hst = _lstat(host_path)
            if is_whiteout(upper_path, ust):
                if hst is not None:
                    found.append(Change("/" + child, "deleted"))
                continue
            if "/" + child in synthesized and stat.S_ISREG(ust.st_mode) and \
                    _sha256(upper_path) == synthesized["/" + child]:
                continue
            if hst is None:
                found.append(Change("/" + child, "added"))
            elif _differs(upper_path, ust, host_path, hst, maps):
                found.append(Change("/" + child, "changed"))
            if stat.S_ISDIR(ust.st_mode):
                walk(child)

    walk("")
    return sorted(found)
