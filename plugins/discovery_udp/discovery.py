"""Node discovery. This version resolves explicitly listed hosts only and sends no packets at all.

Broadcast / multicast discovery (hosts given as ``*`` or ``10.0.1.*``) will come in a later version;
until then such patterns are refused loudly instead of silently finding nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from dispy_core.errors import ConfigError
from dispy_core.interfaces import NodeAddress

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
            raise ConfigError(f"node {host!r}: discovery by broadcast/wildcard ('*') is not implemented yet; "
                              "list nodes explicitly (host names or IP addresses)")
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
