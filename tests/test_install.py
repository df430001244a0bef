"""The Install step (agent.install, agent.permissions): cleanup replay, instruction generation with the
agent's rules, install.json, execution and the cleanup journal.

Real revisions and destinations in tmp_path; expectations are the conformance cases' recordings
(b_mapping, c_redeploy, d_file_exists, k_archives) with their paths moved under tmp_path.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

import pytest

from agent import permissions as perm
from agent.appspec import (
    AclEntry,
    AppSpec,
    Context,
    FileMapping,
    Permission,
    parse_appspec,
)
from agent.errors import (
    DeploymentError,
    EnvironmentProblem,
    FileCollision,
    UnsafeBundle,
)
from agent.install import (
    Chmod,
    Chown,
    Copy,
    Mkdir,
    Semanage,
    Setfacl,
    effective_file_exists_behavior,
    execute_instructions,
    generate_instructions,
    install,
    install_json,
    read_cleanup,
    run_cleanup,
)
from tests.lib import require_tool

GROUP = "g1"
BUNDLE_MTIME = 1_000_000_000
TEST_USER = "cdsim-inst-user"
TEST_GROUP = "cdsim-inst-grp"


# ------------------------------------------------------------------------------------------- helpers

def write(root: Path, files: dict[str, str | None]) -> None:
    """Create ``files`` under ``root``: a value is the content, None makes a directory."""
    for rel, content in files.items():
        p = root / rel
        if content is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)


def spec(*files: tuple[str, str], permissions: tuple[Permission, ...] = (),
         behavior: str | None = None) -> AppSpec:
    return AppSpec(version=0.0, os="linux", files=tuple(FileMapping(s, d) for s, d in files),
                   permissions=permissions, file_exists_behavior=behavior)


class Deployer:
    """Runs Installs of revisions into one deployment root, the way deploy.py calls agent.install."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.instructions_dir = str(tmp / "root" / "deployment-instructions")
        self.n = 0

    def archive(self, files: dict[str, str | None]) -> str:
        self.n += 1
        arch = self.tmp / "root" / GROUP / f"d-{self.n}" / "deployment-archive"
        arch.mkdir(parents=True)
        write(arch, files)
        return str(arch)

    def install(self, appspec: AppSpec, arch: str, group: str = GROUP, cli: str | None = None):
        return install(appspec, arch, self.instructions_dir, group, cli)

    def cleanup_lines(self, group: str = GROUP) -> list[str]:
        return Path(self.instructions_dir, f"{group}-cleanup").read_text().splitlines()

    def instructions(self, group: str = GROUP) -> list[dict]:
        return json.loads(Path(self.instructions_dir, f"{group}-install.json").read_text())["instructions"]


