"""Every installed plugin of each role passes the kit's conformance check for that role, and each check
fails on a deliberately broken plugin (so the checks can fail).

Parametrized from the entry points, so a third-party plugin installed in this environment is checked
by the same tests as the built-in ones.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dispy_core.config import Config
from dispy_core.errors import TransportError
from dispy_core.interfaces import ByteStream, ComputationSpec, JobExecutor, JobOutcome, JobView, NodeLoad
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.testing import (
    MemoryConnectionRefused,
    MemoryNetwork,
    MemoryTransport,
    check_executor,
    check_scheduler,
    check_serializer,
    check_transport,
)
from dispy_core.testing.certs import make_self_signed
from dispy_core.testing.memory import MemoryStream
from dispy_plugins.scheduler_loadbalance.scheduler import LoadBalanceScheduler
from dispy_plugins.serializer_pickle.serializer import PickleSerializer


def _entry_points(group: str) -> list[Any]:
    eps = sorted(importlib.metadata.entry_points(group=group), key=lambda ep: ep.name)
    return [pytest.param(ep, id=ep.name) for ep in eps]


def _hook(ep: Any, name: str) -> Any:
    module = ep.load()
    assert hasattr(module, name), f"{ep.value} has no {name} hook"
    return getattr(module, name)


# =========================================================================== every installed plugin
@pytest.mark.parametrize("ep", _entry_points("dispy.transport"))
def test_transport_plugin_conforms(ep: Any) -> None:
    make = _hook(ep, "dispy_make_transport")
    assert make(config=Config(), scheme="no-such-scheme") is None
    transport = make(config=Config(), scheme=ep.name)
    assert transport is not None, f"{ep.name!r} plugin refuses its own scheme"
    assert transport.scheme == ep.name
    check_transport(transport)


def test_tcp_transport_with_tls_conforms(tmp_path: Path) -> None:
    certfile, keyfile = make_self_signed(tmp_path)
    config = Config(certfile=str(certfile), keyfile=str(keyfile))
    transport = DispyPluginManager(config, roles=("transport",)).make_transport("tcp")
    assert transport.tls
    check_transport(transport)


def test_memory_transport_conforms() -> None:
    check_transport(MemoryTransport(MemoryNetwork()))


@pytest.mark.parametrize("ep", _entry_points("dispy.serializer"))
def test_serializer_plugin_conforms(ep: Any) -> None:
    make = _hook(ep, "dispy_make_serializer")
    assert make(config=Config(), name="no-such-serializer") is None
    serializer = make(config=Config(), name=ep.name)
    assert serializer is not None and serializer.name == ep.name
    check_serializer(serializer)


@pytest.mark.parametrize("ep", _entry_points("dispy.scheduler"))
def test_scheduler_plugin_conforms(ep: Any) -> None:
    make = _hook(ep, "dispy_make_scheduler")
    check_scheduler(lambda: make(config=Config()))


@pytest.mark.parametrize("ep", _entry_points("dispy.executor"))
def test_executor_plugin_conforms(ep: Any) -> None:
    make = _hook(ep, "dispy_make_executor")
    config = Config(role="node")
    if make(config=config) is None:
        pytest.skip(f"the {ep.name!r} executor cannot run on this platform")
    check_executor(lambda: make(config=config))


# =========================================================================== the memory transport itself
def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_memory_network_many_hosts_one_process() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        seen: dict[str, tuple[str, int]] = {}

        def handler_for(name: str) -> Any:
            async def handler(stream: ByteStream) -> None:
                seen[name] = stream.peer
                await stream.write(name.encode())
            return handler

        node1, node2 = MemoryTransport(network, "10.0.0.1"), MemoryTransport(network, "10.0.0.2")
        first = await node1.listen("10.0.0.1", 9701, handler_for("one"))
        second = await node2.listen("10.0.0.2", 9701, handler_for("two"))
        with pytest.raises(TransportError, match="in use"):
            await node1.listen("10.0.0.1", 9701, handler_for("again"))
        client = MemoryTransport(network, "10.0.0.9")
        for host, name in (("10.0.0.1", b"one"), ("10.0.0.2", b"two")):
            stream = await client.connect(host, 9701, timeout=1)
            assert stream.peer == (host, 9701)
            assert await stream.read() == name and await stream.read() == b""
            await stream.close()
        assert seen["one"][0] == seen["two"][0] == "10.0.0.9" and seen["one"][1] != seen["two"][1]
        with pytest.raises(MemoryConnectionRefused) as refused:
            await client.connect("10.0.0.3", 9701, timeout=1)
        assert isinstance(refused.value, ConnectionRefusedError) and isinstance(refused.value, TransportError)
        with pytest.raises(ConnectionRefusedError):  # another network does not see these endpoints
            await MemoryTransport(MemoryNetwork()).connect("10.0.0.1", 9701, timeout=1)
        await first.close()
        await second.close()
        assert network.listeners == {} and network.refused == 1

    run(main())


def test_memory_stream_backpressure() -> None:
    async def main() -> None:
        network = MemoryNetwork(buffer_limit=1 << 20)
        expected = (1 << 20) + 1010
        go = asyncio.Event()

        async def handler(stream: ByteStream) -> None:
            await go.wait()
            total = 0
            while total < expected:
                total += len(await stream.read())
            await stream.write(str(total).encode())

        listener = await MemoryTransport(network).listen("127.0.0.1", 0, handler)
        stream = await MemoryTransport(network).connect(*listener.address, timeout=1)
        assert isinstance(stream, MemoryStream)
        await asyncio.wait_for(stream.write(b"x" * (1 << 20)), 1)  # up to the limit: no wait
        blocked = asyncio.ensure_future(stream.write(b"y" * 1000))
        await asyncio.sleep(0.05)
        assert not blocked.done(), "write did not wait while the peer had more than buffer_limit unread"
        stream.write_nowait(b"z" * 10)  # never waits
        go.set()
        await asyncio.wait_for(blocked, 2)
        assert await asyncio.wait_for(stream.read(), 2) == str(expected).encode()
        await stream.close()
        await listener.close()

    run(main())


def test_memory_listener_close_ends_its_connections() -> None:
    async def main() -> None:
        network = MemoryNetwork()

        async def handler(stream: ByteStream) -> None:
            while await stream.read():
                pass

        transport = MemoryTransport(network)
        listener = await transport.listen("", 0, handler)  # a wildcard address: reachable as any host
        stream = await transport.connect("127.0.0.1", listener.address[1], timeout=1)
        await stream.write(b"hello")
        reader = asyncio.ensure_future(stream.read())
        await listener.close()
        assert await asyncio.wait_for(reader, 2) == b""
        with pytest.raises(TransportError):
            await stream.write(b"more")
        with pytest.raises(ConnectionRefusedError):
            await transport.connect("127.0.0.1", listener.address[1], timeout=1)

    run(main())


# =========================================================================== the checks can fail
class Overfills(LoadBalanceScheduler):
    name = "overfills"

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        return [(job.uid, nodes[0].node_id) for job in pending if job.pinned is None] if nodes else []


class IgnoresPins(LoadBalanceScheduler):
    name = "ignores-pins"

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        return super().assign([JobView(job.uid, job.status) for job in pending], nodes)


class Idle(LoadBalanceScheduler):
    name = "idle"

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        return []


class Twice(LoadBalanceScheduler):
    name = "twice"

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        pairs = super().assign(pending, nodes)
        return pairs + pairs[:1]


class UnknownNode(LoadBalanceScheduler):
    name = "unknown-node"

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        return [(uid, node_id + "?") for uid, node_id in super().assign(pending, nodes)]


class Mutates(LoadBalanceScheduler):
    name = "mutates"

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        pairs = super().assign(pending, nodes)
        if isinstance(pending, list) and pending:
            pending.pop()
        return pairs


@pytest.mark.parametrize(("broken", "message"), [
    (Overfills, "free"), (IgnoresPins, "pinned to"), (Idle, "work conservation"), (Twice, "twice"),
    (UnknownNode, "not among the nodes passed"), (Mutates, "changed the sequences")])
def test_scheduler_check_fails_on_a_broken_scheduler(broken: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_scheduler(broken)


class DropsData(PickleSerializer):
    name = "drops-data"

    def dumps(self, obj: Any) -> bytes:
        return super().dumps(obj[:1000] if isinstance(obj, bytes) else obj)


class TuplesBecomeLists(PickleSerializer):
    name = "tuples-become-lists"

    def dumps(self, obj: Any) -> bytes:
        return super().dumps(list(obj) if isinstance(obj, tuple) else obj)


class LoadsAnything(PickleSerializer):
    name = "loads-anything"

    def loads(self, data: bytes | memoryview) -> Any:
        try:
            return super().loads(data)
        except Exception:
            return None


class CodeByReference(PickleSerializer):
    name = "code-by-reference"

    def dumps_code(self, obj: Any) -> bytes:
        return self.dumps(obj)


class CopiesViewsWrongly(PickleSerializer):
    name = "copies-views-wrongly"

    def loads(self, data: bytes | memoryview) -> Any:
        return super().loads(data.obj if isinstance(data, memoryview) else data)  # type: ignore[arg-type]


@pytest.mark.parametrize(("broken", "message"), [
    (DropsData, "1 MiB of bytes did not survive"), (TuplesBecomeLists, "tuple did not survive"),
    (LoadsAnything, "instead of raising"), (CodeByReference, "not by value"),
    (CopiesViewsWrongly, "from a memoryview")])
def test_serializer_check_fails_on_a_broken_serializer(broken: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_serializer(broken())


class _BrokenStream:
    """Wraps a MemoryStream and breaks one thing about it."""

    def __init__(self, inner: MemoryStream, how: str) -> None:
        self.inner, self.how = inner, how

    @property
    def peer(self) -> tuple[str, int]:
        return self.inner.peer

    async def read(self, max_bytes: int = 262144) -> bytes:
        if self.how == "overreads":
            max_bytes = max(max_bytes, 4096)
        return await self.inner.read(max_bytes)

    def _data(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview | None:
        if self.how == "truncates":
            return bytes(data)[:65536]
        if self.how == "close-then-write" and self.inner.closed:
            return None
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if (kept := self._data(data)) is not None:
            await self.inner.write(kept)

    def write_nowait(self, data: bytes | bytearray | memoryview) -> None:
        if (kept := self._data(data)) is not None:
            self.inner.write_nowait(kept)

    async def close(self) -> None:
        await self.inner.close()


class BrokenTransport(MemoryTransport):
    def __init__(self, how: str) -> None:
        super().__init__(MemoryNetwork())
        self.how = how

    async def connect(self, host: str, port: int, *, timeout: float) -> Any:
        if self.how == "never-refuses" and self.network.lookup(host, port) is None:
            await self.listen(host, port, _drain)  # whatever the address, something answers
        return _BrokenStream(await super().connect(host, port, timeout=timeout), self.how)


async def _drain(stream: ByteStream) -> None:
    while await stream.read():
        pass


@pytest.mark.parametrize(("how", "message"), [
    ("truncates", "did not finish within|stream ended"), ("overreads", r"read\(10\) returned"),
    ("close-then-write", "after close"), ("never-refuses", "did not raise")])
def test_transport_check_fails_on_a_broken_transport(how: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_transport(BrokenTransport(how), timeout=1)


class _Wrapper:
    """An executor delegating to the first installed one, with one fault."""

    name = "broken"

    def __init__(self, how: str) -> None:
        self.inner = DispyPluginManager(Config(role="node"), roles=("executor",)).make_executor()
        self.how = how
        self.stray: subprocess.Popen[bytes] | None = None

    async def open(self, spec: ComputationSpec, events: Any) -> None:
        if self.how == "leaves-a-process":
            self.stray = subprocess.Popen(["sleep", "30"])
        if self.how == "loses-results":
            events = _LosesResults(events)
        await self.inner.open(spec, events)

    async def submit(self, comp_id: str, job_uid: int, args: bytes) -> None:
        await self.inner.submit(comp_id, job_uid, args)

    def submit_nowait(self, comp_id: str, job_uid: int, args: bytes) -> None:
        self.inner.submit_nowait(comp_id, job_uid, args)

    async def cancel(self, comp_id: str, job_uid: int, grace: float = 5.0) -> bool:
        return bool(await self.inner.cancel(comp_id, job_uid, grace))

    async def close(self, comp_id: str, *, terminate: bool = False) -> None:
        await self.inner.close(comp_id, terminate=terminate)

    async def shutdown(self) -> None:
        await self.inner.shutdown()


class _LosesResults:
    def __init__(self, events: Any) -> None:
        self.events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self.events, name)

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        outcome.result = PickleSerializer().dumps(None)
        self.events.job_done(comp_id, job_uid, outcome)


@pytest.mark.parametrize(("how", "message"), [
    ("leaves-a-process", "processes left after shutdown"), ("loses-results", "returned None, expected 2")])
def test_executor_check_fails_on_a_broken_executor(how: str, message: str) -> None:
    broken = _Wrapper(how)
    assert isinstance(broken, JobExecutor)
    try:
        with pytest.raises(AssertionError, match=message):
            check_executor(lambda: broken, timeout=10)
    finally:
        if broken.stray is not None:
            broken.stray.kill()
            broken.stray.wait(5)
