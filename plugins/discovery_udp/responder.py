"""The node's half of discovery: answer pings, announce itself at start and every ``ping_interval``.

The node listens on its own port number in UDP (9701 by default). It answers a ping (MAC checked: a node
with a secret does not answer strangers) by unicast to where it came from, naming the addresses it serves
at (``ext_host`` for NAT). It announces itself on the interfaces it is bound to only: by broadcast (or the
IPv4 multicast group), the IPv6 group, by unicast on loopback, and to each ``--scheduler_node`` until one
of them connects.
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

__all__ = ["AnnounceOptions", "NodeResponder"]

START_ANNOUNCEMENTS = 3
"""Announcements at start, half a second apart: one lost datagram must not hide a node."""


@dataclass
class AnnounceOptions:
    key: bytes
    name: str
    node_port: int
    client_port: int
    addrs: list[tuple[str, int]]
    """Where the node serves (after ``ext_host``): what it tells clients."""
    hosts: list[str] = field(default_factory=list)
    """The addresses it is bound to: its announcements go out of their interfaces only."""
    cpus: Callable[[], int] = lambda: 0
    ping_interval: float | None = None
    ipv4_multicast: bool = False
    ipv4_group: str = "239.255.97.5"
    ipv6_group: str = "ff05::674f:59"
    scheduler_nodes: list[tuple[str, int]] = field(default_factory=list)
    """Announced to by unicast until ``connected_from`` says one of them connected (``--scheduler_node``)."""
    connected_from: Callable[[str], bool] = lambda ip: False


class NodeResponder:
    """Runs until cancelled (``run``); answers pings and announces the node."""

    def __init__(self, options: AnnounceOptions) -> None:
        self.options = options
        self.guard = ReplayGuard()
        self._endpoints: list[asyncio.DatagramTransport] = []
        self.v4: list[Interface] = []
        self.v6: list[Interface] = []
        self._send4: asyncio.DatagramTransport | None = None
        self._send6: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        opts = self.options
        v4_hosts = [h for h in opts.hosts if ":" not in h]
        v6_hosts = [h for h in opts.hosts if ":" in h]
        bound_all = not opts.hosts or any(h in ("", "0.0.0.0", "::") for h in opts.hosts)
        self.v4 = choose_interfaces(None if bound_all else v4_hosts) if bound_all or v4_hosts else []
        self.v6 = [i for i in choose_interfaces(None if bound_all else v6_hosts, ipv6=True) if not i.loopback] \
            if bound_all or v6_hosts else []
        self._send4 = await self._endpoint(socket.AF_INET, opts.node_port)
        if self._send4 is not None and opts.ipv4_multicast:
            join_groups(self._send4.get_extra_info("socket"), opts.ipv4_group, [i for i in self.v4 if not i.loopback])
        if self.v6:
            self._send6 = await self._endpoint(socket.AF_INET6, opts.node_port)
            if self._send6 is not None:
                join_groups(self._send6.get_extra_info("socket"), opts.ipv6_group, self.v6)
        where = ", ".join(i.describe() for i in self.v4 + self.v6) or "no interface"
        log.info("discovery: answering pings on UDP port %d; announcing on %s", opts.node_port, where)

    async def _endpoint(self, family: int, port: int) -> asyncio.DatagramTransport | None:
        try:
            sock = udp_socket(family, port, shared=True)
        except OSError as exc:
            log.warning("discovery: cannot listen on UDP port %d (%s): %s; this node can only be named, not "
                        "discovered", port, "IPv6" if family == socket.AF_INET6 else "IPv4", exc)
            return None
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: Receiver(self._received), sock=sock)
        self._endpoints.append(transport)
        return transport

    async def run(self) -> None:
        """Announce at start, then every ``ping_interval``; tell ``--scheduler_node`` until it connects."""
        await self.start()
        try:
            for _ in range(START_ANNOUNCEMENTS):
                self.announce()
                await asyncio.sleep(0.5)
            loop = asyncio.get_running_loop()
            interval = self.options.ping_interval
            next_announce = loop.time() + interval if interval else None
            retry, next_retry = 1.0, loop.time() + 1.0
            while True:
                waiting = [s for s in self.options.scheduler_nodes if not self.options.connected_from(s[0])]
                deadlines = [d for d in (next_announce, next_retry if waiting else None) if d is not None]
                if not deadlines:
                    await asyncio.Event().wait()  # nothing more to say until cancelled
                await asyncio.sleep(max(0.0, min(deadlines) - loop.time()))
                now = loop.time()
                if next_announce is not None and now >= next_announce:
                    self.announce()  # the scheduler nodes too
                    next_announce = now + (interval or 0.0)
                elif waiting and now >= next_retry:
                    self._announce_to(waiting)
                    retry = min(retry * 2, 30.0)
                    next_retry = now + retry
        finally:
            self.close()

    def announce(self) -> None:
        opts = self.options
        data = encode(self._datagram("announce"), opts.key)
        send_everywhere(data, opts.client_port, self._send4, self._send6, self.v4, self.v6, opts.ipv4_multicast,
                        opts.ipv4_group, opts.ipv6_group)
        self._announce_to(opts.scheduler_nodes)

    def _announce_to(self, targets: list[tuple[str, int]]) -> None:
        for host, port in targets:
            transport = self._send6 if ":" in host else self._send4
            if transport is not None:
                send_quietly(transport, encode(self._datagram("announce"), self.options.key), (host, port))

    def _datagram(self, kind: str, reply_to: str = "") -> Datagram:
        opts = self.options
        return Datagram(kind, name=opts.name, addrs=tuple(opts.addrs), cpus=opts.cpus(), reply_to=reply_to)

    def _received(self, data: bytes, source: tuple[str, int]) -> None:
        try:
            datagram = decode(data, self.options.key)
            if datagram.kind != "ping":
                return  # another node's announcement, heard on a shared port
            self.guard.check(datagram)
        except DatagramError as exc:
            log.debug("discovery: ignored a datagram from %s: %s", source[0], exc)
            return
        transport = self._send6 if ":" in source[0] else self._send4
        if transport is not None:
            send_quietly(transport, encode(self._datagram("reply", datagram.nonce), self.options.key), source)

    def close(self) -> None:
        for transport in self._endpoints:
            transport.close()
        self._endpoints.clear()

