"""The Install step (behaviour doc §6): replay the previous cleanup file, generate the instruction list
from the appspec's ``files`` and ``permissions`` with the agent's rules, write ``<dg>-install.json``,
execute the instructions while journaling into ``<dg>-cleanup``.

Owns: the instruction values and their install.json form (§3.2), generation (pure logic over the
read-only ``FsView`` seam), execution (copy/mkdir/chmod/chown/setfacl/semanage) and the cleanup journal.
Must not import the CLI, deploy, bundle or hooks modules.

Deliberate differences from agent 1.8.1 (documented for users): a directory symlink in the revision (or a
``files`` source) that resolves outside the revision is refused (UnsafeBundle) instead of copying a host
folder; ``acls``/``context`` are applied instead of crashing codedeploy-local (Q10), a context without
``range`` does not crash; setfacl/semanage/restorecon get an argv list, never a shell string (Q23).
Kept agent-exact although hazardous: copying onto an existing symlink (OVERWRITE, or a dangling link)
writes through it, possibly outside the destination tree.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable

from agent import permissions as perm
from agent import workers
from agent.appspec import AclEntry, AppSpec, Context, Permission
from agent.errors import (
    DeploymentError,
    EnvironmentProblem,
    FileCollision,
    UnsafeBundle,
)
from agent.fsutil import atomic_write
from agent.records import field, replace
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up

# shutil, subprocess, pwd and grp are imported where ACLs, SELinux contexts or owners by name need them:
# most deployments do without (start-up)

__all__ = [
    "AfterCleanupView",
    "Chmod",
    "Chown",
    "CleanupPreview",
    "Conflict",
    "Copy",
    "FsView",
    "Generator",
    "InstallSummary",
    "Instruction",
    "Mkdir",
    "Semanage",
    "Setfacl",
    "collision_message",
    "effective_file_exists_behavior",
    "execute_instructions",
    "expand_path",
    "generate_instructions",
    "install",
    "install_json",
    "invalid_behavior_message",
    "preview_cleanup",
    "read_cleanup",
    "run_cleanup",
]


# ----------------------------------------------------------------------------------------- instructions
# Each instruction's install.json form (§3.2), keys in the agent's order: TypedDicts for the type checker
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Literal, TypedDict

    class CopyJson(TypedDict):
        type: Literal["copy"]
        source: str
        destination: str

    class MkdirJson(TypedDict):
        type: Literal["mkdir"]
        directory: str

    class ChmodJson(TypedDict):
        type: Literal["chmod"]
        mode: str
        file: str

    class SetfaclJson(TypedDict):
        type: Literal["setfacl"]
        acl: list[str]
        file: str

    class ContextJson(TypedDict):
        user: str | None
        role: None
        type: str
        range: str | None

    class SemanageJson(TypedDict):
        type: Literal["semanage"]
        context: ContextJson
        file: str

    class ChownJson(TypedDict):
        type: Literal["chown"]
        owner: str | None
        group: str | None
        file: str

    InstructionJson = CopyJson | MkdirJson | ChmodJson | SetfaclJson | SemanageJson | ChownJson


@dataclass(frozen=True)
class Copy:
    source: str
    destination: str
    # the destination existed when the instruction was generated (OVERWRITE); not part of install.json
    replaces: bool = field(default=False, compare=False)

    def to_json(self) -> CopyJson:
        return {"type": "copy", "source": self.source, "destination": self.destination}


@dataclass(frozen=True)
class Mkdir:
    directory: str

    def to_json(self) -> MkdirJson:
        return {"type": "mkdir", "directory": self.directory}


@dataclass(frozen=True)
class Chmod:
    mode: str  # the normalised appspec string, applied as octal
    file: str

    def to_json(self) -> ChmodJson:
        return {"type": "chmod", "mode": self.mode, "file": self.file}


@dataclass(frozen=True)
class Setfacl:
    acl: tuple[AclEntry, ...]
    file: str
    # index of the permission entry: paths of one entry share the agent's accumulating ACL (Q9)
    entry: int = field(default=0, compare=False)

    def to_json(self) -> SetfaclJson:
        return {"type": "setfacl", "acl": [str(a) for a in self.acl], "file": self.file}


@dataclass(frozen=True)
class Semanage:
    context: Context
    file: str

    def to_json(self) -> SemanageJson:
        c = self.context
        return {"type": "semanage", "context": {"user": c.user, "role": None, "type": c.type, "range": c.range},
                "file": self.file}


@dataclass(frozen=True)
class Chown:
    owner: str | None
    group: str | None
    file: str

    def to_json(self) -> ChownJson:
        return {"type": "chown", "owner": self.owner, "group": self.group, "file": self.file}


Instruction = Copy | Mkdir | Chmod | Setfacl | Semanage | Chown


def install_json(instructions: Iterable[Instruction]) -> str:
    """``<dg>-install.json`` exactly as the agent writes it: one line, no trailing newline, key order kept.

    The text of ``json.dumps({"instructions": [i.to_json() for i in instructions]}, ensure_ascii=False,
    separators=(",", ":"))``, with copies and mkdirs (nearly every instruction) written directly with
    the string encoder json.dumps itself uses: no dict per instruction, about twice as fast."""
    text = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) encodes strings with
    parts = []
    for i in instructions:
        if type(i) is Copy:
            parts.append('{"type":"copy","source":' + text(i.source) + ',"destination":' + text(i.destination) + "}")
        elif type(i) is Mkdir:
            parts.append('{"type":"mkdir","directory":' + text(i.directory) + "}")
        else:
            parts.append(json.dumps(i.to_json(), ensure_ascii=False, separators=(",", ":")))
    return '{"instructions":[' + ",".join(parts) + "]}"


@dataclass(frozen=True)
class InstallSummary:
    """What an Install did, for events and reports."""

    files_copied: int = 0
    symlinks_created: int = 0
    dirs_created: int = 0
    permissions_applied: int = 0
    bytes_copied: int = 0
    cleanup_removed: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in self.__match_args__}  # flat: asdict's result


# ------------------------------------------------------------------------------------ filesystem seam

class FsView:
    """Read-only questions generation asks about the live filesystem (symlinks followed, as the agent's
    ``File.exist?``/``File.directory?``). agent.plan substitutes a view in which the paths the cleanup
    would remove are absent."""

    ABSENT, DIR, OTHER = 0, 1, 2

    def kind(self, path: str) -> int:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return self.ABSENT
        return self.DIR if stat.S_ISDIR(st.st_mode) else self.OTHER


# ------------------------------------------------------------------------------------------- cleanup

SEMANAGE_PREFIX = "semanage\0"
_STRIP = " \t\n\v\f\r\0"  # Ruby's String#strip set
_FS_UTF8 = sys.getfilesystemencoding() == "utf-8" and sys.getfilesystemencodeerrors() == "surrogateescape"


def read_cleanup(cleanup_path: str) -> list[str]:
    """The entries of a cleanup file in file order ([] if it does not exist). A last line without its
    ``\\n`` is a torn write and is discarded; lines are stripped; empty lines are dropped."""
    try:
        with open(cleanup_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1  # text after the last "\n": none when the file ends cleanly, else a torn entry
    if _FS_UTF8:
        # in UTF-8 a "\n" byte is never part of another character, so decoding the whole text and then
        # splitting it gives what decoding line by line gives (os.fsdecode of each), in one call
        lines = data[:end].decode("utf-8", "surrogateescape").split("\n")
    else:
        lines = [os.fsdecode(raw) for raw in data[:end].split(b"\n")]
    lines.pop()  # after the last "\n"
    return [s for line in lines if (s := line.strip(_STRIP)) and s != SEMANAGE_PREFIX]


def run_cleanup(cleanup_path: str, entries: list[str] | None = None) -> list[str]:
    """§6.2: undo what the previous Install of the group put down, in reverse order, then delete the
    cleanup file. Symlinks and files are unlinked, directories removed only when empty (kept silently
    otherwise), missing paths ignored, SELinux contexts removed with ``semanage fcontext -d`` when
    semanage exists (its result ignored). Returns the paths removed. ``entries``: the file's
    ``read_cleanup``, when the caller has read it already."""
    if entries is None:
        entries = read_cleanup(cleanup_path)
    removed: list[str] = []
    semanage = None
    if any(e.startswith(SEMANAGE_PREFIX) for e in entries):
        import shutil
        import subprocess

        semanage = shutil.which("semanage")
    for entry in reversed(entries):
        if entry.startswith(SEMANAGE_PREFIX):
            if semanage:
                subprocess.run([semanage, "fcontext", "-d", entry[len(SEMANAGE_PREFIX):]],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
            continue
        # Nearly every entry is a file: unlink it straight away (one system call, not lstat + unlink).
        # Any other outcome is decided below, exactly as before.
        try:
            os.unlink(entry)
            removed.append(entry)
            continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            pass
        try:
            st = os.lstat(entry)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            if stat.S_ISDIR(st.st_mode):
                try:
                    os.rmdir(entry)
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        continue  # something else lives there now: keep it, silently
                    raise
            else:
                os.unlink(entry)
        except OSError as e:
            raise DeploymentError(f"{e.strerror} @ cleanup - {entry}") from e
        removed.append(entry)
    try:
        os.unlink(cleanup_path)
    except FileNotFoundError:
        pass
    return removed


@dataclass(frozen=True)
class CleanupPreview:
    """What ``run_cleanup`` would do now, decided with the same rules, changing nothing."""

    removes: tuple[str, ...] = ()   # in removal order (reverse file order)
    keeps: tuple[str, ...] = ()     # directories that would still hold something
    contexts: tuple[str, ...] = ()  # SELinux contexts that would be removed


def preview_cleanup(cleanup_path: str, entries: list[str] | None = None) -> CleanupPreview:
    """``entries``: the file's ``read_cleanup``, when the caller has read it already."""
    removes: list[str] = []
    keeps: list[str] = []
    contexts: list[str] = []
    gone: set[str] = set()
    kinds = _EntryKinds()
    for entry in reversed(read_cleanup(cleanup_path) if entries is None else entries):
        if entry.startswith(SEMANAGE_PREFIX):
            contexts.append(entry[len(SEMANAGE_PREFIX):])
            continue
        is_dir = kinds.is_dir(entry)
        if is_dir is None:
            continue
        if entry in gone:
            continue
        if is_dir:
            children = kinds.children(entry)
            prefix = entry if entry.endswith("/") else entry + "/"  # os.path.join(entry, c), faster
            if any(prefix + c not in gone for c in children):
                keeps.append(entry)
                continue
        gone.add(entry)
        removes.append(entry)
    return CleanupPreview(tuple(removes), tuple(keeps), tuple(contexts))


