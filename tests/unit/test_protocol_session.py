"""Handshake, authentication and per-frame integrity of Session, driven entirely in memory."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispy_core.errors import (
    AuthenticationError,
    FrameTooLarge,
    IntegrityError,
    ProtocolError,
    SerializationError,
)
from dispy_core.protocol import messages as m
from dispy_core.protocol import session as session_mod
from dispy_core.protocol.codec import (
    FLAG_MAC,
    FLAG_POLY1305,
    HEADER_SIZE,
    POLY1305_TAG_SIZE,
    FrameDecoder,
    decode_body,
    encode_frame,
)
from dispy_core.protocol.session import Session


class RecordingSerializer:
    """A JSON serializer that counts ``loads`` calls, to prove refused frames are never loaded."""

    def __init__(self, name: str = "json") -> None:
        self.name = name
        self.loads_calls = 0

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()

    def loads(self, data: bytes | memoryview) -> Any:
        self.loads_calls += 1
        return json.loads(bytes(data))

    def dumps_code(self, obj: Any) -> bytes:
        return self.dumps(obj)


class Pair:
    """A client and a server session plus everything that went over the wire."""

    def __init__(
        self,
        client_secret: str | bytes = "s3cret",
        server_secret: str | bytes | None = None,
        *,
        client_ser: str = "json",
        server_accepts: tuple[str, ...] = ("json",),
        max_frame_size: int = 4096,
    ) -> None:
        self.cser = RecordingSerializer()
        self.sser = RecordingSerializer()
        self.client = Session(
            initiator=True, secret=client_secret, name="cli", software="sw/1",
            serializers={"json": self.cser}, serializer=client_ser, max_frame_size=max_frame_size,
        )  # fmt: skip
        self.server = Session(
            initiator=False, secret=client_secret if server_secret is None else server_secret, name="node1",
            software="sw/2", serializers={n: self.sser for n in server_accepts}, serializer="json",
            max_frame_size=max_frame_size,
        )  # fmt: skip
        self.wire: list[bytes] = []  # everything delivered, in order
        self.reply = b""  # what the receiving side queued in answer to the latest delivery

    def to_server(self, data: bytes) -> list[m.Message]:
        self.wire.append(data)
        out = self.server.receive_data(data)
        self.reply = self.server.data_to_send()
        return out

    def to_client(self, data: bytes) -> list[m.Message]:
        self.wire.append(data)
        out = self.client.receive_data(data)
        self.reply = self.client.data_to_send()
        return out

    def handshake(self) -> None:
        self.client.start()
        assert self.to_server(self.client.data_to_send()) == []  # Hello
        assert self.to_client(self.reply) == []  # Challenge
        assert self.to_server(self.reply) == []  # Auth
        assert self.to_client(self.reply) == []  # AuthOk
        assert self.reply == b""

    def loads_calls(self) -> int:
        return self.cser.loads_calls + self.sser.loads_calls


def authed(**kw: Any) -> Pair:
    pair = Pair(**kw)
    pair.handshake()
    assert pair.client.authenticated and pair.server.authenticated
    return pair


def job(i: int) -> m.JobSubmit:
    return m.JobSubmit(comp_id="comp", job_uid=i, args=json.dumps([i, "x" * i]).encode(), files=["f"])


def assert_failed(session: Session) -> None:
    assert session.failed and not session.authenticated
    for call in (
        lambda: session.receive_data(b""),
        lambda: session.send(m.Ping()),
        lambda: session.loads(b"1"),
        lambda: session.start(),
    ):
        with pytest.raises(ProtocolError):
            call()


# --------------------------------------------------------------------------- handshake
def test_handshake_authenticates_both_sides() -> None:
    pair = authed()
    assert (pair.client.peer_name, pair.client.peer_software) == ("node1", "sw/2")
    assert (pair.server.peer_name, pair.server.peer_software, pair.server.peer_role) == (
        "cli",
        "sw/1",
        "client",
    )
    assert not pair.client.failed and not pair.server.failed


def test_messages_flow_both_ways_and_payloads_load() -> None:
    pair = authed()
    frames = [pair.client.send(job(i)) for i in range(5)]
    assert pair.to_server(b"".join(frames)) == [job(i) for i in range(5)]
    assert pair.server.peer_serializer == "json"
    assert pair.server.loads(job(3).args) == [3, "xxx"]
    assert pair.sser.loads_calls == 1
    reply = m.JobResult(comp_id="comp", job_uid=1, status=0, result=b'"done"')
    err = m.Error(code="busy", message="later", req_id=4)
    assert pair.to_client(pair.server.send(reply) + pair.server.send(err)) == [reply, err]
    assert pair.client.loads(reply.result) == "done"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_session_stream_in_random_chunks(seed: int) -> None:
    rnd = random.Random(seed)
    pair = Pair(max_frame_size=2**20)
    pair.client.start()
    stream_c = pair.client.data_to_send()
    # handshake in random chunks too
    for chunk in _split(stream_c, rnd):
        assert pair.server.receive_data(chunk) == []
    for chunk in _split(pair.server.data_to_send(), rnd):
        assert pair.client.receive_data(chunk) == []
    for chunk in _split(pair.client.data_to_send(), rnd):
        assert pair.server.receive_data(chunk) == []
    auth_ok = pair.server.data_to_send()
    msgs = [job(i) for i in range(rnd.randrange(1, 6))]
    # AuthOk and the first application frames may arrive in the same chunk
    stream_s = auth_ok + b"".join(pair.server.send(msg) for msg in msgs)
    got: list[m.Message] = []
    for chunk in _split(stream_s, rnd):
        got += pair.client.receive_data(chunk)
    assert got == msgs and pair.client.authenticated


def _split(data: bytes, rnd: random.Random) -> list[bytes]:
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randrange(0, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_large_payload_after_handshake() -> None:
    pair = authed(max_frame_size=2 * 2**20)
    msg = m.JobResult(comp_id="c", job_uid=1, status=0, result=random.Random(0).randbytes(2**20))
    data = pair.server.send(msg)
    got: list[m.Message] = []
    for i in range(0, len(data), 65536):
        got += pair.client.receive_data(data[i : i + 65536])
    assert got == [msg]


@pytest.mark.parametrize("secret", ["", b""])
def test_empty_secret_works(secret: str | bytes) -> None:
    pair = authed(client_secret=secret)
    assert pair.to_server(pair.client.send(m.Ping(req_id=1))) == [m.Ping(req_id=1)]


def test_str_and_bytes_secret_are_the_same() -> None:
    authed(client_secret="pässwort", server_secret="pässwort".encode())


def test_wrong_secret_client_detects_wrong_server() -> None:
    pair = Pair("right", "wrong")
    pair.client.start()
    pair.to_server(pair.client.data_to_send())
    with pytest.raises(AuthenticationError):
        pair.client.receive_data(pair.reply)
    assert_failed(pair.client)
    # the client still tells the server why, and the server then fails with that reason
    refusal = pair.client.data_to_send()
    assert decode_body(*_only_frame(refusal)) == m.Error(code="auth", message="authentication failed")
    with pytest.raises(AuthenticationError, match="authentication failed"):
        pair.server.receive_data(refusal)
    assert_failed(pair.server)
    assert pair.loads_calls() == 0


def _only_frame(data: bytes) -> tuple[int, bytes]:
    (frame,) = FrameDecoder(2**20).feed(data)
    return frame.msg_type, frame.body


def _forged_client(pair: Pair, secret: bytes) -> bytes:
    """Play a client with ``secret`` up to its Auth, not checking the server's proof."""
    nc = b"n" * 32
    pair.to_server(encode_frame(m.Hello(nonce=nc, name="evil"), seq=0, serializer="", mac_key=None))
    msg_type, body = _only_frame(pair.reply)
    challenge = decode_body(msg_type, body)
    assert isinstance(challenge, m.Challenge)
    key = hashlib.sha256(b"dispy-secret" + secret).digest()
    proof = hmac.new(key, b"dispy-client" + nc + challenge.nonce, hashlib.sha256).digest()
    return encode_frame(m.Auth(proof=proof), seq=0, serializer="", mac_key=None)


