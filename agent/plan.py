"""``cdsim plan``: what a deployment's Install would do on the machine this process sees (the host, or
the inside of an instance when `cdsim plan` runs it there), before anything runs.

Owns the plan of one bundle for one deployment group: the paths the previous install's cleanup would
delete, directories to create, files to copy, every collision with what each file_exists_behavior would do
with it, failures the execution would meet (a file where a folder is needed, a missing source, an unknown
owner, a missing setfacl), and per permission entry the changes per path and the paths its pattern,
``except`` or type leaves out, and per hook event whose scripts would run (ApplicationStop: the last
successful deployment's, spec §4.2). It reuses agent.install's generator over a read-only view of the filesystem
in which the cleanup has already happened, so the plan and the Install cannot disagree.

Changes nothing: a directory bundle is read in place; an archive is unpacked into a temporary folder
(removed afterwards) by agent.bundle. Must not import deploy, hooks or the CLI.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from agent import bundle as bundle_mod
from agent import install as inst
from agent import permissions as perm
from agent.appspec import AppSpec, Permission, install_appspec_candidates, parse_appspec
from agent.errors import (
    AppSpecNotFound,
    DeploymentError,
    ExitStatus,
    FileCollision,
    UsageError,
)
from agent.revision import LocalRevision
from agent.state import AGENT_ROOT_DIR as DEFAULT_ROOT_DIR

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DEFAULT_GROUP", "DEFAULT_ROOT_DIR", "Collision", "HookSource", "LeftOut", "PathChange",
           "PermissionPlan", "Plan", "make_plan", "render_text"]

DEFAULT_GROUP = "default-local-deployment-group"

SUCCESS, FILE_COLLISION, FAILED = "success", "file-collision", "deployment-failed"


@dataclass(frozen=True)
class Collision:
    """Something already exists where this deployment installs a file."""

    destination: str
    source: str          # revision-relative
    existing: str        # file | directory | symlink | other

    @staticmethod
    def outcomes() -> dict[str, str]:
        return {"DISALLOW": "the deployment fails",
                "OVERWRITE": "replaced (and deleted by the next deployment's cleanup)",
                "RETAIN": "kept as it is (not listed in the cleanup file)"}


@dataclass(frozen=True)
class PathChange:
    path: str
    kind: str                       # file | directory
    mode: str | None = None
    owner: str | None = None
    group: str | None = None
    acl: tuple[str, ...] | None = None
    context: str | None = None


@dataclass(frozen=True)
class LeftOut:
    path: str
    kind: str
    reason: str                     # deeper | pattern | except | type


@dataclass(frozen=True)
class PermissionPlan:
    object: str                     # as written in the appspec
    resolved: str                   # absolutised
    applies_to: str                 # file | directory | nothing
    note: str
    changes: tuple[PathChange, ...] = ()
    left_out: tuple[LeftOut, ...] = ()


@dataclass(frozen=True)
class HookSource:
    """Which revision's scripts a lifecycle event would run (spec §4.2): this one's, or the last
    successful (or most recent) deployment's, whose scripts run before this revision is even unpacked."""

    event: str
    revision: str                   # this | previous | none
    deployment_id: str | None       # the previous deployment's id (revision "previous")
    archive: str | None             # where the scripts are read from
    appspec: str | None
    scripts: tuple[str, ...] = ()   # paths (this revision: as in the bundle)
    note: str = ""


