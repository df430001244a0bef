"""`cdsim validate --format sarif`: a SARIF 2.1.0 log that the OASIS schema accepts (tests/data, see its
README), with one rule per finding code and each result at the line and column the text format gives."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import jsonschema
import pytest

from tests.lib import REPO, cdsim

SCHEMA = json.loads((REPO / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
HEAD = "version: 0.0\nos: linux\n"
# a bundle with errors and warnings from each part of validate: YAML, the model, the bundle against it
BROKEN = HEAD + """\
files:
  - source: app/index.html
    destination: /srv/app/index.html
permissions:
  - object: /srv/app
    mode: 0644
hooks:
  AfterInstal:
    - location: scripts/missing.sh
  ApplicationStart:
    - location: scripts/start.sh
      timeout: 1:30
      sudo: "false"
"""
TEXT_LINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): "
                       r".* \[(?P<code>[a-z0-9-]+)\]$")


def _bundle(root: Path, appspec: str, files: dict[str, tuple[str, int]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "appspec.yml").write_text(appspec)
    for rel, (text, mode) in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    return root


def _sarif(*args: str | Path, cwd: Path) -> tuple[int, dict]:
    proc = cdsim("validate", "--format", "sarif", *args, cwd=cwd)
    assert proc.stderr == "", proc.stderr
    log = json.loads(proc.stdout)
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    return proc.returncode, log


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("sarif")
    _bundle(work / "bundle", BROKEN, {"app/index.html": ("<p>hi</p>\n", 0o644),
                                      "scripts/start.sh": ("echo no shebang\n", 0o644)})
    return work


class TestSarifLog:
    def test_the_log_validates_against_the_schema_and_each_result_is_where_the_text_says(self, broken):
        """Every finding of the text format is a SARIF result with its rule, level, file, line and column."""
        status, log = _sarif("bundle", cwd=broken)
        assert status == 3
        text = cdsim("validate", "bundle", cwd=broken).stdout.splitlines()
        expected = sorted((m["code"], m["sev"], m["file"], int(m["line"]), int(m["col"]))
                          for m in map(TEXT_LINE.match, text) if m)
        assert len(expected) >= 8, text
        run = log["runs"][0]
        rules = run["tool"]["driver"]["rules"]
        got = []
        for r in run["results"]:
            where = r["locations"][0]["physicalLocation"]
            assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
            got.append((r["ruleId"], r["level"], where["artifactLocation"]["uri"], where["region"]["startLine"],
                        where["region"]["startColumn"]))
        assert sorted(got) == expected
        assert {"unknown-lifecycle-event", "script-missing", "mode-unquoted-octal", "timeout-base60",
                "sudo-string-enables", "script-no-shebang", "destination-looks-like-file"} <= {g[0] for g in got}
        assert run["columnKind"] == "unicodeCodePoints"

    def test_rules_have_ids_descriptions_help_and_a_level(self, broken):
        """tool.driver.rules: unique ids, each with shortDescription, help and a default level."""
        _status, log = _sarif("bundle", cwd=broken)
        rules = log["runs"][0]["tool"]["driver"]["rules"]
        ids = [r["id"] for r in rules]
        assert len(ids) == len(set(ids))
        for rule in rules:
            assert rule["shortDescription"]["text"] and rule["help"]["text"]
            assert rule["defaultConfiguration"]["level"] in ("error", "warning")

    def test_a_clean_bundle_is_a_log_with_no_results_and_exit_0(self, tmp_path):
        """No finding: an empty results list (code scanning closes earlier alerts), exit status 0."""
        _bundle(tmp_path / "ok", HEAD + "hooks:\n  AfterInstall:\n    - location: s.sh\n",
                {"s.sh": ("#!/bin/sh\ntrue\n", 0o755)})
        status, log = _sarif("ok", cwd=tmp_path)
        assert status == 0
        assert log["runs"][0]["results"] == []

    def test_strict_makes_warnings_fail_but_levels_stay_warnings(self, tmp_path):
        """--strict changes the exit status, not what a finding is."""
        _bundle(tmp_path / "warn", HEAD + "hooks:\n  AfterInstall:\n    - location: s.sh\n",
                {"s.sh": ("true\n", 0o755)})
        status, log = _sarif("--strict", "warn", cwd=tmp_path)
        assert status == 3
        assert [r["level"] for r in log["runs"][0]["results"]] == ["warning"]
        assert _sarif("warn", cwd=tmp_path)[0] == 0


class TestLocations:
    def test_a_yaml_syntax_error_is_at_its_position(self, tmp_path):
        """The parser's error (a finding from agent.appspec) has its line and column too."""
        _bundle(tmp_path / "b", HEAD + "hooks:\n  AfterInstall:\n    - location: [x\n")
        _status, log = _sarif("b", cwd=tmp_path)
        (result,) = log["runs"][0]["results"]
        assert result["ruleId"] == "yaml-syntax"
        assert result["locations"][0]["physicalLocation"]["region"]["startLine"] >= 5

    def test_paths_outside_the_current_folder_are_absolute_file_uris(self, broken, tmp_path):
        """Code scanning resolves relative URIs from the repository root; elsewhere the path is absolute."""
        _status, log = _sarif(broken / "bundle", cwd=tmp_path)
        uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
        assert uris == {f"file://{broken}/bundle/appspec.yml"}

    def test_a_finding_inside_an_archive_points_at_the_archive_without_a_region(self, tmp_path):
        """A member's line is not a line of the zip: the result names the archive and the member."""
        with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
            zf.writestr("appspec.yml", HEAD + "hooks:\n  AfterInstall:\n    - location: gone.sh\n")
        _status, log = _sarif("b.zip", cwd=tmp_path)
        (result,) = log["runs"][0]["results"]
        where = result["locations"][0]["physicalLocation"]
        assert where["artifactLocation"]["uri"] == "b.zip" and "region" not in where
        assert "appspec.yml" in result["message"]["text"]

    def test_a_missing_bundle_is_a_result_at_the_path_given(self, tmp_path):
        """A finding that names no line still has a location: the path validated."""
        status, log = _sarif("nowhere", cwd=tmp_path)
        assert status == 3
        (result,) = log["runs"][0]["results"]
        assert result["ruleId"] == "bundle-not-found"
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "nowhere"

    def test_several_paths_make_one_log(self, broken, tmp_path):
        """The pre-commit hook passes several appspec files: one run holds the results of all."""
        _bundle(tmp_path / "other", HEAD + "hooks:\n  BeforeInstal:\n    - location: a.sh\n")
        (tmp_path / "bundle").symlink_to(broken / "bundle")
        _status, log = _sarif("bundle/appspec.yml", "other/appspec.yml", cwd=tmp_path)
        uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
        assert uris == {"bundle/appspec.yml", "other/appspec.yml"}