def test_wrong_secret_server_detects_wrong_client() -> None:
    pair = Pair("right")
    auth = _forged_client(pair, b"wrong")
    with pytest.raises(AuthenticationError):
        pair.server.receive_data(auth)
    assert_failed(pair.server)
    refusal = pair.server.data_to_send()
    assert decode_body(*_only_frame(refusal)) == m.Error(code="auth", message="authentication failed")
    # a real client gets that clear reason
    client = Session(initiator=True, secret="x")
    client.start()
    with pytest.raises(AuthenticationError, match="authentication failed"):
        client.receive_data(refusal)


def test_forged_client_with_right_secret_passes() -> None:
    pair = Pair("right")
    auth = _forged_client(pair, b"right")
    pair.server.receive_data(auth)
    assert pair.server.authenticated and pair.server.peer_name == "evil"


def test_secret_never_travels_and_proofs_differ_per_handshake() -> None:
    secret = "a-very-distinctive-secret-0123456789"
    proofs = []
    for _ in range(2):
        pair = authed(client_secret=secret)
        pair.to_server(pair.client.send(job(1)))
        pair.to_client(pair.server.send(job(2)))
        wire = b"".join(pair.wire) + pair.reply
        for needle in (secret.encode(), hashlib.sha256(b"dispy-secret" + secret.encode()).digest()):
            assert needle not in wire
        challenge = decode_body(*_only_frame(pair.wire[1]))
        auth = decode_body(*_only_frame(pair.wire[2]))
        assert isinstance(challenge, m.Challenge) and isinstance(auth, m.Auth)
        proofs.append((challenge.nonce, challenge.proof, auth.proof))
    assert all(a != b for a, b in zip(proofs[0], proofs[1], strict=True))


