"""Hostile archives and directory bundles: each is refused, naming the member, and nothing is written
outside the deployment's archive folder (a sentinel folder beside the deployment root stays identical).
"""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile

import pytest

from agent.bundle import Limits, check_members, fetch_and_unpack, list_members
from agent.errors import BundleError, UnsafeBundle
from agent.revision import LocalRevision
from tests.lib import needs_root

from .harness import DIR, LNK, REG, SYM, snapshot, tar_with, zip_with

UP = "../../../../outside"  # from <tmp>/root/g1/d-1/deployment-archive to <tmp>/outside


@pytest.fixture
def site(tmp_path):
    """A deployment folder and, beside the deployment root, a sentinel folder with one file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    os.chmod(outside / "keep.txt", 0o644)
    deployment_dir = tmp_path / "root" / "g1" / "d-1"
    deployment_dir.mkdir(parents=True)
    return tmp_path


def assert_refused_cleanly(site, kind: str, archive: str, *names: str, error=UnsafeBundle):
    """Unpacking fails with ``error`` naming ``names``; the only new things are bundle.tar and an empty
    deployment-archive."""
    before = snapshot(site)
    deployment_dir = str(site / "root" / "g1" / "d-1")
    with pytest.raises(error) as e:
        fetch_and_unpack(LocalRevision(archive, kind), deployment_dir)
    for name in names:
        assert repr(name) in e.value.message
    if error is UnsafeBundle:
        assert e.value.reference == "bundle-unsafe-member"
        assert set(e.value.members) == set(names)
    after = snapshot(site)
    new = {k: after[k] for k in set(after) - set(before)}
    link = "root/g1/d-1/bundle.tar"
    assert new == {link: ("link", archive), "root/g1/d-1/deployment-archive": new.get(
        "root/g1/d-1/deployment-archive")}
    assert os.listdir(os.path.join(deployment_dir, "deployment-archive")) == []
    assert {k: v for k, v in after.items() if k != link and k in before} == before
    return e.value


def assert_kept_inside(site, archive: str, top: set[str], warned: str) -> str:
    """A zip that unzip would rewrite is unpacked, rewritten, inside the archive folder only; the warning
    names ``warned``. Returns the archive folder."""
    before = snapshot(site)
    warnings: list[str] = []
    arch = fetch_and_unpack(LocalRevision(archive, "zip"), str(site / "root" / "g1" / "d-1"), warn=warnings.append)
    assert set(os.listdir(arch)) == top
    assert any(repr(warned) in w for w in warnings), warnings
    after = snapshot(site)
    assert {k: v for k, v in after.items() if k in before and k != "root/g1/d-1"} == \
        {k: v for k, v in before.items() if k != "root/g1/d-1"}
    assert all(k.startswith("root/g1/d-1/") for k in set(after) - set(before))
    return arch


class TestEscapingNames:
    """Members whose names leave the archive folder."""

    def test_zip_slip(self, site):
        """A zip entry ../../x lands inside as x, as unzip writes it (its '..' skipped), and is named in a warning."""
        archive = zip_with(site / "b.zip", ("appspec.yml", b"v", 0o100644), (f"{UP}/pwned", b"x", 0o100644))
        arch = assert_kept_inside(site, archive, {"appspec.yml", "outside"}, f"{UP}/pwned")
        with open(os.path.join(arch, "outside", "pwned"), "rb") as f:
            assert f.read() == b"x"

    def test_tar_with_dotdot(self, site):
        """A tar member ../../x is refused, also when hidden after a real folder."""
        archive = tar_with(site / "b.tar", (f"{UP}/pwned", REG, {"data": b"x"}),
                           ("a/../../../../../outside/pwned2", REG, {"data": b"x"}))
        assert_refused_cleanly(site, "tar", archive, f"{UP}/pwned", "a/../../../../../outside/pwned2")

    def test_absolute_tar_member(self, site):
        """A member with an absolute name is refused (GNU tar would strip the '/'; we refuse)."""
        archive = tar_with(site / "b.tgz", (str(site / "outside" / "pwned"), REG, {"data": b"x"}))
        assert_refused_cleanly(site, "tgz", archive, str(site / "outside" / "pwned"))

    def test_absolute_zip_member(self, site):
        """A zip entry with an absolute name lands inside, its leading '/' stripped, as unzip writes it."""
        name = str(site / "outside" / "pwned")
        arch = assert_kept_inside(site, zip_with(site / "b.zip", (name, b"x", 0o100644)), {name.split("/")[1]}, name)
        assert os.path.isfile(os.path.join(arch, name.lstrip("/")))

    def test_backslash_and_drive_letter_names(self, site):
        """Windows-style escapes: ..\\..\\x, \\x and C:/x."""
        names = ["..\\..\\..\\..\\outside\\pwned", "\\outside\\pwned", "C:/outside/pwned"]
        archive = zip_with(site / "b.zip", *[(n, b"x", 0o100644) for n in names])
        assert_refused_cleanly(site, "zip", archive, *names)


class TestLinks:
    """Symbolic and hard links: never written through, never linking outside."""

    def test_tar_symlink_out_then_file_through_it(self, site):
        """A link to the sentinel folder, then a file under the link: refused before writing."""
        archive = tar_with(site / "b.tar", ("evil", SYM, {"linkname": str(site / "outside")}),
                           ("evil/pwned", REG, {"data": b"x"}))
        assert_refused_cleanly(site, "tar", archive, "evil/pwned")

    def test_zip_relative_symlink_out_then_file_through_it(self, site):
        """Same with a relative link in a zip."""
        archive = zip_with(site / "b.zip", ("up", UP.encode(), 0o120777), ("up/pwned", b"x", 0o100644))
        assert_refused_cleanly(site, "zip", archive, "up/pwned")

    def test_file_through_an_inside_symlink_is_refused_too(self, site):
        """Even a link to a folder of the archive is never written through."""
        archive = tar_with(site / "b.tar", ("data", DIR, {"mode": 0o755}),
                           ("dirlink", SYM, {"linkname": "data"}), ("dirlink/x", REG, {"data": b"x"}))
        assert_refused_cleanly(site, "tar", archive, "dirlink/x")

    def test_link_replacing_a_folder_with_members(self, site):
        """A link that would replace an earlier folder holding members is refused."""
        archive = tar_with(site / "b.tar", ("d/f", REG, {"data": b"x"}),
                           ("d", SYM, {"linkname": str(site / "outside")}))
        assert_refused_cleanly(site, "tar", archive, "d")

    @pytest.mark.parametrize("target", [f"{UP}/keep.txt", "/etc/passwd", "missing"])
    def test_hard_link_out_or_to_nothing(self, site, target):
        """A hard link may only name an earlier regular member."""
        archive = tar_with(site / "b.tar", ("hl", LNK, {"linkname": target}))
        assert_refused_cleanly(site, "tar", archive, "hl")
        assert os.stat(site / "outside" / "keep.txt").st_nlink == 1

    @pytest.mark.parametrize("kind", ["tar", "zip"])
    def test_symlink_to_a_folder_outside_is_refused(self, site, kind):
        """A link to a host folder would make install copy its files: refused, archive left empty."""
        target = str(site / "outside")
        archive = (tar_with(site / "b.tar", ("appspec.yml", REG, {"data": b"v"}),
                            ("hostdir", SYM, {"linkname": target}))
                   if kind == "tar" else
                   zip_with(site / "b.zip", ("appspec.yml", b"v", 0o100644),
                            ("hostdir", target.encode(), 0o120777)))
        err = assert_refused_cleanly(site, kind, archive, "hostdir")
        assert target in err.message

    def test_symlink_to_its_own_parent_is_refused(self, site):
        """A link to a folder containing itself would be copied without end."""
        archive = tar_with(site / "b.tar", ("a", DIR, {"mode": 0o755}), ("a/loop", SYM, {"linkname": ".."}))
        assert_refused_cleanly(site, "tar", archive, "a/loop")

    def test_symlink_to_a_file_outside_is_kept_as_a_link(self, site):
        """k_archives' abslink -> /etc/hostname: allowed, recreated as a link, never followed."""
        target = str(site / "outside" / "keep.txt")
        archive = zip_with(site / "b.zip", ("abslink", target.encode(), 0o120777))
        before = snapshot(site / "outside")
        arch = fetch_and_unpack(LocalRevision(archive, "zip"), str(site / "root" / "g1" / "d-1"))
        assert os.readlink(os.path.join(arch, "abslink")) == target
        assert snapshot(site / "outside") == before


