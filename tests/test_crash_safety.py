"""kill -9 of a deployment (issue 10): at 37 points of a deployment (during unpack, mid-copy, between
events, during hooks, after fixed delays) a ``cdsim deploy --host`` process is killed; after every kill
each state file is whole, and the next deployment of the same group succeeds and leaves the target
exactly as a clean deployment of the same revision does.

The points run in sequence on one deployment root, alternating two revisions A and B whose folders
differ, so kills also land in the cleanup of the other revision. The exact moment of a kill varies
from run to run; the outcome asserted does not depend on it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from hostile.harness import DIR, GROUP, REG, Site, appspec, tar_with, tree

from agent.install import read_cleanup
from tests.lib import CLI

HOOKED = ("ApplicationStop", "BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
BIG = 24 << 20
FILES = 60   # per folder


def build_revision(site: Site, name: str) -> str:
    """A plain tar: 3 folders of FILES small files, one big file, hooks that say when they run."""
    ready = site.base / "ready"
    hooks = "".join(f"  {e}:\n    - location: hook.sh\n      timeout: 30\n" for e in HOOKED)
    script = f'#!/bin/sh\ntouch "{ready}/$LIFECYCLE_EVENT"\nsleep 0.05\n'.encode()
    members = [("appspec.yml", REG, {"data": appspec(str(site.target), hooks).encode()}),
               ("hook.sh", REG, {"data": script, "mode": 0o755}), ("app", DIR, {})]
    for d in range(3):
        members.append((f"app/{name}{d}", DIR, {}))
        members += [(f"app/{name}{d}/f{i}.txt", REG, {"data": f"{name} {d} {i}\n".encode() * 50})
                    for i in range(FILES)]
    members.append((f"app/{name}-big.bin", REG, {"data": bytes(BIG)}))
    return tar_with(site.bundles / f"{name}.tar", *members)


def cli(site: Site, bundle: str) -> list:
    return [*CLI, "deploy", "--host", "-q", "-c", str(site.cfg), "-g", GROUP,
            "--type", "tar", bundle]


def events_file_has(site: Site, kind: str, event: str):
    def cond() -> bool:
        for path in (site.logs / "cdsim-events" / GROUP).glob("*.jsonl"):
            if path.stat().st_mtime < site.started:
                continue
            for line in path.read_text().splitlines():
                if f'"type": "{kind}"' in line and f'"event": "{event}"' in line:
                    return True
        return False
    return cond


def after(fraction: float):
    """A fixed share of the time a clean deployment takes on this machine."""
    return lambda site: (lambda: time.monotonic() - site.t0 >= fraction * site.clean_seconds)


def hook_running(event: str):
    return lambda site: (lambda: (site.base / "ready" / event).exists())


def event_record(kind: str, event: str):
    return lambda site: events_file_has(site, kind, event)


def journal_lines(at_least: int):
    def make(site):
        path = site.instructions / f"{GROUP}-cleanup"

        def cond() -> bool:
            try:
                return path.stat().st_mtime >= site.started and path.read_bytes().count(b"\n") >= at_least
            except FileNotFoundError:
                return False
        return cond
    return make


def unpacking(site):
    def cond() -> bool:
        for folder in site.root.glob(f"{GROUP}/*/deployment-archive/app/*0"):
            if folder.stat().st_mtime >= site.started and len(os.listdir(folder)) >= 20:
                return True
        return False
    return cond


def big_file_copying(site):
    def cond() -> bool:
        for path in site.target.glob("*-big.bin"):
            if 0 < path.stat().st_size < BIG and path.stat().st_mtime >= site.started:
                return True
        return False
    return cond


def cleanup_running(site):
    """The previous revision's files are partly gone (cleanup runs in reverse journal order)."""
    def cond() -> bool:
        return site.prev_name is not None and not (site.target / f"{site.prev_name}-big.bin").exists() \
            and (site.target / f"{site.prev_name}0").exists()
    return cond


POINTS = ([(f"after-{k}/20-of-a-deployment", after(k / 20)) for k in range(1, 20)]
          + [(f"during-hook-{e}", hook_running(e)) for e in HOOKED]
          + [(f"after-event-{e}", event_record("event.end", e)) for e in
             ("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall",
              "ApplicationStart")]
          + [("before-event-Install", event_record("event.start", "Install")),
             ("mid-unpack", unpacking), ("mid-copy-first-batch", journal_lines(1)),
             ("mid-copy-later-batch", journal_lines(130)), ("mid-copy-big-file", big_file_copying),
             ("mid-cleanup", cleanup_running), ("before-event-DownloadBundle",
                                                event_record("event.start", "DownloadBundle"))])