def test_replayed_handshake_is_useless() -> None:
    """A recorded Auth does not authenticate against a new server challenge."""
    old = authed()
    new = Pair()
    new.to_server(old.wire[0])  # replay the recorded Hello
    with pytest.raises(AuthenticationError):
        new.server.receive_data(old.wire[2])  # and the recorded Auth (wire: Hello, Challenge, Auth, AuthOk)


# --------------------------------------------------------------------------- handshake refusals
def _hello(**kw: Any) -> bytes:
    return encode_frame(m.Hello(**{"nonce": b"n" * 32, **kw}), seq=0, serializer="", mac_key=None)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(_hello(nonce=b"short"), id="short-nonce"),
        pytest.param(_hello(nonce=b"n" * 33), id="long-nonce"),
        pytest.param(_hello(versions=[99]), id="unsupported-version"),
        pytest.param(_hello(versions=[]), id="no-version"),
        pytest.param(encode_frame(job(1), seq=0, serializer="json", mac_key=None), id="app-before-hello"),
        pytest.param(
            encode_frame(job(1), seq=0, serializer="json", mac_key=b"k" * 32), id="macd-app-before-hello"
        ),
        pytest.param(
            encode_frame(m.Auth(proof=b"p" * 32), seq=0, serializer="", mac_key=None), id="auth-first"
        ),
        pytest.param(encode_frame(m.Ping(), seq=0, serializer="", mac_key=None), id="ping-first"),
        pytest.param(
            encode_frame(m.Hello(nonce=b"n" * 32), seq=0, serializer="", mac_key=b"k"), id="macd-hello"
        ),
        pytest.param(_hello()[:HEADER_SIZE] + b"garbage", id="garbage-body"),
    ],
)
def test_server_refuses_bad_openings(first: bytes) -> None:
    server = Session(initiator=False, secret="s", serializers={"json": RecordingSerializer()})
    with pytest.raises(ProtocolError):
        server.receive_data(first + b"\x00" * 300)
    assert_failed(server)