class TestSpecialMembers:
    """Devices, FIFOs and setuid/setgid bits."""

    @pytest.mark.parametrize("kind,what", [(tarfile.CHRTYPE, "character device"),
                                           (tarfile.BLKTYPE, "block device"), (tarfile.FIFOTYPE, "FIFO")])
    def test_tar_special_files(self, site, kind, what):
        """Device nodes and FIFOs are refused by name."""
        archive = tar_with(site / "b.tar", ("appspec.yml", REG, {"data": b"v"}),
                           ("dev/node", kind, {"devmajor": 1, "devminor": 3}))
        err = assert_refused_cleanly(site, "tar", archive, "dev/node")
        assert what in err.message

    @pytest.mark.parametrize("mode", [0o020644, 0o060644, 0o010644, 0o140644])
    def test_zip_special_files(self, site, mode):
        """zip entries whose Unix mode is a device, FIFO or socket are refused."""
        archive = zip_with(site / "b.zip", ("node", b"", mode))
        assert_refused_cleanly(site, "zip", archive, "node")

    def test_setuid_and_setgid_members(self, site):
        """setuid/setgid files and folders are refused, all named in one error."""
        archive = tar_with(site / "b.tgz", ("bin", DIR, {"mode": 0o2755}),
                           ("bin/su", REG, {"data": b"x", "mode": 0o4755}),
                           ("bin/sg", REG, {"data": b"x", "mode": 0o2711}))
        err = assert_refused_cleanly(site, "tgz", archive, "bin", "bin/su", "bin/sg")
        assert "setuid/setgid" in err.message

    def test_zip_setuid_entry(self, site):
        """A zip entry with mode 04755 lands without its setuid bit (unzip drops it), and a warning says so."""
        arch = assert_kept_inside(site, zip_with(site / "b.zip", ("tool", b"x", 0o104755)), {"tool"}, "tool")
        assert stat.S_IMODE(os.lstat(os.path.join(arch, "tool")).st_mode) == 0o755


