"""Copies shared with forked workers (agent.workers), and the two places that use them: an Install's runs
of new files (agent.install) and a directory bundle's files (agent.bundle). The promise: any number of
processes leaves what one process going in order leaves, after a failure too (files, modes, links, the
cleanup journal, the error). Real files, real forks, real failures (a FIFO where a file was listed, a
file-size limit, a folder path taken by a file).
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent import workers
from agent.appspec import parse_appspec
from agent.bundle import fetch_and_unpack
from agent.errors import DeploymentError
from agent.install import Copy, Mkdir, execute_instructions, generate_instructions
from agent.revision import LocalRevision

PARENT = os.getpid()


# ------------------------------------------------------------------------------------------ agent.workers

def test_split_covers_every_item_once_in_at_most_the_asked_parts() -> None:
    for n in (0, 1, 255, 256, 511, 512, 1000, 20_001):
        for asked in (1, 2, 3, 4):
            ranges = workers.split(n, asked)
            assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
            assert 1 <= len(ranges) <= asked
            assert len(ranges) == 1 or all(b - a >= workers.MIN_PER_PART for a, b in ranges)
    assert len(workers.split(2000, 2)) == 2
    assert len(workers.split(300, 2)) == 1  # not worth a fork


def test_available_follows_the_cpus_we_may_run_on() -> None:
    """``taskset -c 0 cdsim ...`` keeps the copies in one process."""
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(old)})
        assert workers.available() == 1
    finally:
        os.sched_setaffinity(0, old)
    assert workers.available() == min(workers.MAX_WORKERS, len(old))
    assert workers.available(limit=1) == 1


def _mark(out: Path):
    def work(i: int) -> None:
        (out / str(i)).write_text(str(os.getpid()))
    return work


def test_every_item_runs_once_and_the_later_parts_in_other_processes(tmp_path: Path) -> None:
    n = 1200
    parts = workers.run_parts(n, _mark(tmp_path), 3, collect=lambda: os.getpid())
    assert [(p.start, p.stop, p.done, p.error) for p in parts] == [(0, 400, 400, None), (400, 800, 800, None),
                                                                   (800, 1200, 1200, None)]
    writers = [int((tmp_path / str(i)).read_text()) for i in range(n)]
    assert set(writers[:400]) == {PARENT}
    assert parts[1].tally == writers[400] != PARENT and set(writers[400:800]) == {parts[1].tally}
    assert parts[2].tally == writers[800] not in (PARENT, parts[1].tally)
    assert parts[0].tally is None


def test_a_failure_ends_its_part_only_and_arrives_with_its_type_and_text(tmp_path: Path) -> None:
    mark = _mark(tmp_path)

    def work(i: int) -> None:
        if i in (100, 700):
            raise DeploymentError(f"No space left on device @ copy - /x/{i}", hint="free some space")
        mark(i)

    parts = workers.run_parts(1000, work, 2)
    assert (parts[0].done, parts[1].done) == (100, 700)
    assert str(parts[0].error) == "No space left on device @ copy - /x/100"
    assert type(parts[1].error) is DeploymentError and str(parts[1].error) == "No space left on device @ copy - /x/700"
    assert parts[1].error.hint == "free some space"
    done = sorted(int(p.name) for p in tmp_path.iterdir())
    assert done == [*range(100), *range(500, 700)]


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no")


def test_an_error_that_cannot_be_pickled_arrives_by_name() -> None:
    def work(i: int) -> None:
        if i == 600:
            raise _Unpicklable("a socket in it")

    parts = workers.run_parts(1000, work, 2)
    assert isinstance(parts[1].error, workers.WorkerLost) and parts[1].done == 600
    assert str(parts[1].error) == "_Unpicklable: a socket in it"


def test_a_worker_that_dies_is_a_lost_part_from_its_start() -> None:
    def work(i: int) -> None:
        if i == 900 and os.getpid() != PARENT:
            os._exit(3)

    parts = workers.run_parts(1000, work, 2)
    assert parts[0].error is None and parts[0].done == 500
    assert (parts[1].done, str(parts[1].error)) == (500, "a worker process ended without its report (exit status 3)")


def test_when_no_process_can_be_forked_every_part_runs_here() -> None:
    """RLIMIT_NPROC 0 makes fork fail with EAGAIN (root is exempt, so as root the script first becomes
    nobody, having imported what it needs: nobody cannot read a Python under /root)."""
    script = textwrap.dedent("""
        import os, resource
        from agent import workers
        workers.run_parts(1000, lambda i: None, 2)  # once with forks: what it imports is then imported
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        pids = set()
        parts = workers.run_parts(1000, lambda i: pids.add(os.getpid()), 3)
        print([(p.start, p.stop, p.done, p.error) for p in parts], pids == {os.getpid()})
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "[(0, 333, 333, None), (333, 666, 666, None), (666, 1000, 1000, None)] True", \
        done.stderr