def test_unsupported_version_tells_the_peer() -> None:
    server = Session(initiator=False, secret="s")
    with pytest.raises(ProtocolError):
        server.receive_data(_hello(versions=[7, 8]))
    err = decode_body(*_only_frame(server.data_to_send()))
    assert isinstance(err, m.Error) and err.code == "version"
    client = Session(initiator=True, secret="s")
    client.start()
    with pytest.raises(ProtocolError, match="version"):
        client.receive_data(encode_frame(err, seq=0, serializer="", mac_key=None))


def test_oversized_handshake_frame_is_refused_early() -> None:
    server = Session(initiator=False, secret="s")
    big = _hello(name="x" * 100_000)
    with pytest.raises(FrameTooLarge):
        server.receive_data(big[: HEADER_SIZE + 10])


def test_server_refuses_reflected_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod.secrets, "token_bytes", lambda n: b"n" * n)
    server = Session(initiator=False, secret="s")
    with pytest.raises(ProtocolError):
        server.receive_data(_hello(nonce=b"n" * 32))
    assert_failed(server)


def _client_after_hello() -> tuple[Session, bytes]:
    client = Session(initiator=True, secret="s", serializers={"json": RecordingSerializer()})
    client.start()
    hello = decode_body(*_only_frame(client.data_to_send()))
    assert isinstance(hello, m.Hello)
    return client, hello.nonce


def test_client_refuses_reflected_nonce_and_bad_challenges() -> None:
    client, nc = _client_after_hello()
    key = hashlib.sha256(b"dispy-secret" + b"s").digest()
    proof = hmac.new(key, b"dispy-server" + nc + nc, hashlib.sha256).digest()  # valid proof, reflected nonce
    reflected = encode_frame(m.Challenge(nonce=nc, proof=proof), seq=0, serializer="", mac_key=None)
    with pytest.raises(AuthenticationError, match="reflected"):
        client.receive_data(reflected)
    assert_failed(client)
    for challenge in (
        m.Challenge(nonce=b"x" * 31, proof=b"p" * 32),
        m.Challenge(nonce=b"x" * 32, proof=b"p" * 32, version=9),
    ):
        client, nc = _client_after_hello()
        with pytest.raises(ProtocolError):
            client.receive_data(encode_frame(challenge, seq=0, serializer="", mac_key=None))
        assert_failed(client)


def test_client_refuses_anything_but_a_challenge_after_hello() -> None:
    for frame in (
        encode_frame(m.AuthOk(), seq=0, serializer="", mac_key=b"k"),
        encode_frame(job(1), seq=0, serializer="json", mac_key=None),
        encode_frame(m.Hello(nonce=b"n" * 32), seq=0, serializer="", mac_key=None),
    ):
        client, _ = _client_after_hello()
        with pytest.raises(ProtocolError):
            client.receive_data(frame)
        assert_failed(client)
    idle = Session(initiator=True, secret="s")
    with pytest.raises(ProtocolError):
        idle.receive_data(
            encode_frame(m.Challenge(nonce=b"x" * 32, proof=b""), seq=0, serializer="", mac_key=None)
        )


def test_start_is_for_the_initiator_once() -> None:
    with pytest.raises(ProtocolError):
        Session(initiator=False, secret="s").start()
    client = Session(initiator=True, secret="s")
    client.start()
    with pytest.raises(ProtocolError):
        client.start()


def test_nothing_before_authentication() -> None:
    pair = Pair()
    with pytest.raises(ProtocolError):
        pair.client.send(m.Ping())
    with pytest.raises(ProtocolError):
        pair.server.loads(b"1")
    pair.client.start()
    pair.to_server(pair.client.data_to_send())
    pair.to_client(pair.reply)  # client has sent Auth, awaits AuthOk
    assert not pair.client.authenticated
    with pytest.raises(ProtocolError):
        pair.client.send(m.Ping())
    # an application frame (even a well-MAC'd one) where the server expects Auth
    with pytest.raises(ProtocolError):
        pair.server.receive_data(
            encode_frame(job(1), seq=0, serializer="json", mac_key=pair.client._send_key)
        )
    assert_failed(pair.server)
    assert pair.loads_calls() == 0


