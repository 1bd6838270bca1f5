"""How a node makes itself known and to whom: the addresses it serves, its discovery responder, and the
``--scheduler_node`` rule (serve that scheduler and no one else).

Kept apart from :class:`~dispy_core.node.server.NodeServer`, which serves connections: this module decides who
may find and reach the node.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

import psutil

from dispy_core.channel import _fmt
from dispy_core.errors import ConfigError, DispyError
from dispy_core.interfaces import ByteStream
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import encode_frame
from dispy_core.ratelog import Throttled

if TYPE_CHECKING:
    from dispy_core.node.server import NodeServer

log = logging.getLogger("dispy.node")

__all__ = ["refuse_stranger", "resolve_schedulers", "served_addresses", "start_discovery"]


def served_addresses(ext_hosts: list[str], bind_hosts: list[str], port: int) -> list[tuple[str, int]]:
    """Where clients can reach a node: each bound address (its ``--ext_host`` if given), or, bound to every
    address, each usable address of the machine (loopback only when there is nothing else)."""
    if ext_hosts:
        return [(host, port) for host in ext_hosts]
    if bind_hosts:
        return [(host, port) for host in bind_hosts]
    found: list[tuple[str, int]] = []
    loopback: list[tuple[str, int]] = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = addr.address.split("%", 1)[0]
            if ip.startswith("fe80:"):
                continue  # link-local: needs a scope a peer cannot know
            (loopback if ip in ("127.0.0.1", "::1") or ip.startswith("127.") else found).append((ip, port))
    return found or loopback


def start_discovery(server: NodeServer, port: int) -> None:
    """Answer discovery pings and announce the node (to ``--scheduler_node`` too), if the plugin can."""
    discovery = server.plugins.make_discovery()
    if not hasattr(discovery, "respond"):
        log.info("discovery plugin %s does not answer pings: this node can only be named",
                 getattr(discovery, "name", "?"))
        return
    from dispy import config as public  # the original's ports and groups (DispyPort - 1 is the client's)

    options = server.options
    scheduler_nodes = []
    for spec in options.scheduler_nodes:
        host, _, sport = spec.rpartition(":") if spec.count(":") == 1 else (spec, "", "")
        scheduler_nodes.append((host or spec, int(sport) if sport.isdigit() else port - 1))
    responder = discovery.respond(
        secret=options.secret, name=server.name, node_port=port, client_port=port - 1,
        addrs=server.served_addresses(port), hosts=server.bind_hosts, cpus=lambda: server.avail_cpus,
        ping_interval=options.ping_interval, ipv4_multicast=options.ipv4_udp_multicast,
        ipv4_group=public.IPv4MulticastGroup, ipv6_group=public.IPv6MulticastGroup,
        scheduler_nodes=scheduler_nodes,
        connected_from=lambda ip: any(c.peer and c.peer[0] == ip for c in server.channels))
    server._spawn(responder.run())


async def resolve_schedulers(specs: list[str]) -> set[str]:
    """``--scheduler_node``: the addresses a node serves, and no other (resolved once, at start)."""
    loop = asyncio.get_running_loop()
    addresses: set[str] = set()
    for spec in specs:
        host = spec.rpartition(":")[0] if spec.count(":") == 1 else spec.strip("[]")
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise ConfigError(f"--scheduler_node {spec!r} does not resolve: {exc}") from exc
        addresses.update(str(info[4][0]) for info in infos)
    return addresses


async def refuse_stranger(stream: ByteStream, only_from: set[str], busy: Throttled) -> None:
    """A peer other than the scheduler the node serves: told why (an Error before the handshake), closed."""
    reason = f"this node serves only its scheduler ({', '.join(sorted(only_from))})"
    busy.warning("refused connection from %s: %s", _fmt(stream.peer), reason, key="stranger")
    try:
        stream.write_nowait(encode_frame(m.Error("refused", reason), seq=0, serializer="", mac_key=None))
        await asyncio.wait_for(stream.read(4096), 1.0)  # its Hello: closing before it arrives would reset
    except (OSError, DispyError, TimeoutError):  # the connection, and the peer would not read why
        pass
    await stream.close()
