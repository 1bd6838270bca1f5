"""The tcp transport over real loopback sockets: plain, IPv6, TLS (pinned and CA), and its failures."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from dispy_core.config import Config
from dispy_core.errors import ConfigError, TransportError
from dispy_core.interfaces import ByteStream, Transport
from dispy_core.testing.certs import make_ca_and_leaf, make_self_signed
from dispy_plugins.transport_tcp_ssl import hooks
from dispy_plugins.transport_tcp_ssl.transport import TcpStream, TcpTransport

STEP = 5.0  # seconds any single network step may take


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def echo(stream: ByteStream) -> None:
    while data := await asyncio.wait_for(stream.read(), STEP):
        await asyncio.wait_for(stream.write(data), STEP)


async def read_exactly(stream: ByteStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await asyncio.wait_for(stream.read(), STEP)
        if not chunk:
            break
        got += chunk
    return bytes(got)


async def read_until_eof(stream: ByteStream) -> bytes:
    got = bytearray()
    while chunk := await asyncio.wait_for(stream.read(), STEP):
        got += chunk
    return bytes(got)


async def round_trip(server_cfg: Config, client_cfg: Config, host: str, payload: bytes,
                     handler: Callable[[ByteStream], Awaitable[None]] = echo) -> bytes:
    server = TcpTransport(server_cfg)
    client = TcpTransport(client_cfg)
    listener = await asyncio.wait_for(server.listen(host, 0, handler), STEP)
    try:
        stream = await client.connect(*listener.address, timeout=STEP)
        try:
            await asyncio.wait_for(stream.write(payload), STEP)
            return await read_exactly(stream, len(payload))
        finally:
            await asyncio.wait_for(stream.close(), STEP)
    finally:
        await asyncio.wait_for(listener.close(), STEP)


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Config:
    certfile, keyfile = make_self_signed(tmp_path_factory.mktemp("pinned"))
    return Config(certfile=str(certfile), keyfile=str(keyfile))


@pytest.fixture(scope="module")
def other_pinned(tmp_path_factory: pytest.TempPathFactory) -> Config:
    certfile, keyfile = make_self_signed(tmp_path_factory.mktemp("other"), common_name="intruder")
    return Config(certfile=str(certfile), keyfile=str(keyfile))


# --------------------------------------------------------------------------- plumbing
def test_hook_gives_tcp_transport_only_for_tcp() -> None:
    transport = hooks.dispy_make_transport(config=Config(), scheme="tcp")
    assert isinstance(transport, TcpTransport)
    assert isinstance(transport, Transport)
    assert transport.scheme == "tcp"
    assert hooks.dispy_make_transport(config=Config(), scheme="udp") is None


# --------------------------------------------------------------------------- plain TCP
def test_echo_ipv4() -> None:
    assert run(round_trip(Config(), Config(), "127.0.0.1", b"hello dispy")) == b"hello dispy"


@needs_ipv6
def test_echo_ipv6() -> None:
    assert run(round_trip(Config(), Config(), "::1", b"hello v6")) == b"hello v6"


@needs_ipv6
def test_ipv6_bracketed_host_and_address() -> None:
    async def main() -> None:
        listener = await TcpTransport(Config()).listen("[::1]", 0, echo)
        try:
            assert listener.address[0] == "::1" and listener.address[1] > 0
            stream = await TcpTransport(Config()).connect(f"[{listener.address[0]}]", listener.address[1],
                                                          timeout=STEP)
            assert stream.peer == listener.address
            await stream.close()
        finally:
            await listener.close()

    run(main())


def test_one_megabyte_round_trip() -> None:
    payload = bytes(range(256)) * 4096
    assert run(round_trip(Config(), Config(), "127.0.0.1", payload)) == payload


def test_stream_facts_nodelay_and_peers() -> None:
    seen: dict[str, Any] = {}

    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, TcpStream)
        seen["server_peer"] = stream.peer
        seen["server_nodelay"] = stream.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                            socket.TCP_NODELAY)
        seen["server_keepalive"] = stream.get_extra_info("socket").getsockopt(socket.SOL_SOCKET,
                                                                              socket.SO_KEEPALIVE)
        await echo(stream)

    async def main() -> None:
        transport = TcpTransport(Config())
        listener = await transport.listen("127.0.0.1", 0, handler)
        try:
            stream = await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)
            untyped: object = stream
            assert isinstance(untyped, ByteStream)
            assert stream.peer == listener.address
            assert stream.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            await stream.write(memoryview(b"abc"))
            assert await read_exactly(stream, 3) == b"abc"
            assert seen["server_peer"] == stream.get_extra_info("sockname")[:2]
            assert seen["server_nodelay"]
            sock = stream.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) and seen["server_keepalive"]
            if hasattr(socket, "TCP_KEEPIDLE"):  # a peer gone without a reset is noticed within about a minute
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            await stream.close()
            await stream.close()  # idempotent
            with pytest.raises(TransportError):
                await stream.write(b"late")
            assert await stream.read() == b""
        finally:
            await listener.close()

    run(main())


def test_read_respects_max_bytes() -> None:
    async def handler(stream: ByteStream) -> None:
        await stream.write(b"0123456789")

    async def main() -> None:
        transport = TcpTransport(Config())
        listener = await transport.listen("127.0.0.1", 0, handler)
        try:
            stream = await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)
            parts = []
            while chunk := await asyncio.wait_for(stream.read(3), STEP):
                assert len(chunk) <= 3
                parts.append(chunk)
            assert b"".join(parts) == b"0123456789"
            await stream.close()
        finally:
            await listener.close()

    run(main())


def test_connect_refused_is_transport_error() -> None:
    port = free_port()
    with pytest.raises(TransportError, match=rf"127\.0\.0\.1:{port}.*refused"):
        run(TcpTransport(Config()).connect("127.0.0.1", port, timeout=STEP))


def test_listen_on_busy_port_is_transport_error() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            port = sock.getsockname()[1]
            with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
                await TcpTransport(Config()).listen("127.0.0.1", port, echo)

    run(main())


def test_listener_survives_handler_exception(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky(stream: ByteStream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await echo(stream)

    async def main() -> None:
        transport = TcpTransport(Config())
        listener = await transport.listen("127.0.0.1", 0, flaky)
        try:
            first = await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)
            assert await read_until_eof(first) == b""  # that connection was closed
            await first.close()
            second = await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)
            await second.write(b"still here")
            assert await read_exactly(second, 10) == b"still here"
            await second.close()
        finally:
            await listener.close()

    with caplog.at_level(logging.ERROR):
        run(main())
    assert calls == 2
    assert "handler bug" in caplog.text


def test_listener_close_closes_accepted_connections() -> None:
    async def main() -> None:
        transport = TcpTransport(Config())
        listener = await transport.listen("127.0.0.1", 0, echo)
        stream = await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)
        await stream.write(b"x")
        assert await read_exactly(stream, 1) == b"x"
        await asyncio.wait_for(listener.close(), STEP)
        assert await read_until_eof(stream) == b""
        await stream.close()
        with pytest.raises(TransportError):
            await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)

    run(main())


def test_peer_reset_reads_as_eof() -> None:
    async def handler(stream: ByteStream) -> None:
        assert isinstance(stream, TcpStream)
        stream.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")
        stream.abort()

    async def main() -> None:
        transport = TcpTransport(Config())
        listener = await transport.listen("127.0.0.1", 0, handler)
        try:
            stream = await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)
            assert await read_until_eof(stream) == b""
            await stream.close()
        finally:
            await listener.close()

    run(main())


# --------------------------------------------------------------------------- TLS
def test_tls_pinned_self_signed_round_trip(pinned: Config) -> None:
    payload = b"\x00secret\xff" * 131072
    assert run(round_trip(pinned, pinned, "127.0.0.1", payload)) == payload


@needs_ipv6
def test_tls_over_ipv6(pinned: Config) -> None:
    assert run(round_trip(pinned, pinned, "::1", b"v6 tls")) == b"v6 tls"


def test_tls_key_in_cert_file(tmp_path: Path) -> None:
    certfile, keyfile = make_self_signed(tmp_path, key_in_cert=True)
    assert certfile == keyfile
    cfg = Config(certfile=str(certfile))
    assert run(round_trip(cfg, cfg, "127.0.0.1", b"one file")) == b"one file"


def test_tls_with_ca_and_leaf(tmp_path: Path) -> None:
    cafile, certfile, keyfile = make_ca_and_leaf(tmp_path)
    cfg = Config(certfile=str(certfile), keyfile=str(keyfile), cafile=str(cafile))
    assert run(round_trip(cfg, cfg, "127.0.0.1", b"ca signed")) == b"ca signed"


def test_tls_stream_reports_peer_certificate(pinned: Config) -> None:
    async def main() -> None:
        transport = TcpTransport(pinned)
        assert transport.tls
        listener = await transport.listen("127.0.0.1", 0, echo)
        try:
            stream = await transport.connect("127.0.0.1", listener.address[1], timeout=STEP)
            assert isinstance(stream, TcpStream) and stream.tls
            assert stream.get_extra_info("peercert") is not None
            version = stream.get_extra_info("ssl_object").version()
            assert version in ("TLSv1.2", "TLSv1.3")
            await stream.close()
        finally:
            await listener.close()

    run(main())


def test_tls_client_with_other_cert_is_refused(pinned: Config, other_pinned: Config) -> None:
    """The intruder neither trusts the server's certificate nor holds one the server trusts."""
    handled = []

    async def handler(stream: ByteStream) -> None:
        handled.append(stream.peer)
        await echo(stream)

    async def main() -> None:
        listener = await TcpTransport(pinned).listen("127.0.0.1", 0, handler)
        try:
            with pytest.raises(TransportError, match=rf"127\.0\.0\.1:{listener.address[1]}.*TLS"):
                await TcpTransport(other_pinned).connect("127.0.0.1", listener.address[1], timeout=STEP)
        finally:
            await listener.close()

    run(main())
    assert handled == []


