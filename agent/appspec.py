"""The appspec model (frozen dataclasses) and its parser, with the position of every value.

Pure: no I/O here (the caller reads the file and passes its text). The parser accepts exactly what
the real agent 1.8.1 accepts and rejects what it rejects, with the agent's message text
(behaviour doc §5), prefixed by our location ``appspec.yml:LINE:COL:`` when shown to a user.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 3600
FILE_EXISTS_BEHAVIORS = ("DISALLOW", "OVERWRITE", "RETAIN")


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
