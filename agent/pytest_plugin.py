"""A pytest plugin for testing CodeDeploy bundles with cdsim (entry point ``pytest11``).

The ``cdsim_deploy`` fixture deploys a bundle into a fresh sandboxed instance (destroyed after the
test) or, when instances are unavailable or ``--cdsim-mode=host`` is given, onto this machine with a
deployment root in the test's tmp_path (files still go to the appspec's destinations); with
``--cdsim-image REF`` each instance is made from that image (agent.instance.image). It returns a
:class:`Deployment`: the outcome, each hook's outcome and output, the files Install put down, and
``exec`` to run commands where the bundle was deployed::

    def test_my_bundle(cdsim_deploy):
        result = cdsim_deploy("bundle/")
        assert result.succeeded, result.error
        assert result.hook("ValidateService").output.startswith("[stdout]")
        assert result.exec("cat", "/etc/myapp.conf").stdout == "port=80\\n"

Each call is `cdsim deploy` in a subprocess, so hooks never run inside pytest; calling it twice in
one test deploys twice into the same place (an upgrade). Imports the engine only to read its files.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from agent.events import Record

__all__ = ["DeployTarget", "Deployment", "HookRun"]

MODES = ("auto", "instance", "host")
_GROUP = "default-local-deployment-group"


@dataclass(frozen=True)
class HookRun:
    """One hook script's run."""

    event: str | None           # None only where the event stream lacks it (as the report's summary)
    location: str | None
    status: str                 # Succeeded | Failed | Unfinished
    exit_status: int | None
    duration: float | None
    message: str                # the agent's error text, '' on success
    output: str                 # "[stdout]...\n[stderr]...\n", as scripts.log without timestamps
    notes: tuple[str, ...] = ()
    ignored: bool = False       # failed, and ignored by ignore_application_stop_failures
    revision_deployment_id: str | None = None   # the previous revision's deployment (ApplicationStop, §4.2)
    revision_archive: str | None = None         # where its script was read from (None: this revision's)

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"