def tree(root: Path) -> dict[str, str]:
    """path -> 'dir 0755' | 'file 0644 content' | 'link -> target'."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {stat.S_IMODE(st.st_mode):04o}"
            else:
                out[rel] = f"file {stat.S_IMODE(st.st_mode):04o} {Path(p).read_text()}"
    return out


def unordered(items: list) -> list:
    return sorted(json.dumps(i, sort_keys=True) if isinstance(i, dict) else i for i in items)


@pytest.fixture
def dep(tmp_path) -> Deployer:
    return Deployer(tmp_path)


@pytest.fixture(scope="session")
def real_user():
    """A real user and group (useradd/groupadd), removed at the end."""
    created = []
    if subprocess.run(["getent", "group", TEST_GROUP], capture_output=True, check=False).returncode != 0:
        subprocess.run(["groupadd", TEST_GROUP], check=True)
        created.append(["groupdel", TEST_GROUP])
    if subprocess.run(["getent", "passwd", TEST_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", TEST_USER], check=True)
        created.insert(0, ["userdel", TEST_USER])
    yield pwd.getpwnam(TEST_USER).pw_uid, grp.getgrnam(TEST_GROUP).gr_gid
    for cmd in created:
        subprocess.run(cmd, check=False, capture_output=True)


# ---------------------------------------------------------------------------------------- b_mapping

B_MAPPING_REV = {
    "top.txt": "top\n", "config/app.conf": "app.conf\n", "config/other.conf": "other\n",
    "web/index.html": "<html></html>\n", "web/static/css/site.css": "css {}\n", "web/static/js/app.js": "js\n",
    "part1/one.txt": "one\n", "part1/shared/x.txt": "shared x one\n",
    "part2/two.txt": "two\n", "part2/shared/y.txt": "shared y two\n",
}


class TestMapping:
    def test_b_mapping_instructions_cleanup_and_tree(self, dep, tmp_path):
        """The b_mapping case: destinations are directories, directory sources copy their contents,
        entries merge, missing ancestors are created 0755 parents first, an existing dir keeps its mode."""
        t = tmp_path / "target"
        (t / "existing-dir").mkdir(parents=True)
        os.chmod(t / "existing-dir", 0o750)
        arch = dep.archive(B_MAPPING_REV)
        dep.install(spec(("config/app.conf", f"{t}/etc"), ("config/app.conf", f"{t}/renamed.conf"),
                         ("web", f"{t}/www"), ("web/static/css/", f"{t}/css-only"),
                         ("part1", f"{t}/merged"), ("part2", f"{t}/merged"),
                         ("/config/other.conf", f"{t}/existing-dir/"), ("top.txt", f"{t}/deep/new/dirs")), arch)

        def copy(src, dst):
            return {"type": "copy", "source": f"{arch}/{src}", "destination": f"{t}/{dst}"}

        def mkdir(d):
            return {"type": "mkdir", "directory": f"{t}/{d}"}
        expected = [mkdir("etc"), copy("config/app.conf", "etc/app.conf"), mkdir("renamed.conf"),
                    copy("config/app.conf", "renamed.conf/app.conf"), mkdir("www"), mkdir("www/static"),
                    mkdir("www/static/css"), copy("web/static/css/site.css", "www/static/css/site.css"),
                    mkdir("www/static/js"), copy("web/static/js/app.js", "www/static/js/app.js"),
                    copy("web/index.html", "www/index.html"), mkdir("css-only"),
                    copy("web/static/css/site.css", "css-only/site.css"), mkdir("merged"),
                    mkdir("merged/shared"), copy("part1/shared/x.txt", "merged/shared/x.txt"),
                    copy("part1/one.txt", "merged/one.txt"), copy("part2/shared/y.txt", "merged/shared/y.txt"),
                    copy("part2/two.txt", "merged/two.txt"), copy("config/other.conf", "existing-dir/other.conf"),
                    mkdir("deep"), mkdir("deep/new"), mkdir("deep/new/dirs"), copy("top.txt", "deep/new/dirs/top.txt")]
        got = dep.instructions()
        assert unordered(got) == unordered(expected)
        cleanup = dep.cleanup_lines()
        assert unordered(cleanup) == unordered([i.get("directory") or i["destination"] for i in expected])
        # a directory is always journaled before anything below it, so the reverse replay empties it first
        for n, line in enumerate(cleanup):
            assert os.path.dirname(line) not in cleanup[n + 1:]
        assert tree(t) == {
            "etc": "dir 0755", "etc/app.conf": "file 0644 app.conf\n",
            "renamed.conf": "dir 0755", "renamed.conf/app.conf": "file 0644 app.conf\n",
            "www": "dir 0755", "www/index.html": "file 0644 <html></html>\n", "www/static": "dir 0755",
            "www/static/css": "dir 0755", "www/static/css/site.css": "file 0644 css {}\n",
            "www/static/js": "dir 0755", "www/static/js/app.js": "file 0644 js\n",
            "css-only": "dir 0755", "css-only/site.css": "file 0644 css {}\n",
            "merged": "dir 0755", "merged/one.txt": "file 0644 one\n", "merged/two.txt": "file 0644 two\n",
            "merged/shared": "dir 0755", "merged/shared/x.txt": "file 0644 shared x one\n",
            "merged/shared/y.txt": "file 0644 shared y two\n",
            "existing-dir": "dir 0750", "existing-dir/other.conf": "file 0644 other\n",
            "deep": "dir 0755", "deep/new": "dir 0755", "deep/new/dirs": "dir 0755",
            "deep/new/dirs/top.txt": "file 0644 top\n"}

    def test_directory_entries_follow_directory_listing_order(self, dep, tmp_path):
        """Entries of a source folder are generated in os.scandir order, each folder recursed in place."""
        arch = dep.archive({f"d/{n}.txt": n for n in "qwertyuiop"} | {"d/sub/z": "z"})
        got = generate_instructions(spec(("d", str(tmp_path / "out"))), arch, "DISALLOW")
        listing = [e.name for e in os.scandir(Path(arch) / "d")]
        firsts = [os.path.relpath(getattr(i, "destination", getattr(i, "directory", "")), tmp_path / "out")
                  for i in got[1:]]
        assert [f for f in firsts if "/" not in f] == listing

    def test_source_slash_installs_the_whole_revision(self, dep, tmp_path):
        """`source: /` copies everything, the appspec and scripts included."""
        arch = dep.archive({"appspec.yml": "x", "scripts/a.sh": "#!/bin/sh\n"})
        dep.install(spec(("/", str(tmp_path / "app"))), arch)
        assert sorted(tree(tmp_path / "app")) == ["appspec.yml", "scripts", "scripts/a.sh"]

    def test_relative_destination_resolves_against_cwd(self, dep, tmp_path):
        """A relative destination is absolutised with the working directory."""
        arch = dep.archive({"a.txt": "a"})
        got = generate_instructions(spec(("a.txt", "rel/dir")), arch, "DISALLOW", cwd=str(tmp_path))
        assert got == [Mkdir(f"{tmp_path}/rel"), Mkdir(f"{tmp_path}/rel/dir"),
                       Copy(f"{arch}/a.txt", f"{tmp_path}/rel/dir/a.txt")]

    def test_symlinks_k_archives(self, dep, tmp_path):
        """File links are recreated with the same text, a link to a folder becomes a real folder, an
        empty folder is created, modes and mtimes are kept, folders are fresh 0755."""
        arch = dep.archive({"data/file.txt": "data\n", "bin/tool": "tool", "emptydir": None})
        a = Path(arch)
        os.chmod(a / "data/file.txt", 0o600)
        os.chmod(a / "bin/tool", 0o755)
        os.chmod(a / "bin", 0o711)
        os.symlink("data/file.txt", a / "link.txt")
        os.symlink("data", a / "dirlink")
        os.symlink("/etc/hostname", a / "abslink")
        os.utime(a / "data/file.txt", (BUNDLE_MTIME, BUNDLE_MTIME))
        summary = dep.install(spec(("/", str(tmp_path / "app"))), arch)
        assert tree(tmp_path / "app") == {
            "abslink": "link -> /etc/hostname", "link.txt": "link -> data/file.txt",
            "bin": "dir 0755", "bin/tool": "file 0755 tool", "data": "dir 0755",
            "data/file.txt": "file 0600 data\n", "dirlink": "dir 0755", "dirlink/file.txt": "file 0600 data\n",
            "emptydir": "dir 0755"}
        assert os.stat(tmp_path / "app/dirlink/file.txt").st_mtime == BUNDLE_MTIME
        assert (summary.files_copied, summary.symlinks_created, summary.dirs_created) == (3, 2, 5)
        assert {i["source"] for i in dep.instructions() if i["type"] == "copy"} >= {f"{arch}/dirlink/file.txt"}

    def test_directory_link_out_of_the_revision_is_refused(self, dep, tmp_path):
        """A bundle link to a host folder is refused, naming the link; nothing is installed."""
        secret = tmp_path / "secret"
        write(secret, {"key": "private"})
        arch = dep.archive({"a.txt": "a"})
        os.symlink(str(secret), Path(arch) / "ssh")
        with pytest.raises(UnsafeBundle, match="ssh") as e:
            dep.install(spec(("/", str(tmp_path / "app"))), arch)
        assert e.value.reference == "bundle-unsafe-member"
        assert not (tmp_path / "app").exists()

    def test_source_reaching_out_of_the_revision_is_refused(self, dep, tmp_path):
        """A files source whose real path leaves the revision (through .. or a link) is refused."""
        write(tmp_path, {"outside/f": "x"})
        arch = dep.archive({"a.txt": "a"})
        with pytest.raises(UnsafeBundle, match=r"\.\./"):
            generate_instructions(spec(("../../../../outside", str(tmp_path / "app"))), arch, "DISALLOW")

    def test_directory_link_loop_is_refused(self, dep, tmp_path):
        """A link to one of its own parent folders would be copied without end: refused."""
        arch = dep.archive({"d/a.txt": "a"})
        os.symlink("..", Path(arch) / "d" / "up")
        with pytest.raises(UnsafeBundle, match="d/up"):
            generate_instructions(spec(("/", str(tmp_path / "app"))), arch, "DISALLOW")

    def test_owner_and_group_of_the_archive_file_are_kept_as_root(self, dep, tmp_path, real_user):
        """As root the copy keeps the archive file's owner and group (tar bundles carry them)."""
        uid, gid = real_user
        arch = dep.archive({"f": "x"})
        os.chown(Path(arch) / "f", uid, gid)
        dep.install(spec(("f", str(tmp_path / "app"))), arch)
        st = os.stat(tmp_path / "app" / "f")
        assert (st.st_uid, st.st_gid) == (uid, gid)


    def test_setuid_dropped_when_the_owner_cannot_be_kept(self, real_user):
        """Not root: the copy cannot give the file to its archive owner, so setuid/setgid are dropped."""
        uid, gid = real_user
        base = Path(tempfile.mkdtemp(prefix="cdsim-test-", dir="/tmp"))
        try:
            os.chmod(base, 0o755)
            (base / "src").write_text("#!/bin/sh\n")
            os.chmod(base / "src", 0o6755)
            (base / "dst").mkdir()
            os.chown(base / "dst", uid, gid)
            os.setegid(gid)
            os.seteuid(uid)
            try:
                execute_instructions([Copy(str(base / "src"), str(base / "dst" / "f"))], str(base / "dst" / "c"))
            finally:
                os.seteuid(0)
                os.setegid(0)
            st = os.stat(base / "dst" / "f")
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, uid)
        finally:
            shutil.rmtree(base)