def test_client_refuses_app_frame_instead_of_auth_ok() -> None:
    pair = Pair()
    pair.client.start()
    pair.to_server(pair.client.data_to_send())
    pair.to_client(pair.reply)
    pair.to_server(pair.reply)
    assert pair.server.authenticated
    pair.server.data_to_send()
    with pytest.raises(ProtocolError):  # AuthOk dropped: the first frame has seq 1 and is not AuthOk
        pair.client.receive_data(pair.server.send(job(1)))
    assert_failed(pair.client)


def test_handshake_messages_cannot_be_sent_or_received_after_auth() -> None:
    pair = authed()
    with pytest.raises(ProtocolError):
        pair.client.send(m.Hello(nonce=b"n" * 32))
    forged = encode_frame(m.AuthOk(), seq=0, serializer="", mac_key=pair.client._send_key)
    with pytest.raises(ProtocolError):
        pair.server.receive_data(forged)


# --------------------------------------------------------------------------- integrity after auth
def _two_more_frames(pair: Pair) -> bytes:
    return pair.client.send(job(50)) + pair.client.send(job(2000))


@pytest.mark.parametrize("xor", [0x01, 0x80, 0xFF])
def test_any_flipped_byte_is_refused(xor: int) -> None:
    template = authed()
    frame_len = len(template.client.send(job(7)))
    for i in range(frame_len):
        pair = authed(max_frame_size=1024)
        frame = bytearray(pair.client.send(job(7)))
        frame[i] ^= xor
        with pytest.raises(ProtocolError):
            # a changed length makes the frame swallow or lose bytes: what follows then fails
            pair.server.receive_data(bytes(frame) + _two_more_frames(pair))
        assert_failed(pair.server)
        assert pair.loads_calls() == 0


@pytest.mark.parametrize("where", ["header", "body", "mac"])
def test_corruption_raises_integrity_error(where: str) -> None:
    pair = authed()
    frame = bytearray(pair.client.send(job(7)))
    index = {"header": 10, "body": len(frame) - 40, "mac": len(frame) - 1}[where]  # seq byte, blob, mac
    frame[index] ^= 0x01
    with pytest.raises(IntegrityError):
        pair.server.receive_data(bytes(frame))
    assert pair.loads_calls() == 0


def test_replayed_frame_is_refused() -> None:
    pair = authed()
    frame = pair.client.send(job(1))
    assert pair.to_server(frame) == [job(1)]
    with pytest.raises(IntegrityError):
        pair.server.receive_data(frame)
    assert_failed(pair.server)


def test_reordered_frames_are_refused() -> None:
    pair = authed()
    first, second = pair.client.send(job(1)), pair.client.send(job(2))
    with pytest.raises(IntegrityError):
        pair.server.receive_data(second + first)
    assert pair.loads_calls() == 0


def test_dropped_frame_is_refused() -> None:
    pair = authed()
    pair.client.send(job(1))
    with pytest.raises(IntegrityError):
        pair.server.receive_data(pair.client.send(job(2)))


def test_frame_without_mac_is_refused() -> None:
    pair = authed()
    with pytest.raises(IntegrityError):
        pair.server.receive_data(encode_frame(job(1), seq=0, serializer="json", mac_key=None))


def test_frames_for_the_other_direction_are_refused() -> None:
    """A frame the server sent cannot be reflected back to it (keys differ per direction)."""
    pair = authed()
    with pytest.raises(IntegrityError):
        pair.server.receive_data(pair.server.send(m.Ping()))


def test_frames_from_another_session_are_refused() -> None:
    one, two = authed(), authed()
    with pytest.raises(IntegrityError):
        two.server.receive_data(one.client.send(job(1)))


