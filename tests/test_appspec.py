"""The appspec parser: the agent's acceptance, rejections and message texts (behaviour doc §4.6, §5)."""
from __future__ import annotations

import math

import pytest

from agent import appspec as A
from agent.appspec import (
    AclEntry,
    AppSpec,
    Context,
    FileMapping,
    HookScript,
    Mark,
    Permission,
    parse_appspec,
)
from agent.errors import AppSpecError

HEAD = "version: 0.0\nos: linux\n"


def rejected(text, filename="appspec.yml") -> AppSpecError:
    with pytest.raises(AppSpecError) as info:
        parse_appspec(text, filename)
    return info.value


def perm(body: str) -> Permission:
    return parse_appspec(HEAD + "permissions:\n  - object: /srv/app\n" + body).permissions[0]


def perm_error(body: str) -> AppSpecError:
    return rejected(HEAD + "permissions:\n  - object: /srv/app\n" + body)


class TestAccepted:
    def test_full_appspec_builds_the_model(self):
        """A complete appspec gives the frozen model with values normalised as the agent stores them."""
        spec = parse_appspec(HEAD + """\
files:
  - source: /
    destination: /srv/app
permissions:
  - object: /srv/app
    pattern: "*.sh"
    except: [x.sh]
    type: [file]
    owner: app
    group: app
    mode: 755
    acls: [u:bob:7, d:g:dev:4]
    context: {name: system_u, type: httpd_sys_content_t, range: "s0:c0,c1,c2,c5"}
hooks:
  AfterInstall:
    - location: " scripts/a.sh "
      timeout: 30
      runas: app
      sudo: true
  BeforeInstall: []
  ApplicationStop:
file_exists_behavior: OVERWRITE
""")
        assert spec == AppSpec(
            version=0.0, os="linux",
            files=(FileMapping("/", "/srv/app"),),
            permissions=(Permission("/srv/app", "*.sh", ("x.sh",), ("file",), "app", "app", "755",
                                    (AclEntry(False, "user", "bob", "rwx"), AclEntry(True, "group", "dev", "r--")),
                                    Context("system_u", "httpd_sys_content_t", "s0:c0.c2,c5")),),
            hooks=(("AfterInstall", (HookScript("scripts/a.sh", 30, "app", True),)), ("BeforeInstall", ())),
            file_exists_behavior="OVERWRITE")
        assert spec.files[0].mark == Mark(4, 5)
        assert spec.hook_names() == ("AfterInstall", "BeforeInstall")  # null hook: no hook at all

    @pytest.mark.parametrize("version", ["0.0", "0", "0.00", "-0.0", "0x0"])
    def test_numeric_zero_versions(self, version):
        """Any number equal to 0.0 is accepted (§5.3, Q2)."""
        assert parse_appspec(f"version: {version}\nos: linux\n").version == 0

    @pytest.mark.parametrize("raw, timeout", [("'30s'", 30), ("30.7", 30), ("4000", 4000), ("99999", 99999),
                                              ("' 12abc'", 12), ("'1_000'", 1000), ("~", 3600), ("false", 3600)])
    def test_timeout_is_read_like_ruby_to_i(self, raw, timeout):
        """Leading digits of the string form, truncated floats, no upper bound, null -> 3600 (§5.5)."""
        spec = parse_appspec(HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: {raw}\n")
        assert spec.scripts_for("AfterInstall")[0].timeout == timeout

    @pytest.mark.parametrize("raw, sudo", [("'false'", True), ("0", True), ("'no'", True), ("no", False),
                                           ("false", False), ("~", False), ("yes", True)])
    def test_sudo_truthiness(self, raw, sudo):
        """Anything but null and false enables sudo (Q4)."""
        spec = parse_appspec(HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      sudo: {raw}\n")
        assert spec.scripts_for("AfterInstall")[0].sudo is sudo

    @pytest.mark.parametrize("raw, runas", [("' app '", "app"), ("123", "123"), ("''", ""), ("~", None)])
    def test_runas_to_s_and_strip(self, raw, runas):
        """runas is to_s + strip; an empty string is kept (runs as root) (§5.5)."""
        spec = parse_appspec(HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: {raw}\n")
        assert spec.scripts_for("AfterInstall")[0].runas == runas

    @pytest.mark.parametrize("raw, mode", [("644", "644"), ("7", "007"), ("'0644'", "0644"), ("0644", "420"),
                                           ("'4755'", "4755"), ("0", "000")])
    def test_mode_normalisation(self, raw, mode):
        """to_s, pad to 3 with 0; unquoted 0644 is the octal number 420 (§5.7, Q3)."""
        assert perm(f"    mode: {raw}\n").mode == mode

    @pytest.mark.parametrize("ace, canonical", [
        ("u:bob:7", "user:bob:rwx"), ("d:g:dev:4", "default:group:dev:r--"), ("bob:rw", "user:bob:rw-"),
        ("m::rx", "mask::r-x"), ("m:r", "mask::r--"), ("d:u::rwx", "default:user::rwx"),
        ("default:other::r", "default:other::r--"), ("d:o:r", "default:other::r--"), ("g:dev:", "group:dev:---"),
        ("user:m:rw", "user:mask:rw-")])
    def test_acl_canonical_form(self, ace, canonical):
        """ACEs are parsed at parse time and kept in the canonical form install.json uses (§5.7)."""
        assert [str(a) for a in perm(f"    acls: ['{ace}']\n").acls] == [canonical]

    @pytest.mark.parametrize("rng, canonical", [("s0", "s0"), ("s0-s0", "s0"), ("s1-s3", "s1-s3"),
                                                ("s0:c0,c2,c3,c4,c6", "s0:c0,c2.c4,c6"),
                                                ("s0:c3.c5,c0", "s0:c0,c3.c5"), ("s0:c1,", "s0:c1")])
    def test_context_range_canonical(self, rng, canonical):
        """Consecutive categories merge; an equal high sensitivity disappears (§5.7)."""
        assert perm(f"    context: {{type: t, range: '{rng}'}}\n").context.range == canonical

    def test_unknown_keys_and_role_ignored(self):
        """Unknown keys (any level) and a context role are ignored by the agent."""
        spec = parse_appspec(HEAD + "Hooks: {}\noverwrite: true\npermissions:\n  - object: /x\n    file_mode: 1\n"
                             "    context: {type: t, range: s0, role: r}\n")
        assert spec.permissions[0].context == Context(None, "t", "s0")

    def test_later_duplicate_key_wins(self):
        """Psych keeps the last of duplicate keys."""
        assert parse_appspec("version: 1\nos: linux\nversion: 0\n").version == 0

    def test_only_the_first_document_counts(self):
        """YAML.load reads the first document of a stream."""
        assert parse_appspec(HEAD + "---\nversion: 5\n").version == 0.0

    def test_bytes_and_bom(self):
        """Bytes are decoded as UTF-8, a BOM is allowed."""
        assert parse_appspec(("\ufeff" + HEAD).encode()).os == "linux"

    def test_string_files_entry_is_indexed_like_a_ruby_string(self):
        """A files entry that is a string: "x"['source'] is nil in Ruby, so: no source."""
        assert rejected(HEAD + "files:\n  - just-a-path\n").message == A.MSG_NO_SOURCE


class TestRejectedWithAgentText:
    """Every §5 rejection, with the agent's message verbatim, in the agent's parse order."""

    def test_empty(self):
        for text in ("", "# only a comment\n", "---\n", "~\n", "false\n"):
            e = rejected(text)
            assert e.message == A.MSG_EMPTY
            assert e.agent_class == "AppSpecValidationException"

    @pytest.mark.parametrize("line, shown", [("version: '0.0'", "0.0"), ("version: 1.0", "1.0"),
                                             ("os_only: 1", ""), ("version: 1", "1"), ("version: yes", "true"),
                                             ("version: [0.0]", "[0.0]"), ("version: 1e+20", "1e+20")])
    def test_version(self, line, shown):
        """Only a number equal to 0.0; the value shown is Ruby's to_s (Q2)."""
        e = rejected(line + "\nos: linux\n")
        assert e.message == (f"The deployment failed because an invalid version value ({shown}) was entered in "
                             "the application specification file. Make sure your AppSpec file specifies \"0.0\" "
                             "as the version, and then try again.")
        assert e.code == "invalid-version"

    def test_version_position(self):
        """The error points at the value."""
        e = rejected("os: linux\nversion: '0.0'\n")
        assert (e.line, e.column, str(e).split(": ")[0]) == (2, 10, "appspec.yml:2:10")

    @pytest.mark.parametrize("line, shown", [("os: Linux", "Linux"), ("os: windows", "windows"), ("", "")])
    def test_os(self, line, shown):
        e = rejected("version: 0.0\n" + line + "\n")
        assert e.message == (f"The deployment failed because the application specification file specifies an "
                             f"unsupported operating system ({shown}). Specify either \"linux\" or \"windows\" in "
                             "the os section of the AppSpec file, and then try again.")

    @pytest.mark.parametrize("script", ["{timeout: 10}", "{location: ~}", "{location: '  '}", "{location: ''}"])
    def test_script_without_location(self, script):
        assert rejected(HEAD + f"hooks:\n  AfterInstall:\n    - {script}\n").message == A.MSG_NO_LOCATION

    @pytest.mark.parametrize("raw", ["0", "-5", "0.5", "abc", "'0x10'"])
    def test_invalid_timeout(self, raw):
        e = rejected(HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: {raw}\n")
        assert e.message == A.MSG_TIMEOUT
        assert (e.line, e.column) == (6, 16)

    def test_files_source_then_destination(self):
        assert rejected(HEAD + "files:\n  - destination: /x\n").message == A.MSG_NO_SOURCE
        assert rejected(HEAD + "files:\n  - source: /\n").message == (
            "The deployment failed because the application specification file specifies only a source file (/). "
            "Add the name of the destination file to the files section of the AppSpec file, and then try again.")

    @pytest.mark.parametrize("entry", ["pattern: '*'", "object: ~", "object: '  '"])
    def test_permission_without_object(self, entry):
        assert rejected(HEAD + f"permissions:\n  - {entry}\n").message == A.MSG_NO_OBJECT

    def test_permission_type(self):
        assert perm_error("    type: [file, link]\n").message == (
            "The deployment failed because the application specification filespecifies a permission for an "
            "object type not supported for permissions (link). Update the permissions section of the AppSpec "
            "file, and then try again.")

    @pytest.mark.parametrize("raw, shown, char", [("0755", "493", "9"), ("'0x12'", "0x12", "x"), ("'8'", "008", "8"),
                                                  ("6.44", "6.44", ".")])
    def test_mode_invalid_character(self, raw, shown, char):
        assert perm_error(f"    mode: {raw}\n").message == (
            f"The deployment failed because the permissions mode ({shown}) in the application specification file "
            f"contains an invalid character ({char}). Update the permissions section of the AppSpec file, and then "
            "try again.")

    @pytest.mark.parametrize("raw, shown", [("12345", "12345"), ("false", "false")])
    def test_mode_length(self, raw, shown):
        assert perm_error(f"    mode: {raw}\n").message == (
            f"The deployment failed because the length of a permissions mode ({shown}) in the application "
            "specification file is invalid. Permissions modes must be between one and four characters long. "
            "Update the permissions section of the AppSpec file, and then try again.")

    @pytest.mark.parametrize("ace", ["mask:bob:rw", "o:bob:r", "x:bob:rw", "d:d:bob:rw", "a:b:c:d:e", "rw",
                                     "q:u:bob:rw"])
    def test_acl_invalid_entry(self, ace):
        assert perm_error(f"    acls: ['{ace}']\n").message == (
            "The deployment failed because of a problem with the acls permission settings in the application "
            f"specification file. Invalid acl entry ({ace}).")

    @pytest.mark.parametrize("ace", ["u::rwx", "g::r", "o::r", "o:r", ":rw"])
    def test_acl_base_entry(self, ace):
        assert perm_error(f"    acls: ['{ace}']\n").message == (
            "The deployment failed because of a problem with the acls permission settings in the application "
            f"specification file. Use mode to set the base acl entry ({ace}). Update the permissions section of "
            "the AppSpec file, and then try again.")

    @pytest.mark.parametrize("ace, char", [("u:bob:rwz", "z"), ("u:bob:8", "8"), ("u:bob:77", "7")])
    def test_acl_invalid_character(self, ace, char):
        assert perm_error(f"    acls: ['{ace}']\n").message == (
            f"The deployment failed because the access control list (ACL) named {ace} in the application "
            f"specification file contains an invalid character ({char}). Correct the ACL in the hooks section of "
            "the AppSpec file, and then try again.")

    def test_context_without_type(self):
        assert perm_error("    context: {name: u, range: s0}\n").message == (
            "The deployment failed because the application specification file specifies an invalid context type "
            '({"name"=>"u", "range"=>"s0"}). Update the permissions section of the AppSpec file, and then try '
            "again.")

    @pytest.mark.parametrize("rng, message", [
        ("s3-s1", ("The deployment failed because of a problem with the SELinux range specified (s3-s1) for the "
                   "context parameter in the permissions section of the application specification file. Make "
                   "corrections in the permissions section of the AppSpec file, and then try again.")),
        ("s0:", "invalid range part s0:"), ("x0", "invalid sensitivity x0"), ("s", "invalid sensitivity s"),
        ("s0:c1024", "invalid category c1024"), ("s0:c5.c2", "invalid category range c5.c2"),
        ("s0:c1,c0.c2", "duplicate categories"), ("s0-", "invalid range part s0-")])
    def test_context_range(self, rng, message):
        assert perm_error(f"    context: {{type: t, range: '{rng}'}}\n").message == message

    @pytest.mark.parametrize("value", ["overwrite", "Retain", "1"])
    def test_file_exists_behavior(self, value):
        """Case-sensitive (Q26)."""
        assert rejected(HEAD + f"file_exists_behavior: {value}\n").message == (
            f"The deployment failed because an invalid file_exists_behavior value ({value}) was entered in the "
            "application specification file. Make sure your AppSpec file specifies one of "
            "DISALLOW,OVERWRITE,RETAIN as the file_exists_behavior, and then try again.")

    def test_parse_order_version_before_everything(self):
        """The first problem in the agent's order wins: version, os, hooks, files, permissions, fsb."""
        text = ("file_exists_behavior: bad\npermissions:\n  - pattern: x\nfiles:\n  - source: /\n"
                "hooks:\n  A:\n    - timeout: 1\nos: mac\nversion: 2\n")
        order = ["invalid-version", "unsupported-os", "script-no-location", "file-no-destination",
                 "permission-no-object", "invalid-file-exists-behavior"]
        for code in order:
            e = rejected(text)
            assert e.code == code
            fixes = {"invalid-version": ("version: 2", "version: 0"), "unsupported-os": ("os: mac", "os: linux"),
                     "script-no-location": ("- timeout: 1", "- location: a"),
                     "file-no-destination": ("- source: /\n", "- {source: /, destination: /x}\n"),
                     "permission-no-object": ("- pattern: x", "- object: /x"),
                     "invalid-file-exists-behavior": ("bad", "RETAIN")}
            text = text.replace(*fixes[code])
        assert parse_appspec(text).file_exists_behavior == "RETAIN"

    def test_yaml_syntax_error_reads_like_psych(self):
        """libyaml's problem and context, at the context mark, as Psych prints them; our prefix at the problem."""
        e = rejected(HEAD + "files:\n  - source: /\n   destination: [unclosed\n")
        assert e.message == ("(<unknown>): did not find expected '-' indicator while parsing a block collection "
                             "at line 4 column 3")
        assert (e.line, e.column, e.agent_class) == (5, 4, "Psych::SyntaxError")

    def test_alias_rejected(self):
        """Psych 4 refuses aliases."""
        e = rejected(HEAD + "x: &a 1\ny: *a\n")
        assert (e.message, e.line, e.agent_class) == ("Unknown alias: a", 4, "Psych::BadAlias")

    def test_alias_bomb_is_rejected_fast(self):
        """A billion-laughs document is refused without expanding it."""
        lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
        assert rejected("\n".join(lines)).message == "Unknown alias: a0"

    @pytest.mark.parametrize("value, cls", [("2020-01-01", "Date"), ("2020-1-5", "Date"),
                                            ("2020-01-01 10:00:00", "Time"), (":sym", "Symbol")])
    def test_disallowed_classes(self, value, cls):
        e = rejected(HEAD + f"hooks:\n  AfterInstall:\n    - location: {value}\n")
        assert (e.message, e.agent_class) == (f"Tried to load unspecified class: {cls}", "Psych::DisallowedClass")

    def test_quoted_date_is_a_string(self):
        spec = parse_appspec(HEAD + "hooks:\n  AfterInstall:\n    - location: '2020-01-01'\n")
        assert spec.scripts_for("AfterInstall")[0].location == "2020-01-01"


class TestRejectedWhereTheAgentCrashes:
    """The agent fails the deployment with an internal error: we reject with our own message."""

    @pytest.mark.parametrize("text, where", [
        ("- a\n- b\n", "1:1"), ("42\n", "1:1"),
        (HEAD + "hooks:\n  AfterInstall: scripts/a.sh\n", "4:17"),
        (HEAD + "hooks:\n  AfterInstall: {location: a.sh}\n", "4:17"),
        (HEAD + "hooks:\n  AfterInstall:\n    - scripts/a.sh\n", "5:7"),
        (HEAD + "hooks: [a]\n", "3:8"),
        (HEAD + "files: {source: /}\n", "3:8"),
        (HEAD + "permissions:\n  - object: /x\n    except: '*.log'\n", "5:13"),
        (HEAD + "permissions:\n  - object: /x\n    type: file\n", "5:11"),
        (HEAD + "permissions:\n  - object: /x\n    owner: 1000\n", "5:12"),
        (HEAD + "permissions:\n  - object: /x\n    context: {type: t}\n", "5:14"),
        (HEAD + "hooks:\n  AfterInstall:\n    - {location: a, timeout: yes}\n", "5:30"),
        (HEAD + "files:\n  - {source: 5, destination: /x}\n", "4:14"),
    ])
    def test_crash_cases_are_rejected_with_position(self, text, where):
        e = rejected(text)
        assert e.agent_class is None
        assert e.reference == "appspec-invalid"
        assert f"{e.line}:{e.column}" == where

    def test_crash_found_at_install_comes_after_parse_errors(self):
        """A numeric owner only crashes at Install, so a later parse error is what the agent reports."""
        e = rejected(HEAD + "permissions:\n  - object: /x\n    owner: 1000\nfile_exists_behavior: x\n")
        assert e.code == "invalid-file-exists-behavior"


class TestBadInput:
    def test_not_utf8(self):
        e = rejected(b"version: 0.0\nos: \xff\n")
        assert (e.code, e.line, e.column) == ("appspec-not-utf8", 2, 5)

    def test_nul_byte(self):
        assert rejected(b"version: 0.0\x00\n").code == "appspec-binary"

    def test_too_large(self):
        e = rejected(b"#" * (A.MAX_APPSPEC_BYTES + 1))
        assert e.code == "appspec-too-large"

    def test_deep_nesting(self):
        """Deep nesting is refused: by our limit, or first by libyaml's own (0.2.5 stops at 1000 levels
        while reading ahead; which one speaks depends on the libyaml the PyYAML wheel carries)."""
        e = rejected("a: " + "[" * 5000 + "]" * 5000)
        assert e.code in ("appspec-too-deep", "yaml-syntax")
        assert "nest" in e.message


class TestLookupHelpers:
    def test_hook_name_has_no_fallback(self):
        assert A.hook_appspec_name(None) == "appspec.yml"
        assert A.hook_appspec_name("custom.yml") == "custom.yml"

    def test_install_candidates(self):
        assert A.install_appspec_candidates(None) == ("appspec.yml", "appspec.yaml")
        assert A.install_appspec_candidates("custom.yml") == ("custom.yml", "appspec.yaml", "appspec.yml")
        assert A.install_appspec_candidates("appspec.yaml") == ("appspec.yaml", "appspec.yml")

    def test_not_found_message_is_the_agents(self):
        assert A.appspec_not_found_message("appspec.yml", "/r/g/d-1") == (
            'The CodeDeploy agent did not find an AppSpec file within the unpacked revision directory at '
            'revision-relative path "appspec.yml". The revision was unpacked to directory '
            '"/r/g/d-1/deployment-archive", and the AppSpec file was expected but not found at path '
            '"/r/g/d-1/deployment-archive/appspec.yml". Consult the AWS CodeDeploy Appspec documentation for '
            'more information at http://docs.aws.amazon.com/codedeploy/latest/userguide/reference-appspec-file.html')


class TestRubyRenderings:
    @pytest.mark.parametrize("value, text", [(None, "nil"), (1.0, "1.0"), (1e16, "1.0e+16"), (1e-05, "1.0e-05"),
                                             (["a", 1], '["a", 1]'), ('q"#{x}', '"q\\"\\#{x}"'),
                                             (float("inf"), "Infinity")])
    def test_inspect(self, value, text):
        assert A.ruby_inspect(value) == text


def loaded(scalar_yaml: str):
    """The Ruby value of ``x: <scalar_yaml>`` as the agent's YAML.load gives it."""
    root = A.compose_appspec(f"x: {scalar_yaml}\n")
    return A.to_python(root.value[0][1])


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # both NaN
    return type(a) is type(b) and a == b


# (plain scalar, Psych 4.0.3's value): from Psych's own tests (test_scalar_scanner.rb, test_boolean.rb,
# test_yaml_special_cases.rb, marked P), the behaviour doc (§5.1, Q39, marked D), or its resolver's rules.
PSYCH_TABLE = [
    # base 60: part i counts 60 ** |i - 2| (Q39)
    ("0:02", 120), ("0:0:2", 2), ("1:30", 5400), ("0:00", 0),                        # D
    ("190:20:30", 685230), ("190:20:30.15", 685230.15),                              # P
    ("1:30.5", 5430.0), ("0:0:2.5", 2.5), ("-1:30", -1800), ("-0:30", 1800), ("+1:00", 3600),
    ("1_0:00", 36000), ("1:60", "1:60"), ("1:2:3:4", "1:2:3:4"),
    ("00:00:00:00:00", "00:00:00:00:00"), ("00:00:00:00:0f", "00:00:00:00:0f"),      # P
    # integers
    ("1", 1), ("+1", 1), ("-1", -1), ("0", 0), ("00", 0),                            # P
    ("0644", 420), ("0755", 493), ("08", "08"), ("0_644", 420), ("-0644", -420),     # D
    ("01234567", 0o1234567), ("0_,,,1_2,_34567", 0o1234567),                         # P
    ("0x123456789abcdef", 0x123456789abcdef), ("0x_12_,34,_56,_789abcdef__", 0x123456789abcdef),  # P
    ("0X1F", "0X1F"), ("0o17", "0o17"), ("0b101", 5), ("0b0,1_0,1_,0,1_01,0", 0b010101010), ("-0b11", -3),
    ("123_456_789", 123456789), ("123,456,789", 123456789), ("1_2,3,4_5,6_789", 123456789),  # P
    ("1_000", 1000), ("1__0", "1__0"), ("100_", "100_"), ("_100", "_100"), ("450D", "450D"),  # P
    ("1e3", "1e3"),
    # floats
    ("1.2", 1.2), ("0.E+0", 0.0), ("0.0", 0.0), ("0.00", 0.0), ("1.", 1.0), (".5", 0.5), ("-.5", -0.5),  # P, D
    ("1_0.5", 10.5), ("1,000.5", 1000.5), ("1.5_5", "1.5_5"), ("1.0e+3", 1000.0), ("1.0e3", "1.0e3"),
    (".", "."), ("+.", "+."), ("-.", "-."),                                          # P
    (".inf", math.inf), ("+.inf", math.inf), ("-.inf", -math.inf), (".Inf", math.inf), (".INF", math.inf),  # P
    (".nan", math.nan), (".NaN", math.nan), ("-.nan", "-.nan"),                      # P
    # booleans: yes/true/on, no/false/off in any case; never y/n
    ("true", True), ("yes", True), ("Yes", True), ("YES", True), ("on", True), ("ON", True), ("yEs", True),
    ("false", False), ("no", False), ("No", False), ("off", False), ("Off", False), ("FALSE", False),
    ("y", "y"), ("Y", "Y"), ("n", "n"), ("N", "N"), ("yes!", "yes!"),                # P
    # nulls
    ("~", None), ("null", None), ("Null", None), ("NULL", None), ("", None), ("nil", "nil"),  # P
    # strings
    ("<<", "<<"), ("abc", "abc"), ("+a", "+a"), ("2000-15-01", "2000-15-01"), ("2000-10-32", "2000-10-32"),  # P
    ("linux", "linux"), ("--help", "--help"), ("-c id", "-c id"),
]


class TestPsychScalars:
    """Every appspec scalar is resolved exactly as Psych 4 (Ruby 3.1's YAML.load) resolves it (§5.1, Q39)."""

    @pytest.mark.parametrize("text, value", PSYCH_TABLE, ids=[repr(t) for t, _ in PSYCH_TABLE])
    def test_resolver_table(self, text, value):
        """The plain scalar gives Psych's value (type included: 0.0 is a Float, 0 an Integer)."""
        assert same(A.psych_tokenize(text), value)
        if text:
            assert same(loaded(text), value)

    @pytest.mark.parametrize("yaml_text, value", [
        ("'0:02'", "0:02"), ('"0644"', "0644"), ("|\n  12\n", "12\n"), ("!!str 0:02", "0:02"),
        ("!!int 1:30", 5400), ('!!int "12"', 12), ("! 12", 12), ('! "12"', 12), ("!!float 7", 7.0),
        ("!!float 1:30", 5400.0), ("!!bool yes", True), ("!!bool y", "y"), ("!!null ''", None)])
    def test_quoting_and_tags(self, yaml_text, value):
        """Quoted and block scalars stay text; a tag other than str/float/binary is tokenized like plain."""
        assert same(loaded(yaml_text), value)

    @pytest.mark.parametrize("text, message", [
        ("0b_", 'invalid value for Integer(): "0b"'), (".e+3", 'invalid value for Float(): "e+3"')])
    def test_what_psych_crashes_on_is_refused(self, text, message):
        """Ruby's Integer()/Float() raise on these: the agent crashes, we refuse with the reason."""
        e = rejected(HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: {text}\n")
        assert message in e.message and e.code == "yaml-invalid-number" and (e.line, e.column) == (6, 16)

    @pytest.mark.parametrize("raw, timeout", [("0:02", 120), ("0:0:2", 2), ("1:30", 5400), ("1:30.5", 5430),
                                              ("0x10", 16), ("0644", 420), ("1,000", 1000), ("'0:02'", 0)])
    def test_timeouts_downstream(self, raw, timeout):
        """The timeout is the resolved number's to_i (a quoted "0:02" is the string: to_i 0, rejected)."""
        text = HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: {raw}\n"
        if timeout <= 0:
            e = rejected(text)
            assert e.message == A.MSG_TIMEOUT
            return
        t = parse_appspec(text).scripts_for("AfterInstall")[0].timeout
        assert type(t) is int and t == timeout

    def test_base60_zero_timeout_hint_says_base_60(self):
        """timeout: 0:00 is 0 for the agent: rejected, and the hint says why."""
        e = rejected(HEAD + "hooks:\n  AfterInstall:\n    - location: a.sh\n      timeout: 0:00\n")
        assert e.message == A.MSG_TIMEOUT and "base-60 number 0" in e.hint

    @pytest.mark.parametrize("raw", ["0:00", "0:0:0", "-0:00", "0:00.0", "0x0", "0b0", "+0", "000"])
    def test_version_numbers_equal_to_zero(self, raw):
        """version: 0:00 (base 60) is the integer 0 and accepted, as the agent accepts it."""
        assert parse_appspec(f"version: {raw}\nos: linux\n").version == 0

    @pytest.mark.parametrize("raw, mode", [("0:10", "600"), ("0:07", "420"), ("0_644", "420"), ("0x1a4", "420")])
    def test_mode_downstream(self, raw, mode):
        """mode is to_s of the resolved number: 0:10 is 600, 0x1a4 is 420."""
        assert perm(f"    mode: {raw}\n").mode == mode

    def test_base60_mode_with_a_non_octal_digit_has_a_base60_hint(self):
        """mode: 0:15 is 900 for the agent: its invalid-character error, and a hint that says base 60."""
        e = perm_error("    mode: 0:15\n")
        assert e.message == A._msg_mode_char("900", "9")
        assert "base-60 number 900" in e.hint


# More cases for the cross-check against the real Psych (edge cases of each rule, tags, quoting).
PSYCH_EXTRA = [
    "1:30.", "1:30.5_5", "1:3_0", "+.INF", ".nAn", "tRUE", "nUlL", "~x", "0b_", "0x_", ".e+3", "-.e+3", "0,7",
    "1,,000", "+0x1f", "-0", "+0", "-0b", "0b", "0x", "2000-11-31", "2001-12-15T02:59:73.1Z", "12:30:45",
    "-1:2:3", "1:5", "00:00:00:00:00.0", "1__0:00", "1.5e+3", "1.5E-3", ".5e+3", "00.5", "9:59:59", "0:60",
    "'0:02'", '"0644"', "!!str 0:02", "!!int 1:30", '!!int "12"', "! 12", '! "12"', "!!float 7", "!!float 1:30",
    "!!bool yes", "!!bool y", "!!null ''", "!foo bar", "!!binary aGk=",
]
_RUBY_ORACLE = r"""
require 'psych'
require 'json'
out = JSON.parse(STDIN.read).map do |c|
  begin
    v = Psych.load("x: #{c}\n")["x"]
    s = v.is_a?(Float) ? (v.nan? ? 'nan' : v.infinite? ? (v > 0 ? 'inf' : '-inf') : v.to_s) : v.to_s
    [v.class.name, s]
  rescue Exception => e
    ['error', "#{e.class}: #{e.message}"]
  end
end
puts JSON.generate([Psych::VERSION, out])
"""


def _as_ruby(text: str) -> tuple[str, str]:
    """(Ruby class, to_s) of what cdsim loads for ``x: text``, or ('error', message)."""
    try:
        v = loaded(text)
    except AppSpecError as e:
        return "error", e.message
    if v is None or isinstance(v, bool):
        return {None: "NilClass", True: "TrueClass", False: "FalseClass"}[v], A.ruby_to_s(v)
    if isinstance(v, float):
        text = "nan" if v != v else "inf" if v == math.inf else "-inf" if v == -math.inf else A.ruby_to_s(v)
        return "Float", text
    return ("Integer" if isinstance(v, int) else "String"), A.ruby_to_s(v)


def test_resolver_agrees_with_the_real_psych():
    """Every table case, quoted and tagged too, against Ruby 3.1's Psych 4.0 itself (the agent's YAML)."""
    import json
    import os
    import shutil
    import subprocess

    def unavailable(why: str):
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)

    if shutil.which("ruby") is None:
        unavailable("ruby is not installed (apt-get install ruby): cannot compare with the real Psych")
    cases = [t for t, _ in PSYCH_TABLE if t] + PSYCH_EXTRA
    done = subprocess.run(["ruby", "-e", _RUBY_ORACLE], input=json.dumps(cases), capture_output=True, text=True,
                          timeout=120, check=True)
    version, results = json.loads(done.stdout)
    if not version.startswith("4.0."):
        unavailable(f"Psych {version} is not the agent's Psych 4.0 (Ruby 3.1: apt-get install ruby3.1)")
    differ = []
    for case, (cls, text) in zip(cases, results, strict=True):
        ours = _as_ruby(case)
        if ours[0] != cls or (cls != "error" and ours[1] != text):
            differ.append((case, (cls, text), ours))
    assert differ == []


class TestRunas:
    @pytest.mark.parametrize("name", ["app", "web-app", "a.b", "_svc", "123", "svc$", "A_b-c.9"])
    def test_user_names_accepted(self, name):
        spec = parse_appspec(HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: '{name}'\n")
        assert spec.scripts_for("AfterInstall")[0].runas == name

    @pytest.mark.parametrize("name", ["--help", "-c id", "-", "-root", "a b", "a;id", "$(id)", "a$b", ".", "..",
                                      "app\\tx", "ünï", "x" * 257])
    def test_not_user_names_refused(self, name):
        """cdsim's check (not the agent's): a value su could read as options, or not a user name at all."""
        e = rejected(HEAD + f"hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: \"{name}\"\n")
        assert e.code == "invalid-runas" and e.agent_class is None
        assert "is not a user name" in e.message and (e.line, e.column) == (6, 14)

    def test_agent_errors_come_first(self):
        """The agent's own errors (in its parse order) win over cdsim's runas refusal."""
        e = rejected(HEAD + "hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: '--help'\n"
                     "      timeout: 0\n")
        assert e.message == A.MSG_TIMEOUT
        e = rejected(HEAD + "hooks:\n  AfterInstall:\n    - location: a.sh\n      runas: '--help'\n"
                     "file_exists_behavior: nope\n")
        assert e.code == "invalid-file-exists-behavior"
