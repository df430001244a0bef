"""Instances from images: reading an image, unpacking its layers once into the state folder's cache,
and the read-only lower directory an instance made from it is an overlay of.

Image handling is storage, not namespaces: :func:`ensure` takes a reference and yields a lower
directory (``Lower``), which ``overlay.build_root`` mounts under the instance's upper layer instead of
the host's ``/``. A reference is a ``docker save`` archive (``manifest.json``), an OCI image layout
(a folder with ``oci-layout`` and ``index.json``) or an OCI archive (that layout in a tar), or a root
file system folder (used in place, as it is). Layers are verified against the manifest (the blob's
sha256) and the config (each layer's ``diff_id``, the sha256 of the uncompressed tar); the image's
``architecture`` must be the host's. The flattened tree of each image is kept in
``<state>/images/<id>/rootfs`` (``agent.state.images_dir``), ``id`` its chain id (content-addressed:
the same layers give the same id; an unprivileged user's copy carries its id map's hash too), with
``image.json`` beside it; a second instance from the same image only reads the manifest.

Layers are applied by this module (tar + whiteouts, OCI image spec "Applying changesets"): ``.wh.NAME``
removes NAME of the layers below, ``.wh..wh..opq`` empties its folder of them; hard links link to
entries already applied; modes (setuid included), owners and mtimes are kept. Owners: as root, as
the layer says; as another user, the unpacking runs as root of a user namespace with the id maps the
user's instances get (``idmap.current``), so image uid N lands on the instance's uid N where the map
has it (ids outside the map stay the caller's, root inside). Hostile input is refused with
``image-unsafe-member``, naming the archive and the member, before anything reaches outside the
cache's temporary folder: absolute names, ``..``, a symlink in a member's path that leads out of the
image's root, hard links to names outside it or not yet applied, device nodes (outside ``dev/``,
which the instance replaces with its own: there they are skipped). Symlinks themselves may point
anywhere (inside the instance they resolve in its root). A corrupt, truncated or mismatching archive
is ``image-invalid``; another architecture ``image-architecture``. Not kept: extended attributes (file
capabilities), zstd layers (refused by name).

How cdsim's own code runs inside an image instance (the image may have no Python at all): the
keeper mounts a tmpfs on ``/opt/cdsim`` in the instance (as the real agent lives in
/opt/codedeploy-agent) and binds read-only, nosuid and nodev the host's Python executable and standard
library (``/opt/cdsim/python/bin``, ``/opt/cdsim/python/lib/python3.X``), the folders of the shared
libraries it has loaded, the C library and dynamic loader among them (``/opt/cdsim/lib/N``), cdsim's
packages (``/opt/cdsim/src``) and the site-packages it imports (``/opt/cdsim/site/N``) (:func:`runtime`).
:func:`python_command` is the command line that runs that Python inside:
the host's dynamic loader with ``--library-path`` (so no LD_* variable reaches the processes it
starts), ``-E -s`` and a ``-c`` that puts cdsim's folders first on sys.path; append ``-m MODULE ...``
equivalents with :func:`module_command`. Hooks, and anything they run, see only the image's userland:
/opt/cdsim is on no PATH, and nothing of the host is above it. ``agent.instance.agent_command(instance,
module)`` gives the right ``python -m module`` command line for any instance (this machine's
``sys.executable`` for an instance of the host); ``agent.instance.made_from_image`` tells which it is.
Inside, ``sys.executable`` names /opt/cdsim's interpreter, which runs only through that loader line:
code of cdsim that starts Python again inside must use :func:`python_command`, not ``sys.executable``
(compute it on the host: ``runtime()`` reads the host's loader). A program hooks call by name (a
``systemctl`` stand-in) can be a ``#!/bin/sh`` wrapper, written from the host, that execs
``module_command(runtime(), MODULE) + ["$@"]``; it needs the image's /bin/sh.
Host folders are not there: pass files in with ``exec_in(binds=...)`` and start in ``cwd="/"``.

Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import site
import stat
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from typing import IO, NotRequired, TypedDict, cast

from agent.errors import EnvironmentProblem, InvalidInput, UsageError
from agent.fsutil import atomic_write
from agent.fsutil import remove as remove_path
from agent.instance import idmap
from agent.instance import namespaces as ns
from agent.state import images_dir

RUNTIME_ROOT = "/opt/cdsim"
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_ID = re.compile(r"^[0-9a-f]{64}(-[0-9a-f]{12})?$")
_UNSAFE_IN_OPTIONS = set(",:\\\n\"'=")
_MAX_LINKS = 40
_CHUNK = 1 << 20
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
# Python's platform.machine() -> the OCI/Go architecture names
_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
                  "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


class ImageMeta(TypedDict):
    """``image.json`` beside a cached root file system."""

    id: str
    ref: str
    kind: str
    architecture: str
    os: str
    chain_id: str
    diff_ids: list[str]
    created: float
    seconds: float
    owners: str   # "kept" (root), "mapped" (user namespace with subordinate ids), "caller" (only the caller)
    unmapped_owners: NotRequired[int]


class InstanceImage(TypedDict):
    """What an instance's meta.json records of its image."""

    ref: str
    id: str | None   # None for a root file system folder used in place
    lower: str


