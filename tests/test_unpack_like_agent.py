"""Unpacking as the agent's tools do (GNU tar -xp as root, Info-ZIP unzip -qo), and where cdsim refuses
to follow them: owners by name, unzip's modes for entries made on MS-DOS/Windows, late folder entries,
sticky and setuid bits, the archive folder's own mode, bundles that are not files.

Real archives built in tmp_path, unpacked with ``agent.bundle.fetch_and_unpack`` or the real CLI.
"""
from __future__ import annotations

import grp
import io
import os
import pwd
import stat
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from agent.bundle import fetch_and_unpack
from agent.errors import BundleError, ExitStatus
from agent.revision import LocalRevision
from tests.lib import CLI, needs_root

APPSPEC = b"version: 0.0\nos: linux\n"


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def deployment_dir(tmp_path):
    d = tmp_path / "root" / "g1" / "d-1"
    d.mkdir(parents=True)
    return str(d)


def unpack(archive, kind: str, deployment_dir: str, *, umask: int = 0o022, warnings: list | None = None) -> str:
    old = os.umask(umask)
    try:
        return fetch_and_unpack(LocalRevision(str(archive), kind), deployment_dir,
                                warn=None if warnings is None else warnings.append)
    finally:
        os.umask(old)


def dos_zip(path, *entries: tuple[str, bytes, int]) -> str:
    """A zip whose entries were made on MS-DOS/Windows: no Unix mode, only the DOS attribute byte."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data, attributes in entries:
            info = zipfile.ZipInfo(name, (2020, 1, 2, 3, 4, 6))
            info.create_system = 0
            info.external_attr = attributes
            z.writestr(info, data)
    return str(path)


def unix_zip(path, *entries: tuple[str, bytes, int]) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, data, st_mode in entries:
            info = zipfile.ZipInfo(name, (2020, 1, 2, 3, 4, 6))
            info.create_system = 3
            info.external_attr = st_mode << 16
            z.writestr(info, data)
    return str(path)


def tar_of(path, *members: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> str:
    data = data or {}
    with tarfile.open(path, "w") as t:
        for info in members:
            body = data.get(info.name)
            if body is not None:
                info.size = len(body)
            t.addfile(info, io.BytesIO(body) if body is not None else None)
    return str(path)


def member(name: str, kind=tarfile.REGTYPE, mode_bits=0o644, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode_bits
    info.mtime = 1_000_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


class TestUnzipModes:
    """Q31: unzip's modes for entries with no Unix mode, made on MS-DOS or Windows."""

    @pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
    def test_dos_attributes_give_unzips_modes(self, tmp_path, deployment_dir, umask):
        """Attributes 0: 0600; read-only: 0444 & ~umask; archive (or anything else): 0666 & ~umask."""
        archive = dos_zip(tmp_path / "dos.zip", ("appspec.yml", APPSPEC, 0x20), ("zero.txt", b"z", 0),
                          ("readonly.txt", b"r", 0x01), ("archived.txt", b"a", 0x20))
        arch = unpack(archive, "zip", deployment_dir, umask=umask)
        assert mode(f"{arch}/zero.txt") == 0o600 & ~umask
        assert mode(f"{arch}/readonly.txt") == 0o444 & ~umask
        assert mode(f"{arch}/archived.txt") == 0o666 & ~umask
        assert Path(arch, "readonly.txt").read_bytes() == b"r"  # written although created read-only
        assert os.lstat(f"{arch}/zero.txt").st_mtime == time.mktime((2020, 1, 2, 3, 4, 6, 0, 0, -1))

    def test_a_folder_entry_after_its_contents_is_ignored(self, tmp_path, deployment_dir):
        """unzip ignores d/'s entry when it comes after d/f; an entry before its contents applies."""
        archive = unix_zip(tmp_path / "late.zip", ("appspec.yml", APPSPEC, 0o100644),
                           ("late/f.txt", b"f", 0o100644), ("late/", b"", 0o40700),
                           ("early/", b"", 0o40700), ("early/f.txt", b"f", 0o100644))
        arch = unpack(archive, "zip", deployment_dir)
        assert mode(f"{arch}/late") == 0o755
        assert mode(f"{arch}/early") == 0o700

    def test_sticky_bit_is_dropped(self, tmp_path, deployment_dir):
        archive = unix_zip(tmp_path / "sticky.zip", ("appspec.yml", APPSPEC, 0o100644),
                           ("shared/", b"", 0o41777), ("shared/f.txt", b"f", 0o101644))
        arch = unpack(archive, "zip", deployment_dir)
        assert mode(f"{arch}/shared") == 0o777
        assert mode(f"{arch}/shared/f.txt") == 0o644

    def test_setuid_entry_loses_its_bits_and_says_so(self, tmp_path, deployment_dir):
        archive = unix_zip(tmp_path / "suid.zip", ("appspec.yml", APPSPEC, 0o100644),
                           ("bin/tool", b"#!/bin/sh\n", 0o106755))
        warnings: list[str] = []
        arch = unpack(archive, "zip", deployment_dir, warnings=warnings)
        assert mode(f"{arch}/bin/tool") == 0o755
        assert any("'bin/tool'" in w and "setuid" in w for w in warnings), warnings

    def test_leading_slash_and_dotdot_are_stripped_as_unzip_does(self, tmp_path, deployment_dir):
        """Where unzip makes a name safe, cdsim writes what unzip writes, inside the archive folder."""
        archive = unix_zip(tmp_path / "names.zip", ("appspec.yml", APPSPEC, 0o100644),
                           ("/etc/cdsim-test-abs", b"abs", 0o100644), ("../../cdsim-test-up", b"up", 0o100644),
                           ("a/../../b/c.txt", b"c", 0o100644))
        warnings: list[str] = []
        arch = unpack(archive, "zip", deployment_dir, warnings=warnings)
        assert Path(arch, "etc", "cdsim-test-abs").read_bytes() == b"abs"
        assert Path(arch, "cdsim-test-up").read_bytes() == b"up"
        assert Path(arch, "a", "b", "c.txt").read_bytes() == b"c"
        assert not os.path.exists("/etc/cdsim-test-abs")
        assert not (tmp_path / "root" / "cdsim-test-up").exists() and not (tmp_path / "cdsim-test-up").exists()
        assert len(warnings) == 3 and all("unzip" in w for w in warnings), warnings