def test_serializer_not_in_accept_list_is_refused() -> None:
    pair = authed(client_ser="pickle", server_accepts=("json",))
    with pytest.raises(ProtocolError):
        pair.server.receive_data(pair.client.send(job(1)))
    assert_failed(pair.server)
    assert pair.loads_calls() == 0


def test_serializer_list_and_none_accept_names_but_cannot_load() -> None:
    for accepts, ok in ((["json"], True), (None, False)):
        client = Session(initiator=True, secret="s", serializer="json")
        server = Session(initiator=False, secret="s", serializers=accepts)
        client.start()
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        if ok:
            assert server.receive_data(client.send(job(1))) == [job(1)]
            with pytest.raises(ProtocolError):
                server.loads(job(1).args)
        else:
            with pytest.raises(ProtocolError):
                server.receive_data(client.send(job(1)))


def test_empty_serializer_name_is_accepted_but_cannot_load() -> None:
    pair = authed(client_ser="")
    assert pair.to_server(pair.client.send(job(1))) == [job(1)]
    with pytest.raises(ProtocolError):
        pair.server.loads(job(1).args)
    assert pair.server.loads(b"[1]", serializer="json") == [1]


def test_loads_failure_is_a_serialization_error_not_a_session_failure() -> None:
    pair = authed()
    pair.to_server(pair.client.send(job(1)))
    with pytest.raises(SerializationError):
        pair.server.loads(b"{not json")
    assert pair.server.authenticated
    assert pair.to_server(pair.client.send(job(2))) == [job(2)]


def test_oversized_frame_after_auth() -> None:
    pair = authed(max_frame_size=1000)
    big = pair.client.send(m.JobSubmit(comp_id="c", job_uid=1, args=b"x" * 2000))
    with pytest.raises(FrameTooLarge):
        pair.server.receive_data(big[:HEADER_SIZE])
    assert_failed(pair.server)


def test_send_does_not_fail_the_session_on_unencodable_message() -> None:
    pair = authed()
    with pytest.raises(TypeError):
        pair.client.send(m.JobSubmit(comp_id="c", job_uid=1, args="str"))  # type: ignore[arg-type]
    assert pair.to_server(pair.client.send(job(1))) == [job(1)]


# --------------------------------------------------------------------------- large frames: Poly1305
def big_job(i: int, size: int = 300_000) -> m.JobSubmit:
    return m.JobSubmit(comp_id="comp", job_uid=i, args=random.Random(i).randbytes(size), files=[])


def test_large_frames_carry_a_poly1305_tag_and_round_trip() -> None:
    pair = authed(max_frame_size=2**20)
    parts = pair.client.send_parts(big_job(1))
    assert len(parts) > 1  # the payload is its own buffer, not copied into a frame
    frame = b"".join(parts)
    flags = frame[5]
    assert flags == FLAG_MAC | FLAG_POLY1305
    assert len(parts[-1]) == POLY1305_TAG_SIZE
    assert pair.to_server(frame) == [big_job(1)]
    small = pair.client.send(job(2))
    assert small[5] == FLAG_MAC  # small frames keep HMAC-SHA256
    assert pair.to_server(small) == [job(2)]
    assert pair.to_server(pair.client.send(big_job(3))) == [big_job(3)]  # a fresh one-time key each


