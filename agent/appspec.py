"""The appspec model (frozen dataclasses) and its parser, with the position of every value.

Pure: no I/O here (the caller reads the file and passes its text or bytes); must not import the CLI,
the bundle or install modules. PyYAML is imported lazily, so importing the model stays cheap.

The parser accepts exactly what the real agent 1.8.1 accepts and rejects what it rejects, in the
agent's parse order (behaviour doc §5.2), with the agent's message text (§5, §9.2 Q2-Q4, Q26), raised
as ``AppSpecError(message, file=, line=, column=)``. Each error also carries ``code`` (a stable
kebab-case name of the problem, used by ``cdsim validate``) and ``agent_class`` (the agent's exception
class, or None where the agent crashes and the message is ours). Where the agent crashes with an
internal error (a list at the top level, a hook given as a string, ...) the deployment fails there
too, so we reject with our own message naming the key and its position.

How the YAML is read (§5.1): the events of the first document (libyaml through ``yaml.CSafeLoader``
when available, the same parser Psych uses, so syntax errors read like the agent's) are composed into
our nodes (``ScalarNode``, ``SequenceNode``, ``MappingNode``, ``AliasNode``: what Psych sees of each
value, with its line and column), then converted the way Psych 4's ``YAML.load``
does: every scalar through ``psych_tokenize``, our rendering of Psych 4.0's scalar scanner (YAML 1.1
as Psych reads it, base 60 included: ``0:02`` is 120, ``1:30`` is 5400, Q39; PyYAML's resolver differs
and is not used for values), aliases rejected (``Unknown alias: x``), dates and symbols rejected
(``Tried to load unspecified class: Date``), a later duplicate key winning.

An Amazon ECS or AWS Lambda appspec (``detect_platform``: a Resources section and no os) is refused with
``UnsupportedPlatform`` where the agent would say "unsupported operating system": cdsim validates those
(agent.appspec_platforms) but does not deploy them.

One check is cdsim's, not the agent's: a ``runas`` that is not a user name (``valid_user_name``; the
agent hands ``--help`` or ``-c id`` to su, which reads them as options) is refused with the code
``invalid-runas``, after every error of the agent's own.
"""
from __future__ import annotations

import enum
import math
import re

from agent.errors import AppSpecError, UnsupportedPlatform
from agent.records import field
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up
from agent.ruby import RubyHash as _RubyHash
from agent.ruby import inspect as ruby_inspect
from agent.ruby import inspect_str as ruby_inspect_str
from agent.ruby import to_s as ruby_to_s

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import ClassVar, Final, Literal, NoReturn, Protocol, TypeAlias, TypeGuard

    from yaml import YAMLError
    from yaml import nodes as yaml_nodes
    from yaml.events import Event

    class _EventSource(Protocol):
        """What compose_appspec uses of PyYAML's (C)SafeLoader: the event stream and the tag resolver."""

        def get_event(self) -> Event | None: ...

        def resolve(self, kind: type[yaml_nodes.Node], value: str | None,
                    implicit: bool | tuple[bool, bool]) -> str: ...

        def dispose(self) -> None: ...

DEFAULT_TIMEOUT = 3600
FILE_EXISTS_BEHAVIORS = ("DISALLOW", "OVERWRITE", "RETAIN")
DEFAULT_APPSPEC_NAME = "appspec.yml"
# Our limits, not the agent's: a real appspec is a few KiB; these bound time and memory on hostile input.
MAX_APPSPEC_BYTES = 1024 * 1024
MAX_NESTING = 100

# ---------------------------------------------------------------------------------------------------
# The agent's messages (verbatim, behaviour doc §4.6, §5)

MSG_EMPTY = ("The deployment failed because the application specification file was empty. Make sure "
             "your AppSpec file defines at minimum the 'version' and 'os' properties.")
MSG_NO_LOCATION = ("The deployment failed because the application specification file specifies a script "
                   "with no location value. Specify the location in the hooks section of the AppSpec "
                   "file, and then try again.")
MSG_TIMEOUT = ("The deployment failed because an invalid timeout value was provided for a script in the "
               "application specification file. Make corrections in the hooks section of the AppSpec "
               "file, and then try again.")
MSG_NO_SOURCE = ("The deployment failed because the application specification file specifies a "
                 "destination file, but no source file. Update the files section of the AppSpec file, "
                 "and then try again.")
MSG_NO_OBJECT = ("The deployment failed because a permission listed in the application specification "
                 "file has no object value. Update the permissions section of the AppSpec file, and then "
                 "try again.")


def _msg_version(v: str) -> str:
    return (f"The deployment failed because an invalid version value ({v}) was entered in the "
            "application specification file. Make sure your AppSpec file specifies \"0.0\" as the "
            "version, and then try again.")


def _msg_os(v: str) -> str:
    return (f"The deployment failed because the application specification file specifies an "
            f"unsupported operating system ({v}). Specify either \"linux\" or \"windows\" in the os "
            "section of the AppSpec file, and then try again.")


def _msg_no_destination(source: str) -> str:
    return (f"The deployment failed because the application specification file specifies only a source "
            f"file ({source}). Add the name of the destination file to the files section of the "
            "AppSpec file, and then try again.")


def _msg_type(t: str) -> str:
    return ("The deployment failed because the application specification filespecifies a permission for "
            f"an object type not supported for permissions ({t}). Update the permissions section of the "
            "AppSpec file, and then try again.")


def _msg_mode_length(mode: str) -> str:
    return (f"The deployment failed because the length of a permissions mode ({mode}) in the application "
            "specification file is invalid. Permissions modes must be between one and four characters "
            "long. Update the permissions section of the AppSpec file, and then try again.")


def _msg_mode_char(mode: str, char: str) -> str:
    return (f"The deployment failed because the permissions mode ({mode}) in the application "
            f"specification file contains an invalid character ({char}). Update the permissions section "
            "of the AppSpec file, and then try again.")


def _msg_acl_invalid(ace: str) -> str:
    return ("The deployment failed because of a problem with the acls permission settings in the "
            f"application specification file. Invalid acl entry ({ace}).")


def _msg_acl_base(ace: str) -> str:
    return ("The deployment failed because of a problem with the acls permission settings in the "
            f"application specification file. Use mode to set the base acl entry ({ace}). Update the "
            "permissions section of the AppSpec file, and then try again.")


def _msg_acl_char(ace: str, char: str) -> str:
    return (f"The deployment failed because the access control list (ACL) named {ace} in the application "
            f"specification file contains an invalid character ({char}). Correct the ACL in the hooks "
            "section of the AppSpec file, and then try again.")


def _msg_context_type(inspected: str) -> str:
    return ("The deployment failed because the application specification file specifies an invalid "
            f"context type ({inspected}). Update the permissions section of the AppSpec file, and then "
            "try again.")


def _msg_range(rng: str) -> str:
    return ("The deployment failed because of a problem with the SELinux range specified "
            f"({rng}) for the context parameter in the permissions section of the application "
            "specification file. Make corrections in the permissions section of the AppSpec file, and "
            "then try again.")


def _msg_file_exists_behavior(v: str) -> str:
    return (f"The deployment failed because an invalid file_exists_behavior value ({v}) was entered in "
            "the application specification file. Make sure your AppSpec file specifies one of "
            "DISALLOW,OVERWRITE,RETAIN as the file_exists_behavior, and then try again.")


def appspec_not_found_message(filename: str, rev_dir: str) -> str:
    """The agent's hook-time error when ``{rev_dir}/deployment-archive/{filename}`` is missing (§4.6)."""
    archive = f"{rev_dir}/deployment-archive"
    return ("The CodeDeploy agent did not find an AppSpec file within the unpacked revision directory at "
            f"revision-relative path \"{filename}\". The revision was unpacked to directory "
            f"\"{archive}\", and the AppSpec file was expected but not found at path "
            f"\"{archive}/{filename}\". Consult the AWS CodeDeploy Appspec documentation for more "
            "information at http://docs.aws.amazon.com/codedeploy/latest/userguide/"
            "reference-appspec-file.html")