@dataclass(frozen=True)
class Layer:
    name: str            # where the blob is in the source (its member name or relative path)
    digest: str | None   # the blob's sha256 digest when the manifest gives it
    diff_id: str         # sha256 digest of the uncompressed tar (the config's rootfs.diff_ids)


@dataclass(frozen=True)
class Manifest:
    """What an image reference holds: its kind, platform and layers, bottom first."""

    ref: str
    kind: str   # "docker-archive", "oci-layout", "oci-archive"
    architecture: str
    os: str
    layers: tuple[Layer, ...]

    @property
    def chain_id(self) -> str:
        """The OCI chain id of the top layer: names the flattened tree (content-addressed)."""
        chain = ""
        for layer in self.layers:
            chain = layer.diff_id if not chain else \
                "sha256:" + hashlib.sha256(f"{chain} {layer.diff_id}".encode()).hexdigest()
        return chain or "sha256:" + hashlib.sha256(b"").hexdigest()


def _invalid(ref: str, message: str, reference: str = "image-invalid", hint: str | None = None) -> InvalidInput:
    return InvalidInput(message, file=ref, reference=reference, hint=hint)


def host_architecture() -> str:
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


# ---- sources: where blobs are read from -----------------------------------------------------------

class _Source:
    """Named blobs of an image reference: files of a folder, or members of a tar."""

    def __init__(self, ref: str):
        self.ref = ref

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def read_json(self, name: str) -> dict[str, object] | list[object]:
        try:
            with self.open(name) as f:
                data = f.read(16 << 20)
            value = json.loads(data)
        except (OSError, ValueError, tarfile.TarError, EOFError, zlib.error) as e:
            raise _invalid(self.ref, f"cannot read {name} of the image: {e}") from e
        if not isinstance(value, dict | list):
            raise _invalid(self.ref, f"{name} of the image is not a JSON object")
        return cast("dict[str, object] | list[object]", value)

    def blob_name(self, digest: object) -> str:
        match = _DIGEST.match(digest) if isinstance(digest, str) else None
        if match is None:
            raise _invalid(self.ref, f"unsupported or malformed digest {digest!r} (only sha256 is)")
        return f"blobs/sha256/{match.group(1)}"


class _FolderSource(_Source):
    def has(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.ref, name))

    def open(self, name: str) -> IO[bytes]:
        if name.startswith("/") or ".." in name.split("/"):
            raise _invalid(self.ref, f"refusing blob name {name!r}: outside the image folder",
                           reference="image-unsafe-member")
        try:
            return open(os.path.join(self.ref, name), "rb")
        except FileNotFoundError as e:
            raise _invalid(self.ref, f"{name} is missing from the image folder") from e


