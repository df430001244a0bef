"""Which ids an instance started by a non-root user maps, and writing those maps.

With the uidmap package's setuid helpers (newuidmap, newgidmap) and subordinate ranges for the caller
in /etc/subuid and /etc/subgid, an instance maps 0 to the caller and 1..N to the caller's range (as
rootless podman does), so useradd, chown to new users and su work inside. Without them only the
caller is mapped (as root) and no other user exists inside. The helpers must run outside the new
user namespace, against the pid of a process that has just unshared it: :func:`enter_user_namespace`
arranges that. :func:`remove_folder` removes an instance folder from inside a user namespace with the
instance's maps (its files may belong to subordinate ids the caller can't remove as itself).
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from typing import NotRequired, TypedDict

from agent.instance import namespaces as ns


class IdMaps(TypedDict):
    """An instance's id maps (kept in its meta.json): ``uid_map``/``gid_map`` rows are [inside, outside,
    count] as /proc/PID/uid_map has them; ``id_helpers`` when newuidmap/newgidmap write them;
    ``id_map_problem`` when only the caller is mapped, saying why and how to fix it."""

    user_namespace: bool
    uid_map: list[list[int]]
    gid_map: list[list[int]]
    id_helpers: NotRequired[bool]
    id_map_problem: NotRequired[str]


SUBUID_FILE, SUBGID_FILE = "/etc/subuid", "/etc/subgid"
# Where the setuid helpers live (Debian, Fedora, Arch): also searched when they are not on PATH.
HELPER_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")


def subordinate_range(text: str, name: str, uid: int) -> tuple[int, int] | None:
    """The first (start, count) range of /etc/subuid-style ``text`` for the user ``name``/``uid``."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        if parts[0] in (name, str(uid)) and int(parts[2]) > 0:
            return int(parts[1]), int(parts[2])
    return None


SUB_ID_MIN, SUB_ID_COUNT = 100000, 65536   # where useradd starts allocating, and how many it gives


def free_range(*texts: str, count: int = SUB_ID_COUNT) -> int:
    """The first start at or above SUB_ID_MIN, in steps of ``count`` as useradd allocates, whose range
    meets no range listed in the /etc/subuid-style ``texts`` (pure)."""
    taken = []
    for text in texts:
        for line in text.splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                taken.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    start = SUB_ID_MIN
    while any(lo < start + count and start < hi for lo, hi in taken):
        start += count
    return start


def advice(user: str, uid: int, gid: int, *, subuid: str, subgid: str, helpers: bool) -> str | None:
    """Exactly what an administrator runs so that ``user``'s instances map other users too (pure): only
    the steps still missing, with a subordinate range no other user has; None when nothing is."""
    steps = []
    if not helpers:
        steps.append("`apt-get install uidmap` (newuidmap, newgidmap; Fedora, Arch: shadow-utils, shadow)")
    need_uids = subordinate_range(subuid, user, uid) is None
    need_gids = subordinate_range(subgid, user, gid) is None
    if need_uids or need_gids:
        start = free_range(subuid, subgid)
        ranges = [f"--add-sub{kind}s {start}-{start + SUB_ID_COUNT - 1}"
                  for kind, needed in (("uid", need_uids), ("gid", need_gids)) if needed]
        steps.append(f"`usermod {' '.join(ranges)} {user}`")
    return "as root: " + " and ".join(steps) if steps else None


def fix_hint(user: str) -> str:
    """What the administrator runs so that ``user``'s instances map more than that user (read from this
    machine's /etc/subuid, /etc/subgid and helpers)."""
    try:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid = gid = -1
    return advice(user, uid, gid, subuid=_read(SUBUID_FILE), subgid=_read(SUBGID_FILE),
                  helpers=bool(_helper("newuidmap") and _helper("newgidmap"))) or \
        "nothing: this machine now maps other users; the instance is re-mapped when it next starts"


