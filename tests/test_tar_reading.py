"""The single-pass tar reading of agent.bundle (fast plain headers, the
gzip stream inflated on a second thread) gives exactly what tarfile gives, for every member, and a
refusal found late still leaves the archive folder empty."""
import io
import os
import subprocess
import tarfile

import pytest

from agent import bundle
from agent.errors import BundleError, UnsafeBundle
from agent.revision import LocalRevision
from tests.lib import needs_root, require_tool

FIELDS = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "offset_data")


def _tree(root):
    long_dir = root / ("a" * 60) / ("b" * 60)
    long_dir.mkdir(parents=True)
    (long_dir / ("c" * 90)).write_text("x" * 700)
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "f.txt").write_text("hello")
    os.symlink("dir/f.txt", root / "link")
    os.symlink("y" * 150, root / "longlink")
    os.link(root / "dir" / "f.txt", root / "hard")
    (root / "empty").write_bytes(b"")
    (root / "big").write_bytes(os.urandom(70000))
    (root / "ünïcode").write_text("u")


def _reference(path, mode):
    with tarfile.open(path, mode) as tf:
        return [tuple(getattr(i, f) for f in FIELDS) for i in tf]


# v7 and ustar cannot hold the tree's long names (GNU tar refuses to write them), so they are left out
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
@pytest.mark.parametrize("gz", [False, True])
def test_every_member_reads_as_tarfile_reads_it(tmp_path, fmt, gz):
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    out = tmp_path / ("b.tgz" if gz else "b.tar")
    subprocess.run(["tar", f"--format={fmt}", "-czf" if gz else "-cf", str(out), "-C", str(src), "."],
                   capture_output=True, check=True)
    with bundle._open_tar(str(out), "tgz" if gz else "tar") as tf:
        ours = [tuple(getattr(i, f) for f in FIELDS) for i in bundle._tar_infos(tf)]
    assert ours == _reference(str(out), "r:gz" if gz else "r:")
    assert len(ours) >= 10


@pytest.mark.parametrize("cut", [700, 1024, 2048, -1024, -10])
def test_a_truncated_archive_fails_as_before_and_leaves_nothing(tmp_path, cut):
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    whole = tmp_path / "whole.tar"
    subprocess.run(["tar", "-cf", str(whole), "-C", str(src), "."], check=True)
    data = whole.read_bytes()
    cut_tar = tmp_path / "cut.tar"
    cut_tar.write_bytes(data[:cut])
    dep = tmp_path / "dep"
    dep.mkdir()
    try:
        bundle.fetch_and_unpack(LocalRevision(str(cut_tar), "tar"), str(dep))
    except BundleError:
        assert os.listdir(dep / "deployment-archive") == []
    else:  # tarfile ends quietly at a truncated header after the first member, so does cdsim
        assert (dep / "deployment-archive").is_dir()


