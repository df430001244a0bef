"""Instances from images: a real OCI image built here from a static busybox (as an OCI layout, an OCI
archive and a `docker save` archive), an instance made from it, a deployment whose hooks see the image's
userland; the layer cache; hostile and broken images refused with a clear error.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

import agent.instance as inst
from agent.errors import ExitStatus
from agent.instance.image import host_architecture
from tests import lib
from tests.lib import require_tool

OS_RELEASE = 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nVERSION_ID="2023"\nPRETTY_NAME="Amazon Linux 2023"\n'
APPLETS = ("sh", "cat", "echo", "ls", "env", "id", "mkdir", "rm", "cp", "chmod", "chown", "ln", "mv", "test",
           "true", "false", "sleep", "grep", "sed", "head", "touch", "which", "find", "stat", "uname", "tr")


# ---- building images (tar, JSON and digests written here) -----------------------------------------

def _add(tf: tarfile.TarFile, name: str, *, data: bytes | None = None, kind: bytes = tarfile.REGTYPE,
         mode: int = 0o644, uid: int = 0, gid: int = 0, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname, info.mtime = kind, mode, uid, gid, link, 1700000000
    if data is not None:
        info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def layer_tar(build) -> bytes:
    """An uncompressed layer tar made by ``build(tarfile)``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    return buf.getvalue()