def _holds(cond) -> bool:
    try:
        return cond()
    except FileNotFoundError:  # the deployment removed what the condition was looking at
        return False


def assert_state_whole(site: Site) -> None:
    """Every state file of the group parses: markers are one absolute path, install.json is JSON,
    the journal's complete lines are absolute paths in the target; event streams are JSON lines (a
    torn last line aside)."""
    for name in (f"{GROUP}_last_successful_install", f"{GROUP}_most_recent_install"):
        path = site.instructions / name
        if path.exists():
            text = path.read_text()
            assert text.startswith(str(site.root / GROUP) + "/d-") and "\n" not in text, (name, text)
    path = site.instructions / f"{GROUP}-install.json"
    if path.exists():
        assert isinstance(json.loads(path.read_text())["instructions"], list)
    for entry in read_cleanup(str(site.instructions / f"{GROUP}-cleanup")):
        assert entry.startswith(str(site.target) + "/"), entry
    # the root keeps the agent's layout (a killed atomic write may leave its hidden temporary file)
    assert sorted(os.listdir(site.root) if site.root.exists() else []) in (
        ["deployment-instructions", "deployment-logs", GROUP], ["deployment-instructions", GROUP], [GROUP], [])
    for name in os.listdir(site.instructions) if site.instructions.exists() else ():
        assert name.startswith(GROUP) or re.fullmatch(rf"\.{GROUP}.*\.tmp", name), name
    for events in (site.logs / "cdsim-events" / GROUP).glob("*.jsonl"):
        lines = events.read_text().splitlines()
        for line in lines[:-1]:
            json.loads(line)


def reference_trees(tmp_path: Path) -> tuple[dict[str, dict], float]:
    """The target tree a clean deployment of each revision leaves (its own site), and how long the
    second one took."""
    out = {}
    for name in ("A", "B"):
        site = Site(tmp_path / f"clean-{name}")
        bundle = build_revision(site, name)
        start = time.monotonic()
        with subprocess.Popen(cli(site, bundle), cwd=site.cwd, env=site.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
            out_text = p.communicate(timeout=60)[0]
        seconds = time.monotonic() - start
        assert p.returncode == 0, out_text
        out[name] = tree(site.target)
    return out, seconds


def test_kill_minus_nine_at_37_points(tmp_path):
    """See the module docstring; at most 4 points may miss (the deployment ended before the moment
    came), so at least 33 real kills are checked on every run."""
    assert len(POINTS) >= 30
    clean, seconds = reference_trees(tmp_path)
    site = Site(tmp_path / "site")
    site.clean_seconds = seconds
    bundles = {name: build_revision(site, name) for name in ("A", "B")}
    (site.base / "ready").mkdir()
    site.prev_name = None
    killed_at = []
    for i, (label, make_condition) in enumerate(POINTS):
        name = "AB"[i % 2]
        for f in (site.base / "ready").iterdir():
            f.unlink()
        site.started = time.time() - 0.001
        site.t0 = time.monotonic()
        cond = make_condition(site)
        with subprocess.Popen(cli(site, bundles[name]), cwd=site.cwd, env=site.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as p:
            while p.poll() is None:
                if _holds(cond):
                    p.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.001)
            p.wait(timeout=60)
        killed_at.append((label, p.returncode == -signal.SIGKILL))
        assert_state_whole(site)
        # the next deployment of the same revision succeeds and leaves a clean target
        with subprocess.Popen(cli(site, bundles[name]), cwd=site.cwd, env=site.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
            out = p.communicate(timeout=120)[0].decode()
        assert p.returncode == 0, f"after a kill at {label}: {out}"
        assert tree(site.target) == clean[name], f"after a kill at {label} the target differs"
        assert_state_whole(site)
        site.prev_name = name
    # the points must really be kills of a running deployment, not runs that finished first
    finished = [label for label, killed in killed_at if not killed]
    assert len(finished) <= 4, f"deployments that finished before their kill point: {finished}"