@needs_root("tar restores owners only as root (CI runs as root)")
class TestTarOwnersByName:
    """GNU tar as root: the owner and group named in the header when the name exists here, else the numbers."""

    def test_names_win_over_numbers_when_they_exist(self, tmp_path, deployment_dir):
        user = pwd.getpwnam("daemon")
        group = grp.getgrnam("daemon")
        assert user.pw_uid != 4242 and group.gr_gid != 4343
        archive = tar_of(tmp_path / "owners.tar",
                         member("appspec.yml"),
                         member("named.txt", uname="daemon", uid=4242, gname="daemon", gid=4343),
                         member("unknown.txt", uname="cdsim-no-such-user", uid=4242,
                                gname="cdsim-no-such-group", gid=4343),
                         member("nameless.txt", uname="", uid=4244, gname="", gid=4345),
                         member("dir", tarfile.DIRTYPE, 0o755, uname="daemon", uid=4242, gname="daemon", gid=4343),
                         member("link", tarfile.SYMTYPE, 0o777, linkname="named.txt", uname="daemon", uid=4242,
                                gname="cdsim-no-such-group", gid=4343),
                         data={"appspec.yml": APPSPEC, "named.txt": b"n", "unknown.txt": b"u",
                               "nameless.txt": b"x"})
        arch = unpack(archive, "tar", deployment_dir)
        owner = lambda name: (os.lstat(f"{arch}/{name}").st_uid, os.lstat(f"{arch}/{name}").st_gid)  # noqa: E731
        assert owner("named.txt") == (user.pw_uid, group.gr_gid)
        assert owner("unknown.txt") == (4242, 4343)
        assert owner("nameless.txt") == (4244, 4345)
        assert owner("dir") == (user.pw_uid, group.gr_gid)
        assert owner("link") == (user.pw_uid, 4343)


