"""The services an EC2 instance finds on its network, served into one instance's private network.

Per running instance with a private network, one daemon process on the host (started by the keeper's
:func:`start`, ended by :func:`stop` or as soon as the instance's init is gone) serves the instance
metadata service (agent.instance.imds) at 169.254.169.254:80 on the instance's private network: a
short-lived child joins the instance's network namespace (after its user namespace, when it has one),
makes a namespace for the services joined to the instance's by a veth pair (below), opens the
listening sockets there and hands them to the daemon (SCM_RIGHTS). The host's own network is never
touched; the daemon itself stays outside the instance (its files, processes and capabilities are the
host's caller's), so nothing inside can change what it runs. Instances with the host's network get
none of this (see imds.HOST_NETWORK_NOTE).

Records: ``services.json`` (the daemon's pid and start time) and ``services.log`` in the instance folder.
Must not import the deploy engine, hooks_runtime or agent.instance.keeper (which imports this).
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.errors import EnvironmentProblem
from agent.fsutil import atomic_write
from agent.instance import awsnet, imds, localaws, netlink, overlay, store
from agent.instance import namespaces as ns
from agent.instance.procstat import start_ticks

RECORD = "services.json"
LOG = "services.log"
START_TIMEOUT = 20.0

_MAIN = ("import sys; from agent.instance.services import daemon_main; "
         "sys.exit(daemon_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))")


# ---- outside: start, find, stop -------------------------------------------------------------------

def _record(inst: store.Instance) -> dict[str, int] | None:
    try:
        with open(os.path.join(inst.path, RECORD), encoding="utf-8") as f:
            record: dict[str, int] = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return record


def running(inst: store.Instance) -> int | None:
    """The daemon's pid when it runs for the instance's current init, else None."""
    record = _record(inst)
    if not record or start_ticks(record.get("pid", -1)) != record.get("started"):
        return None
    return record["pid"]


def prepare(inst: store.Instance) -> None:
    """Before the instance starts (its overlay not mounted): the files that make it ask its own resolver
    and trust the local AWS's CA (agent.instance.awsnet), recorded as synthesized."""
    if inst.network != "private":
        return
    state = os.path.dirname(os.path.dirname(inst.path))
    try:
        written = awsnet.write_upper(inst.upper, awsnet.upper_files(state), store.read_synthesized(inst),
                                     overlay._mirror_dirs)
    except OSError:
        return   # an upper layer that is not a folder: the keeper says what is wrong when it mounts it
    store.add_synthesized(inst, written)


def start(inst: store.Instance, init_pid: int, init_started: int, env: dict[str, str]) -> None:
    """Make sure the instance's services run (nothing for an instance with the host's network). Called
    with the instance's lock held, once its init runs."""
    if inst.network != "private":
        return
    pid = running(inst)
    if pid is not None:
        record = _record(inst) or {}
        if record.get("init_pid") == init_pid and record.get("init_started") == init_started:
            return
        _end(pid)   # serving an init that is gone (its sockets went with its namespace)
    imds.load(inst)   # the identity exists before the first request
    read_end, write_end = os.pipe()
    with open(os.path.join(inst.path, LOG), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", _MAIN, inst.path, str(init_pid), str(init_started),
                                 str(write_end)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(write_end,), start_new_session=True, cwd="/", env=env)
    os.close(write_end)
    report = ns.read_report(read_end, START_TIMEOUT, lambda text: "\n" in text).strip()
    proc.wait()
    if report != "ok":
        raise EnvironmentProblem(
            f"cannot start the instance metadata service of instance {inst.name!r}: "
            f"{report or 'no answer (see ' + os.path.join(inst.path, LOG) + ')'}",
            reference="instance-services",
            hint=f"stop the instance (`cdsim instance stop {inst.name}`) and try again; "
                 f"{os.path.join(inst.path, LOG)} may say more")


def stop(inst: store.Instance) -> None:
    """End the instance's services daemon, if it runs."""
    pid = running(inst)
    if pid is not None:
        _end(pid)
    try:
        os.unlink(os.path.join(inst.path, RECORD))
    except FileNotFoundError:
        pass


def _end(pid: int) -> None:
    started = start_ticks(pid)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while start_ticks(pid) == started and started is not None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        else:
            return


# ---- the instance's network (in a child of the daemon) --------------------------------------------
# The services live in a network namespace of their own, one veth pair away from the instance's: the
# instance gets `eth0` with its private address (and EC2's MAC), a route to 169.254.169.0/24 on that
# link, and keeps every port of its own addresses free (a hook's server on 0.0.0.0:80 binds as on EC2).
# The other end (its subnet's router address, 169.254.169.254 ...) and the listening sockets are in the
# services' namespace, which lives as long as the daemon holds them; ending it removes the pair.

INSTANCE_LINK = "eth0"
SERVICES_LINK = "vpc0"
LINK_LOCAL = ("169.254.169.0", 24)


