"""DownloadBundle's bundle handling: fetch a local revision into the deployment folder and unpack it.

Owns steps 2-3 of DownloadBundle (behaviour doc §4.4): the ``bundle.tar`` link, the recursive copy of a
directory bundle, unpacking tar/tgz/zip the way GNU tar ``-xp`` and ``unzip -qo`` do as root (modes,
owners, mtimes per §6.8), and the single-top-level-folder stripping rule (§4.5). Also ``list_members``,
a pure-data listing of an archive for validate/plan.

Where cdsim deliberately differs from the agent (safe extraction): every member of an archive is checked
(zip: all before anything is written; tar/tgz: one by one as they are read, against those before, what
was written being removed on a refusal), and a bundle is refused (``UnsafeBundle``, naming the members) when a member
would leave the archive folder (``..``, absolute names, drive letters, backslash escapes), pass through a
symbolic link or a file of the same archive, hard-link to anything but an earlier regular member, is a
device, FIFO or socket, or (tar, directory) carries a setuid/setgid bit; and, after unpacking any bundle type, when a
symbolic link resolves to a directory outside the bundle or to a folder containing itself (the install step
would copy that folder's files). Symlinks themselves may point anywhere: they are recreated as symlinks and
never written through; every write is relative to an O_NOFOLLOW directory descriptor. Archives above the
size, member-count or compression-ratio ``Limits`` are refused (``bundle-too-large``). zip entries get the
modes unzip's own path gives them (the agent's Ruby fallback drops them, Q31), and the names and modes unzip
makes safe (a leading ``/``, ``..`` components, setuid/setgid/sticky bits) are made safe the same way, with a
warning. tar members are owned by name where the name exists here, as GNU tar does as root. The archive
folder itself never takes a member's owner, nor write for group and others (hooks run from it as root).

I/O module. Must not import install, deploy, hooks_runtime or the CLI.
"""
from __future__ import annotations

import errno
import functools
import io
import os
import re
import stat
import struct
import time
import types
import zlib
from collections.abc import Callable, Iterable, Iterator

from agent import workers
from agent.errors import BundleError, DeploymentError, EnvironmentProblem, UnsafeBundle, UsageError
from agent.fsutil import remove
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up
from agent.revision import LocalRevision, Revision

# tarfile, zipfile, gzip, queue, pwd and grp are imported where an archive is read, not here: a directory
# bundle (and `cdsim local` of one) does without them (start-up)
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import tarfile
    import zipfile
    from typing import IO, Protocol

    class _Stream(Protocol):
        """A forward-readable stream: tarfile's file object (a plain file, gzip, the prefetcher)."""

        def read(self, size: int, /) -> bytes: ...

        def seek(self, pos: int, /) -> object: ...

__all__ = ["ARCHIVE_DIR", "BUNDLE_LINK", "DEFAULT_LIMITS", "Limits", "Member", "check_archive_links",
           "check_members", "fetch_and_unpack", "list_members"]

ARCHIVE_DIR = "deployment-archive"
ARCHIVE_TEMP_DIR = "deployment-archive-temp"
BUNDLE_LINK = "bundle.tar"

