"""Reports rendered from real deployments' event streams: JUnit, JSON, HTML, GitHub annotations.

Each deployment runs through the CLI (`cdsim deploy --host --root-dir`) in a subprocess; the reports
are made from the event file it wrote. The JUnit file is checked by a strict structural validator
of the common JUnit schema (Jenkins' junit-10.xsd: elements, order, required attributes, value
types); the HTML page is loaded in headless Chromium, which lays it out, and the timeline's bars
are checked in pixels (a screenshot is kept beside the report).
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.errors import UsageError
from agent.events import read_events
from agent.reports import parse_report_option, render, render_text, write_reports
from tests.lib import CLI, require_tool


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def make_bundle(folder: Path, hooks: dict[str, tuple[str, str]], files: bool = True,
                extra: str = "") -> Path:
    """A directory bundle: ``hooks`` maps event -> (script name, script body)."""
    lines = ["version: 0.0", "os: linux"]
    if files:
        _write(folder / "app" / "index.txt", "hello\n")
        lines += ["files:", "  - source: app", f"    destination: {folder.parent}/dest-{folder.name}"]
    lines.append("hooks:")
    for event, (name, body) in hooks.items():
        _write(folder / "scripts" / name, "#!/bin/sh\n" + body, 0o755)
        lines += [f"  {event}:", f"    - location: scripts/{name}", "      timeout: 30"]
    _write(folder / "appspec.yml", "\n".join(lines) + "\n" + extra)
    return folder


def deploy_host(bundle: Path, work: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run `cdsim deploy --host` on ``bundle``; the process and the records of the event file it wrote."""
    state = work / "state"
    env = dict(os.environ, CDSIM_STATE_DIR=str(state))
    env.pop("GITHUB_ACTIONS", None)
    before = set(glob.glob(f"{state}/host/log/cdsim-events/*/*.jsonl"))
    proc = subprocess.run([*CLI, "deploy", "--host", "--root-dir", str(work / "root"),
                           str(bundle), *extra], env=env, capture_output=True, text=True, timeout=60,
                          cwd=work, check=False)
    new = set(glob.glob(f"{state}/host/log/cdsim-events/*/*.jsonl")) - before
    assert len(new) == 1, (proc.stdout, proc.stderr)
    return proc, read_events(new.pop())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Three real deployments: one with a slow, a chatty and a failing hook; one that collides with a
    file already present (fails in Install, no hook failing); one whose appspec is invalid."""
    work = tmp_path_factory.mktemp("reports")
    bundle = make_bundle(work / "bundle", {
        "BeforeInstall": ("slow.sh", "sleep 0.4\necho slept\n"),
        "AfterInstall": ("chatty.sh", "echo hello\necho oops >&2\nprintf 'ctl\\001x <&>\\n'\n"),
        "ApplicationStart": ("fail.sh", "echo about to fail\nexit 3\n"),
    })
    failed, failed_records = deploy_host(bundle, work)
    # a second bundle installing onto the same destination: DISALLOW makes Install fail
    other = make_bundle(work / "other", {"AfterInstall": ("ok.sh", "echo fine\n")})
    os.makedirs(work / "dest-other", exist_ok=True)
    _write(work / "dest-other" / "index.txt", "already here\n")
    collided, collided_records = deploy_host(other, work)
    invalid = make_bundle(work / "invalid", {"BeforeInstall": ("x.sh", "true\n")}, files=False)
    (invalid / "appspec.yml").write_text((invalid / "appspec.yml").read_text().replace("timeout: 30", "timeout: abc"))
    bad, bad_records = deploy_host(invalid, work)
    return {"work": work, "bundle": bundle, "failed": (failed, failed_records),
            "collided": (collided, collided_records), "invalid": (bad, bad_records)}


# --------------------------------------------------------------------------------------------- JUnit
# The common JUnit schema (Jenkins junit-10.xsd), as rules: element -> allowed children in order
# (name, min, max), required attributes and attribute types.
_CHILDREN = {
    "testsuites": [("testsuite", 0, None)],
    "testsuite": [("properties", 0, 1), ("testcase", 0, None), ("system-out", 0, 1), ("system-err", 0, 1)],
    "properties": [("property", 0, None)],
    "property": [],
    "testcase": [("skipped", 0, 1), ("error", 0, None), ("failure", 0, None), ("system-out", 0, None),
                 ("system-err", 0, None)],
    "failure": [], "error": [], "skipped": [], "system-out": [], "system-err": [],
}
_ATTRS = {
    "testsuites": ({}, {"name": "str", "time": "dec", "tests": "int", "failures": "int", "errors": "int",
                        "disabled": "int"}),
    "testsuite": ({"name": "str", "tests": "int"},
                  {"failures": "int", "errors": "int", "time": "dec", "disabled": "int", "skipped": "int",
                   "timestamp": "time", "hostname": "str", "id": "str", "package": "str", "file": "str",
                   "log": "str", "url": "str", "version": "str"}),
    "property": ({"name": "str", "value": "str"}, {}),
    "testcase": ({"name": "str"}, {"assertions": "str", "time": "dec", "classname": "str", "status": "str"}),
    "failure": ({}, {"type": "str", "message": "str"}),
    "error": ({}, {"type": "str", "message": "str"}),
    "skipped": ({}, {"message": "str"}),
    "properties": ({}, {}), "system-out": ({}, {}), "system-err": ({}, {}),
}
_TYPES = {"str": r".*", "int": r"\d+", "dec": r"-?\d+(\.\d+)?",
          "time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?"}


def check_junit(elem: ET.Element) -> None:
    """Raise AssertionError where ``elem`` breaks the schema's rules (recursively)."""
    assert elem.tag in _CHILDREN, f"unknown element <{elem.tag}>"
    required, optional = _ATTRS[elem.tag]
    for name in required:
        assert name in elem.attrib, f"<{elem.tag}> lacks required attribute {name}"
    for name, value in elem.attrib.items():
        kind = {**required, **optional}.get(name)
        assert kind, f"<{elem.tag}> has unknown attribute {name}"
        assert re.fullmatch(_TYPES[kind], value, re.DOTALL), f"<{elem.tag} {name}={value!r}> is not {kind}"
    rules, i = _CHILDREN[elem.tag], 0
    children = list(elem)
    for tag, low, high in rules:
        count = 0
        while i < len(children) and children[i].tag == tag:
            check_junit(children[i])
            i, count = i + 1, count + 1
        assert count >= low and (high is None or count <= high), f"<{elem.tag}>: {count} <{tag}>"
    assert i == len(children), f"<{elem.tag}>: unexpected <{children[i].tag}> at position {i}"
    if not rules:
        assert len(children) == 0


