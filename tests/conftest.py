"""Fixtures shared by all tests: no test may leave a process behind; a real user for runas tests. And the
marks: which tests need root, make instances, run as an ordinary user, start the service or are slow (set
here by file and by fixture), and the skip (by hand) or failure (under CI) of a test whose root or tool mark
this machine does not meet. The toolkit itself (runner, paths, require_tool, marks) is tests/lib."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.lib import (
    IN_CI,
    IS_ROOT,
    missing_tool,
    require_tool,  # noqa: F401 -- still importable from conftest, as before tests/lib
    skip_or_fail,
)

_MARK = "CDSIM_TEST_PROCESS_MARK"


def _marked(value: str) -> list[psutil.Process]:
    """Live processes started with our mark in their environment (re-parented ones included)."""
    wanted = f"{_MARK}={value}".encode()
    found = []
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if wanted not in f.read().split(b"\0"):
                    continue
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _leftovers(value: str) -> list[psutil.Process]:
    procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
    procs.update((p.pid, p) for p in _marked(value))
    return list(procs.values())


@pytest.fixture(autouse=True)
def no_leftover_processes(monkeypatch: pytest.MonkeyPatch):
    """Fail a test that leaves a child, a descendant, or any process started with its environment
    (which also catches daemons re-parented to init). Leftovers are killed so the next test starts
    clean."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(_MARK, value)
    yield
    deadline = time.monotonic() + 3.0
    left = _leftovers(value)
    while left and time.monotonic() < deadline:   # processes on their way out get a moment
        time.sleep(0.05)
        left = _leftovers(value)
    if left:
        names = []
        for proc in left:
            try:
                names.append(f"pid {proc.pid} ({' '.join(proc.cmdline()) or proc.name()})")
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                continue
        if names:
            pytest.fail("test left processes behind: " + ", ".join(names), pytrace=False)


# -- marks ---------------------------------------------------------------------------------------------
# what using a fixture (directly or through another) says about a test
FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "runas_user": ("root", "unprivileged"),
    "user_without_subids": ("root", "unprivileged"),
    "nologin_user": ("root",),
    "state": ("instance",),            # a state folder whose instances are destroyed afterwards
    "instances_here": ("instance",),
    "sysd": ("root", "instance"),   # test_systemctl.py's one instance
    "cdsim_deploy": ("instance",),     # the plugin deploys into an instance where instances work
    "fleet": ("service", "instance"),
    "service": ("service",),
    "bare_service": ("service",),
}
# what every test of a file (path under tests/) is
FILE_MARKS: dict[str, tuple[str, ...]] = {
    "test_aws_cli.py": ("service", "instance"),
    "test_api_model.py": ("service",),
    "test_elb_samples.py": ("service", "instance"),
    "test_loadbalancer.py": ("instance",),
    "test_traffic_control.py": ("service", "instance"),
    "test_rehearsal.py": ("service", "instance"),
    "test_autoscaling.py": ("service", "instance"),
    "test_blue_green.py": ("service", "instance"),
    "test_deploy_instance.py": ("instance",),
    "test_readme_server.py": ("service", "instance"),
    "test_quick_start_newcomer.py": ("unprivileged", "instance"),
    "test_unprivileged_sample.py": ("unprivileged", "instance"),
    "test_privilege.py": ("unprivileged",),
}
# and single tests or classes (node id, relative to tests/, up to a "::" or a "[")
NODE_MARKS: dict[str, tuple[str, ...]] = {
    "test_instance.py::TestUnprivilegedUser": ("instance",),
    "test_image.py::TestDeployIntoAnImage": ("instance",),
    "test_image.py::TestUnprivileged": ("instance",),
    "test_systemctl.py::test_an_unprivileged_instance_has_the_stand_in_too": ("instance",),
    "test_systemctl.py::test_an_image_instance_without_python_has_the_stand_in_too": ("instance",),
    "test_sample_app.py::TestDeployments": ("instance",),   # namespaces of its own (unshare)
    "test_toolkit.py::test_the_runner_sets_the_state_folder_and_env_wins_over_it": ("instance",),
    "test_pytest_plugin.py::test_fixture_deploys_and_reports_hooks_files_and_exec[instance]": ("instance",),
    "test_concurrency.py::test_two_cdsim_processes_on_one_instance_never_interleave": ("instance",),
    "test_logs.py::test_logs_and_history_read_inside_an_instance": ("instance",),
    "test_watch.py::TestWatch::test_into_an_instance_each_run_reads_the_bundle_as_it_is_now": ("instance",),
    "test_umask.py::test_the_instance_store_stays_private_under_a_loose_umask": ("instance",),
    "hostile/test_corpus.py::test_destination_root_only_in_a_sandbox": ("instance",),
    "test_service.py::test_a_server_killed_mid_deployment_fails_the_running_instance_on_restart": ("service",),
    "test_service.py::test_an_instance_without_an_agent_fails_after_the_timeout": ("service",),
    "test_service_security.py::test_kill_9_of_the_server_leaves_no_s3_process": ("service",),
}
# slow: every test that makes instances, starts the service or runs as an ordinary user, and these, the
# slowest of the rest (pytest --durations=0 under load), so that -m "not slow" runs in well under a minute
SLOW_WITH = ("instance", "service", "unprivileged")
SLOW: tuple[str, ...] = (
    # whole files: real deployments through the CLI, killed processes, fuzzing, nested pytest runs
    "hostile/test_corpus.py", "test_crash_safety.py", "test_concurrency.py", "test_pytest_plugin.py",
    "test_process_leaks.py", "test_fuzz.py", "test_application_stop.py", "test_local_cli.py",
    "test_hook_environment.py", "test_logs.py", "test_umask.py", "test_bench_e2e.py",
    # pre-commit builds its hook virtualenv (pip install of cdsim), the action installs cdsim as GitHub would
    "test_precommit.py", "test_action.py",
    # hooks that time out, fork or hold their output
    "test_hooks_runtime.py::TestTimeout", "test_hooks_runtime.py::TestSupervisor",
    "test_hooks_runtime.py::TestEscapesWithoutAMarker", "test_hooks_runtime.py::TestOutputHolders",
    "test_image.py::TestBadImages",   # a cdsim process per bad image
    "test_hooks_runtime.py::TestHookCgroup", "test_hooks_runtime.py::TestOutput", "test_hooks_runtime.py::TestFigures",
    # single classes and tests
    "test_sample_app.py::TestDeployments", "test_watch.py::TestWatch", "test_reports.py::TestHtml",
    "test_reports.py::TestJunit", "test_follow_instance.py::TestBundleLocation", "test_plan.py::TestPlanChangesNothing",
    "test_plan.py::TestPlanContents::test_collisions_and_what_each_behavior_does",
    "test_exit_codes.py::TestDeployExitStatus::test_hook_timed_out",
    "hostile/test_archives.py::TestBombs::test_zip_bomb_is_refused_with_default_limits",
    "test_validate.py::TestBase60AndRunas::test_runas_that_is_not_a_user_name_is_an_error",
    "test_validate.py::TestBadInput::test_50_mb_appspec",
    "test_layering.py::test_no_command_parser_loads_anything_heavy",
)


