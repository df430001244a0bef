"""`cdsim doctor [BUNDLE] [--instance NAME | --host]`: can a deployment of this bundle run where
`cdsim deploy` would put it?

Checks, each printed as ok / warn / FAIL with a hint. Always, of this machine: running as root or not;
Linux namespaces and overlayfs (probed for real with `unshare` and a throw-away overlay mount, the way
instances use them); the kernel's open_tree (Linux 5.2, to bind the bundle into an instance). For an
instance (the default one unless ``--instance`` or ``--host`` says otherwise): that it can be entered
(started if stopped, as `cdsim deploy` does) and its id map, i.e. whether users other than root can exist inside
(agent.instance.idmap: root, or newuidmap + subordinate ranges), against the users the bundle needs.
With a bundle (a directory, an appspec file or a zip/tar/tgz), where the deployment runs (inside the
instance, by running `cdsim doctor --host` there; an instance that does not exist yet is judged by
this machine, which it starts from): every runas user exists and `su USER -c true` works without a
terminal (as the agent runs it), that user's login environment (`su - USER`) compared with what its
hooks get (PATH, HOME); setfacl / semanage + restorecon when the appspec sets ACLs or SELinux
contexts; the PATH hooks get (the agent service's, hooks_runtime.environment) and, by a best-effort
scan of the shell hook scripts, each command they call that this PATH does not find (a warning,
saying where the caller's PATH has it).
Exits SUCCESS when nothing failed (warnings allowed), ENVIRONMENT otherwise; an invalid appspec is
INVALID. Probes spawn short-lived processes only and change nothing, except that a stopped instance
is started.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass

from agent.errors import AppSpecNotFound, ExitStatus, UsageError

# typing and the modules named in annotations only are imported for the type checker, not at run time:
# the CLI imports this module to build its parser (mypy takes any name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    from agent.appspec import AppSpec
    from agent.instance import Instance

    # a file of the bundle: its name and a reader of at most n of its first bytes
    Readable = tuple[str, Callable[[int], bytes]]

SUMMARY = "check that a bundle can run where cdsim deploy puts it: namespaces, instance, users, tools, hook PATH"
DESCRIPTION = (
    "Check that a deployment of the bundle can run where `cdsim deploy` would put it: inside the instance "
    "default (or the one --instance names), or on this machine with --host. Checks namespaces and "
    "overlayfs, that the instance can be entered and which users can exist in it, and, with a bundle, "
    "its runas users, the tools its permissions need, and whether the commands its hook scripts call are "
    "on the PATH hooks get (which is not your PATH).")
OK, WARN, FAIL = "ok", "warn", "FAIL"
_PROBE_TIMEOUT = 10


@dataclass(frozen=True)
class Check:
    name: str
    status: str        # ok | warn | FAIL
    detail: str
    hint: str | None = None
    where: str = ""    # where a bundle check ran, for an instance: "instance NAME" or "this machine"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agent.commands import where as places

    p = sub.add_parser("doctor", help=SUMMARY, description=DESCRIPTION)
    places.add_bundle_argument(p, default=None,
                               help="a bundle directory, appspec file or zip/tar/tgz bundle to check for (optional)")
    places.add_where_options(p, instance_help="check what a deployment into this sandboxed instance will use "
                                              "(started if stopped)",
                             host_help="check this machine, for `cdsim deploy --host` and `cdsim local`")
    p.add_argument("-A", "--appspec-filename", default=None, metavar="NAME",
                   help="the appspec's name in the bundle (default: appspec.yml, else appspec.yaml)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=_PROBE_TIMEOUT, check=False, **kw)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------------- the machine
def check_root() -> Check:
    uid = os.geteuid()
    if uid == 0:
        return Check("root", OK, "running as root")
    return Check("root", WARN, f"running as uid {uid}, not root",
                 "instances still work (through a user namespace) but hooks can't run as other users "
                 "(runas), and --host deployments can't chown or write system folders")


def _unshare_base() -> list[str] | None:
    unshare = shutil.which("unshare")
    if not unshare:
        return None
    base = [unshare, "--mount", "--uts", "--ipc", "--pid", "--net", "--fork"]
    if os.geteuid() != 0:
        base[1:1] = ["--user", "--map-root-user"]
    return base


def check_namespaces() -> Check:
    base = _unshare_base()
    if base is None:
        return Check("namespaces", FAIL, "unshare is not installed", "install util-linux")
    try:
        proc = _run([*base, "true"])
    except subprocess.TimeoutExpired:
        return Check("namespaces", FAIL, "unshare did not return", None)
    if proc.returncode != 0:
        return Check("namespaces", FAIL, f"can't create mount/PID/UTS/IPC/network namespaces: "
                     f"{_last_line(proc.stderr) or 'exit status ' + str(proc.returncode)}",
                     "in a container, run it with --privileged (or CAP_SYS_ADMIN and an unconfined "
                     "seccomp profile); as a user, allow unprivileged user namespaces "
                     "(sysctl kernel.unprivileged_userns_clone=1); else use `cdsim deploy --host`")
    return Check("namespaces", OK, "mount, PID, UTS, IPC and network namespaces can be created")


def check_overlayfs() -> Check:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            known = any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        known = False
    base = _unshare_base()
    if base is None:
        return Check("overlayfs", FAIL if not known else WARN,
                     "overlay is " + ("" if known else "not ") + "in /proc/filesystems; unshare is missing, "
                     "so no mount was tried", "install util-linux")
    with tempfile.TemporaryDirectory(prefix="cdsim-doctor-") as tmp:
        for sub in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(tmp, sub))
        opts = f"lowerdir={tmp}/lower,upperdir={tmp}/upper,workdir={tmp}/work"
        try:
            # in a private mount namespace, so the mount vanishes with the probe
            proc = _run([*base, "mount", "-t", "overlay", "overlay", "-o", opts, f"{tmp}/merged"])
        except subprocess.TimeoutExpired:
            return Check("overlayfs", FAIL, "the overlay mount probe did not return")
        # overlayfs leaves its work folder mode 000: open it so the temporary folder can go
        for root, dirs, _files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o700)
    if proc.returncode != 0:
        return Check("overlayfs", FAIL, f"can't mount an overlay: {_last_line(proc.stderr)}",
                     "load the module (modprobe overlay); unprivileged overlay mounts need Linux 5.11+; "
                     "else use `cdsim deploy --host`")
    return Check("overlayfs", OK, "an overlay file system can be mounted")


def check_instance_tools(release: str | None = None) -> Check:
    """cdsim enters instances with its own launcher (no nsenter or setpriv); binding the bundle into an
    instance for each deployment needs open_tree (Linux 5.2)."""
    release = release or os.uname().release
    numbers = re.match(r"(\d+)\.(\d+)", release)
    version = (int(numbers.group(1)), int(numbers.group(2))) if numbers else (0, 0)
    if version < (5, 2):
        return Check("instance launcher", FAIL, f"Linux {release}: binding the bundle into an instance needs "
                     "Linux 5.2 or later (open_tree)", "deploy with --host, or use a newer kernel")
    return Check("instance launcher", OK, f"cdsim enters instances itself (no nsenter or setpriv needed); "
                 f"Linux {release} can bind the bundle in (open_tree)")


# ---------------------------------------------------------------------------------- the bundle
_MAX_SCANNED = 1 << 20        # larger files are no scripts worth scanning
_SCAN_BUDGET = 32 << 20       # bytes read in all, so a huge bundle can't exhaust memory
_SHELL_HEAD = re.compile(rb"^#!\s*\S*/(?:env\s+(?:-\S+\s+)*)?(?:ba|da|k|z|mk)?sh\b")


def _bundle_files(path: str, hooks: set[str]) -> dict[str, bytes]:
    """The files of a bundle (a directory or a zip/tar/tgz; for an appspec file, its folder) the
    scan needs, by bundle-relative name: the hook scripts and the shell scripts they may source,
    each at most 1 MiB, 32 MiB read in all, hook scripts first."""
    found: list[Readable] = []
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir() and info.file_size <= _MAX_SCANNED:
                    found.append((os.path.normpath(info.filename.lstrip("/")),
                                  _reader(functools.partial(zf.open, info))))
            return _read_within_budget(found, hooks)
    if os.path.isfile(path) and _is_tar(path):
        with tarfile.open(path) as tf:
            for member in tf.getmembers():
                if member.isfile() and member.size <= _MAX_SCANNED:
                    found.append((os.path.normpath(member.name.lstrip("/")),
                                  _reader(functools.partial(tf.extractfile, member))))
            return _read_within_budget(found, hooks)
    top = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in (".git", "node_modules", "__pycache__")]
        for name in files:
            full = os.path.join(folder, name)
            if os.path.isfile(full) and not os.path.islink(full) and os.path.getsize(full) <= _MAX_SCANNED:
                found.append((os.path.relpath(full, top), _reader(full)))
    return _read_within_budget(found, hooks)


def _reader(source: str | Callable[[], IO[bytes] | None]) -> Callable[[int], bytes]:
    """read(n): at most the first n bytes of the file at path ``source``, or of the member ``source()`` opens."""
    return lambda n: _head(source if isinstance(source, str) else source(), n)


def _head(source: str | IO[bytes] | None, n: int) -> bytes:
    """At most ``n`` bytes of a file path or an open member (closed afterwards)."""
    try:
        f = open(source, "rb") if isinstance(source, str) else source  # noqa: SIM115 - closed below
        if f is None:
            return b""
        with f:
            return f.read(n)
    except OSError:
        return b""


def _read_within_budget(found: list[Readable], hooks: set[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    budget = _SCAN_BUDGET
    for name, read in sorted(found, key=lambda item: item[0] not in hooks):
        if budget <= 0:
            break
        if not (name in hooks or name.endswith(".sh")):
            head = read(128)
            budget -= len(head)
            if not _SHELL_HEAD.match(head):
                continue
        data = read(_MAX_SCANNED)
        budget -= len(data)
        out[name] = data
    return out


def _read_appspec(path: str, name: str | None) -> tuple[bytes, str]:
    """The appspec's bytes and its name, from a directory, an appspec file or an archive."""
    names = (name,) if name else ("appspec.yml", "appspec.yaml")
    if os.path.isdir(path):
        for n in names:
            if os.path.isfile(os.path.join(path, n)):
                with open(os.path.join(path, n), "rb") as f:
                    return f.read(), n
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = {m.lstrip("./"): m for m in zf.namelist()}
            for n in names:
                if n in members:
                    return zf.read(members[n]), n
    elif os.path.isfile(path) and _is_tar(path):
        with tarfile.open(path) as tf:
            regular = {m.name.lstrip("./"): m for m in tf.getmembers() if m.isfile()}
            for n in names:
                extracted = tf.extractfile(regular[n]) if n in regular else None
                if extracted is not None:
                    return extracted.read(), n
    elif os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read(), os.path.basename(path)
    raise AppSpecNotFound(f"no {' or '.join(names)} in {path}")


