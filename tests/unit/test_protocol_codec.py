"""Frames and bodies: every message round-trips, any chunking decodes alike, bad input is refused."""

from __future__ import annotations

import json
import random
import struct
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispy_core.errors import FrameTooLarge, ProtocolError
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import (
    FLAG_MAC,
    HEADER,
    HEADER_SIZE,
    MAC_SIZE,
    MAGIC,
    Frame,
    FrameDecoder,
    compute_mac,
    decode_body,
    encode_body,
    encode_frame,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- strategies from field_kinds
_json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text()
)
_ints = st.integers(min_value=-(2**63), max_value=2**64)


def _field_strategy(hint: Any) -> st.SearchStrategy[Any]:
    if hint is bytes:
        return st.binary(max_size=300)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return _ints
    if hint is float:
        return st.floats(allow_nan=False)
    if hint is str:
        return st.text(max_size=50)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args == (str,):
        return st.lists(st.text(max_size=10), max_size=5)
    if origin is list and args == (int,):
        return st.lists(_ints, max_size=5)
    if origin is dict and args[:1] == (str,):
        return st.dictionaries(st.text(max_size=10), _json_scalars, max_size=5)
    raise AssertionError(f"no strategy for field type {hint!r}: extend the tests with the new kind")


def message_strategy(cls: type[m.Message]) -> st.SearchStrategy[m.Message]:
    return st.builds(cls, **{name: _field_strategy(hint) for name, hint in m.field_kinds(cls)})


ROUNDTRIP_CODES = sorted(m.MESSAGE_TYPES)
any_message = st.sampled_from(ROUNDTRIP_CODES).flatmap(lambda code: message_strategy(m.MESSAGE_TYPES[code]))

# the codes are part of the protocol: they may be added to, never changed
PINNED = {
    1: "Hello", 2: "Challenge", 3: "Auth", 4: "AuthOk", 5: "Error", 6: "Ping", 7: "Pong",
    10: "NodeInfoRequest", 11: "NodeInfo", 12: "Pulse",
    20: "ComputationOpen", 21: "ComputationReady", 22: "ComputationClose", 23: "ComputationClosed",
    25: "NodeCpusRequest", 26: "NodeCpusSet",
    30: "JobSubmit", 31: "JobStarted", 32: "JobResult", 33: "JobProvisional", 34: "JobCancel",
    35: "JobRefused", 36: "ResultsAck", 37: "JobsRecover", 38: "JobsRecovered", 39: "JobLost", 8: "Fragment",
    40: "FileChunk", 41: "FileAck", 42: "JobFile",
    50: "AdminInfoRequest", 51: "AdminInfo", 52: "AdminSetCpus", 53: "AdminSetService", 54: "AdminServe",
    55: "AdminShutdown",
}  # fmt: skip


def test_every_message_type_is_tested_and_codes_are_pinned() -> None:
    assert set(ROUNDTRIP_CODES) == set(m.MESSAGE_TYPES)
    for code, cls in m.MESSAGE_TYPES.items():
        assert cls.CODE == code
        message_strategy(cls)  # raises for a field kind the strategies (and the codec) do not know
    for code, name in PINNED.items():
        assert m.MESSAGE_TYPES[code].__name__ == name


# --------------------------------------------------------------------------- bodies
@pytest.mark.parametrize("code", ROUNDTRIP_CODES)
@SETTINGS
@given(data=st.data())
def test_body_roundtrip(code: int, data: st.DataObject) -> None:
    msg = data.draw(message_strategy(m.MESSAGE_TYPES[code]))
    body = encode_body(msg)
    assert decode_body(code, body) == msg
    assert decode_body(code, memoryview(body)) == msg


@SETTINGS
@given(
    msg=any_message,
    mac=st.booleans(),
    seq=st.integers(0, 2**64 - 1),
    ser=st.sampled_from(["", "pickle", "x.y_z-1"]),
)
def test_frame_roundtrip(msg: m.Message, mac: bool, seq: int, ser: str) -> None:
    key = b"k" * 32 if mac else None
    data = encode_frame(msg, seq=seq, serializer=ser, mac_key=key)
    (frame,) = FrameDecoder(2**20).feed(data)
    assert (frame.msg_type, frame.seq, frame.serializer, frame.has_mac) == (msg.CODE, seq, ser, mac)
    assert frame.header == data[: HEADER_SIZE + len(ser)]
    assert frame.body == encode_body(msg)
    assert decode_body(frame.msg_type, frame.body) == msg
    if mac:
        assert frame.flags == FLAG_MAC and len(frame.mac) == MAC_SIZE
        assert frame.mac == compute_mac(b"k" * 32, [frame.header, frame.body])
        assert frame.mac_valid(b"k" * 32) and not frame.mac_valid(b"j" * 32)
    else:
        assert frame.flags == 0 and frame.mac == b"" and not frame.mac_valid(b"k" * 32)


