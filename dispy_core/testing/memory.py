"""An in-process transport (scheme ``memory``): many simulated hosts and ports in one event loop.

Transports that share a :class:`MemoryNetwork` can reach each other's listeners::

    network = MemoryNetwork()
    node = MemoryTransport(network, host="10.0.0.2")
    client = MemoryTransport(network, host="10.0.0.1")
    listener = await node.listen("10.0.0.2", 9701, handler)
    stream = await client.connect("10.0.0.2", 9701, timeout=5)   # handler gets the other end

Each direction of a connection is a bounded buffer: ``write`` queues its data, then waits while the
peer has more than ``buffer_limit`` bytes unread (backpressure, like a TCP send buffer). ``close``
is graceful: the peer reads what was written, then ``b''``. Connecting where nothing listens raises
:class:`MemoryConnectionRefused` (both a ``ConnectionRefusedError`` and a ``TransportError``).

Everything of one network must run on one event loop, the one its first connection was made on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import deque
from dataclasses import dataclass, field

from dispy_core.errors import MemoryConnectionRefused, TransportError
from dispy_core.hookspecs import hookimpl
from dispy_core.interfaces import StreamHandler

__all__ = ["MemoryConnectionRefused", "MemoryListener", "MemoryNetwork", "MemoryStream", "MemoryTransport",
           "MemoryTransportPlugin"]

logger = logging.getLogger(__name__)

DEFAULT_BUFFER_LIMIT = 1024 * 1024
_FIRST_EPHEMERAL_PORT = 49152
_WILDCARDS = ("", "0.0.0.0", "::")


def _wake(waiters: deque[asyncio.Future[bool]], value: bool = True) -> None:
    """Wake every waiter; a writer's waiter learns whether its data was read (True) or dropped."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(value)