# ----------------------------------------------------------------------- commands the hooks call
_SHELLS = frozenset({"sh", "bash", "dash", "ksh", "zsh", "ash", "mksh"})
# after these words a command follows
_LEADING = frozenset({"if", "then", "else", "elif", "while", "until", "do", "!", "time", "{", "coproc"})
_KEYWORDS = frozenset({"fi", "case", "esac", "for", "select", "in", "done", "function", "}", "[[", "]]"})
_BUILTINS = frozenset({
    ".", ":", "[", "alias", "bg", "bind", "break", "builtin", "caller", "cd", "command", "compgen", "complete",
    "compopt", "continue", "declare", "dirs", "disown", "echo", "enable", "eval", "exec", "exit", "export",
    "false", "fc", "fg", "getopts", "hash", "help", "history", "jobs", "kill", "let", "local", "logout",
    "mapfile", "popd", "printf", "pushd", "pwd", "read", "readarray", "readonly", "return", "set", "shift",
    "shopt", "source", "suspend", "test", "times", "trap", "true", "type", "typeset", "ulimit", "umask",
    "unalias", "unset", "wait"})
_PUNCTUATION = frozenset("();<>|&")
_COMMAND_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_FUNCTION = re.compile(r"^\s*(?:function\s+([A-Za-z_][\w.:-]*)|([A-Za-z_][\w.:-]*)\s*\(\s*\))", re.MULTILINE)
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def is_shell_script(name: str, data: bytes) -> bool:
    """A script a shell runs: a #! line naming a shell (directly or through env), or a .sh name."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not first.startswith(b"#!"):
        return name.endswith(".sh") and b"\0" not in data[:4096]
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
    return bool(words) and os.path.basename(words[0]) in _SHELLS


def functions_defined(text: str) -> set[str]:
    return {a or b for a, b in _FUNCTION.findall(text)}


def commands_called(text: str) -> list[str]:
    """Best effort: the commands a shell script runs by name (the first word of each simple command),
    leaving out builtins, keywords, functions it defines, variables, assignments and paths. Lines a
    simple tokenizer can't read (an open quote) are skipped; so are here-documents."""
    found: list[str] = []
    defined = functions_defined(text)
    case_depth = 0
    heredoc: tuple[str, bool] | None = None
    for line in text.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            end, strip_tabs = heredoc
            if (line.lstrip("\t") if strip_tabs else line) == end:
                heredoc = None
            continue
        opened = _HEREDOC.search(line)
        if opened:
            heredoc = (opened.group(2), "<<-" in line[opened.start():opened.start() + 3])
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:
            continue
        if case_depth and ")" in tokens and "(" not in tokens[:tokens.index(")")]:
            tokens = tokens[tokens.index(")") + 1:]          # a case pattern: `start|restart)`
        expect, i = True, 0
        while i < len(tokens):
            word = tokens[i]
            i += 1
            if word == "case":
                case_depth += 1
            elif word == "esac":
                case_depth = max(0, case_depth - 1)
            if word and set(word) <= _PUNCTUATION:
                if word == "((":                            # (( arithmetic ))
                    while i < len(tokens) and tokens[i] != "))":
                        i += 1
                    i += 1
                    expect = False
                elif word[0] in "<>":                       # a redirection: a file name follows
                    i += 1
                else:                                       # ; && || | & ( ) and `name()`
                    expect = True
                continue
            if not expect:
                continue
            if word in _LEADING or _ASSIGNMENT.match(word):
                continue
            expect = False
            if (word in _KEYWORDS or word in _BUILTINS or word in defined
                    or not _COMMAND_NAME.fullmatch(word) or word.isdigit()):
                continue
            if i < len(tokens) and tokens[i] in ("(", "()"):   # name () { a definition
                continue
            if word not in found:
                found.append(word)
    return found


