"""Channel over real TCP on loopback: held frames leave in one write, in order with everything else;
large frames go out as several buffers and arrive whole."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from dispy_core.channel import Channel
from dispy_core.config import Config
from dispy_core.protocol import messages as m
from dispy_plugins.serializer_pickle.serializer import PickleSerializer
from dispy_plugins.transport_tcp_ssl.transport import TcpTransport

SECRET = "channel-test"
SERIALIZERS = {"pickle": PickleSerializer()}


async def channel_pair() -> tuple[Channel, Channel, Any, asyncio.Queue[m.Message]]:
    """(server side, client side, listener, what the client receives)."""
    transport = TcpTransport(Config(role="node"))
    accepted: asyncio.Future[Channel] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def handler(stream: Any) -> None:
        channel = await Channel.accept(stream, secret=SECRET, serializers=SERIALIZERS, serializer="pickle",
                                       timeout=5)
        accepted.set_result(channel)
        await finished.wait()  # keep the stream open while the test runs

    listener = await transport.listen("127.0.0.1", 0, handler)
    client = await Channel.connect(transport, "127.0.0.1", listener.address[1], secret=SECRET,
                                   serializers=SERIALIZERS, serializer="pickle", timeout=5)
    server = await asyncio.wait_for(accepted, 5)
    received: asyncio.Queue[m.Message] = asyncio.Queue()
    reader = asyncio.ensure_future(client.run(received.put_nowait))
    client.reader_task = reader  # type: ignore[attr-defined]
    listener.finished = finished
    return server, client, listener, received


async def close(server: Channel, client: Channel, listener: Any) -> None:
    listener.finished.set()
    await client.close()
    await server.close()
    await listener.close()
    await asyncio.gather(client.reader_task, return_exceptions=True)  # type: ignore[attr-defined]


def count_writes(channel: Channel) -> list[int]:
    """The sizes of the channel's stream writes, recorded from now on."""
    writes: list[int] = []
    original = channel.stream.write_nowait  # type: ignore[attr-defined]

    def counting(data: Any) -> None:
        writes.append(len(data))
        original(data)

    channel.stream.write_nowait = counting  # type: ignore[attr-defined]
    return writes


async def take(received: asyncio.Queue[m.Message], n: int) -> list[m.Message]:
    return [await asyncio.wait_for(received.get(), 5) for _ in range(n)]


def test_held_frames_leave_in_one_write_and_in_order() -> None:
    async def body() -> None:
        server, client, listener, received = await channel_pair()
        writes = count_writes(server)
        try:
            server.hold()
            for i in range(3):
                assert server.send_nowait(m.Pong(req_id=100 + i))
            assert writes == []  # nothing leaves while held
            server.flush()
            assert len(writes) == 1
            got = await take(received, 3)
            assert [msg.req_id for msg in got] == [100, 101, 102]  # type: ignore[attr-defined]

            server.hold()
            server.send_nowait(m.Pong(req_id=1))
            await server.send(m.Pong(req_id=2))  # an awaited send flushes what is held first
            server.send_nowait(m.Pong(req_id=3))
            got = await take(received, 3)
            assert [msg.req_id for msg in got] == [1, 2, 3]  # type: ignore[attr-defined]
            server.flush()  # nothing left: no write
        finally:
            await close(server, client, listener)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_large_frames_are_written_in_parts_and_arrive_whole() -> None:
    async def body() -> None:
        server, client, listener, received = await channel_pair()
        writes = count_writes(client)
        got: asyncio.Queue[m.Message] = asyncio.Queue()
        server_reader = asyncio.ensure_future(server.run(got.put_nowait))
        payload = os.urandom(3 << 20)
        try:
            await client.send(m.JobSubmit("c", 1, payload, []))
            client.send_nowait(m.JobSubmit("c", 2, payload[:100], []))
            first, second = await take(got, 2)
            assert isinstance(first, m.JobSubmit) and bytes(first.args) == payload
            assert isinstance(second, m.JobSubmit) and second.args == payload[:100]
            assert len(writes) >= 3  # header, payload, tag, ... not one joined copy
            assert payload.__len__() in writes
        finally:
            server_reader.cancel()
            await close(server, client, listener)

    asyncio.run(asyncio.wait_for(body(), 30))