class _TarSource(_Source):
    def __init__(self, ref: str):
        super().__init__(ref)
        try:
            self.tar = tarfile.open(ref, "r:*")   # noqa: SIM115 - closed by close()
            every = self.tar.getmembers()
            self.members = {self._key(m.name): m for m in every if m.isreg()}
            # older docker save archives link a layer identical to another one to it
            self.links = {self._key(m.name): m.linkname for m in every if m.issym()}
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise _invalid(ref, f"not a readable image archive (corrupt or truncated?): {e}") from e

    @staticmethod
    def _key(name: str) -> str:
        while name.startswith("./"):
            name = name[2:]
        return name

    def _resolve(self, name: str) -> str:
        key = self._key(name)
        for _ in range(8):
            if key not in self.links:
                break
            key = os.path.normpath(os.path.join(os.path.dirname(key), self.links[key]))
        return key

    def has(self, name: str) -> bool:
        return self._resolve(name) in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(self._resolve(name))
        if member is None:
            raise _invalid(self.ref, f"{name} is missing from the image archive (truncated?)")
        f = self.tar.extractfile(member)
        if f is None:
            raise _invalid(self.ref, f"{name} of the image archive is not a file")
        return f

    def close(self) -> None:
        self.tar.close()


def _open_source(ref: str) -> _Source:
    if os.path.isdir(ref):
        return _FolderSource(ref)
    if os.path.isfile(ref):
        return _TarSource(ref)
    raise UsageError(f"no image at {ref!r}: give a docker save or OCI archive, an OCI image layout folder or "
                     "a root file system folder", reference="image-unknown")


def is_rootfs_folder(ref: str) -> bool:
    """A folder that is a root file system (not an OCI layout): used in place as the lower layer."""
    return os.path.isdir(ref) and not os.path.isfile(os.path.join(ref, "oci-layout")) and \
        not os.path.isfile(os.path.join(ref, "manifest.json"))


# ---- manifests ------------------------------------------------------------------------------------

def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _config_platform(source: _Source, config: dict[str, object] | list[object]) -> tuple[str, str, list[str]]:
    if not isinstance(config, dict):
        raise _invalid(source.ref, "the image config is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _DIGEST.match(d) for d in diff_ids):
        raise _invalid(source.ref, "the image config has no valid rootfs.diff_ids")
    return _str(config.get("architecture")), _str(config.get("os")), cast(list[str], diff_ids)


def _pick_manifest(source: _Source, index: dict[str, object] | list[object], depth: int = 0) -> dict[str, object]:
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests or depth > 4:
        raise _invalid(source.ref, "index.json lists no image manifest")
    entries = [m for m in manifests if isinstance(m, dict)]
    if len(entries) > 1:   # a multi-platform image: the host's
        arch = host_architecture()
        mine = [m for m in entries if isinstance(m.get("platform"), dict)
                and m["platform"].get("architecture") == arch]
        if not mine:
            found = sorted({str(m["platform"].get("architecture")) for m in entries
                            if isinstance(m.get("platform"), dict)})
            raise _invalid(source.ref, f"the image has no manifest for this machine's architecture {arch} "
                           f"(it has: {', '.join(found) or 'none named'})", reference="image-architecture")
        entries = mine
    entry = entries[0]
    body = source.read_json(source.blob_name(entry.get("digest")))
    if entry.get("mediaType") in _INDEX_TYPES or (isinstance(body, dict) and "manifests" in body):
        return _pick_manifest(source, body, depth + 1)
    if not isinstance(body, dict):
        raise _invalid(source.ref, "the image manifest is not a JSON object")
    return body


def _oci_manifest(source: _Source, kind: str) -> Manifest:
    manifest = _pick_manifest(source, source.read_json("index.json"))
    config_ref = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config_ref, dict) or not isinstance(layers, list):
        raise _invalid(source.ref, "the image manifest has no config or layers")
    arch, os_name, diff_ids = _config_platform(source, source.read_json(source.blob_name(config_ref.get("digest"))))
    if len(diff_ids) != len(layers):
        raise _invalid(source.ref, f"the manifest lists {len(layers)} layers, the config {len(diff_ids)}")
    out = []
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        digest = layer.get("digest") if isinstance(layer, dict) else None
        media = _str(layer.get("mediaType")) if isinstance(layer, dict) else ""
        if "zstd" in media:
            raise _invalid(source.ref, f"layer {digest} is zstd-compressed ({media}), which cdsim does not read",
                           hint="convert it: skopeo copy --dest-compress-format gzip ...")
        out.append(Layer(name=source.blob_name(digest), digest=cast(str, digest), diff_id=diff_id))
    return Manifest(ref=source.ref, kind=kind, architecture=arch, os=os_name, layers=tuple(out))


