"""TCP (optionally TLS) byte streams on asyncio, built on a bare :class:`asyncio.Protocol`.

Why not ``asyncio.StreamReader``: it copies every received chunk into a bytearray and copies it out
again on ``read``. Here a ``read`` hands back the very ``bytes`` object one ``recv`` produced (sliced
only if larger than ``max_bytes``), so the hot path costs no extra copy or allocation.

TLS follows dispy's model: both peers present a certificate and verify the other's. Trust anchors are
``config.cafile`` when given, else the certificate file itself (a shared self-signed certificate, i.e.
pinning). Nodes are addressed by IP, so host names are not checked; the chain must verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections import deque
from typing import Any

from dispy_core.config import Config
from dispy_core.errors import ConfigError, TransportError
from dispy_core.interfaces import StreamHandler
from dispy_core.ratelog import Throttled

__all__ = ["TcpStream", "TcpListener", "TcpTransport", "make_ssl_contexts"]

logger = logging.getLogger(__name__)

# Stop reading from the socket when this much unread data is queued; resume below the low mark.
_READ_HIGH_WATER = 4 * 1024 * 1024
_READ_LOW_WATER = 1024 * 1024


KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3
"""TCP keepalive: probe a connection silent for 30 s every 10 s; 3 unanswered probes drop it. A peer that
vanished without a reset (power loss, a partition) is noticed within about a minute, even without pulses."""


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Frames are small and latency-bound: never let Nagle hold one back. Keepalive notices dead peers."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                                ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
                if hasattr(socket, name):  # Linux; other systems keep their defaults
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        except OSError:  # already closed
            pass


def _reason(exc: BaseException) -> str:
    """A short human reason for a connect / handshake failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer (it may have refused our certificate, or not speak TLS)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class TcpStream(asyncio.Protocol):
    """One connection: it is both the asyncio protocol and the :class:`ByteStream` the core uses."""

    def __init__(self, loop: asyncio.AbstractEventLoop, close_timeout: float = 10.0,
                 handshake_pending: bool = False) -> None:
        self._loop = loop
        self._handshaking = handshake_pending
        self._close_timeout = close_timeout
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._lost = False
        self._lost_exc: BaseException | None = None
        self._reading_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self._closed: asyncio.Future[None] = loop.create_future()
        self.received = 0  # bytes of application data received, ever
        self.on_open: Any = None  # set by the listener: called once connected (after the TLS handshake)
        self.on_lost: Any = None

    # ------------------------------------------------------------------ asyncio.Protocol side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        _set_nodelay(transport)
        if self._handshaking:
            # Server-side TLS starts later (start_tls): keep the ClientHello in the socket until then.
            transport.pause_reading()
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = (str(peer[0]), int(peer[1]))
        if self.on_open is not None:
            self.on_open(self)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self._chunks.append(data)
        self._buffered += len(data)
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffered > _READ_HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return False  # let the transport close; dispy does not use half-closed connections

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:  # a failed server handshake reports it before asyncio does
            return
        self._eof = self._lost = True
        self._lost_exc = exc
        if self._handshaking:
            pass  # the listener reports failed handshakes itself
        elif isinstance(exc, ssl.SSLError):
            logger.warning("TLS error on connection with %s:%s: %s", *self._peer, exc)
        elif exc is not None:
            logger.debug("connection with %s:%s lost: %s", *self._peer, exc)
        self._wake_reader()
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _tls_started(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._handshaking = False

    def _handshake_failed(self, exc: BaseException) -> None:
        self.connection_lost(exc if isinstance(exc, Exception) else None)

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ ByteStream side
    @property
    def peer(self) -> tuple[str, int]:
        return self._peer

    @property
    def tls(self) -> bool:
        return self._transport is not None and self._transport.get_extra_info("sslcontext") is not None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Pass-through to the asyncio transport (``peercert``, ``socket``, ``cipher``...)."""
        return default if self._transport is None else self._transport.get_extra_info(name, default)

    async def read(self, max_bytes: int = 262144) -> bytes:
        """The next received chunk (at most ``max_bytes``); ``b''`` at end of stream, reset included."""
        if not self._chunks:
            if self._eof:
                return b""
            if self._read_waiter is not None:
                raise RuntimeError("read() called while another read() is waiting on this stream")
            waiter = self._read_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
            if not self._chunks:
                return b""
        chunk = self._chunks[0]
        if len(chunk) <= max_bytes:
            self._chunks.popleft()
        else:
            self._chunks[0] = chunk[max_bytes:]
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _READ_LOW_WATER and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    def hangup_hint(self) -> str:
        """Why the peer hung up, when it can be told: a TLS peer that closes before saying a word most likely
        refused our certificate (with TLS 1.3 the client's handshake ends before the server checks it)."""
        if self.received == 0 and self._transport is not None \
                and self._transport.get_extra_info("ssl_object") is not None:
            return ("it closed right after the TLS handshake, so it most likely refused our certificate (is it "
                    "trusted by the peer's cafile or certfile?)")
        return ""

    def _closed_error(self) -> TransportError:
        text = f"cannot write to {self._peer[0]}:{self._peer[1]}: connection closed"
        if self._lost_exc:
            text += f" ({self._lost_exc})"
        elif self.hangup_hint():
            text += f": {self.hangup_hint()}"
        return TransportError(text)

    def write_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` without waiting for the send buffer to drain (order kept with ``write``)."""
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            raise self._closed_error()
        transport.write(data)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; wait only when the transport's send buffer is above its high-water mark."""
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            raise self._closed_error()
        transport.write(data)
        if self._write_paused:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
            if self._lost:
                raise TransportError(f"connection to {self._peer[0]}:{self._peer[1]} lost while writing"
                                     + (f" ({self._lost_exc})" if self._lost_exc else ""))

    async def close(self) -> None:
        """Close (TLS: with close_notify) and wait until the connection is gone; safe to call again."""
        transport = self._transport
        if transport is None:
            return
        transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), self._close_timeout)
        except TimeoutError:  # peer does not answer close_notify, or the send buffer is stuck
            transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed), 1.0)

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent data."""
        if self._transport is not None:
            self._transport.abort()


class TcpListener:
    """A listening socket plus the connections it accepted (closed with it)."""

    def __init__(self, server: asyncio.Server, close_timeout: float) -> None:
        self._server = server
        self._close_timeout = close_timeout
        self.streams: set[TcpStream] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        sockname = server.sockets[0].getsockname() if server.sockets else ("", 0)
        self._address = (str(sockname[0]), int(sockname[1]))
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every bound address (a name like ``localhost`` may bind IPv4 and IPv6)."""
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._server.sockets]

    async def close(self) -> None:
        """Stop accepting, close every accepted connection, and let handlers notice (bounded wait)."""
        if not self._closing:
            self._closing = True
            self._server.close()
        await asyncio.gather(*(stream.close() for stream in list(self.streams)), return_exceptions=True)
        tasks = [t for t in self.tasks if not t.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self._close_timeout)
        try:
            await asyncio.wait_for(self._server.wait_closed(), self._close_timeout)
        except TimeoutError:
            logger.warning("listener %s:%s: connections still open after close", *self._address)


def _load_error(what: str, path: str, exc: BaseException) -> ConfigError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConfigError(f"cannot load {what} {path!r}: {reason}")


def _base_context(purpose: int, config: Config) -> ssl.SSLContext:
    certfile = str(config.certfile)
    keyfile = config.keyfile or None
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not os.path.isfile(certfile):
        raise ConfigError(f"certfile {certfile!r} does not exist or is not a file")
    if keyfile is not None and not os.path.isfile(keyfile):
        raise ConfigError(f"keyfile {keyfile!r} does not exist or is not a file")
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        key = f" / key {keyfile!r}" if keyfile else " (key in the same file)"
        named = f"certificate {certfile!r}{key}"
        raise ConfigError(f"cannot load {named}: {getattr(exc, 'reason', None) or exc}") from exc
    anchors = config.cafile or certfile
    if config.cafile and not os.path.isfile(config.cafile):
        raise ConfigError(f"cafile {config.cafile!r} does not exist or is not a file")
    try:
        ctx.load_verify_locations(cafile=anchors)
    except (ssl.SSLError, OSError) as exc:
        raise _load_error("cafile" if config.cafile else "certfile (as trust anchor)", anchors, exc) from exc
    if not config.cafile:
        # Pinning: the shared certificate itself is trusted, even when it is not self-signed.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_ssl_contexts(config: Config) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server, client) contexts when ``config.certfile`` is set, else None; bad files -> ConfigError."""
    if not config.certfile:
        if config.keyfile:
            raise ConfigError(f"keyfile {config.keyfile!r} is set but certfile is not")
        return None
    server = _base_context(ssl.PROTOCOL_TLS_SERVER, config)
    client = _base_context(ssl.PROTOCOL_TLS_CLIENT, config)
    client.check_hostname = False  # nodes are addressed by IP; the certificate chain is still verified
    return server, client


def _plain_host(host: str) -> str:
    """Accept ``[::1]`` as well as ``::1``."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


MAX_TLS_HANDSHAKES = 64
"""TLS handshakes a listener runs at once (``transport.max_tls_handshakes``); more peers are refused at once."""
HANDSHAKE_DEADLINE = 5.0
"""Seconds a peer has to finish the TLS handshake (at most the message timeout)."""


class TcpTransport:
    """The ``tcp`` transport: plain TCP, or mutual TLS when the config names a certificate."""

    scheme = "tcp"

    def __init__(self, config: Config) -> None:
        self.config = config
        contexts = make_ssl_contexts(config)
        self._server_ctx: ssl.SSLContext | None = contexts[0] if contexts else None
        self._client_ctx: ssl.SSLContext | None = contexts[1] if contexts else None
        self._timeout = config.msg_timeout
        limit = config.get("transport.max_tls_handshakes", MAX_TLS_HANDSHAKES)
        if type(limit) is not int or limit < 1:
            raise ConfigError(f"transport.max_tls_handshakes must be an integer of at least 1, not {limit!r}")
        self.max_tls_handshakes = limit
        self._tls_pending = 0
        self._refusals = Throttled(logger)

    @property
    def tls(self) -> bool:
        return self._client_ctx is not None

    async def connect(self, host: str, port: int, *, timeout: float) -> TcpStream:
        """A connected stream (TLS handshake done); TransportError names ``host:port`` and why not."""
        loop = asyncio.get_running_loop()
        host = _plain_host(host)
        kwargs: dict[str, Any] = {}
        if self._client_ctx is not None:
            kwargs = {"ssl": self._client_ctx, "server_hostname": "", "ssl_handshake_timeout": timeout}
        try:
            _transport, stream = await asyncio.wait_for(
                loop.create_connection(lambda: TcpStream(loop, self._timeout), host, port, **kwargs),
                timeout)
        except TimeoutError:
            raise TransportError(f"connect to {host}:{port} failed: timed out after {timeout:g} s") from None
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise TransportError(f"connect to {host}:{port} failed: {_reason(exc)}") from exc
        return stream

    async def listen(self, host: str, port: int, handler: StreamHandler) -> TcpListener:
        """Accept connections on ``host:port`` (0: any free port); ``handler`` runs once per connection."""
        loop = asyncio.get_running_loop()
        host = _plain_host(host)
        listener: TcpListener | None = None
        pending: list[TcpStream] = []

        def on_lost(stream: TcpStream) -> None:
            if listener is not None:
                listener.streams.discard(stream)

        def on_open(stream: TcpStream) -> None:
            if listener is None:  # cannot happen once start returned; keep for safety
                pending.append(stream)
                return
            listener.streams.add(stream)
            task = loop.create_task(self._serve(loop, stream, handler))
            listener.tasks.add(task)
            task.add_done_callback(listener.tasks.discard)

        def factory() -> TcpStream:
            stream = TcpStream(loop, self._timeout, handshake_pending=self._server_ctx is not None)
            stream.on_open = on_open
            stream.on_lost = on_lost
            return stream

        try:
            server = await loop.create_server(factory, host or None, port, reuse_address=True)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host or '*'}:{port}: {_reason(exc)}") from exc
        listener = TcpListener(server, self._timeout)
        for stream in pending:
            on_open(stream)
        return listener

    async def _serve(self, loop: asyncio.AbstractEventLoop, stream: TcpStream,
                     handler: StreamHandler) -> None:
        """TLS handshake (if any), then the handler; a failure closes that connection only."""
        if self._server_ctx is not None:
            # Our own start_tls rather than create_server(ssl=...): asyncio drops failed server-side
            # handshakes silently, and a refused peer is exactly what an operator needs to see.
            plain = stream._transport
            if plain is None or stream._lost:  # the peer left before we got to it
                return
            if self._tls_pending >= self.max_tls_handshakes:
                self._refusals.warning("refused connection from %s:%s: %d TLS handshakes in progress "
                                       "(transport.max_tls_handshakes)", *stream.peer, self._tls_pending, key="busy")
                plain.abort()
                stream._handshake_failed(ConnectionRefusedError("too many TLS handshakes in progress"))
                return
            self._tls_pending += 1
            try:
                tls = await loop.start_tls(plain, stream, self._server_ctx, server_side=True,
                                           ssl_handshake_timeout=min(self._timeout, HANDSHAKE_DEADLINE))
            except (OSError, TimeoutError) as exc:
                self._refusals.warning("refused connection from %s:%s: %s", *stream.peer, _reason(exc),
                                       key=type(exc).__name__)
                plain.abort()
                stream._handshake_failed(exc)
                return
            finally:
                self._tls_pending -= 1
            if tls is None:  # the peer went away meanwhile
                stream._handshake_failed(ConnectionResetError("connection lost during TLS handshake"))
                return
            stream._tls_started(tls)
        try:
            await handler(stream)
        except Exception:
            logger.exception("connection handler for %s:%s failed", *stream.peer)
        finally:
            await stream.close()