def cli_appspec_not_found_message(location: str, filename_option: str | None) -> str:
    """codedeploy-local's validator message for a directory bundle without an appspec (§1.3 rule 7)."""
    if filename_option:
        f = filename_option
        return (f"Expecting appspec file at location {location}/{f} but it is not found there. Please "
                f"either run the CLI from within a directory containing the {f} file or specify a bundle "
                f"location containing an {f} file in its root directory")
    return (f"Expecting appspec file at location {location}/appspec.yml or {location}/appspec.yaml but it "
            "is not found there. Please either run the CLI from within a directory containing the "
            "appspec.yml or appspec.yaml file or specify a bundle location containing an appspec.yml or "
            "appspec.yaml file in its root directory")


def hook_appspec_name(filename_option: str | None) -> str:
    """The one name hook events look for (§4.6): the option, else appspec.yml. No fallback."""
    return filename_option or DEFAULT_APPSPEC_NAME


def install_appspec_candidates(filename_option: str | None) -> tuple[str, ...]:
    """Names Install tries in order (§4.6): the option (default appspec.yml), appspec.yaml, appspec.yml."""
    out: list[str] = []
    for name in (filename_option or DEFAULT_APPSPEC_NAME, "appspec.yaml", "appspec.yml"):
        if name not in out:
            out.append(name)
    return tuple(out)


# A user name cdsim hands to su (runas): POSIX portable characters, not starting with '-' (su would read
# it as an option), '$' allowed at the end as useradd allows it (machine accounts), not . or ..
_USER_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*\$?\Z")
MAX_USER_NAME = 256  # LOGIN_NAME_MAX on Linux


def valid_user_name(name: str) -> bool:
    """Whether ``name`` is a user name cdsim will pass to su for runas (never read as an option)."""
    return (len(name) <= MAX_USER_NAME and name not in (".", "..")
            and _USER_NAME.match(name) is not None)


def msg_invalid_runas(name: str) -> str:
    """cdsim's message (not the agent's) for a runas value that is not a user name."""
    shown = name if len(name) <= 80 else name[:80] + "..."
    return (f"runas {ruby_inspect(shown)} is not a user name: cdsim refuses to run the script (the agent "
            "passes it to su, which reads a value starting with '-' as an option)")


# ---------------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Mark:
    """1-based line and column of a value in the appspec file."""

    line: int
    column: int


@dataclass(frozen=True)
class HookScript:
    location: str            # stripped, as written (may start with '/')
    timeout: int = DEFAULT_TIMEOUT
    runas: str | None = None  # None = not given; '' is kept (agent: "su  -c", runs as root)
    sudo: bool = False
    mark: Mark | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FileMapping:
    source: str
    destination: str
    mark: Mark | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AclEntry:
    """One canonical ACE: ``[default:]{user|group|mask|other}:{name}:{rwx}``."""

    default: bool
    type: str   # user | group | mask | other
    name: str
    perms: str  # three characters, e.g. 'rw-'

    def __str__(self) -> str:
        return ("default:" if self.default else "") + f"{self.type}:{self.name}:{self.perms}"


@dataclass(frozen=True)
class Context:
    """SELinux context of a permission entry; ``range`` canonicalised."""

    user: str | None
    type: str
    range: str | None


@dataclass(frozen=True)
class Permission:
    object: str
    pattern: str = "**"
    except_: tuple[str, ...] = ()
    types: tuple[str, ...] = ("file", "directory")
    owner: str | None = None
    group: str | None = None
    mode: str | None = None               # normalised string as in install.json, e.g. "644", "420"
    acls: tuple[AclEntry, ...] | None = None
    context: Context | None = None
    mark: Mark | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AppSpec:
    version: object
    os: str
    files: tuple[FileMapping, ...] = ()
    permissions: tuple[Permission, ...] = ()
    # event name -> scripts, in appspec order; hooks whose value is null are absent
    hooks: tuple[tuple[str, tuple[HookScript, ...]], ...] = ()
    file_exists_behavior: str | None = None
    filename: str = "appspec.yml"

    def scripts_for(self, event: str) -> tuple[HookScript, ...]:
        for name, scripts in self.hooks:
            if name == event:
                return scripts
        return ()

    def hook_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.hooks)


def _ruby_strip(s: str) -> str:
    return s.strip(" \t\n\v\f\r\0")


