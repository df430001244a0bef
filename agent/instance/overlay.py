"""The instance's root file system: which host mounts get an overlay (a pure plan over the mount
table) and the mounting itself, done by the keeper inside its fresh mount namespace.

`/` is an overlay with the host's root file system as lower layer and the instance's ``upper/`` as
upper layer. Overlayfs sees one file system per layer, so every other host mount (a separate /home,
/boot, /var ...) gets its own overlay on top, with ``upper/<mount point>`` as its upper layer: the upper
folder then reads like one tree of everything the instance changed, whatever mount it belongs to.
/proc, /sys, /dev and /run are the instance's own (a fresh proc for its PID namespace, a read-only
sysfs, a /dev tmpfs with the usual device nodes bound read-only from the host, an empty /run so no
host daemon's socket is reachable). Nothing the instance
can write reaches the host.

The lower layer is a parameter: an instance made from an image (agent.instance.image) has that image's
unpacked tree as its one lower layer instead of the host's mounts, and a read-only /opt/cdsim holding
the host's Python and cdsim (:func:`mount_runtime`); nothing else of the host is visible.
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
from collections.abc import Callable

from agent.instance import namespaces as ns

# Host mounts that the instance replaces with its own instead of overlaying.
PRIVATE_MOUNTS = ("/proc", "/sys", "/dev", "/run")
DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_UNSAFE_IN_OPTIONS = set(",:\\\n\"'=")


def _under(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in tops)


def layered_mounts(points: list[str], private: tuple[str, ...] = PRIVATE_MOUNTS) -> list[str]:
    """The host mount points that get an overlay (or a read-only bind, for file mounts) on top of the
    root overlay: every mount but '/' and those the instance replaces, parents before children."""
    chosen = [p for p in dict.fromkeys(points) if p != "/" and not _under(p, private)]
    return sorted(chosen, key=lambda p: p.rstrip("/").count("/"))


def work_dir(inst_work: str, mount_point: str) -> str:
    """Each overlay needs its own work folder beside (not inside) its upper folder."""
    if mount_point == "/":
        return os.path.join(inst_work, "root")
    return os.path.join(inst_work, hashlib.sha1(os.fsencode(mount_point)).hexdigest()[:16])


def _mirror_dirs(upper: str, path: str) -> None:
    """Create upper/<path> with each level's mode and owner taken from the host, so the merged folder
    looks like the host's (an upper folder's attributes win in the merged view)."""
    current = upper
    host = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        host = os.path.join(host, part)
        if os.path.lexists(current):
            continue
        st = os.stat(host)
        os.mkdir(current)
        os.chmod(current, st.st_mode & 0o7777)
        try:
            os.chown(current, st.st_uid, st.st_gid)
        except OSError:
            pass   # in a user namespace the host's owners are not mapped (EINVAL): the caller's stays


def _overlay_options(lower: str, upper: str, work: str, userxattr: bool) -> str:
    # redirect_dir/metacopy off: renamed lower folders are copied, so the upper layer stays a plain
    # tree that `instance diff` can read without following redirects
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    return opts + (",userxattr" if userxattr else ",redirect_dir=off,metacopy=off")


def build_root(upper: str, work: str, root: str, *, user_namespace: bool, lower: str | None = None) -> None:
    """Mount the merged tree on ``root``: over the host's mounts, or over ``lower`` (an image's tree)."""
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)   # nothing we mount may propagate to the host
    try:
        if lower is not None:
            os.makedirs(work_dir(work, "/"), exist_ok=True)
            ns.mount("overlay", root, "overlay", 0, _overlay_options(lower, upper, work_dir(work, "/"), user_namespace))
        elif user_namespace:
            _build_root_in_user_namespace(upper, work, root)
        else:
            _build_root_as_root(upper, work, root)
    except OSError as e:
        if "overlay" not in str(e):
            raise
        raise OSError(e.errno, f"{e.strerror}; overlayfs refused the layers: the instance folder must be on "
                      "a local file system overlayfs accepts as upper layer (ext4, xfs, btrfs, tmpfs; not "
                      "overlayfs, NFS or FUSE); point CDSIM_STATE_DIR elsewhere if it is not "
                      f"(kernel log may say more) [{e}]") from e


def _build_root_as_root(upper: str, work: str, root: str) -> None:
    """The root overlay over the host's root file system, then one overlay per other host mount."""
    userxattr = False
    layered = [p for p in layered_mounts(ns.mount_points()) if not _under(p, (os.path.dirname(upper),))]
    overlays, binds = [], []
    for point in layered:
        if os.path.isdir(point) and not os.path.islink(point) and not (_UNSAFE_IN_OPTIONS & set(point)):
            overlays.append(point)
        elif os.path.exists(point):
            binds.append(point)
    # upper folders of the stacked overlays are made before the root overlay is mounted: changing an
    # upper layer under a mounted overlay is undefined
    for point in ["/", *overlays]:
        _mirror_dirs(upper, point)
        os.makedirs(work_dir(work, point), exist_ok=True)
    ns.mount("overlay", root, "overlay", 0, _overlay_options("/", upper, work_dir(work, "/"), userxattr))
    for point in overlays:
        target = root + point
        if not os.path.isdir(target):
            continue   # hidden under another mount
        ns.mount("overlay", target, "overlay", 0,
                 _overlay_options(point, upper + point, work_dir(work, point), userxattr))
    for point in binds:
        target = root + point
        if os.path.exists(target) and os.path.isdir(target) == os.path.isdir(point):
            ns.mount(point, target, None, ns.MS_BIND)
            ns.mount(None, target, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY)