class TestExecutionFailures:
    def test_missing_source_fails_at_execution_and_stays_in_the_cleanup(self, dep, tmp_path):
        """A missing source is only found when copying; its destination is already journaled."""
        arch = dep.archive({"a.txt": "a"})
        with pytest.raises(DeploymentError) as e:
            dep.install(spec(("nothere.txt", str(tmp_path / "app"))), arch)
        assert e.value.message == f"No such file or directory @ rb_sysopen - {arch}/nothere.txt"
        assert dep.cleanup_lines() == [f"{tmp_path}/app", f"{tmp_path}/app/nothere.txt"]

    def test_failed_copy_in_a_batch_ends_the_journal_at_that_copy(self, tmp_path):
        """Journal lines are written per batch, but after a failure the file ends with the failing copy."""
        write(tmp_path / "src", {f"f{n}": str(n) for n in range(6)})
        (tmp_path / "dst").mkdir()
        instrs = [Copy(f"{tmp_path}/src/f{n}", f"{tmp_path}/dst/f{n}") for n in range(6)]
        instrs[3] = Copy(f"{tmp_path}/src/missing", f"{tmp_path}/dst/f3")
        cleanup = tmp_path / "c"
        with pytest.raises(DeploymentError):
            execute_instructions(instrs, str(cleanup))
        assert cleanup.read_text() == "".join(f"{tmp_path}/dst/f{n}\n" for n in range(4))
        assert sorted(os.listdir(tmp_path / "dst")) == ["f0", "f1", "f2"]

    def test_file_where_a_folder_is_needed_fails_with_empty_cleanup(self, dep, tmp_path):
        """d_file_exists/file-where-dir-needed: the mkdir fails (EEXIST, path named), nothing copied, the
        cleanup file exists and is empty."""
        write(tmp_path, {"app/sub": "iamafile\n"})
        arch = dep.archive({"sub/s.txt": "s", "a.txt": "a"})
        with pytest.raises(DeploymentError) as e:
            dep.install(spec(("/", str(tmp_path / "app"))), arch, cli="OVERWRITE")
        assert e.value.message == f"File exists @ dir_s_mkdir - {tmp_path}/app/sub"
        assert dep.cleanup_lines() == []
        assert sorted(os.listdir(tmp_path / "app")) == ["sub"]
        assert dep.instructions()[0] == {"type": "mkdir", "directory": f"{tmp_path}/app/sub"}

    def test_symlink_onto_an_existing_path_fails_even_with_overwrite(self, dep, tmp_path):
        """A bundle symlink cannot replace an existing file (EEXIST naming the destination)."""
        write(tmp_path, {"app/link": "existing"})
        arch = dep.archive({"t": "t"})
        os.symlink("t", Path(arch) / "link")
        with pytest.raises(DeploymentError, match=f"File exists @ syserr_fail2_in - {tmp_path}/app/link"):
            dep.install(spec(("link", str(tmp_path / "app"))), arch, cli="OVERWRITE")

    def test_overwrite_through_an_existing_symlink_writes_its_target(self, dep, tmp_path):
        """Agent-exact hazard: copying onto an existing symlink writes through it."""
        write(tmp_path, {"elsewhere/real": "old"})
        (tmp_path / "app").mkdir()
        os.symlink(str(tmp_path / "elsewhere/real"), tmp_path / "app" / "f")
        arch = dep.archive({"f": "new"})
        dep.install(spec(("f", str(tmp_path / "app"))), arch, cli="OVERWRITE")
        assert (tmp_path / "elsewhere/real").read_text() == "new"
        assert os.path.islink(tmp_path / "app" / "f")

    def test_overwrite_onto_an_existing_directory_copies_into_it(self, dep, tmp_path):
        """FileUtils.copy semantics: a file copied onto a folder lands inside it."""
        (tmp_path / "app" / "x").mkdir(parents=True)
        arch = dep.archive({"x": "file"})
        dep.install(spec(("x", str(tmp_path / "app"))), arch, cli="OVERWRITE")
        assert (tmp_path / "app" / "x" / "x").read_text() == "file"