def test_tls_server_rejects_untrusted_client_cert(pinned: Config, other_pinned: Config,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Even a client that trusts the server is turned away if its own certificate does not verify."""
    handled = []

    async def handler(stream: ByteStream) -> None:
        handled.append(stream.peer)
        await echo(stream)

    sneaky = other_pinned.replace(cafile=pinned.certfile)

    async def main() -> None:
        listener = await TcpTransport(pinned).listen("127.0.0.1", 0, handler)
        try:
            try:  # TLS 1.3 finishes the client's side of the handshake before the server's verdict
                stream = await TcpTransport(sneaky).connect("127.0.0.1", listener.address[1], timeout=STEP)
            except TransportError:
                return
            try:
                await stream.write(b"let me in")
            except TransportError:
                pass
            assert await read_until_eof(stream) == b""
            await stream.close()
        finally:
            await listener.close()

    with caplog.at_level(logging.WARNING):
        run(main())
    assert handled == []
    assert "refused connection from 127.0.0.1" in caplog.text
    assert "certificate verify failed" in caplog.text


def test_listener_close_during_tls_handshake_is_prompt(pinned: Config) -> None:
    async def main() -> None:
        listener = await TcpTransport(pinned).listen("127.0.0.1", 0, echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.address[1])  # says nothing
        await asyncio.sleep(0.05)
        await asyncio.wait_for(listener.close(), 2.0)
        assert await asyncio.wait_for(reader.read(), STEP) == b""
        writer.close()

    run(main())


def test_plain_client_to_tls_server_fails_cleanly(pinned: Config) -> None:
    handled = []

    async def handler(stream: ByteStream) -> None:
        handled.append(stream.peer)

    async def main() -> None:
        listener = await TcpTransport(pinned).listen("127.0.0.1", 0, handler)
        try:
            try:
                stream = await TcpTransport(Config()).connect("127.0.0.1", listener.address[1], timeout=STEP)
                await stream.write(b"GET / HTTP/1.0\r\n\r\n" * 20)
                await read_until_eof(stream)  # EOF (or an error) - never a hang
                await stream.close()
            except TransportError:
                pass
        finally:
            await listener.close()

    run(main())
    assert handled == []


def test_tls_client_to_plain_server_fails_cleanly(pinned: Config) -> None:
    async def main() -> None:
        listener = await TcpTransport(Config()).listen("127.0.0.1", 0, echo)
        try:
            with pytest.raises(TransportError, match=f"127.0.0.1:{listener.address[1]}"):
                await TcpTransport(pinned).connect("127.0.0.1", listener.address[1], timeout=STEP)
        finally:
            await listener.close()

    run(main())


def test_tls_handshake_timeout_is_transport_error(pinned: Config) -> None:
    """A peer that accepts but never answers the handshake: the connect timeout applies."""

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # until the client gives up
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TransportError, match=rf"127\.0\.0\.1:{port}.*timed out"):
                await TcpTransport(pinned).connect("127.0.0.1", port, timeout=0.5)
        finally:
            server.close()
            await server.wait_closed()

    run(main())


# --------------------------------------------------------------------------- bad certificate files
def test_missing_certfile_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="nope.pem"):
        TcpTransport(Config(certfile=str(missing)))


def test_garbage_certfile_is_config_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="garbage.pem"):
        TcpTransport(Config(certfile=str(garbage)))


def test_mismatched_or_missing_keyfile_is_config_error(tmp_path: Path) -> None:
    certfile, _ = make_self_signed(tmp_path / "a")
    _, other_key = make_self_signed(tmp_path / "b")
    with pytest.raises(ConfigError, match="no-such.key"):
        TcpTransport(Config(certfile=str(certfile), keyfile=str(tmp_path / "no-such.key")))
    with pytest.raises(ConfigError, match=str(other_key.name)):
        TcpTransport(Config(certfile=str(certfile), keyfile=str(other_key)))
    with pytest.raises(ConfigError, match=str(certfile.name)):  # key neither given nor in the cert
        TcpTransport(Config(certfile=str(certfile)))


def test_bad_cafile_is_config_error(tmp_path: Path) -> None:
    certfile, keyfile = make_self_signed(tmp_path)
    bad_ca = tmp_path / "bad-ca.pem"
    bad_ca.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="bad-ca.pem"):
        TcpTransport(Config(certfile=str(certfile), keyfile=str(keyfile), cafile=str(bad_ca)))
    with pytest.raises(ConfigError, match="absent-ca.pem"):
        TcpTransport(Config(certfile=str(certfile), keyfile=str(keyfile),
                            cafile=str(tmp_path / "absent-ca.pem")))