_GIB = 1 << 30
_MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Bounds on what an archive may unpack to (a decompression bomb is refused before writing)."""

    max_total_bytes: int = 20 * _GIB      # sum of member sizes
    max_members: int = 1_000_000
    max_ratio: float = 200.0              # unpacked bytes per archive byte ...
    ratio_floor_bytes: int = 100 * _MIB   # ... checked only once the unpacked total exceeds this


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Member:
    """One entry of a bundle, as stored (nothing resolved, nothing extracted)."""

    name: str                 # as stored, minus a directory's trailing "/"
    type: str                 # file | dir | symlink | hardlink | char | block | fifo | socket
    mode: int | None          # permission bits incl. setuid/setgid/sticky; None: the archive has none
    size: int = 0
    link_target: str | None = None   # symlink text, or the member a hard link names
    mtime: float | None = None
    uid: int | None = None
    gid: int | None = None
    create_mode: int = 0o666  # without a stored mode: created with this, less the umask (unzip's MS-DOS rules)


_SPECIAL = {"char": "a character device", "block": "a block device", "fifo": "a FIFO",
            "socket": "a socket"}
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_SYMLINK_MAX = 4095


# --------------------------------------------------------------------------------------------------
# DownloadBundle

def fetch_and_unpack(revision: Revision, deployment_dir: str, *, limits: Limits = DEFAULT_LIMITS,
                     log: Callable[[str], None] | None = None,
                     warn: Callable[[str], None] | None = None, processes: int | None = None) -> str:
    """Put ``revision`` into ``{deployment_dir}/deployment-archive`` as DownloadBundle does; return that path.

    ``log`` receives the agent-log INFO texts (``Handle local file …``, ``Handle local directory …``,
    ``Stripping leading directory from archive bundle contents.``); ``warn`` receives what cdsim changed
    the way unzip does (a zip member's leading ``/`` or ``..`` stripped, a setuid bit dropped). Raises
    ``BundleError`` (corrupt or mistyped archive, ``bundle-too-large``), ``UnsafeBundle``,
    ``DeploymentError`` (``same file: …`` when the archive was already linked in this deployment, Q37)
    or ``EnvironmentProblem`` (``disk-full``).
    A refused or unreadable archive leaves ``deployment-archive`` empty, as the agent's failed
    extraction leaves it. ``processes``: how many processes share the copies of a directory bundle's
    files (default: ``workers.available()``).
    """
    if not isinstance(revision, LocalRevision):
        raise UsageError(f"{type(revision).__name__} bundles are not supported yet; "
                         "use a local directory or archive", reference="revision-unsupported")
    say = log or (lambda _msg: None)
    archive_dir = os.path.join(deployment_dir, ARCHIVE_DIR)
    if revision.bundle_type == "directory":
        say(f"Handle local directory {revision.location}")
        _copy_directory_bundle(revision.location, deployment_dir, processes)
        return archive_dir

    _require_regular_file(revision.location, revision.bundle_type)
    link = os.path.join(deployment_dir, BUNDLE_LINK)
    say(f"Handle local file {link}")
    _link_bundle(revision.location, link)
    remove(archive_dir)
    os.mkdir(archive_dir)
    try:
        # Read through the source path (the file bundle.tar names) so messages name the user's file.
        _unpack(revision.location, revision.bundle_type, archive_dir, limits, warn or (lambda _msg: None))
        if _strip_leading_directory(deployment_dir):
            say("Stripping leading directory from archive bundle contents.")
        check_archive_links(archive_dir)
    except BundleError:
        remove(archive_dir)
        os.mkdir(archive_dir)
        raise
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        remove(archive_dir)  # as the agent does on unzip's status 50
        raise EnvironmentProblem("The disk is (or was) full during extraction.", file=archive_dir,
                                 reference="disk-full") from e
    return archive_dir


def _link_bundle(source: str, link: str) -> None:
    try:
        os.symlink(source, link)
    except FileExistsError:
        if os.path.exists(link) and os.path.samefile(source, link):
            # The agent's fallback copy then refuses to copy a file onto itself (Q37).
            raise DeploymentError(f"same file: {source} and {link}") from None
        # The agent would copy through whatever is there; replace the entry instead.
        remove(link)
        os.symlink(source, link)
    except OSError:
        import shutil

        shutil.copyfile(source, link)  # a filesystem without symlinks: the agent's copy fallback


def _strip_leading_directory(deployment_dir: str) -> bool:
    """§4.5: one top-level real directory that holds an entry named like 'appspec' replaces the archive."""
    archive_dir = os.path.join(deployment_dir, ARCHIVE_DIR)
    entries = os.listdir(archive_dir)
    if len(entries) != 1:
        return False
    top = os.path.join(archive_dir, entries[0])
    # lstat, not the agent's File.directory?: a lone symlink must never become the archive folder.
    if not stat.S_ISDIR(os.lstat(top).st_mode):
        return False
    if not any("appspec" in name.lower() for name in os.listdir(top)):
        return False
    temp = os.path.join(deployment_dir, ARCHIVE_TEMP_DIR)
    remove(temp)
    own = os.lstat(archive_dir)
    os.rename(archive_dir, temp)
    os.rename(os.path.join(temp, entries[0]), archive_dir)
    os.rmdir(temp)
    fd = os.open(archive_dir, _DIR_OPEN)
    try:
        _guard_archive_folder(fd, stat.S_IMODE(os.fstat(fd).st_mode), own.st_uid, own.st_gid)
    finally:
        os.close(fd)
    return True


def _guard_archive_folder(fd: int, mode: int, uid: int, gid: int) -> None:
    """Give the archive folder (open as ``fd``) ``mode`` without write for group and others, and keep
    it owned by ``uid``:``gid``. Hooks run (as root) from this folder: tar -xp would give it the mode
    and owner of the bundle's ``./`` (or stripped top-level) folder, so a bundle folder of mode 0777,
    or owned by another user, would let any local user swap the scripts before they run."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    if stat.S_IMODE(st.st_mode) != mode & ~0o022:
        os.fchmod(fd, mode & ~0o022)


# --------------------------------------------------------------------------------------------------
# Directory bundles: the agent's plain recursive copy (modes minus umask, our owner, mtime now,
# directories fresh, symlinks as symlinks).

def _copy_directory_bundle(source: str, deployment_dir: str, processes: int | None = None) -> None:
    archive_dir = os.path.join(deployment_dir, ARCHIVE_DIR)
    if os.path.lexists(archive_dir):
        # Second DownloadBundle in one run (Q37): the source folder is copied *into* the archive.
        parent, name = archive_dir, os.path.basename(source.rstrip("/")) or "root"
    else:
        parent, name = deployment_dir, ARCHIVE_DIR
    target = os.path.join(parent, name)
    if os.path.join(os.path.realpath(parent), name).startswith(os.path.realpath(source) + "/"):
        # Ruby's cp_r refuses this too; copying would otherwise walk into its own output forever.
        raise DeploymentError(f"cannot copy directory {source} to itself {target}")
    links: list[str] = []
    files: list[tuple[str, str, int, int]] = []
    sfd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        pfd = os.open(parent, _DIR_OPEN)
        try:
            created = _make_dir(name, pfd)
            dfd = os.open(name, _DIR_OPEN, dir_fd=pfd)
            try:
                _copy_tree(sfd, dfd, "", links, files)
                if processes is None:  # asked only when there are files enough to share
                    processes = workers.available() if len(files) >= 2 * workers.MIN_PER_PART else 1
                _copy_files(sfd, dfd, files, processes)
            except BaseException as e:
                _discard(target, created)
                if isinstance(e, UnsafeBundle) and not e.file:
                    e.file = source
                raise
            finally:
                os.close(dfd)
        finally:
            os.close(pfd)
    finally:
        os.close(sfd)
    try:
        _check_links(target, archive_dir, links)
    except UnsafeBundle:
        _discard(target, created)
        raise


def _discard(path: str, created: bool) -> None:
    """Undo a refused copy: an archive folder we created is left empty, a merge target is removed."""
    remove(path)
    if created and os.path.basename(path) == ARCHIVE_DIR:
        os.mkdir(path)


def _make_dir(name: str, parent_fd: int) -> bool:
    """mkdir (0777 & ~umask); an existing real directory is merged into, anything else replaced."""
    try:
        os.mkdir(name, 0o777, dir_fd=parent_fd)
        return True
    except FileExistsError:
        if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            return False
        os.unlink(name, dir_fd=parent_fd)
        os.mkdir(name, 0o777, dir_fd=parent_fd)
        return True


def _copy_tree(sfd: int, dfd: int, rel: str, links: list[str], files: list[tuple[str, str, int, int]]) -> None:
    """Copy the folder open as ``sfd`` into ``dfd``, all but its regular files, which are added to ``files``
    as (folder relative to the top, ending in "/" unless it is the top; name; mode; size) for
    ``_copy_files``. Hot path: one lstat per entry, fd-relative calls."""
    with os.scandir(sfd) as it:
        entries = list(it)
    for entry in entries:
        name = entry.name
        if "\n" in name or name != name.rstrip(" \t\n\v\f\r"):  # see _split: the journal could not name it
            raise _unsafe(rel + name, "has a newline in its name or a name ending in white space "
                                      "(the cleanup journal could not name it)")
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if mode & (stat.S_ISUID | stat.S_ISGID):
                raise _unsafe(rel + name, "has a setuid/setgid bit")
            files.append((rel, name, mode, st.st_size))
        elif stat.S_ISDIR(mode):
            _make_dir(name, dfd)
            csfd = os.open(name, _DIR_OPEN, dir_fd=sfd)
            try:
                cdfd = os.open(name, _DIR_OPEN, dir_fd=dfd)
                try:
                    _copy_tree(csfd, cdfd, rel + name + "/", links, files)
                finally:
                    os.close(cdfd)
            finally:
                os.close(csfd)
        elif stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=sfd)
            try:
                os.symlink(target, name, dir_fd=dfd)
            except FileExistsError:
                _clear(name, dfd)
                os.symlink(target, name, dir_fd=dfd)
            links.append(rel + name)
        else:
            raise _unsafe(rel + name, f"is {_SPECIAL[_kind_of(mode)]}")


def _copy_files(sfd: int, dfd: int, files: list[tuple[str, str, int, int]], processes: int) -> None:
    """Copy the regular files ``_copy_tree`` listed, shared between processes (agent.workers) when
    there are many: each opens the folders from the tops ``sfd`` and ``dfd`` a component at a time,
    following no link, so a folder swapped for a link meanwhile is refused, as in the walk."""
    pairs = _FolderPairs(sfd, dfd)

    def copy(i: int) -> None:
        rel, name, mode, size = files[i]
        s, d = pairs.open(rel)
        _copy_file(name, s, d, mode, size)

    try:
        parts = workers.run_parts(len(files), copy, processes)
    finally:
        pairs.close()
    for part in parts:
        if isinstance(part.error, workers.WorkerLost):
            rel, name, _, _ = files[part.done]
            raise DeploymentError(f"{part.error}: copying {rel}{name}")
        if part.error is not None:
            raise part.error