class TestCollisions:
    def test_two_sources_for_one_destination(self, dep, tmp_path):
        """§6.5: the second copy to a path names both absolute sources."""
        arch = dep.archive({"a/f": "1", "b/f": "2"})
        with pytest.raises(DeploymentError) as e:
            generate_instructions(spec(("a/f", str(tmp_path)), ("b/f", str(tmp_path))), arch, "DISALLOW")
        assert e.value.message == (
            f"The deployment failed because the application specification file specifies two source files "
            f"named {arch}/b/f and {arch}/a/f for the same destination ({tmp_path}/f). Remove one of the "
            f"source file paths from the AppSpec file, and then try again.")

    def test_copy_onto_a_planned_directory(self, dep, tmp_path):
        """§6.5: a file installed where another entry creates a folder."""
        arch = dep.archive({"d/x": "1", "f/x": "2"})
        with pytest.raises(DeploymentError) as e:
            generate_instructions(spec(("d", f"{tmp_path}/out/x"), ("f/x", f"{tmp_path}/out")), arch, "DISALLOW")
        assert e.value.message == (
            f"The deployment failed because the application specification file calls for installing the file "
            f"{arch}/f/x, but a file with that name already exists at the location ({tmp_path}/out/x). "
            f"Update your AppSpec file or directory structure, and then try again.")

    def test_mkdir_of_a_planned_file(self, dep, tmp_path):
        """§6.5: a destination below a file another entry installs (the agent's misleading text)."""
        arch = dep.archive({"a.txt": "1", "b.txt": "2"})
        with pytest.raises(DeploymentError) as e:
            generate_instructions(spec(("a.txt", f"{tmp_path}/x"), ("b.txt", f"{tmp_path}/x/a.txt")), arch,
                                  "DISALLOW")
        assert e.value.message == (
            f"The deployment failed because the application specification file includes an mkdir command "
            f"more than once for the same destination path ({tmp_path}/x/a.txt) from ({arch}/a.txt). "
            f"Update the files section of the AppSpec file, and then try again.")


class TestFileExistsBehavior:
    def test_appspec_value_wins_over_the_cli_both_ways(self):
        """§6.4: appspec first (case-sensitive), else the CLI value upper-cased, else DISALLOW."""
        assert effective_file_exists_behavior(spec(behavior="OVERWRITE"), "DISALLOW") == "OVERWRITE"
        assert effective_file_exists_behavior(spec(behavior="RETAIN"), "OVERWRITE") == "RETAIN"
        assert effective_file_exists_behavior(spec(behavior="DISALLOW"), "OVERWRITE") == "DISALLOW"
        assert effective_file_exists_behavior(spec(), "overwrite") == "OVERWRITE"
        assert effective_file_exists_behavior(spec(), None) == "DISALLOW"

    def _preexisting(self, tmp_path):
        write(tmp_path, {"app/a.txt": "pre-existing\n", "app/sub/s.txt": "pre-sub\n", "app/other.txt": "untouched\n"})

    def test_disallow_fails_before_copying_anything(self, dep, tmp_path):
        """d_file_exists/default-disallow: FileCollision naming the path, nothing copied, no install.json."""
        self._preexisting(tmp_path)
        arch = dep.archive({"a.txt": "new a\n", "appspec.yml": "x"})
        with pytest.raises(FileCollision) as e:
            dep.install(spec(("/", f"{tmp_path}/app")), arch)
        assert e.value.message == ("The deployment failed because a specified file already exists at this "
                                   f"location: {tmp_path}/app/a.txt")
        assert not (tmp_path / "app/appspec.yml").exists()
        assert not os.path.exists(Path(dep.instructions_dir, f"{GROUP}-install.json"))

    @pytest.mark.parametrize("cli, appspec_value", [("OVERWRITE", None), ("overwrite", None),
                                                    ("DISALLOW", "OVERWRITE")])
    def test_overwrite_replaces_and_journals(self, dep, tmp_path, cli, appspec_value):
        """OVERWRITE (from the CLI in any case, or the appspec over a CLI DISALLOW) replaces and journals."""
        self._preexisting(tmp_path)
        arch = dep.archive({"a.txt": "new a\n", "sub/s.txt": "new s\n", "appspec.yml": "x"})
        dep.install(spec(("/", f"{tmp_path}/app"), behavior=appspec_value), arch, cli=cli)
        assert (tmp_path / "app/a.txt").read_text() == "new a\n"
        assert (tmp_path / "app/other.txt").read_text() == "untouched\n"
        assert unordered(dep.cleanup_lines()) == unordered(
            [f"{tmp_path}/app/sub/s.txt", f"{tmp_path}/app/a.txt", f"{tmp_path}/app/appspec.yml"])

    def test_retain_keeps_and_does_not_journal(self, dep, tmp_path):
        """RETAIN (the appspec's, over a CLI OVERWRITE) keeps old contents; only new files are journaled."""
        self._preexisting(tmp_path)
        arch = dep.archive({"a.txt": "new a\n", "sub/s.txt": "new s\n", "appspec.yml": "x"})
        dep.install(spec(("/", f"{tmp_path}/app"), behavior="RETAIN"), arch, cli="OVERWRITE")
        assert (tmp_path / "app/a.txt").read_text() == "pre-existing\n"
        assert dep.cleanup_lines() == [f"{tmp_path}/app/appspec.yml"]

    def test_invalid_cli_value_fails_only_on_a_conflict(self, dep, tmp_path):
        """`-b bogus` is accepted until a file collides, then fails with the agent's text."""
        arch = dep.archive({"a.txt": "a"})
        dep.install(spec(("/", f"{tmp_path}/app")), arch, cli="bogus")
        arch2 = dep.archive({"a.txt": "a"})
        with pytest.raises(DeploymentError) as e:
            dep.install(spec(("/", f"{tmp_path}/app")), arch2, group="other", cli="bogus")
        assert e.value.message == (
            "The deployment failed because an invalid option was specified for fileExistsBehavior: BOGUS. "
            "Valid options include OVERWRITE, RETAIN, and DISALLOW.")

    def test_appspec_lowercase_value_is_rejected_by_the_parser(self):
        """The appspec value is case-sensitive (checked when parsing)."""
        from agent.errors import AppSpecError
        with pytest.raises(AppSpecError, match=r"invalid file_exists_behavior value \(overwrite\)"):
            parse_appspec("version: 0.0\nos: linux\nfile_exists_behavior: overwrite\n")