class TestJunit:
    def test_failed_deployment_is_a_valid_suite_with_one_case_per_hook(self, runs, tmp_path):
        """Each hook that ran is a test case (event as class name); the failing one carries the
        agent's message; the file obeys the schema even with control characters in the output."""
        _, records = runs["failed"]
        path = tmp_path / "junit.xml"
        render("junit", records, str(path))
        root = ET.parse(path).getroot()
        check_junit(root)
        suites = root.findall("testsuite")
        assert len(suites) == 1
        cases = {(c.get("classname"), c.get("name")): c for c in suites[0].findall("testcase")}
        assert set(cases) == {("BeforeInstall", "scripts/slow.sh"), ("AfterInstall", "scripts/chatty.sh"),
                              ("ApplicationStart", "scripts/fail.sh")}
        assert suites[0].get("tests") == "3" and suites[0].get("failures") == "1"
        failure = cases[("ApplicationStart", "scripts/fail.sh")].find("failure")
        assert failure.get("message") == "Script at specified location: scripts/fail.sh failed with exit code 3"
        assert cases[("BeforeInstall", "scripts/slow.sh")].find("failure") is None
        assert float(cases[("BeforeInstall", "scripts/slow.sh")].get("time")) >= 0.4
        out = cases[("AfterInstall", "scripts/chatty.sh")].find("system-out").text
        assert "[stdout]hello\n" in out and "[stderr]oops\n" in out and "<&>" in out

    def test_failure_outside_hooks_is_a_case_of_its_own(self, runs, tmp_path):
        """A file collision fails Install, where no hook runs: the suite still shows a failing case."""
        proc, records = runs["collided"]
        assert proc.returncode == 5, proc.stdout
        root = ET.fromstring(render_text("junit", records))
        check_junit(root)
        failing = [c for c in root.iter("testcase") if c.find("failure") is not None]
        assert [(c.get("classname"), c.find("failure").get("type")) for c in failing] == \
            [("Install", "file-collision")]

    def test_validator_rejects_what_the_schema_forbids(self):
        """The strict checker itself fails on a misplaced element and a non-numeric time."""
        with pytest.raises(AssertionError):
            check_junit(ET.fromstring('<testsuites><testsuite name="a" tests="1"><system-out/>'
                                      '<testcase name="x"/></testsuite></testsuites>'))
        with pytest.raises(AssertionError):
            check_junit(ET.fromstring('<testsuite name="a" tests="1"><testcase name="x" time="1s"/></testsuite>'))

    def test_several_deployments_give_several_suites(self, runs):
        """Records of two deployments (two event files read together) make two test suites."""
        records = runs["failed"][1] + runs["collided"][1]
        root = ET.fromstring(render_text("junit", records))
        check_junit(root)
        assert len(root.findall("testsuite")) == 2 and root.get("tests") == "4"


