"""`cdsim doctor`: real probes of this machine and of a bundle's runas users and tools; and
`cdsim schema` (the appspec's JSON Schema), the other command that helps before a deployment."""
from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from agent.errors import ExitStatus
from tests import lib
from tests.lib import CLI, IS_ROOT, REPO, require_tool


def doctor(*args: str, env: dict | None = None) -> tuple[int, dict]:
    """`cdsim doctor --format json`, of this machine (--host) unless the arguments name an instance."""
    where = [] if "--instance" in args else ["--host"]
    proc = lib.cdsim("doctor", "--format", "json", *where, *args, env=env, timeout=60)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {"stderr": proc.stderr})


def checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def appspec(folder: Path, runas: list[str] = (), extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["version: 0.0", "os: linux"]
    if runas:
        lines.append("hooks:\n  BeforeInstall:")
        for user in runas:
            lines += ["    - location: hook.sh", f"      runas: {user}"]
    (folder / "appspec.yml").write_text("\n".join(lines) + "\n" + extra)
    return folder


@pytest.fixture
def nologin_user():
    """A real user whose shell refuses to run commands (as system accounts often have)."""
    if not IS_ROOT:   # also marked root (conftest's FIXTURE_MARKS), which skips first
        pytest.skip("creating a user needs root (CI runs as root)")
    name = f"cdsimnl{os.getpid() % 100000}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


class TestMachine:
    def test_namespace_verdict_matches_a_probe_of_our_own(self):
        """The namespaces line says ok exactly when unshare can create the namespaces here, and the
        exit status is ENVIRONMENT exactly when some check failed."""
        code, report = doctor()
        probe = subprocess.run(["unshare", "--mount", "--uts", "--ipc", "--pid", "--net", "--fork", "true"],
                               capture_output=True, check=False)
        assert (checks(report)["namespaces"]["status"] == "ok") == (probe.returncode == 0)
        failed = any(c["status"] == "FAIL" for c in report["checks"])
        assert code == (ExitStatus.ENVIRONMENT if failed else ExitStatus.SUCCESS)
        assert checks(report)["root"]["status"] == ("ok" if os.geteuid() == 0 else "warn")

    def test_missing_tools_fail(self, tmp_path):
        """With no unshare on PATH the namespace check fails; entering needs no tool (cdsim's launcher)."""
        code, report = doctor(env={"PATH": str(tmp_path)})
        assert code == ExitStatus.ENVIRONMENT
        assert checks(report)["namespaces"]["status"] == "FAIL"
        assert checks(report)["instance launcher"]["status"] == "ok"

    def test_old_kernel_cannot_bind_the_bundle(self):
        from agent.commands.doctor import check_instance_tools
        assert check_instance_tools("5.1.21-foo").status == "FAIL"
        assert check_instance_tools("6.1.0-13-amd64").status == "ok"


class TestBundle:
    def test_unknown_runas_user_fails(self, tmp_path):
        """A runas user that does not exist is a failure naming the user."""
        code, report = doctor(str(appspec(tmp_path / "b", ["cdsim-no-such-user"])))
        assert code == ExitStatus.ENVIRONMENT
        assert checks(report)["runas cdsim-no-such-user"]["detail"] == "user 'cdsim-no-such-user' does not exist"

    def test_user_whose_shell_refuses_su_fails(self, tmp_path, nologin_user):
        """su to a user with a nologin shell fails the way a runas hook would, and says why."""
        code, report = doctor(str(appspec(tmp_path / "b", [nologin_user])))
        assert code == ExitStatus.ENVIRONMENT
        check = checks(report)[f"runas {nologin_user}"]
        assert check["status"] == "FAIL" and "nologin" in check["hint"]

    def test_working_user_gets_its_home_and_path_compared(self, tmp_path, runas_user):
        """A real user: su works; HOME as hooks get it is the user's home, same as a login shell's."""
        _code, report = doctor(str(appspec(tmp_path / "b", [runas_user.pw_name])))
        found = checks(report)
        assert found[f"runas {runas_user.pw_name}"]["status"] == "ok"
        home = found[f"runas {runas_user.pw_name} HOME"]
        assert home["status"] == "ok" and home["detail"] == f"hooks get HOME={runas_user.pw_dir}"
        assert f"runas {runas_user.pw_name} PATH" in found

    def test_acls_need_setfacl(self, tmp_path):
        """An appspec with ACLs fails the setfacl check when setfacl is not on PATH, passes when it is."""
        b = appspec(tmp_path / "b", extra="permissions:\n  - object: /tmp/x\n    acls:\n      - u:root:rw\n")
        code, report = doctor(str(b), env={"PATH": str(tmp_path)})
        assert code == ExitStatus.ENVIRONMENT and checks(report)["setfacl"]["status"] == "FAIL"
        require_tool("setfacl", "acl")
        _, report = doctor(str(b))
        assert checks(report)["setfacl"]["status"] == "ok"

    def test_zip_bundle_is_read(self, tmp_path):
        """The appspec is read from inside a zip bundle."""
        src = appspec(tmp_path / "b", ["cdsim-no-such-user"])
        with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
            zf.write(src / "appspec.yml", "appspec.yml")
        code, report = doctor(str(tmp_path / "b.zip"))
        assert code == ExitStatus.ENVIRONMENT and "runas cdsim-no-such-user" in checks(report)

    def test_invalid_appspec_is_invalid(self, tmp_path):
        """An appspec that does not parse exits INVALID, not ENVIRONMENT."""
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "appspec.yml").write_text("version: 0.0\nos: windows-ish\n")
        code, _ = doctor(str(tmp_path / "b"))
        assert code == ExitStatus.INVALID


