"""The hostile-input corpus (issue 10): bundles and appspecs built by the test, each deployed through the
real CLI (``cdsim deploy --host`` or ``cdsim local``) as a subprocess, after a good revision was deployed
to the same deployment group.

Every case asserts: the documented exit status (agent.errors.ExitStatus) and a clear message, no
traceback, nothing changed outside the target, the deployment root and the log folder (a sentinel tree
beside them and the CLI's working folder are snapshotted), bounded time and peak memory, and what
became of the previous deployment:

* ``intact``     refused at DownloadBundle: the target and all four state files of the group unchanged;
* ``downloaded`` unpacked, then refused before Install changed anything (appspec or hook checks, or
  Install's instruction generation, which cdsim runs before the cleanup — the agent's Q13 hazard
  fixed): the target, the cleanup journal, install.json and the last-successful marker unchanged, the
  most-recent marker names the new deployment (the agent's semantics, §3.3);
* ``replaced``   a correct, safe deployment: the target holds exactly the new revision.

Bundles are generated here; nothing binary is checked in.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.errors import ExitStatus
from tests.lib import CLI, needs_root

from .harness import (
    BLK,
    CHR,
    DIR,
    FIFO,
    GROUP,
    LNK,
    REG,
    SYM,
    Site,
    appspec,
    interpreter_for,
    run_cli,
    tar_with,
    tree,
    zip_with,
)

UP = "../../../../outside"   # from <site>/root/g1/<did>/deployment-archive to <site>/outside
MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable            # (Site) -> (bundle path, type)
    status: ExitStatus
    message: str               # a regex the output must contain
    prev: str = "intact"       # intact | downloaded | replaced
    check: Callable | None = None   # (Site) -> None: extra assertions after the run
    cli: str = "deploy"        # deploy | local
    seconds: float = 20.0
    max_rss_mib: int = 300
    marks: tuple = field(default=())
    tmpfs: bool = False        # build the site on /dev/shm: measure cdsim, not a slow disk's file creation


# ------------------------------------------------------------------------------------------- builders

def app_members(site: Site, *extra, kind="tar"):
    """A valid revision (appspec + app/ok.txt) plus ``extra`` members, as a tar/tgz or a zip."""
    spec = appspec(str(site.target)).encode()
    if kind == "zip":
        return zip_with(site.bundles / "b.zip", ("appspec.yml", spec, 0o100644),
                        ("app/ok.txt", b"ok\n", 0o100644), *extra), "zip"
    name = "b.tgz" if kind == "tgz" else "b.tar"
    return tar_with(site.bundles / name, ("appspec.yml", REG, {"data": spec}),
                    ("app", DIR, {}), ("app/ok.txt", REG, {"data": b"ok\n"}), *extra), kind


def tar_case(*extra):
    return lambda site: app_members(site, *extra)


def zip_case(*extra):
    return lambda site: app_members(site, *extra, kind="zip")


def dir_bundle(site: Site, spec: str | None = None, hooks: str = "", extra: str = "",
               scripts: dict[str, str] | None = None):
    rev = site.new_dir()
    (rev / "app").mkdir()
    (rev / "app" / "ok.txt").write_text("ok\n")
    (rev / "appspec.yml").write_text(spec if spec is not None else appspec(str(site.target), hooks, extra))
    for path, text in (scripts or {}).items():
        p = rev / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o755)
    return rev


def dir_with(make: Callable):
    """A directory bundle, then ``make(rev, site)`` adds hostile entries to it."""
    def build(site):
        rev = dir_bundle(site)
        make(rev, site)
        return str(rev), "directory"
    return build


def spec_case(text: Callable[[Site], str] | str, **kw):
    def build(site):
        return str(dir_bundle(site, spec=text(site) if callable(text) else text, **kw)), "directory"
    return build


def bomb_zip(site):
    path = site.bundles / "bomb.zip"
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("appspec.yml", appspec(str(site.target)))
        with z.open("app/zeros", "w", force_zip64=True) as f:
            chunk = bytes(MiB)
            for _ in range(150):
                f.write(chunk)
    assert path.stat().st_size < MiB
    return str(path), "zip"


def bomb_tgz(site):
    import tarfile
    path = site.bundles / "bomb.tgz"

    class Zeros:
        def __init__(self, n):
            self.left = n

        def read(self, size=-1):
            size = self.left if size < 0 else min(size, self.left)
            self.left -= size
            return bytes(size)

    with tarfile.open(path, "w:gz", compresslevel=1) as t:
        ti = tarfile.TarInfo("app/zeros")
        ti.size = 150 * MiB
        t.addfile(ti, Zeros(ti.size))
    assert path.stat().st_size < 2 * MiB
    return str(path), "tgz"


def many_files(site):
    """100,000 empty files in 100 folders."""
    import tarfile
    path = site.bundles / "many.tgz"
    with tarfile.open(path, "w:gz", compresslevel=1) as t:
        spec = appspec(str(site.target)).encode()
        ti = tarfile.TarInfo("appspec.yml")
        ti.size = len(spec)
        import io
        t.addfile(ti, io.BytesIO(spec))
        for d in range(100):
            di = tarfile.TarInfo(f"app/d{d}")
            di.type = DIR
            di.mode = 0o755
            t.addfile(di)
            for f in range(1000):
                t.addfile(tarfile.TarInfo(f"app/d{d}/f{f}"))
    return str(path), "tgz"


def check_many(site):
    assert sum(len(files) for _, _, files in os.walk(site.target)) == 100_000
    assert len((site.instructions / f"{GROUP}-cleanup").read_bytes().splitlines()) == 100_100


NESTED = "/".join(["d"] * 300)


def check_nested(site):
    assert (site.target / NESTED / "deep.txt").read_text() == "deep\n"


ODD_NAMES = ["with space.txt", "quote'single.txt", 'quote"double.txt', "$(touch PWNED).txt",
             "`touch PWNED`.txt", "semi;colon&amp.txt", "-dash.txt", "star*.txt", "tab\there.txt"]


def check_odd(site):
    names = set(os.listdir(site.target))
    assert names == set(ODD_NAMES) | {"ok.txt"}
    assert not any("PWNED" in n for n in os.listdir(site.cwd))


BAD_UTF8 = b"caf\xe9-\xff.txt"


def check_bad_utf8(site):
    assert set(os.listdir(os.fsencode(site.target))) == {b"ok.txt", BAD_UTF8}


def check_not_linked(site):
    assert os.stat(site.outside / "keep.txt").st_nlink == 1


def check_hardlink_replaced(site):
    """A later member replaces the hard link (as tar does), it is not written through it."""
    assert (site.target / "ok.txt").read_text() == "ok\n"
    assert (site.target / "hl").read_text() == "new\n"


def check_symlink_replaced(site):
    """A later member replaces the link; the host file it pointed to is untouched (outside snapshot)."""
    assert not (site.target / "lnk").is_symlink() and (site.target / "lnk").read_text() == "new\n"


def check_setuid_dropped(site):
    assert stat.S_IMODE(os.lstat(site.target / "su").st_mode) == 0o755


def check_host_link(site):
    link = site.target / "hostlink"
    assert os.readlink(link) == str(site.outside / "keep.txt")


def alias_bomb(site):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return appspec(str(site.target)) + "\n".join(lines) + "\n"


def big_appspec(site):
    return appspec(str(site.target)) + "# " + "x" * (50 * MiB) + "\n"


def duplicate_keys(site):
    return (f"version: 0.0\nos: linux\nfiles:\n  - source: app\n    destination: {site.outside}/dup\n"
            f"files:\n  - source: app\n    destination: {site.target}\n")


def check_duplicates(site):
    assert os.listdir(site.target) == ["ok.txt"]


def deep_yaml(site):
    return appspec(str(site.target)) + "x: " + "[" * 5000 + "]" * 5000 + "\n"


def match_all_permissions(site):
    """Permissions on the target's parent folder, every descendant: only what this deployment
    installed is changed (§6.6), never the sentinel beside the target."""
    return appspec(str(site.target), extra=(
        f"permissions:\n  - object: {site.base}\n    pattern: \"**\"\n    mode: 600\n    type:\n      - file\n"
        f"  - object: {site.base}\n    pattern: \"**\"\n    mode: 700\n    type:\n      - directory\n"))


def check_match_all(site):
    assert stat.S_IMODE(os.stat(site.target / "ok.txt").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(site.outside / "keep.txt").st_mode) == 0o644


def hook(location: str, runas: str | None = None) -> str:
    text = f"  BeforeInstall:\n    - location: {location}\n      timeout: 10\n"
    return text + (f"      runas: {runas}\n" if runas is not None else "")


def outside_script(site):
    rev = dir_bundle(site, hooks=hook("../../../../../../../../../../../../../bin/touch"))
    return str(rev), "directory"


def check_no_pwned(site):
    assert not (site.outside / "pwned").exists()


def injection_hook(site):
    name = "scripts/$(touch PWNED);touch PWNED2.sh"
    rev = dir_bundle(site, hooks=hook(f"'{name}'"),
                     scripts={name: "#!/bin/sh\necho \"ran $0\"\n"})
    return str(rev), "directory"


def check_injection(site):
    assert not [n for n in os.listdir(site.cwd) if "PWNED" in n]
    log = next(site.root.glob(f"{GROUP}/*/logs/scripts.log"), None)
    assert log is not None and "ran " in log.read_text()


def newline_escape(site):
    """A folder named 'x\\n' followed by the sentinel's absolute path: a line-based journal would
    read the next line as the sentinel file and the next cleanup would delete it."""
    sneaky = f"app/x\n{site.outside}/keep.txt"
    return app_members(site, (sneaky, REG, {"data": b"x"}))


def newline_dir_bundle(site):
    rev = dir_bundle(site)
    nested = rev / "app" / "x\n" / str(site.outside).lstrip("/")
    nested.mkdir(parents=True)
    (nested / "keep.txt").write_text("x")
    return str(rev), "directory"


def check_journal_sane(site):
    journal = site.instructions / f"{GROUP}-cleanup"
    if journal.exists():
        for line in journal.read_bytes().splitlines():
            assert line.startswith(os.fsencode(site.target)), line


def trailing_space(site):
    return app_members(site, ("app/ok.txt ", REG, {"data": b"x"}))


def appspec_symlink(site):
    secret = site.outside / "secret.yml"
    secret.write_text("version: hunter2-SECRET\n")
    return tar_with(site.bundles / "b.tar", ("appspec.yml", SYM, {"linkname": str(secret)}),
                    ("app/ok.txt", REG, {"data": b"ok\n"})), "tar"


def source_outside(site):
    spec = appspec(str(site.target)).replace("source: app", f"source: {UP}/keep.txt")
    return str(dir_bundle(site, spec=spec)), "directory"


def garbage_appspec(site):
    return str(dir_bundle(site, spec="\xff\xfe\x00garbage: [\n")), "directory"


def runas_nobody_here(site):
    return str(dir_bundle(site, hooks=hook("scripts/x.sh", "cdsim-no-such-user-xyz"),
                          scripts={"scripts/x.sh": "#!/bin/sh\ntouch ran\n"})), "directory"


def check_not_ran(site):
    assert not (site.cwd / "ran").exists()


def fifo_dir(rev, site):
    os.mkfifo(rev / "app" / "pipe")


def chardev_dir(rev, site):
    os.mknod(rev / "app" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))


def setuid_dir(rev, site):
    (rev / "app" / "su").write_text("x")
    os.chmod(rev / "app" / "su", 0o4755)


def outlink_dir(rev, site):
    os.symlink(str(site.outside), rev / "app" / "hostdir")


def wrong_type(site):
    path, _ = app_members(site)
    return path, "zip"


def truncated_tgz(site):
    path, _ = app_members(site, ("app/big", REG, {"data": os.urandom(200_000)}), kind="tgz")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path, "tgz"


def zip_bad_crc(site):
    path, _ = app_members(site, ("app/data.txt", b"A" * 5000, 0o100644), kind="zip")
    data = bytearray(Path(path).read_bytes())
    i = data.index(b"A" * 100)
    data[i] = ord("B")  # stored, not deflated: the CRC no longer matches
    Path(path).write_bytes(bytes(data))
    return path, "zip"


UNSAFE = "refusing unsafe bundle member"
S = ExitStatus

CASES = [
    # -- names that leave the archive folder
    # zip: what unzip makes safe (a leading '/', '..' components, setuid bits) is made safe the same way
    Case("zip-dotdot", zip_case((f"{UP}/pwned", b"x", 0o100644)), S.SUCCESS,
         "unpacked as 'outside/pwned': unzip strips a leading '/' and skips '..' components", prev="replaced"),
    Case("tar-dotdot", tar_case((f"{UP}/pwned", REG, {"data": b"x"})), S.INVALID, "leaves the archive"),
    Case("tar-dotdot-after-folder", tar_case(("app/../../../../../outside/pwned", REG, {"data": b"x"})),
         S.INVALID, "leaves the archive"),
    Case("tgz-absolute", lambda s: app_members(s, (f"{s.outside}/pwned", REG, {"data": b"x"}), kind="tgz"),
         S.INVALID, "is an absolute path"),
    Case("zip-absolute", lambda s: app_members(s, (f"{s.outside}/pwned", b"x", 0o100644), kind="zip"),
         S.SUCCESS, "unzip strips a leading '/'", prev="replaced"),
    Case("zip-drive-letter", zip_case(("C:/outside/pwned", b"x", 0o100644)), S.INVALID, "drive letter"),
    Case("zip-backslash-dotdot", zip_case(("..\\..\\..\\..\\outside\\pwned", b"x", 0o100644)),
         S.INVALID, "backslashes"),
    Case("tar-backslash-absolute", tar_case(("\\outside\\pwned", REG, {"data": b"x"})),
         S.INVALID, "is an absolute path"),
    Case("local-cli-zip-dotdot", zip_case((f"{UP}/pwned", b"x", 0o100644)), S.SUCCESS,
         "unzip strips a leading '/' and skips '..' components", prev="replaced", cli="local"),
    # -- links
    Case("tar-symlink-out-then-file", lambda s: app_members(
        s, ("evil", SYM, {"linkname": str(s.outside)}), ("evil/pwned", REG, {"data": b"x"})),
        S.INVALID, "written through the symbolic link 'evil'"),
    Case("zip-symlink-out-then-file", zip_case(("up", UP.encode(), 0o120777), ("up/pwned", b"x", 0o100644)),
         S.INVALID, "written through the symbolic link 'up'"),
    Case("tar-symlink-inside-then-file", tar_case(("lnk", SYM, {"linkname": "app"}),
                                                  ("lnk/pwned", REG, {"data": b"x"})),
         S.INVALID, "written through the symbolic link"),
    Case("tar-hardlink-absolute", lambda s: app_members(s, ("app/hl", LNK, {"linkname": str(s.outside / "keep.txt")})),
         S.INVALID, "is a hard link to", check=check_not_linked),
    Case("tar-hardlink-dotdot", tar_case(("app/hl", LNK, {"linkname": f"{UP}/keep.txt"})),
         S.INVALID, "is a hard link to"),
    Case("tar-symlink-to-host-folder", lambda s: app_members(s, ("app/hostdir", SYM, {"linkname": str(s.outside)})),
         S.INVALID, "symbolic link to the directory"),
    Case("zip-symlink-to-host-folder", zip_case(("app/hostdir", b"../" + UP.encode(), 0o120777)),
         S.INVALID, "symbolic link to the directory"),
    Case("dir-symlink-to-host-folder", dir_with(outlink_dir), S.INVALID, "symbolic link to the directory"),
    Case("tar-link-replacing-folder", lambda s: app_members(s, ("app", SYM, {"linkname": str(s.outside)})),
         S.INVALID, "would replace a directory"),
    Case("tar-symlink-to-host-file-is-installed-as-a-link", lambda s: app_members(
        s, ("app/hostlink", SYM, {"linkname": str(s.outside / "keep.txt")})),
         S.SUCCESS, "succeeded", prev="replaced", check=check_host_link),
    Case("tar-hardlink-then-file-of-same-name", tar_case(("app/hl", LNK, {"linkname": "app/ok.txt"}),
                                                         ("app/hl", REG, {"data": b"new\n"})),
         S.SUCCESS, "succeeded", prev="replaced", check=check_hardlink_replaced),
    Case("tar-symlink-to-host-file-then-file-of-same-name", lambda s: app_members(
        s, ("app/lnk", SYM, {"linkname": str(s.outside / "keep.txt")}), ("app/lnk", REG, {"data": b"new\n"})),
         S.SUCCESS, "succeeded", prev="replaced", check=check_symlink_replaced),
    # -- special files and bits
    Case("tar-char-device", tar_case(("app/null", CHR, {"devmajor": 1, "devminor": 3})), S.INVALID,
         "character device"),
    Case("tar-block-device", tar_case(("app/sda", BLK, {"devmajor": 8, "devminor": 0})), S.INVALID, "block device"),
    Case("tar-fifo", tar_case(("app/pipe", FIFO, {})), S.INVALID, "a FIFO"),
    Case("zip-fifo-mode", zip_case(("app/pipe", b"", 0o010644)), S.INVALID, "a FIFO"),
    Case("zip-char-device-mode", zip_case(("app/null", b"", 0o020644)), S.INVALID, "character device"),
    Case("dir-fifo", dir_with(fifo_dir), S.INVALID, "'app/pipe' is a FIFO"),
    Case("dir-char-device", dir_with(chardev_dir), S.INVALID, "character device",
         marks=(needs_root("mknod needs root (CI runs as root)"),)),
    Case("tar-setuid-file", tar_case(("app/su", REG, {"data": b"x", "mode": 0o4755})), S.INVALID, "setuid/setgid"),
    Case("tar-setgid-folder", tar_case(("app/sg", DIR, {"mode": 0o2755})), S.INVALID, "setuid/setgid"),
    Case("zip-setuid-file", zip_case(("app/su", b"x", 0o104755)), S.SUCCESS, "setuid/setgid bits dropped",
         prev="replaced", check=check_setuid_dropped),
    Case("dir-setuid-file", dir_with(setuid_dir), S.INVALID, "setuid/setgid"),
    # -- bombs and scale
    Case("zip-bomb", bomb_zip, S.INVALID, "bundle too large.*decompression bomb", seconds=30),
    Case("tgz-bomb", bomb_tgz, S.INVALID, "bundle too large.*decompression bomb", seconds=30),
    Case("100k-empty-files", many_files, S.SUCCESS, "succeeded", prev="replaced", check=check_many,
         seconds=60, max_rss_mib=400, tmpfs=True),
    Case("300-level-nested-folder", tar_case(("app/" + NESTED + "/deep.txt", REG, {"data": b"deep\n"})),
         S.SUCCESS, "succeeded", prev="replaced", check=check_nested),
    # -- names
    Case("odd-names-spaces-quotes-dollar", tar_case(*[(f"app/{n}", REG, {"data": b"x"}) for n in ODD_NAMES]),
         S.SUCCESS, "succeeded", prev="replaced", check=check_odd),
    Case("invalid-utf8-name", tar_case((os.fsdecode(b"app/" + BAD_UTF8), REG, {"data": b"x"})),
         S.SUCCESS, "succeeded", prev="replaced", check=check_bad_utf8),
    Case("newline-name-journal-injection", newline_escape, S.INVALID, "newline", check=check_journal_sane),
    Case("newline-name-directory-bundle", newline_dir_bundle, S.INVALID, "newline", check=check_journal_sane),
    Case("newline-in-appspec-destination", spec_case(lambda s: appspec(f'"{s.target}/x\\n{s.outside}"')),
         S.INVALID, "newline", prev="downloaded", check=check_journal_sane),
    Case("trailing-space-name", trailing_space, S.INVALID, "white space"),
    Case("hook-location-with-shell-syntax", injection_hook, S.SUCCESS, "succeeded", prev="replaced",
         check=check_injection),
    # -- appspecs
    Case("yaml-alias-bomb", spec_case(alias_bomb), S.INVALID, "Unknown alias", prev="downloaded"),
    Case("50MB-appspec", spec_case(big_appspec), S.INVALID, "more than the .* bytes cdsim reads",
         prev="downloaded", seconds=30),
    Case("yaml-nesting-bomb", spec_case(deep_yaml), S.INVALID, "nests collections more than|maximum nesting depth",
         prev="downloaded"),
    Case("duplicate-yaml-keys-later-wins", spec_case(duplicate_keys), S.SUCCESS, "succeeded", prev="replaced",
         check=check_duplicates),
    Case("appspec-not-utf8", garbage_appspec, S.INVALID, "appspec", prev="downloaded"),
    Case("appspec-symlink-to-host-file", appspec_symlink, S.INVALID, "appspec.yml is a symbolic link to .*"
         "outside the revision", prev="downloaded"),
    Case("script-outside-the-revision", outside_script, S.INVALID, "outside the revision", prev="downloaded",
         check=check_no_pwned),
    Case("files-source-outside-the-revision", source_outside, S.INVALID, "outside the revision",
         prev="downloaded"),
    Case("permissions-pattern-matching-everything", spec_case(match_all_permissions), S.SUCCESS,
         "succeeded", prev="replaced", check=check_match_all),
    Case("runas-nonexistent-user", runas_nobody_here, S.HOOK_FAILED, "run as user cdsim-no-such-user-xyz",
         prev="downloaded", check=check_not_ran),
    # -- corrupt archives
    Case("tar-given-as-zip", wrong_type, S.INVALID, "zip"),
    Case("truncated-tgz", truncated_tgz, S.INVALID, "tgz|gzip|corrupt|truncated"),
    Case("zip-bad-crc", zip_bad_crc, S.INVALID, "CRC|corrupt"),
]


@pytest.fixture
def fast_tmp(tmp_path):
    """A folder on tmpfs when there is one (creating 100,000 files on a VM's ext4 takes minutes)."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = tempfile.mkdtemp(prefix="cdsim-hostile-", dir="/dev/shm")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def deploy_good(site: Site) -> dict:
    """Deploy a good revision; return the target tree and state files it left."""
    run = site.deploy(site.good_revision())
    assert run.returncode == 0, run.explain()
    return {"tree": tree(site.target), "state": site.state_files()}


def run_case(site: Site, case: Case, bundle: str, kind: str):
    if case.cli == "local":
        return site.local(bundle, kind, timeout=case.seconds * 3)
    return site.deploy(bundle, kind, timeout=case.seconds * 3)


def assert_outcome(site: Site, case: Case, run, before: dict, outside: dict) -> None:
    out = run.output
    assert run.returncode == int(case.status), run.explain()
    assert "Traceback" not in out and "internal error" not in out, run.explain()
    assert re.search(case.message, out, re.DOTALL), run.explain()
    assert "SECRET" not in out, "a host file's content was printed"
    assert run.elapsed < case.seconds, run.explain()
    assert run.maxrss_kib < case.max_rss_mib * 1024, run.explain()
    assert site.outside_snapshot() == outside, "something outside the target and the root changed"
    state = site.state_files()
    old = before["state"]
    cleanup, install_json = f"{GROUP}-cleanup", f"{GROUP}-install.json"
    last, recent = f"{GROUP}_last_successful_install", f"{GROUP}_most_recent_install"
    if case.prev == "intact":
        assert tree(site.target) == before["tree"]
        assert state == old
    elif case.prev == "downloaded":
        assert tree(site.target) == before["tree"]
        kept = (cleanup, install_json, last)
        assert {k: state[k] for k in kept} == {k: old[k] for k in kept}
        assert state[recent] != old[recent]
    else:
        assert case.prev == "replaced"
        assert state[last] != old[last] and state[last] == state[recent]
        assert "f0.txt" not in os.listdir(site.target)
    # every state file is whole: markers name a deployment folder that exists
    for marker in (last, recent):
        if state[marker] is not None:
            assert os.path.isdir(state[marker].decode()), state[marker]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_hostile(tmp_path, request, case):
    site = Site(request.getfixturevalue("fast_tmp") if case.tmpfs else tmp_path)
    before = deploy_good(site)
    bundle, kind = case.build(site)
    outside = site.outside_snapshot()
    run = run_case(site, case, bundle, kind)
    assert_outcome(site, case, run, before, outside)
    if case.check:
        case.check(site)
    # and the next deployment of the group works, leaving the good revision in place
    good = site.good_revision("2")
    outside = site.outside_snapshot()
    again = site.deploy(good)
    assert again.returncode == 0, again.explain()
    assert sorted(os.listdir(site.target)) == ["f0.txt", "f1.txt", "f2.txt"]
    assert site.outside_snapshot() == outside


def test_corpus_size():
    """The issue asks for at least 40 hostile bundles and appspecs."""
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def test_runas_root_while_not_root(runas_user, shared_dir):
    """An unprivileged cdsim given `runas: root`: su asks for a password on a closed stdin and fails;
    the hook fails (exit 1) with the agent's message, nothing ran as root, nothing outside changed."""
    found = interpreter_for(runas_user.pw_uid, runas_user.pw_gid)
    if found is None:
        pytest.skip("no Python interpreter with PyYAML is reachable by an unprivileged user")
    python, env = found
    site = Site(shared_dir)
    for d in (site.root, site.logs):
        d.mkdir()
    for d in (site.root, site.logs, site.target, site.cwd):
        os.chown(d, runas_user.pw_uid, runas_user.pw_gid)
    env = dict(env, CDSIM_STATE_DIR=str(site.base / "state"))
    first = site.deploy(site.good_revision(), python=python, env=env)
    assert first.returncode == 0, first.explain()
    before = {"tree": tree(site.target), "state": site.state_files()}
    rev = dir_bundle(site, hooks=hook("scripts/x.sh", "root"),
                     scripts={"scripts/x.sh": f"#!/bin/sh\ntouch {site.outside}/pwned\n"})
    outside = site.outside_snapshot()
    run = site.deploy(rev, python=python, env=env)
    case = Case("runas-root-while-not-root", None, S.HOOK_FAILED, "run as user root failed",
                prev="downloaded")
    assert_outcome(site, case, run, before, outside)
    assert not (site.outside / "pwned").exists()


@needs_root("instances need root on this machine (CI runs as root)")
def test_destination_root_only_in_a_sandbox(tmp_path):
    """`destination: /` with OVERWRITE is deployed inside a sandboxed instance (`cdsim deploy
    --instance`): the instance sees the files in / and /etc, the host does not."""
    import uuid

    from agent.instance import state_dir  # noqa: F401 - the sandbox must exist in this build
    marker = f"cdsim-hostile-{uuid.uuid4().hex[:8]}"
    site = Site(tmp_path)
    rev = site.new_dir()
    (rev / "app" / "etc").mkdir(parents=True)
    (rev / "app" / f"{marker}.txt").write_text("x\n")
    (rev / "app" / "etc" / f"{marker}.conf").write_text("x\n")
    (rev / "appspec.yml").write_text(appspec("/"))
    env = site.env()
    argv = [*CLI, "deploy", "--instance", marker, "-b", "OVERWRITE", str(rev)]
    try:
        run = run_cli(argv, cwd=site.cwd, env=env, timeout=120)
        assert run.returncode == 0, run.explain()
        assert not os.path.lexists(f"/{marker}.txt") and not os.path.lexists(f"/etc/{marker}.conf")
        diff = run_cli([*CLI, "instance", "diff", marker], cwd=site.cwd, env=env)
        assert f"A /{marker}.txt" in diff.stdout and f"A /etc/{marker}.conf" in diff.stdout, diff.explain()
    finally:
        run_cli([*CLI, "instance", "destroy", marker], cwd=site.cwd, env=env)
