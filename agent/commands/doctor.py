"""`cdsim doctor [BUNDLE]`: can this machine run this bundle?

Checks, each printed as ok / warn / FAIL with a hint: running as root or not; Linux namespaces and
overlayfs (probed for real with `unshare` and a throw-away overlay mount, the way instances use them);
nsenter and setpriv (entering an instance). With a bundle (a directory, an appspec file or a
zip/tar/tgz): every runas user exists and `su USER -c true` works without a terminal (as the agent
runs it), the login environment of that user (`su - USER`) compared with what its hooks get (PATH,
HOME), and setfacl / semanage + restorecon when the appspec sets ACLs or SELinux contexts.
Exits SUCCESS when nothing failed (warnings allowed), ENVIRONMENT otherwise; an invalid appspec is
INVALID. Probes spawn short-lived processes only; nothing on the machine is changed.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass

from agent.errors import AppSpecNotFound, ExitStatus, UsageError

SUMMARY = "check that this machine can run a bundle: namespaces, overlayfs, root, runas users, tools"
OK, WARN, FAIL = "ok", "warn", "FAIL"
_PROBE_TIMEOUT = 10


@dataclass(frozen=True)
class Check:
    name: str
    status: str        # ok | warn | FAIL
    detail: str
    hint: str | None = None


def register(sub) -> None:
    p = sub.add_parser("doctor", help=SUMMARY, description=__doc__)
    p.add_argument("bundle", nargs="?", metavar="BUNDLE",
                   help="a bundle directory, appspec file or zip/tar/tgz bundle to check for (optional)")
    p.add_argument("-A", "--appspec-filename", default=None, metavar="NAME",
                   help="the appspec's name in the bundle (default: appspec.yml, else appspec.yaml)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
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
        proc = _run(base + ["true"])
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
            proc = _run(base + ["mount", "-t", "overlay", "overlay", "-o", opts, f"{tmp}/merged"])
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


def check_instance_tools() -> Check:
    missing = [t for t in ("nsenter", "setpriv") if not shutil.which(t)]
    if missing:
        return Check("instance tools", FAIL, f"{' and '.join(missing)} not found on PATH",
                     "install util-linux (entering an instance needs nsenter and setpriv)")
    return Check("instance tools", OK, "nsenter and setpriv are installed")


# ---------------------------------------------------------------------------------- the bundle
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
            members = {m.name.lstrip("./"): m for m in tf.getmembers() if m.isfile()}
            for n in names:
                if n in members:
                    extracted = tf.extractfile(members[n])
                    return extracted.read(), n
    elif os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read(), os.path.basename(path)
    raise AppSpecNotFound(f"no {' or '.join(names)} in {path}")


def _is_tar(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _probe_env(argv: list[str]) -> dict[str, str] | None:
    script = 'printf "PATH=%s\\nHOME=%s\\n" "$PATH" "$HOME"'
    try:
        proc = _run(argv + [script])
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
        return [Check(name, FAIL, f"`su {user} -c true` fails: {_last_line(proc.stderr + proc.stdout) or proc.returncode}",
                      f"the user's shell is {entry.pw_shell}; runas hooks need a login shell that runs "
                      "commands (e.g. usermod -s /bin/bash " + user + ")")]
    checks = [Check(name, OK, f"user exists (uid {entry.pw_uid}, shell {entry.pw_shell}); su works with no terminal")]
    hook_env = _probe_env([su, user, "-c"])
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


def check_tools(spec) -> list[Check]:
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


def diagnose(bundle: str | None, appspec_filename: str | None = None) -> list[Check]:
    checks = [check_root(), check_namespaces(), check_overlayfs(), check_instance_tools()]
    if bundle is None:
        return checks
    from agent.appspec import parse_appspec

    if not os.path.exists(bundle):
        raise UsageError(f"bundle {bundle} does not exist")
    data, name = _read_appspec(bundle, appspec_filename)
    spec = parse_appspec(data, filename=name)
    users = []
    for _event, scripts in spec.hooks:
        for s in scripts:
            if s.runas and s.runas not in users:
                users.append(s.runas)
    for user in users:
        checks.extend(check_runas(user))
    checks.extend(check_tools(spec))
    return checks


def run(args) -> int:
    checks = diagnose(args.bundle, args.appspec_filename)
    failed = any(c.status == FAIL for c in checks)
    if args.format == "json":
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        paint = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m"}
        for c in checks:
            label = f"{c.status:<4}"
            if color:
                label = paint[c.status] + label + "\033[0m"
            print(f"{label}  {c.name:<18} {c.detail}")
            if c.hint and c.status != OK:
                print(f"      hint: {c.hint}")
        print("this machine can run it" if not failed else "this machine can't run it as it is: see FAIL above")
    return int(ExitStatus.ENVIRONMENT if failed else ExitStatus.SUCCESS)