def test_every_code_validate_emits_has_a_rule_in_the_catalogue():
    """Rule ids are the finding codes: a new code in agent/lint.py, appspec.py or appspec_platforms.py needs its rule
    (agent/reports/sarif.py RULES), so code scanning shows a description and help for it."""
    from agent.appspec_platforms import CODES
    from agent.reports.sarif import RULES

    source = "".join((REPO / "agent" / name).read_text() for name in ("lint.py", "appspec.py", "appspec_platforms.py"))
    emitted = set(re.findall(r'code="([a-z0-9-]+)"', source))
    emitted |= set(re.findall(r'self\.add\(\s*"(?:error|warning)",\s*"([a-z0-9-]+)"', source))
    emitted |= set(re.findall(r'_BundleError\(\s*"([a-z0-9-]+)"', source))
    emitted.add("bundle-unsafe-member")   # UnsafeBundle's reference, through check_links
    emitted |= set(CODES)                 # ECS and Lambda appspecs' codes
    assert len(emitted) > 50
    assert emitted - {rule.id for rule in RULES} == set()


def test_a_lambda_appspec_finding_is_a_result_with_its_rule(tmp_path):
    """ECS and Lambda appspecs' findings (agent.appspec_platforms) are results like the others: the
    tutorial's appspec with TargetVersion equal to CurrentVersion gives same-version at that line."""
    text = (REPO / "tests" / "data" / "appspecs" / "lambda-tutorial.yaml").read_text()
    (tmp_path / "appspec.yaml").write_text(text.replace('TargetVersion: "2"', 'TargetVersion: "1"'))
    status, log = _sarif("appspec.yaml", cwd=tmp_path)
    assert status == 3
    run = log["runs"][0]
    (result,) = [r for r in run["results"] if r["level"] == "error"]
    assert result["ruleId"] == "same-version"
    assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["shortDescription"]["text"].startswith("A Lambda")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "TargetVersion" in t)
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == line