class TestArchiveFolder:
    """Hooks run as root from deployment-archive: a bundle cannot make it writable by others."""

    def test_dot_member_0777_leaves_the_folder_0755(self, tmp_path, deployment_dir):
        archive = tar_of(tmp_path / "dot.tar", member(".", tarfile.DIRTYPE, 0o777, uid=4242, gid=4242),
                         member("./appspec.yml"), member("./scripts", tarfile.DIRTYPE, 0o777),
                         data={"./appspec.yml": APPSPEC})
        arch = unpack(archive, "tar", deployment_dir)
        assert mode(arch) == 0o755
        assert os.lstat(arch).st_uid == os.geteuid()
        assert mode(f"{arch}/scripts") == 0o777  # inside, the bundle's modes apply as with tar

    def test_dot_member_keeps_a_stricter_mode(self, tmp_path, deployment_dir):
        """Only write for group and others is taken away: 0700 stays 0700, as tar gives it."""
        archive = tar_of(tmp_path / "dot.tar", member(".", tarfile.DIRTYPE, 0o700), member("./appspec.yml"),
                         data={"./appspec.yml": APPSPEC})
        assert mode(unpack(archive, "tar", deployment_dir)) == 0o700

    def test_stripped_top_folder_0777_of_another_owner(self, tmp_path, deployment_dir):
        """A lone top-level folder that becomes the archive folder (§4.5) is guarded the same way."""
        archive = tar_of(tmp_path / "top.tgz", member("app", tarfile.DIRTYPE, 0o777, uid=4242, gid=4242),
                         member("app/appspec.yml"), data={"app/appspec.yml": APPSPEC})
        arch = unpack(archive, "tar", deployment_dir)
        assert Path(arch, "appspec.yml").read_bytes() == APPSPEC
        assert mode(arch) == 0o755
        assert (os.lstat(arch).st_uid, os.lstat(arch).st_gid) == (os.geteuid(), os.getegid())

    def test_zip_dot_entry_0777(self, tmp_path, deployment_dir):
        archive = unix_zip(tmp_path / "dot.zip", ("./", b"", 0o40777), ("appspec.yml", APPSPEC, 0o100644))
        assert mode(unpack(archive, "zip", deployment_dir)) == 0o755


class TestNotAFile:
    """A FIFO or a device given as an archive bundle is refused at once, never read."""

    @pytest.mark.parametrize("kind", ["tar", "tgz", "zip"])
    def test_fifo_refused(self, tmp_path, deployment_dir, kind):
        fifo = tmp_path / f"bundle.{kind}"
        os.mkfifo(fifo)
        with pytest.raises(BundleError) as e:
            unpack(fifo, kind, deployment_dir)
        assert "is a FIFO" in e.value.message
        assert os.listdir(deployment_dir) == []

    @pytest.mark.parametrize("source", ["/dev/zero", "fifo"])
    def test_cli_refuses_at_once(self, tmp_path, source):
        """`cdsim deploy --host /dev/zero -t tar` exits INVALID within seconds (it used to hang)."""
        if source == "fifo":
            source = str(tmp_path / "b.tar")
            os.mkfifo(source)
        started = time.monotonic()
        proc = subprocess.run([*CLI, "deploy", "--host", "--root-dir", str(tmp_path / "root"),
                               "-t", "tar", source], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "CDSIM_STATE_DIR": str(tmp_path / "state")})
        assert proc.returncode == ExitStatus.INVALID, proc.stdout + proc.stderr
        assert f"{source} is a " in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert time.monotonic() - started < 30