@dataclass(frozen=True)
class Deployment:
    """What one `cdsim deploy` did."""

    deployment_id: str | None
    status: str
    exit_status: int
    error: str | None
    reference: str | None
    failed_event: str | None
    hooks: tuple[HookRun, ...]
    files: tuple[str, ...]      # what Install created (its cleanup list), as paths on the target
    install: dict[str, Any] | None  # the install.done record's fields
    stdout: str
    stderr: str
    records: tuple[Record, ...] = field(repr=False, default=())
    target: DeployTarget | None = field(repr=False, default=None, compare=False)

    @property
    def succeeded(self) -> bool:
        return self.exit_status == 0

    def hook(self, event: str, location: str | None = None) -> HookRun:
        """The (first) run of ``event``'s script (the one at ``location`` if given); KeyError if none."""
        for h in self.hooks:
            if h.event == event and (location is None or h.location == location):
                return h
        raise KeyError(f"no hook run for {event}" + (f" {location}" if location else "")
                       + f"; ran: {[(h.event, h.location) for h in self.hooks]}")

    def exec(self, *argv: str, input: str | None = None, check: bool = False,  # noqa: A002 - subprocess.run's name
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run a command where the bundle was deployed (see :meth:`DeployTarget.exec`)."""
        assert self.target is not None
        return self.target.exec(*argv, input=input, check=check, timeout=timeout)


class DeployTarget:
    """Where a test deploys: one instance (or this machine) and a private state folder."""

    def __init__(self, mode: str, base: Path, image: str | None = None):
        self.mode = mode
        self.base = base
        self.image = image   # the instance's image (instance mode), else an overlay of this machine
        self.state = base / "state"
        self.root = base / "root"
        self.instance_name = f"pytest-{uuid.uuid4().hex[:10]}" if mode == "instance" else None
        self._instance = None

    @property
    def _name(self) -> str:
        """The instance's name (instance mode only)."""
        assert self.instance_name is not None, "host mode has no instance"
        return self.instance_name

    # -- the environment of the cdsim subprocess ---------------------------------------------------
    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        from agent.state import STATE_DIR_VARIABLE
        return {**os.environ, STATE_DIR_VARIABLE: str(self.state), **(extra or {})}

    def _events_dir(self, group: str) -> str:
        from agent.state import AGENT_LOG_DIR, events_dir, host_log_dir, in_upper
        if self.mode == "host":
            return events_dir(host_log_dir(str(self.state)), group)
        return events_dir(in_upper(self.upper(), AGENT_LOG_DIR), group)

    def upper(self) -> str:
        """The instance's upper layer (host path) where its changed files are."""
        from agent import instance as instances
        return instances.get(self._name, state=str(self.state)).upper

    def host_path(self, path: str) -> str:
        """A path of the target as seen from here (for files the deployment wrote)."""
        if self.mode == "host":
            return path
        return self.upper() + path

    # -- deploy ------------------------------------------------------------------------------------
    def __call__(self, bundle: str | os.PathLike[str], *, events: str | None = None, group: str = _GROUP,
                 file_exists_behavior: str = "DISALLOW", appspec_filename: str | None = None,
                 bundle_type: str | None = None, env: dict[str, str] | None = None, timeout: float = 3600,
                 ignore_application_stop_failures: bool = False) -> Deployment:
        """Deploy ``bundle`` (directory or archive) and return what happened; never raises for a
        failed deployment (look at ``.succeeded``). ``ignore_application_stop_failures``: as the
        service's option, a failing ApplicationStop (the last successful revision's script) is ignored."""
        argv = [sys.executable, "-m", "agent", "deploy", os.fspath(os.path.abspath(bundle)), "-g", group,
                "-b", file_exists_behavior]
        if self.mode == "host":
            argv += ["--host", "--root-dir", str(self.root)]
        else:
            argv += ["--instance", self._name, *(["--image", self.image] if self.image else [])]
        for flag, value in (("-e", events), ("-A", appspec_filename), ("--type", bundle_type)):
            if value:
                argv += [flag, value]
        if ignore_application_stop_failures:
            argv.append("--ignore-application-stop-failures")
        events_dir = None
        before: set[str] = set()
        if self.mode == "host" or self._instance_exists():
            events_dir = self._events_dir(group)
            before = set(glob.glob(os.path.join(events_dir, "*.jsonl")))
        proc = subprocess.run(argv, env=self._env(env), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
        events_dir = events_dir or (self._events_dir(group) if self._instance_exists() else None)
        new = sorted(set(glob.glob(os.path.join(events_dir, "*.jsonl"))) - before,
                     key=os.path.getmtime) if events_dir else []
        return self._result(proc, new[-1] if new else None, group)

    def _instance_exists(self) -> bool:
        from agent.state import instance_dir
        return self.mode == "instance" and os.path.isdir(instance_dir(self._name, str(self.state)))

    def _result(self, proc: subprocess.CompletedProcess[str], events_path: str | None, group: str) -> Deployment:
        from agent.events import read_events
        from agent.install import read_cleanup
        from agent.reports.model import summarize
        from agent.reports.scripts_log import fill_missing_output
        from agent.state import AGENT_ROOT_DIR

        records = read_events(events_path) if events_path else []
        dep = summarize(records) if records else None
        if dep is None:
            return Deployment(None, "Failed", proc.returncode, (proc.stderr or proc.stdout).strip() or None,
                              None, None, (), (), None, proc.stdout, proc.stderr, (), self)
        for h in dep["hooks"]:
            scripts_log = h.get("scripts_log")
            if scripts_log:
                h["scripts_log"] = self.host_path(scripts_log)
        deployment_dir = dep.get("deployment_dir")
        if deployment_dir:
            dep["deployment_dir"] = self.host_path(deployment_dir)
        fill_missing_output(dep)
        root = str(self.root) if self.mode == "host" else AGENT_ROOT_DIR
        files = read_cleanup(self.host_path(f"{root}/deployment-instructions/{group}-cleanup"))
        hooks = tuple(HookRun(h["event"], h["location"], h.get("status", "Unfinished"), h.get("exit_status"),
                              h.get("duration"), h.get("message") or "", h.get("output") or "",
                              tuple(h.get("notes") or ()), bool(h.get("ignored")),
                              h.get("revision_deployment_id") if h.get("previous_revision") else None,
                              h.get("revision_archive") if h.get("previous_revision") else None)
                      for h in dep["hooks"])
        return Deployment(dep["deployment_id"], dep["status"], proc.returncode, dep["error"], dep["reference"],
                          dep["failed_event"], hooks, tuple(files), dep["install"], proc.stdout, proc.stderr,
                          tuple(records), self)

    # -- exec --------------------------------------------------------------------------------------
    def exec(self, *argv: str, input: str | None = None,  # noqa: A002 - subprocess.run's input=, as users know it
             check: bool = False,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` where the bundle is deployed (inside the instance as its root, or here) and
        capture its output as text."""
        if self.mode == "host":
            return subprocess.run(list(argv), input=input, capture_output=True, text=True, check=check,
                                  timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        from agent import instance as instances

        inst = instances.get_or_create(self._name, state=str(self.state), image_ref=self.image)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
                tempfile.TemporaryFile("w+") as stdin:
            if input is not None:
                stdin.write(input)
                stdin.seek(0)
            code = instances.exec_in(inst, list(argv), stdin=stdin, stdout=out, stderr=err)
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(list(argv), code, out.read(), err.read())
        if check:
            result.check_returncode()
        return result

    def close(self) -> None:
        if self._instance_exists():
            from agent import instance as instances
            instances.destroy(instances.get(self._name, state=str(self.state)))


def instances_available() -> tuple[bool, str]:
    """Whether sandboxed instances can run here, and why not."""
    from agent.commands.doctor import (
        FAIL,
        check_instance_tools,
        check_namespaces,
        check_overlayfs,
    )

    for check in (check_namespaces(), check_overlayfs(), check_instance_tools()):
        if check.status == FAIL:
            return False, f"{check.name}: {check.detail}"
    return True, ""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cdsim", "cdsim deployments (the cdsim_deploy fixture)")
    group.addoption("--cdsim-mode", choices=MODES, default=None,
                    help="instance: a fresh sandboxed instance per test; host: this machine; "
                         "auto (default): instance when available, else host")
    parser.addini("cdsim_mode", "default for --cdsim-mode", default="auto")
    group.addoption("--cdsim-image", default=None, metavar="REF",
                    help="make each test's instance from this image (docker save or OCI archive, OCI layout or "
                         "root file system folder; see cdsim instance create --image) instead of this machine")
    parser.addini("cdsim_image", "default for --cdsim-image", default="")


@pytest.fixture(scope="session")
def cdsim_mode(request: pytest.FixtureRequest) -> str:
    """The mode cdsim_deploy uses in this session (instance or host)."""
    mode = request.config.getoption("--cdsim-mode") or request.config.getini("cdsim_mode") or "auto"
    if mode not in MODES:
        raise pytest.UsageError(f"cdsim_mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        ok, _why = instances_available()
        return "instance" if ok else "host"
    if mode == "instance":
        ok, why = instances_available()
        if not ok:
            pytest.skip(f"sandboxed instances are unavailable here ({why}); use --cdsim-mode=host")
    return mode


@pytest.fixture
def cdsim_deploy(cdsim_mode: str, tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> Iterator[DeployTarget]:
    """Deploy bundles with cdsim: call it with a bundle path; returns a Deployment. With ``--cdsim-image
    REF`` (or the ``cdsim_image`` ini value) the instance is made from that image."""
    base = Path(tempfile.mkdtemp(prefix="cdsim-", dir=tmp_path_factory.getbasetemp()))
    image = request.config.getoption("--cdsim-image") or request.config.getini("cdsim_image") or None
    if image and cdsim_mode == "host":
        pytest.skip(f"--cdsim-image {image} needs sandboxed instances, and this session deploys onto this machine")
    target = DeployTarget(cdsim_mode, base, os.path.abspath(image) if image else None)
    try:
        yield target
    finally:
        target.close()