class _FolderPairs:
    """The source and destination descriptors of one folder of the copy (the files come folder by
    folder, so one pair is kept open besides the tops)."""

    def __init__(self, sfd: int, dfd: int):
        self.tops = (sfd, dfd)
        self.rel = ""
        self.pair = self.tops

    def open(self, rel: str) -> tuple[int, int]:
        if rel != self.rel:
            self.close()
            if rel:
                parts = rel[:-1].split("/")
                s = _open_below(self.tops[0], parts)
                try:
                    self.pair = (s, _open_below(self.tops[1], parts))
                except BaseException:
                    os.close(s)
                    raise
            self.rel = rel
        return self.pair

    def close(self) -> None:
        if self.pair is not self.tops:
            for fd in self.pair:
                os.close(fd)
        self.pair, self.rel = self.tops, ""


def _open_below(top: int, parts: list[str]) -> int:
    fd = top
    for name in parts:
        try:
            nxt = os.open(name, _DIR_OPEN, dir_fd=fd)
        finally:
            if fd != top:
                os.close(fd)
        fd = nxt
    return fd


def _copy_file(name: str, sfd: int, dfd: int, mode: int, size: int) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            # The creation mode is masked by the umask: exactly the agent's "source mode & ~umask".
            dst = os.open(name, flags, mode & 0o7777, dir_fd=dfd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EISDIR):
                raise
            _clear(name, dfd)  # merging onto a symlink or folder: replace it, never write through it
            dst = os.open(name, flags, mode & 0o7777, dir_fd=dfd)
        try:
            _copy_data(src, dst, size)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_data(src: int, dst: int, size: int) -> None:
    """Kernel-side copy to end of file (copy_file_range, else sendfile). ``size``: the file's size when
    it was listed; a short copy that reaches it is taken as the end (the install step copies that way
    too), which saves the second system call that would only return 0."""
    try:
        done = 0
        while n := os.copy_file_range(src, dst, 1 << 30):
            done += n
            if done == size and n < 1 << 30:
                return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        while os.sendfile(dst, src, None, 1 << 30):
            pass