def _ruby_str_to_i(s: str) -> int:
    """Ruby ``String#to_i``: leading whitespace, a sign, digits with single underscores; else 0."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?)([0-9]+(?:_[0-9]+)*)", s)
    if not m:
        return 0
    n = int(m.group(2).replace("_", ""))
    return -n if m.group(1) == "-" else n


# What Psych 4 loads from a YAML scalar, and from a whole node (mappings as _RubyHash)
ScalarValue: TypeAlias = "str | int | float | bool | None"
RubyValue: TypeAlias = "ScalarValue | list[RubyValue] | _RubyHash"


# ---------------------------------------------------------------------------------------------------
# YAML: compose the first document into nodes with marks, convert scalars the Psych 4 way

_TAG = "tag:yaml.org,2002:"


# ---------------------------------------------------------------------------------------------------
# Psych 4's scalar resolution (the one Ruby 3.1's YAML.load applies, behaviour doc §5.1, Q39), written
# from its documented behaviour. Checked in this order, the first that applies decides:
#   1. a short word: text starting (after at most one other character) with letters/punctuation of
#      _WORDISH, or containing a newline -> a string, except when at most 5 characters long:
#      ~ and null (any case) -> nil; yes/true/on -> true; no/false/off -> false (any case; not y/n)
#   2. a time stamp -> Time, a date -> Date: both refused by Psych 4 (DisallowedClass)
#   3. .inf, +.inf, -.inf, .nan (any case)
#   4. :text -> a Symbol, refused by Psych 4
#   5. base 60 with 2 or 3 parts (the first may be signed and have underscores, the others are 0-59):
#      part i (from the left, from 0) counts 60 ** |i - 2|, so a:b is a*3600 + b*60, a:b:c is
#      a*3600 + b*60 + c; a float when the last part has a fraction
#   6. a decimal float (digits, commas and underscores before a '.', an optional e+N / e-N exponent)
#   7. an integer: 0b binary, 0 octal, 0x hex (lower-case prefixes), decimal; commas and single
#      underscores between digits are dropped
#   8. anything else is the string itself.
# Ruby's ^ and $ are line anchors; text reaching steps 2-8 has no newline, so they act as \A and \Z.

_WORDISH = r"[^\W\d_]|[_ \t\r\n\f\v!@#$%^&*(){}<>|/\\~;=]"
_PSYCH_WORD = re.compile(rf"(?:[^0-9.:\-](?:{_WORDISH})|(?:{_WORDISH}))")
_PSYCH_TIME = re.compile(r"-?\d{4}-\d{1,2}-\d{1,2}(?:[Tt]|\s+)\d{1,2}:\d\d:\d\d(?:\.\d*)?"
                         r"(?:\s*(?:Z|[-+]\d{1,2}:?(?:\d\d)?))?\Z", re.ASCII)
_PSYCH_DATE = re.compile(r"\d{4}-(?:1[012]|0\d|\d)-(?:[12]\d|3[01]|0\d|\d)\Z", re.ASCII)
_PSYCH_BASE60_INT = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9]){1,2}\Z")
_PSYCH_BASE60_FLOAT = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9]){1,2}\.[0-9_]*\Z")
_PSYCH_FLOAT = re.compile(r"[-+]?(?:[0-9][0-9_,]*)?\.[0-9]*(?:[eE][-+][0-9]+)?\Z")
_PSYCH_INT = re.compile(r"[-+]?(?:0b[01_,]+|0[0-7_,]+|(?:0|[1-9](?:[0-9]|,[0-9]|_[0-9])*)|0x[0-9a-fA-F_,]+)\Z")


class PsychRefused(ValueError):
    """Psych 4 raises on this scalar: ``cls`` is its exception class, ``message`` its text."""

    def __init__(self, cls: str, message: str):
        super().__init__(message)
        self.cls = cls
        self.message = message


def _ruby_str_to_f(s: str) -> float:
    """Ruby ``String#to_f`` for the parts of a base-60 number: a leading signed decimal, single
    underscores between digits, a fraction only when a digit follows the '.'."""
    m = re.match(r"([+-]?)([0-9]+(?:_[0-9]+)*)(?:\.([0-9]+(?:_[0-9]+)*))?", s)
    if not m:
        return 0.0
    text = m.group(2).replace("_", "") + "." + (m.group(3) or "0").replace("_", "")
    return -float(text) if m.group(1) == "-" else float(text)


def is_base60(text: str) -> bool:
    """Whether Psych reads this plain scalar as a base-60 number (``0:02``, ``1:30``, ``1:30.5``)."""
    return bool(_PSYCH_BASE60_INT.match(text) or _PSYCH_BASE60_FLOAT.match(text)) and "\n" not in text


def _base60(text: str, part: Callable[[str], float]) -> int | float:
    total: int | float = 0
    for i, piece in enumerate(text.split(":")):
        total += part(piece) * 60 ** abs(i - 2)
    return total


def _ruby_integer(text: str) -> int:
    """Ruby ``Integer()`` of what passed _PSYCH_INT, commas and underscores removed."""
    digits = text.replace(",", "").replace("_", "")
    sign = -1 if digits[:1] == "-" else 1
    body = digits[1:] if digits[:1] in "+-" else digits
    if body[:2] in ("0b", "0x"):
        base, body = (2 if body[1] == "b" else 16), body[2:]
    elif len(body) > 1 and body[0] == "0":
        base = 8
    else:
        base = 10
    if not body:  # "0b_" -> "0b": Ruby's Integer() raises
        raise PsychRefused("ArgumentError", f"invalid value for Integer(): {ruby_inspect_str(digits)}")
    return sign * int(body, base)


def _ruby_float_of(text: str) -> float:
    """Ruby ``Float()`` of what passed _PSYCH_FLOAT: commas and underscores dropped, a '.' before the
    exponent or at the end dropped."""
    cleaned = re.sub(r"\.([Ee]|\Z)", r"\1", text.replace(",", "").replace("_", ""))
    if not re.fullmatch(r"[-+]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+][0-9]+)?", cleaned):
        raise PsychRefused("ArgumentError", f"invalid value for Float(): {ruby_inspect_str(cleaned)}")
    return float(cleaned)


def psych_tokenize(text: str) -> ScalarValue:
    """The Ruby value Psych 4 gives an untagged plain scalar (Python None, bool, int, float or str).

    Raises PsychRefused where Psych 4's ``YAML.load`` raises (dates, times, symbols, ``0b_``)."""
    if text == "":
        return None
    if "\n" in text or _PSYCH_WORD.match(text):
        if len(text) > 5:
            return text
        low = text.lower()
        if low[0] not in "ytonf~":
            return text
        if low in ("~", "null"):
            return None
        if low in ("yes", "true", "on"):
            return True
        if low in ("no", "false", "off"):
            return False
        return text
    if _PSYCH_TIME.match(text):
        raise PsychRefused("Psych::DisallowedClass", "Tried to load unspecified class: Time")
    if _PSYCH_DATE.match(text):
        raise PsychRefused("Psych::DisallowedClass", "Tried to load unspecified class: Date")
    low = text.lower()
    if low in (".inf", "+.inf"):
        return math.inf
    if low == "-.inf":
        return -math.inf
    if low == ".nan":
        return math.nan
    if len(text) > 1 and text[0] == ":":
        raise PsychRefused("Psych::DisallowedClass", "Tried to load unspecified class: Symbol")
    if _PSYCH_BASE60_INT.match(text):
        return _base60(text, _ruby_str_to_i)
    if _PSYCH_BASE60_FLOAT.match(text):
        return _base60(text, _ruby_str_to_f)
    if _PSYCH_FLOAT.match(text):
        if text.lstrip("+-") == ".":
            return text
        return _ruby_float_of(text)
    if _PSYCH_INT.match(text):
        return _ruby_integer(text)
    return text


# The composed document: what Psych sees of each node, with its position. ``id`` tells the kinds apart
# (as in yaml.nodes); ``tag`` is the tag as resolved (explicit, or PyYAML's implicit resolution).
# Plain classes (compared by identity, as yaml.nodes): one is made per YAML value.


class ScalarNode:
    id: ClassVar[Literal["scalar"]] = "scalar"

    def __init__(self, *, tag: str, value: str, mark: Mark, style: str | None = None,
                 psych_quoted: bool = False, psych_tag: str | None = None, explicit_tag: bool = False,
                 anchor: str | None = None) -> None:
        self.tag = tag
        self.value = value
        self.mark = mark
        self.style = style                # None: plain
        self.psych_quoted = psych_quoted  # libyaml's quoted_implicit: not plain, no tag (Psych keeps the text)
        self.psych_tag = psych_tag        # the tag as written, None when there is none
        self.explicit_tag = explicit_tag
        self.anchor = anchor


class SequenceNode:
    id: ClassVar[Literal["sequence"]] = "sequence"

    def __init__(self, *, tag: str, value: list[Node], mark: Mark, explicit_tag: bool = False,
                 anchor: str | None = None) -> None:
        self.tag = tag
        self.value = value
        self.mark = mark
        self.explicit_tag = explicit_tag
        self.anchor = anchor


class MappingNode:
    id: ClassVar[Literal["mapping"]] = "mapping"

    def __init__(self, *, tag: str, value: list[tuple[Node, Node]], mark: Mark, explicit_tag: bool = False,
                 anchor: str | None = None) -> None:
        self.tag = tag
        self.value = value
        self.mark = mark
        self.explicit_tag = explicit_tag
        self.anchor = anchor


class AliasNode:
    """A ``*name`` alias left in the tree: Psych 4 refuses it when converting (``Unknown alias``)."""

    id: ClassVar[Literal["alias"]] = "alias"

    def __init__(self, *, anchor: str, mark: Mark) -> None:
        self.anchor = anchor
        self.mark = mark


Node: TypeAlias = "ScalarNode | SequenceNode | MappingNode | AliasNode"


def node_mark(node: Node) -> Mark:
    return node.mark


def _event_mark(event: Event) -> Mark:
    m = event.start_mark
    # both parsers set the marks of every event; (1, 1) is only there for the type
    return Mark(m.line + 1, m.column + 1) if m is not None else Mark(1, 1)


def _alias_error(node: AliasNode, filename: str) -> AppSpecError:
    return _err(f"Unknown alias: {node.anchor}", filename, node_mark(node), code="yaml-alias",
                agent_class="Psych::BadAlias",
                hint="the agent (Psych 4) refuses YAML aliases: write the value out in full")


def _err(message: str, filename: str, mark: Mark | None, *, code: str, agent_class: str | None,
         hint: str | None = None) -> AppSpecError:
    return AppSpecError(message, file=filename, line=mark.line if mark else None,
                        column=mark.column if mark else None, hint=hint, code=code, agent_class=agent_class)