class TestRedeploy:
    REV1: ClassVar[dict[str, str]] = {"a.txt": "rev1 a\n", "b.txt": "rev1 b only\n", "sub/c.txt": "rev1 c\n",
                                      "gone/only.txt": "x\n", "scripts/stop.sh": "#!/bin/sh\n"}
    REV2: ClassVar[dict[str, str]] = {"a.txt": "rev2 a\n", "d.txt": "rev2 d\n", "sub/e.txt": "rev2 e\n",
                                      "scripts/stop.sh": "#!/bin/sh\n"}

    def test_c_redeploy(self, dep, tmp_path):
        """rev1 then rev2 into one group: rev1-only files go, a folder holding a foreign file stays, rev2's
        journal lists only what it created; the same revision into another group collides (DISALLOW)."""
        app = f"{tmp_path}/app"
        dep.install(spec(("/", app)), dep.archive(self.REV1))
        (tmp_path / "app/sub/foreign.txt").write_text("foreign\n")
        summary = dep.install(spec(("/", app)), dep.archive(self.REV2))
        assert summary.cleanup_removed == 7  # a, b, c, only.txt, gone/, stop.sh, scripts/ (app/, sub/ kept)
        assert sorted(tree(tmp_path / "app")) == ["a.txt", "d.txt", "scripts", "scripts/stop.sh", "sub",
                                                 "sub/e.txt", "sub/foreign.txt"]
        assert unordered(dep.cleanup_lines()) == unordered(
            [f"{app}/scripts", f"{app}/scripts/stop.sh", f"{app}/sub/e.txt", f"{app}/d.txt", f"{app}/a.txt"])
        with pytest.raises(FileCollision):
            dep.install(spec(("/", app)), dep.archive(self.REV2), group="g2")
        # the refused deployment of g2 left g1's journal alone; g1 redeploys cleanly
        dep.install(spec(("/", app)), dep.archive(self.REV2))
        assert (tmp_path / "app/a.txt").read_text() == "rev2 a\n"

    def test_foreign_file_disallow_retain_overwrite_then_next_cleanup(self, dep, tmp_path):
        """A file someone else put where rev2 installs one: refused (DISALLOW), kept (RETAIN), replaced
        (OVERWRITE) — and the replaced file is deleted by the next deployment's cleanup (Q14)."""
        app = f"{tmp_path}/app"
        dep.install(spec(("/", app)), dep.archive(self.REV1))
        (tmp_path / "app/d.txt").write_text("foreign\n")
        with pytest.raises(FileCollision, match=r"app/d\.txt"):
            dep.install(spec(("/", app)), dep.archive(self.REV2))
        # cdsim fixes Q13: the refused Install changed nothing, rev1's files and cleanup file are intact
        assert (tmp_path / "app/b.txt").exists()
        assert f"{app}/b.txt" in dep.cleanup_lines()
        dep.install(spec(("/", app)), dep.archive(self.REV2), cli="RETAIN")
        assert (tmp_path / "app/d.txt").read_text() == "foreign\n"
        assert f"{app}/d.txt" not in dep.cleanup_lines()
        dep.install(spec(("/", app)), dep.archive(self.REV2), cli="OVERWRITE")
        assert (tmp_path / "app/d.txt").read_text() == "rev2 d\n"
        dep.install(spec(("/", app)), dep.archive({"a.txt": "rev3\n"}))
        assert not (tmp_path / "app/d.txt").exists()


