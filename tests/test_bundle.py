"""DownloadBundle's bundle handling (agent.bundle) and the revision seam (agent.revision).

Real bundles built in tmp_path: the k_archives revision as a directory, zip, tar and tgz.
"""
from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from agent.bundle import Limits, Member, check_archive_links, fetch_and_unpack, list_members
from agent.errors import BundleError, DeploymentError, UnsafeBundle, UsageError
from agent.revision import GitHubRevision, LocalRevision, S3Revision, classify_location, revision_env
from tests.lib import needs_root

BUNDLE_MTIME = 1_000_000_000


def make_rev(root) -> str:
    """The k_archives revision: exec bits, a 0600 file, a 0711 dir, file/dir/absolute links, an empty dir."""
    rev = root / "rev"
    (rev / "bin").mkdir(parents=True)
    (rev / "data").mkdir()
    (rev / "scripts").mkdir()
    (rev / "emptydir").mkdir()
    (rev / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    (rev / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (rev / "data" / "file.txt").write_text("data\n")
    (rev / "scripts" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(rev / "bin" / "tool", 0o755)
    os.chmod(rev / "scripts" / "run.sh", 0o755)
    os.chmod(rev / "data" / "file.txt", 0o600)
    os.chmod(rev / "appspec.yml", 0o644)
    os.chmod(rev / "bin", 0o711)
    os.symlink("data/file.txt", rev / "link.txt")
    os.symlink("data", rev / "dirlink")
    os.symlink("/etc/hostname", rev / "abslink")
    for dirpath, dirnames, filenames in os.walk(rev):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (BUNDLE_MTIME, BUNDLE_MTIME), follow_symlinks=False)
    return str(rev)


def entries(top: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), top))
    return sorted(out)


def pack(src: str, archive: str, kind: str, *, uid: int = 0, prefix: str = "") -> str:
    """Pack ``src`` as the conformance harness does (entries sorted, every mtime BUNDLE_MTIME)."""
    names = entries(src)
    if kind in ("tar", "tgz"):
        with tarfile.open(archive, "w:gz" if kind == "tgz" else "w", format=tarfile.GNU_FORMAT) as t:
            for rel in names:
                full = os.path.join(src, rel)
                ti = t.gettarinfo(full, arcname=prefix + rel)
                ti.uid = ti.gid = uid
                ti.uname = ti.gname = ""
                ti.mtime = BUNDLE_MTIME
                if ti.isreg():
                    with open(full, "rb") as f:
                        t.addfile(ti, f)
                else:
                    t.addfile(ti)
    else:
        dt = time.localtime(BUNDLE_MTIME)[:6]
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for rel in names:
                full = os.path.join(src, rel)
                st = os.lstat(full)
                is_dir = stat.S_ISDIR(st.st_mode)
                zi = zipfile.ZipInfo(prefix + rel + ("/" if is_dir else ""), dt)
                zi.create_system = 3
                zi.external_attr = (st.st_mode & 0xFFFF) << 16 | (0x10 if is_dir else 0)
                if is_dir:
                    z.writestr(zi, b"")
                elif stat.S_ISLNK(st.st_mode):
                    z.writestr(zi, os.readlink(full))
                else:
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    with open(full, "rb") as f:
                        z.writestr(zi, f.read())
    return archive


@pytest.fixture
def deployment_dir(tmp_path) -> str:
    d = tmp_path / "root" / "g1" / "d-1"
    d.mkdir(parents=True)
    return str(d)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


