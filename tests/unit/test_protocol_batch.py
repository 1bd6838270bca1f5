"""Batch frames: small messages sent together share one frame, for peers that both offered "batch"."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispy_core.errors import ProtocolError
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import FrameDecoder, body_parts
from dispy_core.protocol.session import BATCH_BODY_MAX, FEATURES, Session


def pair(client_features: tuple[str, ...] = FEATURES,
         server_features: tuple[str, ...] = FEATURES) -> tuple[Session, Session]:
    client = Session(initiator=True, secret="s", serializers=["pickle"], features=client_features)
    server = Session(initiator=False, secret="s", serializers=["pickle"], features=server_features)
    client.start()
    for _ in range(2):
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    assert client.authenticated and server.authenticated
    return client, server


def frames(data: bytes) -> list[int]:
    """The message types of the frames in ``data``."""
    decoder = FrameDecoder(1 << 24)
    decoder.push(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame.msg_type)
    return out


def results(n: int, size: int = 10) -> list[m.Message]:
    return [m.JobResult("c", uid, 5, bytes([uid % 256]) * size) for uid in range(n)]


def test_both_offering_batch_agree_and_small_messages_share_a_frame() -> None:
    client, server = pair()
    assert client.features == server.features == {"batch"}
    msgs = results(20)
    data = b"".join(server.send_many([server.prepare(msg) for msg in msgs]))
    assert frames(data) == [m.Batch.CODE]
    assert client.receive_data(data) == msgs


def test_a_large_message_travels_alone_between_batches_in_order() -> None:
    client, server = pair()
    big = m.JobResult("c", 99, 5, b"x" * (BATCH_BODY_MAX + 1))
    msgs = [*results(3), big, *results(2)]
    data = b"".join(server.send_many([server.prepare(msg) for msg in msgs]))
    assert frames(data) == [m.Batch.CODE, m.JobResult.CODE, m.Batch.CODE]
    assert client.receive_data(data) == msgs


@pytest.mark.parametrize("old", ["client", "server"])
def test_a_peer_that_did_not_offer_batch_gets_frames_of_their_own(old: str) -> None:
    client, server = pair(*(((), FEATURES) if old == "client" else (FEATURES, ())))
    assert client.features == server.features == frozenset()
    msgs = results(5)
    data = b"".join(server.send_many([server.prepare(msg) for msg in msgs]))
    assert frames(data) == [m.JobResult.CODE] * 5
    assert client.receive_data(data) == msgs


def test_a_batch_to_a_peer_that_did_not_agree_is_refused() -> None:
    client, server = pair(client_features=())
    server.features = frozenset({"batch"})  # a peer that batches anyway
    data = b"".join(server.send_many([server.prepare(msg) for msg in results(3)]))
    with pytest.raises(ProtocolError, match="did not agree"):
        client.receive_data(data)


def forged(batch: m.Batch) -> tuple[Session, bytes]:
    client, server = pair()
    return client, b"".join(server._frame((batch, *body_parts(batch))))


def body(msg: m.Message) -> bytes:
    parts, _ = body_parts(msg)
    return b"".join(parts)


@pytest.mark.parametrize("batch, complaint", [
    (m.Batch([m.Ping.CODE], [3, 1], body(m.Ping(1))), "codes"),
    (m.Batch([m.Ping.CODE], [1], body(m.Ping(1))), "add up"),
    (m.Batch([m.Ping.CODE], [-1], b""), "add up"),
    (m.Batch([], [], b""), "codes"),
    (m.Batch([m.Batch.CODE], [len(body(m.Batch([], [], b"")))], body(m.Batch([], [], b""))), "cannot travel"),
    (m.Batch([m.Hello.CODE], [len(body(m.Hello(b"n" * 32)))], body(m.Hello(b"n" * 32))), "cannot travel"),
    (m.Batch([m.Fragment.CODE], [len(body(m.Fragment(1, 1, b"x")))], body(m.Fragment(1, 1, b"x"))),
     "cannot travel"),
    (m.Batch([999], [0], b""), "unknown message type"),
])
def test_a_malformed_batch_is_refused(batch: m.Batch, complaint: str) -> None:
    client, data = forged(batch)
    with pytest.raises(ProtocolError, match=complaint):
        client.receive_data(data)


@given(st.lists(st.tuples(st.integers(0, 2**31), st.binary(max_size=BATCH_BODY_MAX + 64)), max_size=30),
       st.integers(1, 4000))
def test_any_run_of_messages_arrives_whole_and_in_order_in_any_chunking(items: list[tuple[int, bytes]],
                                                                         chunk: int) -> None:
    client, server = pair()
    msgs = [m.JobResult("c", uid, 5, blob) for uid, blob in items]
    data = b"".join(server.send_many([server.prepare(msg) for msg in msgs]))
    got = []
    for start in range(0, len(data), chunk):
        got += client.receive_data(data[start:start + chunk])
    assert got == msgs


def test_prepare_refuses_what_is_not_a_message_to_send() -> None:
    _client, server = pair()
    with pytest.raises(ProtocolError):
        server.prepare(m.Batch([], [], b""))
    with pytest.raises(ProtocolError):
        server.prepare(m.Hello(b"n" * 32))