class TestBombs:
    """Limits on what an archive may unpack to."""

    def test_zip_bomb_is_refused_with_default_limits(self, site):
        """150 MiB of zeros in a ~150 KiB zip exceeds the 200:1 ratio: bundle-too-large, nothing written."""
        path = site / "bomb.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("zeros", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(150):
                f.write(chunk)
        assert path.stat().st_size < 1 << 20
        err = assert_refused_cleanly(site, "zip", str(path), error=BundleError)
        assert err.reference == "bundle-too-large"

    def test_total_size_and_member_count_limits(self, site):
        """Smaller configured limits refuse a tgz by size and by count, before extraction."""
        archive = tar_with(site / "b.tgz", *[(f"f{i}", REG, {"data": b"y" * 1000}) for i in range(20)])
        deployment_dir = str(site / "root" / "g1" / "d-1")
        for limits in (Limits(max_total_bytes=10_000), Limits(max_members=10),
                       Limits(ratio_floor_bytes=1000, max_ratio=2)):
            with pytest.raises(BundleError) as e:
                fetch_and_unpack(LocalRevision(archive, "tgz"), deployment_dir, limits=limits)
            assert e.value.reference == "bundle-too-large"
            assert os.listdir(os.path.join(deployment_dir, "deployment-archive")) == []
            os.unlink(os.path.join(deployment_dir, "bundle.tar"))

    def test_listing_a_hostile_archive_writes_nothing(self, site):
        """list_members reports hostile members as data and check_members refuses them; nothing is written."""
        archive = tar_with(site / "b.tar", (f"{UP}/pwned", REG, {"data": b"x"}),
                           ("evil", SYM, {"linkname": "/"}), ("evil/x", REG, {"data": b"x"}))
        before = snapshot(site)
        members = list_members(archive, "tar")
        assert [m.name for m in members] == [f"{UP}/pwned", "evil", "evil/x"]
        with pytest.raises(UnsafeBundle) as e:
            check_members(members, archive)
        assert e.value.members == (f"{UP}/pwned", "evil/x")
        assert str(e.value).startswith(f"{archive}: refusing unsafe bundle members: ")
        assert snapshot(site) == before


