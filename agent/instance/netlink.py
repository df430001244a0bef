"""The few rtnetlink requests an instance's network needs (a veth pair, addresses, routes, link up),
made from Python so no iproute2 is needed. Each acts on the network namespace of the calling thread.
Linux only; imports nothing of cdsim.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_NEWROUTE = 16, 17, 20, 24
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 1, 4, 0x200, 0x400
_NLMSG_ERROR = 2
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_LINKINFO, _IFLA_NET_NS_FD = 1, 3, 18, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_RTA_DST, _RTA_OIF = 1, 4
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_LINK, _RTN_UNICAST = 254, 3, 253, 1
_IFF_UP = 1


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def _request(kind: int, body: bytes, flags: int = 0) -> None:
    header = struct.pack("=IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as nl:   # NETLINK_ROUTE
        nl.bind((0, 0))
        nl.send(header + body)
        answer = nl.recv(65536)
    _length, answer_kind = struct.unpack_from("=IH", answer)
    if answer_kind == _NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", answer, 16)
        if code:
            raise OSError(-code, os.strerror(-code))


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def add_veth(name: str, peer: str, peer_namespace_fd: int, peer_mac: str | None = None) -> None:
    """A veth pair: ``name`` here, ``peer`` in the network namespace ``peer_namespace_fd`` refers to."""
    peer_attrs = (_attr(_IFLA_IFNAME, peer.encode() + b"\0")
                  + _attr(_IFLA_NET_NS_FD, struct.pack("=I", peer_namespace_fd)))
    if peer_mac:
        peer_attrs += _attr(_IFLA_ADDRESS, _mac(peer_mac))
    info = _attr(_IFLA_INFO_KIND, b"veth\0") + _attr(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, _ifinfo() + peer_attrs))
    body = _ifinfo() + _attr(_IFLA_IFNAME, name.encode() + b"\0") + _attr(_IFLA_LINKINFO, info)
    try:
        _request(_RTM_NEWLINK, body, _NLM_F_CREATE | _NLM_F_EXCL)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the veth pair {name}/{peer}: {e.strerror}"
                      + ("; the kernel needs veth (CONFIG_VETH)" if e.errno == errno.EOPNOTSUPP else "")) from e


def delete_link(name: str) -> None:
    """Remove the link ``name`` if there is one."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return
    _request(_RTM_DELLINK, _ifinfo(index))


def link_up(name: str) -> None:
    _request(_RTM_NEWLINK, _ifinfo(socket.if_nametoindex(name), _IFF_UP, _IFF_UP))


def add_address(address: str, prefix: int, interface: str) -> None:
    """``address``/``prefix`` on ``interface``; one that is there already is fine."""
    packed = socket.inet_aton(address)
    body = (struct.pack("=BBBBI", socket.AF_INET, prefix, 0, 0, socket.if_nametoindex(interface))
            + _attr(_IFA_LOCAL, packed) + _attr(_IFA_ADDRESS, packed))
    try:
        _request(_RTM_NEWADDR, body, _NLM_F_CREATE | _NLM_F_EXCL)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise OSError(e.errno, f"cannot add {address}/{prefix} to {interface}: {e.strerror}") from e


def add_link_route(network: str, prefix: int, interface: str) -> None:
    """A route to ``network``/``prefix`` straight out of ``interface`` (on the link, no gateway)."""
    body = (struct.pack("=BBBBBBBBI", socket.AF_INET, prefix, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_LINK,
                        _RTN_UNICAST, 0)
            + _attr(_RTA_DST, socket.inet_aton(network))
            + _attr(_RTA_OIF, struct.pack("=I", socket.if_nametoindex(interface))))
    try:
        _request(_RTM_NEWROUTE, body, _NLM_F_CREATE | _NLM_F_EXCL)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise OSError(e.errno, f"cannot route {network}/{prefix} to {interface}: {e.strerror}") from e
