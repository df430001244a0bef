"""Fuzzing (issue 10) with hypothesis, bounded for CI: the appspec parser and the archive reader and
extractor, given random bytes and random structures, return a result or raise one of our error types
(AppSpecError / BundleError and its UnsafeBundle), never anything else; extraction never writes outside
the archive folder.

No example database is written (``database=None``), hypothesis' caches go to /tmp; every test has a
fixed example budget (about 10 s in all). Needs ``hypothesis`` (the test extra).
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import warnings
import zipfile

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from agent.appspec import AppSpec, parse_appspec
from agent.bundle import Limits, check_members, fetch_and_unpack, list_members
from agent.errors import AppSpecError, BundleError
from agent.revision import LocalRevision

# hypothesis caches (unicode tables, constants) go to /tmp, not into the checkout
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "cdsim-hypothesis"))

FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SMALL_LIMITS = Limits(max_total_bytes=1 << 20, max_members=200, ratio_floor_bytes=1 << 16)

# -------------------------------------------------------------------------------------------- appspec

KEYS = ["version", "os", "files", "hooks", "permissions", "source", "destination", "location", "timeout",
        "runas", "sudo", "object", "pattern", "except", "owner", "group", "mode", "acls", "context",
        "name", "type", "range", "file_exists_behavior", "BeforeInstall", "AfterInstall",
        "ApplicationStart", "ValidateService", "ApplicationStop", "<<", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.sampled_from(["0.0", "linux", "windows", "/", "**", "644", "0755", "u:bob:rwx",
                                     "s0-s1:c0.c3", "DISALLOW", "OVERWRITE"]), st.text(max_size=20))
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=30)


def parses_or_our_error(data) -> None:
    try:
        result = parse_appspec(data)
    except AppSpecError as e:
        assert e.message and isinstance(e.message, str)
        return
    assert isinstance(result, AppSpec)


@FAST
@given(st.binary(max_size=3000))
def test_appspec_random_bytes(data):
    parses_or_our_error(data)


@FAST
@given(st.text(max_size=2000))
def test_appspec_random_text(text):
    parses_or_our_error(text)


@FAST
@given(st.dictionaries(st.sampled_from(KEYS), structures, max_size=6))
def test_appspec_random_structures(doc):
    parses_or_our_error(yaml.safe_dump(doc, allow_unicode=True))


@FAST
@given(structures, st.sampled_from(["files", "hooks", "permissions"]))
def test_appspec_random_sections(value, section):
    doc = {"version": 0.0, "os": "linux", section: value}
    parses_or_our_error(yaml.safe_dump(doc, allow_unicode=True))


@FAST
@given(st.lists(st.sampled_from(["version: 0.0\n", "os: linux\n", "files:\n", "  - source: /\n",
                                 "    destination: /x\n", "hooks:\n", "  AfterInstall:\n",
                                 "    - location: a.sh\n", "      timeout: 9\n", "&a ", "*a", "[", "]",
                                 "{", "}", ": ", "- ", "  ", "\t", "'", '"', "!!python/object ",
                                 "!!binary ", "2020-01-01", ":sym", "<<: *a\n", "\n", "---\n", "..."]),
                max_size=40))
def test_appspec_yaml_fragments(parts):
    parses_or_our_error("".join(parts))


# --------------------------------------------------------------------------------------------- bundles

def names():
    part = st.sampled_from(["a", "b", "..", ".", "", " ", "x\\..\\..", "C:", "\n", "appspec.yml", "é", "$(x)"])
    return st.lists(part, min_size=1, max_size=5).map("/".join)


member = st.tuples(names(), st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"]),
                   st.binary(max_size=64), st.one_of(names(), st.just("/"), st.just("../../..")),
                   st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o2775, 0o1777]))


def build_tar(path: str, members, gz: bool) -> None:
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data, target, mode in members:
            ti = tarfile.TarInfo(name or "x")
            ti.type, ti.mode = types[kind], mode
            if kind == "file":
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                ti.linkname = target
                t.addfile(ti)


def build_zip(path: str, members) -> None:
    kinds = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "hardlink": stat.S_IFREG,
             "fifo": stat.S_IFIFO}
    with zipfile.ZipFile(path, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the fuzzing
        for name, kind, data, target, mode in members:
            zi = zipfile.ZipInfo((name or "x") + ("/" if kind == "dir" else ""), (2020, 1, 1, 0, 0, 0))
            zi.create_system = 3
            zi.external_attr = (kinds[kind] | mode) << 16
            z.writestr(zi, target.encode() if kind == "symlink" else data)


def snapshot(top: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st_ = os.lstat(p)
            out[p] = (st_.st_mode, st_.st_size, st_.st_nlink)
    return out


def unpack_safely(path: str, kind: str, base: str) -> None:
    """Unpack into <base>/root/g/d; only BundleError may come out; <base>/outside must not change and
    every entry made is inside the archive folder (links stay links)."""
    deployment = os.path.join(base, "root", "g", "d")
    os.makedirs(deployment, exist_ok=True)
    outside = os.path.join(base, "outside")
    os.makedirs(outside, exist_ok=True)
    with open(os.path.join(outside, "keep"), "w") as f:
        f.write("keep")
    before = snapshot(outside)
    try:
        members = list_members(path, kind, limits=SMALL_LIMITS)
        check_members(members, path)
    except BundleError:
        pass
    try:
        archive = fetch_and_unpack(LocalRevision(path, kind), deployment, limits=SMALL_LIMITS)
    except BundleError:
        archive = os.path.join(deployment, "deployment-archive")
    assert snapshot(outside) == before
    real = os.path.realpath(archive)
    for dirpath, dirnames, filenames in os.walk(archive):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            assert os.path.realpath(os.path.dirname(p)).startswith(real)
            mode = os.lstat(p).st_mode
            assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)
            assert not mode & (stat.S_ISUID | stat.S_ISGID)


@SLOW
@given(st.binary(max_size=4000), st.sampled_from(["tar", "tgz", "zip"]))
def test_random_bytes_as_an_archive(data, kind):
    with tempfile.TemporaryDirectory() as base:
        path = os.path.join(base, "bundle")
        with open(path, "wb") as f:
            f.write(data)
        unpack_safely(path, kind, base)


@SLOW
@given(st.lists(member, max_size=8), st.sampled_from(["tar", "tgz", "zip"]))
def test_random_archive_structures(members, kind):
    with tempfile.TemporaryDirectory() as base:
        path = os.path.join(base, "bundle")
        if kind == "zip":
            build_zip(path, members)
        else:
            build_tar(path, members, gz=kind == "tgz")
        unpack_safely(path, kind, base)


@SLOW
@given(st.lists(member, min_size=1, max_size=6), st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_corrupted_valid_archives(members, offset, junk):
    """A valid tar with a few bytes overwritten somewhere in its first headers."""
    with tempfile.TemporaryDirectory() as base:
        path = os.path.join(base, "bundle")
        build_tar(path, members, gz=False)
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(junk)
        unpack_safely(path, "tar", base)