def plan(uid: int, gid: int, user: str, *, subuid: str, subgid: str, helpers: bool) -> IdMaps:
    """The id maps of an instance started by ``uid``/``gid`` (pure): identity for root; else 0 = the
    caller and, given the helpers and both subordinate ranges, 1..N = the ranges (``id_helpers``);
    else only the caller, with ``id_map_problem`` saying why and how to fix it."""
    if uid == 0:
        return {"user_namespace": False, "uid_map": [[0, 0, 4294967295]], "gid_map": [[0, 0, 4294967295]]}
    uids, gids = subordinate_range(subuid, user, uid), subordinate_range(subgid, user, gid)
    if helpers and uids and gids:
        return {"user_namespace": True, "id_helpers": True,
                "uid_map": [[0, uid, 1], [1, uids[0], uids[1]]], "gid_map": [[0, gid, 1], [1, gids[0], gids[1]]]}
    missing = [what for what, ok in (("newuidmap/newgidmap", helpers), (f"a range in {SUBUID_FILE}", uids),
                                     (f"a range in {SUBGID_FILE}", gids)) if not ok]
    fix = advice(user, uid, gid, subuid=subuid, subgid=subgid, helpers=helpers)
    assert fix is not None   # something is missing, so advice has a step for it
    problem = (f"only your uid is mapped into the instance (as root): {user} lacks "
               + ", ".join(missing) + "; so no useradd, chown to other users or su/runas inside; fix, "
               + fix + "; the instance is re-mapped when it next starts")
    return {"user_namespace": True, "uid_map": [[0, uid, 1]], "gid_map": [[0, gid, 1]], "id_map_problem": problem}


def _helper(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in HELPER_DIRS:
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def current() -> IdMaps:
    """The id maps an instance started now by this process would get (see :func:`plan`)."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return plan(uid, gid, user, subuid=_read(SUBUID_FILE), subgid=_read(SUBGID_FILE),
                helpers=bool(_helper("newuidmap") and _helper("newgidmap")))


def _write_own_maps(meta: IdMaps) -> None:
    # an unprivileged process may map only its own ids, and only after giving up setgroups
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    for kind, rows in (("uid", meta["uid_map"]), ("gid", meta["gid_map"])):
        with open(f"/proc/self/{kind}_map", "w") as f:
            f.write("".join(f"{a} {b} {c}\n" for a, b, c in rows))


def write_maps_with_helpers(pid: int, meta: IdMaps) -> None:
    """From outside: map process ``pid``'s fresh user namespace with newuidmap/newgidmap (which also
    leave setgroups allowed, so su and useradd can set supplementary groups inside)."""
    for tool, rows in (("newuidmap", meta["uid_map"]), ("newgidmap", meta["gid_map"])):
        path = _helper(tool)
        if path is None:
            raise OSError(2, f"{tool} not found (package uidmap)")
        argv = [path, str(pid)] + [str(n) for entry in rows for n in entry]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(1, f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")


def enter_user_namespace(flags: int, meta: IdMaps) -> None:
    """Unshare ``flags`` (CLONE_NEWUSER among them) and map ids as ``meta`` says; afterwards this
    process is root inside. With the helpers, a forked child outside the namespace runs them against
    our pid once we have unshared (it waits on a pipe), and reports any failure back."""
    if not meta.get("id_helpers"):
        ns.unshare(flags)
        _write_own_maps(meta)
        return
    me = os.getpid()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(go_w)
        os.close(done_r)
        status = 1
        try:
            if os.read(go_r, 1) == b"y":   # anything else (EOF): the unshare failed, map nothing
                write_maps_with_helpers(me, meta)
                status = 0
        except Exception as e:  # noqa: BLE001 - reported to the parent, which raises
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            os.write(done_w, why.encode("utf-8", "replace"))
        finally:
            os._exit(status)
    os.close(go_r)
    os.close(done_w)
    try:
        try:
            ns.unshare(flags)
        except OSError:
            os.close(go_w)
            go_w = -1
            raise
        os.write(go_w, b"y")
        os.close(go_w)
        go_w = -1
        message = b""
        while chunk := os.read(done_r, 4096):
            message += chunk
    finally:
        if go_w >= 0:
            os.close(go_w)
        os.close(done_r)
        _, status = os.waitpid(helper, 0)
    if status != 0:
        raise OSError(1, message.decode("utf-8", "replace") or "the id map helper failed")


def remove_folder(folder: str, meta: IdMaps) -> int:
    """Remove ``folder`` (an instance folder) as root of a user namespace with its maps ``meta``; the
    process stays in that namespace, so run it in a process of its own (see agent.instance.destroy).
    Returns an exit status, having said why on stderr."""
    try:
        enter_user_namespace(ns.CLONE_NEWUSER, meta)
    except OSError as e:
        print(f"cannot enter a user namespace to remove {folder}: {e.strerror or e}", file=sys.stderr)
        return 1
    try:
        shutil.rmtree(folder)
    except OSError as e:
        print(f"cannot remove {folder}: {e}", file=sys.stderr)
        return 1
    return 0