class TestDirectoryBundles:
    """A directory bundle with special files or links out of it."""

    def rev(self, site):
        rev = site / "rev"
        rev.mkdir()
        (rev / "appspec.yml").write_text("version: 0.0\n")
        return rev

    def test_fifo_in_a_directory_bundle(self, site):
        """A FIFO is refused; the archive folder is left empty."""
        rev = self.rev(site)
        os.mkfifo(rev / "pipe")
        with pytest.raises(UnsafeBundle) as e:
            fetch_and_unpack(LocalRevision(str(rev), "directory"), str(site / "root" / "g1" / "d-1"))
        assert "'pipe' is a FIFO" in e.value.message
        assert os.listdir(site / "root" / "g1" / "d-1" / "deployment-archive") == []

    @needs_root("mknod needs root (CI runs as root)")
    def test_device_node_in_a_directory_bundle(self, site):
        """A character device is refused."""
        rev = self.rev(site)
        os.mknod(rev / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        with pytest.raises(UnsafeBundle, match="'null' is a character device"):
            fetch_and_unpack(LocalRevision(str(rev), "directory"), str(site / "root" / "g1" / "d-1"))

    def test_setuid_file_in_a_directory_bundle(self, site):
        """The agent's copy would keep the setuid bit; we refuse the file."""
        rev = self.rev(site)
        (rev / "sub").mkdir()
        (rev / "sub" / "tool").write_text("x")
        os.chmod(rev / "sub" / "tool", 0o4755)
        with pytest.raises(UnsafeBundle, match="'sub/tool' has a setuid/setgid bit"):
            fetch_and_unpack(LocalRevision(str(rev), "directory"), str(site / "root" / "g1" / "d-1"))

    @pytest.mark.parametrize("target", ["ABS", "../../../../outside", "../logs"])
    def test_link_to_a_folder_outside_the_bundle(self, site, target):
        """The agent materialises a host folder linked from the bundle; we refuse and name the link."""
        rev = self.rev(site)
        (site / "root" / "g1" / "d-1" / "logs").mkdir()
        os.symlink(str(site / "outside") if target == "ABS" else target, rev / "hostdir")
        before = snapshot(site / "outside")
        with pytest.raises(UnsafeBundle, match="'hostdir' is a symbolic link to the directory"):
            fetch_and_unpack(LocalRevision(str(rev), "directory"), str(site / "root" / "g1" / "d-1"))
        assert os.listdir(site / "root" / "g1" / "d-1" / "deployment-archive") == []
        assert snapshot(site / "outside") == before

    def test_second_copy_never_writes_through_a_same_named_link(self, site):
        """Q37's copy into deployment-archive/<name> replaces a bundle link of that name, never follows it."""
        rev = self.rev(site)
        os.symlink(str(site / "outside" / "keep.txt"), rev / "rev")
        deployment_dir = str(site / "root" / "g1" / "d-1")
        before = snapshot(site / "outside")
        fetch_and_unpack(LocalRevision(str(rev), "directory"), deployment_dir)
        arch = fetch_and_unpack(LocalRevision(str(rev), "directory"), deployment_dir)
        assert os.path.isdir(os.path.join(arch, "rev")) and not os.path.islink(os.path.join(arch, "rev"))
        assert os.path.isfile(os.path.join(arch, "rev", "appspec.yml"))
        assert snapshot(site / "outside") == before