def hook_scripts(spec: AppSpec, files: dict[str, bytes]) -> dict[str, bytes]:
    """The bundle's hook scripts by location, as far as the bundle holds them."""
    out: dict[str, bytes] = {}
    for _event, scripts in spec.hooks:
        for script in scripts:
            rel = os.path.normpath(script.location.lstrip("/"))
            if rel in files and rel not in out:
                out[rel] = files[rel]
    return out


def check_hook_commands(spec: AppSpec, files: dict[str, bytes], caller_path: str | None) -> list[Check]:
    """The PATH hooks get (the agent service's environment, as hooks_runtime builds it) and, per
    command the shell hook scripts call, whether that PATH finds it."""
    from hooks_runtime.environment import service_environment

    hook_path = service_environment().get("PATH", "")
    checks = [Check("hook PATH", OK, f"hooks get PATH={hook_path} (the agent service's environment)")]
    shell_files = {n: d.decode("utf-8", "replace") for n, d in files.items() if is_shell_script(n, d)}
    defined: set[str] = set()
    for text in shell_files.values():   # functions of files the scripts source count too
        defined |= functions_defined(text)
    callers: dict[str, list[str]] = {}
    for location in hook_scripts(spec, files):
        if location not in shell_files:
            continue
        for name in commands_called(shell_files[location]):
            if name not in defined:
                callers.setdefault(name, []).append(location)
    missing = 0
    for name, where in callers.items():
        if shutil.which(name, path=hook_path):
            continue
        missing += 1
        yours = shutil.which(name, path=caller_path) if caller_path else None
        used = f"{name} (called by {', '.join(where)})"
        if yours:
            checks.append(Check(f"command {name}", WARN, f"{used} is not on the hook PATH, but on yours: {yours}",
                                f"hooks do not get your PATH: call it as {yours}, or set PATH in the script"))
        else:
            checks.append(Check(f"command {name}", WARN, f"{used} is found neither on the hook PATH nor on yours",
                                "install it (an earlier hook may do that), or ignore this if the scan misread "
                                "the script"))
    if callers and not missing:
        checks.append(Check("hook commands", OK, f"the {len(callers)} commands the hook scripts call are on "
                                                 "the hook PATH"))
    return checks