@dataclass(frozen=True)
class Plan:
    bundle: str
    archive_dir: str                # where the revision was read (a temp folder for archives, now gone)
    appspec_file: str
    deployment_group: str
    root_dir: str
    file_exists_behavior: str
    behavior_from: str              # appspec | command line | default
    cleanup_file: str
    cleanup: inst.CleanupPreview
    mkdirs: tuple[str, ...]
    copies: tuple[tuple[str, str, bool], ...]    # (revision-relative source, destination, replaces)
    collisions: tuple[Collision, ...]
    permissions: tuple[PermissionPlan, ...]
    instructions: tuple[inst.Instruction, ...] = field(repr=False)
    outcome: str = SUCCESS
    error: str | None = None
    problems: tuple[str, ...] = ()  # every failure found (the first is ``error``)
    place: str = "this machine"     # whose files and users were read (said in the text)
    hook_sources: tuple[HookSource, ...] = ()   # per hook event of the default list, in order

    @property
    def exit_status(self) -> ExitStatus:
        return {SUCCESS: ExitStatus.SUCCESS, FILE_COLLISION: ExitStatus.FILE_COLLISION}.get(
            self.outcome, ExitStatus.DEPLOYMENT_FAILED)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON data (``cdsim plan --json``)."""
        d = asdict(self)
        d["instructions"] = [i.to_json() for i in self.instructions]
        d["copies"] = [{"source": s, "destination": t, "replaces": r} for s, t, r in self.copies]
        d["collisions"] = [dict(asdict(c), outcomes=Collision.outcomes()) for c in self.collisions]
        d["exit_status"] = int(self.exit_status)
        return d


def _bundle_type(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tgz", ".tar.gz")):
        return "tgz"
    if lower.endswith(".tar"):
        return "tar"
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tgz"
    return "tar"


def make_plan(bundle: str | None = None, *, deployment_group: str = DEFAULT_GROUP,
              file_exists_behavior: str | None = None, root_dir: str = DEFAULT_ROOT_DIR,
              appspec_filename: str | None = None, bundle_type: str | None = None,
              cwd: str | None = None, place: str = "this machine") -> Plan:
    """Plan the Install of ``bundle`` (a directory or a zip/tar/tgz archive; default: ``cwd``) against
    the files and users this process sees; ``place`` names them in the text.

    Raises AppSpecError/AppSpecNotFound for an invalid or missing appspec, BundleError/UnsafeBundle for a
    bundle that would be refused, UsageError when there is no bundle at that path.
    """
    cwd = cwd or os.getcwd()
    root_dir = os.path.normpath(os.path.join(cwd, root_dir))
    location = os.path.normpath(os.path.join(cwd, bundle or "."))
    if os.path.isdir(location):
        return _plan(location, location, deployment_group, file_exists_behavior, root_dir,
                     appspec_filename, cwd, place)
    if not os.path.isfile(location):
        raise UsageError(f"no bundle at {location}", reference="bundle-not-found")
    kind = bundle_type or _bundle_type(location)
    with tempfile.TemporaryDirectory(prefix="cdsim-plan-") as tmp:
        archive = bundle_mod.fetch_and_unpack(LocalRevision(location, kind), tmp)
        return _plan(location, archive, deployment_group, file_exists_behavior, root_dir,
                     appspec_filename, cwd, place)


def _plan(location: str, archive: str, group: str, cli_behavior: str | None, root_dir: str,
          appspec_filename: str | None, cwd: str, place: str) -> Plan:
    for name in install_appspec_candidates(appspec_filename):
        appspec_path = os.path.join(archive, name)
        if os.path.isfile(appspec_path):
            break
    else:
        raise AppSpecNotFound(f"No such file or directory @ rb_sysopen - {appspec_path}",
                              hint="the bundle needs an appspec.yml at its top level")
    with open(appspec_path, "rb") as f:
        spec = parse_appspec(f.read(), os.path.basename(appspec_path))

    cleanup_file = os.path.join(root_dir, "deployment-instructions", f"{group}-cleanup")
    cleanup = inst.preview_cleanup(cleanup_file)
    view = inst.AfterCleanupView(cleanup.removes)
    behavior = inst.effective_file_exists_behavior(spec, cli_behavior)
    behavior_from = ("appspec" if spec.file_exists_behavior is not None
                     else "command line" if cli_behavior else "default")

    gen = inst.Generator(archive, behavior, cwd, view, collect=True)
    problems: list[tuple[str, str]] = []   # (outcome, message)
    try:
        gen.files(spec)
        if gen.conflicts and behavior not in ("OVERWRITE", "RETAIN"):
            if behavior == "DISALLOW":
                problems.append((FILE_COLLISION, inst.collision_message(gen.conflicts[0].destination)))
            else:
                problems.append((FAILED, inst.invalid_behavior_message(behavior)))
        gen.permissions(spec)
    except FileCollision as e:
        problems.append((FILE_COLLISION, e.message))
    except DeploymentError as e:   # §6.5/§6.6 texts; UnsafeBundle (InvalidInput) propagates
        problems.append((FAILED, e.message))
    problems.extend((FAILED, m) for m in _execution_problems(gen.instructions, view))

    rel = _relative(archive)
    collisions = tuple(Collision(c.destination, rel(c.source), _existing(c.destination, cwd))
                       for c in gen.conflicts)
    copies = tuple((rel(i.source), i.destination, i.replaces)
                   for i in gen.instructions if type(i) is inst.Copy)
    mkdirs = tuple(i.directory for i in gen.instructions if type(i) is inst.Mkdir)
    outcome, error = problems[0] if problems else (SUCCESS, None)
    return Plan(bundle=location, archive_dir=archive, appspec_file=appspec_path, deployment_group=group,
                root_dir=root_dir, file_exists_behavior=behavior, behavior_from=behavior_from,
                cleanup_file=cleanup_file, cleanup=cleanup, mkdirs=mkdirs, copies=copies,
                collisions=collisions, permissions=_permission_plans(spec, gen, view, cwd),
                instructions=tuple(gen.instructions), outcome=outcome, error=error,
                problems=tuple(m for _, m in problems), place=place,
                hook_sources=_hook_sources(spec, location, root_dir, group, appspec_filename))


def _hook_sources(spec: AppSpec, location: str, root_dir: str, group: str,
                  appspec_filename: str | None) -> tuple[HookSource, ...]:
    """Per hook event, whose scripts would run: ApplicationStop (and the block-traffic events) run the
    last successful deployment's (its ``<group>_last_successful_install`` marker), §4.2."""
    from agent import lifecycle
    from agent.deployment_root import DeploymentRoot

    root = DeploymentRoot(root_dir, group)
    out = []
    for event in lifecycle.HOOK_EVENTS:
        source = lifecycle.previous_revision_source(event)
        if source == lifecycle.CURRENT:
            out.append(HookSource(event, "this", None, location, None,
                                  tuple(os.path.join(location, s.location) for s in spec.scripts_for(event))))
            continue
        marker_file = root.last_successful_marker
        rev_dir = root.last_successful()
        if rev_dir is None:
            out.append(HookSource(event, "none", None, None, None,
                                  note=f"none: no successful deployment yet ({marker_file} does not exist), "
                                       "nothing runs"))
            continue
        archive = os.path.join(rev_dir, "deployment-archive")
        appspec = os.path.join(archive, appspec_filename or "appspec.yml")
        did = os.path.basename(rev_dir.rstrip("/"))
        try:
            with open(appspec, "rb") as f:
                previous = parse_appspec(f.read(), os.path.basename(appspec))
        except FileNotFoundError:
            out.append(HookSource(event, "previous", did, archive, appspec,
                                  note=f"the last successful deployment's appspec is missing: the deployment "
                                       f"would fail at {event} (remove {marker_file} to skip it)"))
            continue
        except Exception as e:   # noqa: BLE001 - an appspec the deployment would refuse: say so
            out.append(HookSource(event, "previous", did, archive, appspec,
                                  note=f"the last successful deployment's appspec would not parse: {e}"))
            continue
        out.append(HookSource(event, "previous", did, archive, appspec,
                              tuple(os.path.join(archive, s.location) for s in previous.scripts_for(event))))
    return tuple(out)


