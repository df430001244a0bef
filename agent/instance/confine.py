"""What every process of an instance may do: the capabilities it keeps and the system calls it is refused.

:func:`confine` is called by the instance's init (once its root is built) and by the launcher that
enters a running instance (agent.instance.enter), in the process that then executes the instance's
programs and before it executes any: so no program of the instance's tree ever runs with more.

Capabilities: Docker's default set less mknod (:data:`KEPT`), in the bounding, permitted and effective
sets; the inheritable and ambient sets are emptied. System calls: a classic BPF seccomp filter
(:func:`program`, pure) refuses, with EPERM, what Docker's default profile refuses to a container
without CAP_SYS_ADMIN (new namespaces, mount API, open_by_handle_at, kexec, bpf, perf_event_open,
kernel keyrings, modules, clock, swap, io_uring ...), clone3 with ENOSYS (so the C library falls back
to clone, whose namespace flags are checked) and every system call of another ABI (i386, x32). The
filter is built for x86_64; elsewhere only the capabilities apply (:func:`filter_supported`).
Linux only; imports nothing of cdsim (the launcher runs it as a plain script).
"""
from __future__ import annotations

import ctypes
import os
import struct

# capability numbers (linux/capability.h)
CAP_NUMBERS = {"chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4, "kill": 5,
               "setgid": 6, "setuid": 7, "setpcap": 8, "net_bind_service": 10, "net_admin": 12,
               "net_raw": 13, "sys_chroot": 18, "sys_admin": 21, "mknod": 27, "audit_write": 29,
               "setfcap": 31}
# Docker's default capability set without mknod: no module loading, raw I/O, reboot, clock, mounts,
# file handles (dac_read_search), network configuration or device nodes
KEPT = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
        "net_bind_service", "net_raw", "sys_chroot", "audit_write", "setfcap")
KEPT_MASK = sum(1 << CAP_NUMBERS[c] for c in KEPT)

_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_CAPSET = {"x86_64": 126, "aarch64": 91, "arm64": 91}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# ---- the seccomp filter (x86_64) ---------------------------------------------------------------------
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NAMESPACE_FLAGS = 0x7E020000   # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
EPERM, ENOSYS = 1, 38

# refused with EPERM (x86_64 numbers): as Docker's default profile for a container without
# CAP_SYS_ADMIN, plus io_uring (Docker's since 25.0)
REFUSED_X86_64 = {
    "unshare": 272, "setns": 308,
    "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "open_by_handle_at": 304,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "keyctl": 250, "add_key": 248, "request_key": 249,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "create_module": 174,
    "get_kernel_syms": 177, "query_module": 178,
    "syslog": 103, "acct": 163, "swapon": 167, "swapoff": 168, "quotactl": 179, "lookup_dcookie": 212,
    "settimeofday": 164, "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305,
    "iopl": 172, "ioperm": 173, "uselib": 134, "_sysctl": 156, "ustat": 136, "sysfs": 139,
    "nfsservctl": 180, "vhangup": 153,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
}
CLONE_X86_64, CLONE3_X86_64 = 56, 435

_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000


