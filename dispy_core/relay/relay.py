"""``dispynetrelay``'s sockets: pings from other networks in, pings of its own out on this network, the
nodes' answers and announcements back to the clients.

Broadcasts do not cross routers, so a client cannot ping the nodes of a remote network; it can ping a
host there that it names (``nodes=['10.2.0.*', '10.2.0.5']``: the search pings named hosts by unicast).
On that host the relay listens on the nodes' UDP port, bound to each of its addresses: Linux gives a
socket bound to the very address a unicast datagram is for precedence over a dispynode's socket bound to
every address, and gives it no broadcast, so a relay beside a node hears only pings meant for it, never
its network's own. For each ping (MAC checked with the relay's secret, replay guarded: a relay with a
secret ignores strangers), it pings its own network by broadcast or multicast with a nonce of its own
(``table.py`` remembers whose it is), and passes each node's reply back to where the client's ping came
from, as a reply to the client's nonce, signed anew, sent from the address the client pinged: so the
answer goes back through the client's NAT mapping. Announcements of this network's nodes (heard on the
clients' port) are passed on unchanged, still the node's, to the clients that pinged lately and to each
``--scheduler_node``; for those it also pings its network at start and every ``SCHEDULER_PING_INTERVAL``.
Nothing is unpickled; the datagrams are ``dispy_plugins.discovery_udp.datagram``'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from dispy_core.relay.table import RelayTable
from dispy_plugins.discovery_udp.datagram import Datagram, DatagramError, ReplayGuard, decode, encode, relayed
from dispy_plugins.discovery_udp.interfaces import Interface, choose_interfaces
from dispy_plugins.discovery_udp.sockets import Receiver, join_groups, send_everywhere, send_quietly, udp_socket

log = logging.getLogger("dispy.relay")

__all__ = ["NetRelay", "RelayOptions", "relay_interfaces"]

START_PINGS = 3
"""Pings of its own at start (for ``--scheduler_node``), half a second apart: one may be lost."""
SCHEDULER_PING_INTERVAL = 60.0
"""Then one every this many seconds, so a scheduler that starts later still hears of the nodes."""

Address = tuple[str, int]


@dataclass
class RelayOptions:
    key: bytes
    node_port: int
    """Where the nodes listen (UDP and TCP): the relay's pings go there."""
    relay_port: int
    """Where the relay hears clients' pings: the nodes' port by default, the one a client pings."""
    scheduler_port: int
    """The clients' port: announcements of this network's nodes are heard there; ``--scheduler_node`` s
    hear them there."""
    hosts: list[str] = field(default_factory=list)
    scheduler_nodes: list[Address] = field(default_factory=list)
    ipv4_multicast: bool = False
    ipv4_group: str = "239.255.97.5"
    ipv6_group: str = "ff05::674f:59"
    ipv6: bool = True


