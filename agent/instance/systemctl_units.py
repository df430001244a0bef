"""systemd unit files read as systemd reads them, for the instances' ``systemctl`` stand-in.

Owns the unit-file syntax (sections, ``Key=value``, ``#``/``;`` comments, backslash continuation, an
empty assignment resetting a list, drop-ins merged in order), unit names (``app`` -> ``app.service``),
the command lines of ``Exec*=`` (prefixes ``-@:+!``, C-style quoting, ``$VAR``/``${VAR}``,
specifiers ``%n %N %p %i %%``), ``Environment=`` and ``EnvironmentFile`` text, and time spans
(``TimeoutStartSec=90s``). Pure: no I/O (agent.instance.systemctl_manager reads the files); imports
nothing of cdsim.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
UNIT_SUFFIXES = (".service", ".target", ".socket", ".timer", ".mount", ".path", ".slice", ".scope")
DEFAULT_TIMEOUT = 90.0
_SPAN = re.compile(r"(\d+(?:\.\d+)?)([a-z]*)")


def unit_name(name: str) -> str:
    """The full unit name systemctl uses for ``name``: ``app`` -> ``app.service``. ValueError for a name
    systemd refuses (empty, a slash, a control character, a leading '-')."""
    if not name or "/" in name or name.startswith("-") or any(ord(c) < 32 or c == "\x7f" for c in name) \
            or len(name) > 255:
        raise ValueError(f"Invalid unit name \"{name}\" escaped as \"{name}\".")
    return name if name.endswith(UNIT_SUFFIXES) else name + ".service"


@dataclass
class Unit:
    """One unit: its name, the file it came from, drop-ins, and every section's keys (each key's
    values in order, an empty assignment having reset those before it)."""

    name: str
    path: str
    dropins: list[str] = field(default_factory=list)
    sections: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)   # "FILE:LINE: what", lines systemd ignores

    def values(self, section: str, key: str) -> list[str]:
        return list(self.sections.get(section, {}).get(key, []))

    def get(self, section: str, key: str, default: str = "") -> str:
        found = self.sections.get(section, {}).get(key)
        return found[-1] if found else default

    def flag(self, section: str, key: str, default: bool = False) -> bool:
        value = self.get(section, key).strip().lower()
        if not value:
            return default
        return value in ("1", "yes", "true", "on", "y", "t")

    @property
    def description(self) -> str:
        return self.get("Unit", "Description") or self.name

    @property
    def service_type(self) -> str:
        kind = self.get("Service", "Type")
        if kind:
            return kind
        return "oneshot" if not self.values("Service", "ExecStart") else "simple"

    def specifiers(self) -> dict[str, str]:
        prefix = self.name.rsplit(".", 1)[0]
        stem, _, instance = prefix.partition("@")
        return {"n": self.name, "N": prefix, "p": stem, "i": instance, "I": instance, "%": "%"}


def parse(text: str, unit: Unit, source: str) -> Unit:
    """Add the keys of one unit file or drop-in's ``text`` (read from ``source``) to ``unit``; a line
    systemd ignores (no '=', outside any section) is listed in ``unit.problems``, as systemd logs it."""
    section: str | None = None
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if pending and line[:1] in "#;":
            continue   # systemd skips comment lines inside a continuation
        if line.endswith("\\"):
            if not pending:
                start = number
            pending += line[:-1] + " "
            continue
        if pending:
            line, pending = pending + line, ""
        else:
            start = number
        if line.startswith("["):
            if not line.endswith("]"):
                unit.problems.append(f"{source}:{start}: Invalid section header '{line}'")
                continue
            section = line[1:-1]
            unit.sections.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        if not sep:
            unit.problems.append(f"{source}:{start}: Missing '=', ignoring line.")
            continue
        if section is None:
            unit.problems.append(f"{source}:{start}: Assignment outside of section. Ignoring.")
            continue
        key, value = key.strip(), value.strip()
        values = unit.sections[section].setdefault(key, [])
        if value == "":
            values.clear()
        else:
            values.append(value)
    return unit


def split_words(text: str) -> list[str]:
    """Words of a command line or an ``Environment=`` value, with systemd's quoting: '...' and "...",
    and C escapes (``\\n``, ``\\t``, ``\\\\``, ``\\"``, ``\\'``, ``\\ ``) inside or outside quotes.
    ValueError for an unterminated quote."""
    words: list[str] = []
    escapes = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "s": " "}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\n":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        quote: str | None = None
        started = False
        while i < n:
            c = text[i]
            if quote is None and c in " \t\n":
                break
            if c == "\\" and i + 1 < n:
                nxt = text[i + 1]
                word.append(escapes.get(nxt, nxt))
                i += 2
                started = True
                continue
            if quote is None and c in "'\"":
                quote = c
            elif c == quote:
                quote = None
            else:
                word.append(c)
            started = True
            i += 1
        if quote is not None:
            raise ValueError(f"unbalanced quoting: {text}")
        if started:
            words.append("".join(word))
    return words


@dataclass(frozen=True)
class Command:
    """One ``Exec*=`` line: its argv (variables not yet expanded) and its prefixes."""

    argv: tuple[str, ...]
    line: str              # as written, for ``status``
    ignore_failure: bool   # '-'
    privileged: bool       # '+' / '!' / '!!': run with full privileges (as root)
    no_expand: bool        # ':'
    argv0: str | None      # '@': the second word is argv[0]


def command(value: str, specifiers: dict[str, str]) -> Command:
    """Parse one ``Exec*=`` value; ValueError if it has no program or bad quoting."""
    prefix_chars = ""
    rest = value.lstrip()
    while rest[:1] in ("-", "@", ":", "+", "!"):
        prefix_chars += rest[0]
        rest = rest[1:]
    words = [expand_specifiers(w, specifiers) for w in split_words(rest)]
    if not words:
        raise ValueError(f"no command in {value!r}")
    argv0 = None
    if "@" in prefix_chars:
        if len(words) < 2:
            raise ValueError(f"'@' needs a program and its argv[0]: {value!r}")
        argv0 = words.pop(1)
    return Command(tuple(words), value, "-" in prefix_chars, "+" in prefix_chars or "!" in prefix_chars,
                   ":" in prefix_chars, argv0)


def expand_specifiers(word: str, specifiers: dict[str, str]) -> str:
    out = []
    i = 0
    while i < len(word):
        if word[i] == "%" and i + 1 < len(word) and word[i + 1] in specifiers:
            out.append(specifiers[word[i + 1]])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


def expand_variables(cmd: Command, env: dict[str, str]) -> list[str]:
    """The argv with ``${VAR}`` replaced in place and a word that is only ``$VAR`` split into the
    value's words, as systemd does (unset: empty, and a lone ``$VAR`` then gives no word)."""
    if cmd.no_expand:
        return list(cmd.argv)
    out: list[str] = [cmd.argv[0]]
    for word in cmd.argv[1:]:
        if word.startswith("$") and not word.startswith("${") and _is_name(word[1:]):
            out.extend(env.get(word[1:], "").split())
            continue
        out.append(_expand_braces(word, env))
    return out


def _is_name(text: str) -> bool:
    return bool(text) and (text[0].isalpha() or text[0] == "_") and all(c.isalnum() or c == "_" for c in text)


def _expand_braces(word: str, env: dict[str, str]) -> str:
    out = []
    i = 0
    while i < len(word):
        if word.startswith("${", i):
            end = word.find("}", i + 2)
            if end > 0 and _is_name(word[i + 2:end]):
                out.append(env.get(word[i + 2:end], ""))
                i = end + 1
                continue
        out.append(word[i])
        i += 1
    return "".join(out)


def environment(values: list[str]) -> dict[str, str]:
    """The variables of ``Environment=`` lines, later ones winning; a word without '=' is ignored,
    as systemd does."""
    env: dict[str, str] = {}
    for value in values:
        for word in split_words(value):
            name, sep, val = word.partition("=")
            if sep and _is_name(name):
                env[name] = val
    return env


def environment_file(text: str) -> dict[str, str]:
    """The variables of an ``EnvironmentFile=``: ``KEY=VALUE`` lines, ``#``/``;`` comments, values
    quoted or not (the quotes removed), an ``export`` in front tolerated."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _is_name(name):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
            if raw.strip().split("=", 1)[1].strip()[0] == '"':
                value = value.replace('\\"', '"').replace("\\\\", "\\")
        env[name] = value
    return env


def seconds(value: str, default: float = DEFAULT_TIMEOUT) -> float:
    """A systemd time span (``90``, ``90s``, ``5min 20s``, ``500ms``, ``infinity``) in seconds; infinity
    is ``float('inf')``; an unreadable value gives ``default``."""
    text = value.strip().lower()
    if not text:
        return default
    if text == "infinity":
        return float("inf")
    units = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0, "second": 1.0,
             "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0, "h": 3600.0,
             "hr": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0, "days": 86400.0}
    compact = text.replace(" ", "")
    parts = _SPAN.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        return default
    try:
        return sum(float(number) * units[unit or "s"] for number, unit in parts)
    except (KeyError, ValueError):
        return default


def install_targets(unit: Unit) -> list[str]:
    """The ``.wants`` folders ``enable`` links into: one per ``WantedBy=`` target (and ``RequiredBy=``,
    as ``.requires``)."""
    wants = [f"{target}.wants" for value in unit.values("Install", "WantedBy") for target in value.split()]
    wants += [f"{target}.requires" for value in unit.values("Install", "RequiredBy") for target in value.split()]
    return wants
