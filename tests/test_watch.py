"""`cdsim watch`: the watcher runs as a subprocess (deploying with --host into a tmp root) and its
output is read line by line while the test edits the bundle."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.lib import CLI, needs_root


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def bundle(tmp_path) -> Path:
    b = tmp_path / "bundle"
    (b / "scripts").mkdir(parents=True)
    (b / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n"
                                   "    - location: scripts/first.sh\n  AfterInstall:\n"
                                   "    - location: scripts/second.sh\n")
    _script(b / "scripts" / "first.sh", "echo first\n")
    _script(b / "scripts" / "second.sh", "echo second\n")
    return b


class Watcher:
    """`cdsim watch` in a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, tmp_path: Path, bundle: Path, where: list[str] | None = None):
        env = dict(os.environ, CDSIM_STATE_DIR=str(tmp_path / "state"))
        where = where or ["--host", "--root-dir", str(tmp_path / "root")]
        self.proc = subprocess.Popen(
            [*CLI, "watch", *where, "-q", str(bundle)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate, timeout: float) -> list[str]:
        """Lines up to the first one matching ``predicate``; fails after ``timeout`` seconds."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; output so far: {self.seen}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            got.append(line)
            if predicate(line):
                return got

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=5)
            self.proc.stdout.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code


class TestWatch:
    def test_edit_shows_the_new_outcome_within_three_seconds(self, tmp_path, bundle):
        """Breaking a hook script makes a re-run whose summary shows the hook going from Succeeded to
        Failed, less than 3 s after the edit; fixing it in a burst of saves makes exactly one more run;
        Ctrl-C exits 0 and leaves the deployed revision in place."""
        w = Watcher(tmp_path, bundle)
        try:
            first = w.until(lambda line: line.startswith("cdsim watch: run 1:"), timeout=30)
            w.until(lambda line: line == "cdsim watch: waiting for changes", timeout=10)
            assert first[-1].startswith("cdsim watch: run 1: Succeeded")

            edited = time.monotonic()
            _script(bundle / "scripts" / "second.sh", "echo broken\nexit 3\n")
            run2 = w.until(lambda line: line.startswith("cdsim watch: run 2"), timeout=3)
            assert time.monotonic() - edited < 3
            assert "(changed: scripts/second.sh)" in run2[-1]
            assert "Failed at AfterInstall" in run2[-1] and "(was Succeeded)" in run2[-1]
            rest = w.until(lambda line: line == "cdsim watch: waiting for changes", timeout=10)
            assert any(line.startswith("  AfterInstall scripts/second.sh: Succeeded -> Failed") for line in rest)
            assert any(line.startswith("  BeforeInstall scripts/first.sh: Succeeded") for line in rest)

            for i in range(5):   # an editor saving several times in quick succession
                _script(bundle / "scripts" / "second.sh", f"echo fixed {i}\n")
                time.sleep(0.02)
            run3 = w.until(lambda line: line.startswith("cdsim watch: run 3"), timeout=3)
            assert "Succeeded" in run3[-1] and "(was Failed)" in run3[-1]
            w.until(lambda line: line == "cdsim watch: waiting for changes", timeout=10)
            time.sleep(1.0)   # the deployment reading the bundle must not count as a change
            assert w.lines.empty(), f"unexpected output: {w.lines.get()}"
        finally:
            code = w.stop()
        assert code == 0
        assert any("stopped" in line for line in w.seen)
        group = tmp_path / "root" / "default-local-deployment-group"
        assert len([p for p in group.iterdir() if p.name.startswith("d-")]) == 3

    def test_appspec_edited_with_sed_reruns_and_names_only_the_appspec(self, tmp_path, bundle):
        """`sed -i` on appspec.yml (a temporary file renamed over it) re-runs with the new hooks; the
        summary names appspec.yml, not sed's temporary file."""
        w = Watcher(tmp_path, bundle)
        try:
            w.until(lambda line: line.startswith("cdsim watch: run 1:"), timeout=30)
            w.until(lambda line: line == "cdsim watch: waiting for changes", timeout=10)
            subprocess.run(["sed", "-i", "s/AfterInstall/ApplicationStart/", str(bundle / "appspec.yml")], check=True)
            run2 = w.until(lambda line: line.startswith("cdsim watch: run 2"), timeout=10)
            assert "(changed: appspec.yml)" in run2[-1], run2[-1]
            rest = w.until(lambda line: line == "cdsim watch: waiting for changes", timeout=10)
            assert any(line.startswith("  ApplicationStart scripts/second.sh: Succeeded") for line in rest), rest
            assert any("AfterInstall scripts/second.sh: did not run this time" in line for line in rest), rest
        finally:
            w.stop()

    @needs_root("deploys into an instance as root (CI runs as root)")
    def test_into_an_instance_each_run_reads_the_bundle_as_it_is_now(self, tmp_path, bundle):
        """Watching into an instance: a hook script replaced as an editor saves it (a new file renamed
        over the old one) is the one the next run executes, though the instance keeps running (its /
        is an overlay that does not follow the host's changes; the bundle is bound in afresh)."""
        import agent.instance as inst

        w = Watcher(tmp_path, bundle, where=["--instance", "watched"])
        try:
            first = w.until(lambda line: line.startswith("cdsim watch: run 1:"), timeout=60)
            assert first[-1].startswith("cdsim watch: run 1: Succeeded"), w.seen
            w.until(lambda line: line == "cdsim watch: waiting for changes", timeout=10)
            replacement = bundle / "scripts" / "second.new"
            _script(replacement, "echo broken\nexit 3\n")
            os.rename(replacement, bundle / "scripts" / "second.sh")
            run2 = w.until(lambda line: line.startswith("cdsim watch: run 2"), timeout=30)
            assert "Failed at AfterInstall" in run2[-1], w.seen
        finally:
            w.stop()
            state = str(tmp_path / "state")
            for status in inst.list_instances(state=state):
                inst.destroy(inst.get(status.name, state=state))

    def test_missing_bundle_is_a_usage_error(self, tmp_path):
        """Watching a path that does not exist exits USAGE at once."""
        proc = subprocess.run([*CLI, "watch", "--host", str(tmp_path / "nope")],
                              capture_output=True, text=True, timeout=30, check=False)
        assert proc.returncode == 2 and "does not exist" in proc.stderr