def _docker_manifest(source: _Source) -> Manifest:
    entries = source.read_json("manifest.json")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise _invalid(source.ref, "manifest.json of the docker archive lists no image")
    entry = cast(dict[str, object], entries[0])
    config, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(config, str) or not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        raise _invalid(source.ref, "manifest.json of the docker archive has no Config or Layers")
    arch, os_name, diff_ids = _config_platform(source, source.read_json(config))
    if len(diff_ids) != len(layers):
        raise _invalid(source.ref, f"manifest.json lists {len(layers)} layers, the config {len(diff_ids)}")
    out = []
    for name, diff_id in zip(cast(list[str], layers), diff_ids, strict=True):
        blob = re.match(r"^blobs/sha256/([0-9a-f]{64})$", name)
        out.append(Layer(name=name, digest=f"sha256:{blob.group(1)}" if blob else None, diff_id=diff_id))
    return Manifest(ref=source.ref, kind="docker-archive", architecture=arch, os=os_name, layers=tuple(out))


def read_manifest(source: _Source) -> Manifest:
    """The image a source holds (docker save's manifest.json first: newer docker archives carry an OCI
    index too, whose layers are the same)."""
    if source.has("manifest.json"):
        manifest = _docker_manifest(source)
    elif source.has("index.json"):
        manifest = _oci_manifest(source, "oci-layout" if isinstance(source, _FolderSource) else "oci-archive")
    else:
        raise _invalid(source.ref, "not an image: no manifest.json (docker save) or index.json (OCI)",
                       hint="give a docker save or OCI archive, an OCI layout folder or a root file system folder")
    arch = host_architecture()
    if manifest.architecture != arch:
        raise _invalid(source.ref, f"the image is for architecture {manifest.architecture or 'unknown'}, this "
                       f"machine runs {arch}: its programs would not run here", reference="image-architecture",
                       hint=f"get the {arch} variant (docker pull --platform linux/{arch} ..., skopeo copy "
                       f"--override-arch {arch} ...)")
    if manifest.os and manifest.os != "linux":
        raise _invalid(source.ref, f"the image is for {manifest.os}, not linux", reference="image-architecture")
    return manifest


# ---- applying a layer -----------------------------------------------------------------------------

class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return "sha256:" + self.sha.hexdigest()


class _Unsafe(Exception):
    """A member the applier refuses (becomes image-unsafe-member, naming it)."""