class TestJson:
    def test_json_report_holds_events_hooks_install_and_timings(self, runs, tmp_path):
        """The whole deployment: the outcome, every event, every hook with its output, Install's summary."""
        _, records = runs["failed"]
        path = tmp_path / "out" / "report.json"
        write_reports([f"json={path}"], records, env={})
        doc = json.loads(path.read_text())
        assert doc["schema"] == 1 and len(doc["deployments"]) == 1
        dep = doc["deployments"][0]
        assert dep["status"] == "Failed" and dep["failed_event"] == "ApplicationStart"
        assert dep["reference"] == "hook-failed"
        assert [h["location"] for h in dep["hooks"]] == ["scripts/slow.sh", "scripts/chatty.sh", "scripts/fail.sh"]
        assert [h["status"] for h in dep["hooks"]] == ["Succeeded", "Succeeded", "Failed"]
        assert dep["hooks"][2]["exit_status"] == 3 and "[stdout]about to fail\n" in dep["hooks"][2]["output"]
        assert dep["install"]["files_copied"] == 1
        events = [e["event"] for e in dep["events"]]
        assert events.index("BeforeInstall") < events.index("Install") < events.index("ApplicationStart")
        assert dep["duration"] >= dep["hooks"][0]["duration"] >= 0.4
        assert len(dep["records"]) == len(records)


def run_unaccounted(argv: list[str], prefix: Path, timeout: float = 60) -> None:
    """Run ``argv`` to completion (output in ``prefix``.out/.err) without charging its memory to this
    process: a shell starts it in the background and exits, so init reaps it. Chromium peaks above
    200 MB, and tests elsewhere bound their CLI's memory by RUSAGE_CHILDREN, the peak of every child
    this process ever waited for."""
    import psutil

    started = subprocess.run(["sh", "-c", '"$@" >"$0.out" 2>"$0.err" </dev/null & echo $!', str(prefix), *argv],
                             capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
    pid = int(started.stdout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, f"{argv[0]} did not finish in {timeout} s"
        time.sleep(0.05)


class TestHtml:
    def test_timeline_shows_every_hook_to_scale_in_a_browser(self, runs, tmp_path):
        """Chromium lays the page out: each hook has a bar whose pixel box matches its start and duration
        as fractions of the deployment's span; the failed hook's output is on the page."""
        chromium = shutil.which("chromium-browser") or require_tool("chromium", "chromium")
        _, records = runs["failed"]
        page = tmp_path / "report.html"
        render("html", records, str(page))
        assert "http://" not in page.read_text() and "https://" not in page.read_text()  # self-contained
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600",
                "--user-data-dir=" + str(tmp_path / "profile")]
        run_unaccounted([*args, f"--screenshot={tmp_path / 'report.png'}", page.as_uri()], tmp_path / "shot")
        assert (tmp_path / "report.png").stat().st_size > 1000, (tmp_path / "shot.err").read_text()[-2000:]
        run_unaccounted([*args, "--dump-dom", page.as_uri()], tmp_path / "dom")
        dom = (tmp_path / "dom.out").read_text()
        bars = {}   # Chromium's DOM dump is HTML, not XML: the bars are read with a regex
        for m in re.finditer(r'<div class="bar ([^"]*)"([^>]*)>', dom):
            attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(2)))
            bars[attrs["data-name"]] = attrs
        assert 'data-rendered="1"' in dom, "the page's script did not run"
        dep_start = next(r["time"] for r in records if r["type"] == "deployment.start")
        span = next(r["time"] for r in records if r["type"] == "deployment.end") - dep_start
        for r in (r for r in records if r["type"] == "hook.end"):
            bar = bars[f"{r['event']} {r['location']}"]
            track = float(bar["data-px-track"])
            assert track > 300
            assert float(bar["data-px-left"]) == pytest.approx((r["started"] - dep_start) / span * track, abs=2)
            assert float(bar["data-px-width"]) == pytest.approx(max(r["duration"] / span * track, 3), abs=2)
            assert bar["data-status"] == r["status"]
        # every lifecycle event that ran has a bar too
        assert {r["event"] for r in records if r["type"] == "event.start"} <= set(bars)
        assert "[stdout]about to fail" in dom and "Files installed" in dom