def join_network(init_pid: int, init_started: int, userns: bool) -> None:
    """Join the instance's network namespace (after its user namespace, if it has one)."""
    if start_ticks(init_pid) != init_started:
        raise OSError(errno.ESRCH, "the instance's init is gone")
    kinds = ([(ns.CLONE_NEWUSER, "user")] if userns else []) + [(ns.CLONE_NEWNET, "net")]
    for flag, name in kinds:
        fd = os.open(f"/proc/{init_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            ns.setns(fd, flag)
        finally:
            os.close(fd)


def _thread_namespace() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _open_sockets(init_pid: int, init_started: int, userns: bool, identity: imds.Identity) -> list[socket.socket]:
    join_network(init_pid, init_started, userns)
    instance_ns = _thread_namespace()
    netlink.delete_link(INSTANCE_LINK)   # the pair of a daemon that was killed, if its namespace lingers
    ns.unshare(ns.CLONE_NEWNET)
    ns.loopback_up()
    netlink.add_veth(SERVICES_LINK, INSTANCE_LINK, instance_ns, identity["mac"])
    subnet = ipaddress.ip_interface(f"{identity['local_ipv4']}/20").network
    netlink.add_address(str(subnet.network_address + 1), 20, SERVICES_LINK)   # the subnet's router
    for address in (imds.ADDRESS, awsnet.DNS_ADDRESS, awsnet.AWS_ADDRESS):
        netlink.add_address(address, 32, SERVICES_LINK)
    netlink.link_up(SERVICES_LINK)
    sockets = []
    for address, port in ((imds.ADDRESS, imds.PORT), (awsnet.AWS_ADDRESS, 443), (awsnet.AWS_ADDRESS, 80)):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((address, port))
        listener.listen(128)
        sockets.append(listener)
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind((awsnet.DNS_ADDRESS, 53))
    sockets.append(resolver)
    ns.setns(instance_ns, ns.CLONE_NEWNET)
    netlink.add_address(identity["local_ipv4"], 20, INSTANCE_LINK)
    netlink.link_up(INSTANCE_LINK)
    netlink.add_link_route(LINK_LOCAL[0], LINK_LOCAL[1], INSTANCE_LINK)
    return sockets


# ---- the daemon -----------------------------------------------------------------------------------

class _MetadataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listener: socket.socket, metadata: imds.Metadata) -> None:
        super().__init__(listener.getsockname(), _MetadataHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.metadata = metadata


class _MetadataHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""
    timeout = 30
    server: _MetadataServer

    def _answer(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and 0 < int(length) <= 65536:
            self.rfile.read(int(length))
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.metadata.handle(self.command, self.path, headers)
        body = reply.body.encode("utf-8", "surrogateescape")
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def daemon_main(folder: str, init_pid: int, init_started: int, report: int) -> int:
    if os.fork() != 0:
        os._exit(0)   # the starting process reaps us at once; the daemon is nobody's child to wait for
    meta = store.read_meta(folder)
    inst = store.Instance(name=meta["name"], path=folder, network=meta["network"])
    identity = imds.load(inst)
    ours, theirs = socket.socketpair()
    child = os.fork()
    if child == 0:
        ours.close()
        try:
            sockets = _open_sockets(init_pid, init_started, bool(meta.get("user_namespace")), identity)
            socket.send_fds(theirs, [b"ok"], [s.fileno() for s in sockets])
            os._exit(0)
        except Exception as e:  # noqa: BLE001 - reported to the daemon, which reports it
            theirs.sendall(f"error {e}".encode("utf-8", "replace"))
            os._exit(1)
    theirs.close()
    message, fds, _flags, _addr = socket.recv_fds(ours, 4096, 8)
    os.waitpid(child, 0)
    ours.close()
    if not fds:
        os.write(report, (message.decode("utf-8", "replace") or "error the namespace helper died")
                 .replace("\n", " ").encode() + b"\n")
        return 1
    listener, https, http, resolver = (socket.socket(fileno=fd) for fd in fds)
    atomic_write(os.path.join(folder, RECORD), json.dumps(
        {"pid": os.getpid(), "started": start_ticks(os.getpid()), "init_pid": init_pid,
         "init_started": init_started}) + "\n", private=True)
    metadata = imds.Metadata(lambda: imds.load(inst), lambda path, why: imds.record_refusal(inst, path, why))
    server = _MetadataServer(listener, metadata)
    threading.Thread(target=server.serve_forever, name="imds", daemon=True).start()
    state = os.path.dirname(os.path.dirname(folder))
    env = dict(os.environ)

    def upstream() -> str:
        return localaws.ensure(state, env)

    names = {imds.hostname(identity): identity["local_ipv4"]}

    def lookup(name: str) -> str | None:
        return awsnet.AWS_ADDRESS if awsnet.is_aws_name(name) else names.get(name)

    certificates = awsnet.Certificates(state)
    for target, args in ((awsnet.serve_dns, (resolver, lookup)), (awsnet.serve_aws, (https, upstream, certificates)),
                         (awsnet.serve_aws, (http, upstream, None))):
        threading.Thread(target=target, args=args, daemon=True).start()
    os.write(report, b"ok\n")
    os.close(report)
    _wait_for_exit(init_pid, init_started)
    os._exit(0)


def _wait_for_exit(pid: int, started: int) -> None:
    """Return once the process ``pid`` (started at ``started``) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = -1
    if fd >= 0 and start_ticks(pid) == started:
        select.select([fd], [], [])
        return
    while start_ticks(pid) == started:
        time.sleep(0.5)
