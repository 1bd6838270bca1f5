"""Every installed transport / scheduler / serializer plugin honours its Protocol and behaves.

Parametrized from the entry points, so a third-party plugin installed in this environment is checked
by the same tests as the built-in ones.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

import pytest

from dispy_core.config import Config
from dispy_core.interfaces import ByteStream, NodeLoad, Scheduler, Serializer, Transport


def _entry_points(group: str) -> list[Any]:
    eps = sorted(importlib.metadata.entry_points(group=group), key=lambda ep: ep.name)
    return [pytest.param(ep, id=ep.name) for ep in eps]


def _module(ep: Any) -> Any:
    module = ep.load()
    assert module is not None
    return module


# --------------------------------------------------------------------------- transport
@pytest.mark.parametrize("ep", _entry_points("dispy.transport"))
def test_transport_plugin_echoes(ep: Any) -> None:
    module = _module(ep)
    assert hasattr(module, "dispy_make_transport"), f"{ep.value} has no dispy_make_transport hook"
    config = Config()
    transport = module.dispy_make_transport(config=config, scheme=ep.name)
    assert transport is not None, f"{ep.name!r} plugin refuses its own scheme"
    assert isinstance(transport, Transport)
    assert transport.scheme == ep.name
    assert module.dispy_make_transport(config=config, scheme="no-such-scheme") is None

    async def echo(stream: ByteStream) -> None:
        while data := await asyncio.wait_for(stream.read(), 5):
            await stream.write(data)

    async def main() -> None:
        listener = await asyncio.wait_for(transport.listen("127.0.0.1", 0, echo), 5)
        try:
            host, port = listener.address
            assert port > 0
            stream = await transport.connect(host, port, timeout=5)
            assert isinstance(stream, ByteStream)
            payload = b"conformance" * 1000
            await asyncio.wait_for(stream.write(payload), 5)
            got = bytearray()
            while len(got) < len(payload):
                chunk = await asyncio.wait_for(stream.read(), 5)
                assert chunk, "stream ended early"
                got += chunk
            assert got == payload
            await asyncio.wait_for(stream.close(), 5)
            await asyncio.wait_for(stream.close(), 5)
        finally:
            await asyncio.wait_for(listener.close(), 5)

    asyncio.run(asyncio.wait_for(main(), 30))


# --------------------------------------------------------------------------- scheduler
@pytest.mark.parametrize("ep", _entry_points("dispy.scheduler"))
def test_scheduler_plugin_picks_free_nodes(ep: Any) -> None:
    module = _module(ep)
    assert hasattr(module, "dispy_make_scheduler"), f"{ep.value} has no dispy_make_scheduler hook"
    scheduler = module.dispy_make_scheduler(config=Config())
    assert isinstance(scheduler, Scheduler)
    nodes = [NodeLoad("full", 2, 2), NodeLoad("free1", 4, 1), NodeLoad("free2", 4, 0),
             NodeLoad("full2", 1, 1)]
    for _ in range(5):
        assert scheduler.choose(nodes) in {"free1", "free2"}
    assert scheduler.choose([NodeLoad("a", 1, 1), NodeLoad("b", 3, 3)]) is None
    assert scheduler.choose([]) is None
    assert scheduler.choose([NodeLoad("only", 1, 0)]) == "only"


# --------------------------------------------------------------------------- serializer
def _compute(x: int) -> int:
    return x * 2


@pytest.mark.parametrize("ep", _entry_points("dispy.serializer"))
def test_serializer_plugin_round_trips(ep: Any) -> None:
    module = _module(ep)
    assert hasattr(module, "dispy_make_serializer"), f"{ep.value} has no dispy_make_serializer hook"
    serializer = module.dispy_make_serializer(config=Config(), name=ep.name)
    assert isinstance(serializer, Serializer)
    assert serializer.name == ep.name
    assert module.dispy_make_serializer(config=Config(), name="no-such-serializer") is None
    data = {"n": 1, "f": 2.5, "s": "ü", "b": b"\x00\xff", "l": [1, (2, 3)], "none": None, "set": {1, 2}}
    blob = serializer.dumps(data)
    assert isinstance(blob, bytes)
    assert serializer.loads(blob) == data
    assert serializer.loads(memoryview(blob)) == data

    offset = 40
    by_value = serializer.loads(serializer.dumps_code(lambda x: x + offset))
    assert by_value(2) == 42
    assert serializer.loads(serializer.dumps_code(_compute))(21) == 42
