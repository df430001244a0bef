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