def test_blobs_travel_raw_outside_json() -> None:
    msg = m.JobSubmit(comp_id="c", job_uid=7, args=b"\x00\xffraw", files=["a"])
    body = encode_body(msg)
    (json_len,) = struct.unpack_from("!I", body)
    assert json.loads(body[4 : 4 + json_len]) == {"comp_id": "c", "job_uid": 7, "files": ["a"]}
    assert body[4 + json_len :] == struct.pack("!I", 5) + b"\x00\xffraw"


def _body(obj: Any, *blobs: bytes, raw_json: bytes | None = None) -> bytes:
    js = json.dumps(obj).encode() if raw_json is None else raw_json
    return struct.pack("!I", len(js)) + js + b"".join(struct.pack("!I", len(b)) + b for b in blobs)


GOOD_NODEINFO = {"req_id": 1, "name": "n", "ip_addr": "1.2.3.4", "cpus": 2, "avail_cpus": 1}


@pytest.mark.parametrize(
    "code, body",
    [
        pytest.param(9999, _body({}), id="unknown-type"),
        pytest.param(m.Ping.CODE, b"", id="empty-body"),
        pytest.param(m.Ping.CODE, b"\x00\x00", id="short-body"),
        pytest.param(m.Ping.CODE, _body([1, 2]), id="json-array"),
        pytest.param(m.Ping.CODE, _body(None), id="json-null"),
        pytest.param(m.Ping.CODE, _body(None, raw_json=b"{not json"), id="bad-json"),
        pytest.param(m.Ping.CODE, _body(None, raw_json=b'{"req_id": "\xff"}'), id="bad-utf8"),
        pytest.param(m.Ping.CODE, _body(None, raw_json=b"[" * 100000 + b"]" * 100000), id="deep-nesting"),
        pytest.param(m.Ping.CODE, struct.pack("!I", 50) + b"{}", id="json-overrun"),
        pytest.param(m.Error.CODE, _body({"code": "x"}), id="missing-required"),
        pytest.param(m.Ping.CODE, _body({"req_id": True}), id="bool-for-int"),
        pytest.param(m.Ping.CODE, _body({"req_id": "1"}), id="str-for-int"),
        pytest.param(m.Ping.CODE, _body({"req_id": 1.0}), id="float-for-int"),
        pytest.param(m.Ping.CODE, _body({"req_id": None}), id="null-for-int"),
        pytest.param(m.Error.CODE, _body({"code": 1, "message": "m"}), id="int-for-str"),
        pytest.param(m.Error.CODE, _body({"code": ["x"], "message": "m"}), id="list-for-str"),
        pytest.param(
            m.ComputationClose.CODE, _body({"req_id": 1, "comp_id": "c", "terminate": 1}), id="int-for-bool"
        ),
        pytest.param(
            m.JobStarted.CODE, _body({"comp_id": "c", "job_uid": 1, "start_time": "0"}), id="str-for-float"
        ),
        pytest.param(
            m.JobStarted.CODE, _body({"comp_id": "c", "job_uid": 1, "start_time": False}), id="bool-for-float"
        ),
        pytest.param(m.NodeInfo.CODE, _body({**GOOD_NODEINFO, "serializers": "pickle"}), id="str-for-list"),
        pytest.param(m.NodeInfo.CODE, _body({**GOOD_NODEINFO, "serializers": [1]}), id="bad-list-item"),
        pytest.param(m.Hello.CODE, _body({"versions": [True]}, b"n"), id="bool-in-int-list"),
        pytest.param(m.NodeInfo.CODE, _body({**GOOD_NODEINFO, "avail_info": []}), id="list-for-dict"),
        pytest.param(m.Hello.CODE, _body({}), id="missing-blob"),
        pytest.param(m.Hello.CODE, _body({}) + struct.pack("!I", 10) + b"short", id="blob-overrun"),
        pytest.param(m.Hello.CODE, _body({}) + b"\x00\x00", id="blob-length-cut"),
        pytest.param(m.Hello.CODE, _body({}, b"n") + b"x", id="trailing-after-blob"),
        pytest.param(m.Ping.CODE, _body({}) + b"x", id="trailing-after-json"),
    ],
)
def test_bad_bodies_are_refused(code: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_body(code, body)


def test_body_validation_accepts_int_for_float_and_defaults_missing_optionals() -> None:
    started = decode_body(m.JobStarted.CODE, _body({"comp_id": "c", "job_uid": 1, "start_time": 5}))
    assert started == m.JobStarted(comp_id="c", job_uid=1, start_time=5.0)
    assert type(started.start_time) is float  # type: ignore[attr-defined]
    assert decode_body(m.Hello.CODE, _body({"extra": 1}, b"n")) == m.Hello(nonce=b"n")


@SETTINGS
@given(msg=any_message, cut=st.integers(min_value=1))
def test_truncated_bodies_are_refused(msg: m.Message, cut: int) -> None:
    body = encode_body(msg)
    with pytest.raises(ProtocolError):
        decode_body(msg.CODE, body[: len(body) - 1 - cut % len(body)])


def test_encode_refuses_what_cannot_travel() -> None:
    with pytest.raises(TypeError):
        encode_body(m.JobSubmit(comp_id="c", job_uid=1, args="not bytes"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_frame(m.Ping(), seq=0, serializer="Bad Name", mac_key=None)
    with pytest.raises(TypeError):
        encode_body(m.Message())


# --------------------------------------------------------------------------- streams
def _stream(msgs: list[m.Message]) -> bytes:
    return b"".join(
        encode_frame(msg, seq=i, serializer="pickle", mac_key=b"key" if i % 2 else None)
        for i, msg in enumerate(msgs)
    )


def _feed_chunks(data: bytes, cuts: list[int], decoder: FrameDecoder | None = None) -> list[Frame]:
    decoder = decoder or FrameDecoder(2**20)
    frames: list[Frame] = []
    prev = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        frames += decoder.feed(data[prev:cut])
        prev = cut
    assert decoder.buffered == 0
    return frames


@SETTINGS
@given(msgs=st.lists(any_message, min_size=1, max_size=6), data=st.data())
def test_any_chunking_gives_the_same_frames(msgs: list[m.Message], data: st.DataObject) -> None:
    stream = _stream(msgs)
    whole = FrameDecoder(2**20).feed(stream)
    assert [decode_body(f.msg_type, f.body) for f in whole] == msgs
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert _feed_chunks(stream, cuts) == whole
    # memoryview and bytearray input too
    decoder = FrameDecoder(2**20)
    assert decoder.feed(memoryview(stream)[:10]) + decoder.feed(bytearray(stream[10:])) == whole


def test_byte_by_byte_and_partial_data_stays_buffered() -> None:
    msgs: list[m.Message] = [
        m.Ping(req_id=1),
        m.JobSubmit(comp_id="c", job_uid=2, args=b"x" * 1000),
        m.Pong(),
    ]
    stream = _stream(msgs)
    whole = FrameDecoder(2**20).feed(stream)
    assert _feed_chunks(stream, list(range(len(stream)))) == whole
    decoder = FrameDecoder(2**20)
    first_len = len(encode_frame(msgs[0], seq=0, serializer="pickle", mac_key=None))
    assert decoder.feed(stream[: first_len - 1]) == []
    assert decoder.buffered == first_len - 1
    assert decoder.feed(stream[first_len - 1 : first_len + 5]) == whole[:1]
    assert decoder.buffered == 5
    assert decoder.feed(stream[first_len + 5 :]) == whole[1:]


def test_large_payload_in_transport_sized_chunks() -> None:
    blob = random.Random(1).randbytes(3 * 2**20 + 17)
    msg = m.JobResult(comp_id="c", job_uid=1, status=0, result=blob, stdout=b"out")
    stream = encode_frame(msg, seq=3, serializer="pickle", mac_key=b"k") * 2
    decoder = FrameDecoder(4 * 2**20)
    frames: list[Frame] = []
    for i in range(0, len(stream), 262144):
        frames += decoder.feed(stream[i : i + 262144])
    assert len(frames) == 2 and frames[0] == frames[1]
    assert frames[0].mac_valid(b"k")
    assert decode_body(frames[0].msg_type, frames[0].body) == msg


def _header(**kw: Any) -> bytes:
    fields = {
        "magic": MAGIC,
        "version": 1,
        "flags": 0,
        "msg_type": m.Ping.CODE,
        "seq": 0,
        "body_len": 6,
        "ser_len": 0,
    }
    fields.update(kw)
    return HEADER.pack(*fields.values())


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(_header(magic=b"DSPX"), id="magic"),
        pytest.param(_header(version=2), id="version"),
        pytest.param(_header(flags=0x02), id="flags"),
        pytest.param(_header(msg_type=999), id="msg-type"),
        pytest.param(_header(ser_len=3) + b"Pic", id="serializer-upper"),
        pytest.param(_header(ser_len=2) + "é".encode(), id="serializer-non-ascii"),
        pytest.param(_header(ser_len=1) + b" ", id="serializer-space"),
    ],
)
def test_bad_headers_are_refused_before_the_body(header: bytes) -> None:
    decoder = FrameDecoder(2**20)
    with pytest.raises(ProtocolError):
        decoder.feed(header)
    with pytest.raises(ProtocolError):  # poisoned
        decoder.feed(b"")
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_garbage_is_refused_at_the_first_byte() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(100).feed(b"G")
    with pytest.raises(ProtocolError):
        FrameDecoder(100).feed(b"DSPX")


def test_oversized_frame_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame_size=1000)
    assert decoder.feed(_header(body_len=1000)[:-1]) == []  # exactly at the limit is fine
    decoder = FrameDecoder(max_frame_size=1000)
    header = _header(body_len=1001)
    assert decoder.feed(header[:-1]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(header[-1:])  # no body byte was sent
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00" * 1001)
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_size=2**20).feed(_header(body_len=2**32 - 1))