def _clear(name: str, dir_fd: int) -> bool:
    """Remove whatever ``name`` is in ``dir_fd`` (a folder with its contents), without following links.
    True when a folder was removed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return False
    fd = os.open(name, _DIR_OPEN, dir_fd=dir_fd)
    try:
        for child in os.listdir(fd):
            _clear(child, fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
    return True


# --------------------------------------------------------------------------------------------------
# Links that lead out of the bundle

def check_archive_links(archive_dir: str) -> None:
    """Refuse (``UnsafeBundle``) symlinks in ``archive_dir`` that resolve to a directory outside it,
    or to a folder that contains the link itself: the install step would copy that folder's contents
    (a host folder's files, or without end). Links to files, inside or out, and dangling links are fine.
    """
    links = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(archive_dir, rel)) as it:
            for entry in it:
                if entry.is_symlink():
                    links.append(rel + entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(rel + entry.name + "/")
    _check_links(archive_dir, archive_dir, links)


def _check_links(tree: str, archive_dir: str, links: list[str]) -> None:
    """Check ``links`` (relative to ``tree``) against the boundary ``archive_dir``."""
    root = os.path.realpath(archive_dir)
    problems = []
    folder_links: dict[str, tuple[str, str]] = {}  # real location -> (name shown, real target)
    for rel in links:
        path = os.path.join(tree, rel)
        try:
            target = os.path.realpath(path, strict=True)
        except OSError:
            continue  # dangling or a loop of links: copied as a symlink, nothing is followed
        if not os.path.isdir(target):
            continue
        shown = os.path.relpath(path, archive_dir)
        if target != root and not target.startswith(root + "/"):
            problems.append((shown, f"is a symbolic link to the directory {target} outside the bundle"))
            continue
        location = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        folder_links[location] = (shown, target)
    for location in _on_cycles(folder_links):
        shown = folder_links[location][0]
        why = (f"is a symbolic link to {os.readlink(location)!r}: copying the folder it names would "
               "meet this link again, without end")
        problems.append((shown, why))
    if problems:
        raise _unsafe_many(sorted(problems), archive_dir)


def _on_cycles(folder_links: dict[str, tuple[str, str]]) -> list[str]:
    """Links from which install, copying a linked folder and following the links inside it, returns to
    the same link (a link to its own ancestor, or links leading into each other's folders)."""
    import bisect  # a bundle with links to folders only

    locations = sorted(folder_links)

    def successors(location: str) -> list[str]:
        prefix = folder_links[location][1] + "/"
        lo = bisect.bisect_left(locations, prefix)
        hi = bisect.bisect_left(locations, prefix[:-1] + "0")  # '0' sorts right after '/'
        return locations[lo:hi]

    looping = []
    for start in locations:
        seen, stack = set(), successors(start)
        while stack:
            node = stack.pop()
            if node == start:
                looping.append(start)
                break
            if node not in seen:
                seen.add(node)
                stack.extend(successors(node))
    return looping


# --------------------------------------------------------------------------------------------------
# Reading archives

_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


def _require_regular_file(path: str, bundle_type: str) -> None:
    """Refuse, before anything opens it, an archive bundle that is not a regular file: reading a FIFO
    or a device (``/dev/zero``) would block or never end."""
    try:
        st = os.stat(path)
    except OSError:
        return  # opening it reports the problem in the usual words
    if not stat.S_ISREG(st.st_mode):
        what = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        hint = ("a folder is a bundle of type directory (--type directory)" if stat.S_ISDIR(st.st_mode)
                else "give the archive file itself")
        raise BundleError(f"{path} is {what}, not a {bundle_type} archive file", hint=hint,
                          reference="bundle-invalid")


def list_members(path: str, bundle_type: str, *, limits: Limits = DEFAULT_LIMITS) -> list[Member]:
    """The members of the bundle at ``path`` without extracting anything.

    ``bundle_type`` is tar, tgz, zip or directory (a directory is walked without following links).
    Raises ``BundleError`` when the file is not an archive of that type or exceeds ``limits``.
    """
    if bundle_type == "directory":
        return list(_walk_members(path))
    if bundle_type in ("tar", "tgz"):
        _require_regular_file(path, bundle_type)
        with _open_tar(path, bundle_type) as tf:
            return [m for m, _info in _tar_members(tf, path, bundle_type, limits)]
    if bundle_type == "zip":
        _require_regular_file(path, bundle_type)
        with _open_zip(path) as zf:
            return [m for m, _info in _zip_members(zf, path, limits, lambda _msg: None)]
    raise UsageError(f"type {bundle_type} is not a valid type. Must be one of tgz,tar,zip,directory")


def _walk_members(top: str) -> Iterator[Member]:
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(top, rel)) as it:
            for entry in sorted(it, key=lambda e: e.name):
                st = entry.stat(follow_symlinks=False)
                kind = _kind_of(st.st_mode)
                name = rel + entry.name
                target = os.readlink(entry.path) if kind == "symlink" else None
                yield Member(name, kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "file" else 0,
                             target, st.st_mtime, st.st_uid, st.st_gid)
                if kind == "dir":
                    stack.append(name + "/")


def _kind_of(mode: int) -> str:
    fmt = stat.S_IFMT(mode)
    return {stat.S_IFREG: "file", 0: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
            stat.S_IFSOCK: "socket"}.get(fmt, "file")


def _compression(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bzip2"
    if head == b"\xfd7zXZ\x00":
        return "xz"
    return None


def _open_tar(path: str, bundle_type: str) -> tarfile.TarFile:
    import tarfile

    # GNU tar -x auto-detects compression, so a tgz declared as tar works; -z insists on gzip (§4.5).
    if _compression(path) == "gzip":
        # Inflate on a second thread, as tar -z does with its gzip child. Anything that fails to open
        # this way is opened again below so the error is tarfile's own, word for word.
        reader = _GzipPrefetch(path)
        try:
            tf = tarfile.TarFile.taropen(path, "r", reader)  # noqa: SIM115 - returned open, the caller closes it
        except BaseException as e:
            reader.close()
            if not isinstance(e, Exception):
                raise
            # any error is reported by the plain open below
        else:
            # the TarFile owns the reader: closing it stops the thread. A private attribute that
            # typeshed leaves out; tarfile has no public way to hand over the file object
            tf._extfileobj = False  # type: ignore[attr-defined]
            return tf
    try:
        return tarfile.open(path, "r:gz" if bundle_type == "tgz" else "r:*")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise _corrupt(path, bundle_type, e) from None


class _GzipPrefetch:
    """A gzip file read forward only, inflated ahead by a background thread, so a second core
    decompresses while this one writes the members. The data, and any error at the end, come out as
    ``gzip.GzipFile`` gives them (before an error, as with GzipFile, how much of the stream comes first
    depends on the read sizes). For tarfile: read, tell, forward seek.

    The thread inflates a stream of one gzip member in 1 MiB steps (one call per MiB, the GIL released
    while it inflates and taken back a few times per call: GzipFile's 8 KiB steps took it back from the
    main thread thousands of times), with zlib-ng where it is installed (about twice zlib's speed), else
    zlib. Anything else
    (several members, data after the member, a corrupt or truncated stream, a header zlib reads
    differently) goes to ``gzip.GzipFile`` from the same point of the output, which then gives its own
    data and errors."""

    _AHEAD = 8  # chunks of _CHUNK bytes inflated ahead at most

    def __init__(self, path: str):
        import queue
        import threading

        self.name = path
        self._raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self._AHEAD)
        self._stop = threading.Event()
        self._buf = b""
        self._off = 0
        self._pos = 0
        self._end: BaseException | None = None  # the stream's end: EOFError() when clean
        self._thread = threading.Thread(target=self._inflate, name="cdsim-gunzip", daemon=True)
        self._thread.start()

    def _inflate(self) -> None:
        try:
            done = self._inflate_member()
            if done is not None:
                self._inflate_gzipfile(done)
        except BaseException as e:  # noqa: BLE001 - handed to the reader, raised there
            self._put(e)

    def _inflate_member(self) -> int | None:
        """Inflate a stream made of one gzip member and nothing after it. None once it has all been
        handed over (or the reader stopped); else the bytes handed over so far, for GzipFile to go on."""
        inflater = _inflater()
        d = inflater.decompressobj(31)  # 31: a gzip header and trailer (CRC-32, size), both checked
        done = 0
        while not self._stop.is_set():
            data = self._raw.read(_CHUNK)
            if not data:
                return done  # truncated: GzipFile says how
            try:
                while True:
                    out = d.decompress(data, _CHUNK)  # at most _CHUNK out per call: no bomb in memory
                    if out:
                        self._put(out)
                        done += len(out)
                    data = d.unconsumed_tail
                    if d.eof or (not data and len(out) < _CHUNK):
                        break
            except inflater.error:
                return done
            if d.eof:
                if d.unused_data or self._raw.read(1):
                    return done  # another member, or padding or junk after it: GzipFile's rules
                self._put(b"")
                return None
        return None

    def _inflate_gzipfile(self, skip: int) -> None:
        """The rest of the stream through gzip.GzipFile, after the ``skip`` bytes already handed over."""
        import gzip

        with gzip.GzipFile(self.name, "rb") as gz:
            while skip > 0:  # the same bytes again (inflating is deterministic): not handed over twice
                got = gz.read(min(skip, _CHUNK))
                if not got:
                    break
                skip -= len(got)
            while not self._stop.is_set():
                chunk = gz.read(_CHUNK)
                self._put(chunk)
                if not chunk:
                    return

    def _put(self, item: bytes | BaseException) -> None:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        off = self._off
        if 0 <= n <= len(self._buf) - off:  # within the chunk at hand (a header, a small member)
            self._off = off + n
            self._pos += n
            return self._buf[off:off + n]
        parts = []
        while n != 0:
            have = len(self._buf) - self._off
            if have:
                take = have if n < 0 or n > have else n
                parts.append(self._buf[self._off:self._off + take])
                self._off += take
                self._pos += take
                if n > 0:
                    n -= take
                continue
            if self._end is not None:
                if type(self._end) is EOFError and not self._end.args:
                    break
                raise self._end
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._end = item
            elif not item:
                self._end = EOFError()
            else:
                self._buf, self._off = item, 0
        return b"".join(parts)

    def read_at(self, pos: int, n: int) -> bytes:
        """``seek(pos)`` then ``read(n)``, in one step when both stay within the chunk at hand."""
        start = self._off + pos - self._pos
        if self._off <= start and start + n <= len(self._buf):
            self._off = start + n
            self._pos = pos + n
            return self._buf[start:start + n]
        self.seek(pos)
        return self.read(n)

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> int:
        """tarfile's file-object protocol has it; a read-only stream refuses it."""
        raise io.UnsupportedOperation("write")

    def unread(self, data: bytes) -> None:
        """Put back the ``data`` just read: the next read starts with it."""
        if data:
            self._buf = data + self._buf[self._off:]
            self._off = 0
            self._pos -= len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence != 0:
            raise OSError(errno.ESPIPE, "only forward seeks from the start")
        if pos < self._pos:
            raise OSError(errno.ESPIPE, "cannot seek backwards in a gzip stream read ahead")
        if pos - self._pos <= len(self._buf) - self._off:  # within the chunk at hand
            self._off += pos - self._pos
            self._pos = pos
            return pos
        while pos > self._pos:
            if not self.read(min(pos - self._pos, _CHUNK)):
                break
        return self._pos

    def close(self) -> None:
        import queue

        self._stop.set()
        while True:  # unblock a pending put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        self._raw.close()


def _inflater() -> types.ModuleType:
    """zlib-ng's zlib-compatible module where it is installed (a dependency; wheels for the usual
    platforms), else the standard library's zlib: the same API, the same output."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return zlib
    return zlib_ng


def _corrupt(path: str, bundle_type: str, cause: BaseException | str) -> BundleError:
    what = {"tar": "tar archive", "tgz": "gzip-compressed tar archive", "zip": "zip archive"}
    hint = None
    try:
        found = _compression(path)
    except OSError:
        found = None
    if bundle_type == "zip" and found:
        hint = f"the file is {found}-compressed: is it a tar archive (--type {'tgz' if found == 'gzip' else 'tar'})?"
    elif bundle_type == "tgz" and not found:
        hint = "the file is not gzip-compressed: if it is a plain tar archive, use --type tar"
    return BundleError(f"{path} is not a readable {what[bundle_type]} (bundle type {bundle_type}): {cause}",
                       hint=hint, reference="bundle-corrupt")


class _Owners:
    """GNU tar's rule for a member's owner (run as root, without --numeric-owner): the user and group
    *named* in the header when that name exists on this machine, else the numbers in the header."""

    def __init__(self) -> None:
        self._uids: dict[str, int | None] = {}
        self._gids: dict[str, int | None] = {}

    def uid(self, name: str, number: int) -> int:
        return _by_name(self._uids, _uid_of, name, number)

    def gid(self, name: str, number: int) -> int:
        return _by_name(self._gids, _gid_of, name, number)


def _uid_of(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid_of(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def _by_name(cache: dict[str, int | None], lookup: Callable[[str], int], name: str, number: int) -> int:
    """The id of ``name`` on this machine (looked up once), else ``number``."""
    if not name:
        return number
    if name not in cache:
        try:
            cache[name] = lookup(name)
        except KeyError:
            cache[name] = None
    found = cache[name]
    return number if found is None else found


def _tar_members(tf: tarfile.TarFile, path: str, bundle_type: str,
                 limits: Limits) -> Iterator[tuple[Member, tarfile.TarInfo]]:
    import tarfile

    budget = _Budget(path, limits)
    owners = _Owners()
    try:
        kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
                 tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
        last_owner: tuple[str, int, str, int] | None = None
        uid = gid = 0
        for info in _tar_infos(tf):
            # TarInfo's isdir() ... isfifo() in one look-up; anything else (regular, contiguous, sparse
            # and unknown types) is extracted as a file, as tar does
            kind = kinds.get(info.type, "file")
            size = info.size if kind == "file" else 0
            budget.add(size)
            target = info.linkname if kind in ("symlink", "hardlink") else None
            owner = (info.uname, info.uid, info.gname, info.gid)
            if owner != last_owner:  # members mostly share one owner: looked up once per change
                last_owner, uid, gid = owner, owners.uid(info.uname, info.uid), owners.gid(info.gname, info.gid)
            yield Member(info.name, kind, info.mode & 0o7777, size, target, float(info.mtime), uid, gid), info
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise _corrupt(path, bundle_type, e) from None


def _tar_infos(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """``tf.next()`` until the end, with the plain headers (regular file, folder, symlink, hard link:
    nearly every member of a real bundle) parsed here, about twice as fast as tarfile, into the very
    values tarfile would give. Anything else (the first member, GNU long names, pax headers, sparse
    files, base-256 numbers, a bad checksum, the end of the archive, a read error) is left to tarfile
    itself, from the same offset, so its rules and its errors stay exactly its own."""
    info = tf.next()
    fast = _fast_headers(tf)
    while info is not None:
        yield info
        info = fast() if fast is not None and not tf.pax_headers else None
        if info is None:
            info = tf.next()


_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s")
_BLOCK = 512  # tarfile.BLOCKSIZE
# tarfile's REGTYPE, AREGTYPE, DIRTYPE, SYMTYPE, LNKTYPE
_FAST_TYPES = frozenset((b"0", b"\0", b"5", b"2", b"1"))


# mode, uid, gid, size, mtime, checksum as 7/7/7/11/11/6 octal digits each ended by a NUL (the
# checksum by a NUL and a space)
@functools.cache  # compiled on first use: a directory bundle never reads a tar header (start-up)
def _common_numbers() -> re.Pattern[bytes]:
    return re.compile(rb"([0-7]{7})\0([0-7]{7})\0([0-7]{7})\0([0-7]{11})\0([0-7]{11})\0([0-7]{6})\0 ")
_NO_DEVICE = bytes(8)


class _Unusual(Exception):
    """A header the fast path leaves to tarfile."""


def _fast_headers(tf: tarfile.TarFile) -> Callable[[], tarfile.TarInfo | None] | None:
    """A function reading the header at ``tf.offset``: its TarInfo (``tf.offset`` then points at the
    next header), or None with nothing consumed when tarfile must read it. None when the archive's
    stream is not one this works on (only a plain file and the prefetched gzip stream)."""
    src = tf.fileobj
    if isinstance(src, _GzipPrefetch):
        def read(offset: int) -> bytes:
            return src.read_at(offset, _BLOCK)

        def unread(data: bytes) -> None:
            src.unread(data)
    elif type(src) is io.BufferedReader:
        fd = src.fileno()

        def read(offset: int) -> bytes:
            return os.pread(fd, _BLOCK, offset)

        def unread(data: bytes) -> None:
            pass
    else:
        return None
    encoding, errors = tf.encoding, tf.errors

    def fast() -> tarfile.TarInfo | None:
        offset = tf.offset
        try:
            buf = read(offset)
        except Exception:  # noqa: BLE001 - tarfile reads it again and reports it its own way
            return None
        try:
            info = _parse_header(buf, offset, encoding, errors)
        except _Unusual:
            unread(buf)
            return None
        tf.offset = info.offset_data + (-(-info.size // _BLOCK) * _BLOCK
                                        if info.isreg() else 0)
        return info
    return fast


def _byte_sum(block: bytes) -> int:
    """``sum(block)`` of a 512-byte block, about eight times faster: the low half of an Adler-32 is
    1 + the sum of the bytes modulo 65521, and the bytes of a 256-byte half sum to at most 65280."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _tar_number(field: bytes) -> int:
    # tarfile's nti for the octal form; the base-256 form and negative numbers are left to tarfile
    if field[0] in (0o200, 0o377):
        raise _Unusual
    end = field.find(b"\0")
    try:
        n = int((field if end == -1 else field[:end]).decode("ascii").strip() or "0", 8)
    except ValueError:  # UnicodeDecodeError included
        raise _Unusual from None
    if n < 0:
        raise _Unusual
    return n


def _parse_header(buf: bytes, offset: int, encoding: str, errors: str) -> tarfile.TarInfo:
    """``TarInfo.frombuf`` + ``_proc_builtin`` (no pax state) for a plain header, field for field;
    ``_Unusual`` for any other block."""
    import tarfile

    if len(buf) != _BLOCK:
        raise _Unusual
    (name, mode, uid, gid, size, mtime, chksum, kind, linkname, _magic, _version, uname, gname,
     devmajor, devminor, prefix) = _HEADER.unpack_from(buf)
    if kind not in _FAST_TYPES:
        raise _Unusual
    common = _common_numbers().match(buf, 100)
    if common:  # what GNU tar and Python write: the same values as below, four times faster
        mode_n, uid_n, gid_n, size_n, mtime_n, checksum = [int(n, 8) for n in common.groups()]
    else:
        checksum = _tar_number(chksum)
        mode_n, uid_n, gid_n = _tar_number(mode), _tar_number(uid), _tar_number(gid)
        size_n, mtime_n = _tar_number(size), _tar_number(mtime)
    if checksum != 256 + _byte_sum(buf) - sum(chksum):  # the unsigned sum; the signed one is tarfile's job
        raise _Unusual
    info = tarfile.TarInfo()
    # each text field up to its first NUL, decoded (tarfile's nts); an empty one without decoding
    text = name.partition(b"\0")[0].decode(encoding, errors)
    info.mode, info.uid, info.gid, info.size, info.mtime = mode_n, uid_n, gid_n, size_n, mtime_n
    info.chksum = checksum
    info.type = kind
    info.linkname = linkname.partition(b"\0")[0].decode(encoding, errors) if linkname[0] else ""
    info.uname = uname.partition(b"\0")[0].decode(encoding, errors) if uname[0] else ""
    info.gname = gname.partition(b"\0")[0].decode(encoding, errors) if gname[0] else ""
    if devmajor == devminor == _NO_DEVICE:
        info.devmajor = info.devminor = 0
    else:
        info.devmajor = _tar_number(devmajor)
        info.devminor = _tar_number(devminor)
    if kind == b"5" or (kind == b"\0" and text.endswith("/")):  # DIRTYPE; an AREGTYPE named "x/" is one
        info.type = b"5"
        text = text.rstrip("/")
        if prefix[0]:
            text = (prefix.partition(b"\0")[0].decode(encoding, errors) + "/" + text).rstrip("/")
    elif prefix[0]:
        text = prefix.partition(b"\0")[0].decode(encoding, errors) + "/" + text
    info.name = text
    info.offset = offset
    info.offset_data = offset + _BLOCK
    return info


class _Budget:
    """Running totals against ``Limits``; raises ``bundle-too-large`` as soon as one is exceeded."""

    def __init__(self, path: str, limits: Limits):
        self.path, self.limits = path, limits
        self.packed = max(os.path.getsize(path), 1)
        self.total = self.count = 0

    def add(self, size: int) -> None:
        self.total += size
        self.count += 1
        lim = self.limits
        if self.count > lim.max_members:
            self._fail(f"more than {lim.max_members} members")
        if self.total > lim.max_total_bytes:
            self._fail(f"unpacks to more than {lim.max_total_bytes} bytes")
        if self.total > lim.ratio_floor_bytes and self.total / self.packed > lim.max_ratio:
            self._fail(f"unpacks to more than {lim.max_ratio:g} times its own size "
                       f"({self.total} bytes from {self.packed}): a decompression bomb?")

    def _fail(self, why: str) -> None:
        raise BundleError(f"{self.path}: bundle too large: {why}", reference="bundle-too-large",
                          hint="the limits are cdsim settings; raise them if this bundle is genuine")


def _open_zip(path: str) -> zipfile.ZipFile:
    import zipfile

    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise _corrupt(path, "zip", e) from None


def _zip_members(zf: zipfile.ZipFile, path: str, limits: Limits,
                 warn: Callable[[str], None]) -> Iterator[tuple[Member, zipfile.ZipInfo]]:
    """The entries as ``unzip -qo`` (Info-ZIP 6, no -K) would write them: a Unix mode less the setuid,
    setgid and sticky bits; for entries made elsewhere (MS-DOS, Windows: no Unix mode) 0600 when their
    attributes are 0, else ``0444`` (read-only) or ``0666``, less the umask; a leading ``/`` and ``..``
    components stripped from names. What was changed is said through ``warn``."""
    budget = _Budget(path, limits)
    for info in zf.infolist():
        unix = info.external_attr >> 16 if info.create_system == 3 else 0
        kind = _kind_of(unix) if unix else "file"
        if info.filename.endswith("/") and kind == "file":
            kind = "dir"
        if info.flag_bits & 0x1:
            raise BundleError(f"{path}: member {info.filename!r} is encrypted", reference="bundle-corrupt")
        size = info.file_size if kind == "file" else 0
        budget.add(size)
        target = None
        if kind == "symlink":
            if info.file_size > _SYMLINK_MAX:
                raise _unsafe_many([(info.filename, "is a symbolic link with an over-long target")], path)
            target = os.fsdecode(_read_zip(zf, info, path))
        name = _unzip_name(info.filename, warn)
        mode, create_mode = None, 0o666
        if unix:
            mode = stat.S_IMODE(unix)
            if mode & (stat.S_ISUID | stat.S_ISGID) and kind == "file":
                warn(f"zip member {info.filename!r}: setuid/setgid bits dropped, as unzip does")
            mode &= ~(stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
        elif kind == "file":
            dos = info.external_attr & 0xFF
            if dos == 0:
                mode = 0o600
            elif dos & 0x01:  # read-only
                create_mode = 0o444
        yield Member(name.rstrip("/") if kind == "dir" else name, kind, mode, size, target,
                     _zip_mtime(info), create_mode=create_mode), info


def _unzip_name(name: str, warn: Callable[[str], None]) -> str:
    """unzip's rewriting of a member name: a leading ``/`` stripped, ``..`` components skipped."""
    fixed = "/".join(p for p in name.lstrip("/").split("/") if p != "..")
    if fixed != name:
        warn(f"zip member {name!r} is unpacked as {fixed!r}: unzip strips a leading '/' and skips "
             "'..' components")
    return fixed


def _read_zip(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> bytes:
    import zipfile

    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError) as e:
        raise _corrupt(path, "zip", e) from None


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    # unzip prefers the extended-timestamp extra field (UTC) over the DOS local time.
    extra = info.extra
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4:i + 4 + length]
        if tag == 0x5455 and len(body) >= 5 and body[0] & 1:
            return float(struct.unpack_from("<i", body, 1)[0])
        i += 4 + length
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Safety check (pure)

_DRIVE = re.compile(r"[A-Za-z]:")
# a path component ending in white space: the last character of a component is the one before a "/"
# or the end (one search instead of a strip per component)
_WHITE_END = re.compile(r"[ \t\n\v\f\r](?:/|\Z)")


# a name the rules below accept as it is: components of ordinary characters, none empty, none starting
# with "." (so neither "." nor ".."), no white space, backslash or colon; an optional leading "./"
@functools.cache  # compiled on first use: a directory bundle never splits a member name (start-up)
def _plain_name() -> re.Pattern[str]:
    part = r"[A-Za-z0-9_+@%=,-][A-Za-z0-9_.+@%=,~-]*"
    return re.compile(rf"(?:\./)?((?:{part}/)*{part})")


def _split(name: str) -> tuple[tuple[str, ...], str | None]:
    """A member name as path components inside the archive folder, or why it would leave it."""
    plain = _plain_name().fullmatch(name)
    if plain:  # nearly every member: the same result as the checks below, without them
        return tuple(plain[1].split("/")), None
    if "\x00" in name:
        return (), "has a NUL byte in its name"
    if "\n" in name or _WHITE_END.search(name):
        # the cleanup journal holds one path a line, stripped (§3.2): such a path would be read
        # back as another one, and the next Install's cleanup would delete that
        return (), ("has a newline in its name or a name ending in white space "
                    "(the cleanup journal could not name it)")
    if name.startswith(("/", "\\")):
        return (), "is an absolute path"
    if _DRIVE.match(name):
        return (), "starts with a drive letter"
    if "\\" in name and ".." in re.split(r"[\\/]", name):
        return (), "leaves the archive folder through '..' (with backslashes)"
    parts = tuple([p for p in name.split("/") if p and p != "."])
    if ".." in parts:
        return (), "leaves the archive folder through '..'"
    return parts, None


@dataclass  # not frozen: a frozen __init__ sets each field through object.__setattr__ (one per member)
class _Step:
    member: Member
    parts: tuple[str, ...]                     # () is the archive folder itself
    link_parts: tuple[str, ...] | None         # a hard link's target
    source: tarfile.TarInfo | zipfile.ZipInfo | None  # the archive's own entry, for its data (None: a listing)


class _Checker:
    """Checks members one at a time, in archive order, against the members before them (every rule
    only looks back), so extraction can write each member as soon as it is checked. ``problems``
    collects every offending member; ``finish`` refuses the bundle if there were any."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.kinds: dict[tuple[str, ...], str] = {(): "dir"}
        self.parents: set[tuple[str, ...]] = set()

    def check(self, m: Member, source: tarfile.TarInfo | zipfile.ZipInfo | None = None) -> _Step | None:
        kinds, parents = self.kinds, self.parents
        parts, why = _split(m.name)
        if why is None and (m.type == "file" or m.type == "dir") and parts and parts[:-1] in parents \
                and parts not in kinds and (m.mode is None or not m.mode & (stat.S_ISUID | stat.S_ISGID)):
            # Nearly every member: a new name in a folder that already holds members (a folder in
            # ``parents`` is a "dir" in ``kinds``, and so are its ancestors). No rule below can refuse
            # it, and it is all there is to record.
            kinds[parts] = m.type
            return _Step(m, parts, None, source)
        if why is None and not parts and m.type != "dir":
            why = "names the archive folder itself"
        if why is None and m.type in _SPECIAL:
            why = f"is {_SPECIAL[m.type]}"
        if why is None and m.mode is not None and m.mode & (stat.S_ISUID | stat.S_ISGID):
            why = "has a setuid/setgid bit"
        # Walk up to the nearest known ancestor: a known folder's own ancestors are all folders
        # (a folder holding members can never be replaced), so one lookup usually settles it.
        i = len(parts) - 1
        while why is None and i > 0:
            above = kinds.get(parts[:i])
            if above == "dir":
                break
            if above == "symlink":
                why = f"would be written through the symbolic link {'/'.join(parts[:i])!r} of the archive"
            elif above is not None:
                why = f"would be written under the file {'/'.join(parts[:i])!r} of the archive"
            i -= 1
        if why is None and m.type != "dir" and kinds.get(parts) == "dir" and parts in parents:
            why = "would replace a directory that holds other members"
        link_parts = None
        if why is None and m.type == "hardlink":
            link_parts, bad = _split(m.link_target or "")
            if bad or kinds.get(link_parts) != "file":
                why = f"is a hard link to {m.link_target!r}, which is not an earlier regular file of the archive"
        if why:
            self.problems.append((m.name, why))
            return None
        kinds[parts] = "file" if m.type in ("file", "hardlink") else m.type
        i = len(parts) - 1
        while i >= 0 and parts[:i] not in parents:
            parents.add(parts[:i])
            kinds.setdefault(parts[:i], "dir")
            i -= 1
        return _Step(m, parts, link_parts, source)

    def finish(self, label: str | None) -> None:
        if self.problems:
            raise _unsafe_many(self.problems, label)


def _plan(members: list[Member], label: str | None) -> list[_Step]:
    """Check every member before anything is written; the steps to extract them in order."""
    checker = _Checker()
    steps = [step for m in members if (step := checker.check(m)) is not None]
    checker.finish(label)
    return steps


def _checked(pairs: Iterator[tuple[Member, tarfile.TarInfo]] | Iterator[tuple[Member, zipfile.ZipInfo]],
             label: str) -> Iterator[_Step]:
    """The steps of ``pairs`` as they are read, each checked before it is yielded. After the first
    offending member nothing more is yielded, but the rest is still read so that the refusal names
    every offending member (and an over-limit or corrupt archive is still reported as such)."""
    checker = _Checker()
    for m, source in pairs:
        step = checker.check(m, source)
        if step is not None and not checker.problems:
            yield step
    checker.finish(label)


def check_members(members: list[Member], label: str | None = None) -> None:
    """Refuse (``UnsafeBundle``, naming every offending member) what extraction would refuse, from a
    listing alone; for validate/plan. Links to folders outside are only found after unpacking."""
    _plan(members, label)


def _unsafe(name: str, why: str) -> UnsafeBundle:
    return _unsafe_many([(name, why)], None)


def _unsafe_many(problems: list[tuple[str, str]], label: str | None) -> UnsafeBundle:
    shown = "; ".join(f"{name!r} {why}" for name, why in problems[:20])
    if len(problems) > 20:
        shown += f"; and {len(problems) - 20} more"
    noun = "member" if len(problems) == 1 else "members"
    err = UnsafeBundle(f"refusing unsafe bundle {noun}: {shown}", file=label,
                       hint="cdsim never writes outside the deployment's archive folder; "
                            "rebuild the bundle without these members")
    err.members = tuple(name for name, _why in problems)  # for callers that list them (plan, validate)
    return err


# --------------------------------------------------------------------------------------------------
# Extraction: every write relative to a directory descriptor opened with O_NOFOLLOW

class _Tree:
    """Directory descriptors under the archive folder, opened component by component without following."""

    KEEP = 128  # descriptors kept open at most

    def __init__(self, root: str):
        self.fds: dict[tuple[str, ...], int] = {(): os.open(root, _DIR_OPEN)}

    def dir_fd(self, parts: tuple[str, ...]) -> int:
        """The descriptor of folder ``parts``, creating missing folders (0777 & ~umask, as tar does)."""
        i = len(parts)
        while parts[:i] not in self.fds:
            i -= 1
        fd = self.fds[parts[:i]]
        for j in range(i, len(parts)):
            name = parts[j]
            try:
                fd = os.open(name, _DIR_OPEN, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(name, 0o777, dir_fd=fd)
                fd = os.open(name, _DIR_OPEN, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):  # checked before; defence in depth
                    raise _unsafe("/".join(parts[:j + 1]), "is not a directory of the archive") from None
                raise
            self.fds[parts[:j + 1]] = fd
        return fd

    def replace(self, parts: tuple[str, ...], parent_fd: int) -> None:
        """Remove whatever is at ``parts`` (and forget descriptors of folders that were under it)."""
        if _clear(parts[-1], parent_fd):  # a folder went: its descriptors (and its children's) are stale
            for key in [k for k in self.fds if k[:len(parts)] == parts]:
                os.close(self.fds.pop(key))

    def trim(self) -> None:
        if len(self.fds) > self.KEEP:
            for parts, fd in list(self.fds.items()):
                if parts:
                    os.close(fd)
                    del self.fds[parts]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _unpack(path: str, bundle_type: str, archive_dir: str, limits: Limits,
            warn: Callable[[str], None]) -> None:
    # One pass: each member is checked against the ones before it and written as it is read, so a tgz
    # is decompressed once. A refusal (or a corrupt or over-limit archive) found later is raised after
    # earlier members were written; the caller then empties the archive folder, and nothing outside it
    # was ever written (every write is relative to an O_NOFOLLOW descriptor of a checked folder).
    if bundle_type in ("tar", "tgz"):
        import tarfile  # loaded already by _open_tar

        with _open_tar(path, bundle_type) as tf:
            plain = _compression(path) is None
            with open(path, "rb") as raw:
                def tar_data(step: _Step, fd: int) -> None:
                    info = step.source
                    assert isinstance(info, tarfile.TarInfo), "a tar member's step carries its TarInfo"
                    if plain and info.sparse is None:
                        _copy_range(raw.fileno(), fd, info.offset_data, info.size)
                    elif info.sparse is None:
                        _copy_stream(tf.fileobj, info.offset_data, info.size, fd)
                    else:
                        f = tf.extractfile(info)
                        assert f is not None, "a sparse member is a regular file"
                        with f:
                            _pump(f, fd)
                _extract(_checked(_tar_members(tf, path, bundle_type, limits), path), archive_dir, tar_data,
                         as_tar=True, owners=os.geteuid() == 0, label=path, bundle_type=bundle_type)
    elif bundle_type == "zip":
        import zipfile  # loaded already by _open_zip

        with _open_zip(path) as zf:
            def zip_data(step: _Step, fd: int) -> None:
                assert isinstance(step.source, zipfile.ZipInfo), "a zip member's step carries its ZipInfo"
                with zf.open(step.source) as f:
                    _pump(f, fd)
            _extract(_checked(_zip_members(zf, path, limits, warn), path), archive_dir, zip_data, as_tar=False,
                     owners=False, label=path, bundle_type="zip")
    else:
        raise UsageError(f"type {bundle_type} is not a valid type. Must be one of tgz,tar,zip,directory")


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    while size > 0:
        try:
            n = os.copy_file_range(src, dst, size, offset)
        except OSError as e:
            # EXDEV: the archive is on another mount (since Linux 5.19 even of the same file system, as a
            # bundle bound into an instance is)
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = os.write(dst, os.pread(src, min(size, _CHUNK), offset))
        if n == 0:  # a truncated archive: tarfile's own words for it
            import tarfile

            raise tarfile.ReadError("unexpected end of data")
        offset += n
        size -= n


def _copy_stream(src: _Stream, offset: int, size: int, dst: int) -> None:
    """``size`` bytes at ``offset`` of the (decompressed) archive stream, read forward, into ``dst``."""
    if 0 < size <= _CHUNK and isinstance(src, _GzipPrefetch):
        chunk = src.read_at(offset, size)  # nearly every member: one step
    else:
        src.seek(offset)
        if size <= 0:
            return
        chunk = src.read(min(size, _CHUNK))
    while True:
        if not chunk:  # a truncated archive: tarfile's own words for it
            import tarfile

            raise tarfile.ReadError("unexpected end of data")
        size -= len(chunk)
        n = os.write(dst, chunk)
        if n < len(chunk):  # a short write (rare): the rest
            view = memoryview(chunk)[n:]
            while view:
                view = view[os.write(dst, view):]
        if size <= 0:
            return
        chunk = src.read(min(size, _CHUNK))


def _pump(f: IO[bytes], fd: int) -> None:
    while chunk := f.read(_CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def _extract(steps: Iterable[_Step], archive_dir: str, data: Callable[[_Step, int], None], *,
             as_tar: bool, owners: bool, label: str, bundle_type: str) -> None:
    """Write the checked ``steps``. Like tar -xp (``as_tar``): every stored mode, symlink mtimes too;
    like unzip: a mode only where the entry has one (else its ``create_mode`` less the umask), symlinks
    get no mtime, a folder's entry that comes after its contents is ignored.
    Folder metadata is set last, deepest first, so creating their contents does not change it."""
    import gzip
    import tarfile
    import zipfile

    tree = _Tree(archive_dir)
    folders: dict[tuple[str, ...], Member] = {}
    made: set[tuple[str, ...]] = set()  # the folder started empty: only these paths can exist
    # what creating a file here gives by itself: a mode asked for that the umask leaves whole needs no
    # fchmod, an owner that is the creator's needs no fchown (two system calls of six per member)
    plain = _creation(tree.fds[()])
    keep = 0o7000 | (0 if plain is None else plain.umask)  # mode bits creating a file would not give
    try:
        for step in steps:
            if len(tree.fds) > tree.KEEP:
                tree.trim()
            m, parts = step.member, step.parts
            if m.type == "dir":
                if parts:
                    parent = tree.dir_fd(parts[:-1])
                    if not as_tar and parts not in made and _is_real_dir(parts[-1], parent):
                        continue  # unzip ignores a folder's entry that comes after its contents
                    if parts in made and not _is_real_dir(parts[-1], parent):
                        tree.replace(parts, parent)
                    tree.dir_fd(parts)
                    made.add(parts)
                folders[parts] = m
                continue
            parent = tree.dir_fd(parts[:-1])
            name = parts[-1]
            if parts in made:  # a later member of the same name replaces the earlier, as tar does
                tree.replace(parts, parent)
                folders.pop(parts, None)
            made.add(parts)
            if m.type == "symlink":
                os.symlink(m.link_target or "", name, dir_fd=parent)
                if owners and m.uid is not None and m.gid is not None:
                    os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
                if as_tar and m.mtime is not None:
                    os.utime(name, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)
            elif m.type == "hardlink":
                assert step.link_parts is not None, "the checker sets it on every hard link"
                src_parent = tree.dir_fd(step.link_parts[:-1])
                os.link(step.link_parts[-1], name, src_dir_fd=src_parent, dst_dir_fd=parent,
                        follow_symlinks=False)
            else:
                mode = m.mode
                if mode is None:
                    given, create = False, m.create_mode
                else:  # given: created with its mode, nothing to change
                    given = plain is not None and not mode & keep
                    create = mode if given else 0o600
                fd = os.open(name, _NEW_FILE, create, dir_fd=parent)
                try:
                    data(step, fd)
                    if owners and m.uid is not None and m.gid is not None and \
                            (plain is None or (m.uid, m.gid) != (plain.uid, plain.gid)):
                        os.fchown(fd, m.uid, m.gid)
                    if mode is not None and not given:
                        os.fchmod(fd, mode)
                    if m.mtime is not None:
                        os.utime(fd, (m.mtime, m.mtime))
                finally:
                    os.close(fd)
        for parts in sorted(folders, key=len, reverse=True):
            m = folders[parts]
            fd = tree.dir_fd(parts)
            if not parts:  # the bundle's "./": the archive folder keeps its owner, and no write for others
                if m.mode is not None and (as_tar or m.mode):
                    own = os.fstat(fd)
                    _guard_archive_folder(fd, m.mode, own.st_uid, own.st_gid)
            else:
                if owners and m.uid is not None and m.gid is not None:
                    os.fchown(fd, m.uid, m.gid)
                if m.mode is not None and (as_tar or m.mode):
                    os.fchmod(fd, m.mode)
            if m.mtime is not None:
                os.utime(fd, (m.mtime, m.mtime))
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise _corrupt(label, bundle_type, e) from None
    finally:
        tree.close()


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class _Creation:
    umask: int
    uid: int
    gid: int


def _creation(folder_fd: int) -> _Creation | None:
    """What a new file in the folder open as ``folder_fd`` (or in a folder made under it) gets by
    itself: the mode asked for less ``umask``, owner ``uid``:``gid``. None where that cannot be told:
    the umask unreadable (no /proc), or a default ACL on the folder (it takes the umask's place, and
    folders made under it inherit it)."""
    try:
        with open("/proc/self/status", "rb") as f:
            umask = int(next(line for line in f if line.startswith(b"Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        os.getxattr(folder_fd, "system.posix_acl_default")
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
    else:
        return None
    st = os.fstat(folder_fd)
    # a setgid folder gives its group (and its setgid bit, to the folders made under it)
    return _Creation(umask, os.geteuid(), st.st_gid if st.st_mode & stat.S_ISGID else os.getegid())


def _is_real_dir(name: str, parent_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False
