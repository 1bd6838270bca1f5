"""dispynetrelay without a network: its memory (``table.py``) on a fake clock, the reply it passes on, its
command line, and one relay, node responder and client search in this process on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from dispy_core.relay import cli
from dispy_core.relay.relay import NetRelay, RelayOptions
from dispy_core.relay.table import (
    CLIENT_TTL,
    MAX_CLIENTS,
    MAX_PENDING,
    MAX_PINGS_PER_CLIENT,
    PENDING_TTL,
    RATE_WINDOW,
    RelayTable,
)
from dispy_plugins.discovery_udp.datagram import Datagram, decode, discovery_key, encode, relayed
from dispy_plugins.discovery_udp.discovery import UdpDiscovery


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_reply_goes_to_the_client_whose_ping_it_answers() -> None:
    table = RelayTable(Clock())
    assert table.admit(("10.1.0.5", 40000), "10.2.0.5", "client-nonce", "own-nonce") == ""
    asker = table.answer("own-nonce")
    assert asker is not None and asker.source == ("10.1.0.5", 40000) and asker.nonce == "client-nonce"
    assert asker.local == "10.2.0.5"
    assert table.answer("someone-elses") is None
    assert table.listeners() == [(("10.1.0.5", 40000), "10.2.0.5")]


def test_pings_and_clients_are_forgotten_in_time() -> None:
    clock = Clock()
    table = RelayTable(clock)
    table.admit(("10.1.0.5", 40000), "10.2.0.5", "c", "own")
    clock.now += PENDING_TTL + 1
    assert table.answer("own") is None
    assert table.listeners()  # still a client that pinged lately
    clock.now += CLIENT_TTL
    assert table.listeners() == [] and not table.pending


def test_memory_is_bounded() -> None:
    clock = Clock()
    table = RelayTable(clock)
    for i in range(MAX_PENDING + 10):
        table.own(f"own{i}")
    assert len(table.pending) == MAX_PENDING and not table.is_own("own0") and table.is_own(f"own{MAX_PENDING}")
    for i in range(MAX_CLIENTS + 10):
        if i % 100 == 0:
            clock.now += RATE_WINDOW  # under the global rate
        assert table.admit((f"10.1.{i // 250}.{i % 250}", 40000), "10.2.0.5", f"c{i}", f"ping{i}") == ""
    assert len(table.clients) == MAX_CLIENTS and len(table.pending) <= MAX_PENDING
    assert table.listeners()[-1][0] == (f"10.1.{(MAX_CLIENTS + 9) // 250}.{(MAX_CLIENTS + 9) % 250}", 40000)


def test_a_client_pinging_too_often_is_not_relayed_until_the_window_passes() -> None:
    clock = Clock()
    table = RelayTable(clock)
    results = [table.admit(("10.1.0.5", 40000), "10.2.0.5", f"c{i}", f"own{i}")
               for i in range(MAX_PINGS_PER_CLIENT + 3)]
    assert results[:MAX_PINGS_PER_CLIENT] == [""] * MAX_PINGS_PER_CLIENT
    assert all("this client" in why for why in results[MAX_PINGS_PER_CLIENT:])
    assert table.admit(("10.1.0.6", 40000), "10.2.0.5", "other", "own-other") == ""  # others still pass
    clock.now += RATE_WINDOW
    assert table.admit(("10.1.0.5", 40000), "10.2.0.5", "later", "own-later") == ""


def test_the_relays_own_pings_answer_nobody_but_the_schedulers() -> None:
    table = RelayTable(Clock())
    table.own("mine")
    asker = table.answer("mine")
    assert asker is not None and asker.source is None and table.is_own("mine")


def test_relayed_reply_answers_the_clients_nonce_and_puts_the_reachable_address_first() -> None:
    # safe: addresses inside a datagram built in memory; nothing is sent to them
    reply = Datagram("reply", name="n1", addrs=(("192.168.9.9", 9701), ("10.2.0.11", 9701)), cpus=2,
                     reply_to="relay-nonce")
    out = relayed(reply, "client-nonce", first="10.2.0.11")
    assert (out.kind, out.reply_to, out.name, out.cpus) == ("reply", "client-nonce", "n1", 2)
    assert out.addrs == (("10.2.0.11", 9701), ("192.168.9.9", 9701))
    assert out.nonce != reply.nonce
    assert relayed(reply).kind == "announce" and relayed(reply).reply_to == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["--dispy_port", "0"], "--dispy_port"),
    (["--relay_port", "70000"], "--relay_port"),
    (["--scheduler_node", "127.0.0.1:port"], "port 'port'"),
    (["--scheduler_node", "no-such-host.invalid"], "no-such-host.invalid"),
    (["-i", "192.0.2.77"], "192.0.2.77"),
    (["--keyfile", __file__], "--keyfile needs --certfile"),
    (["--certfile", "/no/such/cert.pem"], "/no/such/cert.pem"),
    (["--no-such-option"], "unrecognized"),
])
def test_a_bad_option_exits_2_saying_what_is_wrong(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_options_default_to_the_original_ports() -> None:
    parser = cli.build_parser()
    options = cli.options_from_args(parser.parse_args(["-i", "127.0.0.1", "--scheduler_node", "127.0.0.1"]), parser)
    assert (options.node_port, options.relay_port, options.scheduler_port) == (9701, 9701, 9700)
    assert options.scheduler_nodes == [("127.0.0.1", 9700)]
    options = cli.options_from_args(parser.parse_args(["-p", "5000", "--relay_port", "6000",
                                                       "--scheduler_node", "[::1]:7000"]), parser)
    assert (options.node_port, options.relay_port, options.scheduler_port) == (5001, 6000, 5000)
    assert options.scheduler_nodes == [("::1", 7000)]


def free_udp_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def _relay_round_trip(secret: str) -> tuple[list[list[Any]], list[list[Any]], dict[str, int]]:
    """A node's responder, a relay and a client's search, all on loopback on their own ports; the search
    can reach the node only through the relay (its own pings go to a port where nothing listens)."""
    node_port, relay_port, relay_hears, client_port, nobody = free_udp_ports(5)
    discovery = UdpDiscovery()
    responder = discovery.respond(secret="s3", name="n1", node_port=node_port, client_port=relay_hears,
                                  addrs=[("127.0.0.1", node_port)], hosts=["127.0.0.1"])
    relay = NetRelay(RelayOptions(discovery_key("s3"), node_port, relay_port, relay_hears, hosts=["127.0.0.1"],
                                  ipv6=False))
    found: list[list[Any]] = []
    search = discovery.search(secret=secret, node_port=nobody, client_port=client_port, hosts=["127.0.0.1"],
                              on_found=lambda ip, port, name: found.append([ip, port, name]))
    await responder.start()
    await relay.start()
    await search.start()
    try:
        search.unicast.add(("127.0.0.1", relay_port))
        search.ping()
        await asyncio.sleep(0.5)
        answered = list(found)
        found.clear()
        responder.announce()  # heard by the relay only: it passes it on to the client that pinged
        await asyncio.sleep(0.5)
        return answered, found, dict(relay.counts)
    finally:
        search.close()
        relay.close()
        responder.close()


def test_a_client_finds_a_node_through_the_relay_and_hears_its_announcements() -> None:
    answered, announced, counts = asyncio.run(asyncio.wait_for(_relay_round_trip("s3"), 10))
    assert answered == [["127.0.0.1", answered[0][1], "n1"]]
    assert announced == answered
    assert counts == {"pings relayed": 1, "replies passed on": 1, "announcements passed on": 1}


def test_a_relay_ignores_a_client_with_another_secret() -> None:
    answered, announced, counts = asyncio.run(asyncio.wait_for(_relay_round_trip("wrong"), 10))
    assert answered == [] and announced == []
    assert counts["pings relayed"] == 0


def test_a_replayed_ping_is_relayed_once() -> None:
    async def scenario() -> dict[str, int]:
        (relay_port,) = free_udp_ports(1)
        key = discovery_key("s")
        relay = NetRelay(RelayOptions(key, free_udp_ports(1)[0], relay_port, free_udp_ports(1)[0],
                                      hosts=["127.0.0.1"], ipv6=False))
        await relay.start()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            data = encode(Datagram("ping"), key)
            for _ in range(3):
                sender.sendto(data, ("127.0.0.1", relay_port))
            await asyncio.sleep(0.3)
            assert decode(data, key).kind == "ping"
            return dict(relay.counts)
        finally:
            sender.close()
            relay.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 10))["pings relayed"] == 1
