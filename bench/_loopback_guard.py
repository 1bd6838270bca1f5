"""Keep a process on loopback: refuse to send to or connect to other addresses, bind loopback only.

Imported first by the processes bench_upstream.py starts (upstream dispy broadcasts UDP pings to
the broadcast name); outgoing datagrams and connections to non-loopback addresses raise PermissionError,
and binds to wildcard/broadcast addresses are moved to 127.0.0.1 (::1 for IPv6).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_ORIG_BIND = socket.socket.bind
_ORIG_CONNECT = socket.socket.connect
_ORIG_CONNECT_EX = socket.socket.connect_ex
_ORIG_SENDTO = socket.socket.sendto


def _is_loopback(host: Any) -> bool:
    if not isinstance(host, str) or host in ("", "<broadcast>"):  # safe: refuses broadcasts
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise PermissionError(f"loopback guard: refused {address[0]!r} (benchmark stays on 127.0.0.1/::1)")


def _bind(self: socket.socket, address: Any) -> None:
    if self.family == socket.AF_INET and not _is_loopback(address[0]):
        address = ("127.0.0.1", *address[1:])
    elif self.family == socket.AF_INET6 and not _is_loopback(address[0]):
        address = ("::1", *address[1:])
    _ORIG_BIND(self, address)


def _connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    _ORIG_CONNECT(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _ORIG_CONNECT_EX(self, address)


def _sendto(self: socket.socket, data: Any, *args: Any) -> int:
    _check(self, args[-1])
    return _ORIG_SENDTO(self, data, *args)


socket.socket.bind = _bind  # type: ignore[method-assign,assignment]
socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]
socket.socket.sendto = _sendto  # type: ignore[assignment]
