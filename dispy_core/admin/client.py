"""dispyadmin's side of the admin protocol: one connection per operation, answered with the node's AdminInfo.

The connection runs the usual handshake (``protocol/session.py``) announcing the role ``"admin"``, so the node
checks the admin secret (see ``dispy_core/node/admin.py``). Admin messages carry no blob: no serializer is
named or accepted, so nothing from the node is ever loaded by one.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from dispy_core import __version__
from dispy_core.channel import _fmt
from dispy_core.errors import AuthenticationError, DispyError, ProtocolError, TransportError
from dispy_core.node.admin import ADMIN_ROLE
from dispy_core.protocol import messages as m
from dispy_core.protocol.session import Session

READ_SIZE = 65536
_req_ids = itertools.count(1)


class AdminError(DispyError):
    """An admin operation on a node failed; the message names the node and says why."""


@dataclass(frozen=True)
class NodeAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return _fmt((self.host, self.port))


def parse_node(text: str, default_port: int) -> NodeAddress:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address; ValueError names the bad text."""
    spec = text.strip()
    if not spec:
        raise ValueError("empty node address")
    host, port = spec, default_port
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"node {text!r}: use [IPv6]:PORT")
        if rest:
            port = _port(rest[1:], text)
    elif spec.count(":") == 1:
        host, _, sport = spec.partition(":")
        port = _port(sport, text)
    if not host:
        raise ValueError(f"node {text!r} names no host")
    return NodeAddress(host, port)


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"node {spec!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


class AdminClient:
    """Runs admin operations on nodes with the admin secret, over the given transport (TCP, or TLS)."""

    def __init__(self, transport: Any, admin_secret: str, timeout: float = 10.0) -> None:
        self.transport = transport
        self._secret = admin_secret
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AdminClient(timeout={self.timeout})"  # never the secret

    async def info(self, node: NodeAddress) -> m.AdminInfo:
        return await self.request(node, m.AdminInfoRequest(next(_req_ids)))

    async def set_cpus(self, node: NodeAddress, cpus: int) -> m.AdminInfo:
        return await self.request(node, m.AdminSetCpus(next(_req_ids), cpus))

    async def set_service(self, node: NodeAddress, start: str = "", stop: str = "", end: str = "") -> m.AdminInfo:
        return await self.request(node, m.AdminSetService(next(_req_ids), start, stop, end))

    async def serve(self, node: NodeAddress, computations: int) -> m.AdminInfo:
        return await self.request(node, m.AdminServe(next(_req_ids), computations))

    async def shutdown(self, node: NodeAddress, wait: bool = True) -> m.AdminInfo:
        return await self.request(node, m.AdminShutdown(next(_req_ids), wait))

    async def request(self, node: NodeAddress, msg: m.Message) -> m.AdminInfo:
        """Connect, prove the admin secret, send ``msg``, return the node's answer; AdminError says why not."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._request(node, msg)
        except TimeoutError:
            raise AdminError(f"node {node}: no answer within {self.timeout:g} s") from None
        except AuthenticationError:
            raise AdminError(f"node {node} refused the admin secret (authentication failed)") from None
        except AdminError:
            raise
        except (DispyError, OSError) as exc:
            raise AdminError(f"node {node}: {exc}") from None

    async def _request(self, node: NodeAddress, msg: m.Message) -> m.AdminInfo:
        stream = await self.transport.connect(node.host, node.port, timeout=self.timeout)
        try:
            session = Session(initiator=True, secret=self._secret, name="dispyadmin", role=ADMIN_ROLE,
                              software=f"neodispy {__version__}", serializers=[], serializer="")
            session.start()
            replies: list[m.Message] = []
            while not session.authenticated:
                await self._flush(stream, session)
                replies += session.receive_data(await self._read(stream, node))
            await stream.write(session.send(msg))
            req_id = getattr(msg, "req_id", 0)
            while True:
                for reply in replies:
                    if isinstance(reply, m.Error) and reply.req_id in (0, req_id):
                        raise AdminError(f"node {node} refused {type(msg).__name__}: {reply.message}")
                    if isinstance(reply, m.AdminInfo) and reply.req_id == req_id:
                        return reply
                replies = session.receive_data(await self._read(stream, node))
        except ProtocolError as exc:
            if isinstance(exc, AuthenticationError):
                raise
            raise AdminError(f"node {node}: {exc}") from None
        finally:
            await stream.close()

    @staticmethod
    async def _flush(stream: Any, session: Session) -> None:
        out = session.data_to_send()
        if out:
            await stream.write(out)

    @staticmethod
    async def _read(stream: Any, node: NodeAddress) -> bytes:
        data: bytes = await stream.read(READ_SIZE)
        if not data:
            raise TransportError(f"node {node} closed the connection")
        return data