class TestCleanup:
    def test_replay_rules(self, tmp_path):
        """Reverse order; files and symlinks unlinked (links not followed); empty folders removed,
        non-empty kept silently; missing paths ignored; whitespace stripped; the file deleted."""
        write(tmp_path, {"t/d/f": "f", "t/keep/mine": "m", "t/keep/foreign": "x", "target": "keep me"})
        os.symlink(str(tmp_path / "target"), tmp_path / "t/link")
        cleanup = tmp_path / "c"
        cleanup.write_text("".join(f"{p}\n" for p in [
            f"{tmp_path}/t/d", f"  {tmp_path}/t/d/f  ", f"{tmp_path}/t/keep", f"{tmp_path}/t/keep/mine",
            f"{tmp_path}/t/link", f"{tmp_path}/t/missing"]))
        removed = run_cleanup(str(cleanup))
        assert removed == [f"{tmp_path}/t/link", f"{tmp_path}/t/keep/mine", f"{tmp_path}/t/d/f", f"{tmp_path}/t/d"]
        assert sorted(tree(tmp_path / "t")) == ["keep", "keep/foreign"]
        assert (tmp_path / "target").read_text() == "keep me"
        assert not cleanup.exists()

    def test_torn_last_line_is_ignored(self, tmp_path):
        """A last line without its newline is a torn write: not acted upon."""
        write(tmp_path, {"a": "a", "b": "b"})
        cleanup = tmp_path / "c"
        cleanup.write_bytes(f"{tmp_path}/a\n{tmp_path}/b".encode())
        assert read_cleanup(str(cleanup)) == [f"{tmp_path}/a"]
        assert run_cleanup(str(cleanup)) == [f"{tmp_path}/a"]
        assert (tmp_path / "b").exists()

    def test_semanage_entries_are_read_apart(self, tmp_path):
        """`semanage\\0path` lines are context removals, not paths."""
        cleanup = tmp_path / "c"
        cleanup.write_bytes(b"/x\nsemanage\x00/y\n")
        assert read_cleanup(str(cleanup)) == ["/x", "semanage\x00/y"]

    def test_no_cleanup_file_is_nothing(self, tmp_path):
        """No file, nothing removed."""
        assert run_cleanup(str(tmp_path / "none")) == []


class TestInstallJson:
    def test_exact_serialisation(self):
        """One line, no trailing newline, the agent's key order, null for absent owner/group/range/role."""
        got = install_json([
            Mkdir("/d"), Copy("/a/x", "/d/x"), Chmod("644", "/d/x"),
            Setfacl((AclEntry(False, "user", "bob", "rw-"), AclEntry(True, "group", "dev", "r--")), "/d"),
            Semanage(Context(None, "httpd_sys_content_t", "s0"), "/d/x"), Chown("bob", None, "/d/x")])
        assert got == (
            '{"instructions":[{"type":"mkdir","directory":"/d"},'
            '{"type":"copy","source":"/a/x","destination":"/d/x"},'
            '{"type":"chmod","mode":"644","file":"/d/x"},'
            '{"type":"setfacl","acl":["user:bob:rw-","default:group:dev:r--"],"file":"/d"},'
            '{"type":"semanage","context":{"user":null,"role":null,"type":"httpd_sys_content_t","range":"s0"},'
            '"file":"/d/x"},'
            '{"type":"chown","owner":"bob","group":null,"file":"/d/x"}]}')

    def test_failed_generation_leaves_the_previous_file(self, dep, tmp_path):
        """install.json is written after generation: a generation failure keeps the previous one."""
        arch = dep.archive({"a.txt": "a"})
        dep.install(spec(("/", f"{tmp_path}/app")), arch)
        before = Path(dep.instructions_dir, f"{GROUP}-install.json").read_bytes()
        (tmp_path / "app2").mkdir()
        (tmp_path / "app2/a.txt").write_text("x")
        with pytest.raises(FileCollision):
            dep.install(spec(("/", f"{tmp_path}/app2")), dep.archive({"a.txt": "a"}))
        assert Path(dep.instructions_dir, f"{GROUP}-install.json").read_bytes() == before


# -------------------------------------------------------------------------------------- permissions

def gen_perms(dep: Deployer, tmp_path: Path, *perms: Permission, files=None) -> list:
    arch = dep.archive(files or {"a.txt": "a", "b.log": "b", "sub/c.txt": "c", "sub/deeper/d.txt": "d"})
    return [i for i in generate_instructions(spec(("/", f"{tmp_path}/app"), permissions=perms), arch, "DISALLOW")
            if type(i) not in (Copy, Mkdir)]


