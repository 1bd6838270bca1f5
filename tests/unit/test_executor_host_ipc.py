"""The node<->host framing: round trips in any chunking, and bad or oversized input is refused."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispy_core.interfaces import JobOutcome
from dispy_core.status import JobStatus
from dispy_plugins.executor_host import ipc
from dispy_plugins.executor_host.client import _HostLink


def test_round_trip_any_chunking() -> None:
    frames: list[ipc.Frame] = [({"op": "a", "n": 1}, []), ({"op": "b", "s": "x"}, [b"", b"\x00" * 1000, b"tail"])]
    data = b"".join(ipc.encode(h, b) for h, b in frames)
    for step in (1, 3, 7, len(data)):
        reader = ipc.FrameReader()
        got = []
        for i in range(0, len(data), step):
            got.extend(reader.feed(data[i:i + step]))
        assert got == frames
        assert reader.pending == 0


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 5, 4096, 65535, 65536, 200_000]), min_size=1, max_size=5),
       cuts=st.lists(st.integers(1, 300_000), max_size=12), views=st.booleans(),
       as_bytearray=st.booleans())
def test_large_and_small_frames_in_any_chunking(sizes: list[int], cuts: list[int], views: bool,
                                                as_bytearray: bool) -> None:
    """Large frames are collected in pieces and joined once; with ``views`` their large blobs are
    read-only views; whatever the chunking and buffer type, the frames are exactly what was sent."""
    frames = [({"op": "f", "i": i}, [bytes([i % 251]) * size, b"t" * (i % 3)]) for i, size in enumerate(sizes)]
    data = b"".join(b"".join(ipc.encode_parts(h, b)) for h, b in frames)
    assert data == b"".join(ipc.encode(h, b) for h, b in frames)
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    reader = ipc.FrameReader(views=views)
    got: list[ipc.Frame] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        chunk = data[a:b]
        got.extend(reader.feed(bytearray(chunk) if as_bytearray else chunk))
    assert [(h, [bytes(x) for x in blobs]) for h, blobs in got] == frames
    assert reader.pending == 0
    for _, blobs in got:
        for blob in blobs:
            if isinstance(blob, memoryview):
                assert views and blob.readonly and blob.nbytes >= ipc.LARGE


def test_write_all_writes_parts_in_order(tmp_path: object) -> None:
    parts = ipc.encode_parts({"op": "x"}, [b"a" * 70_000, b"b" * 10, memoryview(b"c" * 100_000)])
    assert len(parts) > 1
    r, w = os.pipe()

    def write() -> None:
        try:
            ipc.write_all(w, parts)  # partial writes too: a default pipe holds less than this
        finally:
            os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        got = ipc.BlockingReader(r, views=True).read()
    finally:
        writer.join(10)
        os.close(r)
    assert got is not None
    header, blobs = got
    assert header == {"op": "x"} and [bytes(b) for b in blobs] == [b"a" * 70_000, b"b" * 10, b"c" * 100_000]


def test_oversized_and_malformed_frames_refused() -> None:
    with pytest.raises(ipc.IPCError, match="exceeds"):
        ipc.FrameReader(max_frame=100).feed(ipc.encode({"op": "x"}, [b"y" * 200]))
    bad_json = ipc.encode({"op": "x"}).replace(b'"op"', b"'op'")
    with pytest.raises(ipc.IPCError, match="JSON"):
        ipc.FrameReader().feed(bad_json)
    with pytest.raises(ipc.IPCError, match="'op'"):
        ipc.FrameReader().feed(ipc.encode({"no": "op"}))
    frame = bytearray(ipc.encode({"op": "x"}, [b"abc"]))
    frame[10:14] = (99).to_bytes(4, "big")  # a blob length that does not fit
    with pytest.raises(ipc.IPCError):
        ipc.FrameReader().feed(bytes(frame))


def test_blocking_reader(tmp_path: object) -> None:
    r, w = os.pipe()
    os.write(w, ipc.encode({"op": "one"}) + ipc.encode({"op": "two"}, [b"z"]))
    os.close(w)
    reader = ipc.BlockingReader(r)
    assert reader.read() == ({"op": "one"}, [])
    assert reader.read() == ({"op": "two"}, [b"z"])
    assert reader.read() is None
    os.close(r)


class _Events:
    def __init__(self) -> None:
        self.done: list[tuple[int, JobOutcome]] = []
        self.shutdowns: list[str] = []

    def job_started(self, comp_id: str, job_uid: int, start_time: float) -> None: ...

    def job_provisional(self, comp_id: str, job_uid: int, result: bytes) -> None: ...

    def job_file(self, comp_id: str, job_uid: int, relpath: str, data: bytes) -> None: ...

    def job_done(self, comp_id: str, job_uid: int, outcome: JobOutcome) -> None:
        self.done.append((job_uid, outcome))

    def node_shutdown(self, comp_id: str) -> None:
        self.shutdowns.append(comp_id)


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff",  # a frame far above the bound
    ipc.encode({"op": "done", "uid": "seven"}),  # wrong types
    ipc.encode({"op": "done", "uid": 1, "status": 999, "exc": "", "t0": 0, "t1": 0}, [b"", b"", b""]),
    ipc.encode({"op": "what"}),
])
def test_malformed_host_data_breaks_only_that_computation(garbage: bytes) -> None:
    async def go() -> None:
        events = _Events()
        link = _HostLink("c", events, max_frame=1 << 20)
        link.running = {1: 0, 2: 0}
        link.pipe_data_received(1, garbage)
        assert link.broken
        assert sorted(uid for uid, _ in events.done) == [1, 2]
        assert all(o.status == JobStatus.Terminated and "malformed" in o.exception for _, o in events.done)
        assert link.running == {}

    asyncio.run(go())


def test_shutdown_frame_calls_the_events_node_shutdown() -> None:
    """``dispynode_shutdown()`` in a computation reaches the node as ``ExecutorEvents.node_shutdown``."""
    async def go() -> None:
        events = _Events()
        link = _HostLink("c", events, max_frame=1 << 20)
        link.pipe_data_received(1, ipc.encode({"op": "shutdown", "uid": 3}))
        assert events.shutdowns == ["c"] and not link.broken

    asyncio.run(go())
