"""The composite GitHub Action (action.yml), run as the runner runs it: each step's `run:` script, its
`${{ }}` expressions substituted (inputs with their defaults, earlier steps' outputs), run with
`bash --noprofile --norc -eo pipefail`, with GITHUB_ACTIONS, GITHUB_STEP_SUMMARY, GITHUB_OUTPUT (one file
per step, read back into that step's outputs), GITHUB_PATH (prepended to PATH for the next steps),
GITHUB_WORKSPACE, GITHUB_ACTION_PATH and RUNNER_TEMP set, stopping at the first failing step.

GITHUB_ACTION_PATH is a copy of this checkout's files (as GitHub downloads the action's repository), so
the install step really pip-installs cdsim into a virtualenv (about 30 s, once: the three runs share
RUNNER_TEMP as the uses of the action in one job would). Deployments go onto this machine
(`host: 'true'` with a `root-dir` under tmp): the instance path is tested elsewhere.
"""
from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.lib import REPO, cdsim, snapshot_checkout

ACTION = yaml.safe_load((REPO / "action.yml").read_text())
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class Run:
    """One use of the action: each step's exit status and output, the action's outputs, the summary."""

    statuses: dict[str, int] = field(default_factory=dict)
    stdout: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    summary: str = ""


def _read_outputs(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT's two forms: ``name=value`` and ``name<<DELIMITER`` ... ``DELIMITER``."""
    found: dict[str, str] = {}
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            found[name] = "\n".join(lines[i + 1:end])
            i = end + 1
            continue
        name, _eq, value = line.partition("=")
        found[name] = value
        i += 1
    return found


def run_action(inputs: dict[str, str], workspace: Path, runner_temp: Path, action_path: Path) -> Run:
    declared = ACTION["inputs"]
    assert set(inputs) <= set(declared), set(inputs) - set(declared)
    values = {name: inputs.get(name, spec.get("default", "")) for name, spec in declared.items()}
    missing = [name for name, spec in declared.items() if spec.get("required") and not values[name]]
    assert not missing, missing
    steps: dict[str, dict[str, str]] = {}

    def evaluate(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            scope, _dot, rest = m.group(1).partition(".")
            if scope == "inputs":
                return values[rest]
            if scope == "steps":
                step, _outputs, name = rest.split(".", 2)
                return steps.get(step, {}).get(name, "")
            raise AssertionError(f"expression the test runner does not know: {m.group(0)}")
        return EXPRESSION.sub(one, text)

    summary = runner_temp / f"summary-{len(list(runner_temp.glob('summary-*')))}.md"
    summary.touch()
    path_file = runner_temp / "github-path"
    path_file.touch()
    env = dict(os.environ, GITHUB_ACTIONS="true", CI="true", GITHUB_WORKSPACE=str(workspace),
               RUNNER_TEMP=str(runner_temp), GITHUB_ACTION_PATH=str(action_path), GITHUB_STEP_SUMMARY=str(summary),
               GITHUB_PATH=str(path_file), CDSIM_STATE_DIR=str(runner_temp / "state"))
    run = Run()
    assert ACTION["runs"]["using"] == "composite"
    for step in ACTION["runs"]["steps"]:
        assert step["shell"] == "bash" and "if" not in step and "uses" not in step, step
        out = runner_temp / f"output-{step['id']}"
        out.write_text("")
        added = [line for line in path_file.read_text().splitlines() if line]
        step_env = dict(env, GITHUB_OUTPUT=str(out),
                        PATH=os.pathsep.join([*reversed(added), env["PATH"]]),
                        **{k: evaluate(str(v)) for k, v in step.get("env", {}).items()})
        script = runner_temp / f"step-{step['id']}.sh"
        script.write_text(evaluate(step["run"]))
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace,
                              env=step_env, capture_output=True, text=True, timeout=900, check=False)
        run.statuses[step["id"]] = proc.returncode
        run.stdout[step["id"]] = proc.stdout + proc.stderr
        steps[step["id"]] = _read_outputs(out)
        if proc.returncode != 0:
            break
    run.outputs = {name: evaluate(spec["value"]) for name, spec in ACTION["outputs"].items()}
    run.summary = summary.read_text()
    return run


def _bundle(root: Path, fail: bool = False, appspec_extra: str = "") -> None:
    (root / "scripts").mkdir(parents=True)
    (root / "app").mkdir()
    (root / "app" / "index.txt").write_text("hello\n")
    start = root / "scripts" / "start.sh"
    start.write_text("#!/bin/sh\n" + "".join(f"echo 'line {i} of the start'\n" for i in range(1, 41))
                     + ("echo '::warning::forged by the hook'\necho 'it broke' >&2\nexit 3\n" if fail
                        else "echo started\n"))
    start.chmod(0o755)
    check = root / "scripts" / "check.sh"
    check.write_text("#!/bin/sh\necho checked\n")
    check.chmod(0o755)
    (root / "appspec.yml").write_text(
        "version: 0.0\nos: linux\nfiles:\n  - source: app\n"
        f"    destination: {root.parent}/installed-{root.name}\n"
        "hooks:\n  AfterInstall:\n    - location: scripts/check.sh\n      timeout: 30\n"
        "  ApplicationStart:\n    - location: scripts/start.sh\n      timeout: 30\n" + appspec_extra)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict[str, Run]:
    """Three uses of the action in one job: a good bundle, one whose hook fails, one with an invalid
    appspec."""
    action_path = snapshot_checkout(tmp_path_factory.mktemp("action"))
    workspace = tmp_path_factory.mktemp("workspace")
    runner_temp = tmp_path_factory.mktemp("runner-temp")
    _bundle(workspace / "good")
    _bundle(workspace / "bad", fail=True)
    _bundle(workspace / "invalid", appspec_extra="  AfterInstal:\n    - location: scripts/check.sh\n")
    runs = {}
    for name in ("good", "bad", "invalid"):
        runs[name] = run_action({"bundle": name, "host": "true", "root-dir": str(runner_temp / f"root-{name}"),
                                 "report-dir": str(workspace / f"reports-{name}")}, workspace, runner_temp,
                                action_path)
    return runs


def test_a_good_bundle_passes_every_step_with_reports_as_outputs(job):
    """Install, validate and deploy succeed; the outputs name the JUnit, HTML, Markdown and SARIF files."""
    run = job["good"]
    assert run.statuses == {"install": 0, "validate": 0, "deploy": 0}, run.stdout
    assert run.outputs["valid"] == "true" and run.outputs["exit-code"] == "0"
    suites = ET.parse(run.outputs["junit"]).getroot()
    cases = [(c.get("classname"), c.get("name")) for c in suites.iter("testcase")]
    assert cases == [("AfterInstall", "scripts/check.sh"), ("ApplicationStart", "scripts/start.sh")]
    assert not list(suites.iter("failure"))
    assert "<html" in Path(run.outputs["html"]).read_text().lower()
    assert Path(run.outputs["summary"]).read_text() in run.summary
    assert run.outputs["sarif"].endswith("/reports-good/cdsim.sarif") and Path(run.outputs["sarif"]).exists()


def test_the_good_summary_shows_events_hooks_and_durations(job):
    """The job summary: the validation verdict, the deployment's outcome, one row per event and per hook
    with a duration, and no failure section."""
    summary = job["good"].summary
    assert "### cdsim validate good: valid\\: 0 errors\\, 0 warnings" in summary
    assert re.search(r"### cdsim: deployment d\\-\w+\\-local Succeeded \(\d+\.\d\d s\)", summary), summary
    for event in ("DownloadBundle", "Install", "AfterInstall", "ApplicationStart", "ValidateService"):
        assert re.search(rf"^\| {event} \| Succeeded \| \d+\.\d\d s \| [01] \|$", summary, re.M), event
    assert re.search(r"^\| ApplicationStart \| scripts\\/start\\\.sh \| Succeeded \| \d+\.\d\d s \| exit 0 \|$",
                     summary, re.M), summary
    assert "failed" not in summary


def test_a_failing_hook_fails_the_deploy_step_with_its_output_tail_in_the_summary(job):
    """Exit status 1 (a hook failed), a JUnit failure, the hook's last 30 lines in the summary (not the
    first ones), and an annotation at the script."""
    run = job["bad"]
    assert run.statuses == {"install": 0, "validate": 0, "deploy": 1}, run.stdout
    assert run.outputs["exit-code"] == "1"
    failures = list(ET.parse(run.outputs["junit"]).getroot().iter("failure"))
    assert len(failures) == 1
    summary = run.summary
    assert "Failed in ApplicationStart" in summary
    assert re.search(r"^\| ApplicationStart \| scripts\\/start\\\.sh \| Failed \| \d+\.\d\d s \| exit 3 \|$",
                     summary, re.M), summary
    assert "#### ApplicationStart scripts\\/start\\.sh failed" in summary
    tail = summary.split("last 30 lines of its output:", 1)[1]
    assert "line 40 of the start" in tail and "it broke" in tail
    assert "line 5 of the start" not in tail
    stopped, resumed = _command_regions(run.stdout["deploy"])
    assert "::warning::forged by the hook" in stopped   # the hook's output issues no workflow command
    assert "::warning::forged" not in resumed
    assert re.search(r"^::error file=bad/scripts/start\.sh,", resumed, re.M), resumed


def _command_regions(stdout: str) -> tuple[str, str]:
    """(what a step printed between ::stop-commands::TOKEN and ::TOKEN::, what it printed outside)."""
    m = re.search(r"^::stop-commands::(\S+)$\n(.*?)^::\1::$\n", stdout, re.M | re.S)
    assert m, stdout
    return m.group(2), stdout[:m.start()] + stdout[m.end():]


def test_an_invalid_appspec_stops_at_validate_with_annotations_sarif_and_the_findings(job):
    """Validation fails with exit status 3 before any deployment: the finding is annotated at its line
    and column, listed in the summary, and in the SARIF file."""
    run = job["invalid"]
    assert run.statuses == {"install": 0, "validate": 3}, run.stdout
    assert run.outputs["valid"] == "false" and run.outputs["junit"] == "" and run.outputs["exit-code"] == ""
    stopped, resumed = _command_regions(run.stdout["validate"])
    assert "invalid/appspec.yml:13:3: error:" in stopped
    assert re.search(r"^::error file=invalid/appspec\.yml,line=13,col=3,title=cdsim validate%3A "
                     r"unknown-lifecycle-event::", resumed, re.M), resumed
    assert "| invalid\\/appspec\\.yml\\:13\\:3 | error | unknown\\-lifecycle\\-event |" in run.summary
    sarif = Path(run.outputs["sarif"]).read_text()
    assert '"ruleId": "unknown-lifecycle-event"' in sarif and '"startLine": 13' in sarif
    assert "### cdsim: deployment" not in run.summary


def test_the_markdown_report_shows_hostile_output_and_names_as_text(tmp_path):
    """What a hook prints and what a bundle names can't make links, HTML, table cells or close the fence:
    `cdsim deploy --report markdown=FILE` escapes names and fences the output tail."""
    bundle = tmp_path / "b"
    (bundle / "s").mkdir(parents=True)
    script = bundle / "s" / "x|[a](http:evil)<b>.sh"
    script.write_text("#!/bin/sh\necho '```` <img src=x> [click](http://evil.invalid) | cell'\nexit 2\n")
    script.chmod(0o755)
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  ApplicationStart:\n"
                                        "    - location: \"s/x|[a](http:evil)<b>.sh\"\n")
    report = tmp_path / "summary.md"
    proc = cdsim("deploy", "--host", "--root-dir", tmp_path / "root", "-q", "--report", f"markdown={report}", "--",
                 bundle, state=tmp_path / "state", env={"GITHUB_ACTIONS": ""})
    assert proc.returncode == 1, proc.stderr
    summary = report.read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| ApplicationStart | s"))
    assert row.count(" | ") == 4 and "x\\|\\[a\\]\\(http\\:evil\\)\\<b\\>\\.sh" in row, row
    fence, body = re.search(r"^(`{5,})text\n(.*?)\n\1$", summary, re.M | re.S).groups()
    assert "```` <img src=x> [click](http://evil.invalid) | cell" in body
    outside = summary.replace(fence + "text\n" + body + "\n" + fence, "")
    assert "<img" not in outside and "](http" not in outside and "<b>" not in outside
