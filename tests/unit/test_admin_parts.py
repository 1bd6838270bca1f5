"""dispyadmin's parts without processes: the node reading an admin's Hello ahead of the handshake, node
addresses, the command line's refusals, the one-line summary."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispy_core.admin import cli
from dispy_core.admin.client import NodeAddress, parse_node
from dispy_core.admin.nodes import summary
from dispy_core.errors import TransportError
from dispy_core.node.admin import ADMIN_ROLE, _Replayed, read_hello
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import encode_frame


class PiecesStream:
    """A ByteStream giving ``pieces`` one read at a time, then end of stream (or nothing, forever)."""

    peer = ("127.0.0.1", 5)

    def __init__(self, *pieces: bytes, hang: bool = False) -> None:
        self.pieces = list(pieces)
        self.hang = hang
        self.closed = False

    async def read(self, max_bytes: int = 262144) -> bytes:
        if not self.pieces and self.hang:
            await asyncio.sleep(3600)
        return self.pieces.pop(0) if self.pieces else b""

    async def write(self, data: Any) -> None:
        pass

    def write_nowait(self, data: Any) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


def hello(role: str) -> bytes:
    return encode_frame(m.Hello(nonce=b"n" * 32, role=role, name="x"), seq=0, serializer="", mac_key=None)


async def replay_all(stream: Any) -> bytes:
    out = b""
    while chunk := await stream.read(7):
        out += chunk
    return out


@pytest.mark.parametrize("role", [ADMIN_ROLE, "client"])
def test_hello_read_in_pieces_and_given_back_whole(role: str) -> None:
    data = hello(role)

    async def run() -> tuple[bytes, m.Hello | None, bytes]:
        head, found = await read_hello(PiecesStream(data[:5], data[5:20], data[20:]), 5.0)
        return head, found, await replay_all(_Replayed(PiecesStream(), head))

    head, found, replayed = asyncio.run(run())
    assert found is not None and found.role == role
    assert head == data == replayed


def test_garbage_is_given_back_for_the_handshake_to_refuse() -> None:
    async def run() -> tuple[bytes, m.Hello | None, bytes]:
        head, found = await read_hello(PiecesStream(b"GET / HTTP/1.1\r\n\r\n"), 5.0)
        stream = _Replayed(PiecesStream(b"more"), head)
        return head, found, await replay_all(stream)

    head, found, replayed = asyncio.run(run())
    assert found is None and replayed == head + b"more" == b"GET / HTTP/1.1\r\n\r\nmore"


def test_a_silent_peer_times_out_and_is_closed() -> None:
    stream = PiecesStream(hello(ADMIN_ROLE)[:10], hang=True)
    with pytest.raises(TransportError, match="timed out"):
        asyncio.run(read_hello(stream, 0.2))
    assert stream.closed


def test_node_addresses() -> None:
    assert parse_node("10.0.0.5", 9701) == NodeAddress("10.0.0.5", 9701)
    assert parse_node("node7:9800", 9701) == NodeAddress("node7", 9800)
    assert parse_node("[::1]:9800", 9701) == NodeAddress("::1", 9800)
    assert parse_node("::1", 9701) == NodeAddress("::1", 9701)
    assert str(NodeAddress("::1", 9800)) == "[::1]:9800"
    for bad in ("", "host:x", "host:70000", "[::1", ":9701"):
        with pytest.raises(ValueError):
            parse_node(bad, 9701)


@pytest.mark.parametrize("args, message", [
    (["--set-cpus", "x"], "invalid int value: 'x'"),
    (["-n", "h:nope", "--info"], "port 'nope'"),
    (["--info"], "no admin secret"),
    (["--admin_secret", "s", "--serve", "-1"], "--serve must be >= 0"),
    (["--admin_secret", "s", "--service_start", "08:00", "--service_stop", "08:00"], "must be different times"),
    (["--admin_secret", "s", "--shutdown", "--shutdown-now"], "not both"),
    (["--admin_secret", "s", "--token", "short"], "at least 8"),
    (["--admin_secret", "s", "--certfile", "/nonexistent.pem"], "not a readable file"),
])  # fmt: skip
def test_bad_options_exit_2_with_one_line(args: list[str], message: str, capsys: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.SECRET_ENV, raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_operations_run_in_order_shutdown_last() -> None:
    args = cli.build_parser().parse_args(["--shutdown", "--serve", "2", "--set-cpus", "1", "--no-service"])
    assert [name for name, _ in cli.operations(args)] == ["set_cpus", "set_service", "serve", "shutdown"]
    assert cli.operations(cli.build_parser().parse_args(["--info"])) == [("info", {})]


def test_summary_line() -> None:
    entry = {"node": "127.0.0.1:9701", "name": "n1", "cpus": 2, "max_cpus": 4, "busy": 1, "jobs_done": 7,
             "accepting": False, "not_accepting": "node is outside its service window (stopped)",
             "service_start": "08:00", "service_stop": "18:00", "service_end": "", "service_state": "stopped",
             "serve": 3, "served": 1, "clients": ["compute from 127.0.0.1:40000"]}
    line = summary(entry)
    assert line.startswith("127.0.0.1:9701 n1: 2 of 4 CPUs, 1 busy, 7 jobs done; not accepting jobs (node is")
    assert "service window start 08:00, stop 18:00 (stopped)" in line and "serves 3 computations (1 served)" in line
    assert line.endswith("clients: compute from 127.0.0.1:40000")
    assert summary({"node": "h:1", "error": "no answer"}) == "h:1: ERROR no answer"