def test_frames_after_a_good_one_in_the_same_chunk_still_checked() -> None:
    good = encode_frame(m.Ping(), seq=0, serializer="", mac_key=None)
    decoder = FrameDecoder(100)
    with pytest.raises(ProtocolError):
        decoder.feed(good + b"XXXX" + good)


def test_decode_body_is_the_only_parse_and_it_never_unpickles() -> None:
    import pickle

    evil = pickle.dumps(object())
    body = _body({"comp_id": "c", "job_uid": 1}, evil)
    msg = decode_body(m.JobSubmit.CODE, body)
    assert msg == m.JobSubmit(comp_id="c", job_uid=1, args=evil)  # opaque bytes, untouched


_BIG_STREAM_MSGS: list[m.Message] = [
    m.Ping(req_id=1),
    m.JobResult(comp_id="c", job_uid=1, status=0, result=random.Random(2).randbytes(150_000), stderr=b"e"),
    m.Pong(req_id=2),
    m.FileChunk(req_id=3, comp_id="c", relpath="a/b", size=70_000, offset=0, data=b"d" * 70_000),
    m.JobFile(comp_id="c", job_uid=4, relpath="x", data=b"tail"),
]


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_large_frames_in_random_chunks(data: st.DataObject) -> None:
    stream = _stream(_BIG_STREAM_MSGS)
    whole = FrameDecoder(2**20).feed(stream)
    assert [decode_body(f.msg_type, f.body) for f in whole] == _BIG_STREAM_MSGS
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    # and a run of tiny reads somewhere (coalesced, never quadratic)
    start = data.draw(st.integers(0, len(stream) - 1))
    cuts += list(range(start, min(start + 2000, len(stream)), data.draw(st.integers(1, 7))))
    assert _feed_chunks(stream, cuts) == whole


