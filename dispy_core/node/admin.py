"""The node's side of dispyadmin: admin operations, authenticated with ``--admin_secret``.

dispyadmin connects to the node's usual port and runs the usual handshake (``protocol/session.py``), but its
Hello announces the role ``"admin"``. :meth:`NodeAdmin.intercept` reads that Hello before the handshake goes
on (it is plain JSON: nothing is loaded) and picks the key by role: an admin's handshake must prove the admin
secret, a client's the client secret. So a client secret never grants admin, and an admin channel carries
admin messages only (never a job). A node without ``--admin_secret`` refuses every admin connection and says
why. Admin messages have no blobs: no serializer is involved on an admin connection at all.

The operations are the ones the node's console does (``console.py``): they call the same ``NodeServer``
methods (``set_cpus``, ``request_quit``, ``request_stop``, ``apply_service_state``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from dispy_core import __version__
from dispy_core.channel import Channel, _fmt
from dispy_core.errors import DispyError, ProtocolError, TransportError
from dispy_core.interfaces import ByteStream
from dispy_core.node.service import ServiceWindow, format_hhmm, minute_of_day, parse_hhmm
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import FrameDecoder, decode_body, encode_frame
from dispy_core.protocol.session import HANDSHAKE_FRAME_LIMIT

if TYPE_CHECKING:
    from dispy_core.node.server import NodeServer

log = logging.getLogger("dispy.node.admin")

ADMIN_ROLE = "admin"
"""The role dispyadmin announces in its Hello."""
ADMIN_CONNECTION_LIMIT = 30.0
"""Seconds an admin connection may stay open: dispyadmin hangs up after each operation, and the connection
is served inside the node's accept (it holds one of the ``node.max_unauthenticated`` places meanwhile)."""