def _is_tar(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _probe_env(argv: list[str], env: dict[str, str] | None = None) -> dict[str, str] | None:
    script = 'printf "PATH=%s\\nHOME=%s\\n" "$PATH" "$HOME"'
    try:
        proc = _run([*argv, script], env=env)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def check_runas(user: str) -> list[Check]:
    """The user exists, `su USER -c true` works with no terminal, and its environments compared."""
    name = f"runas {user}"
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return [Check(name, FAIL, f"user {user!r} does not exist",
                      f"create it (useradd {user}) or create it in an earlier hook")]
    if os.geteuid() != 0:
        return [Check(name, WARN, f"user {user!r} exists; not root, so su would ask for a password",
                      "run cdsim as root (or in an instance started by root) for runas hooks")]
    su = shutil.which("su")
    if not su:
        return [Check(name, FAIL, "su is not installed", "install util-linux (the agent runs runas hooks with su)")]
    try:
        proc = _run([su, user, "-c", "true"])
    except subprocess.TimeoutExpired:
        return [Check(name, FAIL, f"`su {user} -c true` did not return (waiting for a terminal?)")]
    if proc.returncode != 0:
        why = _last_line(proc.stderr + proc.stdout) or proc.returncode
        return [Check(name, FAIL, f"`su {user} -c true` fails: {why}",
                      f"the user's shell is {entry.pw_shell}; runas hooks need a login shell that runs "
                      "commands (e.g. usermod -s /bin/bash " + user + ")")]
    checks = [Check(name, OK, f"user exists (uid {entry.pw_uid}, shell {entry.pw_shell}); su works with no terminal")]
    from hooks_runtime.environment import service_environment
    hook_env = _probe_env([su, user, "-c"], env=service_environment())   # su from the agent service
    login_env = _probe_env([su, "-", user, "-c"])
    if hook_env and login_env:
        for var in ("PATH", "HOME"):
            same = hook_env.get(var) == login_env.get(var)
            checks.append(Check(
                f"runas {user} {var}", OK if same else WARN,
                f"hooks get {var}={hook_env.get(var)}" + ("" if same else
                                                          f"; a login shell has {var}={login_env.get(var)}"),
                None if same else "hooks run with `su USER -c` (not a login shell): set what they need "
                                  "in the script rather than in the user's profile"))
    return checks


def check_tools(spec: AppSpec) -> list[Check]:
    out = []
    if any(p.acls for p in spec.permissions):
        found = shutil.which("setfacl")
        out.append(Check("setfacl", OK if found else FAIL,
                         f"the appspec sets ACLs; setfacl is {found or 'not installed'}",
                         None if found else "apt-get install acl (RHEL/Fedora: dnf install acl)"))
    if any(p.context for p in spec.permissions):
        missing = [t for t in ("semanage", "restorecon") if not shutil.which(t)]
        out.append(Check("selinux tools", FAIL if missing else OK,
                         "the appspec sets SELinux contexts; " + (f"{' and '.join(missing)} not installed"
                                                                  if missing else "semanage and restorecon found"),
                         "dnf install policycoreutils-python-utils (Debian: apt-get install policycoreutils "
                         "policycoreutils-python-utils selinux-basics)" if missing else None))
    return out


def _needs_other_users(spec: AppSpec) -> list[str]:
    """Users and groups other than root the deployment will switch to or give files to."""
    names: list[str] = []
    for _event, scripts in spec.hooks:
        names += [s.runas for s in scripts if s.runas]
    for p in spec.permissions:
        names += [x for x in (p.owner, p.group) if x]
    return [n for n in dict.fromkeys(names) if n not in ("root", "0")]


def users_needed(bundle: str, appspec_filename: str | None = None) -> list[str] | None:
    """Users and groups other than root a deployment of ``bundle`` switches to or gives files to; None
    when its appspec cannot be read or parsed (the deployment itself then says why)."""
    from agent.appspec import parse_appspec
    from agent.errors import CdsimError
    try:
        data, name = _read_appspec(bundle, appspec_filename)
        return _needs_other_users(parse_appspec(data, filename=name))
    except (CdsimError, OSError, tarfile.TarError, zipfile.BadZipFile, EOFError):
        return None


def check_id_map(problem: str | None, needed: list[str], *, creator_is_root: bool) -> Check:
    """Whether users other than root can exist in the instance: its id map (see agent.instance.idmap),
    against the users the bundle needs."""
    if problem is None:
        return Check("id map", OK, "every uid and gid is the host's (the instance is started by root)"
                     if creator_is_root else "your subordinate ids are mapped: useradd, chown to new users "
                     "and su/runas work inside")
    if needed:
        return Check("id map", FAIL, f"the bundle needs {', '.join(needed)} inside, but {problem}")
    return Check("id map", WARN, problem)


def check_enter(inst: Instance) -> Check:
    """The instance starts (if stopped) and a command runs inside it."""
    from agent import instance as instances
    from agent.errors import CdsimError

    was_running = instances.running(inst)
    try:
        with tempfile.TemporaryFile("w+") as err:
            code = instances.exec_in(inst, ["true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=err)
            err.seek(0)
            said = _last_line(err.read())
    except CdsimError as e:
        return Check("enter instance", FAIL, f"instance {inst.name} can't be entered: {e}", e.hint)
    if code != 0:
        return Check("enter instance", FAIL, f"instance {inst.name} can't be entered: "
                     f"{said or 'exit status ' + str(code)}", f"see {inst.log_file}")
    return Check("enter instance", OK, f"instance {inst.name} runs commands"
                 + ("" if was_running else " (it was stopped: started it, as `cdsim deploy` would)"))


def bundle_checks(bundle: str, appspec_filename: str | None) -> list[Check]:
    """What the bundle needs from the machine this process runs on: runas users, tools, commands."""
    from agent.appspec import parse_appspec

    data, name = _read_appspec(bundle, appspec_filename)
    spec = parse_appspec(data, filename=name)
    checks: list[Check] = []
    users = []
    for _event, scripts in spec.hooks:
        for s in scripts:
            if s.runas and s.runas not in users:
                users.append(s.runas)
    for user in users:
        checks.extend(check_runas(user))
    checks.extend(check_tools(spec))
    hooks = {os.path.normpath(script.location.lstrip("/")) for _event, scripts in spec.hooks for script in scripts}
    checks.extend(check_hook_commands(spec, _bundle_files(bundle, hooks), os.environ.get("PATH")))
    return checks


def machine_checks() -> list[Check]:
    return [check_root(), check_namespaces(), check_overlayfs(), check_instance_tools()]


def diagnose(bundle: str | None, appspec_filename: str | None = None) -> list[Check]:
    """This machine, and what the bundle needs from it (`cdsim doctor --host`)."""
    inside = bool(os.environ.get("CDSIM_INSIDE_INSTANCE"))
    checks = [] if inside else machine_checks()   # inside an instance they are about its host
    if bundle is None:
        return checks
    if not os.path.exists(bundle):
        raise UsageError(f"bundle {bundle} does not exist")
    return checks + bundle_checks(bundle, appspec_filename)


def diagnose_instance(name: str, bundle: str | None, appspec_filename: str | None = None) -> list[Check]:
    """What a deployment into instance ``name`` will use: this machine's namespaces and overlayfs, the
    instance (entered for real; started if stopped), its id map against the bundle's users, and the
    bundle's checks run inside it (`cdsim doctor --host` there). An instance that does not exist yet
    is judged by what `cdsim deploy` would create: this machine's files, the id map it would get now."""
    from agent.appspec import parse_appspec
    from agent.commands import where as places
    from agent.instance import idmap

    checks = machine_checks()
    needed: list[str] = []
    if bundle is not None:
        if not os.path.exists(bundle):
            raise UsageError(f"bundle {bundle} does not exist")
        data, spec_name = _read_appspec(bundle, appspec_filename)
        needed = _needs_other_users(parse_appspec(data, filename=spec_name))  # INVALID raised here
    inst = places.existing_instance(name)
    root = os.geteuid() == 0
    if inst is None:
        checks.append(Check("instance", OK, f"instance {name} does not exist yet: `cdsim deploy` creates it "
                                            "from this machine's files, so the bundle is checked here"))
        checks.append(check_id_map(idmap.current().get("id_map_problem"), needed, creator_is_root=root))
        if bundle is not None:
            checks += [Check(c.name, c.status, c.detail, c.hint, "this machine")
                       for c in bundle_checks(bundle, appspec_filename)]
        return checks
    from agent import instance as instances

    if any(c.status == FAIL for c in checks[1:]):
        checks.append(Check("enter instance", FAIL, f"instance {name} can't run here: see FAIL above"))
        return checks
    entered = check_enter(inst)
    checks.append(entered)
    problem = instances.id_map_problem(inst)
    id_check = check_id_map(problem, needed, creator_is_root=root)
    if problem and not idmap.current().get("id_map_problem"):
        id_check = Check(id_check.name, id_check.status, id_check.detail,
                         f"your subordinate ids are configured now, but the instance was created before: "
                         f"recreate it (cdsim instance destroy {name})")
    checks.append(id_check)
    if bundle is None or entered.status == FAIL:
        return checks
    return checks + [Check(c.name, c.status, c.detail, c.hint, f"instance {name}")
                     for c in _checks_inside(inst, os.path.abspath(bundle), appspec_filename)]


def _checks_inside(inst: Instance, bundle: str, appspec_filename: str | None) -> list[Check]:
    """`cdsim doctor --host --format json` run inside the instance, as `cdsim deploy` runs its engine
    there (same interpreter and checkout, the bundle by its absolute path)."""
    from agent import instance as instances

    argv = [sys.executable, "-m", "agent", "doctor", "--host", "--format=json"]
    if appspec_filename:
        argv.append(f"--appspec-filename={appspec_filename}")
    argv += ["--", bundle]
    env = dict(os.environ, CDSIM_INSIDE_INSTANCE=inst.name, PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = instances.exec_in(inst, argv, env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=err)
        out.seek(0)
        err.seek(0)
        text, said = out.read(), err.read()
    try:
        report = json.loads(text)
    except ValueError:
        return [Check("checks inside", FAIL, f"`cdsim doctor --host` inside instance {inst.name} failed "
                      f"(exit status {code}): {_last_line(said) or 'no output'}")]
    return [Check(c["name"], c["status"], c["detail"], c.get("hint")) for c in report.get("checks", [])]


def run(args: argparse.Namespace) -> int:
    from agent.commands import where as places

    place = places.resolve(args)
    if place.instance is None:
        checks = diagnose(args.bundle, args.appspec_filename)
        subject = ("instance " + os.environ["CDSIM_INSIDE_INSTANCE"] if os.environ.get("CDSIM_INSIDE_INSTANCE")
                   else "this machine")
    else:
        checks = diagnose_instance(place.instance, args.bundle, args.appspec_filename)
        subject = f"instance {place.instance}"
        if places.existing_instance(place.instance) is None:
            subject = f"a new instance {place.instance}"
    failed = any(c.status == FAIL for c in checks)
    if args.format == "json":
        print(json.dumps({"ok": not failed, "place": place.describe(), "checks": [asdict(c) for c in checks]},
                         indent=2))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        paint = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m"}
        shown_where = ""
        for c in checks:
            if c.where and c.where != shown_where:
                print(f"checked {'on' if c.where == 'this machine' else 'inside'} {c.where}:")
                shown_where = c.where
            label = f"{c.status:<4}"
            if color:
                label = paint[c.status] + label + "\033[0m"
            print(f"{label}  {c.name:<18} {c.detail}")
            if c.hint and c.status != OK:
                print(f"      hint: {c.hint}")
        print(f"{subject} can run it" if not failed else f"{subject} can't run it as it is: see FAIL above")
    return int(ExitStatus.ENVIRONMENT if failed else ExitStatus.SUCCESS)