def _decode(data: str | bytes, filename: str) -> str:
    if isinstance(data, str):
        if len(data) > MAX_APPSPEC_BYTES // 4 and len(data.encode("utf-8", "surrogatepass")) > MAX_APPSPEC_BYTES:
            raise _too_big(len(data.encode("utf-8", "surrogatepass")), filename)
        text = data
    else:
        if len(data) > MAX_APPSPEC_BYTES:
            raise _too_big(len(data), filename)
        if b"\0" in data:  # binary garbage: say so rather than "not UTF-8"
            return _decode(data.decode("utf-8", "replace"), filename)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
            raise _err(f"the appspec is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte "
                       f"offset {e.start}", filename, Mark(line, col), code="appspec-not-utf8",
                       agent_class="Psych::SyntaxError",
                       hint="save the file as UTF-8 (the agent reads it as UTF-8)") from None
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        raise _err("the appspec contains a NUL character: it is binary, not YAML text", filename,
                   Mark(line, col), code="appspec-binary", agent_class="Psych::SyntaxError")
    return text


def _too_big(size: int, filename: str) -> AppSpecError:
    return _err(f"the appspec is {size} bytes, more than the {MAX_APPSPEC_BYTES} bytes cdsim reads",
                filename, None, code="appspec-too-large", agent_class=None,
                hint="an appspec is a small YAML file; is this the right file?")


def _syntax_error(exc: YAMLError, filename: str) -> AppSpecError:
    """Psych's text for a libyaml error: ``(<unknown>): {problem} {context} at line L column C``
    where L:C is the context mark (1-based; 1:1 when there is none). Our prefix uses the problem mark."""
    from yaml import MarkedYAMLError
    from yaml.reader import ReaderError

    problem: str | None = None
    context: str | None = None
    cmark = pmark = None
    if isinstance(exc, MarkedYAMLError):
        problem, context, cmark = exc.problem, exc.context, exc.context_mark
        pmark = exc.problem_mark or cmark
    if problem is None:  # a reader error (bad character)
        problem = (exc.reason if isinstance(exc, ReaderError) else None) or str(exc)
    text = " ".join(p for p in (problem, context) if p)
    line, col = (cmark.line + 1, cmark.column + 1) if cmark is not None and context else (1, 1)
    where = Mark(pmark.line + 1, pmark.column + 1) if pmark is not None else None
    return _err(f"(<unknown>): {text} at line {line} column {col}", filename, where,
                code="yaml-syntax", agent_class="Psych::SyntaxError")


def compose_appspec(data: str | bytes, filename: str = DEFAULT_APPSPEC_NAME) -> Node | None:
    """The first YAML document as nodes (None when the stream holds no document).

    Aliases stay as ``AliasNode`` (rejected later, in document order, like Psych). Raises
    AppSpecError for undecodable input, syntax errors and nesting deeper than MAX_NESTING."""
    from agent.yaml_import import load_yaml

    yaml = load_yaml()
    from yaml import events as ev
    from yaml import nodes as yn

    text = _decode(data, filename)
    loader_cls = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
    loader: _EventSource = loader_cls(text)

    def resolved(event: ev.ScalarEvent | ev.CollectionStartEvent, kind: type[yn.Node],
                 value: str | None) -> tuple[str, bool]:
        """(tag, explicit): a tag written other than '!' is kept, else the resolver picks one."""
        if event.tag is not None and event.tag != "!":
            return event.tag, True
        return loader.resolve(kind, value, event.implicit), False

    def compose(event: Event | None, depth: int) -> Node:
        if isinstance(event, ev.AliasEvent):
            return AliasNode(anchor=event.anchor or "", mark=_event_mark(event))
        if event is not None and depth > MAX_NESTING:
            raise _err(f"the appspec nests collections more than {MAX_NESTING} levels deep", filename,
                       _event_mark(event), code="appspec-too-deep", agent_class=None)
        if isinstance(event, ev.ScalarEvent):
            tag, explicit = resolved(event, yn.ScalarNode, event.value)
            # libyaml reports the plain style as '', the pure-Python parser as None. What Psych sees:
            # "quoted" is libyaml's quoted_implicit (not plain, no tag), and the raw tag
            return ScalarNode(tag=tag, value=event.value, mark=_event_mark(event), style=event.style or None,
                              psych_quoted=bool(event.implicit[1]), psych_tag=event.tag,
                              explicit_tag=explicit, anchor=event.anchor)
        if isinstance(event, ev.SequenceStartEvent):
            tag, explicit = resolved(event, yn.SequenceNode, None)
            seq = SequenceNode(tag=tag, value=[], mark=_event_mark(event), explicit_tag=explicit,
                               anchor=event.anchor)
            while not isinstance(nxt := loader.get_event(), ev.SequenceEndEvent):
                seq.value.append(compose(nxt, depth + 1))
            return seq
        if isinstance(event, ev.MappingStartEvent):
            tag, explicit = resolved(event, yn.MappingNode, None)
            mapping = MappingNode(tag=tag, value=[], mark=_event_mark(event), explicit_tag=explicit,
                                  anchor=event.anchor)
            while not isinstance(nxt := loader.get_event(), ev.MappingEndEvent):
                key = compose(nxt, depth + 1)
                mapping.value.append((key, compose(loader.get_event(), depth + 1)))
            return mapping
        # the parser only yields the events above here
        raise _err(f"unexpected YAML event {event!r}", filename, None,  # pragma: no cover
                   code="yaml-syntax", agent_class=None)

    try:
        loader.get_event()                 # StreamStart
        first = loader.get_event()
        if isinstance(first, ev.StreamEndEvent):
            return None
        root = compose(loader.get_event(), 1)  # after DocumentStart
        loader.get_event()                 # DocumentEnd: Psych stops after the first document
        return root
    except yaml.YAMLError as e:
        raise _syntax_error(e, filename) from None
    finally:
        loader.dispose()


def is_base60_node(node: Node | None) -> TypeGuard[ScalarNode]:
    """Whether a node is a scalar Psych tokenizes and reads as a base-60 number."""
    return (isinstance(node, ScalarNode) and not node.psych_quoted
            and node.psych_tag in (None, "!") and is_base60(node.value))


_RUBY_TAG_PREFIXES = ("!ruby/", "tag:ruby.yaml.org,2002:")


def scalar_value(node: ScalarNode, filename: str = DEFAULT_APPSPEC_NAME) -> ScalarValue:
    """The Ruby value Psych 4 gives a scalar node (as Python: None, bool, int, float, str).

    Like Psych: a quoted or block scalar without a tag is a string; an untagged plain scalar, or one
    tagged ``!``, ``!!int``, ``!!bool``, ``!!null`` or any tag Psych has no rule for, is tokenized
    (psych_tokenize, whatever the tag says); ``!!str`` keeps the text; ``!!float`` is ``Float()`` of the
    tokenized value; ``!!binary`` is base64-decoded. Ruby object tags are refused."""
    v = node.value
    tag = node.psych_tag
    try:
        if node.psych_quoted:
            return v
        if tag is None or tag == "!":
            return psych_tokenize(v)
        if tag in (_TAG + "str", "!str"):
            return v
        if tag in (_TAG + "binary", "!binary"):
            import base64
            import binascii
            try:
                return base64.b64decode(re.sub(r"[^A-Za-z0-9+/=]", "", v) + "===").decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                return ""
        if tag in (_TAG + "float", "!float"):
            t = psych_tokenize(v)
            if isinstance(t, bool) or t is None:
                raise PsychRefused("TypeError", f"can't convert {ruby_to_s(t) or 'nil'} into Float")
            return float(t) if isinstance(t, (int, float)) else _ruby_float_of(t)
        if tag.startswith(_RUBY_TAG_PREFIXES):
            raise _err(f"unsupported YAML tag {tag} on {v!r}", filename, node_mark(node),
                       code="yaml-unsupported-tag", agent_class=None, hint="remove the tag")
        return psych_tokenize(v)
    except PsychRefused as e:
        if e.cls == "Psych::DisallowedClass":
            raise _err(e.message, filename, node_mark(node), code="yaml-disallowed-class",
                       agent_class=e.cls, hint="quote the value to make it a string") from None
        raise _err(f"{e.message} (the agent crashes reading {v!r})", filename, node_mark(node),
                   code="yaml-invalid-number", agent_class=None, hint="quote the value to make it a string") from None