class _Replayed:
    """``stream`` with the bytes read ahead of the handshake given back first; then the stream itself (its
    methods are bound straight onto this object, so a client's connection costs nothing more)."""

    def __init__(self, stream: ByteStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.peer = stream.peer
        self.write = stream.write
        self.write_nowait = stream.write_nowait
        self.close = stream.close
        if not head:
            self.read = stream.read  # type: ignore[method-assign]

    async def read(self, max_bytes: int = 262144) -> bytes:
        head, self._head = self._head[:max_bytes], self._head[max_bytes:]
        if not self._head:
            self.read = self._stream.read  # type: ignore[method-assign]
        return head

    def __getattr__(self, name: str) -> Any:  # hangup_hint, tls, get_extra_info, ... of the transport's stream
        return getattr(self._stream, name)


async def read_hello(stream: ByteStream, timeout: float) -> tuple[bytes, m.Hello | None]:
    """The bytes of the peer's first frame (or what came before it proved malformed) and the Hello in it."""
    decoder = FrameDecoder(HANDSHAKE_FRAME_LIMIT)
    head = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await stream.read(HANDSHAKE_FRAME_LIMIT)
                if not data:
                    return bytes(head), None
                head += data
                frames = decoder.feed(data)
                if frames:
                    frame = frames[0]
                    if frame.msg_type != m.Hello.CODE or frame.has_mac:
                        return bytes(head), None
                    hello = decode_body(frame.msg_type, frame.body)  # JSON and checked types only
                    return bytes(head), hello if isinstance(hello, m.Hello) else None
    except ProtocolError:
        return bytes(head), None  # the handshake proper refuses it, as it would any garbage
    except TimeoutError:
        await stream.close()
        raise TransportError(f"handshake with {_fmt(stream.peer)} timed out after {timeout} s") from None


class NodeAdmin:
    """Admin connections and operations of one ``NodeServer``."""

    def __init__(self, server: NodeServer) -> None:
        self.server = server
        self.channels: set[Channel] = set()
        self._service_loop_started = False
        options = server.options
        if options.admin_secret and options.admin_secret == options.secret:
            log.warning("--admin_secret is the same as --secret: every client can administer this node; "
                        "give it a secret of its own")

    # ------------------------------------------------------------------ connections
    async def intercept(self, stream: ByteStream, timeout: float) -> ByteStream | None:
        """The stream for the client handshake, or None when it was dispyadmin's (served here, to its end).
        Raises (logged by the server as a refused connection) when an admin cannot be served."""
        head, hello = await read_hello(stream, timeout)
        replayed: Any = _Replayed(stream, head)
        if hello is None or hello.role != ADMIN_ROLE:
            return replayed  # a client: the usual handshake, from its Hello
        secret = self.server.options.admin_secret
        if not secret:
            reason = f"node {self.server.name} was started without --admin_secret: admin operations are disabled"
            try:
                stream.write_nowait(encode_frame(m.Error("refused", reason), seq=0, serializer="", mac_key=None))
            except (OSError, DispyError):
                pass
            await stream.close()
            raise ProtocolError(f"admin connection refused: {reason}")
        channel = await Channel.accept(replayed, secret=secret, serializers={}, serializer="", timeout=timeout,
                                       name=self.server.name, software=f"neodispy {__version__}")
        log.debug("admin %s connected", _fmt(channel.peer))
        await self._run(channel)
        return None

    async def _run(self, channel: Channel) -> None:
        """Until dispyadmin hangs up (after one operation), within ADMIN_CONNECTION_LIMIT seconds."""
        self.channels.add(channel)
        try:
            async with asyncio.timeout(ADMIN_CONNECTION_LIMIT):
                await channel.run(lambda msg: self._handle(channel, msg))
        except TimeoutError:
            log.info("admin %s: connection closed after %g s", _fmt(channel.peer), ADMIN_CONNECTION_LIMIT)
        finally:
            self.channels.discard(channel)
            await channel.close("admin connection ended")

    def _handle(self, channel: Channel, msg: m.Message) -> None:
        req_id = getattr(msg, "req_id", 0)
        handler = self._handlers.get(type(msg))
        if handler is None:
            channel.send_nowait(m.Error("unexpected", f"an admin connection carries admin operations only, "
                                                      f"not {type(msg).__name__}", req_id))
            return
        try:
            after = handler(self, channel, msg)
        except ValueError as exc:
            channel.send_nowait(m.Error("bad-request", str(exc), req_id))
            return
        channel.send_nowait(self.info(req_id))
        if after is not None:
            self.server._spawn(self._after_reply(channel, after))

    async def _after_reply(self, channel: Channel, action: Any) -> None:
        await asyncio.sleep(0.05)  # the reply, queued, leaves first
        action()

    # ------------------------------------------------------------------ operations
    def info(self, req_id: int = 0) -> m.AdminInfo:
        server = self.server
        window = server.options.service
        clients = [f"{comp.name} from {_fmt(comp.channel.peer)}" for comp in server.computations.values()]
        return m.AdminInfo(
            req_id=req_id, name=server.name, ip_addr=server.host, port=server.address[1], cpus=server.cpus,
            max_cpus=os.cpu_count() or 1, busy=server.busy, jobs_done=server.jobs_done,
            accepting=not server.not_accepting_reason(), not_accepting=server.not_accepting_reason(),
            service_start=_hhmm(window.start), service_stop=_hhmm(window.stop), service_end=_hhmm(window.end),
            service_state=server.service_state.value if window.active else "", serve=server.options.serve,
            served=server._served, clients=clients, software=f"neodispy {__version__}")

    def _on_info(self, channel: Channel, msg: m.AdminInfoRequest) -> None:
        return None

    def _on_cpus(self, channel: Channel, msg: m.AdminSetCpus) -> None:
        self.server.set_cpus(msg.cpus)  # ValueError names what is wrong
        log.info("admin %s set CPUs to %d", _fmt(channel.peer), self.server.cpus)

    def _on_service(self, channel: Channel, msg: m.AdminSetService) -> None:
        times = {name: parse_hhmm(text) if text.strip() else None
                 for name, text in (("start", msg.start), ("stop", msg.stop), ("end", msg.end))}
        window = ServiceWindow(**times)  # ValueError: times that do not make a window
        self.server.options.service = window
        self.server.apply_service_state()
        if window.active and not self._service_loop_started:
            self._service_loop_started = True
            self.server._spawn(self._service_loop())
        shown = " ".join(f"{k} {_hhmm(v)}" for k, v in times.items() if v is not None) or "none (always open)"
        log.info("admin %s set the service window: %s", _fmt(channel.peer), shown)

    def _on_serve(self, channel: Channel, msg: m.AdminServe) -> None:
        if msg.computations < 0:
            raise ValueError(f"serve takes a number of computations (0 = no limit), not {msg.computations}")
        server = self.server
        server.options.serve = server._served + msg.computations if msg.computations else 0
        log.info("admin %s: serve %s", _fmt(channel.peer),
                 f"{msg.computations} more computations" if msg.computations else "with no limit")

    def _on_shutdown(self, channel: Channel, msg: m.AdminShutdown) -> Any:
        log.info("admin %s asked the node to stop %s", _fmt(channel.peer),
                 "after its running jobs" if msg.wait else "now")
        if msg.wait:
            return lambda: self.server.request_quit("dispyadmin")
        return self.server.request_stop

    async def _service_loop(self) -> None:
        """Follows a window set by dispyadmin (the server's own loop knows only the window it started with)."""
        server = self.server
        while not server.stopped:
            now = server.clock()
            wait = server.options.service.minutes_to_next_change(minute_of_day(now.hour, now.minute, now.second))
            await asyncio.sleep(min(30.0, 0.05 + 60.0 * wait) if wait is not None else 30.0)
            server.apply_service_state()

    _handlers: dict[type[m.Message], Any] = {
        m.AdminInfoRequest: _on_info,
        m.AdminSetCpus: _on_cpus,
        m.AdminSetService: _on_service,
        m.AdminServe: _on_serve,
        m.AdminShutdown: _on_shutdown,
    }


def _hhmm(minutes: int | None) -> str:
    return "" if minutes is None else format_hhmm(minutes)
