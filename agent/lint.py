"""``cdsim validate``'s findings: every problem of an appspec and its bundle, at once.

Owns the list of checks (errors: what makes the agent fail the deployment; warnings: what it accepts
but surprises users) and the Finding record. Dispatches by compute platform: an Amazon ECS or AWS Lambda
appspec (no os, a Resources section) is checked by agent.appspec_platforms instead, and has no bundle.
Reads the bundle (a directory, or an archive's member listing and member contents in memory — never
extracted to disk) and the appspec; never writes.
Must not import the CLI, install, deploy or hooks_runtime.
"""
from __future__ import annotations

import difflib
import os
import posixpath
import re
import stat
from dataclasses import asdict, dataclass

from agent import appspec as A
from agent import lifecycle, ruby
from agent.errors import AppSpecError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    import tarfile
    import zipfile
    from typing import Protocol

    class _Tree(Protocol):
        """What validation reads of a bundle: a directory (_DirTree) or an archive (_ArchiveTree)."""

        display: str

        def shown(self, rel: str) -> str: ...

        def entry(self, rel: str) -> _Entry | None: ...

        def read(self, rel: str, limit: int) -> bytes: ...

        def files_under(self, rel: str) -> tuple[list[str], list[str]]: ...


EVENT_TIMEOUT_LIMIT = 3600          # the service's limit per lifecycle event (§5.5)
MAX_BUNDLE_ENTRIES = 200_000        # bounds the walk of a hostile bundle
SCRIPT_HEAD_BYTES = 512             # enough for the #! line