def program() -> list[tuple[int, int, int, int]]:
    """The x86_64 filter as (code, jt, jf, k) instructions (pure). seccomp_data: nr at 0, arch at 4,
    args[0]'s low word at 16."""
    refused = sorted(REFUSED_X86_64.values())
    # layout: 0 ld arch, 1 jeq arch, 2 ld nr, 3 jge x32, 4.. refused, clone3, clone, allow,
    #         check clone flags (ld, jset), allow, eperm, enosys
    body = []
    n_checks = len(refused) + 2
    # index of the tail instructions, counted from the first refused check (index 4)
    allow_1 = 4 + n_checks
    clone_check = allow_1 + 1
    allow_2 = clone_check + 2
    eperm = allow_2 + 1
    enosys = eperm + 1

    def jump(at: int, to: int) -> int:
        return to - at - 1

    body.append((_LD_ABS_W, 0, 0, 4))
    body.append((_JEQ, 0, jump(1, enosys), AUDIT_ARCH_X86_64))
    body.append((_LD_ABS_W, 0, 0, 0))
    body.append((_JGE, jump(3, enosys), 0, X32_SYSCALL_BIT))
    for i, number in enumerate(refused):
        at = 4 + i
        body.append((_JEQ, jump(at, eperm), 0, number))
    at = 4 + len(refused)
    body.append((_JEQ, jump(at, enosys), 0, CLONE3_X86_64))
    body.append((_JEQ, jump(at + 1, clone_check), 0, CLONE_X86_64))
    body.append((_RET, 0, 0, RET_ALLOW))                         # allow_1
    body.append((_LD_ABS_W, 0, 0, 16))                           # clone_check: flags (low word)
    body.append((_JSET, jump(clone_check + 1, eperm), 0, CLONE_NAMESPACE_FLAGS))
    body.append((_RET, 0, 0, RET_ALLOW))                         # allow_2
    body.append((_RET, 0, 0, RET_ERRNO | EPERM))                 # eperm
    body.append((_RET, 0, 0, RET_ERRNO | ENOSYS))                # enosys
    assert len(body) == enosys + 1 and all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in body)
    return body


def filter_supported(machine: str | None = None) -> bool:
    return (machine or os.uname().machine) == "x86_64"


# the twin of agent.instance.namespaces._lib: this module imports nothing of cdsim (see above)
_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # the C library python itself is linked with: no find_library (it runs ldconfig)
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def prepare() -> int:
    """Load what :func:`confine` needs while the host's tree is still ours (the C library, the last
    capability number): inside, both would come from the instance's tree."""
    _lib()
    return last_capability()


def install_filter() -> None:
    """Install the seccomp filter (needs CAP_SYS_ADMIN in this user namespace, which the caller still
    has: no_new_privs would break su and sudo inside)."""
    code = program()
    raw = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in code)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("@HP", len(code), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if _lib().prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), fbuf, 0, 0) != 0:
        raise _fail("seccomp filter")


def drop_capabilities(last_cap: int, keep_mask: int = KEPT_MASK) -> None:
    """Bounding set down to ``keep_mask``, ambient and inheritable emptied, permitted and effective =
    ``keep_mask``. Root's next exec gets exactly ``keep_mask``."""
    lib = _lib()
    for cap in range(last_cap + 1):
        if not keep_mask & (1 << cap):
            if lib.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0 and ctypes.get_errno() != 22:
                raise _fail(f"dropping capability {cap} from the bounding set")
    if lib.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0) != 0:
        raise _fail("clearing the ambient capabilities")
    number = _CAPSET.get(os.uname().machine)
    if number is None:
        raise OSError(38, f"capset: unknown system call number on {os.uname().machine}")
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    low, high = keep_mask & 0xFFFFFFFF, keep_mask >> 32
    data = struct.pack("IIIIII", low, low, 0, high, high, 0)   # effective, permitted, inheritable x 2
    hbuf, dbuf = ctypes.create_string_buffer(header, 8), ctypes.create_string_buffer(data, 24)
    if lib.syscall(ctypes.c_long(number), hbuf, dbuf) != 0:
        raise _fail("capset")


def confine(last_cap: int, *, dumpable: bool = True) -> None:
    """Filter system calls (where supported), then drop capabilities: the filter first, since
    installing it needs CAP_SYS_ADMIN. ``dumpable=False`` (the instance's init, which never executes
    anything) keeps the instance's root from tracing it or reading its /proc/1/fd."""
    if filter_supported():
        install_filter()
    drop_capabilities(last_cap)
    if not dumpable and _lib().prctl(_PR_SET_DUMPABLE, ctypes.c_ulong(0), 0, 0, 0) != 0:
        raise _fail("making init undumpable")
