"""An authenticated connection: the sans-I/O :class:`Session` driven over a transport's ByteStream.

Every transport gets the same security because the handshake, MACs and framing happen here, above
the transport. One channel per client-node pair carries every message both ways (no connection per job).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from dispy_core.errors import DispyError, PeerClosedError, ProtocolError, RemoteError, TransportError
from dispy_core.interfaces import ByteStream, Serializer, Transport
from dispy_core.protocol import messages as m
from dispy_core.protocol.session import Prepared, Session
from dispy_core.ratelog import Throttled

log = logging.getLogger("dispy.channel")

READ_SIZE = 1 << 20
FLUSH_JOIN_MAX = 1 << 16
"""Held frames below this size are joined into one write; larger ones are written as they are."""
_dropped = Throttled(log)
"""Connections dropped for a protocol error: one line per kind per period, whoever floods."""

REPLY_TYPES: tuple[type[m.Message], ...] = (
    m.NodeInfo, m.ComputationReady, m.ComputationClosed, m.FileAck, m.Pong, m.Error, m.JobsRecovered, m.NodeCpusSet)


class Channel:
    """Frames messages over one stream; correlates requests and replies by ``req_id``."""

    def __init__(self, stream: ByteStream, session: Session, early: list[m.Message]) -> None:
        self.stream = stream
        self.session = session
        self.peer = stream.peer
        self.closed = False
        self.close_reason = ""
        self.tx_bytes = 0
        self.rx_bytes = 0
        self._early = early
        self._req_ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[m.Message]] = {}
        self._held: list[Prepared] | None = None  # messages send_nowait queued, framed by flush()
        self.close_code = ""  # the code of the peer's farewell, if it said why it closed

    # ------------------------------------------------------------------ establishing
    @classmethod
    async def connect(cls, transport: Transport, host: str, port: int, *, secret: str | bytes,
                      serializers: Mapping[str, Serializer], serializer: str, timeout: float,
                      name: str = "", software: str = "", max_frame_size: int | None = None) -> Channel:
        stream = await transport.connect(host, port, timeout=timeout)
        session = cls._session(True, secret, name, software, serializers, serializer, max_frame_size)
        session.start()
        return await cls._handshake(stream, session, timeout)

    @classmethod
    async def accept(cls, stream: ByteStream, *, secret: str | bytes, serializers: Mapping[str, Serializer],
                     serializer: str, timeout: float, name: str = "", software: str = "",
                     max_frame_size: int | None = None) -> Channel:
        session = cls._session(False, secret, name, software, serializers, serializer, max_frame_size)
        return await cls._handshake(stream, session, timeout)

    @staticmethod
    def _session(initiator: bool, secret: str | bytes, name: str, software: str,
                 serializers: Mapping[str, Serializer], serializer: str, max_frame_size: int | None) -> Session:
        kwargs: dict[str, Any] = {}
        if max_frame_size:
            kwargs["max_frame_size"] = max_frame_size
        return Session(initiator=initiator, secret=secret, name=name, software=software,
                       serializers=dict(serializers), serializer=serializer, **kwargs)

    @classmethod
    async def _handshake(cls, stream: ByteStream, session: Session, timeout: float) -> Channel:
        early: list[m.Message] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    out = session.data_to_send()
                    if out:
                        await stream.write(out)
                    if session.authenticated:
                        break
                    data = await stream.read(READ_SIZE)
                    if not data:
                        hint = getattr(stream, "hangup_hint", lambda: "")()  # the transport may know why
                        raise TransportError(f"{_fmt(stream.peer)} closed the connection during the handshake"
                                             + (f": {hint}" if hint else ""))
                    early.extend(session.receive_data(data))
        except ProtocolError:
            out = session.data_to_send()  # e.g. the acceptor's "authentication failed" notice
            if out:
                try:
                    await asyncio.wait_for(stream.write(out), 2)
                except (OSError, TimeoutError, DispyError):
                    pass
            await stream.close()
            raise
        except TimeoutError:
            await stream.close()
            raise TransportError(f"handshake with {_fmt(stream.peer)} timed out after {timeout} s") from None
        except BaseException:
            await stream.close()
            raise
        return cls(stream, session, early)

    # ------------------------------------------------------------------ traffic
    def next_req_id(self) -> int:
        return next(self._req_ids)

    def _frame(self, msg: m.Message) -> list[Any]:
        """The frame's buffers (a large payload is not copied into the frame: ``write_nowait`` queues each)."""
        parts = self.session.send_parts(msg)
        self.tx_bytes += sum(len(p) for p in parts)
        return parts

    def hold(self) -> bool:
        """Collect what :meth:`send_nowait` sends until :meth:`flush`: messages produced together (a result
        and the start of the next job, a batch of jobs) then leave in one write and reach the peer in one
        read. False if something else holds it already (then that one flushes)."""
        if self._held is not None:
            return False
        self._held = []
        return True

    def flush(self) -> None:
        """Write what was held, in order: its small messages framed together (see ``Session.send_many``)
        and joined into one buffer, large ones as they are (a copy of megabytes costs more than the
        writes it saves)."""
        prepared, self._held = self._held, None
        if not prepared or self.closed or self.session.failed:  # failed: its keys are gone
            return
        held = self.session.send_many(prepared)
        self.tx_bytes += sum(len(p) for p in held)
        try:
            if len(held) == 1:
                self.stream.write_nowait(held[0])
                return
            small: list[Any] = []
            size = 0
            for part in held:
                if len(part) >= FLUSH_JOIN_MAX:
                    if small:
                        self.stream.write_nowait(b"".join(small))
                        small, size = [], 0
                    self.stream.write_nowait(part)
                    continue
                small.append(part)
                size += len(part)
                if size >= FLUSH_JOIN_MAX:
                    self.stream.write_nowait(b"".join(small))
                    small, size = [], 0
            if small:
                self.stream.write_nowait(b"".join(small) if len(small) > 1 else small[0])
        except (OSError, TransportError):
            pass  # the connection is gone: its reader reports that

    async def send(self, msg: m.Message) -> None:
        if self.closed:
            raise TransportError(f"connection to {_fmt(self.peer)} is closed: {self.close_reason}")
        self.flush()  # anything held goes first
        parts = self._frame(msg)
        for part in parts[:-1]:  # no await between the parts: no other sender's frame comes between
            self.stream.write_nowait(part)
        await self.stream.write(parts[-1])

    def send_nowait(self, msg: m.Message) -> bool:
        """Queue ``msg`` at once, in order with :meth:`send`, without waiting for the buffer to drain;
        False if the connection is closed. For replies and results: no task per message.

        Frames sent this way are corked until the loop has run what is ready now: the messages one read
        or one batch produces reach the peer in one write, and wake it once (a wake-up across processes
        costs more than the frames themselves when jobs are tiny)."""
        if self.closed:
            return False
        prepared = self.session.prepare(msg)  # a message that cannot be sent fails here, not at the flush
        if self._held is None:  # corked: whatever this loop iteration sends leaves in one write, after it
            self._held = []
            asyncio.get_running_loop().call_soon(self.flush)
        self._held.append(prepared)
        return True

    async def request(self, msg: m.Message, timeout: float) -> m.Message:
        """Send ``msg`` (which carries a fresh ``req_id``) and wait for the reply with that id."""
        req_id = msg.req_id  # type: ignore[attr-defined]
        future: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        try:
            await self.send(msg)
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TransportError(f"{_fmt(self.peer)} did not answer {type(msg).__name__} "
                                 f"within {timeout} s") from None
        finally:
            self._pending.pop(req_id, None)
        if isinstance(reply, m.Error):
            raise RemoteError(reply.code, reply.message)
        return reply

    async def run(self, handler: Callable[[m.Message], Any]) -> None:
        """Read until the peer closes; replies resolve requests, everything else goes to ``handler``."""
        try:
            for msg in self._early:
                self._dispatch(msg, handler)
            self._early = []
            while True:
                data = await self.stream.read(READ_SIZE)
                if not data:
                    self.close_reason = self.close_reason or "closed by peer"  # ours, if we closed it
                    break
                self.rx_bytes += len(data)
                for msg in self.session.receive_data(data):  # what they answer is corked: see send_nowait
                    self._dispatch(msg, handler)
        except PeerClosedError as exc:
            self.close_reason = self.close_reason or str(exc)
            self.close_code = exc.code
            log.warning("connection with %s: %s", _fmt(self.peer), exc)
        except ProtocolError as exc:
            self.close_reason = self.close_reason or f"protocol error: {exc}"
            _dropped.warning("dropping connection with %s: %s", _fmt(self.peer), exc, key=type(exc).__name__)
            self.flush()
            try:  # tell the peer why, so its log does not just say "closed by peer"
                self.stream.write_nowait(self.session.farewell(f"protocol error: {exc}"))
            except (OSError, TransportError):
                pass
        except (OSError, TransportError) as exc:
            self.close_reason = self.close_reason or f"connection lost: {exc}"
        finally:
            await self.close(self.close_reason or "closed")

    def _dispatch(self, msg: m.Message, handler: Callable[[m.Message], Any]) -> None:
        if isinstance(msg, REPLY_TYPES):
            future = self._pending.get(getattr(msg, "req_id", 0))
            if future is not None and not future.done():
                future.set_result(msg)
                return
        handler(msg)

    async def say_farewell_and_close(self, reason: str, code: str = "closing") -> None:
        """Tell the peer why (a last Error frame), then close."""
        if not self.closed:
            self.flush()
            try:
                self.stream.write_nowait(self.session.farewell(reason, code))
            except (OSError, TransportError):
                pass
        await self.close(reason)

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.flush()  # what was sent before the close goes first
        self.closed = True
        self.close_reason = self.close_reason or reason
        error = TransportError(f"connection to {_fmt(self.peer)} closed: {self.close_reason}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        await self.stream.close()


def _fmt(addr: Any) -> str:
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        return str(addr)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