@pytest.fixture(scope="module")
def validator():
    """The schema `cdsim schema` prints, as a Draft 7 validator."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the schema (pip install jsonschema)")
    proc = subprocess.run([*CLI, "schema"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


class TestSchema:
    """`cdsim schema` prints the shipped JSON Schema; it accepts real appspecs and rejects broken ones."""

    def test_shipped_appspecs_are_valid(self, validator):
        """The sample app's appspec and every broken variant's (their mistakes are not in the appspec)."""
        specs = [REPO / "sample_app" / "appspec.yml", *sorted((REPO / "sample_app_broken").rglob("appspec.yml"))]
        assert len(specs) > 1
        for path in specs:
            errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
            assert errors == [], f"{path}: {errors[0].message if errors else ''}"

    def test_every_lifecycle_hook_is_described(self, validator):
        """Each hook event of the lifecycle is a named property (editors complete them)."""
        from agent.lifecycle import HOOK_EVENTS
        hooks = validator.schema["properties"]["hooks"]["oneOf"][1]["properties"]
        assert set(hooks) == set(HOOK_EVENTS)

    @pytest.mark.parametrize("text", [
        "version: 0.0\nos: Linux\n",
        "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - timeout: 10\n",
        "version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: abc\n",
        "version: 0.0\nos: linux\nhooks:\n  afterInstall:\n    - location: a.sh\n",
        "version: 0.0\nos: linux\nfiles:\n  - source: /\n",
        "version: 0.0\nos: linux\nfile_exists_behavior: REPLACE\n",
        "os: linux\n",
        'version: "0.0"\nos: linux\n',
        "version: 1.0\nos: linux\n",
        'version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n    - location: a.sh\n      runas: "--help"\n',
    ])
    def test_broken_appspecs_are_rejected(self, validator, text):
        """Wrong os, a script without location, a non-numeric timeout, a lower-case event, a file
        mapping without destination, an unknown behaviour, no version, the version as a string (the
        agent rejects "0.0" quoted) or another number, a runas that su would read as an option."""
        assert list(validator.iter_errors(yaml.safe_load(text)))

    @pytest.mark.parametrize("version", ["0.0", "0", "0.00", '"0.0"', "'0'", "1.0", "0.1", "false", '""'])
    def test_version_accepted_exactly_where_the_agent_accepts_it(self, validator, version):
        """The schema and the agent's parser (agent.appspec) agree on each version value: the number
        0.0 in any spelling passes, a string or another number does not."""
        from agent.appspec import parse_appspec
        from agent.errors import AppSpecError

        text = f"version: {version}\nos: linux\n"
        try:
            parse_appspec(text.encode(), "appspec.yml")
            agent_accepts = True
        except AppSpecError:
            agent_accepts = False
        schema_accepts = not list(validator.iter_errors(yaml.safe_load(text)))
        assert schema_accepts == agent_accepts, text

    def test_output_option_writes_the_file(self, tmp_path):
        """--output writes the same schema to a file."""
        out = tmp_path / "schema.json"
        subprocess.run([*CLI, "schema", "-o", str(out)], check=True, timeout=60)
        from agent.commands.schema import schema_text
        assert json.loads(out.read_text()) == json.loads(schema_text())


class TestHookCommandScan:
    """The best-effort scan of shell hook scripts for the commands they run by name."""

    def test_first_words_of_commands_less_builtins_functions_variables_and_paths(self):
        """Pipelines, lists, subshells, command substitution, if/for/case bodies count; builtins,
        keywords, assignments, variables, paths, functions defined in the script, case patterns,
        here-document bodies and arithmetic do not."""
        from agent.commands.doctor import commands_called

        script = (
            "#!/bin/bash\n"
            "set -euo pipefail\n"
            "X=1 first --flag | second && (cd /tmp; third) || $CMD\n"
            "for i in 1 2; do echo $i; fourth; done\n"
            'case "$1" in\n  start|restart) fifth start ;;\n  *) exit 1 ;;\nesac\n'
            "cat <<EOF\nnot_a_command here\nEOF\n"
            "if [ -f x ]; then sixth; fi\n"
            "(( i++ )) && seventh\n"
            "helper() { eighth >/dev/null 2>&1; }\n"
            "helper\n"
            "/usr/bin/by-path arg\n"
            "V=$(ninth -f)  # trailing comment mentioning notme\n"
        )
        assert commands_called(script) == ["first", "second", "third", "fourth", "fifth", "cat", "sixth",
                                           "seventh", "eighth", "ninth"]

    def test_only_shell_scripts_are_scanned(self):
        """A #! line naming a shell (directly or through env) or a .sh name makes a shell script."""
        from agent.commands.doctor import is_shell_script

        assert is_shell_script("run", b"#!/bin/bash\n")
        assert is_shell_script("run", b"#!/usr/bin/env -S bash -e\n")
        assert is_shell_script("run.sh", b"echo hi\n")
        assert not is_shell_script("run", b"#!/usr/bin/env python3\n")
        assert not is_shell_script("run", b"echo hi\n")

    def test_functions_of_a_sourced_file_are_no_commands(self, tmp_path):
        """The sample app's scripts call functions of the common.sh they source: not reported."""
        root = Path(__file__).resolve().parent.parent / "sample_app"
        _code, report = doctor(str(root))
        names = set(checks(report))
        assert not {"command uses_httpd", "command wait_for_port", "command is_running"} & names
        assert "hook PATH" in names


    @pytest.mark.parametrize("kind", ["tgz", "zip"])
    def test_archive_bundles_are_scanned(self, tmp_path, kind):
        """The hook scripts of a tgz or zip bundle are read from the archive: a command found nowhere
        is a warning naming the script that calls it."""
        import tarfile

        src = tmp_path / "src"
        (src / "bin").mkdir(parents=True)
        (src / "appspec.yml").write_text("version: 0.0\nos: linux\nhooks:\n  AfterInstall:\n"
                                         "    - location: bin/go\n")
        (src / "bin" / "go").write_text("#!/usr/bin/env bash\ncdsim-nowhere-at-all --now\n")
        archive = tmp_path / f"b.{kind}"
        if kind == "zip":
            with zipfile.ZipFile(archive, "w") as zf:
                zf.write(src / "appspec.yml", "appspec.yml")
                zf.write(src / "bin" / "go", "bin/go")
        else:
            with tarfile.open(archive, "w:gz") as tf:
                tf.add(src, arcname=".")
        _code, report = doctor(str(archive))
        found = checks(report)["command cdsim-nowhere-at-all"]
        assert found["status"] == "warn" and "called by bin/go" in found["detail"]


class TestIdMap:
    """Whether users other than root can exist in an instance, against what the bundle needs."""

    def test_unprivileged_without_subordinate_ids_fails_a_bundle_needing_users(self):
        """Only the caller mapped (agent.instance.idmap's plan for a user without helpers or ranges):
        FAIL when the bundle runs as or chowns to other users, a warning otherwise; mapped: ok."""
        from agent.commands.doctor import FAIL, OK, WARN, check_id_map
        from agent.instance import idmap

        alone = idmap.plan(1000, 1000, "alice", subuid="", subgid="", helpers=False)["id_map_problem"]
        assert check_id_map(alone, ["ec2-user"], creator_is_root=False).status == FAIL
        assert "ec2-user" in check_id_map(alone, ["ec2-user"], creator_is_root=False).detail
        assert check_id_map(alone, [], creator_is_root=False).status == WARN
        mapped = idmap.plan(1000, 1000, "alice", subuid="alice:100000:65536\n", subgid="alice:100000:65536\n",
                            helpers=True).get("id_map_problem")
        assert mapped is None
        assert check_id_map(mapped, ["ec2-user"], creator_is_root=False).status == OK