class TestPermissionMatching:
    def test_classify(self):
        """Object itself excluded; ** reaches all descendants; other patterns direct children only; only *
        is special; except applies to direct children."""
        c = perm.classify
        assert c("/app", "/app", "**", ()) == perm.NOT_BELOW
        assert c("/app2/x", "/app", "**", ()) == perm.NOT_BELOW
        assert c("/app/a/b/c", "/app", "**", ()) == perm.MATCH
        assert c("/app/a.txt", "/app", "*.txt", ()) == perm.MATCH
        assert c("/app/sub/a.txt", "/app", "*.txt", ()) == perm.DEEPER
        assert c("/app/a.log", "/app", "*.txt", ()) == perm.PATTERN
        assert c("/app/a?", "/app", "a?", ()) == perm.MATCH
        assert c("/app/ab", "/app", "a?", ()) == perm.PATTERN
        assert c("/app/A.TXT", "/app", "*.txt", ()) == perm.PATTERN
        assert c("/app/a.txt", "/app", "**", ("*.txt",)) == perm.EXCEPT
        assert c("/app/sub/a.txt", "/app", "**", ("**",)) == perm.MATCH

    def test_object_itself_and_preexisting_paths_untouched(self, dep, tmp_path):
        """A directory object: only paths this deployment creates below it get instructions."""
        got = gen_perms(dep, tmp_path, Permission(object=f"{tmp_path}/app", mode="600"))
        files = [i.file for i in got]
        assert sorted(files) == sorted(f"{tmp_path}/app/{p}" for p in (
            "a.txt", "b.log", "sub/c.txt", "sub/deeper/d.txt", "sub", "sub/deeper"))
        assert sorted(files[4:]) == [f"{tmp_path}/app/sub", f"{tmp_path}/app/sub/deeper"]  # files first

    def test_pattern_except_and_type(self, dep, tmp_path):
        """pattern matches direct children, except removes direct children, type filters kinds."""
        got = gen_perms(dep, tmp_path, Permission(object=f"{tmp_path}/app", pattern="*.txt", mode="600"),
                        Permission(object=f"{tmp_path}/app/sub", except_=("c.txt",), types=("file",), mode="640"),
                        Permission(object=f"{tmp_path}/app/sub", types=("directory",), mode="750"))
        assert sorted((i.file, i.mode) for i in got) == [
            (f"{tmp_path}/app/a.txt", "600"), (f"{tmp_path}/app/sub/deeper", "750"),
            (f"{tmp_path}/app/sub/deeper/d.txt", "640")]

    def test_specified_twice(self, dep, tmp_path):
        """A path claimed by two entries fails, even when the first sets nothing."""
        with pytest.raises(DeploymentError) as e:
            gen_perms(dep, tmp_path, Permission(object=f"{tmp_path}/app/sub"),
                      Permission(object=f"{tmp_path}/app", mode="600"))
        assert e.value.message == (
            f"The deployment failed because the permissions setting for ({tmp_path}/app/sub/c.txt) is "
            f"specified more than once in the application specification file. Update the files section of "
            f"the AppSpec file, and then try again.")

    def test_file_object_rules(self, dep, tmp_path):
        """A file object: pattern/except are errors, default ACEs are errors, type [directory] is a no-op."""
        obj = f"{tmp_path}/app/a.txt"
        assert gen_perms(dep, tmp_path, Permission(object=obj, types=("directory",), mode="600")) == []
        with pytest.raises(DeploymentError,
                           match=r"includes an object \(" + obj + r"\) with an invalid pattern \(\*\.txt\)"):
            gen_perms(dep, tmp_path, Permission(object=obj, pattern="*.txt", mode="600"))
        with pytest.raises(DeploymentError) as e:
            gen_perms(dep, tmp_path, Permission(object=obj, except_=("x",), mode="600"))
        assert '(["x"]) for the object named ' + obj in e.value.message
        with pytest.raises(DeploymentError, match="-d parameter"):
            gen_perms(dep, tmp_path, Permission(object=obj, acls=(AclEntry(True, "user", "bob", "rwx"),)))

    def test_instruction_order_and_unknown_object(self, dep, tmp_path):
        """chmod, setfacl, semanage, chown per path; an object neither installed nor a folder is ignored."""
        acl = (AclEntry(False, "user", "bob", "rw-"),)
        ctx = Context("system_u", "httpd_sys_content_t", "s0")
        got = gen_perms(dep, tmp_path, Permission(object=f"{tmp_path}/app/a.txt", owner="root", mode="644",
                                                  acls=acl, context=ctx),
                        Permission(object=f"{tmp_path}/nowhere", mode="600"))
        obj = f"{tmp_path}/app/a.txt"
        assert got == [Chmod("644", obj), Setfacl(acl, obj), Semanage(ctx, obj), Chown("root", None, obj)]

    def test_acl_accumulates_across_paths_of_one_entry(self):
        """Q9: the agent's example, then a second path that gets the first path's mask."""
        acc = perm.AclAccumulator()
        aces = (AclEntry(False, "user", "bob", "rwx"), AclEntry(True, "user", "bob", "rwx"))
        first = acc.next_acl(aces, 0o421)
        assert perm.acl_text(first) == ("user:bob:rwx,default:user:bob:rwx,user::r--,group::-w-,other::--x,"
                                        "mask::-w-,default:user::r--,default:group::-w-,default:other::--x,"
                                        "default:mask::-w-")
        second = perm.effective(acc.next_acl(aces, 0o770))
        assert perm.acl_text(second) == ("user:bob:rwx,default:user:bob:rwx,user::rwx,group::rwx,other::---,"
                                         "mask::-w-,default:user::r--,default:group::-w-,default:other::--x,"
                                         "default:mask::-w-")

    def test_ruby_inspect_list(self):
        """except is shown as Ruby prints an array."""
        assert perm.ruby_inspect_list(("*.log", 'a"b')) == '["*.log", "a\\"b"]'