def _worker_pid(pidfile: Path) -> int:
    """The pid a worker wrote into ``pidfile`` (waited for, 20 s at most)."""
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(pidfile.read_text())


def test_an_interrupt_here_kills_and_reaps_the_workers(tmp_path: Path) -> None:
    pidfile = tmp_path / "worker"

    def work(i: int) -> None:
        if os.getpid() != PARENT:
            pidfile.write_text(str(os.getpid()))
            time.sleep(60)
        elif i == 0:
            _worker_pid(pidfile)
            raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        workers.run_parts(1000, work, 2)
    assert time.monotonic() - start < 15
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped: not even a zombie is left
        os.kill(pid, 0)


def test_a_worker_stopped_dies_instead_of_running_the_caller_s_handler(tmp_path: Path) -> None:
    pidfile = tmp_path / "worker"
    called = tmp_path / "handler-ran"
    old = signal.signal(signal.SIGTERM, lambda *_: called.write_text(str(os.getpid())))
    try:
        def work(i: int) -> None:
            if os.getpid() != PARENT and i == 500:
                pidfile.write_text(str(os.getpid()))
                time.sleep(60)
            elif i == 0:
                os.kill(_worker_pid(pidfile), signal.SIGTERM)

        parts = workers.run_parts(1000, work, 2)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert str(parts[1].error) == "a worker process ended without its report (killed by signal 15)"
    assert not called.exists()


# ------------------------------------------------------------------------------------------ agent.install

def _tree(root: Path, files: int) -> None:
    """``files`` small files in nested folders, some executable, some links, one empty folder."""
    for i in range(files):
        d = root / f"d{i % 7}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"f{i}.txt"
        f.write_bytes(hashlib.sha256(str(i).encode()).digest() * (1 + i % 40))
        if i % 11 == 0:
            f.chmod(0o750)
        if i % 97 == 0:
            os.symlink(f"f{i}.txt", d / f"l{i}")
    (root / "empty").mkdir()


def _snapshot(top: Path, mtimes: bool = True) -> dict[str, tuple]:
    """Every entry below ``top``: kind, mode, owner, content, and mtime (DownloadBundle's copy sets none)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(st.st_mode))
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", oct(st.st_mode), st.st_uid, mtimes and st.st_mtime_ns, digest)
    return out


def _generate(tmp_path: Path, archive: Path, name: str, behavior: str = "DISALLOW") -> tuple[Path, list]:
    dest = tmp_path / name
    dest.mkdir(exist_ok=True)
    spec = parse_appspec(f"version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: {dest}\n".encode())
    return dest, generate_instructions(spec, str(archive), behavior, str(tmp_path))


def _execute(tmp_path: Path, dest: Path, instructions: list, processes: int):
    """Returns (error text or None, snapshot of dest, journal lines, summary), dest's path written DEST."""
    journal = tmp_path / f"{dest.name}-cleanup"
    try:
        summary = execute_instructions(instructions, str(journal), processes=processes)
        error = None
    except DeploymentError as e:
        summary, error = None, str(e).replace(str(dest), "DEST")
    lines = [line.replace(str(dest), "DEST") for line in journal.read_text().splitlines()]
    return error, _snapshot(dest), lines, summary