def test_large_frame_byte_by_byte() -> None:
    msg = m.JobProvisional(comp_id="c", job_uid=1, result=bytes(range(256)) * 300)
    stream = encode_frame(msg, seq=1, serializer="pickle", mac_key=b"k") + encode_frame(
        m.Ping(), seq=2, serializer="pickle", mac_key=b"k"
    )
    decoder = FrameDecoder(2**20)
    frames: list[Frame] = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i : i + 1])
    assert frames == FrameDecoder(2**20).feed(stream) and len(frames) == 2
    assert decoder.buffered == 0


@pytest.mark.parametrize("size", [0, 10, 65535, 65536, 300_000])
def test_decode_body_views_large_blobs_only_of_immutable_bodies(size: int) -> None:
    msg = m.JobSubmit(comp_id="c", job_uid=3, args=bytes(range(256)) * (size // 256) + b"x" * (size % 256),
                      files=["a"])
    body = encode_body(msg)
    viewed = decode_body(m.JobSubmit.CODE, body, views=True)
    assert viewed == msg or bytes(viewed.args) == msg.args  # a memoryview compares equal to its bytes
    assert bytes(viewed.args) == msg.args and viewed.files == ["a"]
    if size >= 65536:
        assert isinstance(viewed.args, memoryview) and viewed.args.readonly
    else:
        assert type(viewed.args) is bytes
    copied = decode_body(m.JobSubmit.CODE, bytearray(body), views=True)  # a mutable body: always copies
    assert type(copied.args) is bytes and copied == msg
    assert type(decode_body(m.JobSubmit.CODE, body).args) is bytes  # the default: copies