class _Applier:
    """Applies layers, bottom first, to ``root`` (a fresh folder), never writing outside it."""

    def __init__(self, root: str, *, chown: bool):
        self.root = root
        self.chown = chown
        self.unmapped = 0
        self.layer_paths: set[str] = set()

    def _lexical(self, name: str) -> list[str]:
        if name.startswith("/"):
            raise _Unsafe("an absolute name")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise _Unsafe("a '..' component")
        return parts

    def _resolve_dirs(self, parts: list[str], create: bool) -> list[str]:
        """The real path (components below root) of the folder ``parts`` names, following symlinks
        within the image's root; a symlink that leads above the root is refused."""
        done: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if not done:
                    raise _Unsafe("a symlink in its path that leads out of the image's root")
                done.pop()
                continue
            path = os.path.join(self.root, *done, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(path, 0o755)
                done.append(part)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_LINKS:
                    raise _Unsafe("too many symlinks in its path")
                target = os.readlink(path)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise _Unsafe(f"a path through {'/'.join([*done, part])}, which is not a folder")
            done.append(part)
        return done

    def apply(self, stream: IO[bytes]) -> None:
        self.layer_paths = set()
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for member in tf:
                try:
                    self._member(tf, member)
                except _Unsafe as e:
                    raise _Unsafe(f"member {member.name!r}: {e}") from None
                except ValueError as e:   # a NUL byte in a name
                    raise _Unsafe(f"member {member.name!r}: {e}") from None
                except OSError as e:
                    raise OSError(e.errno, f"cannot apply member {member.name!r}: {e.strerror or e}") from e

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._lexical(m.name)
        if not parts:
            return   # the root folder itself: the cache's own
        base = parts[-1]
        parent = self._resolve_dirs(parts[:-1], create=True)
        folder = os.path.join(self.root, *parent)
        rel = "/".join([*parent, base])
        if base == ".wh..wh..opq":
            for entry in os.listdir(folder):
                if "/".join([*parent, entry]) not in self.layer_paths:
                    remove_path(os.path.join(folder, entry))
            return
        if base.startswith(".wh."):
            name = base[4:]
            if name in ("", ".", ".."):
                raise _Unsafe("a whiteout for a path outside its folder")
            if "/".join([*parent, name]) not in self.layer_paths:
                remove_path(os.path.join(folder, name))
            return
        path = os.path.join(folder, base)
        self.layer_paths.add(rel)
        if m.isdir():
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    remove_path(path)
                    os.mkdir(path, 0o700)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
            self._attributes(path, m)
            return
        if m.ischr() or m.isblk():
            if parent[:1] == ["dev"] or rel == "dev":
                self.layer_paths.discard(rel)
                return   # the instance's /dev is its own tmpfs: never seen
            raise _Unsafe("a device node (only /dev may hold them, and the instance makes its own)")
        remove_path(path)
        if m.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            data = tf.extractfile(m)
            with os.fdopen(fd, "wb") as out:
                if data is not None:
                    shutil.copyfileobj(data, out, _CHUNK)
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.islnk():
            target_parts = self._lexical(m.linkname)
            if not target_parts:
                raise _Unsafe("a hard link to the root folder")
            try:
                target = os.path.join(self.root, *self._resolve_dirs(target_parts[:-1], create=False),
                                      target_parts[-1])
                tst = os.lstat(target)
            except (FileNotFoundError, NotADirectoryError):
                raise _Unsafe(f"a hard link to {m.linkname!r}, which no layer has made") from None
            if stat.S_ISDIR(tst.st_mode):
                raise _Unsafe("a hard link to a folder")
            os.link(target, path, follow_symlinks=False)
            return   # a hard link shares its target's attributes
        elif m.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise _Unsafe(f"an entry of tar type {m.type!r} that an image may not hold")
        self._attributes(path, m)

    def _attributes(self, path: str, m: tarfile.TarInfo) -> None:
        if self.chown:
            try:
                os.lchown(path, m.uid, m.gid)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EPERM):
                    raise
                self.unmapped += 1   # an id outside the map: the caller's (root inside) it stays
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)
        try:
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        except OSError:
            pass


def _layer_stream(source: _Source, layer: Layer) -> tuple[IO[bytes], _Hashing, _Hashing]:
    raw = _Hashing(source.open(layer.name))
    head = raw.raw.read(4)
    raw.sha.update(head)

    class _Rejoin:
        def __init__(self) -> None:
            self.head = head

        def read(self, n: int = -1) -> bytes:
            if not self.head:
                return raw.read(n)
            if 0 <= n < len(self.head):
                out, self.head = self.head[:n], self.head[n:]
                return out
            out, self.head = self.head, b""
            return out + raw.read(-1 if n < 0 else n - len(out))

    if head[:2] == b"\x1f\x8b":
        unpacked = cast(IO[bytes], gzip.GzipFile(fileobj=cast(IO[bytes], _Rejoin()), mode="rb"))
    elif head == b"\x28\xb5\x2f\xfd":
        raise _invalid(source.ref, f"layer {layer.name} is zstd-compressed, which cdsim does not read",
                       hint="convert it: skopeo copy --dest-compress-format gzip ...")
    else:
        unpacked = cast(IO[bytes], _Rejoin())
    tar = _Hashing(unpacked)
    return cast(IO[bytes], tar), raw, tar


