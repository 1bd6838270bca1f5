"""Discovery of explicitly listed nodes; wildcard (broadcast) discovery is refused, nothing is sent."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

import pytest

from dispy_core.config import Config
from dispy_core.errors import ConfigError
from dispy_core.interfaces import Discovery, NodeAddress
from dispy_plugins.discovery_udp import hooks
from dispy_plugins.discovery_udp.discovery import UdpDiscovery


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10.0))


def fake_getaddrinfo(answers: dict[str, list[tuple[int, str]]]) -> Any:
    """A resolver that never touches the network."""

    async def getaddrinfo(self: Any, host: str, port: int, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[Any] = []
        for family, ip in answers[host]:
            sockaddr = (ip, port) if family == socket.AF_INET else (ip, port, 0, 0)
            out.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out

    return getaddrinfo


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", fake_getaddrinfo({
        "node1.example": [(socket.AF_INET, "10.0.0.5"), (socket.AF_INET, "10.0.0.5"),
                          (socket.AF_INET6, "fd00::5"), (socket.AF_INET, "10.0.0.6")],
        "v6only.example": [(socket.AF_INET6, "fd00::7")],
    }))


def test_hook_returns_discovery() -> None:
    discovery = hooks.dispy_make_discovery(config=Config())
    assert isinstance(discovery, UdpDiscovery)
    assert isinstance(discovery, Discovery)


@pytest.mark.parametrize(("host", "ip_addr", "name"), [
    ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
    ("::1", "::1", "::1"),
    ("[::1]", "::1", "::1"),
    ("0:0:0:0:0:0:0:1", "::1", "0:0:0:0:0:0:0:1"),
    (" 192.0.2.1 ", "192.0.2.1", "192.0.2.1"),
    ("fe80::1%lo", "fe80::1%lo", "fe80::1%lo"),
])
def test_ip_literals_are_taken_as_is(host: str, ip_addr: str, name: str) -> None:
    assert run(UdpDiscovery().resolve(host, 61591)) == [NodeAddress(ip_addr, 61591, name)]


def test_names_resolve_deduplicated_in_order(resolver: None) -> None:
    found = run(UdpDiscovery().resolve("node1.example", 51348))
    assert found == [NodeAddress("10.0.0.5", 51348, "node1.example"),
                     NodeAddress("fd00::5", 51348, "node1.example"),
                     NodeAddress("10.0.0.6", 51348, "node1.example")]
    assert run(UdpDiscovery().resolve("v6only.example", 1)) == [NodeAddress("fd00::7", 1, "v6only.example")]


def test_unresolvable_name_is_config_error_naming_it(resolver: None) -> None:
    with pytest.raises(ConfigError, match="no-such-node.invalid"):
        run(UdpDiscovery().resolve("no-such-node.invalid", 51348))


def test_localhost_resolves_to_loopback() -> None:
    found = run(UdpDiscovery().resolve("localhost", 51348))
    assert found
    assert {a.ip_addr for a in found} <= {"127.0.0.1", "::1"}
    assert len({a.ip_addr for a in found}) == len(found)


@pytest.mark.parametrize("host", ["*", "192.168.1.*", "10.*.*.*"])  # safe: refused, nothing sent
def test_a_pattern_is_not_resolved_it_is_searched_for(host: str) -> None:
    with pytest.raises(ConfigError, match=r"is a pattern: it is found by search\(\), not resolved"):
        run(UdpDiscovery().resolve(host, 51348))


@pytest.mark.parametrize(("host", "port"), [("", 51348), ("   ", 51348), ("127.0.0.1", 70000),
                                            ("127.0.0.1", -1)])
def test_bad_host_or_port_is_config_error(host: str, port: int) -> None:
    with pytest.raises(ConfigError):
        run(UdpDiscovery().resolve(host, port))


def test_resolving_sends_no_packets(monkeypatch: pytest.MonkeyPatch, resolver: None) -> None:
    """Explicit hosts only: no socket is ever created (a later version will add broadcast)."""

    def no_socket(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("discovery must not open sockets")

    async def main() -> None:
        with monkeypatch.context() as patch:  # the event loop's own self-pipe exists already
            patch.setattr(socket, "socket", no_socket)
            assert await UdpDiscovery().resolve("127.0.0.1", 1)
            assert await UdpDiscovery().resolve("node1.example", 1)

    run(main())