TOP_KEYS = ("version", "os", "files", "permissions", "hooks", "file_exists_behavior")
SCRIPT_KEYS = ("location", "timeout", "runas", "sudo")
FILE_KEYS = ("source", "destination")
PERMISSION_KEYS = ("object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context")
CONTEXT_KEYS = ("name", "type", "range")
# keys from tutorials and other tools that the agent silently ignores, with what was meant
KNOWN_MISTAKES = {
    "overwrite": "file_exists_behavior: OVERWRITE (a top-level key)",
    "file_mode": "a permissions entry with mode:",
    "mode": "a permissions entry with mode:",
    "owner": "a permissions entry with owner:",
    "runas": "runas: on each script of a hook",
    "timeout": "timeout: on each script of a hook",
}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class Finding:
    """One problem: severity 'error' (the deployment fails) or 'warning' (it surprises)."""

    severity: str
    code: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, str | int | None]:
        return asdict(self)

    def location(self) -> str:
        parts = [self.file or "-"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def render(self) -> str:
        """``FILE:LINE:COL: error: MESSAGE [code]`` and, when there is one, ``  hint: ...``."""
        text = f"{self.location()}: {self.severity}: {self.message} [{self.code}]"
        return text + (f"\n  hint: {self.hint}" if self.hint else "")


def _from_error(e: AppSpecError, severity: str = "error") -> Finding:
    return Finding(severity, e.code or e.reference, e.message, e.file, e.line, e.column, e.hint)


# ---------------------------------------------------------------------------------------------------
# The bundle: one interface over a directory and an archive's listing


@dataclass(frozen=True)
class _Entry:
    kind: str          # file | dir | link | other
    mode: int          # permission bits
    size: int


class _BundleError(Exception):
    """The bundle itself cannot be read; becomes a single error finding."""

    def __init__(self, code: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


class _DirTree:
    def __init__(self, root: str):
        self.root = root
        self.display = root.rstrip("/") or "/"

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def shown(self, rel: str) -> str:
        return os.path.join(self.display, rel) if rel else self.display

    def entry(self, rel: str) -> _Entry | None:
        try:
            st = os.stat(self.path(rel))  # the agent follows symlinks
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            return _Entry("other", 0, 0)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        return _Entry(kind, stat.S_IMODE(st.st_mode), st.st_size)

    def read(self, rel: str, limit: int) -> bytes:
        with open(self.path(rel), "rb") as f:
            return f.read(limit)

    def files_under(self, rel: str) -> tuple[list[str], list[str]]:
        """(non-directory paths, directory paths) below ``rel``, relative to it."""
        files: list[str] = []
        dirs: list[str] = []
        base = self.path(rel)
        seen = {os.path.realpath(base)}
        for top, dnames, fnames in os.walk(base, followlinks=True):
            reltop = os.path.relpath(top, base)
            # a link to an enclosing folder would be walked without end (the bundle check names it)
            real = [(d, os.path.realpath(os.path.join(top, d))) for d in dnames]
            dnames[:] = [d for d, r in real if r not in seen]
            seen.update(r for _d, r in real)
            for d in dnames:
                dirs.append(os.path.normpath(os.path.join(reltop, d)))
            for f in fnames:
                files.append(os.path.normpath(os.path.join(reltop, f)))
            if len(files) + len(dirs) > MAX_BUNDLE_ENTRIES:
                break
        return files, dirs


class _ArchiveTree:
    """An archive's members, read in memory; the top folder stripped as the agent does (§4.5)."""

    def __init__(self, path: str):
        self.display = path
        self.entries: dict[str, _Entry] = {}
        self.members: dict[str, zipfile.ZipInfo | tarfile.TarInfo] = {}
        self.prefix = ""
        lower = path.lower()
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise _BundleError("bundle-unreadable", f"cannot read {path}: {e.strerror}") from None
        self.is_zip = lower.endswith(".zip") or magic.startswith(b"PK")
        if self.is_zip:
            self._load_zip(path)
        else:
            self._load_tar(path)
        self._strip_top_folder()

    def _add(self, name: str, entry: _Entry, member: zipfile.ZipInfo | tarfile.TarInfo) -> None:
        name = posixpath.normpath(name.lstrip("/"))
        if name in (".", "") or name.startswith("../"):
            return
        self.entries[name] = entry
        self.members[name] = member
        parent = posixpath.dirname(name)
        while parent and parent not in self.entries:
            self.entries[parent] = _Entry("dir", 0o755, 0)
            parent = posixpath.dirname(parent)
        if len(self.entries) > MAX_BUNDLE_ENTRIES:
            raise _BundleError("bundle-too-large", f"{self.display} has more than {MAX_BUNDLE_ENTRIES} entries")

    def _load_zip(self, path: str) -> None:
        import zipfile

        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise _BundleError(
                "bundle-invalid", f"{path} is not a zip archive ({e}); the agent fails with \"Zip end of "
                "central directory signature not found\"",
                hint="rebuild the bundle with zip, or give the bundle's real type") from None
        with self._zip:
            for info in self._zip.infolist():
                mode = (info.external_attr >> 16) & 0xFFFF
                kind = ("dir" if info.is_dir() else "link" if stat.S_ISLNK(mode) else "file")
                # zips made without Unix attributes: unzip gives files 0644-like modes
                perm = stat.S_IMODE(mode) if mode else 0o644
                self._add(info.filename, _Entry(kind, perm, info.file_size), info)

    def _load_tar(self, path: str) -> None:
        import tarfile

        try:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    kind = ("dir" if m.isdir() else "link" if (m.issym() or m.islnk())
                            else "file" if m.isfile() else "other")
                    self._add(m.name, _Entry(kind, m.mode & 0o7777, m.size), m)
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise _BundleError(
                "bundle-invalid", f"{path} is not a tar archive ({e}); the agent fails with \"Error "
                "extracting tar archive: 2\"", hint="rebuild the bundle with tar, or give its real type") from None
        self._tar_path = path

    def _strip_top_folder(self) -> None:
        tops = {n.split("/", 1)[0] for n in self.entries}
        if len(tops) != 1:
            return
        top = next(iter(tops))
        if self.entries[top].kind != "dir":
            return
        children = [n[len(top) + 1:] for n in self.entries if n.startswith(top + "/") and "/" not in n[len(top) + 1:]]
        if any("appspec" in c.lower() for c in children):
            self.prefix = top + "/"

    def shown(self, rel: str) -> str:
        return f"{self.display}!{rel}"

    def entry(self, rel: str) -> _Entry | None:
        rel = posixpath.normpath(self.prefix + rel) if rel else self.prefix.rstrip("/")
        if rel in ("", "."):
            return _Entry("dir", 0o755, 0)
        return self.entries.get(rel)

    def read(self, rel: str, limit: int) -> bytes:
        name = posixpath.normpath(self.prefix + rel)
        member = self.members[name]
        import tarfile
        import zipfile

        if isinstance(member, zipfile.ZipInfo):
            with zipfile.ZipFile(self.display) as zf, zf.open(member) as f:
                return f.read(limit)
        with tarfile.open(self._tar_path, "r:*") as tf:
            extracted = tf.extractfile(member)
            if extracted is None:
                raise OSError("not a regular file")
            with extracted:
                return extracted.read(limit)

    def files_under(self, rel: str) -> tuple[list[str], list[str]]:
        base = posixpath.normpath(self.prefix + rel) if rel else self.prefix.rstrip("/")
        start = base + "/" if base not in ("", ".") else ""
        files: list[str] = []
        dirs: list[str] = []
        for name, e in self.entries.items():
            if name.startswith(start) and name != base:
                (dirs if e.kind == "dir" else files).append(name[len(start):])
        return files, dirs


# ---------------------------------------------------------------------------------------------------
# Validation


class _Lint:
    def __init__(self, appspec_filename: str | None):
        self.option = appspec_filename
        self.findings: list[Finding] = []

    def add(self, severity: str, code: str, message: str, file: str | None = None,
            mark: A.Mark | None = None, hint: str | None = None) -> None:
        self.findings.append(Finding(severity, code, message, file, mark.line if mark else None,
                                     mark.column if mark else None, hint))

    # -- where the appspec is
    def open_bundle(self, path: str) -> tuple[_Tree, str | None, bool] | None:
        """(tree, appspec name to read, True if the bundle is a directory) or None after a finding."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            kind = "a dangling symbolic link" if os.path.islink(path) else "no such file or directory"
            self.add("error", "bundle-not-found", f"{kind}", path)
            return None
        except OSError as e:
            self.add("error", "bundle-unreadable", f"cannot read it: {e.strerror}", path)
            return None
        if stat.S_ISDIR(st.st_mode):
            if not os.access(path, os.R_OK | os.X_OK):
                self.add("error", "bundle-unreadable", "permission denied", path)
                return None
            return _DirTree(path), None, True
        if not stat.S_ISREG(st.st_mode):
            self.add("error", "bundle-invalid", "not a regular file, a directory or an archive", path,
                     hint="give a bundle directory, a zip/tar/tgz bundle or an appspec file")
            return None
        if not os.access(path, os.R_OK):
            self.add("error", "bundle-unreadable", "permission denied", path)
            return None
        if self._is_archive(path):
            try:
                return _ArchiveTree(path), None, False
            except _BundleError as e:
                self.add("error", e.code, e.message, path, hint=e.hint)
                return None
        # an appspec file: its folder is the bundle
        return _DirTree(os.path.dirname(path) or "."), os.path.basename(path), True

    @staticmethod
    def _is_archive(path: str) -> bool:
        if path.lower().endswith(ARCHIVE_SUFFIXES):
            return True
        try:
            with open(path, "rb") as f:
                head = f.read(262)
        except OSError:
            return False
        return head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ")) or head[257:262] == b"ustar"

    def locate(self, tree: _Tree, given: str | None, is_dir: bool) -> tuple[str | None, str | None]:
        """(name Install reads, name the hooks read), adding the not-found findings (§1.3 rule 7, §4.6).
        ``given``: the appspec file named on the command line, read whatever its name."""
        if given:
            install = given
            hook_name = A.hook_appspec_name(self.option or (None if given == "appspec.yaml" else given))
        else:
            option = self.option
            hook_name = A.hook_appspec_name(option)
            if is_dir:  # codedeploy-local's validator checks a directory bundle first
                names = (option,) if option else ("appspec.yml", "appspec.yaml")
                if not any(tree.entry(n) for n in names):
                    hint = "AppSpec file names are case-sensitive" if self._case_twin(tree, names) else None
                    if hint is None and not option and tree.entry("appspec.json"):
                        hint = ("an Amazon ECS or AWS Lambda appspec may be JSON: name the file, cdsim validate "
                                f"{tree.shown('appspec.json')}")
                    self.add("error", "appspec-not-found", A.cli_appspec_not_found_message(tree.display, option),
                             tree.display, hint=hint)
                    return None, None
            found = next((n for n in A.install_appspec_candidates(option) if tree.entry(n)), None)
            if found is None:
                self.add("error", "appspec-not-found", A.appspec_not_found_message(hook_name, "<deployment>"),
                         tree.shown(hook_name), hint=("AppSpec file names are case-sensitive"
                                                      if self._case_twin(tree, (hook_name,)) else None))
                return None, None
            install = found
        if tree.entry(hook_name) is None:
            self.add("error", "appspec-yaml-without-yml",
                     A.appspec_not_found_message(hook_name, "<deployment>"), tree.shown(install),
                     hint=f"Install reads {install} but every hook event looks only for {hook_name}: rename "
                          f"it to {hook_name}, or pass --appspec-filename {install} to cdsim local")
        return install, hook_name

    @staticmethod
    def _case_twin(tree: _Tree, names: tuple[str, ...]) -> bool:
        files, _ = tree.files_under("")
        return any(f.lower() in names and f not in names for f in files if "/" not in f)

    # -- the appspec
    def read_appspec(self, tree: _Tree, name: str) -> bytes | None:
        """The appspec's bytes, or None after a finding."""
        shown = tree.shown(name)
        e = tree.entry(name)
        if e is None or e.kind == "other":
            self.add("error", "appspec-unreadable", f"{name} is not a regular file", shown)
            return None
        if e.kind == "dir":
            self.add("error", "appspec-is-directory", f"{name} is a directory, not a file (the agent fails "
                     f"with \"Is a directory @ io_fread\")", shown)
            return None
        if e.size > A.MAX_APPSPEC_BYTES:
            self.add("error", "appspec-too-large", f"the appspec is {e.size} bytes, more than the "
                     f"{A.MAX_APPSPEC_BYTES} bytes cdsim reads", shown,
                     hint="an appspec is a small YAML file; is this the right file?")
            return None
        try:
            return tree.read(name, A.MAX_APPSPEC_BYTES + 1)
        except OSError as err:
            self.add("error", "appspec-unreadable", f"cannot read {name}: {err.strerror or err}", shown)
            return None

    def check_platform_appspec(self, data: bytes, shown: str) -> bool:
        """An Amazon ECS or AWS Lambda appspec (agent.appspec_platforms): add its findings, drop the
        EC2 agent's file-name finding (the service takes these appspecs by content) and return True;
        False for an EC2/On-Premises appspec."""
        from agent import appspec_platforms as P

        platform, _spec, problems = P.platform_problems(data, shown)
        if platform is None:
            return False
        self.findings = [f for f in self.findings if f.code != "appspec-yaml-without-yml"]
        for p in problems:
            self.add(p.severity, p.code, p.message, shown, p.mark, p.hint)
        return True

    def check_appspec(self, tree: _Tree, name: str, data: bytes | None = None
                      ) -> tuple[A.AppSpec | None, A.Node | None]:
        """(the appspec as far as it parsed, its document), adding the findings about it."""
        shown = tree.shown(name)
        if data is None:
            data = self.read_appspec(tree, name)
            if data is None:
                return None, None
        root, spec, problems = A.appspec_problems(data, shown)
        for p in problems:
            self.findings.append(_from_error(p))
        if root is not None:
            self.yaml_warnings(root, shown)
        return spec, root

    def yaml_warnings(self, root: A.Node, shown: str) -> None:
        self._duplicates(root, shown)
        self._base60(root, shown)
        if root.id != "mapping":
            return
        top = A.mapping_entries(root, shown)
        self._unknown_keys(top, TOP_KEYS, "the appspec", shown, top_level=True)
        hooks = top.get(("str", "hooks"))
        if hooks and hooks[1].id == "mapping":
            for _k, scripts, _name in A.mapping_entries(hooks[1], shown).values():
                if scripts.id != "sequence":
                    continue
                for s in scripts.value:
                    if s.id == "mapping":
                        entries = A.mapping_entries(s, shown)
                        self._unknown_keys(entries, SCRIPT_KEYS, "a hook script", shown)
                        self._sudo(entries.get(("str", "sudo")), shown)
        files = top.get(("str", "files"))
        if files and files[1].id == "sequence":
            for f in files[1].value:
                if f.id == "mapping":
                    self._unknown_keys(A.mapping_entries(f, shown), FILE_KEYS, "a files entry", shown)
        perms = top.get(("str", "permissions"))
        if perms and perms[1].id == "sequence":
            for p in perms[1].value:
                if p.id != "mapping":
                    continue
                entries = A.mapping_entries(p, shown)
                self._unknown_keys(entries, PERMISSION_KEYS, "a permissions entry", shown)
                self._mode(entries.get(("str", "mode")), shown)
                ctx = entries.get(("str", "context"))
                if ctx and ctx[1].id == "mapping":
                    centries = A.mapping_entries(ctx[1], shown)
                    role = centries.pop(("str", "role"), None)
                    if role:
                        self.add("warning", "context-role-ignored", "the agent ignores role: in a context "
                                 "(it never applies it)", shown, A.node_mark(role[0]))
                    self._unknown_keys(centries, CONTEXT_KEYS, "a context", shown)

    def _duplicates(self, root: A.Node, shown: str) -> None:
        stack = [root]
        while stack:
            node = stack.pop()
            if node.anchor:
                self.add("warning", "yaml-anchor", f"anchor &{node.anchor}: the agent (Psych 4) refuses any alias "
                         "to it, so an anchor is of no use in an appspec", shown, A.node_mark(node))
            if node.id == "sequence":
                stack.extend(node.value)
            elif node.id == "mapping":
                seen: dict[A.HashKey, int] = {}
                for k, v in node.value:
                    try:
                        kv = A.to_python(k, shown)
                    except AppSpecError:
                        continue
                    hk = A._hash_key(kv, k)
                    if hk in seen:
                        self.add("warning", "duplicate-key",
                                 f"key {ruby.inspect(kv)} appears again (first on line {seen[hk]}); the "
                                 "agent keeps only this last one", shown, A.node_mark(k))
                    seen[hk] = A.node_mark(k).line
                    stack.append(v)

    def _base60(self, root: A.Node, shown: str) -> None:
        """Psych reads a:b as a*3600 + b*60 (Q39): 1:30 is 5400, not 90. Say what each such value is."""
        stack: list[tuple[A.Node, str | None]] = [(root, None)]
        while stack:
            node, key = stack.pop()
            if node.id == "sequence":
                stack.extend((v, key) for v in node.value)
            elif node.id == "mapping":
                for k, v in node.value:
                    try:
                        kv = A.to_python(k, shown)
                    except AppSpecError:
                        kv = None
                    stack.append((v, kv if isinstance(kv, str) else None))
            elif A.is_base60_node(node):
                try:
                    value = A.scalar_value(node, shown)
                except AppSpecError:
                    continue
                if node.value.count(":") != 1:
                    continue  # a:b:c is hours, minutes and seconds, as everyone reads it
                if key == "mode":
                    continue  # _mode says what mode that number gives
                shown_v = ruby.to_s(value)
                if key == "timeout" and isinstance(value, (int, float)):
                    secs = int(value)
                    if secs <= 0:
                        continue  # an error already, with its hint
                    self.add("warning", "timeout-base60",
                             f"timeout {node.value} is {secs} s ({_duration(secs)}): the agent's YAML (Psych, "
                             "YAML 1.1 base 60) reads a:b as a hours and b minutes, not minutes and seconds",
                             shown, A.node_mark(node), hint=_timeout_hint(node.value, secs))
                else:
                    what = f"{key} " if key else ""
                    self.add("warning", "yaml-base60",
                             f"{what}{node.value} is the number {shown_v}: the agent's YAML (Psych, YAML 1.1 "
                             "base 60) reads a:b as a*3600 + b*60", shown, A.node_mark(node),
                             hint="write version: 0.0" if key == "version"
                             else f"quote it if you mean the text: '{node.value}'")

    def _unknown_keys(self, entries: dict[A.HashKey, A.MappingEntry], known: tuple[str, ...], where: str,
                      shown: str, top_level: bool = False) -> None:
        for knode, _v, key in entries.values():
            if key in known:
                continue
            text = ruby.to_s(key)
            hint = None
            lower = {k.lower(): k for k in known}
            if text.lower() in lower:
                hint = f"did you mean {lower[text.lower()]}? (keys are case-sensitive)"
            elif top_level and text in lifecycle.HOOK_EVENTS:
                hint = f"did you mean to put {text} under hooks:?"
            elif text in KNOWN_MISTAKES and KNOWN_MISTAKES[text] != where:
                hint = f"did you mean {KNOWN_MISTAKES[text]}?"
            else:
                close = difflib.get_close_matches(text, known, n=1, cutoff=0.6)
                if close:
                    hint = f"did you mean {close[0]}?"
            self.add("warning", "unknown-key", f"unknown key {text!r} in {where}: the agent ignores it",
                     shown, A.node_mark(knode), hint)

    def _mode(self, hit: A.MappingEntry | None, shown: str) -> None:
        if not hit:
            return
        node = hit[1]
        if node.id != "scalar" or node.style is not None:
            return
        try:
            v = A.scalar_value(node, shown)
        except AppSpecError:
            return
        if isinstance(v, int) and not isinstance(v, bool) and node.value != str(v):
            applied = str(v).rjust(3, "0")
            if A.is_base60_node(node) and all(c in "01234567" for c in applied) and len(applied) <= 4:
                self.add("warning", "mode-base60",
                         f"mode {node.value} is the base-60 number {v} for the agent's YAML (Psych, YAML 1.1), "
                         f"so the agent applies mode {applied} ({_rwx(int(applied, 8))})", shown,
                         A.node_mark(node), hint="write the mode as octal digits, e.g. mode: '644'")
            elif all(c in "01234567" for c in applied) and len(applied) <= 4:
                bits = _rwx(int(applied, 8))
                self.add("warning", "mode-unquoted-octal",
                         f"mode {node.value} is not quoted: YAML reads it as the number {v}, so the agent "
                         f"applies mode {applied} ({bits})", shown, A.node_mark(node),
                         hint=f"quote it: mode: '{node.value}', or write it without the leading zero")

    def _sudo(self, hit: A.MappingEntry | None, shown: str) -> None:
        if not hit:
            return
        node = hit[1]
        try:
            v = A.to_python(node, shown)
        except AppSpecError:
            return
        if (isinstance(v, str) and v.strip().lower() in ("false", "no", "off", "0", "")) or (
                isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0):
            self.add("warning", "sudo-string-enables", f"sudo: {ruby.inspect(v)} turns sudo ON: the agent "
                     "enables it for any value except null and false", shown, A.node_mark(node),
                     hint="write sudo: false (unquoted), or remove the key")

    # -- the bundle against the appspec
    def check_hooks(self, tree: _Tree, spec: A.AppSpec, shown: str, appspec_basename: str,
                    hook_nodes: dict[str, A.Mark]) -> None:
        names = list(spec.hook_names())
        unknown = lifecycle.unknown_hooks(names, None)
        if unknown:
            mark = hook_nodes.get(unknown[0])
            hints = []
            for u in unknown:
                close = difflib.get_close_matches(u, lifecycle.HOOK_EVENTS, n=1, cutoff=0.6)
                if close:
                    hints.append(f"did you mean {close[0]} instead of {u}?")
            hints.append("a custom event runs only with cdsim local --events " + ",".join(unknown))
            self.add("error", "unknown-lifecycle-event",
                     f"{appspec_basename} file contains unknown lifecycle events: {ruby.inspect_list(unknown)}",
                     shown, mark, " ".join(hints))
        for event, scripts in spec.hooks:
            total = sum(s.timeout for s in scripts)
            if total > EVENT_TIMEOUT_LIMIT:
                self.add("warning", "event-timeout-over-limit",
                         f"the timeouts of {event} add up to {total} s, above the {EVENT_TIMEOUT_LIMIT} s "
                         "CodeDeploy allows per lifecycle event (the local agent does not enforce it)",
                         shown, hook_nodes.get(event))
            for s in scripts:
                self.check_script(tree, event, s, shown)

    def check_script(self, tree: _Tree, event: str, s: A.HookScript, shown: str) -> None:
        rel = posixpath.normpath(s.location.lstrip("/"))
        if rel == ".." or rel.startswith("../"):
            self.add("error", "script-outside-bundle", f"script {s.location} ({event}) is outside the "
                     "bundle: cdsim refuses to run it (the agent would run whatever is at that path on "
                     "the instance)", shown, s.mark, hint="give a location inside the bundle, without '..'")
        else:
            e = tree.entry(rel)
            if e is None:
                self.add("error", "script-missing", f"script {s.location} ({event}) is not in the bundle: "
                         "the agent fails the event with \"Script does not exist at specified location\"",
                         shown, s.mark, hint="script locations are relative to the bundle root")
            elif e.kind == "dir":
                self.add("error", "script-not-file", f"script {s.location} ({event}) is a directory", shown, s.mark)
            elif e.kind == "file":
                if not e.mode & 0o111:
                    self.add("warning", "script-not-executable", f"script {s.location} ({event}) is not "
                             "executable: the agent makes it executable (chmod a+x) before running it",
                             shown, s.mark, hint=f"chmod +x {rel}")
                self._shebang(tree, rel, event, s, shown)
        if s.runas == "":
            self.add("warning", "runas-empty", f"runas of {s.location} is empty: the agent runs \"su  -c\", "
                     "that is, as root", shown, s.mark)
        elif s.runas is not None and not _user_exists(s.runas):
            self.add("warning", "runas-unknown-user", f"runas user {s.runas!r} of {s.location} does not exist "
                     "on this machine: su fails and the hook fails", shown, s.mark,
                     hint="create the user on the instance, or fix the name")

    def _shebang(self, tree: _Tree, rel: str, event: str, s: A.HookScript, shown: str) -> None:
        try:
            head = tree.read(rel, SCRIPT_HEAD_BYTES)
        except OSError:
            return
        if not head.startswith(b"#!"):
            self.add("warning", "script-no-shebang", f"script {s.location} ({event}) has no #! line: the "
                     "agent runs it with /bin/sh", shown, s.mark,
                     hint="start it with #!/bin/bash (or your interpreter)")
            return
        first = head.split(b"\n", 1)[0]
        if first.endswith(b"\r"):
            self.add("error", "script-crlf-shebang", f"the #! line of script {s.location} ({event}) ends with a "
                     "carriage return (CRLF line endings): the agent fails with \"Script at specified location: "
                     f"{s.location} failed with error Errno::ENOENT with message No such file or directory\"",
                     shown, s.mark, hint=f"convert it to LF line endings (dos2unix {rel})")

    def check_files(self, tree: _Tree, spec: A.AppSpec, shown: str) -> None:
        copies: dict[str, str] = {}   # target -> source
        mkdirs: dict[str, str] = {}   # target -> source
        for fm in spec.files:
            rel = posixpath.normpath(fm.source.lstrip("/"))
            rel = "" if rel == "." else rel
            dest = posixpath.normpath(fm.destination) if fm.destination else fm.destination
            e = tree.entry(rel) if not rel.startswith("..") else None
            if e is None:
                self.add("error", "file-source-missing", f"files source {fm.source} is not in the bundle: the "
                         "agent fails Install with \"No such file or directory\"", shown, fm.mark,
                         hint="sources are relative to the bundle root")
                continue
            if e.kind != "dir":
                base = posixpath.basename(rel)
                target = posixpath.join(dest, base)
                if _looks_like_file(dest, base):
                    self.add("warning", "destination-looks-like-file",
                             f"destination {fm.destination} looks like a file name, but a destination is always "
                             f"a directory: {fm.source} installs as {target}", shown, fm.mark,
                             hint=f"use destination: {posixpath.dirname(dest) or '/'} to install {base} there "
                                  "(files cannot be renamed)")
                self._copy(copies, mkdirs, target, rel or "/", fm, shown)
                continue
            files, dirs = tree.files_under(rel)
            for d in dirs:
                mkdirs.setdefault(posixpath.join(dest, d), rel or "/")
            mkdirs.setdefault(dest, rel or "/")
            for f in files:
                self._copy(copies, mkdirs, posixpath.join(dest, f), posixpath.join(rel, f) if rel else f, fm, shown)

    def _copy(self, copies: dict[str, str], mkdirs: dict[str, str], target: str, source: str,
              fm: A.FileMapping, shown: str) -> None:
        if target in copies and copies[target] != source:
            self.add("error", "files-duplicate-destination",
                     "The deployment failed because the application specification file specifies two source "
                     f"files named {source} and {copies[target]} for the same destination ({target}). Remove "
                     "one of the source file paths from the AppSpec file, and then try again.", shown, fm.mark)
        elif target in mkdirs:
            self.add("error", "files-file-directory-collision",
                     "The deployment failed because the application specification file calls for installing "
                     f"the file {source}, but a file with that name already exists at the location ({target}). "
                     "Update your AppSpec file or directory structure, and then try again.", shown, fm.mark)
        copies.setdefault(target, source)

    def check_links(self, tree: _DirTree) -> None:
        """cdsim refuses a bundle whose symlinks lead to a folder outside it (the agent would copy a host
        folder's files); the same check as cdsim local's, so validate says it first."""
        from agent.bundle import check_archive_links
        from agent.errors import UnsafeBundle

        try:
            check_archive_links(tree.root)
        except UnsafeBundle as e:
            self.add("error", e.reference, e.message, tree.display, hint=e.hint)
        except OSError:
            pass  # unreadable sub-folders: reported where they matter

    def check_owners(self, spec: A.AppSpec, shown: str, created: frozenset[str] = frozenset()) -> None:
        for p in spec.permissions:
            if p.owner is not None and p.owner not in created and not _user_exists(p.owner):
                self.add("warning", "owner-unknown-user", f"owner {p.owner!r} of {p.object} does not exist on "
                         f"this machine: the agent fails with \"can't find user for {p.owner}\"", shown, p.mark)
            if p.group is not None and p.group not in created and not _group_exists(p.group):
                self.add("warning", "group-unknown-group", f"group {p.group!r} of {p.object} does not exist on "
                         f"this machine: the agent fails with \"can't find group for {p.group}\"", shown, p.mark)


_ACCOUNT_TOOLS = re.compile(rb"\b(?:useradd|adduser|groupadd|addgroup)\b[^\n]*")


class _Anything(frozenset[str]):
    def __contains__(self, item: object) -> bool:
        return True


_ANY = _Anything()


def _created_accounts(tree: _Tree, spec: A.AppSpec) -> frozenset[str]:
    """Users and groups that the bundle's BeforeInstall scripts create (permissions apply at Install,
    after BeforeInstall, so an owner made there is fine). Every word on a useradd/groupadd line
    counts, and a line that names the account through a variable counts for every name: a cheap,
    generous reading that only silences warnings."""
    words: set[str] = set()
    for s in spec.scripts_for("BeforeInstall"):
        rel = posixpath.normpath(s.location.lstrip("/"))
        if rel.startswith("..") or tree.entry(rel) is None:
            continue
        try:
            text = tree.read(rel, 256 * 1024)
        except OSError:
            continue
        for m in _ACCOUNT_TOOLS.finditer(text):
            if b"$" in m.group(0):
                return _ANY
            words.update(w.strip(b"\"'\"").decode("utf-8", "replace") for w in m.group(0).split())
    return frozenset(words)


def _duration(secs: int) -> str:
    """5400 -> '1 h 30 min', 120 -> '2 min', 45 -> '45 s'."""
    h, rest = divmod(abs(secs), 3600)
    m, sec = divmod(rest, 60)
    parts = [f"{h} h"] * bool(h) + [f"{m} min"] * bool(m) + [f"{sec} s"] * bool(sec)
    return ("-" if secs < 0 else "") + (" ".join(parts) or "0 s")


def _timeout_hint(text: str, secs: int) -> str:
    """Write seconds: both readings of a:b spelled out (1:30 -> 90 if minutes:seconds was meant)."""
    m = re.fullmatch(r"\+?([0-9]+):([0-5]?[0-9])", text)
    if not m:
        return "write the timeout as a whole number of seconds"
    meant = int(m.group(1)) * 60 + int(m.group(2))
    return (f"write seconds: timeout: {meant} if you meant {text} as minutes:seconds, "
            f"timeout: {secs} to keep what the agent does")


def _rwx(mode: int) -> str:
    return "".join((c if mode & (1 << (8 - i)) else "-") for i, c in enumerate("rwxrwxrwx"))


def _looks_like_file(dest: str, base: str) -> bool:
    last = posixpath.basename(dest.rstrip("/"))
    if not last or last.startswith("."):
        return False
    stem, dot, ext = last.rpartition(".")
    if ext == "d":  # conf.d, cron.d, sudoers.d: folders by convention
        return False
    return last == base or (bool(dot) and bool(stem) and ext.isalnum() and not ext.isdigit() and len(ext) <= 5)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return False


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except (KeyError, ValueError):
        return False


def _hook_marks(root: A.Node | None, shown: str) -> dict[str, A.Mark]:
    """Event name -> Mark of its key in hooks:, for findings about a whole event."""
    if root is None or root.id != "mapping":
        return {}
    hooks = A.mapping_entries(root, shown).get(("str", "hooks"))
    if not hooks or hooks[1].id != "mapping":
        return {}
    return {ruby.to_s(name): A.node_mark(k) for k, _v, name in A.mapping_entries(hooks[1], shown).values()}


def _sort_key(f: Finding) -> tuple[str, int, int]:
    return (f.file or "", f.line or 0, f.column or 0)


def validate_bundle(path: str, appspec_filename: str | None = None) -> list[Finding]:
    """Every finding for the bundle at ``path`` (a directory, a zip/tar/tgz, or an appspec file)."""
    lint = _Lint(appspec_filename)
    opened = lint.open_bundle(path)
    if opened is None:
        return lint.findings
    tree, given, is_dir = opened
    install_name, _hook_name = lint.locate(tree, given, is_dir)
    if install_name is None:
        return lint.findings
    data = lint.read_appspec(tree, install_name)
    shown = tree.shown(install_name)
    if data is not None and lint.check_platform_appspec(data, shown):
        return sorted(lint.findings, key=_sort_key)   # ECS or Lambda: no bundle, no scripts to check
    if isinstance(tree, _DirTree) and not given:
        lint.check_links(tree)
    spec, root = lint.check_appspec(tree, install_name, data) if data is not None else (None, None)
    if spec is not None:
        lint.check_hooks(tree, spec, shown, posixpath.basename(install_name), _hook_marks(root, shown))
        lint.check_files(tree, spec, shown)
        lint.check_owners(spec, shown, _created_accounts(tree, spec))
    return sorted(lint.findings, key=_sort_key)


def summary(findings: list[Finding], strict: bool = False) -> str:
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    failed = errors or (strict and warnings)
    verdict = "invalid" if failed else "valid"
    return f"{verdict}: {errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"
