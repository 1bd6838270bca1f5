"""Node discovery: explicit hosts are resolved (no packet sent); patterns (``*``, ``10.0.1.*``) are found
by UDP broadcast or multicast (``search``), which nodes answer and announce themselves to (``respond``).
The datagrams and their authentication: ``datagram.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from dispy_core.errors import ConfigError
from dispy_core.interfaces import NodeAddress
from dispy_plugins.discovery_udp.datagram import discovery_key
from dispy_plugins.discovery_udp.responder import AnnounceOptions, NodeResponder
from dispy_plugins.discovery_udp.search import Found, NodeSearch, SearchOptions

__all__ = ["UdpDiscovery"]


class UdpDiscovery:
    """Resolves a host name or IP literal to the TCP addresses of the node(s) listening there."""

    name = "udp"

    def __init__(self, config: Any = None) -> None:
        self.config = config

    async def resolve(self, host: str, port: int) -> list[NodeAddress]:
        """IP literals as given; names through the resolver (every address, deduplicated, in order)."""
        host = host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise ConfigError("empty node host name")
        if "*" in host:
            raise ConfigError(f"node {host!r} is a pattern: it is found by search(), not resolved")
        if not 0 <= port <= 65535:
            raise ConfigError(f"node {host!r}: port {port} is out of range")
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            pass
        else:
            return [NodeAddress(ip_addr=host if "%" in host else ip.compressed, port=port, host=host)]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot resolve node host {host!r}: {reason}") from exc
        found: list[NodeAddress] = []
        seen: set[str] = set()
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip_addr = str(sockaddr[0])
            if ip_addr not in seen:
                seen.add(ip_addr)
                found.append(NodeAddress(ip_addr=ip_addr, port=port, host=host))
        if not found:
            raise ConfigError(f"cannot resolve node host {host!r}: no IPv4 or IPv6 address")
        return found

    def search(self, *, secret: str | bytes, node_port: int, client_port: int, on_found: Found, name: str = "",
               hosts: list[str] | None = None, ipv4_multicast: bool = False, ipv4_group: str = "239.255.97.5",
               ipv6_group: str = "ff05::674f:59") -> NodeSearch:
        """A search for nodes (``start()``, then ``ping()`` whenever wanted, ``describe()``, ``close()``)."""
        return NodeSearch(SearchOptions(discovery_key(secret), node_port, client_port, name, list(hosts or []),
                                        ipv4_multicast, ipv4_group, ipv6_group), on_found)

    def respond(self, *, secret: str | bytes, name: str, node_port: int, client_port: int,
                addrs: list[tuple[str, int]], hosts: list[str], cpus: Any = None, ping_interval: float | None = None,
                ipv4_multicast: bool = False, ipv4_group: str = "239.255.97.5", ipv6_group: str = "ff05::674f:59",
                scheduler_nodes: list[tuple[str, int]] | None = None, connected_from: Any = None) -> NodeResponder:
        """The node's side (``await run()`` until cancelled): answers pings, announces the node."""
        return NodeResponder(AnnounceOptions(
            discovery_key(secret), name, node_port, client_port, addrs, hosts, cpus or (lambda: 0), ping_interval,
            ipv4_multicast, ipv4_group, ipv6_group, list(scheduler_nodes or []),
            connected_from or (lambda ip: False)))