def _relative(archive: str) -> Callable[[str], str]:
    prefix = os.path.abspath(archive).rstrip("/") + "/"
    return lambda p: p.removeprefix(prefix)


def _existing(path: str, cwd: str) -> str:
    p = os.path.join(cwd, path)
    if os.path.islink(p):
        return "symlink"
    if os.path.isdir(p):
        return "directory"
    return "file" if os.path.isfile(p) else "other"


def _execution_problems(instructions: list[inst.Instruction], view: inst.FsView) -> list[str]:
    """Failures the execution would meet that generation does not see (§6.7), in instruction order."""
    out: list[str] = []
    users_ok: dict[str, bool] = {}
    groups_ok: dict[str, bool] = {}
    for i in instructions:
        if isinstance(i, inst.Mkdir):
            if view.kind(i.directory) == inst.FsView.OTHER:
                out.append(f"File exists @ dir_s_mkdir - {i.directory}")
        elif isinstance(i, inst.Copy):
            if not os.path.lexists(i.source):
                out.append(f"No such file or directory @ rb_sysopen - {i.source}")
            elif i.replaces and os.path.islink(i.source):
                out.append(f"File exists @ syserr_fail2_in - {i.destination}")
        elif isinstance(i, inst.Chown):
            if i.owner is not None and not users_ok.setdefault(i.owner, _known(pwd.getpwnam, i.owner)):
                out.append(f"can't find user for {i.owner}")
            elif i.group is not None and not groups_ok.setdefault(i.group, _known(grp.getgrnam, i.group)):
                out.append(f"can't find group for {i.group}")
        elif isinstance(i, inst.Setfacl) and not shutil.which("setfacl"):
            out.append("acls need setfacl (Debian/Ubuntu: apt-get install acl)")
        elif isinstance(i, inst.Semanage) and not (shutil.which("semanage") and shutil.which("restorecon")):
            out.append("SELinux contexts (permissions `context:`) need semanage and restorecon")
    # report each distinct problem once, in order
    return list(dict.fromkeys(out))