class NetRelay:
    """Runs until cancelled (``run``, or ``start`` then ``serve``); ``status_lines`` for the console."""

    def __init__(self, options: RelayOptions, table: RelayTable | None = None) -> None:
        self.options = options
        self.table = table or RelayTable()
        self.guard = ReplayGuard()
        self.v4: list[Interface] = []
        self.v6: list[Interface] = []
        self.listeners: dict[str, asyncio.DatagramTransport] = {}
        """The relay's addresses, each with its socket on ``relay_port``."""
        self._send4: asyncio.DatagramTransport | None = None
        self._send6: asyncio.DatagramTransport | None = None
        self._endpoints: list[asyncio.DatagramTransport] = []
        self.counts = {"pings relayed": 0, "replies passed on": 0, "announcements passed on": 0}

    # ------------------------------------------------------------------ sockets
    async def start(self) -> None:
        opts = self.options
        try:
            self.v4, self.v6 = relay_interfaces(opts.hosts, opts.ipv6)
        except ValueError as exc:
            raise OSError(str(exc)) from None
        for iface in self.v4 + self.v6:
            if iface.address in self.listeners or iface.address.startswith("fe80:"):
                continue  # a link-local address is never what a client of another network pings
            on_ping = functools.partial(self._from_client, iface.address)
            transport = await self._endpoint(iface.family, opts.relay_port, on_ping, iface.address)
            if transport is not None:
                self.listeners[iface.address] = transport
        if not self.listeners:
            raise OSError(f"cannot listen for pings on UDP port {opts.relay_port} at any address of "
                          f"{', '.join(i.describe() for i in self.v4 + self.v6) or 'no interface'}")
        self._send4 = await self._endpoint(socket.AF_INET, 0, self._from_node, shared=False) if self.v4 else None
        self._send6 = await self._endpoint(socket.AF_INET6, 0, self._from_node, shared=False) if self.v6 else None
        await self._listen_announcements()
        log.info("dispynetrelay: passing on pings heard at %s, UDP port %d, to the nodes' port %d by %s out of "
                 "%s; announcements heard on UDP %d go to the clients that pinged%s", ", ".join(self.listeners),
                 opts.relay_port, opts.node_port, "multicast" if opts.ipv4_multicast else "broadcast",
                 ", ".join(i.describe() for i in self.v4 + self.v6), opts.scheduler_port,
                 "".join(f" and {h}:{p}" for h, p in opts.scheduler_nodes))

    async def _listen_announcements(self) -> None:
        opts = self.options
        if self.v4:
            listen4 = await self._endpoint(socket.AF_INET, opts.scheduler_port, self._from_announcer)
            if listen4 is not None and opts.ipv4_multicast:
                join_groups(listen4.get_extra_info("socket"), opts.ipv4_group, [i for i in self.v4 if not i.loopback])
        if self.v6:
            listen6 = await self._endpoint(socket.AF_INET6, opts.scheduler_port, self._from_announcer)
            if listen6 is not None:
                join_groups(listen6.get_extra_info("socket"), opts.ipv6_group, self.v6)

    async def _endpoint(self, family: int, port: int, on_datagram: Callable[[bytes, Address], None],
                        address: str = "", shared: bool = True) -> asyncio.DatagramTransport | None:
        try:
            sock = udp_socket(family, port, shared, address)
        except OSError as exc:
            log.warning("dispynetrelay: cannot bind UDP %s:%d: %s", address or "*", port, exc)
            return None
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: Receiver(on_datagram), sock=sock)
        self._endpoints.append(transport)
        return transport

    async def run(self) -> None:
        """``start``, then ``serve``."""
        await self.start()
        await self.serve()

    async def serve(self) -> None:
        """Serve until cancelled (once started); ping for the ``--scheduler_node`` s now and then."""
        try:
            if not self.options.scheduler_nodes:
                await asyncio.Event().wait()  # only clients' pings and nodes' announcements from now on
            while True:
                for _ in range(START_PINGS):
                    ping = Datagram("ping", name="dispynetrelay")
                    self.table.own(ping.nonce)
                    self._ping_network(ping)
                    await asyncio.sleep(0.5)
                await asyncio.sleep(SCHEDULER_PING_INTERVAL)
        finally:
            self.close()

    def close(self) -> None:
        for transport in self._endpoints:
            transport.close()
        self._endpoints.clear()
        self.listeners.clear()

    # ------------------------------------------------------------------ datagrams
    def _from_client(self, local: str, data: bytes, source: Address) -> None:
        """A ping sent to the relay's address ``local``: ping this network on the client's behalf."""
        try:
            datagram = decode(data, self.options.key)
            if datagram.kind != "ping":
                raise DatagramError(f"a {datagram.kind}, not a ping")
            if self.table.is_own(datagram.nonce):
                return  # the relay's own ping, heard back on loopback
            self.guard.check(datagram)
        except DatagramError as exc:
            log.debug("dispynetrelay: ignored a datagram from %s: %s", source[0], exc)
            return
        ping = Datagram("ping", name=datagram.name)
        known = source in self.table.clients
        refused = self.table.admit(source, local, datagram.nonce, ping.nonce)
        if refused:
            log.debug("dispynetrelay: not passing on a ping of %s:%d: %s", source[0], source[1], refused)
            return
        tried = self._ping_network(ping)
        self.counts["pings relayed"] += 1
        if not known:
            log.info("dispynetrelay: passing on the pings of %s:%d (%s, sent to %s) to %s", source[0], source[1],
                     datagram.name or "?", local, "; ".join(tried) or "no interface")

    def _ping_network(self, ping: Datagram) -> list[str]:
        """``ping`` out of every interface (broadcast, multicast, or loopback unicast); what was tried."""
        opts = self.options
        data = encode(ping, opts.key)
        return send_everywhere(data, opts.node_port, self._send4, self._send6, self.v4, self.v6,
                               opts.ipv4_multicast, opts.ipv4_group, opts.ipv6_group)

    def _from_node(self, data: bytes, source: Address) -> None:
        """A node's reply to a ping of the relay: back to the client it was for (or the schedulers)."""
        try:
            datagram = decode(data, self.options.key)
            if datagram.kind != "reply":
                raise DatagramError(f"a {datagram.kind}, not a reply")
            self.guard.check(datagram)
        except DatagramError as exc:
            log.debug("dispynetrelay: ignored a datagram from %s: %s", source[0], exc)
            return
        asker = self.table.answer(datagram.reply_to)
        if asker is None or not datagram.addrs:
            log.debug("dispynetrelay: a reply of %s to no ping of ours (or too late)", source[0])
            return
        if asker.source is None:
            self._to_schedulers(encode(relayed(datagram, first=source[0]), self.options.key))
            return
        transport = self.listeners.get(asker.local)
        if transport is not None:
            send_quietly(transport, encode(relayed(datagram, asker.nonce, source[0]), self.options.key), asker.source)
            self.counts["replies passed on"] += 1
            log.debug("dispynetrelay: passed on the reply of node %s (%s) to %s:%d", datagram.name, source[0],
                      *asker.source)

    def _from_announcer(self, data: bytes, source: Address) -> None:
        """A node of this network announced itself: tell the clients that pinged lately, and the schedulers.
        The datagram goes on unchanged (the node's, authentic); the replay guard stops it going round."""
        try:
            datagram = decode(data, self.options.key)
            if datagram.kind != "announce":
                return  # a ping of a client of this host, on the shared port
            self.guard.check(datagram)
        except DatagramError as exc:
            log.debug("dispynetrelay: ignored a datagram from %s: %s", source[0], exc)
            return
        if not datagram.addrs:
            return
        for client, local in self.table.listeners():
            transport = self.listeners.get(local)
            if transport is not None and client != source:
                send_quietly(transport, data, client)
                self.counts["announcements passed on"] += 1
        self._to_schedulers(data, but=source)

    def _to_schedulers(self, data: bytes, but: Address | None = None) -> None:
        for host, port in self.options.scheduler_nodes:
            transport = self._send6 if ":" in host else self._send4
            if transport is not None and (host, port) != but:
                send_quietly(transport, data, (host, port))

    # ------------------------------------------------------------------ console
    def status_lines(self) -> list[str]:
        clients = self.table.listeners()
        lines = [f"dispynetrelay on {', '.join(self.listeners) or 'nothing (stopped)'} (UDP "
                 f"{self.options.relay_port}): " + ", ".join(f"{n} {what}" for what, n in self.counts.items())]
        lines.append(f"  clients that pinged in the last minutes: {len(clients)}")
        lines.extend(f"    {host}:{port} (pinged {local})" for (host, port), local in clients[-20:])
        if self.options.scheduler_nodes:
            lines.append("  scheduler nodes: " + ", ".join(f"{h}:{p}" for h, p in self.options.scheduler_nodes))
        return lines


def relay_interfaces(hosts: list[str], ipv6: bool = True) -> tuple[list[Interface], list[Interface]]:
    """The IPv4 and IPv6 interfaces holding ``hosts`` (every one when none is given); ValueError for an
    address that no interface holds, since the relay would silently hear nothing there."""
    bound_all = not hosts or any(h in ("", "0.0.0.0", "::") for h in hosts)
    v4_hosts = [h for h in hosts if ":" not in h]
    v6_hosts = [h for h in hosts if ":" in h]
    v4 = choose_interfaces(None if bound_all else v4_hosts) if bound_all or v4_hosts else []
    v6 = [i for i in choose_interfaces(None if bound_all else v6_hosts, ipv6=True) if not i.loopback] \
        if ipv6 and (bound_all or v6_hosts) else []
    if not bound_all:
        held = {i.address for i in v4} | {i.address for i in choose_interfaces(v6_hosts, ipv6=True)}
        missing = [h for h in hosts if h.split("%", 1)[0].strip("[]") not in held]
        if missing:
            raise ValueError(f"no interface of this machine that is up has the address {', '.join(missing)}")
    return v4, v6


