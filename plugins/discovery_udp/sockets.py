"""UDP sockets for discovery, and the asyncio protocol that hands their datagrams on (shared by both ends)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from dispy_plugins.discovery_udp.interfaces import Interface

log = logging.getLogger("dispy.discovery")

__all__ = ["Receiver", "join_groups", "send_everywhere", "udp_socket"]


def udp_socket(family: int, port: int, shared: bool, address: str = "") -> socket.socket:
    """A non-blocking UDP socket bound to every address on ``port`` (0: any port); ``shared``: several
    processes of one host may bind the port (clients all hear announcements, nodes on other addresses).
    ``address``: bound to that one address instead; Linux then hands it the unicast datagrams for that
    address ahead of a socket bound to every address, and no broadcast (a relay beside a node)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address or ("0.0.0.0" if family == socket.AF_INET else "::"), port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def join_groups(sock: socket.socket, group: str, interfaces: list[Interface]) -> list[str]:
    """Join ``group`` on each interface; the names of those where it worked."""
    joined = []
    for iface in interfaces:
        try:
            if iface.family == socket.AF_INET:
                request = socket.inet_aton(group) + socket.inet_aton(iface.address)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)
            else:
                request = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", iface.index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, request)
            joined.append(iface.name)
        except OSError:
            continue
    return joined


class Receiver(asyncio.DatagramProtocol):
    """Passes each datagram to ``on_datagram(data, (ip, port))``; errors of the socket are not fatal."""

    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier send (nobody listening there): nothing to do."""


def send_everywhere(data: bytes, port: int, send4: asyncio.DatagramTransport | None,
                    send6: asyncio.DatagramTransport | None, v4: list[Interface], v6: list[Interface],
                    ipv4_multicast: bool, ipv4_group: str, ipv6_group: str) -> list[str]:
    """``data`` to ``port`` out of every interface: its broadcast address (or the IPv4 multicast group), the
    IPv6 group, or by unicast on loopback. What was tried, for the user."""
    tried = []
    if send4 is not None:
        sock = send4.get_extra_info("socket")
        for iface in v4:
            if iface.loopback:
                target = iface.address
            elif ipv4_multicast:
                target = ipv4_group
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface.address))
            elif iface.broadcast:
                target = iface.broadcast
            else:
                continue
            send_quietly(send4, data, (target, port))
            tried.append(f"{target}:{port} via {iface.describe()}")
    if send6 is not None:
        for index, name in sorted({(i.index, i.name) for i in v6}):
            send_quietly(send6, data, (ipv6_group, port, 0, index))
            tried.append(f"[{ipv6_group}%{name}]:{port}")
    return tried


def send_quietly(transport: asyncio.DatagramTransport, data: bytes, target: tuple[object, ...]) -> None:
    """A datagram that cannot go (no route, interface down) is only worth a debug line."""
    try:
        transport.sendto(data, target)
    except OSError as exc:
        log.debug("discovery: sending to %s failed: %s", target, exc)