class _Pipe:
    """One direction of a connection: what the writer queued and the reader has not taken yet."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.writer_closed = False  # the peer reads the rest, then b''
        self.reader_closed = False  # writes fail: nobody will read them
        self.readers: deque[asyncio.Future[bool]] = deque()
        self.drainers: deque[asyncio.Future[bool]] = deque()

    def put(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            chunk = bytes(data)  # a copy: the caller may reuse its buffer
            self.chunks.append(chunk)
            self.size += len(chunk)
            _wake(self.readers)

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks[0]
        if len(chunk) <= max_bytes:
            self.chunks.popleft()
        else:
            self.chunks[0] = chunk[max_bytes:]
            chunk = chunk[:max_bytes]
        self.size -= len(chunk)
        if self.size <= self.limit:
            _wake(self.drainers)
        return chunk

    def close_writer(self) -> None:
        self.writer_closed = True
        _wake(self.readers)

    def close_reader(self) -> None:
        self.reader_closed = True
        self.chunks.clear()
        self.size = 0
        _wake(self.drainers, False)
        _wake(self.readers)


class MemoryStream:
    """One end of an in-memory connection; follows :class:`dispy_core.interfaces.ByteStream`."""

    def __init__(self, incoming: _Pipe, outgoing: _Pipe, local: tuple[str, int], peer: tuple[str, int]) -> None:
        self._in = incoming
        self._out = outgoing
        self._local = local
        self._peer = peer
        self._closed = False

    @property
    def peer(self) -> tuple[str, int]:
        return self._peer

    @property
    def local(self) -> tuple[str, int]:
        return self._local

    @property
    def closed(self) -> bool:
        return self._closed

    async def read(self, max_bytes: int = 262144) -> bytes:
        """Up to ``max_bytes`` bytes; ``b''`` once the peer closed and everything it wrote was read."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        pipe = self._in
        while not pipe.chunks:
            if pipe.writer_closed or pipe.reader_closed:
                return b""
            if pipe.readers:
                raise RuntimeError("read() called while another read() is waiting on this stream")
            waiter = asyncio.get_running_loop().create_future()
            pipe.readers.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    pipe.readers.remove(waiter)
        return pipe.take(max_bytes)

    def _check_writable(self) -> None:
        if self._closed:
            raise TransportError(f"cannot write to {self._peer[0]}:{self._peer[1]}: stream closed")
        if self._out.reader_closed:
            raise TransportError(f"cannot write to {self._peer[0]}:{self._peer[1]}: connection closed by peer")

    def write_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` without waiting for the peer to read (order kept with ``write``)."""
        self._check_writable()
        self._out.put(data)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``, then wait while the peer has more than the buffer limit unread."""
        self._check_writable()
        pipe = self._out
        pipe.put(data)
        while pipe.size > pipe.limit:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            pipe.drainers.append(waiter)
            if not await waiter:  # closed before the peer read it (once read, a later close is no failure)
                raise TransportError(f"connection to {self._peer[0]}:{self._peer[1]} closed while writing")

    async def close(self) -> None:
        """Close both directions: the peer reads what was written, then ``b''``; safe to call again."""
        self.abort(graceful=True)

    def abort(self, graceful: bool = False) -> None:
        """Close at once; unless ``graceful``, what the peer has not read yet is dropped."""
        if self._closed:
            return
        self._closed = True
        if not graceful:
            self._out.close_reader()
        self._out.close_writer()
        _wake(self._out.drainers, False)  # our own write() waiting for the peer gives up
        self._in.close_reader()


class MemoryListener:
    """A listening endpoint of a :class:`MemoryNetwork`; follows :class:`dispy_core.interfaces.Listener`."""

    def __init__(self, network: MemoryNetwork, address: tuple[str, int], handler: StreamHandler,
                 close_timeout: float) -> None:
        self._network = network
        self._address = address
        self._handler = handler
        self._close_timeout = close_timeout
        self._closing = False
        self.streams: set[MemoryStream] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def _accept(self, stream: MemoryStream) -> None:
        self.streams.add(stream)
        task = asyncio.get_running_loop().create_task(self._serve(stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, stream: MemoryStream) -> None:
        try:
            await self._handler(stream)
        except Exception:
            logger.exception("connection handler for %s:%s failed", *stream.peer)
        finally:
            await stream.close()
            self.streams.discard(stream)

    async def close(self) -> None:
        """Stop accepting, close every accepted stream and let handlers finish (bounded wait)."""
        if not self._closing:
            self._closing = True
            self._network._unregister(self)
        for stream in list(self.streams):
            await stream.close()
        tasks = [task for task in self.tasks if not task.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self._close_timeout)


@dataclass
class MemoryNetwork:
    """The endpoints that :class:`MemoryTransport` objects sharing it can reach (one per test, not global).

    ``buffer_limit`` bounds each direction of each connection; ``refused`` counts refused connects.
    """

    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    close_timeout: float = 5.0
    listeners: dict[tuple[str, int], MemoryListener] = field(default_factory=dict)
    refused: int = 0
    _next_port: dict[str, int] = field(default_factory=dict)

    def _free_port(self, host: str) -> int:
        port = self._next_port.get(host, _FIRST_EPHEMERAL_PORT)
        for _ in range(65536):
            if (host, port) not in self.listeners:
                self._next_port[host] = port + 1 if port < 65535 else _FIRST_EPHEMERAL_PORT
                return port
            port = port + 1 if port < 65535 else _FIRST_EPHEMERAL_PORT
        raise TransportError(f"no free port left on memory host {host}")

    def _register(self, host: str, port: int, handler: StreamHandler) -> MemoryListener:
        if not 0 <= port <= 65535:
            raise TransportError(f"cannot listen on {host}:{port}: port out of range")
        port = port or self._free_port(host)
        if (host, port) in self.listeners:
            raise TransportError(f"cannot listen on {host}:{port}: address already in use")
        listener = MemoryListener(self, (host, port), handler, self.close_timeout)
        self.listeners[(host, port)] = listener
        return listener

    def _unregister(self, listener: MemoryListener) -> None:
        if self.listeners.get(listener.address) is listener:
            del self.listeners[listener.address]

    def lookup(self, host: str, port: int) -> MemoryListener | None:
        """The listener a connect to ``host:port`` reaches: exact address first, then a wildcard one."""
        found = self.listeners.get((host, port))
        if found is None:
            found = next((self.listeners[(w, port)] for w in _WILDCARDS if (w, port) in self.listeners), None)
        return found

    def connect(self, host: str, port: int, local_host: str) -> MemoryStream:
        listener = self.lookup(host, port)
        if listener is None or listener._closing:
            self.refused += 1
            raise MemoryConnectionRefused(errno.ECONNREFUSED, f"connect to {host}:{port} failed: connection refused")
        local = (local_host, self._free_port(local_host))  # a name only: not registered as a listener
        up, down = _Pipe(self.buffer_limit), _Pipe(self.buffer_limit)
        client = MemoryStream(down, up, local, (host, port))
        server = MemoryStream(up, down, listener.address, local)
        listener._accept(server)
        return client


class MemoryTransport:
    """The ``memory`` transport: follows :class:`dispy_core.interfaces.Transport` within a network.

    ``host`` is the address this transport's outgoing connections come from (what peers see).
    """

    scheme = "memory"

    def __init__(self, network: MemoryNetwork | None = None, host: str = "127.0.0.1") -> None:
        self.network = network if network is not None else MemoryNetwork()
        self.host = host

    async def connect(self, host: str, port: int, *, timeout: float) -> MemoryStream:
        await asyncio.sleep(0)  # like a real connect, give the loop a turn
        return self.network.connect(host, port, self.host)

    async def listen(self, host: str, port: int, handler: StreamHandler) -> MemoryListener:
        return self.network._register(host, port, handler)


class MemoryTransportPlugin:
    """A plugin object that makes every connection of a cluster go over ``network``.

    Pass it as ``JobCluster(..., plugins=[MemoryTransportPlugin(network)])``; for an in-process node,
    set ``server.transport = MemoryTransport(network, host=...)`` before ``server.start()``. The
    cluster and its nodes must then run on one event loop (the cluster's).
    """

    def __init__(self, network: MemoryNetwork, host: str = "127.0.0.1") -> None:
        self.network = network
        self.host = host

    @hookimpl(tryfirst=True)
    def dispy_make_transport(self, config: object, scheme: str) -> MemoryTransport:
        return MemoryTransport(self.network, host=self.host)