def _check_loadable(root: Node, filename: str) -> None:
    """What Psych's conversion to Ruby objects rejects, first in document order."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.id == "alias":
            raise _alias_error(node, filename)
        if node.id == "scalar":
            scalar_value(node, filename)
        elif node.id == "sequence":
            stack.extend(reversed(node.value))
        else:
            if node.tag not in (_TAG + "map", _TAG + "omap", _TAG + "set") and node.tag != "!":
                raise _err(f"unsupported YAML tag {node.tag}", filename, node_mark(node),
                           code="yaml-unsupported-tag", agent_class=None, hint="remove the tag")
            for k, v in reversed(node.value):
                stack.append(v)
                stack.append(k)
        if node.id == "sequence" and node.tag not in (_TAG + "seq", "!"):
            raise _err(f"unsupported YAML tag {node.tag}", filename, node_mark(node),
                       code="yaml-unsupported-tag", agent_class=None, hint="remove the tag")


HashKey: TypeAlias = "tuple[str, object]"
MappingEntry: TypeAlias = "tuple[Node, Node, RubyValue]"  # (key node, value node, key value)


def _hash_key(value: object, node: Node) -> HashKey:
    # Ruby hash keys: 1, 1.0 and true are different keys; unhashable keys are compared by identity
    if isinstance(value, (str, int, float, bool)) or value is None:
        return (type(value).__name__, value)
    return ("node", id(node))


def mapping_entries(node: MappingNode, filename: str = DEFAULT_APPSPEC_NAME) -> dict[HashKey, MappingEntry]:
    """A mapping node as Ruby sees it: {hash key: (key node, value node, key value)}, in order, later
    duplicates replacing the value in place, ``<<`` merging a mapping's entries."""
    out: dict[HashKey, MappingEntry] = {}
    for k, v in node.value:
        kv = to_python(k, filename)
        if kv == "<<" and k.id == "scalar" and k.tag == _TAG + "merge" and v.id == "mapping":
            out.update(mapping_entries(v, filename))
            continue
        out[_hash_key(kv, k)] = (k, v, kv)
    return out


def to_python(node: Node | None, filename: str = DEFAULT_APPSPEC_NAME) -> RubyValue:
    """The loaded value of a node (mappings as ``_RubyHash``), for messages and plain values."""
    if node is None:
        return None
    if node.id == "alias":
        raise _alias_error(node, filename)
    if node.id == "scalar":
        return scalar_value(node, filename)
    if node.id == "sequence":
        return [to_python(x, filename) for x in node.value]
    return _RubyHash([(kv, to_python(v, filename)) for _k, v, kv in mapping_entries(node, filename).values()])


# ---------------------------------------------------------------------------------------------------
# Which compute platform: an Amazon ECS or AWS Lambda appspec (agent.appspec_platforms models and checks
# them; cdsim deploys none: the parser refuses them with UnsupportedPlatform)

PLATFORM_RESOURCE_TYPES = {"ecs": "AWS::ECS::Service", "lambda": "AWS::Lambda::Function"}
PLATFORM_HOOK_EVENTS = {
    "ecs": ("BeforeInstall", "AfterInstall", "AfterAllowTestTraffic", "BeforeAllowTraffic", "AfterAllowTraffic"),
    "lambda": ("BeforeAllowTraffic", "AfterAllowTraffic"),
}
_ECS_PROPERTIES = frozenset(("taskdefinition", "loadbalancerinfo", "platformversion", "networkconfiguration",
                             "capacityproviderstrategy", "containername", "containerport"))
_LAMBDA_PROPERTIES = frozenset(("name", "alias", "currentversion", "targetversion"))


def key_text(node: Node) -> str | None:
    """A scalar's text when it reads as a string; None otherwise (never raises)."""
    if node.id != "scalar":
        return None
    try:
        v = scalar_value(node)
    except AppSpecError:
        return None
    return v if isinstance(v, str) else None


def string_keys(node: Node | None) -> dict[str, Node]:
    """A mapping node's string keys, lower-cased -> value node (the first of duplicates); {} for others."""
    out: dict[str, Node] = {}
    if node is not None and node.id == "mapping":
        for k, v in node.value:
            text = key_text(k)
            if text is not None:
                out.setdefault(text.lower(), v)
    return out


def detect_platform(root: Node | None) -> str | None:
    """'ecs', 'lambda', '' (an ECS or Lambda appspec whose kind cannot be told) or None (EC2/On-Premises).

    An appspec is for ECS or Lambda when it has no ``os``, ``files`` or ``permissions`` and has a
    ``resources`` key (any case, or a near miss of it) or a ``hooks`` list (EC2's hooks are a mapping).
    Its kind comes from the resource's ``Type``, else from its properties, else from its hook events."""
    import difflib

    top = string_keys(root)
    if not top or {"os", "files", "permissions"} & top.keys():
        return None
    resources_key = "resources" if "resources" in top else next(
        iter(difflib.get_close_matches("resources", list(top), n=1, cutoff=0.8)), None)
    hooks = top.get("hooks")
    if resources_key is None and (hooks is None or hooks.id != "sequence"):
        return None
    resources = top.get(resources_key) if resources_key else None
    items = (resources.value if resources is not None and resources.id == "sequence"
             else [resources] if resources is not None and resources.id == "mapping" else [])
    props: set[str] = set()
    for item in items:
        for body in string_keys(item).values():
            fields = string_keys(body)
            kind = key_text(fields["type"]) if "type" in fields else None
            for platform, type_name in PLATFORM_RESOURCE_TYPES.items():
                if kind is not None and kind.lower() == type_name.lower():
                    return platform
            props.update(string_keys(fields.get("properties")))
    if props & _ECS_PROPERTIES:
        return "ecs"
    if props & _LAMBDA_PROPERTIES:
        return "lambda"
    # events of "- Event: FunctionName" entries (an EC2 hook written as a list has scripts, not a name)
    events = {key_text(k) for item in (hooks.value if hooks is not None and hooks.id == "sequence" else [])
              if item.id == "mapping" for k, v in item.value if v.id == "scalar"}
    if events & (set(PLATFORM_HOOK_EVENTS["ecs"]) - set(PLATFORM_HOOK_EVENTS["lambda"])):
        return "ecs"
    if resources_key is None and not events & set(PLATFORM_HOOK_EVENTS["ecs"]):
        return None  # a hooks list of EC2 events only: an EC2 appspec written wrong, the agent's errors say so
    return ""


def msg_unsupported_platform(platform: str) -> str:
    """cdsim's message (not the agent's) for a deployment of an ECS or Lambda appspec."""
    what = {"ecs": "an Amazon ECS", "lambda": "an AWS Lambda"}.get(platform, "an Amazon ECS or AWS Lambda")
    return (f"this is {what} appspec (Resources, no os): cdsim deploys EC2/On-Premises appspecs only; "
            "check this one with cdsim validate")


def _unsupported(platform: str, root: Node, filename: str) -> UnsupportedPlatform:
    mark = node_mark(root)
    return UnsupportedPlatform(msg_unsupported_platform(platform), code="unsupported-platform", file=filename,
                               line=mark.line, column=mark.column, hint=f"cdsim validate {filename}")


