"""Which interfaces discovery uses, chosen with psutil: up, with an address, never loopback by default.

A broadcast goes to each chosen IPv4 interface's broadcast address (computed from its netmask);
multicast to the group, out of each chosen interface. Restricted to the interfaces holding ``hosts``
when given (the client's ``host=``, a node's ``-i``). A host on loopback only has no broadcast:
loopback is then used by unicast (127.0.0.1), and said so.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import psutil

__all__ = ["Interface", "choose_interfaces"]


@dataclass(frozen=True)
class Interface:
    name: str
    address: str
    family: int
    broadcast: str = ""
    """IPv4: where a broadcast on this interface goes."""
    index: int = 0
    """IPv6: the interface index, for multicast and link-local addresses."""
    loopback: bool = False

    def describe(self) -> str:
        return f"{self.name} ({self.address})"


def choose_interfaces(hosts: list[str] | None = None, ipv6: bool = False) -> list[Interface]:
    """Up interfaces with an address of the wanted family; only those holding ``hosts`` when given.

    Loopback is included only when asked for by address (``hosts`` names a loopback address) or when
    nothing else is up; the caller tells the user in that case (``Interface.loopback``)."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    wanted = {_plain(h) for h in hosts or [] if h}
    any_address = bool(wanted & {"0.0.0.0", "::", ""}) or not wanted
    stats = psutil.net_if_stats()
    found: list[Interface] = []
    for name, addrs in psutil.net_if_addrs().items():
        stat = stats.get(name)
        if stat is None or not stat.isup:
            continue
        for addr in addrs:
            if addr.family != family:
                continue
            ip = _plain(addr.address)
            try:
                parsed = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if not any_address and ip not in wanted:
                continue
            broadcast = ""
            if family == socket.AF_INET:  # from the netmask: psutil reports the address itself when none is set
                broadcast = _broadcast_of(ip, addr.netmask)
            index = socket.if_nametoindex(name) if family == socket.AF_INET6 else 0
            found.append(Interface(name, ip, family, broadcast, index, parsed.is_loopback))
    if any_address:
        real = [i for i in found if not i.loopback]
        return real or found
    return found


def _plain(address: str) -> str:
    return address.split("%", 1)[0].strip("[]")


def _broadcast_of(ip: str, netmask: str | None) -> str:
    if not netmask:
        return ""
    try:
        network = ipaddress.IPv4Network(f"{ip}/{netmask}", strict=False)
    except ValueError:
        return ""
    return str(network.broadcast_address) if network.prefixlen < 31 else ""
