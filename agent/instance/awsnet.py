"""AWS as an instance's network shows it: its resolver, AWS's endpoint names and a CA it trusts.

Inside an instance with a private network, every ``*.amazonaws.com`` name resolves to
:data:`AWS_ADDRESS`, where HTTPS (and HTTP) requests reach the state's local AWS
(agent.instance.localaws) through a proxy in the instance's services daemon (agent.instance.services):
TLS with a certificate for the name asked for (SNI), signed by the state's own CA. The instance trusts
that CA and asks that resolver through files cdsim adds to its upper layer before it starts (recorded as
synthesized, so they are no change of the instance's): ``/etc/resolv.conf`` (``nameserver``
:data:`DNS_ADDRESS`, Amazon's DNS address) and the CA bundles that curl, OpenSSL, Python, botocore and
the aws CLI read, each the host's with the CA added. Other names do not resolve: nothing a hook does
reaches a real AWS endpoint. The resolver also answers the instance's EC2 hostname (ip-A-B-C-D...).
Must not import the deploy engine or hooks_runtime.
"""
from __future__ import annotations

import datetime
import fcntl
import hashlib
import importlib.util
import os
import select
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable

from agent.fsutil import atomic_write

AWS_ADDRESS = "169.254.169.250"
DNS_ADDRESS = "169.254.169.253"
AWS_DOMAINS = ("amazonaws.com", "amazonaws.com.cn", "api.aws")
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem",
                  "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
                  # AWS CLI v2's own Python, as its installer puts it
                  "/usr/local/aws-cli/v2/current/dist/awscli/botocore/cacert.pem",
                  "/usr/local/aws-cli/v2/current/dist/certifi/cacert.pem")
CA_NAME = "cdsim local AWS CA"


# ---- the CA ---------------------------------------------------------------------------------------

def ca_files(state: str) -> tuple[str, str]:
    folder = os.path.join(state, "aws")
    return os.path.join(folder, "ca.pem"), os.path.join(folder, "ca.key")


def ensure_ca(state: str) -> str:
    """The state's CA certificate (PEM), made on first use; its key stays in the state folder (0600)."""
    cert_path, key_path = ca_files(state)
    if os.path.exists(cert_path):
        with open(cert_path, encoding="ascii") as f:
            return f.read()
    os.makedirs(os.path.dirname(cert_path), mode=0o700, exist_ok=True)
    with open(os.path.join(os.path.dirname(cert_path), "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(cert_path):
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID

            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
            now = datetime.datetime.now(datetime.UTC)
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                    .not_valid_after(now + datetime.timedelta(days=3650))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                 content_commitment=False, key_encipherment=False,
                                                 data_encipherment=False, key_agreement=False,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()), private=True)
            atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=True)
    with open(cert_path, encoding="ascii") as f:
        return f.read()