def _known(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
        return True
    except KeyError:
        return False


def _permission_plans(spec: AppSpec, gen: inst.Generator, view: inst.FsView,
                      cwd: str) -> tuple[PermissionPlan, ...]:
    plans = []
    for p in spec.permissions:
        obj = inst.expand_path(p.object, cwd)

        def change(path: str, kind: str, p: Permission = p) -> PathChange:
            return PathChange(path, kind, p.mode, p.owner, p.group,
                              None if p.acls is None else tuple(str(a) for a in p.acls),
                              None if p.context is None else
                              ":".join(x for x in (p.context.user, p.context.type, p.context.range) if x))

        if obj in gen.copy_targets:
            if "file" in p.types:
                plans.append(PermissionPlan(p.object, obj, "file", "a file this deployment installs",
                                            (change(obj, "file"),)))
            else:
                plans.append(PermissionPlan(p.object, obj, "nothing",
                                            "the object is a file but type does not include file"))
            continue
        if not (obj in gen.mkdir_targets or view.kind(p.object if p.object.startswith("/")
                                                      else os.path.join(cwd, p.object)) == inst.FsView.DIR):
            plans.append(PermissionPlan(p.object, obj, "nothing",
                                        "neither installed by this deployment nor an existing directory: "
                                        "ignored"))
            continue
        changes, left = [], []
        for kind, paths in (("file", gen.copy_targets), ("directory", gen.mkdir_targets)):
            for path in paths:
                verdict = perm.classify(path, obj, p.pattern, p.except_)
                if verdict == perm.NOT_BELOW:
                    continue
                if verdict != perm.MATCH:
                    left.append(LeftOut(path, kind, verdict))
                elif kind not in p.types:
                    left.append(LeftOut(path, kind, "type"))
                else:
                    changes.append(change(path, kind))
        plans.append(PermissionPlan(
            p.object, obj, "directory",
            "paths this deployment creates below the object (never the object itself, never files that "
            "were already there)", tuple(changes), tuple(left)))
    return tuple(plans)


# ------------------------------------------------------------------------------------------ rendering

_REASONS = {perm.DEEPER: "pattern (not a direct child: only ** reaches deeper)",
            perm.PATTERN: "pattern (no match)",
            perm.EXCEPT: "except", "type": "type"}


def render_text(plan: Plan) -> str:
    out: list[str] = []
    w = out.append
    w(f"Plan for {plan.bundle}")
    w(f"  against:          {plan.place}")
    w(f"  appspec:          {plan.appspec_file}")
    w(f"  deployment group: {plan.deployment_group} (root {plan.root_dir})")
    w(f"  file_exists_behavior: {plan.file_exists_behavior} (from the {plan.behavior_from})")
    w("")
    c = plan.cleanup
    if not (c.removes or c.keeps or c.contexts):
        w(f"Cleanup of the previous install: nothing to remove ({plan.cleanup_file})")
    else:
        w(f"Cleanup of the previous install ({plan.cleanup_file}):")
        w(f"  would delete {len(c.removes)} path(s):")
        out.extend(f"    - {p}" for p in c.removes)
        if c.keeps:
            w(f"  would keep {len(c.keeps)} folder(s) that still hold other files:")
            out.extend(f"    = {p}" for p in c.keeps)
        if c.contexts:
            w("  would remove SELinux contexts of:")
            out.extend(f"    - {p}" for p in c.contexts)
    w("")
    w(f"Directories to create ({len(plan.mkdirs)}):")
    out.extend(f"  + {d}/" for d in plan.mkdirs)
    w(f"Files to copy ({len(plan.copies)}):")
    for src, dst, replaces in plan.copies:
        w(f"  {'~' if replaces else '+'} {dst}  <- {src}" + ("  (replaces an existing file)" if replaces else ""))
    if plan.collisions:
        w("")
        w(f"Collisions ({len(plan.collisions)}): something already exists where a file would be installed")
        for col in plan.collisions:
            w(f"  ! {col.destination} ({col.existing})  <- {col.source}")
        w("  what each file_exists_behavior does with them:")
        for b, what in Collision.outcomes().items():
            mark = "  <- this deployment" if b == plan.file_exists_behavior else ""
            w(f"    {b:9} {what}{mark}")
    if plan.permissions:
        w("")
        w("Permissions:")
        for n, pp in enumerate(plan.permissions, 1):
            w(f"  [{n}] object {pp.object}" + (f" ({pp.resolved})" if pp.resolved != pp.object else "")
              + f": {pp.note}")
            for ch in pp.changes:
                attrs = [f"{k} {v}" for k, v in (("mode", ch.mode), ("owner", ch.owner), ("group", ch.group),
                                                    ("context", ch.context)) if v is not None]
                if ch.acl is not None:
                    attrs.append("acl " + ",".join(ch.acl))
                w(f"      {ch.path}{'/' if ch.kind == 'directory' else ''}: " + (", ".join(attrs) or
                                                                              "(no attributes; claims the path)"))
            for lo in pp.left_out:
                w(f"      left out: {lo.path}{'/' if lo.kind == 'directory' else ''} "
                  f"by {_REASONS.get(lo.reason, lo.reason)}")
    if plan.hook_sources:
        w("")
        w("Hook scripts, per lifecycle event (which revision's scripts would run):")
        for hs in plan.hook_sources:
            if not hs.scripts and hs.event != "ApplicationStop" and not (hs.revision == "previous" and hs.note):
                continue   # nothing would run; ApplicationStop is always said
            if hs.revision == "none":
                w(f"  {hs.event}: {hs.note}")
                continue
            if hs.revision == "previous":
                w(f"  {hs.event}: the previous revision's (last successful deployment {hs.deployment_id}), "
                  "not this revision's")
                w(f"      archive {hs.archive}")
                w(f"      appspec {hs.appspec}")
                if hs.note:
                    w(f"      {hs.note}")
                elif not hs.scripts:
                    w("      no scripts for this event: nothing runs")
            else:
                w(f"  {hs.event}: this revision's" + ("" if hs.scripts else ": no scripts, nothing runs"))
            out.extend(f"      script {p}" for p in hs.scripts)
    w("")
    if plan.error is None:
        w("Outcome: the Install would succeed.")
    else:
        w(f"Outcome: the Install would FAIL: {plan.error}")
        out.extend(f"  also: {m}" for m in plan.problems[1:])
    return "\n".join(out)
