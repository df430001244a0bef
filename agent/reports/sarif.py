"""SARIF 2.1.0 for ``cdsim validate --format sarif``: findings in, one SARIF log out, for code scanning.

Owns the rule catalogue: one rule per finding code (``RULES``), whose id is the code itself, stable
as validate's text and JSON output print it (``[unknown-key]``), with a short description and help. A
finding whose code the catalogue lacks still gets a rule (described by its first message), so no
result ever names a rule that is not in ``tool.driver.rules``. Paths are made relative to ``base``
(the repository root code scanning resolves them from) when they lie under it; an archive member
(``bundle.zip!appspec.yml``) points at the archive. Pure: findings and a base folder in, a dict out;
takes findings by shape (``FindingLike``) so it imports neither agent.lint nor the engine.
"""
from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


class FindingLike(Protocol):
    """What a validate finding (agent.lint.Finding) has."""

    @property
    def severity(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def file(self) -> str | None: ...
    @property
    def line(self) -> int | None: ...
    @property
    def column(self) -> int | None: ...
    @property
    def hint(self) -> str | None: ...


@dataclass(frozen=True)
class Rule:
    """One rule: its id (the finding code), default level, one-line description and help."""

    id: str
    level: Literal["error", "warning"]
    short: str
    help: str


def _r(code: str, level: Literal["error", "warning"], short: str, help_text: str) -> Rule:
    return Rule(code, level, short, help_text)


# The catalogue, in the order validate checks: the bundle, the appspec's YAML, its model, the bundle
# against it. Ids are public (code scanning keys alerts on them): never rename one, only add.
RULES: tuple[Rule, ...] = (
    # the bundle and where its appspec is
    _r("bundle-not-found", "error", "The bundle path does not exist",
       "Give an existing bundle directory, zip/tar/tgz archive or appspec file."),
    _r("bundle-unreadable", "error", "The bundle cannot be read",
       "Check the permissions of the bundle and of the folders above it."),
    _r("bundle-invalid", "error", "The bundle is not a directory or a readable archive",
       "Rebuild the archive with zip or tar, or give the bundle's real type."),
    _r("bundle-too-large", "error", "The bundle has too many entries",
       "A bundle is bounded in entries and size; leave build caches and dependencies out of it."),
    _r("bundle-unsafe-member", "error", "The bundle has a member cdsim refuses (a link leading outside it)",
       "Rebuild the bundle without links to folders outside it: the agent would copy that host folder."),
    _r("appspec-not-found", "error", "The bundle has no appspec.yml at its root",
       "Put appspec.yml at the root of the bundle (names are case-sensitive), or name the file with "
       "--appspec-filename."),
    _r("appspec-yaml-without-yml", "error", "appspec.yaml without appspec.yml: the hooks do not find it",
       "Rename appspec.yaml to appspec.yml: every lifecycle hook looks only for appspec.yml."),
    _r("appspec-is-directory", "error", "The appspec is a directory", "Make the appspec a YAML file."),
    _r("appspec-unreadable", "error", "The appspec cannot be read", "Make the appspec a readable regular file."),
    _r("appspec-too-large", "error", "The appspec is larger than cdsim reads",
       "An appspec is a small YAML file: check that this is the right file."),
    # its YAML, read as the agent's Ruby YAML (Psych 4) reads it
    _r("appspec-not-utf8", "error", "The appspec is not UTF-8 text", "Save the appspec as UTF-8."),
    _r("appspec-binary", "error", "The appspec contains a NUL character", "Save the appspec as YAML text."),
    _r("appspec-too-deep", "error", "The appspec nests collections too deeply",
       "An appspec needs a few levels of nesting: check the indentation."),
    _r("yaml-syntax", "error", "YAML syntax error", "Fix the YAML at the position given (indentation, "
       "quotes, a missing colon)."),
    _r("yaml-alias", "error", "A YAML alias, which the agent refuses",
       "Write the value out again: the agent (Psych 4) refuses aliases."),
    _r("yaml-unsupported-tag", "error", "A YAML tag the agent does not read", "Remove the tag."),
    _r("yaml-disallowed-class", "error", "A YAML value of a class the agent refuses to load",
       "Remove the tag or quote the value."),
    _r("yaml-invalid-number", "error", "A number the agent's YAML crashes on", "Quote the value to make it a string."),
    _r("yaml-anchor", "warning", "A YAML anchor, of no use since the agent refuses aliases", "Remove the anchor."),
    _r("yaml-base60", "warning", "An a:b value that YAML 1.1 reads as a base-60 number",
       "Quote the value if you mean the text."),
    _r("duplicate-key", "warning", "A key that appears twice in one mapping: the agent keeps the last",
       "Remove one of the two."),
    _r("unknown-key", "warning", "A key the agent ignores", "Fix the key's spelling or remove it; the message "
       "says what was probably meant."),
    # the appspec's model, as the agent validates it
    _r("appspec-empty", "error", "The appspec is empty", "Write at least version: 0.0 and os: linux."),
    _r("appspec-invalid", "error", "The appspec is not a mapping of the keys the agent reads",
       "Start from version: 0.0, os: linux, files:, hooks:."),
    _r("invalid-version", "error", "version is not 0.0", "Write version: 0.0."),
    _r("unsupported-os", "error", "os is not linux (or windows)", "Write os: linux."),
    _r("invalid-file-exists-behavior", "error", "file_exists_behavior is not DISALLOW, OVERWRITE or RETAIN",
       "Use one of DISALLOW, OVERWRITE, RETAIN."),
    _r("file-no-source", "error", "A files entry without source", "Give each files entry a source."),
    _r("file-no-destination", "error", "A files entry without destination", "Give each files entry a destination."),
    _r("script-no-location", "error", "A hook script without location", "Give each hook script a location."),
    _r("invalid-timeout", "error", "A hook timeout that is not a positive whole number of seconds",
       "Write the timeout as a whole number of seconds."),
    _r("timeout-base60", "warning", "A timeout written a:b, which YAML 1.1 reads as hours and minutes",
       "Write the timeout in seconds."),
    _r("event-timeout-over-limit", "warning", "An event's timeouts add up to more than CodeDeploy allows (3600 s)",
       "Shorten the timeouts of the event's scripts."),
    _r("invalid-runas", "error", "A runas that is not a user name",
       "Give runas an existing user's name (it must not start with '-')."),
    _r("runas-empty", "warning", "An empty runas, which runs the script as root", "Remove runas or give a user name."),
    _r("runas-unknown-user", "warning", "A runas user that does not exist on this machine",
       "Create the user on the instance (in a BeforeInstall script), or fix the name."),
    _r("sudo-string-enables", "warning", "A sudo value that turns sudo on although it reads as off",
       "Write sudo: false (unquoted), or remove the key."),
    _r("permission-no-object", "error", "A permissions entry without object", "Give each permissions entry an object."),
    _r("invalid-permission-type", "error", "A permissions type other than file and directory",
       "Use type: [file], [directory] or both."),
    _r("invalid-mode", "error", "A mode that is not three or four octal digits", "Write the mode as octal "
       "digits, quoted: mode: '644'."),
    _r("mode-unquoted-octal", "warning", "An unquoted mode with a leading zero, read as an octal number",
       "Quote the mode: mode: '0644'."),
    _r("mode-base60", "warning", "A mode written a:b, read as a base-60 number", "Write the mode as octal digits."),
    _r("invalid-acl", "error", "An acls entry the agent cannot parse", "Write each entry as setfacl takes it: "
       "u:USER:rwx, g:GROUP:r-x, d:u:USER:rwx."),
    _r("acl-base-entry", "error", "An acls entry for the owner, group or other class",
       "Set the base permissions with mode; acls are for named users and groups."),
    _r("invalid-context", "error", "A context that is not a mapping with name and type", "Give context a name "
       "and a type."),
    _r("context-without-range", "error", "A context without range, on which the agent fails the deployment",
       "Give the context a range, e.g. range: s0."),
    _r("invalid-context-range", "error", "A context range the agent cannot parse", "Write the range as s0 or "
       "s0-s0:c0.c1023."),
    _r("context-role-ignored", "warning", "A context role, which the agent never applies", "Remove role."),
    _r("owner-unknown-user", "warning", "A permissions owner that does not exist on this machine",
       "Create the user before Install (BeforeInstall), or fix the name."),
    _r("group-unknown-group", "warning", "A permissions group that does not exist on this machine",
       "Create the group before Install (BeforeInstall), or fix the name."),
    # the bundle against the appspec
    _r("unknown-lifecycle-event", "error", "A hook for an event the deployment never runs",
       "Fix the event's name (names are case-sensitive); custom events run only with --events."),
    _r("script-outside-bundle", "error", "A hook script whose location leaves the bundle",
       "Give a location inside the bundle, without '..'."),
    _r("script-missing", "error", "A hook script that is not in the bundle",
       "Script locations are relative to the bundle root: add the script or fix the location."),
    _r("script-not-file", "error", "A hook script location that is a directory", "Point location at a script file."),
    _r("script-not-executable", "warning", "A hook script without the executable bit",
       "chmod +x the script (the agent does it before running, but a deployment from Windows may not)."),
    _r("script-no-shebang", "warning", "A hook script without a #! line, run with /bin/sh",
       "Start the script with #!/bin/bash (or its interpreter)."),
    _r("script-crlf-shebang", "error", "A hook script with CRLF line endings, which cannot start",
       "Convert the script to LF line endings (dos2unix)."),
    _r("file-source-missing", "error", "A files source that is not in the bundle",
       "Sources are relative to the bundle root: add it or fix the path."),
    _r("files-duplicate-destination", "error", "Two files sources installing to one destination",
       "Remove one of the two sources."),
    _r("files-file-directory-collision", "error", "A file installed where a directory of the bundle goes",
       "Rename the file or the directory."),
    _r("destination-looks-like-file", "warning", "A destination that looks like a file name: it is a folder",
       "Give the folder the file goes into: files cannot be renamed on install."),
    # Amazon ECS and AWS Lambda appspecs (agent.appspec_platforms.CODES; unknown-key, duplicate-key,
    # invalid-version, unknown-lifecycle-event and yaml-alias are shared with the EC2 rules above)
    _r("unsupported-platform", "error", "An ECS or Lambda appspec given to a deployment, which cdsim does not run",
       "cdsim deploys EC2/On-Premises appspecs only; `cdsim validate` checks ECS and Lambda ones."),
    _r("missing-property", "error", "A required key is missing (version, Resources, Type, Properties, ...)",
       "Add the key the message names, as the AppSpec reference for the platform documents it."),
    _r("wrong-type", "error", "A value of the wrong type (a string ContainerPort, a mapping where a list goes)",
       "Write the value with the type the message names."),
    _r("invalid-value", "error", "A value out of the documented set or range (Type, AssignPublicIp, ports)",
       "Use one of the values the message lists."),
    _r("same-version", "error", "A Lambda TargetVersion equal to CurrentVersion: no traffic to shift",
       "Give TargetVersion the version to shift traffic to."),
    _r("hook-duplicate", "error", "Two hooks on one event", "Keep one hook per lifecycle event."),
    _r("task-definition-not-arn", "error", "A TaskDefinition that is not a task definition ARN",
       "Give the task definition's full ARN (or CodePipeline's <TASK_DEFINITION> placeholder)."),
    _r("json-syntax", "error", "A JSON appspec that is not JSON", "Fix the JSON at the position given."),
)
_BY_ID = {rule.id: rule for rule in RULES}


def rule_for(code: str, example: FindingLike | None = None) -> Rule:
    """The catalogue's rule for ``code``; for a code it lacks, one described by ``example``."""
    found = _BY_ID.get(code)
    if found is not None:
        return found
    level: Literal["error", "warning"] = "warning" if example is not None and example.severity == "warning" \
        else "error"
    short = example.message.split(". ")[0][:200] if example is not None else code
    return Rule(code, level, short, (example.hint if example is not None and example.hint else short))


_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def split_member(file: str) -> tuple[str, str | None]:
    """``bundle.zip!appspec.yml`` (validate's name for an archive member) -> ("bundle.zip", "appspec.yml");
    any other path -> (path, None)."""
    archive, bang, member = file.partition("!")
    if bang and member and archive.lower().endswith(_ARCHIVE_SUFFIXES):
        return archive, member
    return file, None


def artifact_uri(file: str, base: str) -> str:
    """The URI code scanning resolves ``file`` by: relative to ``base`` when under it (percent-encoded,
    '/'-separated), else an absolute ``file://`` URI. ``x.zip!member`` names the archive ``x.zip``."""
    path, _member = split_member(file)
    absolute = posixpath.normpath(path if path.startswith("/") else posixpath.join(base, path))
    root = posixpath.normpath(base)
    if absolute == root or absolute.startswith(root.rstrip("/") + "/"):
        return quote(posixpath.relpath(absolute, root))
    return "file://" + quote(absolute)


def _rule_json(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "name": "".join(part.capitalize() for part in rule.id.split("-")),
            "shortDescription": {"text": rule.short}, "fullDescription": {"text": rule.short},
            "help": {"text": rule.help}, "defaultConfiguration": {"level": rule.level},
            "properties": {"tags": ["codedeploy", "appspec"]}}


def _result(f: FindingLike, index: int, fallback_file: str, base: str) -> dict[str, Any]:
    text = f.message if not f.hint else f"{f.message} (hint: {f.hint})"
    file = f.file or fallback_file
    _archive, member = split_member(file)
    uri = artifact_uri(file, base)
    artifact = {"uri": uri} if uri.startswith("file://") else {"uri": uri, "uriBaseId": "%SRCROOT%"}
    physical: dict[str, Any] = {"artifactLocation": artifact}
    if member is not None:
        text += f" (in {member}, inside the archive)"   # lines of a member are not lines of the archive
    elif f.line is not None and f.line >= 1:
        region: dict[str, int] = {"startLine": f.line}
        if f.column is not None and f.column >= 1:
            region["startColumn"] = f.column
        physical["region"] = region
    level = "warning" if f.severity == "warning" else "error"
    return {"ruleId": f.code, "ruleIndex": index, "level": level, "message": {"text": text},
            "locations": [{"physicalLocation": physical}]}


def build(findings: Sequence[FindingLike], *, validated: str, base: str, version: str) -> dict[str, Any]:
    """The SARIF log of one validation: ``validated`` is the path given (the location of a finding that
    names no file), ``base`` the folder relative paths start from (an absolute path)."""
    rules = list(RULES)
    index = {rule.id: i for i, rule in enumerate(rules)}
    for f in findings:
        if f.code not in index:
            index[f.code] = len(rules)
            rules.append(rule_for(f.code, f))
    root = posixpath.normpath(base)
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": "cdsim", "version": version,
                                "rules": [_rule_json(rule) for rule in rules]}},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": "file://" + quote(root.rstrip("/") + "/")}},
            "columnKind": "unicodeCodePoints",
            "results": [_result(f, index[f.code], validated, root) for f in findings],
        }],
    }


def render(findings: Sequence[FindingLike], *, validated: str, base: str, version: str) -> str:
    import json

    return json.dumps(build(findings, validated=validated, base=base, version=version), indent=2) + "\n"