def test_an_unsafe_member_after_many_good_ones_leaves_the_archive_empty(tmp_path):
    out = tmp_path / "late.tgz"
    with tarfile.open(out, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        for n in range(500):
            info = tarfile.TarInfo(f"app/f{n}.txt")
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
        evil = tarfile.TarInfo("../evil.txt")
        evil.size = 3
        tf.addfile(evil, io.BytesIO(b"bad"))
    dep = tmp_path / "dep"
    dep.mkdir()
    with pytest.raises(UnsafeBundle) as e:
        bundle.fetch_and_unpack(LocalRevision(str(out), "tgz"), str(dep))
    assert "../evil.txt" in e.value.message
    assert os.listdir(dep / "deployment-archive") == []
    assert not (tmp_path / "evil.txt").exists()


def _gzip_member(data: bytes, **kw) -> bytes:
    import gzip
    return gzip.compress(data, mtime=0, **kw)


def _with_header_extras(data: bytes) -> bytes:
    """A member with FHCRC, FEXTRA, FNAME and FCOMMENT set (the header CRC deliberately wrong:
    GzipFile skips it, zlib checks it)."""
    import struct
    import zlib
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = body.compress(data) + body.flush()
    head = b"\x1f\x8b\x08" + bytes([0x02 | 0x04 | 0x08 | 0x10]) + bytes(4) + b"\x00\x03"
    head += struct.pack("<H", 4) + b"abcd" + b"name\x00" + b"comment\x00" + b"\xff\xff"
    return head + deflated + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


_TEXT = b"".join(b"line %d of a text that compresses well\n" % n for n in range(200_000))
_GZ = _gzip_member(_TEXT)
GZIP_STREAMS = {
    "one member": _GZ,
    "empty": _gzip_member(b""),
    "two members": _GZ + _gzip_member(b"second member\n"),
    "zero padding": _GZ + bytes(4096),
    "junk after": _GZ + b"junk",
    "truncated in the data": _GZ[:len(_GZ) // 2],
    "truncated in the trailer": _GZ[:-3],
    "bad crc": _GZ[:-8] + bytes(4) + _GZ[-4:],
    "bad size": _GZ[:-4] + b"\x01\x02\x03\x04",
    "corrupt deflate": _GZ[:40] + b"\xff" * 64 + _GZ[104:],
    "header extras": _with_header_extras(_TEXT[:100_000]),
    "random data": _gzip_member(os.urandom(3 << 20)),
}


@pytest.mark.parametrize("name", sorted(GZIP_STREAMS))
def test_the_read_ahead_gzip_stream_gives_what_gzipfile_gives(tmp_path, name):
    """_GzipPrefetch inflates one-member streams itself (zlib-ng where installed) and hands anything
    else to gzip.GzipFile: either way the bytes, and the error at the end, are GzipFile's."""
    import gzip
    path = tmp_path / "x.gz"
    path.write_bytes(GZIP_STREAMS[name])

    def drain(read):
        got, error = [], None
        try:
            while chunk := read(300_000):
                got.append(chunk)
        except Exception as e:  # noqa: BLE001 - compared below
            error = (type(e), str(e))
        return b"".join(got), error

    with gzip.GzipFile(str(path), "rb") as gz:
        expected = drain(gz.read)
    reader = bundle._GzipPrefetch(str(path))
    try:
        ours = drain(reader.read)
    finally:
        reader.close()
    assert ours[1] == expected[1]
    if expected[1] is None:
        assert ours[0] == expected[0]
    else:  # before an error each gives a prefix of the same stream; how much depends on the read sizes
        shorter = min(len(ours[0]), len(expected[0]))
        assert ours[0][:shorter] == expected[0][:shorter]


def _ustar_with_prefixes(path, gz):
    """A ustar archive (Python's writer) whose long names use the header's prefix field, for files
    and folders (with and without the trailing slash), with a byte of every value in a member."""
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.USTAR_FORMAT) as tf:
        deep = "/".join(["p" * 40, "q" * 40, "r" * 40])
        for name, kind in [(f"{deep}/file.txt", tarfile.REGTYPE), (f"{deep}/folder", tarfile.DIRTYPE),
                           (f"{deep}/slash/", tarfile.DIRTYPE), ("./plain/name-1.dat", tarfile.REGTYPE),
                           (".hidden", tarfile.REGTYPE), ("with space/x", tarfile.REGTYPE),
                           (f"{deep}/link", tarfile.SYMTYPE)]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o640
            info.mtime = 1_700_000_000
            info.uname, info.gname = "nobody", "nogroup"
            data = bytes(range(256)) * 3 if kind == tarfile.REGTYPE else b""
            if kind == tarfile.SYMTYPE:
                info.linkname = "file.txt"
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("gz", [False, True])
def test_ustar_prefix_names_read_as_tarfile_reads_them(tmp_path, gz):
    """The fast header parser's prefix handling and checksum (two Adler-32 halves) against tarfile."""
    out = tmp_path / ("u.tgz" if gz else "u.tar")
    _ustar_with_prefixes(out, gz)
    with bundle._open_tar(str(out), "tgz" if gz else "tar") as tf:
        ours = [tuple(getattr(i, f) for f in FIELDS) for i in bundle._tar_infos(tf)]
    assert ours == _reference(str(out), "r:gz" if gz else "r:")
    assert any(len(name) > 100 for name, *_ in ours)  # the prefix field was used
    dep = tmp_path / "dep"
    dep.mkdir()
    bundle.fetch_and_unpack(LocalRevision(str(out), "tgz" if gz else "tar"), str(dep))
    deep = dep / "deployment-archive" / ("p" * 40) / ("q" * 40) / ("r" * 40)
    assert (deep / "file.txt").read_bytes() == bytes(range(256)) * 3
    assert oct((deep / "folder").stat().st_mode & 0o7777) == "0o755"
    assert (deep / "slash").is_dir()
    assert os.readlink(deep / "link") == "file.txt"


def test_a_header_with_a_wrong_checksum_ends_the_archive_as_it_does_for_tarfile(tmp_path):
    """A bad checksum after a good member: the fast parser leaves the header to tarfile, which takes
    it as the archive's end; cdsim reads and writes the same members tarfile reads, nothing after."""
    out = tmp_path / "bad.tar"
    _ustar_with_prefixes(out, False)
    data = bytearray(out.read_bytes())
    second = 512 + 1024  # the second member's header: after the first header and its 768 bytes (2 blocks)
    data[second + 140] ^= 0x01  # a byte of the mtime field: the stored checksum no longer matches
    out.write_bytes(bytes(data))
    with bundle._open_tar(str(out), "tar") as tf:
        ours = [tuple(getattr(i, f) for f in FIELDS) for i in bundle._tar_infos(tf)]
    assert ours == _reference(str(out), "r:")
    assert len(ours) == 1
    dep = tmp_path / "dep"
    dep.mkdir()
    bundle.fetch_and_unpack(LocalRevision(str(out), "tar"), str(dep))
    assert os.listdir(dep / "deployment-archive") == ["p" * 40]


@pytest.mark.parametrize(("name", "refused"), [
    ("app/f.txt", False), ("./app/f.txt", False), ("a-b_c+d@e%f=g,h~/x.y", False), (".hidden/x", False),
    ("app/./f", False), ("app//f", False), ("app/f/", False),
    ("../f", True), ("app/../../f", True), ("/etc/x", True), ("\\etc\\x", True), ("C:/x", True),
    ("a\\..\\b", True), ("app/f ", True), ("app /f", True), ("app/f\n", True), ("a\x00b", True),
])
def test_names_at_the_edge_of_the_plain_name_shortcut_get_the_full_rules(name, refused):
    """Names the shortcut accepts without the escape checks, and names it must leave to them."""
    member = bundle.Member(name, "file", 0o644)
    if refused:
        with pytest.raises(UnsafeBundle):
            bundle.check_members([member])
    else:
        bundle.check_members([member])


_MODES = {"a": 0o644, "b": 0o755, "c": 0o600, "d": 0o640, "e": 0o777, "f": 0o1755, "g": 0o000, "h": 0o666}


def _modes_tar(path):
    """Members of every usual mode (and sticky, and none), half owned by uid/gid 4321 and half by this
    process's ids, all without owner names (so the numbers apply, as GNU tar does as root)."""
    with tarfile.open(path, "w") as tf:
        for i, (name, mode) in enumerate(sorted(_MODES.items())):
            info = tarfile.TarInfo(f"app/{name}")
            info.mode, info.size, info.mtime = mode, 3, 1_600_000_000
            info.uid, info.gid = (4321, 4321) if i % 2 else (os.geteuid(), os.getegid())
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(b"abc"))


