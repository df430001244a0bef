"""Thin wrappers over the Linux system calls an instance needs (unshare, setns, mount, the new mount API's
open_tree/mount_setattr/move_mount, pivot_root, loopback up), through ctypes because Python 3.11 has no
os.unshare/os.mount, and the reading of the pipe a starting process reports on. Linux only; imports nothing
of cdsim (agent.instance.enter runs it as a plain script).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_RELATIME = 1 << 21
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# the new mount API (the same numbers on every architecture)
_OPEN_TREE, _MOVE_MOUNT, _MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x1, 0x2, 0x4, 0x8
AT_FDCWD = -100

_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41}

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # the C library python itself is linked with: no find_library (it runs ldconfig, which inside
        # an instance would be the instance's)
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_lib().unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_lib().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def open_tree(path: str) -> int:
    """A detached copy of the mount tree at ``path`` (file or folder, recursive), as a file descriptor
    for :func:`move_mount`: a bind mount not yet attached anywhere."""
    fd: int = _lib().syscall(ctypes.c_long(_OPEN_TREE), ctypes.c_int(AT_FDCWD), _b(path),
                        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return fd


def set_tree_attributes(fd: int, attributes: int) -> None:
    """mount_setattr on every mount of the tree ``fd`` (from :func:`open_tree`): set ``attributes``."""
    attr = struct.pack("QQQQ", attributes, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    _check(_lib().syscall(ctypes.c_long(_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                          ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), buf, ctypes.c_size_t(len(attr))),
           "mount_setattr")


def move_mount(fd: int, target: str) -> None:
    """Attach the detached tree ``fd`` on ``target`` (resolved in this process's mount namespace)."""
    _check(_lib().syscall(ctypes.c_long(_MOVE_MOUNT), ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD),
                          _b(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount on {target}")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(_lib().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {fstype or 'bind'} {source or ''} on {target}" + (f" ({data})" if data else ""))


def umount(target: str, flags: int = 0) -> None:
    _check(_lib().umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown system call number on {os.uname().machine}")
    _check(_lib().syscall(ctypes.c_long(number), _b(new_root), _b(put_old)), "pivot_root")


def loopback_up() -> None:
    """Bring up 'lo' in a fresh network namespace (it starts down)."""
    import fcntl  # here: agent.instance.enter, which starts for every command run inside, needs neither
    import socket
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def pid_namespace(pid: int) -> str | None:
    """The pid namespace link of a process ('pid:[4026531836]'), or None if it can't be read."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every mount point of this mount namespace, in table order (octal escapes decoded)."""
    points = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4:
                points.append(_unescape(fields[4]))
    return points


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_report(fd: int, timeout: float, complete: Callable[[str], bool]) -> str:
    """What a starting process writes to the pipe ``fd`` about its start, read until ``complete``
    says the text so far is the whole report, the pipe closes or ``timeout`` seconds pass; closes ``fd``."""
    import select
    import time

    deadline = time.monotonic() + timeout
    data = b""
    try:
        while not complete(data.decode("utf-8", "replace")) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")
