"""Discovery datagrams: authenticated, bounded, never replayed; and a search answered on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispy_plugins.discovery_udp.datagram import (
    MAX_DATAGRAM,
    Datagram,
    DatagramError,
    ReplayGuard,
    decode,
    discovery_key,
    encode,
)
from dispy_plugins.discovery_udp.discovery import UdpDiscovery
from dispy_plugins.discovery_udp.interfaces import choose_interfaces

KEY = discovery_key("s3cret")


def test_a_datagram_round_trips_under_its_key_and_no_other() -> None:
    sent = Datagram("reply", name="n1", addrs=(("10.0.0.5", 9701), ("fd00::5", 9701)), cpus=4, reply_to="ab")
    assert decode(encode(sent, KEY), KEY) == sent
    with pytest.raises(DatagramError, match="MAC"):
        decode(encode(sent, KEY), discovery_key("other"))
    with pytest.raises(DatagramError, match="MAC"):
        decode(encode(sent, discovery_key("")), KEY)  # a node with a secret ignores clients without it


def test_tampering_is_refused() -> None:
    data = bytearray(encode(Datagram("announce", name="n1", addrs=(("10.0.0.5", 9701),)), KEY))
    data[20] ^= 1
    with pytest.raises(DatagramError):
        decode(bytes(data), KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_gets_through_and_never_raises_anything_else(data: bytes) -> None:
    with pytest.raises(DatagramError):
        decode(data, KEY)


@pytest.mark.parametrize("body", [b'{"kind":"ping","addrs":[["not-an-ip",1]]}', b'{"kind":"evil"}', b"[1]",
                                  b'{"kind":"reply","addrs":[["10.0.0.1",70000]]}', b'{"kind":"ping","cpus":-1}'])
def test_well_signed_but_malformed_bodies_are_refused(body: bytes) -> None:
    import hashlib
    import hmac

    signed = b"DSPYD\x01" + body
    with pytest.raises(DatagramError):
        decode(signed + hmac.new(KEY, signed, hashlib.sha256).digest(), KEY)


def test_oversize_is_refused_unread() -> None:
    with pytest.raises(DatagramError, match="too large"):
        decode(b"x" * (MAX_DATAGRAM + 1), KEY)
    with pytest.raises(DatagramError, match="too many addresses"):
        encode(Datagram("announce", name="n" * 200, addrs=tuple(("10.0.0.1", 9701) for _ in range(300))), KEY)


def test_replays_and_stale_clocks_are_refused() -> None:
    guard = ReplayGuard(window=60.0)
    first = Datagram("ping", time=1000.0)
    guard.check(first, now=1000.0)
    with pytest.raises(DatagramError, match="already seen"):
        guard.check(first, now=1001.0)
    with pytest.raises(DatagramError, match="stale"):
        guard.check(Datagram("ping", time=900.0), now=1000.0)
    with pytest.raises(DatagramError, match="stale"):
        guard.check(Datagram("ping", time=1100.0), now=1000.0)


def test_the_replay_memory_is_bounded() -> None:
    guard = ReplayGuard(window=60.0, capacity=100)
    for i in range(1000):
        guard.check(Datagram("ping", time=1000.0), now=1000.0 + i * 0.001)
    assert len(guard._seen) <= 100


def test_loopback_is_chosen_only_when_asked_for_by_address() -> None:
    chosen = choose_interfaces(["127.0.0.1"])
    assert chosen and all(i.loopback for i in chosen)
    assert all(not i.loopback for i in choose_interfaces(None)) or all(i.loopback for i in choose_interfaces(None))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_search_on_loopback_hears_a_responder_with_the_same_secret_only() -> None:
    """Both ends in one loop, on 127.0.0.1 only (the search restricted to loopback pings by unicast)."""
    async def scenario(secret: str) -> list[tuple[str, int, str]]:
        node_port = free_udp_port()
        found: list[tuple[str, int, str]] = []
        discovery = UdpDiscovery()
        responder = discovery.respond(secret="s3cret", name="n1", node_port=node_port, client_port=node_port - 1,
                                      addrs=[("127.0.0.1", node_port)], hosts=["127.0.0.1"])
        task = asyncio.ensure_future(responder.run())
        await asyncio.sleep(0.1)
        search = discovery.search(secret=secret, node_port=node_port, client_port=node_port - 1,
                                  on_found=lambda ip, port, name: found.append((ip, port, name)), hosts=["127.0.0.1"])
        await search.start()
        search.ping()
        await asyncio.sleep(0.5)
        assert "127.0.0.1" in search.describe()
        search.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return found

    found = asyncio.run(scenario("s3cret"))
    assert found and {(ip, name) for ip, _, name in found} == {("127.0.0.1", "n1")}
    assert asyncio.run(scenario("wrong")) == []