def _unpack_under(tmp_path, umask, default_acl=None):
    out = tmp_path / "m.tar"
    _modes_tar(out)
    dep = tmp_path / "dep"
    dep.mkdir()
    if default_acl:
        subprocess.run(["setfacl", "-d", "-m", default_acl, str(dep)], check=True)
    old = os.umask(umask)
    try:
        bundle.fetch_and_unpack(LocalRevision(str(out), "tar"), str(dep))
    finally:
        os.umask(old)
    return dep / "deployment-archive" / "app"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o000])
def test_members_get_their_exact_modes_and_owners_under_any_umask(tmp_path, umask):
    """A file created with its mode (no fchmod) or by its owner (no fchown) ends as tar -xp leaves it."""
    app = _unpack_under(tmp_path, umask)
    for i, (name, mode) in enumerate(sorted(_MODES.items())):
        st = (app / name).stat()
        assert oct(st.st_mode & 0o7777) == oct(mode), name
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == ((4321, 4321) if i % 2 else (0, os.getegid())), name
        assert st.st_mtime == 1_600_000_000


def test_members_get_their_exact_modes_under_a_default_acl(tmp_path):
    """A default ACL on the deployment folder takes the umask's place for new files: modes are still
    set exactly as the members give them."""
    require_tool("setfacl", "acl")
    app = _unpack_under(tmp_path, 0o022, default_acl="u::rwx,g::r-x,o::---,m::rwx")
    for name, mode in _MODES.items():
        assert oct((app / name).stat().st_mode & 0o7777) == oct(mode), name


@needs_root("giving the deployment folder another group")
def test_members_get_their_exact_owners_in_a_setgid_folder(tmp_path):
    """A setgid deployment folder gives new files its group: a member owned by this process's own ids
    is still given them (the fchown a creation by the owner would otherwise make unnecessary)."""
    dep = tmp_path / "dep"
    dep.mkdir()
    os.chown(dep, -1, 4321)
    os.chmod(dep, 0o2755)
    out = tmp_path / "m.tar"
    _modes_tar(out)
    bundle.fetch_and_unpack(LocalRevision(str(out), "tar"), str(dep))
    for i, name in enumerate(sorted(_MODES)):
        st = (dep / "deployment-archive" / "app" / name).stat()
        assert (st.st_uid, st.st_gid) == ((4321, 4321) if i % 2 else (0, os.getegid())), name