def refuse_platform_appspec(data: str | bytes, filename: str = DEFAULT_APPSPEC_NAME) -> None:
    """Raise UnsupportedPlatform for an Amazon ECS or AWS Lambda appspec, so that a deployment refuses it
    before anything runs; an EC2 appspec, or one that does not parse (the deployment says why), passes."""
    if has_top_level_os(data):
        return   # the common case, without composing the document
    try:
        root = compose_appspec(data, filename)
    except AppSpecError:
        return
    platform = detect_platform(root)
    if platform is not None and root is not None:
        raise _unsupported(platform, root, filename)


_TOP_LEVEL_OS = re.compile(rb"""^["']?os["']?[ \t]*:""", re.MULTILINE)


def has_top_level_os(data: str | bytes) -> bool:
    """Whether a line starts with an ``os:`` key: an EC2/On-Premises appspec (detect_platform gives None),
    told without composing it."""
    return _TOP_LEVEL_OS.search(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data) is not None


# ---------------------------------------------------------------------------------------------------
# The parser (agent order, §5.2)

class _Crash(enum.Enum):
    """A value the agent crashes on, already reported: the entry it belongs to is left out."""

    CRASH = "crash"


_CRASH: Final = _Crash.CRASH


def _kind(node: Node | None) -> str:
    if node is None:
        return "nothing"
    if node.id == "mapping":
        return "a mapping"
    if node.id == "sequence":
        return "a list"
    v = to_python(node)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {ruby_to_s(v)}"
    if isinstance(v, (int, float)):
        return f"the number {ruby_to_s(v)}"
    return f"the string {ruby_inspect(v)}"