class TestArchiveBundles:
    """zip, tar and tgz reproduce k_archives' deployment-archive."""

    @pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
    def test_modes_symlinks_and_mtimes_are_kept(self, tmp_path, deployment_dir, kind):
        """Files keep their modes and mtimes, the 0711 dir keeps its mode, links stay links."""
        archive = pack(make_rev(tmp_path), str(tmp_path / f"rev.{kind}"), kind)
        logged = []
        arch = fetch_and_unpack(LocalRevision(archive, kind), deployment_dir, log=logged.append)
        assert arch == os.path.join(deployment_dir, "deployment-archive")
        assert entries(arch) == ["abslink", "appspec.yml", "bin", "bin/tool", "data", "data/file.txt",
                                 "dirlink", "emptydir", "link.txt", "scripts", "scripts/run.sh"]
        assert mode(f"{arch}/data/file.txt") == 0o600
        assert mode(f"{arch}/bin/tool") == 0o755
        assert mode(f"{arch}/scripts/run.sh") == 0o755
        assert mode(f"{arch}/appspec.yml") == 0o644
        assert mode(f"{arch}/bin") == 0o711
        assert mode(arch) == 0o755
        assert os.readlink(f"{arch}/link.txt") == "data/file.txt"
        assert os.readlink(f"{arch}/dirlink") == "data"
        assert os.readlink(f"{arch}/abslink") == "/etc/hostname"
        for name in ("appspec.yml", "bin/tool", "data/file.txt", "scripts/run.sh"):
            assert os.lstat(f"{arch}/{name}").st_mtime == BUNDLE_MTIME, name
        assert Path(f"{arch}/scripts/run.sh").read_text() == "#!/bin/sh\necho ran\n"
        link = os.path.join(deployment_dir, "bundle.tar")
        assert os.readlink(link) == archive
        assert logged == [f"Handle local file {link}"]

    @needs_root("restoring archive owners needs root (CI runs as root)")
    @pytest.mark.parametrize("kind", ["tar", "tgz"])
    def test_tar_restores_numeric_owners_from_the_headers(self, tmp_path, deployment_dir, kind):
        """As root, tar members get the uid/gid stored in the archive, names ignored."""
        archive = pack(make_rev(tmp_path), str(tmp_path / f"rev.{kind}"), kind, uid=4321)
        arch = fetch_and_unpack(LocalRevision(archive, kind), deployment_dir)
        for name in ("data/file.txt", "bin", "link.txt"):
            st = os.lstat(f"{arch}/{name}")
            assert (st.st_uid, st.st_gid) == (4321, 4321), name

    def test_zip_entries_get_our_owner(self, tmp_path, deployment_dir):
        """unzip does not restore owners: zip entries belong to the agent user."""
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.zip"), "zip")
        arch = fetch_and_unpack(LocalRevision(archive, "zip"), deployment_dir)
        assert os.lstat(f"{arch}/data/file.txt").st_uid == os.geteuid()

    def test_zip_extended_timestamp_wins_over_dos_time(self, tmp_path, deployment_dir):
        """Like unzip, the UTC mtime of the 'UT' extra field is used when present."""
        archive = str(tmp_path / "ut.zip")
        with zipfile.ZipFile(archive, "w") as z:
            zi = zipfile.ZipInfo("appspec.yml", (2020, 1, 2, 3, 4, 6))
            zi.create_system = 3
            zi.external_attr = 0o100640 << 16
            zi.extra = struct.pack("<HHBi", 0x5455, 5, 1, 1_234_567_891)
            z.writestr(zi, "version: 0.0\n")
        arch = fetch_and_unpack(LocalRevision(archive, "zip"), deployment_dir)
        assert os.lstat(f"{arch}/appspec.yml").st_mtime == 1_234_567_891
        assert mode(f"{arch}/appspec.yml") == 0o640

    def test_tgz_declared_as_tar_works(self, tmp_path, deployment_dir):
        """GNU tar auto-detects gzip, so --type tar with a tgz file unpacks."""
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.tgz"), "tgz")
        arch = fetch_and_unpack(LocalRevision(archive, "tar"), deployment_dir)
        assert mode(f"{arch}/data/file.txt") == 0o600

    def test_tar_declared_as_tgz_fails_and_leaves_an_empty_archive(self, tmp_path, deployment_dir):
        """tar -z refuses a plain tar; the deployment fails with the file named."""
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.tar"), "tar")
        with pytest.raises(BundleError) as e:
            fetch_and_unpack(LocalRevision(archive, "tgz"), deployment_dir)
        assert e.value.reference == "bundle-corrupt"
        assert archive in str(e.value)
        assert "--type tar" in e.value.hint
        assert os.listdir(os.path.join(deployment_dir, "deployment-archive")) == []

    @pytest.mark.parametrize("kind,content", [("zip", b"notazip\n"), ("tgz", b"notatgz\n"),
                                              ("tar", b"x" * 1000)])
    def test_garbage_file_is_a_bundle_error(self, tmp_path, deployment_dir, kind, content):
        """corrupt-zip / corrupt-tgz: a BundleError naming the file; deployment-archive exists, empty."""
        archive = tmp_path / f"rev.{kind}"
        archive.write_bytes(content)
        with pytest.raises(BundleError) as e:
            fetch_and_unpack(LocalRevision(str(archive), kind), deployment_dir)
        assert type(e.value) is BundleError
        assert str(archive) in str(e.value)
        assert os.listdir(os.path.join(deployment_dir, "deployment-archive")) == []
        assert os.readlink(os.path.join(deployment_dir, "bundle.tar")) == str(archive)

    def test_tgz_declared_as_zip_fails_with_a_hint(self, tmp_path, deployment_dir):
        """tgz-content-declared-zip: refused, and the hint says it looks like a tgz."""
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.zip"), "tgz")
        with pytest.raises(BundleError) as e:
            fetch_and_unpack(LocalRevision(archive, "zip"), deployment_dir)
        assert "not a readable zip archive" in e.value.message
        assert "--type tgz" in e.value.hint

    def test_truncated_tgz_is_refused_before_writing(self, tmp_path, deployment_dir):
        """A cut-off gzip stream is found while listing, so nothing is extracted."""
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.tgz"), "tgz")
        data = Path(archive).read_bytes()
        with open(archive, "wb") as f:
            f.write(data[: len(data) // 2])
        with pytest.raises(BundleError):
            fetch_and_unpack(LocalRevision(archive, "tgz"), deployment_dir)
        assert os.listdir(os.path.join(deployment_dir, "deployment-archive")) == []

    def test_second_download_of_an_archive_fails_with_same_file(self, tmp_path, deployment_dir):
        """Q37: the existing bundle.tar link makes the agent's copy fail with `same file: …`."""
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.zip"), "zip")
        fetch_and_unpack(LocalRevision(archive, "zip"), deployment_dir)
        with pytest.raises(DeploymentError) as e:
            fetch_and_unpack(LocalRevision(archive, "zip"), deployment_dir)
        assert e.value.message == f"same file: {archive} and {deployment_dir}/bundle.tar"

    def test_previous_archive_contents_are_replaced(self, tmp_path, deployment_dir):
        """deployment-archive is removed before unpacking (rm -rf)."""
        stale = os.path.join(deployment_dir, "deployment-archive", "stale")
        os.makedirs(stale)
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.tar"), "tar")
        arch = fetch_and_unpack(LocalRevision(archive, "tar"), deployment_dir)
        assert not os.path.exists(os.path.join(arch, "stale"))

    def test_later_member_of_the_same_name_wins(self, tmp_path, deployment_dir):
        """As with tar, a repeated name is overwritten by the later member."""
        archive = str(tmp_path / "dup.tar")
        with tarfile.open(archive, "w") as t:
            for body in (b"first", b"second!"):
                ti = tarfile.TarInfo("appspec.yml")
                ti.size = len(body)
                t.addfile(ti, io.BytesIO(body))
        arch = fetch_and_unpack(LocalRevision(archive, "tar"), deployment_dir)
        assert Path(f"{arch}/appspec.yml").read_bytes() == b"second!"

    def test_hard_link_to_an_earlier_member_is_recreated(self, tmp_path, deployment_dir):
        """A hard link inside the archive becomes a hard link inside deployment-archive."""
        archive = str(tmp_path / "hl.tar")
        with tarfile.open(archive, "w") as t:
            ti = tarfile.TarInfo("a/file")
            ti.size = 3
            t.addfile(ti, io.BytesIO(b"abc"))
            hl = tarfile.TarInfo("b/link")
            hl.type = tarfile.LNKTYPE
            hl.linkname = "./a/file"
            t.addfile(hl)
        arch = fetch_and_unpack(LocalRevision(archive, "tar"), deployment_dir)
        assert os.path.samefile(f"{arch}/a/file", f"{arch}/b/link")


class TestStripping:
    """§4.5: one top-level folder holding something named like 'appspec' is stripped, once."""

    def wrapped(self, tmp_path, extra: str | None = None, inner: str = "appspec.yml") -> str:
        top = tmp_path / "wrapped"
        (top / "myapp" / "scripts").mkdir(parents=True)
        (top / "myapp" / inner).write_text("version: 0.0\n")
        (top / "myapp" / "scripts" / "run.sh").write_text("echo\n")
        if extra:
            (top / extra).mkdir()
        return str(top)

    @pytest.mark.parametrize("kind", ["zip", "tgz"])
    def test_single_wrapping_folder_is_stripped(self, tmp_path, deployment_dir, kind):
        """zip-wrapped / tgz-wrapped: the folder's contents become the archive, and it is logged."""
        archive = pack(self.wrapped(tmp_path), str(tmp_path / f"w.{kind}"), kind)
        logged = []
        arch = fetch_and_unpack(LocalRevision(archive, kind), deployment_dir, log=logged.append)
        assert entries(arch) == ["appspec.yml", "scripts", "scripts/run.sh"]
        assert logged[-1] == "Stripping leading directory from archive bundle contents."
        assert sorted(os.listdir(deployment_dir)) == ["bundle.tar", "deployment-archive"]

    @pytest.mark.parametrize("extra", ["other", "__MACOSX"])
    def test_second_top_entry_prevents_stripping(self, tmp_path, deployment_dir, extra):
        """zip-two-top-entries and the __MACOSX folder: nothing is stripped."""
        archive = pack(self.wrapped(tmp_path, extra), str(tmp_path / "w.zip"), "zip")
        logged = []
        arch = fetch_and_unpack(LocalRevision(archive, "zip"), deployment_dir, log=logged.append)
        assert sorted(os.listdir(arch)) == sorted(["myapp", extra])
        assert len(logged) == 1

    def test_name_containing_appspec_in_any_case_counts(self, tmp_path, deployment_dir):
        """The test is 'name contains appspec, case-insensitively', not 'is appspec.yml'."""
        archive = pack(self.wrapped(tmp_path, inner="Old-AppSpec.txt"), str(tmp_path / "w.tar"), "tar")
        arch = fetch_and_unpack(LocalRevision(archive, "tar"), deployment_dir)
        assert "Old-AppSpec.txt" in os.listdir(arch)

    def test_folder_without_appspec_is_kept(self, tmp_path, deployment_dir):
        """A lone folder holding nothing named like appspec is not stripped."""
        archive = pack(self.wrapped(tmp_path, inner="readme.md"), str(tmp_path / "w.tar"), "tar")
        arch = fetch_and_unpack(LocalRevision(archive, "tar"), deployment_dir)
        assert os.listdir(arch) == ["myapp"]

    def test_only_one_level_is_stripped(self, tmp_path, deployment_dir):
        """Two nested wrapping folders lose only the outer one."""
        src = tmp_path / "nested"
        (src / "a" / "b").mkdir(parents=True)
        (src / "a" / "appspec-dir-marker").mkdir()
        (src / "a" / "b" / "appspec.yml").write_text("x")
        archive = pack(str(src), str(tmp_path / "n.zip"), "zip")
        arch = fetch_and_unpack(LocalRevision(archive, "zip"), deployment_dir)
        assert sorted(os.listdir(arch)) == ["appspec-dir-marker", "b"]

    def test_directory_bundles_are_never_stripped(self, tmp_path, deployment_dir):
        """The rule applies to archives only."""
        arch = fetch_and_unpack(LocalRevision(self.wrapped(tmp_path), "directory"), deployment_dir)
        assert os.listdir(arch) == ["myapp"]


class TestDirectoryBundles:
    """A directory bundle is copied as the agent's plain recursive copy does (§6.8, Q29)."""

    def test_modes_minus_umask_fresh_dirs_new_mtimes_links_as_links(self, tmp_path, deployment_dir):
        """Modes & ~umask, folders 0777 & ~umask, mtime = now, symlinks copied as symlinks."""
        rev = make_rev(tmp_path)
        os.chmod(os.path.join(rev, "appspec.yml"), 0o666)
        old = os.umask(0o027)
        try:
            before = time.time()
            logged = []
            arch = fetch_and_unpack(LocalRevision(rev, "directory"), deployment_dir, log=logged.append)
        finally:
            os.umask(old)
        assert entries(arch) == entries(rev)
        assert mode(f"{arch}/appspec.yml") == 0o640
        assert mode(f"{arch}/bin/tool") == 0o750
        assert mode(f"{arch}/data/file.txt") == 0o600
        assert mode(f"{arch}/bin") == 0o750      # fresh, not the source's 0711
        assert mode(arch) == 0o750
        assert os.readlink(f"{arch}/dirlink") == "data"
        assert os.readlink(f"{arch}/abslink") == "/etc/hostname"
        assert os.lstat(f"{arch}/bin/tool").st_mtime >= before - 1
        assert Path(f"{arch}/bin/tool").read_text() == "#!/bin/sh\necho tool\n"
        assert logged == [f"Handle local directory {rev}"]
        assert not os.path.lexists(os.path.join(deployment_dir, "bundle.tar"))

    def test_second_download_copies_into_a_subfolder(self, tmp_path, deployment_dir):
        """Q37: with deployment-archive present, the source folder lands inside it."""
        rev = make_rev(tmp_path)
        fetch_and_unpack(LocalRevision(rev, "directory"), deployment_dir)
        arch = fetch_and_unpack(LocalRevision(rev, "directory"), deployment_dir)
        assert os.path.isfile(f"{arch}/appspec.yml")
        assert entries(f"{arch}/rev") == entries(rev)

    def test_large_file_is_copied_whole(self, tmp_path, deployment_dir):
        """Kernel-side copy loops until the whole file is there."""
        rev = tmp_path / "big"
        rev.mkdir()
        payload = os.urandom(3 * 1024 * 1024 + 17)
        (rev / "blob").write_bytes(payload)
        arch = fetch_and_unpack(LocalRevision(str(rev), "directory"), deployment_dir)
        assert Path(f"{arch}/blob").read_bytes() == payload

    def test_dir_link_inside_the_bundle_is_fine(self, tmp_path, deployment_dir):
        """k_archives' dirlink -> data stays a link (install materialises it)."""
        arch = fetch_and_unpack(LocalRevision(make_rev(tmp_path), "directory"), deployment_dir)
        check_archive_links(arch)
        assert os.path.islink(f"{arch}/dirlink")


class TestLinkCheck:
    """check_archive_links applies to any unpacked folder."""

    def test_chain_of_links_leading_outside_is_refused(self, tmp_path):
        """a -> b inside, b -> a host folder: both resolve outside and both are named."""
        arch = tmp_path / "arch"
        arch.mkdir()
        (tmp_path / "host").mkdir()
        os.symlink("b", arch / "a")
        os.symlink(str(tmp_path / "host"), arch / "b")
        os.symlink("/etc/hostname", arch / "f")
        with pytest.raises(UnsafeBundle) as e:
            check_archive_links(str(arch))
        assert set(e.value.members) == {"a", "b"}

    def test_links_leading_into_each_others_folders_are_refused(self, tmp_path):
        """a/x -> ../b and b/y -> ../a: copying either folder would never end."""
        arch = tmp_path / "arch"
        (arch / "a").mkdir(parents=True)
        (arch / "b").mkdir()
        (arch / "c").mkdir()
        os.symlink("../b", arch / "a" / "x")
        os.symlink("../a", arch / "b" / "y")
        os.symlink("../a", arch / "c" / "fine")  # into the cycle, but not on it
        with pytest.raises(UnsafeBundle) as e:
            check_archive_links(str(arch))
        assert set(e.value.members) == {"a/x", "b/y"}
        assert "without end" in e.value.message

    def test_dangling_and_looping_links_pass(self, tmp_path):
        """Links that resolve to nothing are copied as links by install; nothing to refuse."""
        arch = tmp_path / "arch"
        arch.mkdir()
        os.symlink("nowhere", arch / "dangling")
        os.symlink("l2", arch / "l1")
        os.symlink("l1", arch / "l2")
        check_archive_links(str(arch))

    def test_copying_a_folder_into_itself_is_refused(self, tmp_path):
        """A deployment root inside the bundle folder would make the copy walk its own output."""
        rev = make_rev(tmp_path)
        inner = os.path.join(rev, "root", "g1", "d-1")
        os.makedirs(inner)
        with pytest.raises(DeploymentError, match=r"cannot copy directory .* to itself"):
            fetch_and_unpack(LocalRevision(rev, "directory"), inner)


class TestListMembers:
    """list_members reads a bundle without extracting it."""

    @pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
    def test_members_of_k_archives(self, tmp_path, kind):
        """Names, types, modes, sizes and link targets as stored."""
        archive = pack(make_rev(tmp_path), str(tmp_path / f"rev.{kind}"), kind)
        members = {m.name: m for m in list_members(archive, kind)}
        assert set(members) == {"abslink", "appspec.yml", "bin", "bin/tool", "data", "data/file.txt",
                                "dirlink", "emptydir", "link.txt", "scripts", "scripts/run.sh"}
        assert members["data/file.txt"] == Member("data/file.txt", "file", 0o600, 5, None,
                                                  float(BUNDLE_MTIME), *((0, 0) if kind != "zip" else (None, None)))
        assert members["dirlink"].type == "symlink" and members["dirlink"].link_target == "data"
        assert members["bin"].type == "dir" and members["bin"].mode == 0o711
        assert not os.path.exists(tmp_path / "deployment-archive")

    def test_directory_members(self, tmp_path):
        """A directory bundle is listed without following its links."""
        members = {m.name: m for m in list_members(make_rev(tmp_path), "directory")}
        assert members["abslink"].type == "symlink"
        assert members["abslink"].link_target == "/etc/hostname"
        assert members["bin/tool"].mode == 0o755

    def test_limits_apply_to_listing(self, tmp_path):
        """Too many members is bundle-too-large."""
        archive = pack(make_rev(tmp_path), str(tmp_path / "rev.tar"), "tar")
        with pytest.raises(BundleError) as e:
            list_members(archive, "tar", limits=Limits(max_members=3))
        assert e.value.reference == "bundle-too-large"


class TestRevision:
    """classify_location (§1.4) and revision_env (§7.3)."""

    def test_relative_path_is_made_absolute(self):
        """A path without scheme is local, expanded against the cwd."""
        assert classify_location("b/../rev.zip", "zip", "/srv/x") == LocalRevision("/srv/x/rev.zip", "zip")
        assert classify_location("/abs/dir", "directory", "/") == LocalRevision("/abs/dir", "directory")

    def test_file_url_is_accepted_as_its_path(self):
        """file:///abs/path names a local bundle (our own deploy accepts it)."""
        assert classify_location("file:///srv/my%20rev", "tar", "/") == LocalRevision("/srv/my rev", "tar")
        with pytest.raises(UsageError):
            classify_location("file://otherhost/x", "tar", "/")

    def test_s3_location(self):
        """Bucket from the host, key verbatim, versionId and etag from the query."""
        r = classify_location("s3://bkt/a/b%20c.zip?versionId=v1&etag=e2&x=1", "zip", "/")
        assert r == S3Revision("bkt", "a/b%20c.zip", "zip", "v1", "e2")
        assert revision_env(r) == {"BUNDLE_BUCKET": "bkt", "BUNDLE_KEY": "a/b%20c.zip",
                                   "BUNDLE_VERSION": "v1", "BUNDLE_ETAG": "e2"}
        assert revision_env(S3Revision("b", "k", "tgz"))["BUNDLE_ETAG"] is None

    def test_s3_location_without_key(self):
        """The agent's message for an s3 URL without a path."""
        with pytest.raises(UsageError) as e:
            classify_location("s3://bkt", "zip", "/")
        assert e.value.message == "s3 location s3://bkt not in the expected format of 's3://bucket/key'"

    def test_github_locations(self):
        """github.com/<owner>/<repo> is HEAD; api.github.com takes the last segment; tgz becomes zip."""
        assert classify_location("https://github.com/me/my/repo", "tar", "/") == \
            GitHubRevision("me", "my/repo", "HEAD", "tar")
        r = classify_location("https://api.github.com/repos/me/repo/tarball/abc123", "tgz", "/")
        assert r == GitHubRevision("me", "repo", "abc123", "zip")
        assert revision_env(r) == {"BUNDLE_COMMIT": "abc123"}
        with pytest.raises(UsageError) as e:
            classify_location("https://api.github.com/users/me", "zip", "/")
        assert e.value.message.startswith("github location https://api.github.com/users/me not in the "
                                          "expected format of 'https://github.com/<owner>/<repository_name>'"
                                          "(assumes HEAD commit) or ")

    @pytest.mark.parametrize("location", ["https://example.com/x.zip", "ab:c", "ftp://h/x"])
    def test_unknown_location(self, location):
        """Other schemes (including a relative path that parses as one) are refused verbatim."""
        with pytest.raises(UsageError) as e:
            classify_location(location, "zip", "/")
        assert e.value.message == (f"unknown location {location} cannot be determined to be S3, Github, "
                                   "or a local file / directory")

    def test_local_revisions_have_no_bundle_variables(self):
        """Local bundles export no BUNDLE_* variable."""
        assert revision_env(LocalRevision("/x", "zip")) == {}
        assert LocalRevision("/x", "zip").revision_type == "Local File"
        assert LocalRevision("/x", "directory").revision_type == "Local Directory"

    def test_unimplemented_sources_are_a_clear_error(self, deployment_dir):
        """Fetching S3/GitHub revisions is not built yet and says so."""
        with pytest.raises(UsageError) as e:
            fetch_and_unpack(S3Revision("b", "k", "zip"), deployment_dir)
        assert e.value.reference == "revision-unsupported"