class TestPermissionExecution:
    def test_mode_owner_group_applied(self, dep, tmp_path, real_user):
        """chmod and chown with a real user and group, only below the object."""
        uid, gid = real_user
        arch = dep.archive({"a.txt": "a", "sub/b.txt": "b"})
        dep.install(spec(("/", f"{tmp_path}/app"), permissions=(
            Permission(object=f"{tmp_path}/app", mode="0640", owner=TEST_USER, group=TEST_GROUP,
                       types=("file",)),)), arch)
        for p in ("a.txt", "sub/b.txt"):
            st = os.stat(tmp_path / "app" / p)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, uid, gid)
        assert stat.S_IMODE(os.stat(tmp_path / "app").st_mode) == 0o755
        assert os.stat(tmp_path / "app").st_uid == 0

    @pytest.mark.parametrize("owner, group, message", [("no-such-user-x", None, "can't find user for no-such-user-x"),
                                                       (None, "no-such-grp-x", "can't find group for no-such-grp-x")])
    def test_unknown_owner_or_group(self, dep, tmp_path, owner, group, message):
        """Names are resolved when executing, with the agent's texts."""
        arch = dep.archive({"a.txt": "a"})
        with pytest.raises(DeploymentError) as e:
            dep.install(spec(("/", f"{tmp_path}/app"), permissions=(
                Permission(object=f"{tmp_path}/app", owner=owner, group=group),)), arch)
        assert e.value.message == message

    def test_setfacl_applied_with_mask_from_group_bits(self, dep, tmp_path, real_user):
        """A named user on a 644 file is limited by the derived mask (r--); a second path of the same
        entry reuses the first path's mask (Q9)."""
        require_tool("setfacl", "acl")
        arch = dep.archive({"a.txt": "a", "b.txt": "b"})
        os.chmod(Path(arch) / "a.txt", 0o644)
        os.chmod(Path(arch) / "b.txt", 0o664)
        dep.install(spec(("/", f"{tmp_path}/app"), permissions=(
            Permission(object=f"{tmp_path}/app", acls=(AclEntry(False, "user", TEST_USER, "rw-"),)),)), arch)
        acls = {}
        for name in ("a.txt", "b.txt"):
            out = subprocess.run(["getfacl", "-cp", str(tmp_path / "app" / name)], capture_output=True,
                                 text=True, check=True).stdout
            acls[name] = [line.split("\t")[0] for line in out.splitlines() if line]
        order = [os.path.basename(i["file"]) for i in dep.instructions() if i["type"] == "setfacl"]
        first, second = order
        own_mask = {"a.txt": "mask::r--", "b.txt": "mask::rw-"}
        assert f"user:{TEST_USER}:rw-" in acls[first]
        assert own_mask[first] in acls[first]
        assert own_mask[first] in acls[second]  # not its own group bits: the first path's mask

    def test_setfacl_missing_is_an_environment_problem(self, tmp_path, monkeypatch):
        """Without setfacl on PATH: a clear EnvironmentProblem saying how to get it."""
        (tmp_path / "f").write_text("x")
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(EnvironmentProblem, match=r"apt-get install acl"):
            execute_instructions([Setfacl((AclEntry(False, "user", "root", "rw-"),), str(tmp_path / "f"))],
                                 str(tmp_path / "c"))

    @pytest.mark.skipif(shutil.which("semanage") is not None, reason="SELinux tools present")
    def test_context_without_selinux_tools_is_an_environment_problem(self, tmp_path):
        """Without semanage/restorecon: a clear EnvironmentProblem, nothing journaled."""
        (tmp_path / "f").write_text("x")
        with pytest.raises(EnvironmentProblem, match="semanage and restorecon"):
            execute_instructions([Semanage(Context(None, "httpd_sys_content_t", "s0"), str(tmp_path / "f"))],
                                 str(tmp_path / "c"))
        assert (tmp_path / "c").read_text() == ""


def _preview_by_lstat(cleanup_path):
    """preview_cleanup's rules with one lstat per entry (how it was written before the folder scans)."""
    import stat as st_

    from agent.install import SEMANAGE_PREFIX, read_cleanup
    removes, keeps, gone = [], [], set()
    for entry in reversed(read_cleanup(cleanup_path)):
        if entry.startswith(SEMANAGE_PREFIX):
            continue
        try:
            st = os.lstat(entry)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if entry in gone:
            continue
        if st_.S_ISDIR(st.st_mode):
            try:
                children = os.listdir(entry)
            except OSError:
                children = ["?"]
            if any(os.path.join(entry, c) not in gone for c in children):
                keeps.append(entry)
                continue
        gone.add(entry)
        removes.append(entry)
    return tuple(removes), tuple(keeps)


def test_the_cleanup_preview_decides_as_one_lstat_per_entry_would(tmp_path):
    from agent.install import preview_cleanup
    d = tmp_path / "dest"
    (d / "sub" / "deep").mkdir(parents=True)
    (d / "other").mkdir()
    for p in ("a.txt", "sub/b.txt", "sub/deep/c.txt", "other/kept.txt"):
        (d / p).write_text(p)
    os.symlink(str(d / "sub"), str(d / "link-to-dir"))
    os.symlink("missing-target", str(d / "dangling"))
    entries = [f"{d}/sub", f"{d}/sub/deep", f"{d}/other", f"{d}/a.txt", f"{d}/sub/b.txt", f"{d}/sub/deep/c.txt",
               f"{d}/link-to-dir", f"{d}/dangling", f"{d}/link-to-dir/b.txt", f"{d}/gone.txt", f"{d}/nodir/x",
               f"{d}/a.txt/under-a-file", f"{d}//a.txt", f"{d}/sub/./b.txt", f"{d}/sub/deep/../b.txt", f"{d}/sub/",
               "relative/path", f"{d}/a.txt"]
    journal = tmp_path / "g-cleanup"
    journal.write_text("".join(e + "\n" for e in entries))
    preview = preview_cleanup(str(journal))
    assert (preview.removes, preview.keeps) == _preview_by_lstat(str(journal))
    assert f"{d}/other" in preview.keeps and f"{d}/sub" in preview.removes
    # an entry lstat fails on otherwise (a name too long) fails the preview the same way
    journal.write_text(f"{d}/a.txt\n{d}/{'n' * 300}\n")
    with pytest.raises(OSError) as ours:
        preview_cleanup(str(journal))
    with pytest.raises(OSError) as reference:
        _preview_by_lstat(str(journal))
    assert (ours.value.errno, ours.value.filename) == (reference.value.errno, reference.value.filename)


def test_install_json_is_json_dumps_of_the_instructions():
    """install_json writes copies and mkdirs itself: the text is json.dumps's, escapes included."""
    import json
    import random

    from agent.install import Chmod, Chown, Copy, Mkdir, install_json
    rnd = random.Random(17)
    alphabet = ["a", "é", '"', "\\", "\n", "\x00", "\x1f", "\u2028", "\udcff", "\U0001f4a5", "/", " ", "\t", "\x7f"]

    def text():
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))

    for _ in range(300):
        instructions = [rnd.choice([Copy(text(), text()), Mkdir(text()), Chmod("644", text()),
                                    Chown(text() or None, None, text())]) for _ in range(rnd.randint(0, 20))]
        assert install_json(instructions) == json.dumps({"instructions": [i.to_json() for i in instructions]},
                                                        ensure_ascii=False, separators=(",", ":"))
