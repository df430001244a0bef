"""`cdsim validate`: every finding at once, the agent's messages, warnings, bad input, conformance cases."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from agent import appspec as A
from agent.errors import ExitStatus
from agent.lint import Finding, validate_bundle
from tests.lib import CLI, REPO

CASES = Path("/work/shared/conformance/cases")
GOLDEN = CASES.parent / "golden"
HEAD = "version: 0.0\nos: linux\n"
SCRIPT = "#!/bin/bash\necho hi\n"


def bundle(root: Path, appspec: str | bytes | None = HEAD, files: dict | None = None,
           name: str = "appspec.yml") -> Path:
    """A bundle directory: the appspec plus {relative path: text or (text, mode)}."""
    root.mkdir(parents=True, exist_ok=True)
    if appspec is not None:
        (root / name).write_bytes(appspec.encode() if isinstance(appspec, str) else appspec)
    for rel, spec in (files or {}).items():
        text, mode = spec if isinstance(spec, tuple) else (spec, 0o755)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        p.chmod(mode)
    return root


def codes(findings: list[Finding], severity: str | None = None) -> list[str]:
    return [f.code for f in findings if severity in (None, f.severity)]


# Runs the command as the child of a small interpreter and writes that child's peak RSS to fd 3. The
# peak reported for a child of pytest itself would include pytest's own (exec records the peak of the
# memory it replaces, and a fork or vfork child starts with its parent's), which grows over the run.
# The peak goes to the pipe whose descriptor is the launcher's first argument.
_LAUNCHER = """import os, sys
report = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(report, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def cdsim(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `python -m agent validate ...`; returns the result, the wall time and that command's peak RSS
    (MiB, measured by a small launcher: see _LAUNCHER)."""
    start = time.monotonic()
    read_fd, write_fd = os.pipe()
    try:
        result = subprocess.run([sys.executable, "-c", _LAUNCHER, str(write_fd), *CLI,
                                 "validate", *args], capture_output=True, text=True, cwd=cwd or REPO,
                                stdin=subprocess.DEVNULL, pass_fds=(write_fd,), timeout=120, check=False)
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, "rb") as f:
            read_fd = -1
            rss_kib = int(f.read() or b"0")
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    return result, time.monotonic() - start, rss_kib / 1024


class TestValidBundles:
    def test_valid_bundle_exits_success(self, tmp_path):
        """A correct bundle: no findings, exit 0, a summary line."""
        b = bundle(tmp_path / "b", HEAD + "files:\n  - source: /\n    destination: /srv/app\nhooks:\n"
                   "  AfterInstall:\n    - location: scripts/a.sh\n", {"scripts/a.sh": SCRIPT})
        assert validate_bundle(str(b)) == []
        r, _, _ = cdsim(str(b))
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{b}: valid: 0 errors, 0 warnings\n", "")

    def test_default_path_is_the_current_directory(self, tmp_path):
        b = bundle(tmp_path / "b")
        r, _, _ = cdsim(cwd=b)
        assert r.returncode == 0 and r.stdout == ".: valid: 0 errors, 0 warnings\n"

    def test_appspec_file_as_path(self, tmp_path):
        """An appspec file is checked with its folder as the bundle."""
        b = bundle(tmp_path / "b", HEAD + "hooks:\n  AfterInstall:\n    - location: gone.sh\n")
        assert codes(validate_bundle(str(b / "appspec.yml"))) == ["script-missing"]

    def test_custom_appspec_filename(self, tmp_path):
        b = bundle(tmp_path / "b", name="custom.yml")
        assert validate_bundle(str(b), "custom.yml") == []
        [f] = validate_bundle(str(b))
        assert f.code == "appspec-not-found"
        assert f.message == A.cli_appspec_not_found_message(str(b), None)


class TestAllProblemsAtOnce:
    def test_independent_parse_errors_are_all_reported_with_the_agents_first(self, tmp_path):
        """Version, os, timeout and mode problems in one pass; the agent's first error is among them."""
        text = (HEAD.replace("0.0", "'0.0'").replace("linux", "Linux") +
                "hooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: 0\n"
                "permissions:\n  - object: /x\n    mode: 0755\n")
        b = bundle(tmp_path / "b", text, {"a.sh": SCRIPT})
        findings = validate_bundle(str(b))
        assert codes(findings, "error") == ["invalid-version", "unsupported-os", "invalid-timeout", "invalid-mode"]
        with pytest.raises(A.AppSpecError) as first:
            A.parse_appspec(text)
        assert first.value.message in [f.message for f in findings]

    def test_json_output(self, tmp_path):
        b = bundle(tmp_path / "b", "version: 1.0\nos: linux\n")
        r, _, _ = cdsim(str(b), "--format", "json")
        doc = json.loads(r.stdout)
        assert r.returncode == ExitStatus.INVALID
        assert doc["valid"] is False and doc["errors"] == 1
        [f] = doc["findings"]
        assert set(f) == {"severity", "code", "message", "file", "line", "column", "hint"}
        assert (f["severity"], f["code"], f["line"], f["column"]) == ("error", "invalid-version", 1, 10)
        assert f["file"] == str(b / "appspec.yml")

    def test_text_output_format(self, tmp_path):
        """FILE:LINE:COL: severity: message [code], a hint line, a summary."""
        b = bundle(tmp_path / "b", HEAD + "Hooks: {}\n")
        r, _, _ = cdsim(str(b))
        lines = r.stdout.splitlines()
        assert lines[0] == (f"{b}/appspec.yml:3:1: warning: unknown key 'Hooks' in the appspec: "
                            "the agent ignores it [unknown-key]")
        assert lines[1] == "  hint: did you mean hooks? (keys are case-sensitive)"
        assert lines[2] == f"{b}: valid: 0 errors, 1 warning"
        assert r.returncode == 0

    def test_strict_makes_warnings_fail(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "Hooks: {}\n")
        r, _, _ = cdsim(str(b), "--strict")
        assert r.returncode == ExitStatus.INVALID
        assert r.stdout.splitlines()[-1] == f"{b}: invalid: 0 errors, 1 warning"


class TestBundleErrors:
    def test_appspec_yaml_without_yml(self, tmp_path):
        """Q1: Install reads appspec.yaml but the hooks only look for appspec.yml."""
        b = bundle(tmp_path / "b", name="appspec.yaml")
        [f] = validate_bundle(str(b))
        assert (f.severity, f.code) == ("error", "appspec-yaml-without-yml")
        assert f.message.startswith('The CodeDeploy agent did not find an AppSpec file within the unpacked '
                                    'revision directory at revision-relative path "appspec.yml".')
        assert validate_bundle(str(b), "appspec.yaml") == []

    def test_script_missing(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "hooks:\n  BeforeInstall:\n    - location: /scripts/gone.sh\n")
        [f] = validate_bundle(str(b))
        assert (f.severity, f.code, f.line, f.column) == ("error", "script-missing", 5, 7)

    def test_crlf_shebang(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "hooks:\n  BeforeInstall:\n    - location: a.sh\n",
                   {"a.sh": "#!/bin/bash\r\necho hi\r\n"})
        assert codes(validate_bundle(str(b))) == ["script-crlf-shebang"]

    def test_files_source_missing(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "files:\n  - source: config/app.conf\n    destination: /etc/app\n")
        assert codes(validate_bundle(str(b))) == ["file-source-missing"]

    def test_two_sources_one_destination(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "files:\n  - source: a/x.conf\n    destination: /etc/app\n"
                   "  - source: b/x.conf\n    destination: /etc/app\n", {"a/x.conf": "1", "b/x.conf": "2"})
        [f] = validate_bundle(str(b))
        assert f.code == "files-duplicate-destination"
        assert ("specifies two source files named b/x.conf and a/x.conf for the same destination (/etc/app/x.conf)"
                in f.message)

    def test_unknown_lifecycle_event_has_the_agents_text(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "hooks:\n  AfterInstal:\n    - location: a.sh\n  Custom: []\n",
                   {"a.sh": SCRIPT})
        [f] = validate_bundle(str(b))
        assert f.message == 'appspec.yml file contains unknown lifecycle events: ["AfterInstal", "Custom"]'
        assert "did you mean AfterInstall" in f.hint


    def test_link_to_a_host_folder_is_refused(self, tmp_path):
        """cdsim local refuses a bundle whose link leads out of it; validate says so first."""
        b = bundle(tmp_path / "b", HEAD + "files:\n  - source: /\n    destination: /srv/app\n")
        (tmp_path / "host").mkdir()
        (b / "secrets").symlink_to(tmp_path / "host")
        (b / "loop").symlink_to(b)
        findings = validate_bundle(str(b))
        assert codes(findings, "error") == ["bundle-unsafe-member"]
        assert "secrets" in findings[0].message


class TestWarnings:
    def warnings(self, tmp_path, text, files=None) -> list[Finding]:
        findings = validate_bundle(str(bundle(tmp_path / "b", text, files)))
        assert codes(findings, "error") == []
        return findings

    @pytest.mark.parametrize("text, hint", [
        (HEAD + "Hooks: {}\n", "did you mean hooks? (keys are case-sensitive)"),
        (HEAD + "overwrite: true\n", "did you mean file_exists_behavior: OVERWRITE (a top-level key)?"),
        (HEAD + "files:\n  - {source: a, destination: /x, file_mode: '644'}\n",
         "did you mean a permissions entry with mode:?"),
        (HEAD + "version_: 1\n", "did you mean version?"),
        (HEAD + "BeforeInstall: []\n", "did you mean to put BeforeInstall under hooks:?"),
        (HEAD + "hooks:\n  BeforeInstall:\n    - {location: a, time_out: 5}\n", "did you mean timeout?"),
        (HEAD + "permissions:\n  - {object: /x, ownr: app}\n", "did you mean owner?"),
    ])
    def test_unknown_keys_with_did_you_mean(self, tmp_path, text, hint):
        files = {"a": SCRIPT}
        findings = self.warnings(tmp_path, text, files)
        unknown = [f for f in findings if f.code == "unknown-key"]
        assert len(unknown) == 1 and unknown[0].hint == hint

    def test_script_outside_the_bundle_is_an_error(self, tmp_path):
        """A hook location leaving the bundle is refused at deploy time, so validate calls it an error."""
        text = HEAD + "hooks:\n  AfterInstall:\n    - location: ../../bin/true\n"
        findings = validate_bundle(str(bundle(tmp_path / "b", text)))
        assert "script-outside-bundle" in codes(findings, "error")

    def test_conf_d_destination_is_a_folder(self, tmp_path):
        """/etc/httpd/conf.d names a folder by convention: no file-name warning."""
        text = HEAD + "files:\n  - {source: a.conf, destination: /etc/httpd/conf.d}\n"
        assert "destination-looks-like-file" not in codes(self.warnings(tmp_path, text, {"a.conf": "x"}))

    def test_owner_created_by_before_install_is_not_unknown(self, tmp_path):
        """An owner that a BeforeInstall script creates with useradd gets no unknown-user warning."""
        text = HEAD + ("permissions:\n  - {object: /srv/app, owner: cdsim-nosuch-user, group: cdsim-nosuch-user}\n"
                       "hooks:\n  BeforeInstall:\n    - location: mk\n")
        created = self.warnings(tmp_path / "a", text, {"mk": SCRIPT + "useradd cdsim-nosuch-user\n"})
        assert "owner-unknown-user" not in codes(created) and "group-unknown-group" not in codes(created)
        plain = self.warnings(tmp_path / "b", text, {"mk": SCRIPT})
        assert "owner-unknown-user" in codes(plain) and "group-unknown-group" in codes(plain)

    def test_unquoted_octal_mode_says_what_is_applied(self, tmp_path):
        [f] = self.warnings(tmp_path, HEAD + "permissions:\n  - object: /x\n    mode: 0644\n")
        assert f.code == "mode-unquoted-octal"
        assert "the agent applies mode 420 (r---w----)" in f.message

    def test_unquoted_0755_is_an_error_with_a_hint(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "permissions:\n  - object: /x\n    mode: 0755\n")
        [f] = validate_bundle(str(b))
        assert f.code == "invalid-mode" and "quote it: mode: '0755'" in f.hint

    @pytest.mark.parametrize("value", ["'false'", '"no"', "0"])
    def test_sudo_string_false_enables_sudo(self, tmp_path, value):
        findings = self.warnings(tmp_path,
                                 HEAD + f"hooks:\n  BeforeInstall:\n    - location: a.sh\n      sudo: {value}\n",
                                 {"a.sh": SCRIPT})
        assert codes(findings) == ["sudo-string-enables"]

    def test_script_without_exec_bit_and_without_shebang(self, tmp_path):
        findings = self.warnings(tmp_path, HEAD + "hooks:\n  BeforeInstall:\n    - location: a.sh\n",
                                 {"a.sh": ("echo hi\n", 0o644)})
        assert codes(findings) == ["script-not-executable", "script-no-shebang"]
        assert "chmod a+x" in findings[0].message and "/bin/sh" in findings[1].message

    def test_runas_unknown_user_and_empty(self, tmp_path):
        findings = self.warnings(tmp_path, HEAD + "hooks:\n  BeforeInstall:\n"
                                 "    - {location: a.sh, runas: no-such-user-cdsim, timeout: 60}\n"
                                 "    - {location: a.sh, runas: '', timeout: 60}\n"
                                 "    - {location: a.sh, runas: root, timeout: 60}\n", {"a.sh": SCRIPT})
        assert codes(findings) == ["runas-unknown-user", "runas-empty"]

    def test_event_timeouts_above_3600(self, tmp_path):
        findings = self.warnings(tmp_path, HEAD + "hooks:\n  BeforeInstall:\n    - {location: a.sh, timeout: 2000}\n"
                                 "    - {location: a.sh, timeout: 1601}\n", {"a.sh": SCRIPT})
        [f] = findings
        assert (f.code, f.line) == ("event-timeout-over-limit", 4)
        assert "3601 s" in f.message

    def test_destination_that_looks_like_a_file(self, tmp_path):
        """Q6: a destination is always a directory."""
        [f] = self.warnings(tmp_path, HEAD + "files:\n  - source: app.conf\n    destination: /etc/app.conf\n",
                            {"app.conf": "x"})
        assert f.code == "destination-looks-like-file"
        assert "installs as /etc/app.conf/app.conf" in f.message

    def test_duplicate_keys(self, tmp_path):
        [f] = self.warnings(tmp_path, HEAD + "os: linux\n")
        assert (f.code, f.line) == ("duplicate-key", 3)

    def test_lone_anchor_is_accepted_with_a_warning(self, tmp_path):
        """Psych 4 refuses aliases, not an anchor nobody refers to."""
        [f] = self.warnings(tmp_path, HEAD + "files: &f []\n")
        assert (f.code, f.line) == ("yaml-anchor", 3)

    def test_context_role_ignored(self, tmp_path):
        [f] = self.warnings(tmp_path,
                            HEAD + "permissions:\n  - object: /x\n    context: {type: t, range: s0, role: r}\n")
        assert f.code == "context-role-ignored"


def _zip(path: Path, members: dict[str, tuple[bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, (data, mode) in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            z.writestr(info, data)
    return path


class TestBase60AndRunas:
    """Psych's base 60 (Q39) and cdsim's runas refusal, through the command line."""

    def test_base60_timeouts_and_version_are_accepted_with_warnings_naming_the_seconds(self, tmp_path):
        """timeout 1:30 is 5400 s, 0:02 is 120 s (warned); 0:0:2 is 2 s (no surprise); version 0:00 is 0."""
        text = ("version: 0:00\nos: linux\nhooks:\n  AfterInstall:\n"
                "    - location: a.sh\n      timeout: 1:30\n"
                "    - location: a.sh\n      timeout: 0:02\n"
                "    - location: a.sh\n      timeout: 0:0:2\n")
        b = bundle(tmp_path / "b", text, {"a.sh": SCRIPT})
        findings = validate_bundle(str(b))
        assert codes(findings, "error") == []
        timeouts = {(f.line, f.column): f for f in findings if f.code == "timeout-base60"}
        assert set(timeouts) == {(6, 16), (8, 16)}
        assert timeouts[(6, 16)].message.startswith("timeout 1:30 is 5400 s (1 h 30 min)")
        assert "timeout: 90 if you meant 1:30 as minutes:seconds" in timeouts[(6, 16)].hint
        assert timeouts[(8, 16)].message.startswith("timeout 0:02 is 120 s (2 min)")
        [version] = [f for f in findings if f.code == "yaml-base60"]
        assert (version.line, version.message) == (1, "version 0:00 is the number 0: the agent's YAML (Psych, "
                                                       "YAML 1.1 base 60) reads a:b as a*3600 + b*60")
        assert version.hint == "write version: 0.0"
        r, _, _ = cdsim(str(b))
        assert r.returncode == 0, r.stdout
        assert f"{b}/appspec.yml:6:16: warning: timeout 1:30 is 5400 s" in r.stdout
        assert r.stdout.splitlines()[-1] == f"{b}: valid: 0 errors, 4 warnings"  # + 5522 s over the event limit

    def test_base60_zero_timeout_is_an_error_whose_hint_says_why(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "hooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: 0:00\n",
                   {"a.sh": SCRIPT})
        [f] = validate_bundle(str(b))
        assert (f.code, f.line, f.column) == ("invalid-timeout", 6, 16)
        assert "reads 0:00 as the base-60 number 0" in f.hint

    def test_base60_mode_says_what_is_applied(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD + "permissions:\n  - object: /x\n    mode: 0:10\n")
        [f] = validate_bundle(str(b))
        assert f.code == "mode-base60" and "applies mode 600 (rw-------)" in f.message

    @pytest.mark.parametrize("value", ['"--help"', '"-c id"', "-root", "'a b'"])
    def test_runas_that_is_not_a_user_name_is_an_error(self, tmp_path, value):
        """cdsim refuses it (su would read it as options): error with file:line:col and a stable code."""
        b = bundle(tmp_path / "b", HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: {value}\n",
                   {"a.sh": SCRIPT})
        r, _, _ = cdsim(str(b))
        assert r.returncode == ExitStatus.INVALID
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"{b}/appspec.yml:6:14: error: runas ")
        assert lines[0].endswith(" is not a user name: cdsim refuses to run the script (the agent passes it to su, "
                                 "which reads a value starting with '-' as an option) [invalid-runas]")
        assert lines[-1] == f"{b}: invalid: 1 error, 0 warnings"
        r, _, _ = cdsim(str(b), "--format", "json")
        [f] = json.loads(r.stdout)["findings"]
        assert (f["code"], f["line"], f["column"]) == ("invalid-runas", 6, 14)


def _tgz(path: Path, members: dict[str, tuple[bytes, int]]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    return path


class TestArchives:
    APPSPEC = (HEAD + "hooks:\n  BeforeInstall:\n    - location: run.sh\n").encode()

    def test_zip_members_are_checked_in_memory(self, tmp_path):
        z = _zip(tmp_path / "b.zip", {"appspec.yml": (self.APPSPEC, 0o644), "run.sh": (b"echo\n", 0o644)})
        findings = validate_bundle(str(z))
        assert codes(findings) == ["script-not-executable", "script-no-shebang"]
        assert findings[0].file == f"{z}!appspec.yml"
        assert sorted(os.listdir(tmp_path)) == ["b.zip"]  # nothing extracted

    def test_tgz_with_top_folder_is_stripped(self, tmp_path):
        t = _tgz(tmp_path / "b.tgz", {"myapp/appspec.yml": (self.APPSPEC, 0o644),
                                       "myapp/run.sh": (SCRIPT.encode(), 0o755)})
        assert validate_bundle(str(t)) == []

    def test_archive_without_appspec_has_the_agents_message(self, tmp_path):
        t = _tgz(tmp_path / "b.tar.gz", {"README": (b"x", 0o644)})
        [f] = validate_bundle(str(t))
        assert f.code == "appspec-not-found"
        assert f.message.startswith('The CodeDeploy agent did not find an AppSpec file within the unpacked '
                                    'revision directory at revision-relative path "appspec.yml".')


class TestBadInput:
    """Each: one clear error line, exit INVALID, well under 2 s and 200 MB, never a traceback."""

    def check(self, *args: str, code: str) -> subprocess.CompletedProcess:
        r, elapsed, rss = cdsim(*args)
        assert r.returncode == ExitStatus.INVALID, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr and r.stderr == ""
        errors = [line for line in r.stdout.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].endswith(f"[{code}]"), r.stdout
        assert elapsed < 2.0, elapsed
        assert rss < 200, rss
        return r

    def test_50_mb_appspec(self, tmp_path):
        b = tmp_path / "b"
        b.mkdir()
        with open(b / "appspec.yml", "wb") as f:
            f.write(b"# " + b"x" * (50 * 1024 * 1024) + b"\n")
        self.check(str(b), code="appspec-too-large")

    def test_alias_bomb(self, tmp_path):
        lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        prev = "a"
        for i in range(12):
            lines.append(f"b{i}: &b{i} [" + ",".join([f"*{prev}"] * 9) + "]")
            prev = f"b{i}"
        b = bundle(tmp_path / "b", HEAD + "\n".join(lines) + "\n")
        r = self.check(str(b), code="yaml-alias")
        assert "Unknown alias: a" in r.stdout

    def test_binary_garbage(self, tmp_path):
        b = bundle(tmp_path / "b", bytes(range(256)) * 64)
        self.check(str(b), code="appspec-binary")

    def test_not_utf8(self, tmp_path):
        b = bundle(tmp_path / "b", HEAD.encode() + b"# caf\xe9\n")
        self.check(str(b), code="appspec-not-utf8")

    def test_directory_named_appspec_yml(self, tmp_path):
        b = tmp_path / "b"
        (b / "appspec.yml").mkdir(parents=True)
        self.check(str(b), code="appspec-is-directory")

    def test_unreadable_fifo(self, tmp_path):
        """A FIFO named appspec.yml would block a reader forever: refused without opening it.
        (chmod 000 cannot make a file unreadable to root, which the tests run as; a FIFO and a dangling
        symlink are the unreadable files root meets.)"""
        b = tmp_path / "b"
        b.mkdir()
        os.mkfifo(b / "appspec.yml")
        self.check(str(b), code="appspec-unreadable")
        self.check(str(b / "appspec.yml"), code="bundle-invalid")

    def test_dangling_symlink(self, tmp_path):
        b = tmp_path / "b"
        b.mkdir()
        (b / "appspec.yml").symlink_to(tmp_path / "nowhere")
        self.check(str(b), code="appspec-not-found")
        self.check(str(b / "appspec.yml"), code="bundle-not-found")

    def test_zip_that_is_not_a_zip(self, tmp_path):
        (tmp_path / "b.zip").write_bytes(b"notazip\n")
        r = self.check(str(tmp_path / "b.zip"), code="bundle-invalid")
        assert "Zip end of central directory signature not found" in r.stdout

    def test_missing_path(self, tmp_path):
        self.check(str(tmp_path / "nothing"), code="bundle-not-found")


# ---------------------------------------------------------------------------------------------------
# The recorded conformance cases: validate agrees with what the real agent accepted and rejected

_REJECTION_MARKERS = ("AppSpecValidationException", "Psych::", "did not find an AppSpec file",
                      "Expecting appspec file", "unknown lifecycle events",
                      "Zip end of central directory", "Error extracting tar archive")


def _agent_rejection(step: dict) -> str | None:
    """The agent's message when the step failed on the appspec or the bundle itself, else None."""
    for line in step.get("stdout") or []:
        if line.startswith("ERROR: ") and any(m in line for m in _REJECTION_MARKERS):
            return line[len("ERROR: "):]
    stderr = step.get("stderr") or []
    if stderr and any(m in stderr[0] for m in _REJECTION_MARKERS):
        m = re.search(r":in `[^']*': (.*) \([\w:]+\)$", stderr[0])
        return m.group(1) if m else stderr[0]
    return None


def _steps():
    for golden in sorted(GOLDEN.glob("*.json")):
        recorded = json.loads(golden.read_text())
        case = yaml.safe_load((CASES / recorded["case"] / "case.yaml").read_text())
        for spec, step in zip(case["steps"], recorded["steps"], strict=True):
            yield pytest.param(recorded["case"], spec, step, id=f"{recorded['case']}-{spec['name']}")


def _stage(case: str, spec: dict, tmp_path: Path) -> Path:
    src = CASES / case / spec["bundle"]
    kind = spec.get("type", "directory")
    staged = tmp_path / spec["bundle"]
    shutil.copytree(src, staged, symlinks=True)
    if kind == "directory":
        return staged
    archive = tmp_path / f"{spec['bundle']}.{kind}"
    post = " ".join(spec.get("post_pack", []))
    if "echo " in post:
        archive.write_bytes(b"garbage\n")
        return archive
    if kind == "zip" and "tar -czf" not in post:
        with zipfile.ZipFile(archive, "w") as z:
            for p in sorted(staged.rglob("*")):
                z.write(p, p.relative_to(staged).as_posix())
    else:
        with tarfile.open(archive, "w:gz" if kind in ("tgz", "zip") else "w") as t:
            for p in sorted(staged.rglob("*")):
                t.add(p, p.relative_to(staged).as_posix(), recursive=False)
    return archive


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="the conformance recordings are not on this machine")
@pytest.mark.parametrize("case, spec, step", list(_steps()) if GOLDEN.is_dir() else [])
def test_conformance_case(case, spec, step, tmp_path):
    """Rejected by the agent -> invalid with the agent's message; accepted -> no errors."""
    path = _stage(case, spec, tmp_path)
    args = spec.get("args") or []
    option = args[args.index("--appspec-filename") + 1] if "--appspec-filename" in args else None
    events = args[args.index("--events") + 1].split(",") if "--events" in args else []
    findings = validate_bundle(str(path), option)
    errors = [f for f in findings if f.severity == "error"]
    expected = _agent_rejection(step)
    if expected is None:
        # the agent took the appspec (custom events are allowed by --events, which validate does not take)
        leftover = [f for f in errors if not (f.code == "unknown-lifecycle-event"
                                              and all(f'"{e}"' not in f.message or e in events for e in events))]
        assert leftover == [], [f.render() for f in leftover]
        return
    expected = re.sub(r"<RUN>/bundles/\d+/", f"{tmp_path}/", expected)
    if "did not find an AppSpec file" in expected:
        expected = expected.split(". The revision was unpacked")[0]
    if "Zip end of central" in expected or "Error extracting tar" in expected:
        expected = re.sub(r" \(.*", "", expected)
    assert errors, "the agent rejected this bundle"
    assert any(expected in f.message for f in errors), (expected, [f.render() for f in errors])
