"""The client's (and scheduler's) half of discovery: ping the nodes' port, hear replies and announcements.

Pings leave from an ephemeral port, by broadcast on each chosen IPv4 interface (or to the IPv4 multicast
group with ``ipv4_udp_multicast``) and to the IPv6 group; nodes answer by unicast to where the ping came
from, so a client behind NAT needs no port forwarding. Announcements of nodes that start or come back
arrive on the client port (9700 by default), which any number of clients on one host share.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from dispy_plugins.discovery_udp.datagram import Datagram, DatagramError, ReplayGuard, decode, encode
from dispy_plugins.discovery_udp.interfaces import Interface, choose_interfaces
from dispy_plugins.discovery_udp.sockets import Receiver, join_groups, send_everywhere, send_quietly, udp_socket

log = logging.getLogger("dispy.discovery")

__all__ = ["NodeSearch", "SearchOptions"]

Found = Callable[[str, int, str], None]
"""on_found(ip_addr, port, node name)"""


@dataclass
class SearchOptions:
    key: bytes
    node_port: int
    client_port: int
    name: str = ""
    hosts: list[str] = field(default_factory=list)
    """Restrict discovery to the interfaces holding these addresses (the client's ``host``)."""
    ipv4_multicast: bool = False
    ipv4_group: str = "239.255.97.5"
    ipv6_group: str = "ff05::674f:59"
    ipv6: bool = True


class NodeSearch:
    """Pings and listens until closed; every node heard of goes to ``on_found`` (repeats included)."""

    def __init__(self, options: SearchOptions, on_found: Found) -> None:
        self.options = options
        self.on_found = on_found
        self.guard = ReplayGuard()
        self.nonces: set[str] = set()
        self.tried: list[str] = []
        self.listening = ""
        self._endpoints: list[asyncio.DatagramTransport] = []
        self._send4: asyncio.DatagramTransport | None = None
        self._send6: asyncio.DatagramTransport | None = None
        self.v4: list[Interface] = []
        self.v6: list[Interface] = []
        self.unicast: set[tuple[str, int]] = set()
        """Hosts the program named: pinged directly too, so a ``dispynetrelay`` there passes the ping on to
        its network (a node there just answers; it is in use already)."""

    async def start(self) -> None:
        opts = self.options
        self.v4 = choose_interfaces(opts.hosts, ipv6=False)
        self.v6 = [i for i in choose_interfaces(opts.hosts, ipv6=True) if not i.loopback] if opts.ipv6 else []
        self._send4 = await self._endpoint(socket.AF_INET, 0, shared=False)
        if self.v6:
            self._send6 = await self._endpoint(socket.AF_INET6, 0, shared=False)
        heard = []
        listen4 = await self._endpoint(socket.AF_INET, opts.client_port, shared=True)
        if listen4 is not None:
            heard.append(f"UDP {opts.client_port}")
            if opts.ipv4_multicast:
                join_groups(listen4.get_extra_info("socket"), opts.ipv4_group, [i for i in self.v4 if not i.loopback])
        if self.v6:
            listen6 = await self._endpoint(socket.AF_INET6, opts.client_port, shared=True)
            if listen6 is not None:
                join_groups(listen6.get_extra_info("socket"), opts.ipv6_group, self.v6)
                heard.append(f"[{opts.ipv6_group}]:{opts.client_port}")
        self.listening = ", ".join(heard) or "nothing (the client port is taken): replies to pings only"
        if self.v4 and all(i.loopback for i in self.v4) and not opts.hosts:
            log.warning("discovery: no network interface is up but loopback; only nodes on this machine can be "
                        "found")

    async def _endpoint(self, family: int, port: int, shared: bool) -> asyncio.DatagramTransport | None:
        try:
            sock = udp_socket(family, port, shared)
        except OSError as exc:
            log.debug("discovery: cannot bind UDP port %d (%s): %s", port, "IPv6" if family == socket.AF_INET6
                      else "IPv4", exc)
            return None
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: Receiver(self._received), sock=sock)
        self._endpoints.append(transport)
        return transport

    def ping(self) -> None:
        """One ping out of every chosen interface (broadcast, multicast, or loopback unicast)."""
        opts = self.options
        datagram = Datagram("ping", name=opts.name)
        self.nonces.add(datagram.nonce)
        data = encode(datagram, opts.key)
        tried = send_everywhere(data, opts.node_port, self._send4, self._send6, self.v4, self.v6,
                                opts.ipv4_multicast, opts.ipv4_group, opts.ipv6_group)
        for host, port in sorted(self.unicast):
            transport = self._send6 if ":" in host else self._send4
            if transport is not None:
                send_quietly(transport, data, (host, port))
                tried.append(f"{host}:{port} (named: a relay there passes it on)")
        self.tried = tried

    def describe(self) -> str:
        """What was tried, for the warning when no node answers."""
        pinged = "; ".join(self.tried) or "no interface with a broadcast address is up"
        return f"pinged {pinged}; listening for announcements on {self.listening}"

    def _received(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            datagram = decode(data, self.options.key)
            if datagram.kind == "ping":
                return  # another client's, heard on a shared port
            if datagram.kind == "reply" and datagram.reply_to not in self.nonces:
                raise DatagramError("a reply to no ping of ours")
            self.guard.check(datagram)
        except DatagramError as exc:
            log.debug("discovery: ignored a datagram from %s: %s", source[0], exc)
            return
        if not datagram.addrs:
            return
        # the address the node's datagram came from, when it serves there; else the first it names (NAT)
        addrs = [a for a in datagram.addrs if a[0] == source[0]] or list(datagram.addrs)
        ip_addr, port = addrs[0]
        self.on_found(ip_addr, port, datagram.name)

    def close(self) -> None:
        for transport in self._endpoints:
            transport.close()
        self._endpoints.clear()