def _apply_all(source: _Source, manifest: Manifest, root: str, chown: bool) -> int:
    applier = _Applier(root, chown=chown)
    for layer in manifest.layers:
        stream, raw, tar = _layer_stream(source, layer)
        try:
            applier.apply(stream)
            diff_id = tar.drain()
            digest = raw.drain()
        except _Unsafe as e:
            raise _invalid(source.ref, f"layer {layer.name}: {e}; nothing of the image was kept",
                           reference="image-unsafe-member") from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise _invalid(source.ref, f"layer {layer.name} is corrupt or truncated: {e}") from e
        except OSError as e:
            raise EnvironmentProblem(f"cannot unpack layer {layer.name} of {source.ref}: {e.strerror or e}",
                                     reference="image-unpack") from e
        if layer.digest and digest != layer.digest:
            raise _invalid(source.ref, f"layer {layer.name}: its sha256 is {digest}, the manifest says "
                           f"{layer.digest} (corrupt or tampered)", reference="image-digest")
        if diff_id != layer.diff_id:
            raise _invalid(source.ref, f"layer {layer.name}: its uncompressed sha256 is {diff_id}, the config "
                           f"says {layer.diff_id} (corrupt or tampered)", reference="image-digest")
    return applier.unmapped


# ---- the cache ------------------------------------------------------------------------------------

def _cache_id(chain_id: str, maps: idmap.IdMaps) -> str:
    hex_id = chain_id.split(":", 1)[1]
    if not maps.get("user_namespace"):
        return hex_id
    key = json.dumps([maps["uid_map"], maps["gid_map"]]).encode()
    return f"{hex_id}-{hashlib.sha256(key).hexdigest()[:12]}"


def read_image_meta(folder: str) -> ImageMeta | None:
    try:
        with open(os.path.join(folder, "image.json"), encoding="utf-8") as f:
            return cast(ImageMeta, json.load(f))   # written by ensure only
    except (OSError, ValueError):
        return None


def ensure(ref: str, state: str | None = None) -> InstanceImage:
    """The lower directory for ``ref``, unpacking the image into the cache unless it is there."""
    ref = os.path.abspath(ref)
    if is_rootfs_folder(ref):
        if _UNSAFE_IN_OPTIONS & set(ref):
            raise UsageError(f"root file system folder {ref!r}: overlayfs can't take a path with any of "
                             f"{''.join(sorted(_UNSAFE_IN_OPTIONS))!r}", reference="image-path")
        if not os.path.isdir(os.path.join(ref, "etc")) and not os.path.lexists(os.path.join(ref, "bin")):
            raise _invalid(ref, "not a root file system folder (no etc/ or bin/), an OCI layout (oci-layout) or "
                           "an unpacked docker save (manifest.json)")
        return {"ref": ref, "id": None, "lower": ref}
    source = _open_source(ref)
    try:
        manifest = read_manifest(source)
        maps = idmap.current()
        image_id = _cache_id(manifest.chain_id, maps)
        folder = os.path.join(images_dir(state), image_id)
        if read_image_meta(folder) is None:
            _unpack(source, manifest, image_id, folder, maps, state)
    finally:
        source.close()
    return {"ref": ref, "id": image_id, "lower": os.path.join(folder, "rootfs")}