class _EntryKinds:
    """``os.lstat(entry)`` reduced to: None (no such entry: FileNotFoundError or NotADirectoryError),
    True (a directory) or False (anything else), other errors raised as lstat raises them. For a
    journal of thousands of files, one ``scandir`` of each folder (the kernel's d_type, no stat) stands
    in for an lstat of each entry in it; entries that are not plain normalised absolute paths, and
    folders scandir cannot list, get lstat itself."""

    def __init__(self) -> None:
        self.folders: dict[str, dict[str, bool] | None] = {}  # None: the folder does not exist
        self.unlisted: set[str] = set()  # folders scandir could not list: lstat each entry

    def is_dir(self, entry: str) -> bool | None:
        folder, _, name = entry.rpartition("/")
        # a name longer than 255 bytes (encoded, a character is 4 bytes at most) is not in any listing
        if not folder or not name or name in (".", "..") or "//" in entry or "/./" in entry \
                or "/../" in entry or (len(name) > 63 and len(os.fsencode(name)) > 255):
            return self._lstat(entry)
        if folder not in self.folders and folder not in self.unlisted:
            self._scan(folder)
        if folder in self.unlisted:
            return self._lstat(entry)
        listing = self.folders[folder]
        return None if listing is None else listing.get(name)

    def children(self, folder: str) -> list[str]:
        """``os.listdir(folder)`` (``["?"]`` where it fails), from the scan when there was one."""
        listing = self.folders.get(folder)
        if listing is not None:
            return list(listing)
        try:
            return os.listdir(folder)
        except OSError:
            return ["?"]

    def _scan(self, folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                self.folders[folder] = {e.name: e.is_dir(follow_symlinks=False) for e in it}
        except (FileNotFoundError, NotADirectoryError):
            self.folders[folder] = None
        except OSError:
            self.unlisted.add(folder)  # e.g. a folder we may search but not read: lstat, as before

    @staticmethod
    def _lstat(entry: str) -> bool | None:
        try:
            return stat.S_ISDIR(os.lstat(entry).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return None


class AfterCleanupView(FsView):
    """The live filesystem as it will be once the given paths are removed (for agent.plan)."""

    def __init__(self, removed: Iterable[str]):
        self.removed = {os.path.normpath(p) for p in removed}

    def kind(self, path: str) -> int:
        if self.removed:
            p = os.path.normpath(path)
            while True:
                if p in self.removed:
                    return self.ABSENT
                parent = os.path.dirname(p)
                if parent == p:
                    break
                p = parent
        return super().kind(path)


# ---------------------------------------------------------------------------------------- generation

def effective_file_exists_behavior(appspec: AppSpec, cli_value: str | None) -> str:
    """§6.4: the appspec's value wins (case-sensitive, validated by the parser); else the CLI's,
    upper-cased and NOT validated here (an invalid value only fails on a conflict); else DISALLOW."""
    if appspec.file_exists_behavior is not None:
        return appspec.file_exists_behavior
    return (cli_value or "DISALLOW").upper()


def expand_path(path: str, cwd: str) -> str:
    """Ruby's ``File.expand_path``: ``~`` expanded, relative to ``cwd``, '.'/'..'/'//' resolved lexically,
    no trailing slash."""
    if path.startswith("~"):
        path = os.path.expanduser(path)
    p = os.path.normpath(os.path.join(cwd, path))
    if p.startswith("//"):
        p = "/" + p.lstrip("/")
    return p


def _dirname(path: str) -> str:
    """Ruby's ``File.dirname``: trailing slashes ignored, '.' for a bare name."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    d = os.path.dirname(stripped)
    if not d:
        return "."
    return d.rstrip("/") or "/"


def _collapse(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _within(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip("/") + "/")


def _check_journal_safe(path: str) -> None:
    """cdsim, not the agent: the cleanup journal holds one path a line, stripped (§3.2), so a path with a
    newline or ending in white space would be read back as another path, which the next Install's
    cleanup would delete (possibly outside the destination)."""
    if "\n" in path or path != path.rstrip(_STRIP):
        raise UnsafeBundle(f"cannot install {path!r}: it has a newline in its name or a name ending in "
                           "white space, which the cleanup journal could not name",
                           hint="rename the file in the bundle (or the destination in the appspec)")


@dataclass(frozen=True)
class Conflict:
    """A file this deployment would install where something already exists (what the behaviour decides)."""

    destination: str  # as the agent names it in its DISALLOW message
    source: str


class Generator:
    """One generation run. ``collect`` (used by agent.plan) records every conflict instead of stopping
    at the first DISALLOW one; everything else behaves as for a real Install."""

    def __init__(self, archive_dir: str, behavior: str, cwd: str, fs: FsView, collect: bool = False):
        # joined as given, slashes collapsed, nothing else normalised (the agent's File.join of root_dir)
        self.arch = _collapse(os.path.join(cwd, archive_dir)).rstrip("/") or "/"
        self.arch_real = os.path.realpath(self.arch)
        self.behavior = behavior
        self.cwd = cwd
        self.fs = fs
        self.collect = collect
        self.conflicts: list[Conflict] = []
        self.instructions: list[Instruction] = []
        self.copy_targets: dict[str, str] = {}      # destination -> source, insertion-ordered
        self.mkdir_targets: dict[str, None] = {}    # an ordered set
        self.permissioned: set[str] = set()

    # -- the live filesystem, through the raw (not expanded) strings as the agent checks them
    def _kind(self, raw: str) -> int:
        return self.fs.kind(raw if raw.startswith("/") else os.path.join(self.cwd, raw))

    # -- the instruction builder, with the duplicate/collision checks of §6.5
    def mkdir(self, directory: str) -> None:
        _check_journal_safe(directory)
        if directory in self.copy_targets:
            raise DeploymentError(
                f"The deployment failed because the application specification file includes an mkdir command "
                f"more than once for the same destination path ({directory}) from "
                f"({self.copy_targets[directory]}). Update the files section of the AppSpec file, and then "
                f"try again.")
        if directory not in self.mkdir_targets:
            self.mkdir_targets[directory] = None
            self.instructions.append(Mkdir(directory))

    def copy(self, source: str, destination: str, replaces: bool = False) -> None:
        _check_journal_safe(destination)
        previous = self.copy_targets.get(destination)
        if previous is not None:
            raise DeploymentError(
                f"The deployment failed because the application specification file specifies two source files "
                f"named {source} and {previous} for the same destination ({destination}). Remove one of the "
                f"source file paths from the AppSpec file, and then try again.")
        if destination in self.mkdir_targets:
            raise DeploymentError(
                f"The deployment failed because the application specification file calls for installing the "
                f"file {source}, but a file with that name already exists at the location ({destination}). "
                f"Update your AppSpec file or directory structure, and then try again.")
        self.copy_targets[destination] = source
        self.instructions.append(Copy(source, destination, replaces))

    # -- files (§6.3)
    def files(self, appspec: AppSpec) -> None:
        for mapping in appspec.files:
            src = _collapse(self.arch + "/" + mapping.source)
            if len(src) > 1:
                src = src.rstrip("/")
            raw = mapping.destination
            if os.path.isdir(src):
                real = os.path.realpath(src)
                if not _within(real, self.arch_real):
                    raise UnsafeBundle(
                        f"the files source {mapping.source} resolves to {real}, outside the revision; "
                        f"cdsim does not copy a folder from outside the revision (the agent would)",
                        hint="make the source a real folder inside the bundle")
                self.fill_missing_ancestors(raw)
                self.copy_directory(src, real, raw, expand_path(raw, self.cwd), fresh=False)
            else:
                parent_real = os.path.realpath(os.path.dirname(src))
                if not _within(parent_real, self.arch_real):
                    raise UnsafeBundle(
                        f"the files source {mapping.source} resolves to "
                        f"{os.path.join(parent_real, os.path.basename(src))}, outside the revision; "
                        f"cdsim does not copy files from outside the revision (the agent would)")
                target = raw.rstrip("/") + "/" + os.path.basename(src) if raw.rstrip("/") else \
                    "/" + os.path.basename(src)
                self.fill_missing_ancestors(target)
                self.copy_file(src, target, expand_path(target, self.cwd), fresh=False)

    def fill_missing_ancestors(self, raw: str) -> None:
        missing = []
        p = _dirname(raw)
        while p not in (".", "/") and self._kind(p) == FsView.ABSENT:
            missing.append(p)
            p = _dirname(p)
        for p in reversed(missing):
            self.mkdir(expand_path(p, self.cwd))

    def copy_directory(self, src: str, src_real: str, raw: str, dest: str, fresh: bool) -> None:
        # ``fresh``: an ancestor is not an existing directory, so nothing below exists either; this
        # saves one stat per installed path on a first install
        if fresh or self._kind(raw) != FsView.DIR:
            self.mkdir(dest)
            fresh = True
        with os.scandir(src) as it:
            for entry in it:
                name = entry.name
                s = src + "/" + name
                if entry.is_dir():  # follows symlinks: a link to a folder is materialised (Q7)
                    if entry.is_symlink():
                        real = os.path.realpath(s)
                        if not _within(real, self.arch_real):
                            raise UnsafeBundle(
                                f"the bundle's symbolic link {s[len(self.arch) + 1:]} points to {real}, "
                                f"outside the revision; cdsim does not copy a folder from outside the "
                                f"revision (the agent would)",
                                hint="replace the link with the files themselves, or a link to a file")
                        if _within(src_real, real):
                            raise UnsafeBundle(
                                f"the bundle's symbolic link {s[len(self.arch) + 1:]} points to {real}, "
                                f"one of its own parent folders: copying it would never end")
                    else:
                        real = src_real + "/" + name
                    self.copy_directory(s, real, raw + "/" + name, dest + "/" + name, fresh)
                elif fresh:  # nearly every file of a first install: self.copy_file's first case, inlined
                    self.copy(s, dest + "/" + name)
                else:
                    self.copy_file(s, raw + "/" + name, dest + "/" + name, fresh)

    def copy_file(self, src: str, raw: str, dest: str, fresh: bool) -> None:
        if fresh or self._kind(raw) == FsView.ABSENT:
            self.copy(src, dest)
            return
        behavior = self.behavior
        if self.collect:
            self.conflicts.append(Conflict(raw, src))
        if behavior == "OVERWRITE":
            self.copy(src, dest, replaces=True)
        elif behavior == "RETAIN":
            pass
        elif self.collect:
            pass  # the plan reports the failure; keep going to list every conflict
        elif behavior == "DISALLOW":
            raise FileCollision(collision_message(raw))
        else:
            raise DeploymentError(invalid_behavior_message(behavior))

    # -- permissions (§6.6)
    def permissions(self, appspec: AppSpec) -> None:
        for index, p in enumerate(appspec.permissions):
            obj = expand_path(p.object, self.cwd)
            if obj in self.copy_targets:
                if "file" in p.types:
                    perm.check_file_object(p)
                    perm.check_file_acl(p)
                    self.set_permissions(obj, p, index)
            elif obj in self.mkdir_targets or self._kind(p.object) == FsView.DIR:
                matches = []
                if "file" in p.types:
                    for target in self.copy_targets:
                        if perm.classify(target, obj, p.pattern, p.except_) == perm.MATCH:
                            perm.check_file_acl(p)
                            matches.append(target)
                if "directory" in p.types:
                    matches.extend(d for d in self.mkdir_targets
                                   if perm.classify(d, obj, p.pattern, p.except_) == perm.MATCH)
                for m in matches:
                    self.set_permissions(m, p, index)

    def set_permissions(self, path: str, p: Permission, index: int) -> None:
        if path in self.permissioned:
            raise DeploymentError(perm.specified_twice_message(path))
        self.permissioned.add(path)
        if p.mode is not None:
            self.instructions.append(Chmod(p.mode, path))
        if p.acls is not None:
            self.instructions.append(Setfacl(p.acls, path, index))
        if p.context is not None:
            self.instructions.append(Semanage(p.context, path))
        if p.owner is not None or p.group is not None:
            self.instructions.append(Chown(p.owner, p.group, path))


def collision_message(path: str) -> str:
    return f"The deployment failed because a specified file already exists at this location: {path}"


def invalid_behavior_message(value: str) -> str:
    return (f"The deployment failed because an invalid option was specified for fileExistsBehavior: {value}. "
            f"Valid options include OVERWRITE, RETAIN, and DISALLOW.")


def generate_instructions(appspec: AppSpec, archive_dir: str, file_exists_behavior: str,
                          cwd: str | None = None, fs: FsView | None = None) -> list[Instruction]:
    """§6.3-6.6: the instruction list for ``appspec`` over the unpacked revision ``archive_dir``, judged
    against the live filesystem (``fs``). Raises FileCollision (DISALLOW), DeploymentError (§6.5, §6.6,
    invalid behaviour on a conflict) and UnsafeBundle (a folder link out of the revision)."""
    gen = Generator(archive_dir, file_exists_behavior, cwd or os.getcwd(), fs or FsView())
    gen.files(appspec)
    gen.permissions(appspec)
    return gen.instructions


# ----------------------------------------------------------------------------------------- execution

# Copies whose journal lines are written together. The cleanup file is an append-only journal: a
# copy's line must be on disk before the copy starts (so a crash never leaves an installed file that no
# cleanup knows about). Writing the lines of the next COPY_BATCH copies in one write(2) keeps that
# invariant with one system call per batch instead of one per file. A failure truncates the journal back
# to the failing copy's line, so the file then holds exactly what the agent's would. A copy that
# replaces an existing file starts a batch of its own: after a crash the journal never names a file that
# was about to be overwritten but was not yet (the next cleanup would delete a file we never touched).
# mkdir lines come after the mkdir succeeds (a failed mkdir must not list the path: it may be a file
# that belongs to someone else) and are written no later than the next copy batch or the end.
COPY_BATCH = 128
# A run of folders and new files with this many copies at least shares its copies with forked workers
# on a machine with more than one CPU (agent.workers): two processes copy 20,000 small files in about half the time.
SHARED_MIN = 2 * workers.MIN_PER_PART
_S_IFMT, _S_IFREG = 0o170000, stat.S_IFREG  # stat.S_IFMT(mode) == S_IFREG, without the call
_READ = os.O_RDONLY | os.O_CLOEXEC
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


class _Executor:
    def __init__(self, journal_fd: int, progress: Callable[[int, int], None] | None, processes: int | None = 1):
        self.fd = journal_fd
        self.workers = processes  # None: workers.available(), asked when a run is long enough to share
        self.size = 0            # bytes written to the journal
        self.pending: list[bytes] = []
        self.progress = progress
        self.is_root = os.geteuid() == 0
        self.files = self.links = self.dirs = self.perms = self.bytes = 0
        self.acls: dict[int, perm.AclAccumulator] = {}
        self.users: dict[str, int] = {}
        self.groups: dict[str, int] = {}

    def flush(self) -> None:
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending.clear()
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def run(self, instructions: list[Instruction]) -> None:
        n = len(instructions)
        shared = self._shared_runs(instructions) if self.workers is None or self.workers > 1 else []
        i = 0
        try:
            for start, stop in shared:
                self._run_in_order(instructions, i, start, n)
                self._run_shared(instructions, start, stop, n)
                i = stop
            self._run_in_order(instructions, i, n, n)
        finally:
            self.flush()
        if self.progress:
            self.progress(n, n)

    def _run_in_order(self, instructions: list[Instruction], i: int, stop: int, n: int) -> None:
        while i < stop:
            ins = instructions[i]
            if type(ins) is Copy:
                batch = [ins]
                if not ins.replaces:
                    limit = min(stop, i + COPY_BATCH)
                    j = i + 1
                    while j < limit:
                        nxt = instructions[j]
                        if type(nxt) is not Copy or nxt.replaces:
                            break
                        batch.append(nxt)
                        j += 1
                lines = [c.destination + "\n" for c in batch]
                block = os.fsencode("".join(lines))  # the batch's lines, encoded at once
                self.pending.append(block)
                self.flush()
                for k, c in enumerate(batch):
                    try:
                        self.copy(c)
                    except BaseException:
                        # the agent's journal ends with the failing copy's line
                        end = self.size - len(block) + len(os.fsencode("".join(lines[:k + 1])))
                        os.ftruncate(self.fd, end)
                        self.size = end
                        raise
                i += len(batch)
                if self.progress:
                    self.progress(i, n)
                continue
            if type(ins) is Mkdir:
                self.mkdir(ins.directory)
                self.pending.append(os.fsencode(ins.directory) + b"\n")
            else:
                self.flush()
                self.permission(ins)
            i += 1

    @staticmethod
    def _shared_runs(instructions: list[Instruction]) -> list[tuple[int, int]]:
        """The [start, stop) runs of folders and new files (copies that replace nothing) holding
        SHARED_MIN copies at least: their copies do not depend on each other's order."""
        runs = []
        start = copies = 0
        for i, ins in enumerate(instructions):
            kind = type(ins)
            if kind is Copy and not ins.replaces:  # type: ignore[union-attr]
                copies += 1
            elif kind is not Mkdir:
                if copies >= SHARED_MIN:
                    runs.append((start, i))
                start, copies = i + 1, 0
        if copies >= SHARED_MIN:
            runs.append((start, len(instructions)))
        return runs

    def _run_shared(self, instructions: list[Instruction], start: int, stop: int, n: int) -> None:
        """Folders and new files, the copies shared with forked workers (agent.workers), ending as going in
        order would: the folders first (a copy needs its folder), then the run's journal lines in
        instruction order in one write, then the copies. After a failure the copies past the first
        failing one are removed, the folders made after it too, and the journal is cut after its
        line: what the agent leaves when that copy fails. A folder that cannot be made sends the run
        down the ordered path, which meets the failure where the agent does."""
        if self.workers is None:
            self.workers = workers.available()
        if self.workers <= 1:
            self._run_in_order(instructions, start, stop, n)
            return
        run = instructions[start:stop]
        made: list[str] = []
        for ins in run:
            if type(ins) is Mkdir:
                try:
                    os.mkdir(ins.directory)
                except OSError:
                    for d in reversed(made):
                        _remove_quietly(os.rmdir, d)
                    self._run_in_order(instructions, start, stop, n)
                    return
                made.append(ins.directory)
        self.dirs += len(made)
        self.flush()
        lines = [os.fsencode(ins.directory if type(ins) is Mkdir else ins.destination) + b"\n"  # type: ignore[union-attr]
                 for ins in run]
        base = self.size
        self.pending.append(b"".join(lines))
        self.flush()
        where = [p for p, ins in enumerate(run) if type(ins) is Copy]
        copies: list[Copy] = [run[p] for p in where]  # type: ignore[misc]
        before = (self.files, self.links, self.bytes)
        ranges = workers.split(len(copies), self.workers)
        own, share = ranges[0][1], len(ranges)
        progress = self.progress

        def copy(k: int) -> None:
            self.copy(copies[k])
            if progress and k < own and k % COPY_BATCH == COPY_BATCH - 1:
                # this process's part, the first: the workers are taken to be as far into theirs
                progress(start + min(len(run), (where[k] + 1) * share), n)

        parts = workers.run_parts(len(copies), copy, self.workers, lambda: (self.files, self.links, self.bytes))
        for part in parts[1:]:
            if isinstance(part.tally, tuple):
                self.files += part.tally[0] - before[0]
                self.links += part.tally[1] - before[1]
                self.bytes += part.tally[2] - before[2]
        failed = [part for part in parts if part.error is not None]
        if failed:
            first = min(failed, key=lambda part: part.done)
            k = first.done
            for c in copies[k + 1:]:
                _remove_quietly(os.unlink, c.destination)
            for ins in reversed(run[where[k] + 1:]):
                if type(ins) is Mkdir:
                    _remove_quietly(os.rmdir, ins.directory)
            end = base + sum(len(line) for line in lines[:where[k] + 1])
            os.ftruncate(self.fd, end)
            self.size = end
            error = first.error
            if isinstance(error, workers.WorkerLost):
                raise DeploymentError(f"{error} @ copy - {copies[k].destination}")
            raise error  # type: ignore[misc]
        if self.progress:
            self.progress(stop, n)

    def mkdir(self, path: str) -> None:
        try:
            os.mkdir(path)
        except OSError as e:
            raise DeploymentError(f"{e.strerror} @ dir_s_mkdir - {path}") from e
        self.dirs += 1

    def copy(self, ins: Copy) -> None:
        src, dst = ins.source, ins.destination
        try:
            st = os.lstat(src)
        except OSError as e:
            raise DeploymentError(f"{e.strerror} @ rb_sysopen - {src}") from e
        mode = st.st_mode
        if mode & _S_IFMT != _S_IFREG:
            if stat.S_ISLNK(mode):
                try:
                    os.symlink(os.readlink(src), dst)
                except OSError as e:
                    raise DeploymentError(f"{e.strerror} @ syserr_fail2_in - {dst}") from e
                self.links += 1
                return
            raise DeploymentError(f"cannot install {src}: not a regular file or a symbolic link")
        try:
            fin = os.open(src, _READ)
        except OSError as e:
            raise DeploymentError(f"{e.strerror} @ rb_sysopen - {src}") from e
        try:
            try:
                # an existing symlink is followed (written through), as the agent's File.open does
                fout = os.open(dst, _WRITE, 0o600)
            except IsADirectoryError:
                # copying onto an existing directory copies into it (FileUtils.copy)
                dst = dst + "/" + os.path.basename(src)
                try:
                    fout = os.open(dst, _WRITE, 0o600)
                except OSError as e:
                    raise DeploymentError(f"{e.strerror} @ rb_sysopen - {dst}") from e
            except OSError as e:
                raise DeploymentError(f"{e.strerror} @ rb_sysopen - {dst}") from e
            try:
                size = st.st_size
                done = os.sendfile(fout, fin, None, size) if size else 0
                while done < size:  # a short copy (a large file): the rest, until the end of the file
                    sent = os.sendfile(fout, fin, None, size - done)
                    if sent == 0:
                        break
                    done += sent
                perms = mode & 0o7777
                if self.is_root:
                    os.fchown(fout, st.st_uid, st.st_gid)
                else:
                    try:
                        os.fchown(fout, st.st_uid, st.st_gid)
                    except PermissionError:
                        perms &= 0o1777  # may not give the file away: drop setuid/setgid
                os.fchmod(fout, perms)
                os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
            except OSError as e:
                raise DeploymentError(f"{e.strerror} @ copy - {dst}") from e
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        self.files += 1
        self.bytes += done

    def permission(self, ins: Instruction) -> None:
        if type(ins) is Chmod:
            try:
                os.chmod(ins.file, int(ins.mode, 8))
            except OSError as e:
                raise DeploymentError(f"{e.strerror} @ apply2files - {ins.file}") from e
        elif type(ins) is Chown:
            uid = self._uid(ins.owner) if ins.owner is not None else -1
            gid = self._gid(ins.group) if ins.group is not None else -1
            try:
                os.chown(ins.file, uid, gid)
            except OSError as e:
                raise DeploymentError(f"{e.strerror} @ apply2files - {ins.file}") from e
        elif type(ins) is Setfacl:
            self.setfacl(ins)
        elif type(ins) is Semanage:
            self.semanage(ins)
        self.perms += 1

    def _uid(self, name: str) -> int:
        if name not in self.users:
            try:
                import pwd

                self.users[name] = pwd.getpwnam(name).pw_uid
            except KeyError:
                raise DeploymentError(f"can't find user for {name}") from None
        return self.users[name]

    def _gid(self, name: str) -> int:
        if name not in self.groups:
            try:
                import grp

                self.groups[name] = grp.getgrnam(name).gr_gid
            except KeyError:
                raise DeploymentError(f"can't find group for {name}") from None
        return self.groups[name]

    def setfacl(self, ins: Setfacl) -> None:
        import shutil
        import subprocess

        setfacl = shutil.which("setfacl")
        if not setfacl:
            raise EnvironmentProblem("acls need setfacl (Debian/Ubuntu: apt-get install acl)",
                                     hint=f"the appspec sets an ACL on {ins.file}")
        try:
            mode = os.stat(ins.file).st_mode
        except OSError as e:
            raise DeploymentError(f"{e.strerror} @ rb_file_s_stat - {ins.file}") from e
        acl = self.acls.setdefault(ins.entry, perm.AclAccumulator()).next_acl(ins.acl, mode)
        proc = subprocess.run([setfacl, "--set", perm.acl_text(perm.effective(acl)), ins.file],
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if proc.returncode != 0:
            raise DeploymentError(
                f"The deployment failed because of a problem with the acls permission settings in the "
                f"application specification file for this object: {ins.file}. Failed command: setfacl --set "
                f"{perm.acl_text(acl)} {ins.file}. Exit code: {proc.returncode}",
                hint=os.fsdecode(proc.stderr).strip() or None)

    def semanage(self, ins: Semanage) -> None:
        import shutil
        import subprocess

        semanage, restorecon = shutil.which("semanage"), shutil.which("restorecon")
        if not (semanage and restorecon):
            raise EnvironmentProblem(
                "SELinux contexts (permissions `context:`) need semanage and restorecon on an SELinux "
                "system (RHEL/Fedora: dnf install policycoreutils-python-utils; Debian/Ubuntu: apt-get "
                "install policycoreutils policycoreutils-python-utils)",
                hint=f"the appspec sets a context on {ins.file}")
        real = os.path.realpath(ins.file)
        c = ins.context
        argv = ["semanage", "fcontext", "-a"] + (["-s", c.user] if c.user else []) + ["-t", c.type] + \
            (["-r", c.range] if c.range else []) + [real]
        for cmd in (argv, ["restorecon", "-v", real]):
            exe = semanage if cmd[0] == "semanage" else restorecon
            proc = subprocess.run([exe, *cmd[1:]], stdin=subprocess.DEVNULL, capture_output=True, check=False)
            if proc.returncode != 0:
                raise DeploymentError(
                    f"The deployment failed because the application specification file contains an error in "
                    f"the settings for the context parameter. Update the permissions section of the AppSpec "
                    f"file, and then try again. Failed command: {' '.join(cmd)}. Exit code: {proc.returncode}",
                    hint=os.fsdecode(proc.stderr).strip() or None)
        self.pending.append(b"semanage\0" + os.fsencode(real) + b"\n")
        self.flush()


def _remove_quietly(remove: Callable[[str], None], path: str) -> None:
    try:
        remove(path)
    except OSError:
        pass


def execute_instructions(instructions: list[Instruction], cleanup_path: str, *,
                         progress: Callable[[int, int], None] | None = None,
                         processes: int | None = None) -> InstallSummary:
    """§6.7: run ``instructions`` in order, journaling into a new ``cleanup_path`` (truncated first).
    ``progress(done, total)`` is called after each batch of copies. ``processes``: how many processes
    share the copies of long runs of new files (default: ``workers.available()``); the outcome, the
    journal included, is the same for any number."""
    start = time.monotonic()
    fd = os.open(cleanup_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    ex = _Executor(fd, progress, processes)
    try:
        ex.run(list(instructions))
    finally:
        os.close(fd)
    return InstallSummary(files_copied=ex.files, symlinks_created=ex.links, dirs_created=ex.dirs,
                          permissions_applied=ex.perms, bytes_copied=ex.bytes,
                          elapsed_s=time.monotonic() - start)


def install(appspec: AppSpec, archive_dir: str, instructions_dir: str, group_id: str,
            cli_file_exists_behavior: str | None, *, cwd: str | None = None,
            progress: Callable[[int, int], None] | None = None, processes: int | None = None) -> InstallSummary:
    """The Install step (§6.1): cleanup → generate → write install.json → execute.

    cdsim generates the instructions *before* the cleanup, against the filesystem as the cleanup will
    leave it (the same view ``cdsim plan`` uses), so a refused Install (a collision, a duplicate
    destination, a bad permission entry) changes nothing: the previous deployment's files and its
    cleanup file stay (the agent has already removed and forgotten them, Q13). A successful Install
    ends exactly as the agent's.
    """
    start = time.monotonic()
    os.makedirs(instructions_dir, exist_ok=True)
    cleanup_path = os.path.join(instructions_dir, f"{group_id}-cleanup")
    behavior = effective_file_exists_behavior(appspec, cli_file_exists_behavior)
    entries = read_cleanup(cleanup_path)  # read once, for the preview and the cleanup itself
    instructions = generate_instructions(appspec, archive_dir, behavior, cwd,
                                         fs=AfterCleanupView(preview_cleanup(cleanup_path, entries).removes))
    removed = run_cleanup(cleanup_path, entries)
    atomic_write(os.path.join(instructions_dir, f"{group_id}-install.json"), install_json(instructions))
    summary = execute_instructions(instructions, cleanup_path, progress=progress, processes=processes)
    return replace(summary, cleanup_removed=len(removed), elapsed_s=time.monotonic() - start)