class _Parser:
    """Builds an AppSpec from the composed document; ``collect`` keeps going after a problem."""

    def __init__(self, filename: str, collect: bool):
        self.filename = filename
        self.collect = collect
        self.problems: list[AppSpecError] = []
        self.deferred: list[AppSpecError] = []

    # -- reporting
    def fail(self, message: str, node: Node | None, *, code: str, agent: bool = True, hint: str | None = None,
             later: bool = False, mark: Mark | None = None) -> None:
        """Record a problem. ``agent``: the agent's own message; ``later``: the agent only crashes on it
        while installing, so its parse errors come first."""
        e = _err(message, self.filename, mark or (node_mark(node) if node is not None else None),
                 code=code, agent_class="AppSpecValidationException" if agent else None, hint=hint)
        if self.collect:
            self.problems.append(e)
        elif later:
            self.deferred.append(e)
        else:
            raise e

    def crash(self, what: str, expected: str, node: Node | None, *, later: bool = False,
              hint: str | None = None) -> None:
        """A value the agent does not check and crashes on: our message, naming the key."""
        self.fail(f"{what} must be {expected}, not {_kind(node)} (the agent fails the deployment "
                  "with an internal error on this)", node, code="appspec-invalid", agent=False,
                  later=later, hint=hint)

    # -- access the Ruby way
    def val(self, node: Node | None) -> RubyValue:
        return None if node is None else to_python(node, self.filename)

    def indexable(self, node: Node, what: str) -> bool:
        """Whether Ruby's ``node[key]`` works: on a Hash and a String; anything else crashes."""
        if node.id == "mapping" or isinstance(self.val(node), str):
            return True
        self.crash(what, "a mapping", node)
        return False

    def index(self, node: Node, key: str) -> Node | None:
        """Ruby ``node[key]`` on an indexable node: a Hash lookup; on a String a substring test."""
        if node.id == "mapping":
            hit = mapping_entries(node, self.filename).get(("str", key))
            return hit[1] if hit else None
        v = self.val(node)
        return (ScalarNode(tag=_TAG + "str", value=key, mark=node.mark, style="'", psych_quoted=True)
                if isinstance(v, str) and key in v else None)

    # -- the document
    def build(self, root: Node | None) -> AppSpec | None:
        if root is None or (root.id == "scalar" and self.val(root) in (None, False)):
            self.fail(MSG_EMPTY, root, code="appspec-empty", mark=None if root is not None else Mark(1, 1))
            return None
        if root.id == "sequence" or (root.id == "scalar" and not isinstance(self.val(root), str)):
            self.crash("the appspec", "a mapping of keys (version, os, files, permissions, hooks)", root)
            return None
        version = self.parse_version(root)
        os_ = self.parse_os(root)
        hooks = self.parse_hooks(root)
        files = self.parse_files(root)
        permissions = self.parse_permissions(root)
        feb = self.parse_file_exists_behavior(root)
        if self.deferred:
            raise self.deferred[0]
        return AppSpec(version=version, os=os_ if isinstance(os_, str) else ruby_to_s(os_),
                       files=files, permissions=permissions, hooks=hooks, file_exists_behavior=feb,
                       filename=self.filename)

    def parse_version(self, root: Node) -> RubyValue:
        node = self.index(root, "version")
        v = self.val(node)
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0):
            hint = None
            if isinstance(v, str) and v.strip() in ("0", "0.0"):
                hint = "write version: 0.0 without quotes (the agent compares with the number 0.0)"
            self.fail(_msg_version(ruby_to_s(v)), node or root, code="invalid-version", hint=hint)
        return v

    def parse_os(self, root: Node) -> RubyValue:
        node = self.index(root, "os")
        v = self.val(node)
        platform = detect_platform(root) if node is None else None
        if platform is not None:   # Resources and no os: ECS or Lambda, which cdsim does not deploy
            e = _unsupported(platform, root, self.filename)
            if not self.collect:
                raise e
            self.problems.append(e)
            return v
        if v != "linux" or not isinstance(v, str):
            self.fail(_msg_os(ruby_to_s(v)), node or root, code="unsupported-os",
                      hint="write os: linux (lower case; cdsim runs Linux deployments)")
        return v

    def parse_hooks(self, root: Node) -> tuple[tuple[str, tuple[HookScript, ...]], ...]:
        node = self.index(root, "hooks")
        if node is None or self.val(node) in (None, False):
            return ()
        if node.id != "mapping":
            self.crash("hooks", "a mapping of event names to lists of scripts", node)
            return ()
        out: list[tuple[str, tuple[HookScript, ...]]] = []
        for _k, scripts_node, name in mapping_entries(node, self.filename).values():
            if scripts_node.id == "scalar" and self.val(scripts_node) is None:
                continue  # a null hook is no hook at all (§5.5)
            if scripts_node.id != "sequence":
                self.crash(f"hooks.{ruby_to_s(name)}", "a list of scripts (- location: ...)", scripts_node)
                continue
            scripts: list[HookScript] = []
            for item in scripts_node.value:
                s = self.parse_script(item, ruby_to_s(name))
                if s is not None:
                    scripts.append(s)
            out.append((ruby_to_s(name), tuple(scripts)))
        return tuple(out)

    def parse_script(self, node: Node, event: str) -> HookScript | None:
        if node.id != "mapping":
            self.crash(f"each script of hooks.{event}", "a mapping with a location", node,
                       hint="write - location: path/to/script.sh")
            return None
        entries = mapping_entries(node, self.filename)

        def get(key: str) -> Node | None:
            hit = entries.get(("str", key))
            return hit[1] if hit else None

        loc_node = get("location")
        loc_v = self.val(loc_node)
        location = _ruby_strip(ruby_to_s(loc_v)) if loc_v is not None else ""
        if not location:
            self.fail(MSG_NO_LOCATION, loc_node or node, code="script-no-location")
            return None
        runas_node = get("runas")
        runas_v = self.val(runas_node)
        runas = None if runas_v is None else _ruby_strip(ruby_to_s(runas_v))
        if runas and not valid_user_name(runas):
            # cdsim, not the agent: the agent hands the value to su, which reads "--help" or "-c id"
            # as options (the hook "succeeds" without running); checked after the agent's own errors
            self.fail(msg_invalid_runas(runas), runas_node, code="invalid-runas", agent=False, later=True,
                      hint="runas takes a user name: letters, digits, '.', '_', '-' (not first), "
                           "and '$' only at the end")
        sudo_v = self.val(get("sudo"))
        t_node = get("timeout")
        t = self.val(t_node)
        timeout = DEFAULT_TIMEOUT
        if t is not None and t is not False:
            if t is True or isinstance(t, (list, _RubyHash)) or (isinstance(t, float) and not math.isfinite(t)):
                self.crash(f"the timeout of {location}", "a whole number of seconds", t_node)
                return None
            timeout = int(t) if isinstance(t, (int, float)) else _ruby_str_to_i(t)
            if timeout <= 0:
                if is_base60_node(t_node):
                    read_as = (f"the agent (Psych, YAML 1.1) reads {t_node.value} as the base-60 number "
                               f"{ruby_to_s(t)}, hence {timeout} s; ")
                elif isinstance(t, int):
                    read_as = ""
                else:
                    read_as = f"the agent reads {ruby_inspect(t)} as {timeout}; "
                self.fail(MSG_TIMEOUT, t_node, code="invalid-timeout",
                          hint=read_as + "give a whole number of seconds above 0")
                return None
        if runas and not valid_user_name(runas):
            return None
        return HookScript(location=location, timeout=timeout, runas=runas,
                          sudo=sudo_v is not None and sudo_v is not False, mark=node_mark(node))

    def parse_files(self, root: Node) -> tuple[FileMapping, ...]:
        node = self.index(root, "files")
        if node is None or self.val(node) in (None, False):
            return ()
        if node.id != "sequence":
            self.crash("files", "a list of - source: / destination: entries", node)
            return ()
        out: list[FileMapping] = []
        for item in node.value:
            if item.id == "scalar" and self.val(item) is None:
                self.crash("each files entry", "a mapping with source and destination", item)
                continue
            if not self.indexable(item, "each files entry"):
                continue
            src_node = self.index(item, "source")
            dst_node = self.index(item, "destination")
            src, dst = self.val(src_node), self.val(dst_node)
            if src is None:
                self.fail(MSG_NO_SOURCE, item, code="file-no-source")
                continue
            if dst is None:
                self.fail(_msg_no_destination(ruby_to_s(src)), item, code="file-no-destination")
                continue
            for what, v, n in (("source", src, src_node), ("destination", dst, dst_node)):
                if not isinstance(v, str):
                    self.crash(f"files {what}", "a path (a string)", n, later=True,
                               hint=f"quote it: {what}: \"{ruby_to_s(v)}\"")
            if isinstance(src, str) and isinstance(dst, str):
                out.append(FileMapping(source=src, destination=dst, mark=node_mark(item)))
        return tuple(out)

    def parse_permissions(self, root: Node) -> tuple[Permission, ...]:
        node = self.index(root, "permissions")
        if node is None or self.val(node) in (None, False):
            return ()
        if node.id != "sequence":
            self.crash("permissions", "a list of - object: entries", node)
            return ()
        out: list[Permission] = []
        for item in node.value:
            p = self.parse_permission(item)
            if p is not None:
                out.append(p)
        return tuple(out)

    def parse_permission(self, node: Node) -> Permission | None:
        if node.id != "mapping":
            self.crash("each permissions entry", "a mapping with an object", node)
            return None
        entries = mapping_entries(node, self.filename)

        def get(key: str) -> Node | None:
            hit = entries.get(("str", key))
            return hit[1] if hit else None

        obj_node = get("object")
        obj = self.val(obj_node)
        if obj is None:
            self.fail(MSG_NO_OBJECT, node, code="permission-no-object")
            return None
        excepts_ok = True
        # the agent builds the entry's options in this order, then checks the object is not blank
        pattern_node = get("pattern")
        pattern = self.val(pattern_node)
        if pattern is None or pattern is False:
            pattern = "**"
        elif not isinstance(pattern, str):
            self.crash("pattern", "a string", pattern_node, later=True)
        except_node = get("except")
        excepts: list[str] = []
        ev = self.val(except_node)
        if except_node is not None and ev is not None and ev is not False:
            if except_node.id != "sequence":
                self.crash("except", "a list of patterns", except_node)
                excepts_ok = False
            else:
                for item in except_node.value:
                    v = self.val(item)
                    if isinstance(v, str):
                        excepts.append(v)
                    else:
                        self.crash("each except pattern", "a string", item, later=True)
                        excepts_ok = False
        types = self.parse_types(get("type"))
        owner = self.parse_name(get("owner"), "owner")
        group = self.parse_name(get("group"), "group")
        mode = self.parse_mode(get("mode"))
        acls = self.parse_acls(get("acls"))
        context = self.parse_context(get("context"))
        obj_s = _ruby_strip(ruby_to_s(obj))
        if not obj_s:
            self.fail(MSG_NO_OBJECT, obj_node, code="permission-no-object")
            return None
        if (not excepts_ok or not isinstance(pattern, str) or types is None or owner is _CRASH
                or group is _CRASH or mode is _CRASH or acls is _CRASH or context is _CRASH):
            return None
        return Permission(object=obj_s, pattern=pattern, except_=tuple(excepts), types=types, owner=owner,
                          group=group, mode=mode, acls=acls, context=context, mark=node_mark(node))

    def parse_types(self, node: Node | None) -> tuple[str, ...] | None:
        v = self.val(node)
        if node is None or v is None or v is False:
            return ("file", "directory")
        if node.id != "sequence":
            self.crash("type", "a list (type: [file] or type: [directory])", node)
            return None
        types: list[str] = []
        for item in node.value:
            t = self.val(item)
            if not isinstance(t, str) or t not in ("file", "directory"):
                self.fail(_msg_type(ruby_to_s(t)), item, code="invalid-permission-type",
                          hint="each type is file or directory")
                return None
            types.append(t)
        return tuple(types)

    def parse_name(self, node: Node | None, what: str) -> str | _Crash | None:
        v = self.val(node)
        if v is None or v is False:
            return None
        if not isinstance(v, str):
            self.crash(what, "a name (a string)", node, later=True,
                       hint=f"the agent looks {what}s up by name only; quote it: {what}: \"{ruby_to_s(v)}\"")
            return _CRASH
        return v

    def parse_mode(self, node: Node | None) -> str | _Crash | None:
        if node is None:
            return None
        v = self.val(node)
        if v is None:
            return None
        mode = ruby_to_s(v).rjust(3, "0")
        if len(mode) > 4:
            self.fail(_msg_mode_length(mode), node, code="invalid-mode")
            return _CRASH
        for ch in mode:
            if ch not in "01234567":
                hint = None
                if is_base60_node(node):
                    hint = (f"YAML 1.1 (Psych) reads the unquoted {node.value} as the base-60 number {ruby_to_s(v)}; "
                            "write the mode as octal digits, e.g. mode: '644'")
                elif (isinstance(v, int) and node.id == "scalar" and node.style is None
                      and node.value.startswith("0")):
                    hint = (f"YAML reads the unquoted {node.value} as the octal number {v}; "
                            f"quote it: mode: '{node.value}'")
                self.fail(_msg_mode_char(mode, ch), node, code="invalid-mode", hint=hint)
                return _CRASH
        return mode

    def parse_acls(self, node: Node | None) -> tuple[AclEntry, ...] | _Crash | None:
        v = self.val(node)
        if node is None or v is None:
            return None
        if node.id != "sequence":
            self.crash("acls", "a list of ACL entries (- u:bob:rw)", node)
            return _CRASH
        out: list[AclEntry] = []
        for item in node.value:
            ace = self.val(item)
            if not isinstance(ace, str):
                self.crash("each ACL entry", "a string such as u:bob:rw", item)
                return _CRASH
            entry = self.parse_ace(ace, item)
            if entry is None:
                return _CRASH
            out.append(entry)
        return tuple(out)

    def parse_ace(self, ace: str, node: Node) -> AclEntry | None:
        parts = ace.split(":")[::-1]  # perms, name, type, default
        words = {"u": "user", "user": "user", "g": "group", "group": "group", "m": "mask",
                 "mask": "mask", "o": "other", "other": "other"}

        def invalid() -> AclEntry | None:
            self.fail(_msg_acl_invalid(ace), node, code="invalid-acl",
                      hint="write [d:]{u|g|m|o}:[name]:perms, e.g. u:bob:rw or d:g:dev:r")
            return None

        if not 2 <= len(parts) <= 4:
            return invalid()
        default, typ, name = False, None, ""
        if len(parts) == 4:
            if parts[3] not in ("d", "default"):
                return invalid()
            default = True
        if len(parts) >= 3:
            if parts[2] in ("d", "default"):
                if default:
                    return invalid()
                default = True
            elif parts[2] in words:
                typ = words[parts[2]]
            else:
                return invalid()
        if parts[1] in ("m", "mask", "o", "other"):
            if typ is None:
                typ = words[parts[1]]
            else:
                name = words[parts[1]]
        else:
            typ = typ or "user"
            name = parts[1]
        if typ in ("mask", "other") and name:
            return invalid()
        if not default and typ != "mask" and not name:
            self.fail(_msg_acl_base(ace), node, code="acl-base-entry",
                      hint="set the owner/group/other bits with mode instead")
            return None
        perms = parts[0]
        if len(perms) == 1 and perms in "01234567":
            bits = int(perms)
            r, w, x = bool(bits & 4), bool(bits & 2), bool(bits & 1)
        else:
            for ch in perms:
                if ch not in "rwx-":
                    self.fail(_msg_acl_char(ace, ch), node, code="invalid-acl",
                              hint="permissions are one octal digit or letters from rwx-")
                    return None
            r, w, x = "r" in perms, "w" in perms, "x" in perms
        return AclEntry(default=default, type=typ, name=name,
                        perms=("r" if r else "-") + ("w" if w else "-") + ("x" if x else "-"))

    def parse_context(self, node: Node | None) -> Context | _Crash | None:
        if node is None or self.val(node) is None:
            return None
        if not self.indexable(node, "context"):
            return _CRASH
        type_node = self.index(node, "type")
        if self.val(type_node) is None:
            self.fail(_msg_context_type(ruby_inspect(self.val(node))), node, code="invalid-context",
                      hint="context needs a type, e.g. type: httpd_sys_content_t")
            return _CRASH
        name_node = self.index(node, "name")
        range_node = self.index(node, "range")
        rng = None
        if range_node is None or self.val(range_node) is None:
            # §6.7: the agent crashes writing install.json for a context without range
            self.fail("a context without a range makes the agent crash while installing (it writes an "
                      "empty install.json and fails the deployment)", node, code="context-without-range",
                      agent=False, later=True, hint="add a range, e.g. range: s0")
            return _CRASH
        rv = self.val(range_node)
        if not isinstance(rv, str):
            self.crash("context range", "a string such as s0:c0.c5", range_node)
            return _CRASH
        rng = self.parse_range(rv, range_node)
        if rng is None:
            return _CRASH
        user = self.val(name_node)
        return Context(user=None if user is None else ruby_to_s(user), type=ruby_to_s(self.val(type_node)),
                       range=rng)

    def parse_range(self, rng: str, node: Node) -> str | None:
        """SELinux range ``s#[-s#][:c#[.c#](,c#[.c#])*]`` -> canonical form, or None after a failure."""

        class Bad(Exception):
            pass

        def bad(msg: str) -> NoReturn:
            self.fail(msg, node, code="invalid-context-range",
                      hint="a range looks like s0, s0-s3 or s0:c0.c5,c9")
            raise Bad

        def parts_of(text: str, sep: str) -> list[str]:
            parts = text.split(sep, 1)
            if any(p == "" for p in parts):
                bad(f"invalid range part {text}")
            return parts

        def number(text: str, letter: str, label: str, limit: int | None) -> int:
            if len(text) < 2 or not text.startswith(letter) or not re.fullmatch(r"[0-9]*", text[1:]):
                bad(f"invalid {label} {text}")
            n = int(text[1:] or "0")
            if limit is not None and n > limit:
                bad(f"invalid {label} {text}")
            return n

        try:
            parts = parts_of(rng, ":")
            sens = parts_of(parts[0], "-")
            low = number(sens[0], "s", "sensitivity", None)
            high = low
            if len(sens) == 2:
                high = number(sens[1], "s", "sensitivity", None)
                if high < low:
                    self.fail(_msg_range(rng), node, code="invalid-context-range")
                    return None
            out = f"s{low}" + (f"-s{high}" if high != low else "")
            if len(parts) == 2:
                pieces = parts[1].split(",")
                while pieces and pieces[-1] == "":  # Ruby's split drops trailing empty fields
                    pieces.pop()
                cats: list[int] = []
                for piece in pieces:
                    if "." in piece:
                        a, b = parts_of(piece, ".")
                        lo = number(a, "c", "category", 1023)
                        hi = number(b, "c", "category", 1023)
                        if hi < lo:
                            bad(f"invalid category range {a}.{b}")
                        cats.extend(range(lo, hi + 1))
                    else:
                        cats.append(number(piece, "c", "category", 1023))
                if len(set(cats)) != len(cats):
                    bad("duplicate categories")
                cats.sort()
                runs: list[str] = []
                i = 0
                while i < len(cats):
                    j = i
                    while j + 1 < len(cats) and cats[j + 1] == cats[j] + 1:
                        j += 1
                    runs.append(f"c{cats[i]}" if i == j else f"c{cats[i]}.c{cats[j]}")
                    i = j + 1
                out += ":" + ",".join(runs)
            return out
        except Bad:
            return None

    def parse_file_exists_behavior(self, root: Node) -> str | None:
        node = self.index(root, "file_exists_behavior")
        v = self.val(node)
        if v is None:
            return None
        if not isinstance(v, str) or v not in FILE_EXISTS_BEHAVIORS:
            hint = (f"write {v.upper()} in upper case" if isinstance(v, str) and v.upper() in FILE_EXISTS_BEHAVIORS
                    else "one of DISALLOW, OVERWRITE, RETAIN")
            self.fail(_msg_file_exists_behavior(ruby_to_s(v)), node, code="invalid-file-exists-behavior",
                      hint=hint)
            return None
        return v