class Certificates:
    """Server certificates signed by the state's CA, one per name asked for (SNI), made on demand."""

    def __init__(self, state: str) -> None:
        self.state = state
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._folder = os.path.join(state, "aws", "certs")
        os.makedirs(self._folder, mode=0o700, exist_ok=True)

    def context(self, name: str) -> ssl.SSLContext:
        name = name.lower().rstrip(".")
        with self._lock:
            found = self._contexts.get(name)
            if found is None:
                found = self._contexts[name] = self._make(name)
            return found

    def _make(self, name: str) -> ssl.SSLContext:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ensure_ca(self.state)
        cert_path, key_path = ca_files(self.state)
        with open(cert_path, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                               critical=False)
                .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        base = os.path.join(self._folder, hashlib.sha256(name.encode()).hexdigest()[:16] + "-" + os.urandom(4).hex())
        with open(base + ".pem", "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
        with open(os.open(base + ".key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(base + ".pem", base + ".key")
        os.unlink(base + ".key")
        os.unlink(base + ".pem")
        return context


# ---- what the instance trusts and asks (files in its upper layer) ---------------------------------

def bundle_paths() -> list[str]:
    """The host's CA bundles an instance's programs read: the system's, and those of this Python's
    certifi and botocore (the aws CLI and boto3 of this Python read one of those)."""
    found = [p for p in SYSTEM_BUNDLES if os.path.isfile(p)]
    for module, relative in (("certifi", "cacert.pem"), ("botocore", "cacert.pem")):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), relative)
            if os.path.isfile(path):
                found.append(path)
    return list(dict.fromkeys(os.path.realpath(p) if os.path.islink(p) else p for p in found))


def resolv_conf() -> str:
    return f"# cdsim: the instance's resolver (AWS names resolve to the local AWS)\nnameserver {DNS_ADDRESS}\n"


def upper_files(state: str) -> dict[str, bytes]:
    """Path inside the instance -> content, for the files that make it trust the CA and ask the resolver."""
    ca = ensure_ca(state).encode()
    files = {"/etc/resolv.conf": resolv_conf().encode()}
    for path in bundle_paths():
        try:
            with open(path, "rb") as f:
                host = f.read()
        except OSError:
            continue
        files[path] = host.rstrip(b"\n") + b"\n\n# " + CA_NAME.encode() + b"\n" + ca
    return files


def write_upper(upper: str, files: dict[str, bytes], previous: dict[str, str],
                mirror: Callable[[str, str], None]) -> dict[str, str]:
    """Write ``files`` into the upper layer ``upper`` (not mounted), except where the instance has a
    file of its own there (one that is not what cdsim wrote before, per ``previous`` {path: sha256});
    returns {path: sha256} of what was written. ``mirror(upper, folder)`` makes the parent folders."""
    written: dict[str, str] = {}
    for path, data in files.items():
        target = upper + path
        if os.path.lexists(target) and not os.path.islink(target):
            try:
                with open(target, "rb") as f:
                    current = hashlib.sha256(f.read()).hexdigest()
            except OSError:
                continue
            if previous.get(path) != current:
                continue   # the instance's own (a hook ran update-ca-certificates): leave it
            if current == hashlib.sha256(data).hexdigest():
                written[path] = current
                continue
        elif os.path.lexists(target):
            continue
        mirror(upper, os.path.dirname(path))
        atomic_write(target, data)
        os.chmod(target, 0o644)
        written[path] = hashlib.sha256(data).hexdigest()
    return written


# ---- the resolver ---------------------------------------------------------------------------------

def _question(packet: bytes) -> tuple[str, int, int] | None:
    """(name, type, end offset) of a query's first question, or None."""
    if len(packet) < 12 or struct.unpack_from("!H", packet, 4)[0] < 1:
        return None
    labels, at = [], 12
    while at < len(packet):
        size = packet[at]
        if size == 0:
            at += 1
            break
        if size & 0xC0 or at + 1 + size > len(packet):
            return None
        labels.append(packet[at + 1:at + 1 + size].decode("ascii", "replace"))
        at += 1 + size
    if at + 4 > len(packet):
        return None
    qtype = struct.unpack_from("!H", packet, at)[0]
    return ".".join(labels).lower(), qtype, at + 4


def is_aws_name(name: str) -> bool:
    name = name.lower().rstrip(".")
    return any(name == d or name.endswith("." + d) for d in AWS_DOMAINS)


def dns_answer(packet: bytes, lookup: Callable[[str], str | None]) -> bytes | None:
    """The response to one DNS query: A records from ``lookup`` (name -> IPv4 or None), no other records,
    NXDOMAIN for names it does not know."""
    q = _question(packet)
    if q is None:
        return None
    name, qtype, end = q
    address = lookup(name)
    flags = 0x8180   # a response; recursion desired and available
    rcode = 0 if address is not None else 3
    answers = b""
    if address is not None and qtype in (1, 255):   # A, ANY
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    header = struct.pack("!HHHHHH", struct.unpack_from("!H", packet)[0], flags | rcode, 1, 1 if answers else 0, 0, 0)
    return header + packet[12:end] + answers


def serve_dns(sock: socket.socket, lookup: Callable[[str], str | None]) -> None:
    while True:
        try:
            packet, peer = sock.recvfrom(4096)
        except OSError:
            return
        reply = dns_answer(packet, lookup)
        if reply is not None:
            try:
                sock.sendto(reply, peer)
            except OSError:
                continue


# ---- the proxy to the local AWS -------------------------------------------------------------------

def _relay(client: socket.socket, upstream: Callable[[], str]) -> None:
    """Copy bytes both ways between ``client`` (maybe TLS) and the local AWS, in this one thread (an
    SSL socket must not be read and written by two threads at once)."""
    try:
        backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        backend.connect(upstream())
    except OSError as e:
        print(f"cdsim: cannot reach the local AWS: {e}", file=sys.stderr, flush=True)
        why = f"cdsim: the local AWS is not available: {e}\n".encode("utf-8", "replace")
        try:   # an answer the aws CLI and boto3 show, rather than a dropped connection
            client.settimeout(5)
            client.recv(65536)   # (its request first: closing on unread data would reset the connection)
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                           + f"Content-Length: {len(why)}\r\n\r\n".encode() + why)
        except OSError:
            pass
        client.close()
        return
    reading_client = True
    try:
        while True:
            pending = isinstance(client, ssl.SSLSocket) and client.pending() > 0
            watched = [backend] + ([client] if reading_client else [])
            ready = watched if pending else select.select(watched, [], [], 300)[0]
            if not ready:
                break   # idle for five minutes
            if reading_client and (pending or client in ready):
                data = client.recv(65536)
                if data:
                    backend.sendall(data)
                else:
                    reading_client = False
                    backend.shutdown(socket.SHUT_WR)
            if backend in ready and not pending:
                data = backend.recv(65536)
                if not data:
                    break
                client.sendall(data)
    except (OSError, ssl.SSLError):
        pass
    finally:
        client.close()
        backend.close()


def serve_aws(listener: socket.socket, upstream: Callable[[], str], certificates: Certificates | None) -> None:
    """Accept connections on ``listener`` and relay each to the local AWS (``upstream()`` gives its socket,
    starting it if needed); with ``certificates``, as HTTPS for the name the client asks for."""
    default: list[ssl.SSLContext] = []

    def handle(client: socket.socket) -> None:
        client.settimeout(120)
        if certificates is not None:
            if not default:
                default.append(certificates.context("amazonaws.com"))
                default[0].sni_callback = lambda sslsock, name, _ctx: setattr(
                    sslsock, "context", certificates.context(name)) if name else None
            try:
                client = default[0].wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError) as e:
                print(f"cdsim: TLS handshake with the instance failed: {e}", file=sys.stderr, flush=True)
                client.close()
                return
        client.settimeout(None)
        _relay(client, upstream)

    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(client,), daemon=True).start()