def _marks_of(rel: str, fixtures: list[str]) -> set[str]:
    found = set(FILE_MARKS.get(rel.split("::", 1)[0], ()))
    for name in fixtures:
        found.update(FIXTURE_MARKS.get(name, ()))
    for table in (NODE_MARKS, dict.fromkeys(SLOW, ("slow",))):
        for prefix, marks in table.items():
            if rel == prefix or rel.startswith((prefix + "::", prefix + "[")):
                found.update(marks)
    return found


def _unmet(item: pytest.Item) -> str | None:
    """Why this machine cannot run ``item`` (its root and tool marks), or None."""
    for mark in item.iter_markers("tool"):
        why = missing_tool(mark.kwargs["tool"], mark.kwargs["package"], mark.kwargs.get("install"))
        if why:
            return why
    if not IS_ROOT:
        reasons = [mark.kwargs["reason"] for mark in item.iter_markers("root") if mark.kwargs.get("reason")]
        if reasons or item.get_closest_marker("root"):
            return reasons[0] if reasons else "needs root (CI runs as root)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The marks of the tables above; and, run by hand, a skip (with the reason) for a test whose root or
    tool mark this machine does not meet (under CI such a test fails instead: pytest_runtest_setup)."""
    tests = Path(__file__).resolve().parent
    for item in items:
        rel = Path(item.path).relative_to(tests).as_posix() + item.nodeid[len(item.nodeid.split("::", 1)[0]):]
        have = {mark.name for mark in item.iter_markers()}
        marks = _marks_of(rel, getattr(item, "fixturenames", []))
        if (have | marks).intersection(SLOW_WITH):
            marks.add("slow")
        for name in sorted(marks - have):
            item.add_marker(name)
        why = _unmet(item)
        if why and not IN_CI:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under CI, a test whose root or tool mark this machine does not meet fails (CI must never go green
    by skipping); by hand it was marked skip when collected."""
    why = _unmet(item) if IN_CI else None
    if why:
        skip_or_fail(why)


@pytest.fixture(scope="session")
def runas_user():
    """A real user created with useradd (login shell /bin/sh, a home directory), removed afterwards."""
    if not IS_ROOT:   # also marked root (FIXTURE_MARKS), which skips first
        pytest.skip("creating a user with useradd and su to it needs root (CI runs as root)")
    name = f"cdsimhk{os.getpid() % 100000}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@pytest.fixture
def user_without_subids():
    """A real user whom useradd gives no subordinate ids (no /etc/subuid, /etc/subgid range), removed
    afterwards."""
    if not IS_ROOT:   # also marked root (FIXTURE_MARKS), which skips first
        pytest.skip("creating a user with useradd needs root (CI runs as root)")
    name = f"cdsimns{os.getpid() % 100000}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


@pytest.fixture
def shared_dir():
    """A folder every user can read and enter (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="cdsim-test-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state(tmp_path, monkeypatch):
    """A private cdsim state folder; every instance in it is stopped and destroyed afterwards, pass or fail."""
    import agent.instance as inst

    folder = tmp_path / "state"
    monkeypatch.setenv("CDSIM_STATE_DIR", str(folder))
    yield str(folder)
    for status in inst.list_instances(state=str(folder)):
        inst.destroy(inst.get(status.name, state=str(folder)))
