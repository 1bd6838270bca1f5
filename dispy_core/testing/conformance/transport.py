"""Conformance of a transport plugin: what the core's Channel relies on, on 127.0.0.1.

The peer's handler answers one command per connection (the first byte the client sends):

``E``  echo everything until end of stream, then close;
``S``  send ``size`` bytes (8 bytes big-endian after the command) of a known pattern, then close;
``N``  the same with ``write_nowait`` (the channel's fast path);
``C``  close at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from dispy_core.interfaces import ByteStream, Listener, Transport

__all__ = ["check_transport", "check_transport_async"]

T = TypeVar("T")

LARGE = 4 * 1024 * 1024
CHUNK_SIZES = (1, 7, 1000, 65536, 300_000)


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes in which a dropped, repeated or reordered piece shows."""
    block = bytes((i * 31 + seed * 7 + i // 251) % 256 for i in range(4093))
    return (block * (size // len(block) + 1))[:size]


class _Check:
    def __init__(self, transport: Any, host: str, timeout: float) -> None:
        self.transport = transport
        self.host = host
        self.timeout = timeout
        self.name = f"transport {getattr(transport, 'scheme', type(transport).__name__)!r}"
        self.server_streams: list[Any] = []
        self.server_errors: list[str] = []
        self.server_eof = 0

    def fail(self, what: str) -> AssertionError:
        return AssertionError(f"{self.name}: {what}")

    async def within(self, awaitable: Awaitable[T], what: str, timeout: float | None = None,
                     wrap: bool = True) -> T:
        """Await with a bound; a timeout, and unless ``wrap`` is False any error, becomes an AssertionError."""
        try:
            return await asyncio.wait_for(awaitable, timeout or self.timeout)
        except TimeoutError:
            raise self.fail(f"{what} did not finish within {timeout or self.timeout:g} s") from None
        except AssertionError:
            raise
        except Exception as exc:
            if not wrap:
                raise
            raise self.fail(f"{what} raised {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ the peer
    async def handler(self, stream: ByteStream) -> None:
        self.server_streams.append(stream)
        try:
            command = await stream.read(1)
            if command == b"E":
                while data := await stream.read():
                    await stream.write(data)
                self.server_eof += 1
            elif command in (b"S", b"N"):
                head = b""
                while len(head) < 8:
                    more = await stream.read(8 - len(head))
                    if not more:
                        raise EOFError("no size after the command")
                    head += more
                data = pattern(int.from_bytes(head, "big"), seed=1)
                if command == b"N":
                    for start in range(0, len(data), 100_000):
                        stream.write_nowait(data[start:start + 100_000])
                else:
                    await stream.write(data)
        except Exception as exc:  # reported by the check, as the handler's caller may only log it
            self.server_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            await stream.close()

    # ------------------------------------------------------------------ the client side
    async def connect(self, listener: Listener) -> ByteStream:
        host, port = listener.address
        stream = await self.within(self.transport.connect(host, port, timeout=self.timeout),
                                   f"connect to {host}:{port}")
        if not isinstance(stream, ByteStream):
            missing = [name for name in ("peer", "read", "write", "write_nowait", "close")
                       if not hasattr(stream, name)]
            raise self.fail(f"connect() returned {type(stream).__name__}, which lacks ByteStream's "
                            f"{', '.join(missing)}")
        peer = stream.peer
        if not (isinstance(peer, tuple) and len(peer) == 2 and isinstance(peer[0], str)
                and isinstance(peer[1], int)):
            raise self.fail(f"stream.peer should be a (host: str, port: int) pair, got {peer!r}")
        return stream

    async def read_exactly(self, stream: ByteStream, size: int, what: str, max_bytes: int = 262144) -> bytes:
        got = bytearray()
        while len(got) < size:
            chunk = await self.within(stream.read(max_bytes), f"reading {what}")
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise self.fail(f"read() returned {type(chunk).__name__}, not bytes")
            if not chunk:
                raise self.fail(f"stream ended after {len(got)} of {size} bytes of {what}")
            if len(chunk) > max_bytes:
                raise self.fail(f"read({max_bytes}) returned {len(chunk)} bytes")
            got += chunk
        if len(got) > size:
            raise self.fail(f"{len(got) - size} bytes more than the {size} bytes of {what}")
        return bytes(got)

    async def expect_eof(self, stream: ByteStream, what: str) -> None:
        rest = await self.within(stream.read(), f"reading the end of stream {what}")
        if rest:
            raise self.fail(f"{len(rest)} unexpected bytes {what} (expected end of stream, b'')")
        again = await self.within(stream.read(), f"reading again after end of stream {what}")
        if again != b"":
            raise self.fail(f"read() after end of stream {what} returned {again[:20]!r}, not b''")

    async def echo(self, listener: Listener, sizes: tuple[int, ...], write_type: type = bytes,
                   max_bytes: int = 262144, nowait: bool = False) -> None:
        """Send pieces of ``sizes`` to the echo peer while reading the echo (both ways at once); with
        ``nowait``, every other piece goes by ``write_nowait``, in order with ``write``."""
        stream = await self.connect(listener)
        payloads = [pattern(size, seed=i) for i, size in enumerate(sizes)]
        expected = b"".join(payloads)
        what = (f"the echo of {'+'.join(map(str, sizes))} bytes written as {write_type.__name__}"
                f"{' by write and write_nowait in turn' if nowait else ''}")

        async def send() -> None:
            stream.write_nowait(b"E")
            for i, payload in enumerate(payloads):
                if nowait and i % 2:
                    stream.write_nowait(write_type(payload))
                else:
                    await stream.write(write_type(payload))

        sender = asyncio.ensure_future(send())
        reader = asyncio.ensure_future(self.read_exactly(stream, len(expected), what, max_bytes))
        try:
            await asyncio.wait({sender, reader}, timeout=3 * self.timeout, return_when=asyncio.FIRST_EXCEPTION)
            if sender.done() and sender.exception() is not None:
                exc = sender.exception()
                raise self.fail(f"writing {what} raised {type(exc).__name__}: {exc}") from exc
            got = await reader
            if not sender.done():
                raise self.fail(f"writing {what} did not finish although the echo came back")
        finally:
            sender.cancel()
            reader.cancel()
        if got != expected:
            at = next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
            raise self.fail(f"{what}: bytes differ from offset {at} (data altered or reordered)")
        await self.within(stream.close(), "close()")
        await self.within(stream.close(), "a second close()")

    async def receive(self, listener: Listener, size: int, command: bytes) -> None:
        """The peer sends ``size`` bytes and closes: all of them arrive, then end of stream."""
        stream = await self.connect(listener)
        await self.within(stream.write(command + size.to_bytes(8, "big")), "writing a request")
        what = f"{size} bytes the peer sent{' with write_nowait' if command == b'N' else ''}"
        got = await self.read_exactly(stream, size, what)
        if got != pattern(size, seed=1):
            raise self.fail(f"{what}: bytes differ (data altered or reordered)")
        await self.expect_eof(stream, "after the peer sent its data and closed")
        await self.within(stream.close(), "close()")

    # ------------------------------------------------------------------ the sequence
    async def run(self) -> None:
        if not isinstance(self.transport, Transport):
            raise self.fail("does not follow the Transport protocol (scheme, connect, listen)")
        if not isinstance(self.transport.scheme, str) or not self.transport.scheme:
            raise self.fail(f"scheme should be a non-empty str, got {self.transport.scheme!r}")
        listener = await self.within(self.transport.listen(self.host, 0, self.handler), f"listen({self.host!r}, 0)")
        try:
            await self.with_listener(listener)
        finally:
            await self.within(listener.close(), "listener.close()")
        await self.closed_port(listener)
        if self.server_errors:
            raise self.fail(f"the accepting side failed: {self.server_errors[0]}")

    async def with_listener(self, listener: Listener) -> None:
        host, port = listener.address
        if not isinstance(host, str) or not isinstance(port, int) or port <= 0:
            raise self.fail(f"listener.address should be the bound (host, port) with port 0 resolved, "
                            f"got {listener.address!r}")
        other = await self.within(self.transport.listen(self.host, 0, self.handler), "a second listen()")
        try:
            if other.address == listener.address:
                raise self.fail(f"two listen(host, 0) calls got the same address {other.address!r}")
        finally:
            await self.within(other.close(), "closing the second listener")

        for size in CHUNK_SIZES:
            await self.echo(listener, (size,))
        await self.echo(listener, CHUNK_SIZES, write_type=bytearray)
        await self.echo(listener, (5000, 3), write_type=memoryview, max_bytes=10)
        await self.echo(listener, (LARGE,))
        await self.echo(listener, (10, 70_000, 3, 200_000, 1), nowait=True)
        if not self.server_streams or not all(isinstance(s, ByteStream) for s in self.server_streams):
            raise self.fail("the handler was not given a ByteStream")
        for _ in range(int(self.timeout * 100)):
            if self.server_eof >= 9:
                break
            await asyncio.sleep(0.01)
        else:
            raise self.fail("the accepting side did not read b'' (end of stream) after the client closed")

        await self.receive(listener, 0, b"S")
        await self.receive(listener, LARGE, b"S")
        await self.receive(listener, 300_000, b"N")
        await self.gather_echoes(listener)
        await self.peer_closes(listener)
        await self.write_after_close(listener)

    async def gather_echoes(self, listener: Listener) -> None:
        """Several connections at once never mix their bytes."""
        await self.within(asyncio.gather(*(self.echo(listener, (1000 + i, 70_000)) for i in range(8))),
                          "8 concurrent echo connections")

    async def peer_closes(self, listener: Listener) -> None:
        """A read waiting when the peer closes returns ``b''``."""
        stream = await self.connect(listener)
        reader = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.01)
        await self.within(stream.write(b"C"), "writing a request")
        try:
            first = await self.within(reader, "a read() waiting while the peer closes")
        finally:
            reader.cancel()
        if first != b"":
            raise self.fail(f"a read() waiting while the peer closed got {first[:20]!r}, not b''")
        await self.expect_eof(stream, "after the peer closed")
        await self.within(stream.close(), "close() after the peer closed")

    async def write_after_close(self, listener: Listener) -> None:
        stream = await self.connect(listener)
        await self.within(stream.write(b"E"), "writing a request")
        await self.within(stream.close(), "close()")
        try:
            await self.within(stream.write(b"more"), "write() after close()", wrap=False)
        except OSError:
            pass
        except Exception as exc:
            raise self.fail(f"write() after close() raised {type(exc).__name__}, not an OSError") from exc
        else:
            raise self.fail("write() after close() did not raise (expected TransportError or OSError)")
        try:
            stream.write_nowait(b"more")
        except OSError:
            pass
        except Exception as exc:
            raise self.fail(f"write_nowait() after close() raised {type(exc).__name__}, not an OSError") from exc
        else:
            raise self.fail("write_nowait() after close() did not raise (expected TransportError or OSError)")

    async def closed_port(self, listener: Listener) -> None:
        host, port = listener.address
        try:
            stream = await self.within(self.transport.connect(host, port, timeout=self.timeout),
                                       f"connect to the closed port {host}:{port}", wrap=False)
        except OSError:
            return
        except Exception as exc:
            raise self.fail(f"connect to the closed port {host}:{port} raised {type(exc).__name__}, "
                            "not an OSError (TransportError is one)") from exc
        with contextlib.suppress(Exception):
            await stream.close()
        raise self.fail(f"connect to {host}:{port} after its listener closed did not raise "
                        "(expected TransportError or OSError)")


async def check_transport_async(transport: Transport, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Run the transport checks in the running event loop; AssertionError names what went wrong.

    Checks: listen on ``host`` port 0 (port resolved, two listeners differ); connect gives a ByteStream
    with a ``(host, port)`` peer; bytes written as bytes, bytearray and memoryview, in pieces of 1 byte
    to 4 MiB, come back unaltered while both sides write and read at once; ``read(n)`` never returns more
    than ``n``; the peer sees ``b''`` after the client closes, and the client after the peer closes,
    also when a read is already waiting; 0 bytes then close gives ``b''``; ``write_nowait`` delivers,
    in order with ``write``, both ways; eight connections at once do not mix; ``close`` may be called
    twice; writing after ``close`` raises an OSError (``TransportError`` is one); connecting to a port
    whose listener closed raises an OSError.
    """
    await _Check(transport, host, timeout).run()


def check_transport(transport: Transport, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """:func:`check_transport_async` in a new event loop (call it from a plain test function)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("check_transport() was called inside an event loop: await check_transport_async()")
    asyncio.run(check_transport_async(transport, host, timeout))
