"""``cdsim plan`` (agent.plan, agent.commands.plan): what an Install would do, changing nothing.

Real revisions, a real previous install made with agent.install, the CLI run as a subprocess.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.appspec import parse_appspec
from agent.errors import ExitStatus
from agent.install import install
from agent.plan import make_plan, render_text
from tests import lib

GROUP = "g1"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


def revision(root: Path, app: Path, files: dict[str, str], extra: str = "") -> Path:
    write(root, files | {"appspec.yml": f"version: 0.0\nos: linux\nfiles:\n  - source: /\n"
                                        f"    destination: {app}\n{extra}"})
    return root


def snapshot(*tops: Path) -> dict:
    """Every path under ``tops`` with type, mode, owner, mtime and content (or link text)."""
    out = {}
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in ["", *dirnames, *filenames]:
                p = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(p)
                data = (os.readlink(p) if os.path.islink(p) else
                        hashlib.sha256(Path(p).read_bytes()).hexdigest() if os.path.isfile(p) else None)
                out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size if data else 0, data)
    return out


def cdsim(*args: str, tmpdir: Path | None = None) -> subprocess.CompletedProcess:
    """`cdsim plan ARGS`, with TMPDIR set to ``tmpdir`` if given."""
    return lib.cdsim("plan", *args, env={} if tmpdir is None else {"TMPDIR": str(tmpdir)})


@pytest.fixture
def deployed(tmp_path):
    """rev1 installed into group g1 under tmp_path/root; rev2 ready as a directory and as a tar."""
    app = tmp_path / "app"
    root = tmp_path / "root"
    rev1 = revision(tmp_path / "rev1", app, {"a.txt": "1a", "b.txt": "1b", "sub/c.txt": "1c"})
    arch1 = root / GROUP / "d-1" / "deployment-archive"
    arch1.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(rev1), str(arch1)], check=True)
    spec = parse_appspec((arch1 / "appspec.yml").read_text())
    install(spec, str(arch1), str(root / "deployment-instructions"), GROUP, None)
    (app / "sub" / "foreign.txt").write_text("someone else's")
    rev2 = revision(tmp_path / "rev2", app, {"a.txt": "2a", "d.txt": "2d", "sub/e.txt": "2e"},
                    extra=f"permissions:\n  - object: {app}\n    pattern: '*.txt'\n    except: [d.txt]\n"
                          f"    mode: 600\n")
    tar = tmp_path / "rev2.tar"
    with tarfile.open(tar, "w") as tf:
        for name in sorted(os.listdir(rev2)):
            tf.add(rev2 / name, arcname=name)
    return {"app": app, "root": root, "rev2": rev2, "tar": tar}


class TestPlanChangesNothing:
    @pytest.mark.parametrize("bundle", ["rev2", "tar"])
    @pytest.mark.parametrize("fmt", ["text", "json"])
    def test_tree_and_root_byte_identical(self, deployed, tmp_path, bundle, fmt):
        """Destination tree and deployment root are identical before and after; the temp folder of an
        archive is gone."""
        scratch = tmp_path / "tmpdir"
        scratch.mkdir()
        before = snapshot(deployed["app"], deployed["root"], deployed["rev2"])
        r = cdsim(str(deployed[bundle]), "--deployment-group", GROUP, "--root-dir", str(deployed["root"]),
                  "--format", fmt, tmpdir=scratch)
        assert r.returncode == 0, r.stderr
        assert snapshot(deployed["app"], deployed["root"], deployed["rev2"]) == before
        assert os.listdir(scratch) == []


class TestPlanContents:
    def test_cleanup_is_accounted_for(self, deployed):
        """Files of the group's previous install would be removed first: no collision; the folder holding
        a foreign file would be kept."""
        app = deployed["app"]
        plan = make_plan(str(deployed["rev2"]), deployment_group=GROUP, root_dir=str(deployed["root"]))
        assert plan.outcome == "success" and plan.exit_status == ExitStatus.SUCCESS
        assert plan.collisions == ()
        assert sorted(plan.cleanup.removes) == sorted(f"{app}/{p}" for p in ("a.txt", "b.txt", "sub/c.txt",
                                                                             "appspec.yml"))
        assert sorted(plan.cleanup.keeps) == [str(app), f"{app}/sub"]
        assert sorted(d for _, d, _ in plan.copies) == sorted(f"{app}/{p}" for p in (
            "a.txt", "d.txt", "sub/e.txt", "appspec.yml"))
        assert plan.mkdirs == ()  # app/ and app/sub/ survive the cleanup

    def test_collisions_and_what_each_behavior_does(self, deployed):
        """Another group: every file of rev1 collides; DISALLOW fails (exit FILE_COLLISION), RETAIN and
        OVERWRITE succeed; the text names each collision and each behaviour's outcome."""
        app = deployed["app"]
        args = [str(deployed["rev2"]), "--deployment-group", "other", "--root-dir", str(deployed["root"])]
        r = cdsim(*args)
        assert r.returncode == ExitStatus.FILE_COLLISION
        assert f"! {app}/a.txt (file)  <- a.txt" in r.stdout
        assert "OVERWRITE replaced" in r.stdout and "RETAIN    kept" in r.stdout
        assert ("would FAIL: The deployment failed because a specified file already exists at this "
                f"location: {app}/") in r.stdout
        for behavior in ("RETAIN", "overwrite"):
            r = cdsim(*args, "--file-exists-behavior", behavior, "--format", "json")
            assert r.returncode == ExitStatus.SUCCESS, r.stdout
            data = json.loads(r.stdout)
            assert sorted(c["destination"] for c in data["collisions"]) == [f"{app}/a.txt",
                                                                            f"{app}/appspec.yml"]
            replaced = [c["destination"] for c in data["copies"] if c["replaces"]]
            assert (replaced == []) if behavior == "RETAIN" else (f"{app}/a.txt" in replaced)

    def test_permissions_changes_and_left_out(self, deployed):
        """Per entry: the paths it changes and the ones its pattern/except leave out, with the reason."""
        app = deployed["app"]
        plan = make_plan(str(deployed["rev2"]), deployment_group=GROUP, root_dir=str(deployed["root"]))
        (entry,) = plan.permissions
        assert [(c.path, c.mode) for c in entry.changes] == [(f"{app}/a.txt", "600")]
        assert sorted((lo.path, lo.reason) for lo in entry.left_out) == [
            (f"{app}/appspec.yml", "pattern"), (f"{app}/d.txt", "except"), (f"{app}/sub/e.txt", "deeper")]
        text = render_text(plan)
        assert f"left out: {app}/d.txt by except" in text

    def test_foreseen_execution_failure(self, tmp_path):
        """A plain file where the revision needs a folder: the plan says the mkdir would fail."""
        app = tmp_path / "app"
        write(app, {"sub": "iamafile"})
        rev = revision(tmp_path / "rev", app, {"sub/s.txt": "s"})
        r = cdsim(str(rev), "--root-dir", str(tmp_path / "root"), "-b", "OVERWRITE")
        assert r.returncode == ExitStatus.DEPLOYMENT_FAILED
        assert f"File exists @ dir_s_mkdir - {app}/sub" in r.stdout

    def test_invalid_appspec_exits_invalid(self, tmp_path):
        """An appspec the agent rejects: exit INVALID with the agent's text."""
        write(tmp_path / "rev", {"appspec.yml": "version: 1.0\nos: linux\n"})
        r = cdsim(str(tmp_path / "rev"), "--root-dir", str(tmp_path / "root"))
        assert r.returncode == ExitStatus.INVALID
        assert "invalid version value (1.0)" in r.stderr
        assert not (tmp_path / "root").exists()