@pytest.mark.parametrize("where", ["header", "body", "tag"])
def test_large_frame_corruption_is_refused(where: str) -> None:
    pair = authed(max_frame_size=2**20)
    frame = bytearray(pair.client.send(big_job(1)))
    index = {"header": 10, "body": len(frame) // 2, "tag": len(frame) - 1}[where]
    frame[index] ^= 0x01
    with pytest.raises(IntegrityError):
        pair.server.receive_data(bytes(frame))
    assert_failed(pair.server)
    assert pair.loads_calls() == 0


def test_large_frame_replayed_or_reordered_is_refused() -> None:
    pair = authed(max_frame_size=2**20)
    first, second = pair.client.send(big_job(1)), pair.client.send(big_job(2))
    assert pair.to_server(first) == [big_job(1)]
    with pytest.raises(IntegrityError):
        pair.server.receive_data(first)  # its tag verifies under its own seq's key, but the seq is old
    other = authed(max_frame_size=2**20)
    a, b = other.client.send(big_job(1)), other.client.send(big_job(2))
    with pytest.raises(IntegrityError):
        other.server.receive_data(b + a)
    assert second and other.loads_calls() == 0


def test_poly1305_flag_on_a_small_frame_or_without_mac_is_refused() -> None:
    pair = authed()
    frame = bytearray(pair.client.send(job(1)))
    frame[5] |= FLAG_POLY1305  # claim the one-time MAC on a small frame: refused, never verified as such
    with pytest.raises(ProtocolError):
        pair.server.receive_data(bytes(frame))
    pair = authed()
    frame = bytearray(encode_frame(job(1), seq=0, serializer="json", mac_key=None))
    frame[5] = FLAG_POLY1305
    with pytest.raises(ProtocolError, match="no MAC"):
        pair.server.receive_data(bytes(frame))
    assert pair.loads_calls() == 0


def test_a_session_that_refuses_its_peer_can_still_say_why_and_the_peer_reads_it() -> None:
    """A replayed frame fails the server's session; its farewell (unMAC'd, so it works after the failure)
    reaches the client as the reason, not as a mere "closed by peer"."""
    from dispy_core.errors import PeerClosedError

    pair = authed()
    frame = pair.client.send(job(1))
    pair.to_server(frame)
    with pytest.raises(IntegrityError) as refused:
        pair.server.receive_data(frame)
    farewell = pair.server.farewell(f"protocol error: {refused.value}")
    with pytest.raises(PeerClosedError, match=r"the peer closed the connection: protocol error: frame sequence"):
        pair.client.receive_data(farewell)
    assert pair.loads_calls() == 0  # nothing is loaded on either side (the node never loads job arguments)


def test_a_large_message_travels_in_fragments_no_frame_above_the_fragment_size() -> None:
    from dispy_core.protocol.session import FRAGMENT_SIZE

    pair = authed(max_frame_size=FRAGMENT_SIZE + 65536)
    big = m.JobSubmit(comp_id="comp", job_uid=7, args=bytes(range(256)) * (FRAGMENT_SIZE // 256 * 3 + 17))
    data = pair.client.send(big)
    sizes = []
    decoder = FrameDecoder(FRAGMENT_SIZE + 65536)  # a frame above the fragment size would be refused here
    decoder.push(data)
    while (frame := decoder.next_frame()) is not None:
        sizes.append(len(frame.body))
    assert len(sizes) == 4 and max(sizes) <= FRAGMENT_SIZE + 256
    got = []
    for start in range(0, len(data), 1 << 20):  # in pieces, as a socket delivers it
        got += pair.server.receive_data(data[start:start + (1 << 20)])
    assert got == [big]


def test_a_message_above_max_payload_is_refused_by_the_sender_and_by_the_receiver() -> None:
    from dispy_core.errors import PayloadTooLarge
    from dispy_core.protocol.session import FRAGMENT_SIZE

    pair = authed(max_frame_size=FRAGMENT_SIZE + 65536)
    pair.client.max_payload = 1000
    with pytest.raises(PayloadTooLarge, match="above the 1000 bytes"):
        pair.client.send(m.JobSubmit(comp_id="c", job_uid=1, args=b"x" * 2000))
    assert pair.client.authenticated  # refusing to send does not break the session
    assert pair.to_server(pair.client.send(m.JobSubmit(comp_id="c", job_uid=2, args=b"x" * 10)))
    pair.client.max_payload = 1 << 30
    pair.server.max_payload = 9 << 20
    with pytest.raises(PayloadTooLarge, match="at most"):
        pair.server.receive_data(pair.client.send(m.JobSubmit(comp_id="c", job_uid=3, args=b"x" * (10 << 20))))