class TestGithub:
    def test_failed_hook_is_annotated_at_the_script(self, runs):
        """With GITHUB_ACTIONS=true the failed hook becomes an error annotation on the script file."""
        _, records = runs["failed"]
        out = io.StringIO()
        write_reports([], records, env={"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(runs["work"])},
                      stream=out)
        lines = out.getvalue().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("::error file=bundle/scripts/fail.sh,title=cdsim ")
        assert lines[0].endswith("::Script at specified location: scripts/fail.sh failed with exit code 3")

    def test_invalid_appspec_is_annotated_at_its_line(self, runs):
        """An appspec error points at the appspec file, line and column."""
        proc, records = runs["invalid"]
        assert proc.returncode == 3
        text = render_text("github", records, workspace=str(runs["work"]))
        assert text.startswith("::error file=invalid/appspec.yml,line=6,col=16,title=")
        assert "invalid timeout value" in text

    def test_nothing_printed_outside_github_actions(self, runs):
        """Without GITHUB_ACTIONS=true no annotation is printed."""
        out = io.StringIO()
        assert write_reports([], runs["failed"][1], env={}, stream=out) == []
        assert out.getvalue() == ""


class TestReportOption:
    def test_kind_and_file(self):
        """KIND=FILE splits at the first '=' and the kind is case-insensitive."""
        assert parse_report_option("JUnit=out/a=b.xml") == ("junit", "out/a=b.xml")

    @pytest.mark.parametrize("text", ["junit", "junit=", "pdf=x.pdf", "=x"])
    def test_malformed_options_are_usage_errors(self, text):
        """A missing file or an unknown kind is a usage error."""
        with pytest.raises(UsageError):
            parse_report_option(text)


class TestProgressBar:
    """The Install progress bar, drawn on a real pseudo-terminal."""

    def _draw(self, env: dict) -> str:
        import pty
        import time as _time

        from agent.reports.progress import ProgressBar

        master, slave = pty.openpty()
        try:
            with os.fdopen(slave, "w", closefd=True) as stream:
                bar = ProgressBar("Install", stream=stream, delay=0.0, env=env)
                bar(5, 10)
                _time.sleep(0.11)
                bar(7, 10)
                bar(10, 10)
            chunks = []
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:   # the terminal's other end is closed: all read
                    break
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode()
        finally:
            os.close(master)

    def test_bar_on_a_terminal_in_colour(self):
        """On a terminal the bar shows the share done, in colour, and is cleared at the end."""
        out = self._draw({"TERM": "xterm"})
        assert " 50% (5/10)" in out and " 70% (7/10)" in out
        assert "\x1b[32m" in out and out.endswith("\r\x1b[K")

    def test_no_color_means_no_escape_sequences(self):
        """NO_COLOR keeps the bar but drops every escape sequence."""
        out = self._draw({"TERM": "xterm", "NO_COLOR": "1"})
        assert " 50% (5/10)" in out and "\x1b" not in out

    def test_nothing_on_a_non_terminal(self):
        """Output to a file or pipe gets no bar at all."""
        from agent.reports.progress import ProgressBar

        out = io.StringIO()
        bar = ProgressBar(stream=out, delay=0.0, env={"TERM": "xterm"})
        bar(1, 2)
        bar(2, 2)
        assert out.getvalue() == ""


class TestReportArgument:
    def test_argparse_option_collects_reports_and_rejects_bad_kinds(self, capsys):
        """--report is repeatable and parsed to (kind, path); an unknown kind exits as a usage error."""
        import argparse

        from agent.reports import add_report_option

        parser = argparse.ArgumentParser()
        add_report_option(parser)
        args = parser.parse_args(["--report", "junit=a.xml", "--report", "html=b.html"])
        assert args.report == [("junit", "a.xml"), ("html", "b.html")]
        assert parser.parse_args([]).report == []
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--report", "pdf=x"])
        assert exc.value.code == 2 and "unknown report kind" in capsys.readouterr().err


class TestCutStream:
    def test_stream_cut_during_a_hook_still_renders(self, runs):
        """Records ending inside a hook (the engine was killed) give an 'Unfinished' failing case and
        a page, rather than an error."""
        _, records = runs["failed"]
        cut = records[:next(i for i, r in enumerate(records) if r["type"] == "hook.start") + 1]
        root = ET.fromstring(render_text("junit", cut))
        check_junit(root)
        (case,) = root.iter("testcase")
        assert case.find("failure").get("message") == "hook unfinished"
        assert "Unfinished" in render_text("html", cut)
        doc = json.loads(render_text("json", cut))
        assert doc["deployments"][0]["status"] == "Unfinished"


def test_public_names_of_the_reports_package_are_locked():
    """agent.reports exposes exactly these names (sorted): what the CLI wires."""
    import agent.reports

    assert agent.reports.__all__ == ["KINDS", "add_report_option", "load_records", "parse_report_option",
                                     "render", "render_text", "write_reports"]
    assert agent.reports.KINDS == ("github", "html", "json", "junit", "markdown")