def _unpack(source: _Source, manifest: Manifest, image_id: str, folder: str, maps: idmap.IdMaps,
            state: str | None) -> None:
    top = images_dir(state)
    if _UNSAFE_IN_OPTIONS & set(top):
        raise UsageError(f"state folder {top!r}: overlayfs can't take a path with any of "
                         f"{''.join(sorted(_UNSAFE_IN_OPTIONS))!r}", reference="image-path")
    os.makedirs(top, exist_ok=True)
    tmp = os.path.join(top, f".tmp-{image_id}-{os.urandom(4).hex()}")
    os.mkdir(tmp, 0o755)
    rootfs = os.path.join(tmp, "rootfs")
    os.mkdir(rootfs, 0o755)
    started = time.monotonic()
    try:
        if maps.get("user_namespace"):
            unmapped = _unpack_in_user_namespace(source, rootfs, maps)
        else:
            unmapped = _apply_all(source, manifest, rootfs, chown=os.geteuid() == 0)
        meta: ImageMeta = {"id": image_id, "ref": source.ref, "kind": manifest.kind,
                           "architecture": manifest.architecture, "os": manifest.os, "chain_id": manifest.chain_id,
                           "diff_ids": [layer.diff_id for layer in manifest.layers], "created": time.time(),
                           "seconds": round(time.monotonic() - started, 3),
                           "owners": "kept" if not maps.get("user_namespace") else
                           ("mapped" if maps.get("id_helpers") else "caller")}
        if unmapped:
            meta["unmapped_owners"] = unmapped
        atomic_write(os.path.join(tmp, "image.json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _remove_tree(tmp, maps)   # another process unpacked it meanwhile: theirs is as good
    except BaseException:
        _remove_tree(tmp, maps)
        raise


# the child that unpacks as root of a user namespace with the caller's instance maps
_UNPACK_MAIN = ("import sys; from agent.instance.image import unpack_main; "
                "sys.exit(unpack_main(sys.argv[1], sys.argv[2]))")


def _unpack_in_user_namespace(source: _Source, rootfs: str, maps: idmap.IdMaps) -> int:
    done = subprocess.run([sys.executable, "-c", _UNPACK_MAIN, source.ref, rootfs], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, cwd="/", env=_package_env(), check=False)
    if done.returncode == 0:
        return int(done.stdout.strip() or 0)
    try:
        problem = json.loads(done.stdout)
    except ValueError:
        raise EnvironmentProblem(f"cannot unpack the image {source.ref} in a user namespace: "
                                 f"{done.stderr.strip()[-2000:]}", reference="image-unpack") from None
    if not problem.get("invalid"):
        raise EnvironmentProblem(problem["message"], reference=problem["reference"], hint=problem.get("hint"))
    raise InvalidInput(problem["message"], file=source.ref, reference=problem["reference"], hint=problem.get("hint"))


def _package_env() -> dict[str, str]:
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME")}
    env["PYTHONPATH"] = top + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    return env


def unpack_main(ref: str, rootfs: str) -> int:
    """In a process of its own: enter a user namespace with this user's instance maps, apply the
    image's layers to ``rootfs``; prints the count of owners left unmapped, or the error as JSON."""
    try:
        idmap.enter_user_namespace(ns.CLONE_NEWUSER, idmap.current())
    except OSError as e:
        print(f"cannot enter a user namespace: {e.strerror or e}", file=sys.stderr)
        return 2
    source = _open_source(ref)
    try:
        unmapped = _apply_all(source, read_manifest(source), rootfs, chown=True)
    except (InvalidInput, EnvironmentProblem) as e:
        print(json.dumps({"message": e.message, "reference": e.reference, "hint": e.hint,
                          "invalid": isinstance(e, InvalidInput)}))
        return 1
    finally:
        source.close()
    print(unmapped)
    return 0


def _remove_tree(folder: str, maps: idmap.IdMaps) -> None:
    if not os.path.lexists(folder):
        return
    if maps.get("id_helpers") and os.geteuid() != 0:
        subprocess.run([sys.executable, "-c", "import sys; from agent.instance import idmap; "
                        "sys.exit(idmap.remove_folder(sys.argv[1], idmap.current()))", folder],
                       stdin=subprocess.DEVNULL, capture_output=True, cwd="/", env=_package_env(), check=False)
    if os.path.lexists(folder):
        def allow(func: object, path: str, _exc: object) -> None:
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                shutil.rmtree(path, onerror=allow)
            else:
                os.unlink(path)
        shutil.rmtree(folder, onerror=allow)


def list_images(state: str | None = None) -> list[ImageMeta]:
    """The cached images, oldest first."""
    try:
        names = os.listdir(images_dir(state))
    except FileNotFoundError:
        return []
    found = [read_image_meta(os.path.join(images_dir(state), n)) for n in names if _ID.match(n)]
    return sorted((m for m in found if m), key=lambda m: m["created"])


def rootfs_of(image_id: str, state: str | None = None) -> str:
    return os.path.join(images_dir(state), image_id, "rootfs")


def find(prefix: str, state: str | None = None) -> ImageMeta:
    """The cached image whose id (or source path) starts with ``prefix``; UsageError if none or several."""
    matches = [m for m in list_images(state) if m["id"].startswith(prefix.removeprefix("sha256:"))
               or m["ref"] == os.path.abspath(prefix)] if prefix else []
    if len(matches) != 1:
        raise UsageError(f"{'no' if not matches else 'more than one'} cached image matches {prefix!r}",
                         reference="image-unknown", hint="`cdsim image list` shows them")
    return matches[0]


def remove(meta: ImageMeta, users: list[str], state: str | None = None) -> None:
    """Remove a cached image; EnvironmentProblem when instances (``users``) are made from it."""
    if users:
        raise EnvironmentProblem(f"image {meta['id'][:12]} is the lower layer of instance(s) {', '.join(users)}",
                                 reference="image-in-use", hint="destroy them first (cdsim instance destroy NAME)")
    _remove_tree(os.path.join(images_dir(state), meta["id"]), idmap.current())


def tree_size(folder: str) -> int:
    """Bytes on disk under ``folder``, each hard-linked file once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


# ---- cdsim's own code inside an image instance ----------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    """Host folders bound read-only under /opt/cdsim, and the loader and library path to run Python."""

    binds: tuple[tuple[str, str], ...]   # (host folder, path inside)
    loader: str                          # inside
    library_path: str                    # inside
    python: str                          # inside
    paths: tuple[str, ...]               # sys.path entries inside, first


def _loaded_libraries() -> list[str]:
    found = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(None, 5)
                path = fields[5].strip() if len(fields) == 6 else ""
                if ".so" in os.path.basename(path) and path.startswith("/"):
                    found.append(os.path.realpath(path))
    except OSError:
        pass
    return list(dict.fromkeys(found))


def runtime() -> Runtime:
    """What the host's Python needs to run cdsim inside an image instance (read on the host): its
    executable, its standard library, the folders of the shared libraries it has loaded (the C library
    and the dynamic loader among them), cdsim's packages and the site-packages folders."""
    binds: list[tuple[str, str]] = []
    real_exe = os.path.realpath(sys.executable)
    python = f"{RUNTIME_ROOT}/python/bin/{os.path.basename(real_exe)}"
    binds.append((real_exe, python))
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    inside_stdlib = f"{RUNTIME_ROOT}/python/lib/{os.path.basename(stdlib)}"
    binds.append((stdlib, inside_stdlib))   # Python finds its prefix from this landmark beside bin/

    def under(path: str, folder: str) -> bool:
        return path.startswith(folder + "/")

    libs = _loaded_libraries()
    loader_host = next((p for p in libs if os.path.basename(p).startswith("ld-")), None)
    if loader_host is None:
        raise EnvironmentProblem("cannot find this Python's dynamic loader in /proc/self/maps",
                                 reference="image-runtime")
    lib_dirs = list(dict.fromkeys([os.path.dirname(loader_host)]
                                  + [os.path.dirname(p) for p in libs if not under(p, stdlib)]))
    library_path = []
    for i, folder in enumerate(lib_dirs):
        binds.append((folder, f"{RUNTIME_ROOT}/lib/{i}"))
        library_path.append(f"{RUNTIME_ROOT}/lib/{i}")
    loader = f"{RUNTIME_ROOT}/lib/0/{os.path.basename(loader_host)}"
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = []
    for package in ("agent", "hooks_runtime"):
        binds.append((os.path.join(top, package), f"{RUNTIME_ROOT}/src/{package}"))
    paths.append(f"{RUNTIME_ROOT}/src")
    for i, folder in enumerate(p for p in site.getsitepackages() if os.path.isdir(p)):
        real = os.path.realpath(folder)
        if under(real, stdlib):
            paths.append(f"{inside_stdlib}/{os.path.relpath(real, stdlib)}")
        else:
            binds.append((real, f"{RUNTIME_ROOT}/site/{i}"))
            paths.append(f"{RUNTIME_ROOT}/site/{i}")
    return Runtime(binds=tuple(binds), loader=loader, library_path=":".join(library_path), python=python,
                   paths=tuple(paths))


def python_command(rt: Runtime) -> list[str]:
    """The command line that starts the host's Python inside an image instance, ready for ``-c CODE``
    arguments (PYTHON* variables ignored, cdsim's folders first on sys.path)."""
    return [rt.loader, "--library-path", rt.library_path, rt.python, "-E", "-s"]


def module_command(rt: Runtime, module: str) -> list[str]:
    """As ``python -m MODULE`` inside an image instance: append the module's arguments."""
    boot = (f"import sys; sys.path[:0] = {list(rt.paths)!r}; import runpy; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [*python_command(rt), "-c", boot]