def mount_runtime(root: str, binds: tuple[tuple[str, str], ...], top: str) -> None:
    """A tmpfs on ``root + top`` holding read-only, nosuid, nodev binds of host files and folders
    (``binds``: host path, path inside under ``top``); only its empty mount point lands in the upper layer."""
    target = root + top
    if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
        raise OSError(f"the image has {top} as a non-folder: cannot bring cdsim in there")
    os.makedirs(target, exist_ok=True)
    ns.mount("tmpfs", target, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=755")
    for host, inside in binds:
        dest = root + inside
        if os.path.isdir(host):
            os.makedirs(dest, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            open(dest, "w").close()
        ns.mount(host, dest, None, ns.MS_BIND | ns.MS_REC)
        have = os.statvfs(dest).f_flag
        flags = sum(flag for st, flag in _KEPT_FLAGS if have & st)
        ns.mount(None, dest, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | flags)
    ns.mount(None, target, None, ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV, "mode=755")


def mount_private(root: str, *, in_user_namespace: bool, host_network: bool) -> None:
    """The instance's own /proc, /sys, /dev and /run under ``root``; with the host's network, the
    host's resolver configuration when it lives under /run (systemd-resolved), read-only."""
    for sub in PRIVATE_MOUNTS:
        os.makedirs(root + sub, exist_ok=True)
    ns.mount("proc", root + "/proc", "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    for sub in ("/proc/sys", "/proc/sysrq-trigger"):   # kernel settings stay read-only
        target = root + sub
        if os.path.exists(target):
            ns.mount(target, target, None, ns.MS_BIND)
            ns.mount(None, target, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY)
    try:
        ns.mount("sysfs", root + "/sys", "sysfs", ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    except OSError:
        # a user namespace may mount sysfs only with its own network namespace
        ns.mount("/sys", root + "/sys", None, ns.MS_BIND | ns.MS_REC)
        ns.mount(None, root + "/sys", None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY)
    dev = root + "/dev"
    ns.mount("tmpfs", dev, "tmpfs", ns.MS_NOSUID | ns.MS_NOEXEC, "mode=755,size=65536k")
    for node in DEVICE_NODES:
        if os.path.exists("/dev/" + node):
            open(os.path.join(dev, node), "w").close()
            # read-only: a device still reads and writes, but its host inode (mode, owner, times)
            # can't be changed from inside
            _bind_read_only("/dev/" + node, os.path.join(dev, node))
    os.mkdir(dev + "/pts")
    ns.mount("devpts", dev + "/pts", "devpts", ns.MS_NOSUID | ns.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620" + ("" if in_user_namespace else ",gid=5"))
    os.symlink("pts/ptmx", dev + "/ptmx")
    os.mkdir(dev + "/shm")
    ns.mount("tmpfs", dev + "/shm", "tmpfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))
    ns.mount("tmpfs", root + "/run", "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=755")
    os.mkdir(root + "/run/lock")
    os.chmod(root + "/run/lock", 0o1777)
    resolver = os.path.realpath("/etc/resolv.conf")
    if host_network and resolver.startswith("/run/") and os.path.isfile(resolver):
        os.makedirs(os.path.dirname(root + resolver), exist_ok=True)
        open(root + resolver, "w").close()
        ns.mount(resolver, root + resolver, None, ns.MS_BIND)
        ns.mount(None, root + resolver, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY)


# statvfs flags that a remount must repeat (in a user namespace they are locked) -> their mount flags
_KEPT_FLAGS = ((os.ST_NOSUID, ns.MS_NOSUID), (os.ST_NODEV, ns.MS_NODEV), (os.ST_NOEXEC, ns.MS_NOEXEC),
               (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21))


def _bind_read_only(source: str, target: str) -> None:
    ns.mount(source, target, None, ns.MS_BIND)
    have = os.statvfs(target).f_flag
    flags = sum(flag for st, flag in _KEPT_FLAGS if have & st)
    ns.mount(None, target, None, ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | flags)


def enter(root: str, hostname: str, *, private_network: bool) -> None:
    """Make ``root`` the root of this mount namespace and drop every view of the host's tree."""
    socket.sethostname(hostname)
    if private_network:
        ns.loopback_up()
    os.chdir(root)
    ns.pivot_root(".", ".")
    ns.umount(".", ns.MNT_DETACH)
    os.chdir("/")


# ---- in a user namespace -------------------------------------------------------------------------
# Two kernel rules shape this. (1) An overlay's lower layer may not hide mounts the namespace can't
# unmount: '/' has /proc, /dev ... below it, so only folders with no mount below them can be lower
# layers; the levels above them (/, and any folder holding a mount) come from a skeleton on tmpfs
# that copies their entries. (2) The namespace's root may override permissions only on files whose
# owner is mapped into it, and the host's root is not: so every host folder is mirrored into the
# upper layer (owned by the caller = root inside), which makes creating, renaming and deleting
# entries anywhere work; a host folder the caller can't read becomes an empty opaque folder.
# Root-owned files of /etc are copied up front (config files get edited in place); elsewhere writing
# into an existing root-owned file in place stays impossible (replacing it works). Files only root
# may read (/etc/shadow, /etc/gshadow) get readable stand-ins with every password locked. Whether
# other users exist inside (useradd, su) depends on the id maps: see agent.instance.idmap.

def _contains_mounts(path: str, mounts: list[str]) -> bool:
    prefix = path.rstrip("/") + "/"
    return any(m.startswith(prefix) for m in mounts)


def subtrees(mounts: list[str], listdir: Callable[[str], list[str]], is_dir: Callable[[str], bool],
             private: tuple[str, ...] = PRIVATE_MOUNTS) -> tuple[list[str], list[str]]:
    """Split the host tree for a user namespace: (skeleton folders, whose entries are copied, and
    overlay roots, folders with no mount below them). ``listdir``/``is_dir`` read the host (pure over
    them)."""
    skeleton, lower_roots = [], []
    mounts = [m for m in mounts if m != "/"]

    def visit(folder: str) -> None:
        skeleton.append(folder)
        for name in sorted(listdir(folder)):
            path = os.path.join(folder, name)
            if _under(path, private) or not is_dir(path):
                continue
            if _contains_mounts(path, mounts):
                visit(path)
            else:
                lower_roots.append(path)

    visit("/")
    return skeleton, lower_roots


def _copy_entries(folder: str, skel: str) -> None:
    target = skel + folder if folder != "/" else skel
    os.makedirs(target, exist_ok=True)
    st = os.stat(folder)
    os.chmod(target, st.st_mode & 0o7777)
    for entry in os.scandir(folder):
        dest = os.path.join(target, entry.name)
        try:
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), dest)
            elif entry.is_dir(follow_symlinks=False):
                os.makedirs(dest, exist_ok=True)
                os.chmod(dest, entry.stat(follow_symlinks=False).st_mode & 0o7777)
            elif entry.is_file(follow_symlinks=False):
                with open(entry.path, "rb") as src, open(dest, "wb") as out:
                    out.write(src.read())
                os.chmod(dest, entry.stat(follow_symlinks=False).st_mode & 0o7777)
        except OSError:
            continue   # unreadable: absent inside, as it would be to the caller


def mirror_folders(lower: str, upper: str, skip: str) -> None:
    """Give every folder below ``lower`` a counterpart in ``upper`` (same mode), so the instance's root
    may change entries in it; folders the caller can't read become opaque (their host content stays
    unseen)."""
    try:
        entries = list(os.scandir(lower))
    except OSError:
        try:
            os.setxattr(upper, "user.overlay.opaque", b"y")
        except OSError:
            pass
        return
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or entry.path == skip:
            continue
        dest = os.path.join(upper, entry.name)
        try:
            if not os.path.lexists(dest):
                os.mkdir(dest)
                os.chmod(dest, entry.stat(follow_symlinks=False).st_mode & 0o7777)
            elif not os.path.isdir(dest) or os.path.islink(dest):
                continue   # replaced inside the instance: nothing of the host's shows there
        except OSError:
            continue
        if entry.stat(follow_symlinks=False).st_mode & 0o1002 != 0o1002:
            # below a sticky world-writable folder (/tmp) entries belong to their users: root inside
            # may add its own there already, and mirroring a busy /tmp would take long
            mirror_folders(entry.path, dest, skip)


def copy_up_config(etc: str, upper_etc: str) -> None:
    """Copy the host's readable (or empty) root-owned files of /etc into the upper layer (once, if
    missing), so tools that rewrite a config file in place (`echo >> /etc/hosts`, lckpwdf) work in the
    instance.
    Not a change: same content, mode and owner (the caller is root inside)."""
    for dirpath, dirs, files in os.walk(etc):
        rel = os.path.relpath(dirpath, etc)
        dest_dir = os.path.normpath(os.path.join(upper_etc, rel))
        if not os.path.isdir(dest_dir) or os.path.islink(dest_dir):
            dirs[:] = []
            continue
        for name in files:
            src, dest = os.path.join(dirpath, name), os.path.join(dest_dir, name)
            try:
                st = os.lstat(src)
                if not stat.S_ISREG(st.st_mode) or st.st_uid or st.st_gid or os.path.lexists(dest):
                    continue
                if st.st_size == 0:
                    data = b""   # known without reading: an empty file only root may open (/etc/.pwd.lock)
                else:
                    with open(src, "rb") as f:
                        data = f.read()
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.chmod(dest, st.st_mode & 0o7777)
            except OSError:
                continue


# (file only root may read, the readable file its stand-in is made from); the '-' files are the backups
# shadow's tools rewrite in place
ACCOUNT_FILES = (("shadow", "passwd"), ("shadow-", "passwd"), ("gshadow", "group"), ("gshadow-", "group"))


def shadow_lines(kind: str, source: str) -> str:
    """A stand-in for /etc/shadow ('shadow' or 'shadow-', from /etc/passwd's text) or /etc/gshadow
    ('gshadow' or 'gshadow-', from /etc/group's): every account with a locked password (pure)."""
    out = []
    for line in source.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[0] or line.startswith(("#", "+", "-")):
            continue
        out.append(f"{fields[0]}:*:::::::" if kind.startswith("shadow") else f"{fields[0]}:*::{fields[3]}")
    return "".join(line + "\n" for line in out)


def synthesize_accounts(etc: str, upper_etc: str) -> dict[str, str]:
    """Give the upper layer an /etc/shadow and /etc/gshadow (and their backups) that root inside can
    read and rewrite (the host's belong to the host's root, unmapped, and the caller can't read them):
    every account of the host's passwd/group, password locked (root inside needs none for su; nothing
    of the host's hashes leaks). Once, if missing. Returns {instance path: sha256} of what it wrote,
    so diff can tell them apart from changes."""
    written = {}
    for name, source in ACCOUNT_FILES:
        dest = os.path.join(upper_etc, name)
        try:
            if os.path.lexists(dest) or not os.path.isdir(upper_etc) or \
                    (name.endswith("-") and not os.path.lexists(os.path.join(etc, name))):
                continue
            with open(os.path.join(etc, source), encoding="utf-8", errors="surrogateescape") as f:
                data = shadow_lines(name, f.read()).encode("utf-8", "surrogateescape")
            try:
                mode = os.stat(os.path.join(etc, name)).st_mode & 0o7777
            except OSError:
                mode = 0o640
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(dest, mode)
            written["/etc/" + name] = hashlib.sha256(data).hexdigest()
        except OSError:
            continue
    return written


def _user_namespace_layout() -> tuple[list[str], list[str]]:
    skeleton, lower_roots = subtrees(ns.mount_points(), os.listdir,
                                     lambda p: os.path.isdir(p) and not os.path.islink(p))
    # a folder the caller can't enter (/root) can't be a lower layer: the skeleton's empty copy stands in
    return skeleton, [p for p in lower_roots if os.access(p, os.R_OK | os.X_OK)]


def prepare_upper(upper: str, work: str) -> dict[str, str]:
    """Before entering the user namespace (where the host's owners all read as 'nobody'): mirror the
    host's folders, copy /etc's root-owned files into the upper layer and give it account files root
    inside can use; returns what :func:`synthesize_accounts` wrote."""
    _, lower_roots = _user_namespace_layout()
    instance_folder = os.path.dirname(upper)
    for point in lower_roots:
        _mirror_dirs(upper, point)
        if os.stat(point).st_mode & 0o1002 != 0o1002:
            # as below (mirror_folders): /tmp's entries are its users', and it is often the busiest tree
            mirror_folders(point, upper + point, instance_folder)
        os.makedirs(work_dir(work, point), exist_ok=True)
    os.makedirs(work_dir(work, "/"), exist_ok=True)
    if "/etc" not in lower_roots:
        return {}
    copy_up_config("/etc", upper + "/etc")
    return synthesize_accounts("/etc", upper + "/etc")


def _build_root_in_user_namespace(upper: str, work: str, root: str) -> None:
    skeleton, lower_roots = _user_namespace_layout()
    skel = os.path.join(work, "skeleton")
    os.makedirs(skel, exist_ok=True)
    ns.mount("tmpfs", skel, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=755")
    for folder in skeleton:
        _copy_entries(folder, skel)
    ns.mount("overlay", root, "overlay", 0, _overlay_options(skel, upper, work_dir(work, "/"), True))
    for point in lower_roots:
        if _UNSAFE_IN_OPTIONS & set(point):
            continue
        ns.mount("overlay", root + point, "overlay", 0,
                 _overlay_options(point, upper + point, work_dir(work, point), True))