def parse_appspec(text: str | bytes, filename: str = DEFAULT_APPSPEC_NAME) -> AppSpec:
    """Parse an appspec the agent's way; raise AppSpecError with the agent's first error."""
    root = compose_appspec(text, filename)
    if root is not None:
        _check_loadable(root, filename)
    spec = _Parser(filename, collect=False).build(root)
    assert spec is not None, "without collect, every problem raises"
    return spec


def appspec_problems(text: str | bytes, filename: str = DEFAULT_APPSPEC_NAME
                     ) -> tuple[Node | None, AppSpec | None, list[AppSpecError]]:
    """Every parse problem at once, for ``cdsim validate``: (root node or None, AppSpec or None,
    problems). The first problem the agent would raise is among them (it is ``parse_appspec``'s).
    With problems, the AppSpec holds the entries that parsed (bad ones left out), or is None."""
    try:
        root = compose_appspec(text, filename)
        if root is not None:
            _check_loadable(root, filename)
    except AppSpecError as e:
        return None, None, [e]
    parser = _Parser(filename, collect=True)
    spec = parser.build(root)
    problems = list(parser.problems)
    try:
        first = parse_appspec(text, filename)
    except AppSpecError as e:
        if not any(p.message == e.message for p in problems):
            problems.insert(0, e)
        return root, spec, problems
    return root, (first if not problems else spec), problems