def busybox_layers(busybox: str) -> list[bytes]:
    """A base layer (busybox, its applets, /etc with os-release, accounts, a file of uid 1000) and a
    second layer that whites one file out and adds another: as `docker build` would leave them."""
    with open(busybox, "rb") as f:
        binary = f.read()

    def base(tf: tarfile.TarFile) -> None:
        for folder in ("bin", "etc", "tmp", "root", "usr", "usr/bin", "var", "home", "home/ec2-user"):
            _add(tf, folder + "/", kind=tarfile.DIRTYPE, mode=0o1777 if folder == "tmp" else 0o755,
                 uid=1000 if folder == "home/ec2-user" else 0, gid=1000 if folder == "home/ec2-user" else 0)
        _add(tf, "bin/busybox", data=binary, mode=0o755)
        for applet in APPLETS:
            _add(tf, f"bin/{applet}", kind=tarfile.LNKTYPE, link="bin/busybox", mode=0o755)   # as tar writes them
        _add(tf, "usr/bin/env", kind=tarfile.SYMTYPE, link="/bin/busybox")
        _add(tf, "etc/os-release", data=OS_RELEASE.encode())
        _add(tf, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nec2-user:x:1000:1000::/home/ec2-user:/bin/sh\n")
        _add(tf, "etc/group", data=b"root:x:0:\nec2-user:x:1000:\n")
        _add(tf, "etc/gone-in-layer-2", data=b"lower\n")
        _add(tf, "home/ec2-user/owned", data=b"mine\n", uid=1000, gid=1000)
        _add(tf, "usr/bin/setuid-tool", data=b"#!/bin/sh\n", mode=0o4755)
        _add(tf, "var/cache/", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "var/cache/old-1", data=b"1\n")
        _add(tf, "var/cache/old-2", data=b"2\n")

    def top(tf: tarfile.TarFile) -> None:
        _add(tf, "etc/", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "etc/.wh.gone-in-layer-2")
        _add(tf, "etc/motd", data=b"layer 2\n")
        _add(tf, "var/cache/new", data=b"3\n")   # before the opaque marker: stays (it is this layer's)
        _add(tf, "var/cache/.wh..wh..opq")

    return [layer_tar(base), layer_tar(top)]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_json(layers: list[bytes], architecture: str | None = None) -> bytes:
    return json.dumps({"architecture": architecture or host_architecture(), "os": "linux",
                       "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
                       "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}}).encode()


def oci_blobs(layers: list[bytes], *, architecture: str | None = None, gzip_layers: bool = True,
              ) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(files of an OCI layout: oci-layout, index.json, blobs/sha256/..., and the blobs by digest)."""
    import gzip
    blobs: dict[str, bytes] = {}
    entries = []
    for tar in layers:
        blob = gzip.compress(tar, mtime=0) if gzip_layers else tar
        blobs[sha(blob)] = blob
        entries.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gzip_layers else ""),
                        "digest": sha(blob), "size": len(blob)})
    config = config_json(layers, architecture)
    blobs[sha(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha(config), "size": len(config)},
                           "layers": entries}).encode()
    blobs[sha(manifest)] = manifest
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "2023"}}]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    files.update({f"blobs/sha256/{d.split(':')[1]}": b for d, b in blobs.items()})
    return files, blobs


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            _add(tf, name, data=data)
    return path


def write_docker_tar_with_a_linked_layer(path: Path, layers: list[bytes]) -> Path:
    """A docker save archive whose second layer.tar is a symlink to the first (older docker writes
    identical layers that way)."""
    config = config_json([layers[0], layers[0]])
    names = [f"{sha(layers[0])[7:]}/layer.tar", "second/layer.tar"]
    with tarfile.open(path, "w") as tf:
        _add(tf, f"{sha(config)[7:]}.json", data=config)
        _add(tf, names[0], data=layers[0])
        _add(tf, names[1], kind=tarfile.SYMTYPE, link=f"../{names[0]}")
        _add(tf, "manifest.json", data=json.dumps([{"Config": f"{sha(config)[7:]}.json", "Layers": names}]).encode())
    return path


def docker_files(layers: list[bytes], architecture: str | None = None) -> dict[str, bytes]:
    """A classic `docker save` archive's files: <id>/layer.tar, <config>.json, manifest.json."""
    config = config_json(layers, architecture)
    files = {f"{sha(config)[7:]}.json": config}
    names = []
    for tar in layers:
        name = f"{sha(tar)[7:]}/layer.tar"
        files[name] = tar
        names.append(name)
    files["manifest.json"] = json.dumps([{"Config": f"{sha(config)[7:]}.json",
                                          "RepoTags": ["amazonlinux:2023"], "Layers": names}]).encode()
    return files


@pytest.fixture(scope="module")
def images():
    """The busybox image as an OCI layout folder, an OCI archive and a docker save archive (in a folder
    every user may read: the unprivileged test reads them too)."""
    busybox = require_tool("busybox", "busybox-static")
    top = Path(tempfile.mkdtemp(prefix="cdsim-images-", dir="/tmp"))
    os.chmod(top, 0o755)
    layers = busybox_layers(busybox)
    files, _ = oci_blobs(layers)
    out = {"oci-layout": write_folder(top / "al2023-oci", files),
           "oci-archive": write_tar(top / "al2023-oci.tar", files),
           "docker-archive": write_tar(top / "al2023-docker.tar", docker_files(layers))}
    for dirpath, dirs, names in os.walk(top):
        for n in dirs + names:
            os.chmod(os.path.join(dirpath, n), 0o755 if n in dirs else 0o644)
    yield out
    shutil.rmtree(top, ignore_errors=True)


def bundle_dir(folder: Path) -> Path:
    """A bundle whose hooks print the os-release and the interpreter they find."""
    (folder / "scripts").mkdir(parents=True)
    (folder / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: site\n    destination: /srv/site\n"
        "hooks:\n  AfterInstall:\n    - location: scripts/look.sh\n")
    (folder / "site").mkdir()
    (folder / "site" / "index.html").write_text("hello\n")
    (folder / "scripts" / "look.sh").write_text(
        "#!/bin/sh\ncat /etc/os-release\n"
        "if command -v python3 >/dev/null; then echo \"python3: $(command -v python3)\"; "
        "else echo 'python3: none'; fi\n"
        "ls /etc/gone-in-layer-2 2>/dev/null || echo 'whiteout: gone'\ncat /etc/motd\n"
        "stat -c 'owned: %u' /home/ec2-user/owned\nstat -c 'setuid: %a' /usr/bin/setuid-tool\n"
        "echo opaque: $(ls /var/cache)\n")
    os.chmod(folder / "scripts" / "look.sh", 0o755)
    for dirpath, dirs, names in os.walk(folder):
        for n in dirs + names:
            os.chmod(os.path.join(dirpath, n), 0o755)
    os.chmod(folder, 0o755)
    return folder


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    folder = tmp_path_factory.mktemp("image-state")
    yield folder
    for name in os.listdir(folder / "instances") if (folder / "instances").is_dir() else []:
        lib.cdsim("instance", "destroy", name, state=folder)


def cdsim(state, *args, **kw):
    return lib.cdsim(*args, state=state, timeout=180, **kw)


def deploy(state, bundle: Path, instance: str, image: Path, **kw):
    return cdsim(state, "deploy", bundle, "--instance", instance, "--image", image, **kw)


def hook_lines(out: str) -> list[str]:
    return [line.strip()[2:] for line in out.splitlines() if line.strip().startswith("| ")]


EXPECTED = ['NAME="Amazon Linux"', 'VERSION="2023"', 'ID="amzn"', 'VERSION_ID="2023"',
            'PRETTY_NAME="Amazon Linux 2023"', "python3: none", "whiteout: gone", "layer 2", "owned: 1000",
            "setuid: 4755", "opaque: new"]


@lib.needs_root("instances of this test run as root here; the unprivileged case is TestUnprivileged")
class TestDeployIntoAnImage:
    def test_hooks_see_the_images_userland_not_the_hosts(self, state, images, tmp_path):
        """A deployment into an instance made from the OCI layout: the hook reads the image's
        os-release, finds no python3 (busybox has none; the host has one), the second layer's whiteout
        and file applied, the image's owner kept; cdsim itself ran inside from /opt/cdsim."""
        try:
            done = deploy(state, bundle_dir(tmp_path / "b"), "al", images["oci-layout"])
            assert done.returncode == 0, done.stdout + done.stderr
            assert hook_lines(done.stdout) == EXPECTED
            assert shutil.which("python3")   # ... while the host has one
            site = cdsim(state, "instance", "exec", "al", "--", "/bin/cat", "/srv/site/index.html")
            assert site.stdout == "hello\n"
            changed = cdsim(state, "instance", "diff", "al").stdout.splitlines()   # against the image
            assert "A /srv/site/index.html" in changed and not [c for c in changed if c.startswith("M /etc")]
        finally:
            cdsim(state, "instance", "stop", "al")

    def test_a_second_instance_reuses_the_cached_layers(self, state, images, tmp_path):
        """The OCI layout, the docker save archive and the OCI archive of the same image are one cache
        entry (same chain id); making instances from them unpacks nothing again. Prints creation +
        first-command times of an instance of the host and one of the cached image (measured, not
        asserted: the machine's load decides them)."""
        first = cdsim(state, "instance", "create", "al", "--image", images["oci-layout"])   # cached by now
        assert first.returncode in (0, ExitStatus.USAGE)   # USAGE: made by the test before
        cache = state / "images"
        before = {n: (cache / n / "image.json").stat().st_mtime_ns for n in os.listdir(cache)}
        assert len(before) == 1
        times = {}
        for name, ref in (("host", None), ("docker", images["docker-archive"])):
            started = time.monotonic()
            made = cdsim(state, "instance", "create", name, *(["--image", ref] if ref else []))
            ran = cdsim(state, "instance", "exec", name, "--", "/bin/sh", "-c", ". /etc/os-release; echo $ID")
            times[name] = time.monotonic() - started
            cdsim(state, "instance", "stop", name)
            assert made.returncode == 0 and ran.returncode == 0, made.stderr + ran.stderr
            assert ran.stdout.strip() == ("amzn" if ref else platform.freedesktop_os_release()["ID"])
        assert cdsim(state, "instance", "create", "ociarch", "--image", images["oci-archive"]).returncode == 0
        mismatch = cdsim(state, "deploy", bundle_dir(tmp_path / "b"), "--instance", "host",
                         "--image", images["oci-archive"])
        assert mismatch.returncode == ExitStatus.USAGE and "exists already with the host" in mismatch.stderr
        after = {n: (cache / n / "image.json").stat().st_mtime_ns for n in os.listdir(cache)}
        assert after == before
        listing = cdsim(state, "instance", "list").stdout
        assert any(line.split()[0] == "docker" and line.endswith(str(images["docker-archive"]))
                   for line in listing.splitlines()), listing
        listed = cdsim(state, "image", "list", "--format", "json")
        assert [sorted(m["instances"]) for m in json.loads(listed.stdout)] == [["al", "docker", "ociarch"]]
        print(f"\ncreate + first exec: host {times['host']:.2f}s, image (cached, docker archive) "
              f"{times['docker']:.2f}s")
        assert cdsim(state, "image", "rm", next(iter(before))[:12]).returncode == ExitStatus.ENVIRONMENT
        for name in ("host", "docker", "ociarch"):
            assert cdsim(state, "instance", "destroy", name).returncode == 0


    def test_a_root_file_system_folder_is_used_in_place(self, state, images, tmp_path):
        """--image FOLDER (a root file system, not an OCI layout): the instance's lower layer is that
        folder itself, nothing is copied into the cache, and writes inside leave it untouched."""
        rootfs = tmp_path / "rootfs"
        for layer in busybox_layers(require_tool("busybox", "busybox-static")):
            with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
                tf.extractall(rootfs, filter="fully_trusted")   # our own layer, built above
        cached = set(os.listdir(state / "images")) if (state / "images").is_dir() else set()
        try:
            assert cdsim(state, "instance", "create", "dir", "--image", rootfs).returncode == 0
            ran = cdsim(state, "instance", "exec", "dir", "--", "/bin/sh", "-c",
                        ". /etc/os-release; echo $ID; echo x > /etc/new-file")
            assert ran.returncode == 0 and ran.stdout.strip() == "amzn", ran.stderr
            assert not (rootfs / "etc" / "new-file").exists()
            assert (set(os.listdir(state / "images")) if (state / "images").is_dir() else set()) == cached
        finally:
            cdsim(state, "instance", "destroy", "dir")

    def test_the_pytest_fixture_deploys_into_an_instance_of_the_image(self, images, tmp_path):
        """`pytest --cdsim-image REF`: the cdsim_deploy fixture's instance is made from the image; its
        hook output and exec see the image's userland."""
        bundle = bundle_dir(tmp_path / "b")
        (tmp_path / "inner").mkdir()
        (tmp_path / "inner" / "test_in_image.py").write_text(
            "import os\n\ndef test_image(cdsim_deploy):\n"
            "    result = cdsim_deploy(os.environ['BUNDLE'])\n"
            "    assert result.succeeded, result.error\n"
            "    assert 'python3: none' in result.hook('AfterInstall').output\n"
            "    assert 'ID=\"amzn\"' in result.exec('cat', '/etc/os-release').stdout\n")
        from tests.test_pytest_plugin import _plugin_installed
        plugin = [] if _plugin_installed() else ["-p", "agent.pytest_plugin"]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin,
                               "--cdsim-mode=instance", f"--cdsim-image={images['oci-layout']}",
                               "--basetemp", str(tmp_path / "basetemp"), "test_in_image.py"],
                              cwd=tmp_path / "inner", env=dict(os.environ, BUNDLE=str(bundle)), capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


    def test_a_fleet_from_the_image_deploys_through_the_local_service(self, images, tmp_path):
        """`fleet up --image`: the service's agent runs cdsim's runner inside the image instance (its
        interpreter from /opt/cdsim, the fetched revision bound in); the hook sees the image."""
        from agent.commands.fleet import fleet_up
        from agent.service.client import call
        from agent.service.server import Service
        from tests.test_service import Fleet, Repo

        folder = str(tmp_path / "svc")
        with Service(folder, s3=False, github_root=[str(tmp_path)]) as service:
            fleet = Fleet(service, folder, Repo(tmp_path / "repo"))
            try:
                fleet_up(fleet.ep, count=1, tag="Name=AL", application="A", state=folder,
                         image=str(images["oci-archive"]))
                call(fleet.ep, "CreateDeploymentGroup", {
                    "applicationName": "A", "deploymentGroupName": "G", "serviceRoleArn": "arn:aws:iam::1:role/r",
                    "onPremisesInstanceTagFilters": [{"Key": "Name", "Value": "AL", "Type": "KEY_AND_VALUE"}]})
                sha = fleet.repo.commit("v1", {"AfterInstall": ". /etc/os-release; (echo \"id=$ID\"; "
                                                               "command -v python3 || echo no-python3) > /srv/seen"})
                did = fleet.deploy(sha)
                info = fleet.wait(did, timeout=120)
                assert info["status"] == "Succeeded", json.dumps(fleet.targets(did))
                assert fleet.read("al-1", "/srv/seen") == "id=amzn\nno-python3\n"
                assert fleet.read("al-1", "/srv/app/app.txt") == "v1\n"
            finally:
                for status in inst.list_instances(state=folder):
                    inst.destroy(inst.get(status.name, state=folder))


@lib.needs_root("creating a user with useradd and su to it needs root (CI runs as root)")
class TestUnprivileged:
    def test_an_ordinary_user_deploys_into_an_image_with_owners_mapped(self, runas_user, images, shared_dir):
        """As a non-root user with subordinate ids: the layers are unpacked in a user namespace with the
        user's instance maps, so the image's uid 1000 is uid 1000 inside; the hooks see the image."""
        from tests.test_instance import subordinate_ids
        subordinate_ids(runas_user.pw_name)
        user_state = Path(shared_dir) / "state"
        user_state.mkdir()
        os.chown(user_state, runas_user.pw_uid, runas_user.pw_gid)
        bundle = bundle_dir(Path(shared_dir) / "b")
        run = dict(user=runas_user.pw_name, state=user_state, timeout=180)
        try:
            done = lib.cdsim("deploy", bundle, "--instance", "mine", "--image", images["docker-archive"], **run)
            assert done.returncode == 0, done.stdout + done.stderr
            assert hook_lines(done.stdout) == EXPECTED
            (image_id,) = os.listdir(user_state / "images")
            owned = user_state / "images" / image_id / "rootfs" / "home" / "ec2-user" / "owned"
            assert owned.stat().st_uid not in (0, 1000, runas_user.pw_uid)   # a subordinate id of the user's
        finally:
            lib.cdsim("instance", "destroy", "mine", **run)
            lib.cdsim("image", "rm", images["docker-archive"], **run)
        assert os.listdir(user_state / "images") == []


    def test_an_ordinary_users_unpacking_refuses_a_hostile_layer_too(self, runas_user, shared_dir):
        """As a non-root user (unpacking in a user namespace): a layer writing through a symlink out of
        the root is refused with exit 3, naming the member; nothing written outside, no cache entry."""
        from tests.test_instance import subordinate_ids
        subordinate_ids(runas_user.pw_name)
        build, words = HOSTILE["symlink-out"]
        files, _ = oci_blobs([layer_tar(build)])
        ref = write_folder(Path(shared_dir) / "a" / "b" / "img", files)
        for dirpath, dirs, _names in os.walk(shared_dir):
            for n in dirs:
                os.chmod(os.path.join(dirpath, n), 0o755)
        for dirpath, _dirs, names in os.walk(ref):
            for n in names:
                os.chmod(os.path.join(dirpath, n), 0o644)
        user_state = Path(shared_dir) / "a" / "b" / "c" / "state"
        user_state.mkdir(parents=True)
        os.chown(user_state, runas_user.pw_uid, runas_user.pw_gid)
        done = lib.cdsim("instance", "create", "bad", "--image", ref, user=runas_user.pw_name, state=user_state)
        assert done.returncode == ExitStatus.INVALID, done.stderr
        assert words in done.stderr and "up/escaped" in done.stderr and "Traceback" not in done.stderr
        assert not any(p.name == "escaped" for p in Path(shared_dir).rglob("escaped"))
        assert os.listdir(user_state / "images") == []


# ---- bad images -----------------------------------------------------------------------------------

def _hostile(build) -> list[bytes]:
    return [layer_tar(build)]


HOSTILE = {
    "dotdot": (lambda tf: _add(tf, "../escaped", data=b"x"), "a '..' component"),
    "absolute": (lambda tf: _add(tf, "/tmp/escaped-abs", data=b"x"), "an absolute name"),
    "symlink-out": (lambda tf: (_add(tf, "up", kind=tarfile.SYMTYPE, link="../../../.."),
                                _add(tf, "up/escaped", data=b"x")), "leads out of the image's root"),
    "hardlink-out": (lambda tf: _add(tf, "passwd", kind=tarfile.LNKTYPE, link="../../../etc/passwd"),
                     "a '..' component"),
    "hardlink-via-symlink": (lambda tf: (_add(tf, "up", kind=tarfile.SYMTYPE, link="../../../.."),
                                         _add(tf, "passwd", kind=tarfile.LNKTYPE, link="up/etc/passwd")),
                             "leads out of the image's root"),
    "hardlink-missing": (lambda tf: _add(tf, "passwd", kind=tarfile.LNKTYPE, link="etc/nothing/passwd"),
                         "which no layer has made"),
    "whiteout-out": (lambda tf: (_add(tf, "up", kind=tarfile.SYMTYPE, link="../.."),
                                 _add(tf, "up/.wh.victim")), "leads out of the image's root"),
    "whiteout-dotdot": (lambda tf: _add(tf, "etc/.wh..."), "a whiteout for a path outside"),
    "device": (lambda tf: _add(tf, "etc/disk", kind=tarfile.BLKTYPE), "a device node"),
}


class TestBadImages:
    @pytest.mark.parametrize("case", sorted(HOSTILE))
    def test_hostile_layers_are_refused_and_nothing_leaves_the_cache(self, case, tmp_path):
        """A layer that tries to write, link or white out outside the image's root, or holds a device
        node: exit 3, the archive and member named, no traceback, nothing written outside the cache and
        no cache entry left."""
        build, words = HOSTILE[case]
        victim = tmp_path / "victim"
        victim.write_text("keep\n")
        files, _ = oci_blobs(_hostile(build))
        ref = write_folder(tmp_path / "img", files)
        st = tmp_path / "deep" / "er" / "state"
        done = lib.cdsim("instance", "create", "bad", "--image", ref, state=st)
        assert done.returncode == ExitStatus.INVALID, done.stderr
        assert str(ref) in done.stderr and words in done.stderr and "Traceback" not in done.stderr
        assert victim.read_text() == "keep\n"
        for escaped in (tmp_path / "escaped", tmp_path / "deep" / "escaped", Path("/tmp/escaped-abs")):
            assert not escaped.exists()
        assert os.listdir(st / "images") == [] and not (st / "instances" / "bad").exists()

    def test_truncated_and_corrupt_archives_are_refused(self, tmp_path):
        """A docker archive cut in half, an OCI layer with one byte changed (digest mismatch) and a file
        that is no archive at all: each a clear image error (exit 3) naming the file."""
        layers = [layer_tar(lambda tf: _add(tf, "etc/os-release", data=OS_RELEASE.encode() * 200))]
        whole = write_tar(tmp_path / "whole.tar", docker_files(layers))
        cut = tmp_path / "cut.tar"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        files, _ = oci_blobs(layers)
        blob = next(n for n in files if n.startswith("blobs/") and files[n][:2] == b"\x1f\x8b")
        files[blob] = files[blob][:20] + bytes([files[blob][20] ^ 0xFF]) + files[blob][21:]
        flipped = write_folder(tmp_path / "flipped", files)
        junk = tmp_path / "junk.tar"
        junk.write_bytes(b"not an archive" * 100)
        for ref, words in ((cut, "truncated"), (flipped, ""), (junk, "not a readable image archive")):
            done = lib.cdsim("instance", "create", "bad", "--image", ref, state=tmp_path / "state")
            assert done.returncode == ExitStatus.INVALID, (ref, done.stderr)
            assert str(ref) in done.stderr and words in done.stderr and "Traceback" not in done.stderr, done.stderr

    def test_a_layer_linked_to_another_in_a_docker_archive_is_read(self, tmp_path):
        """Older `docker save` archives make an identical layer a symlink to the first: both apply."""
        layers = [layer_tar(lambda tf: _add(tf, "etc/os-release", data=OS_RELEASE.encode()))]
        ref = write_docker_tar_with_a_linked_layer(tmp_path / "linked.tar", layers)
        done = lib.cdsim("instance", "create", "linked", "--image", ref, state=tmp_path / "state")
        assert done.returncode == 0, done.stderr
        (image_id,) = os.listdir(tmp_path / "state" / "images")
        rootfs = tmp_path / "state" / "images" / image_id / "rootfs"
        assert (rootfs / "etc" / "os-release").read_text() == OS_RELEASE

    def test_an_image_for_another_architecture_is_refused(self, tmp_path):
        """An image whose config says another architecture: refused before unpacking, naming both."""
        other = "s390x" if host_architecture() != "s390x" else "amd64"
        layers = [layer_tar(lambda tf: _add(tf, "etc/os-release", data=OS_RELEASE.encode()))]
        files, _ = oci_blobs(layers, architecture=other)
        done = lib.cdsim("instance", "create", "bad", "--image", write_folder(tmp_path / "img", files),
                         state=tmp_path / "state")
        assert done.returncode == ExitStatus.INVALID
        assert f"architecture {other}" in done.stderr and host_architecture() in done.stderr
        assert not (tmp_path / "state" / "images").exists() or os.listdir(tmp_path / "state" / "images") == []
