"""The agent's rules for appspec ``permissions`` (behaviour doc §6.6, §6.7): which paths an entry
matches, the checks on file objects, and the full ACL handed to ``setfacl``.

Pure: no I/O and no imports of I/O modules; agent.install generates and executes the instructions
with these rules, agent.plan explains them. Messages are the agent's, verbatim.
"""
from __future__ import annotations

import re
from functools import lru_cache

from agent.appspec import AclEntry, Permission
from agent.errors import DeploymentError
from agent.records import field
from agent.records import record as dataclass  # dataclasses' semantics, cheaper start-up
from agent.ruby import inspect_list as ruby_inspect_list

# Why a candidate path below (or not below) a permission's object is or is not affected.
MATCH = "match"
NOT_BELOW = "not-below"        # not a descendant of the object (the object itself included, Q8)
DEEPER = "deeper"              # left out by `pattern`: not a direct child (only `**` reaches deeper)
PATTERN = "pattern"            # left out by `pattern`: a direct child that does not match it
EXCEPT = "except"              # left out by an `except` entry


@lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    # Only '*' is special (any run of characters, possibly empty); '?' and '[' are literal.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """The agent's pattern rule: case-sensitive, only ``*`` is a wildcard."""
    return _glob(pattern).fullmatch(name) is not None


def classify(candidate: str, obj: str, pattern: str, excepts: tuple[str, ...]) -> str:
    """MATCH, NOT_BELOW, DEEPER, PATTERN or EXCEPT for ``candidate`` against an absolutised ``obj``.

    The object itself never matches (only paths that start with ``obj + '/'``); a pattern other than
    ``**`` and every ``except`` entry only ever match direct children.
    """
    n = candidate.rstrip("/") or "/"
    # The agent compares with object + "/" as is: an object "/" therefore matches nothing ("//").
    base = obj + "/"
    if not n.startswith(base):
        return NOT_BELOW
    rel = n[len(base):]
    direct = "/" not in rel
    if pattern != "**":
        if not direct:
            return DEEPER
        if not glob_match(pattern, rel):
            return PATTERN
    if direct and any(glob_match(e, rel) for e in excepts):
        return EXCEPT
    return MATCH


def check_file_object(permission: Permission) -> None:
    """A permission whose object is a file installed by this deployment: no pattern, no except."""
    if permission.pattern != "**":
        raise DeploymentError(
            f"The deployment failed because the application specification file includes an object "
            f"({permission.object}) with an invalid pattern ({permission.pattern}), such as a pattern for a "
            f"file applied to a directory. Correct the permissions section of the AppSpec file, and then "
            f"try again.")
    if permission.except_:
        raise DeploymentError(
            f"The deployment failed because the except parameter for a pattern in the permissions section "
            f"({ruby_inspect_list(permission.except_)}) for the object named {permission.object} contains "
            f"an invalid format. Update the AppSpec file, and then try again.")


def check_file_acl(permission: Permission) -> None:
    """Default ACL entries make sense on directories only."""
    if permission.acls and any(e.default for e in permission.acls):
        raise DeploymentError(
            "The deployment failed because the -d parameter has been specified to apply an acl setting to "
            "a file. This parameter is supported for directories only. Update the AppSpec file, and then "
            "try again.")


def specified_twice_message(path: str) -> str:
    return (f"The deployment failed because the permissions setting for ({path}) is specified more than "
            f"once in the application specification file. Update the files section of the AppSpec file, "
            f"and then try again.")


def _bits(mode: int, shift: int) -> str:
    b = (mode >> shift) & 7
    return ("r" if b & 4 else "-") + ("w" if b & 2 else "-") + ("x" if b & 1 else "-")


@dataclass
class AclAccumulator:
    """The ACL the agent builds for ONE permission entry, shared by every path that entry matches.

    The agent appends the derived base/mask entries to the entry's ACL object and never clears it
    (Q9): the second path gets the first path's base, mask and default entries followed by its own
    base entries. setfacl lets a later duplicate win, so the effective result for a later path is: its
    own user::/group::/other::, but the mask (and default entries) computed for the first path.
    ``next_acl`` reproduces that list; ``effective`` is what setfacl ends up applying.
    """

    entries: list[AclEntry] = field(default_factory=list)
    started: bool = False

    def next_acl(self, aces: tuple[AclEntry, ...], mode: int) -> list[AclEntry]:
        if not self.started:
            self.entries = list(aces)
            self.started = True
        e = self.entries
        e.append(AclEntry(False, "user", "", _bits(mode, 6)))
        e.append(AclEntry(False, "group", "", _bits(mode, 3)))
        e.append(AclEntry(False, "other", "", _bits(mode, 0)))
        named = any(not a.default and a.name and a.type in ("user", "group") for a in e)
        if named and not any(not a.default and a.type == "mask" for a in e):
            e.append(AclEntry(False, "mask", "", _bits(mode, 3)))
        if any(a.default for a in e):
            present = {(a.type, a.name) for a in e if a.default}
            for typ, shift in (("user", 6), ("group", 3), ("other", 0)):
                if (typ, "") not in present:
                    e.append(AclEntry(True, typ, "", _bits(mode, shift)))
            named_default = any(a.default and a.name and a.type in ("user", "group") for a in e)
            if named_default and ("mask", "") not in present:
                group = next(a for a in e if a.default and a.type == "group" and not a.name)
                e.append(AclEntry(True, "mask", "", group.perms))
        return list(e)


def effective(acl: list[AclEntry]) -> list[AclEntry]:
    """What setfacl applies for ``acl``: each (default, type, name) once, the last occurrence winning."""
    last: dict[tuple[bool, str, str], AclEntry] = {}
    for a in acl:
        last.pop((a.default, a.type, a.name), None)
        last[(a.default, a.type, a.name)] = a
    # keep the first-appearance order, which reads naturally in messages and plans
    order: dict[tuple[bool, str, str], None] = {}
    for a in acl:
        order.setdefault((a.default, a.type, a.name), None)
    return [last[k] for k in order]


def acl_text(acl: list[AclEntry]) -> str:
    return ",".join(str(a) for a in acl)