def test_an_install_shared_between_processes_ends_as_one_going_in_order(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _tree(archive, 3000)
    one, two, four = (_execute(tmp_path, *_generate(tmp_path, archive, name), processes)
                      for name, processes in (("one", 1), ("two", 2), ("four", 4)))
    assert one[0] is None and len(one[2]) == 3000 + 3000 // 97 + 1 + 7 + 21 + 1
    assert one[1] == two[1] == four[1]
    assert one[2] == two[2] == four[2]  # the journal: the same lines in the agent's order
    s1, s2 = one[3], two[3]
    assert (s1.files_copied, s1.symlinks_created, s1.dirs_created, s1.bytes_copied) == \
           (s2.files_copied, s2.symlinks_created, s2.dirs_created, s2.bytes_copied) == \
           (3000, 3000 // 97 + 1, 7 + 21 + 1, s1.bytes_copied)
    assert s1.bytes_copied > 3000 * 32


def test_a_shared_install_reports_progress_from_this_process_only_and_in_order(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _tree(archive, 3000)
    _, instructions = _generate(tmp_path, archive, "dest")
    seen = tmp_path / "progress"

    def progress(done: int, total: int) -> None:
        with open(seen, "a") as f:
            f.write(f"{os.getpid()} {done} {total}\n")

    execute_instructions(instructions, str(tmp_path / "journal"), progress=progress, processes=2)
    calls = [tuple(map(int, line.split())) for line in seen.read_text().splitlines()]
    assert {pid for pid, _, _ in calls} == {PARENT}
    done = [d for _, d, _ in calls]
    assert done == sorted(done) and done[-1] == len(instructions) and {t for _, _, t in calls} == {len(instructions)}
    assert len([d for d in done if 0 < d < len(instructions)]) >= 5  # it moves while the copies run


@pytest.mark.parametrize("where", [0.2, 0.8], ids=["in-this-process's-part", "in-a-worker's-part"])
def test_a_copy_failing_in_a_shared_run_leaves_what_the_agent_leaves(tmp_path: Path, where: float) -> None:
    archive = tmp_path / "archive"
    _tree(archive, 2000)
    (d1, one), (d2, two) = _generate(tmp_path, archive, "one"), _generate(tmp_path, archive, "two")
    copies = [i for i in one if type(i) is Copy]
    failing = copies[int(len(copies) * where)]
    os.unlink(failing.source)
    os.mkfifo(failing.source)  # listed as a file, a FIFO when copied: "not a regular file"
    got_one, got_two = _execute(tmp_path, d1, one, 1), _execute(tmp_path, d2, two, 2)
    assert got_one[0] == f"cannot install {failing.source}: not a regular file or a symbolic link"
    assert got_one[0] == got_two[0]
    assert got_one[1] == got_two[1]  # nothing after the failing copy is left, no folder made after it either
    assert got_one[2] == got_two[2]  # the journal ends with the failing copy's line
    assert got_one[2][-1] == failing.destination.replace(str(d1), "DEST")
    assert len(got_one[1]) < len(copies) * where + 40


def test_a_folder_that_cannot_be_made_fails_where_the_agent_meets_it(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    _tree(archive, 2000)
    results = []
    for name, processes in (("one", 1), ("two", 2)):
        (tmp_path / name / "d3").mkdir(parents=True)
        (tmp_path / name / "d3" / "e1").write_text("a file where the revision has a folder")
        os.utime(tmp_path / name / "d3" / "e1", ns=(10**18, 10**18))
        dest, instructions = _generate(tmp_path, archive, name, "OVERWRITE")
        assert Mkdir(f"{dest}/d3/e1") in instructions
        journal = tmp_path / f"{name}-cleanup"
        with pytest.raises(DeploymentError) as failed:
            execute_instructions(instructions, str(journal), processes=processes)
        results.append((str(failed.value).replace(str(dest), "DEST"), _snapshot(dest),
                        journal.read_text().replace(str(dest), "DEST")))
    assert results[0][0] == "File exists @ dir_s_mkdir - DEST/d3/e1"
    assert results[0] == results[1]


# ------------------------------------------------------------------------------------------- agent.bundle

def test_a_directory_bundle_copied_by_several_processes_is_the_same_archive(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    _tree(bundle, 3000)
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    got = []
    for processes in (1, 2, 3):
        deployment = tmp_path / f"d-{processes}"
        deployment.mkdir()
        archive = fetch_and_unpack(LocalRevision(str(bundle), "directory"), str(deployment), processes=processes)
        got.append(_snapshot(Path(archive), mtimes=False))
    assert len(got[0]) == 3000 + 3000 // 97 + 1 + 1 + 7 + 21 + 1
    assert got[0] == got[1] == got[2]


def test_a_bundle_copy_failing_in_a_worker_leaves_the_archive_empty(tmp_path: Path) -> None:
    """A file-size limit makes the copy of the one large file fail with EFBIG (Python ignores SIGXFSZ)."""
    bundle = tmp_path / "bundle"
    _tree(bundle, 2000)
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    script = textwrap.dedent(f"""
        import os, resource, sys
        from agent.bundle import fetch_and_unpack
        from agent.revision import LocalRevision
        from agent import workers
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        processes = int(sys.argv[1])
        deployment = sys.argv[2]
        os.mkdir(deployment)
        try:
            fetch_and_unpack(LocalRevision({str(bundle)!r}, "directory"), deployment, processes=processes)
        except OSError as e:
            print("failed:", e.strerror, sorted(os.listdir(os.path.join(deployment, "deployment-archive"))))
    """)
    outs = []
    for where in ("d0/e0", "d6/e2"):
        (bundle / where / "big").write_bytes(b"x" * (2 << 20))
        for processes in (1, 2):
            deployment = str(tmp_path / f"{where[:2]}-{processes}")
            done = subprocess.run([sys.executable, "-c", script, str(processes), deployment], capture_output=True,
                                  text=True, timeout=120, check=False)
            outs.append(done.stdout.strip() + done.stderr)
        (bundle / where / "big").unlink()
    assert outs == ["failed: File too large []"] * 4
