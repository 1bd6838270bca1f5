"""Frames and message bodies of the wire protocol, sans-I/O.

A frame (all integers big-endian)::

    header   "!4sBBHQIB": magic b"DSPY" | version | flags | msg_type | seq | body_len | ser_len
    ser_len  bytes: the name of the serializer the sender uses for its blobs (ASCII [a-z0-9_.-])
    body_len bytes: the message body
    the MAC over header + name + body, when ``flags & FLAG_MAC``: 32 bytes of HMAC-SHA256 under the
             session key; or, when ``flags & FLAG_POLY1305`` too (bodies above ``POLY1305_MIN_BODY``),
             a 16-byte Poly1305 tag under a one-time key derived from the session key and ``seq``
             (HMAC-SHA256(key, "dispy-poly1305" | seq)): four times faster on megabyte payloads, and
             never one key for two frames (``seq`` is checked, so a frame cannot pick an old one)

A body is ``u32 json_len | JSON object of the non-bytes fields | (u32 len | raw bytes) per bytes
field in declaration order``. Blobs never go through JSON (no base64 cost on large payloads) and
nothing here ever unpickles or evaluates anything: decoding only builds dataclasses from JSON values
whose types are checked against the field annotations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import struct
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import wirejson
from ..buffers import coalesce
from ..errors import FrameTooLarge, ProtocolError
from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, Message, field_kinds

__all__ = [
    "FLAG_MAC",
    "FLAG_POLY1305",
    "Frame",
    "FrameDecoder",
    "HEADER",
    "HEADER_SIZE",
    "MAC_SIZE",
    "MAGIC",
    "compute_mac",
    "decode_body",
    "encode_body",
    "encode_frame",
    "encode_frame_parts",
]

MAGIC = b"DSPY"
HEADER = struct.Struct("!4sBBHQIB")
HEADER_SIZE = HEADER.size
FLAG_MAC = 0x01
FLAG_POLY1305 = 0x02
KNOWN_FLAGS = FLAG_MAC | FLAG_POLY1305
MAC_SIZE = 32
POLY1305_TAG_SIZE = 16
POLY1305_MIN_BODY = 65536
MAX_BODY_LEN = 2**32 - 1
_LARGE_REST = 65536  # a frame still missing this many bytes is collected in chunks, not in one buffer

_U32 = struct.Struct("!I")
_SERIALIZER_NAME = re.compile(rb"[a-z0-9_.-]*")

# field kinds, checked on decode (JSON gives only dict/list/str/int/float/bool/None)
_INT, _FLOAT, _BOOL, _STR, _LIST_STR, _LIST_INT, _DICT = range(7)
_EXACT: dict[int, type] = {_INT: int, _STR: str, _BOOL: bool, _DICT: dict}
_KIND_NAMES = {
    _INT: "int",
    _FLOAT: "float",
    _BOOL: "bool",
    _STR: "str",
    _LIST_STR: "list[str]",
    _LIST_INT: "list[int]",
    _DICT: "dict",
}


@dataclass(frozen=True, slots=True)
class _Spec:
    """Per-class field layout, computed once so the hot path does no reflection."""

    cls: type[Message]
    json_fields: tuple[tuple[str, int, bool], ...]  # (name, kind, required)
    json_names: tuple[str, ...]
    blob_fields: tuple[tuple[str, bool], ...]  # (name, required)


_SPECS: dict[type, _Spec] = {}


def _kind_of(cls: type, name: str, hint: Any) -> int | None:
    """The kind code of an annotation; None for ``bytes``; TypeError for a type the wire cannot carry."""
    if hint is bytes:
        return None
    simple = {int: _INT, float: _FLOAT, bool: _BOOL, str: _STR}
    if hint in simple:
        return simple[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args in ((str,), (int,)):
        return _LIST_STR if args == (str,) else _LIST_INT
    if origin is dict and args[:1] == (str,):
        return _DICT
    raise TypeError(f"{cls.__name__}.{name}: type {hint!r} cannot travel on the wire")


def _spec(cls: type[Message]) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        required = {
            f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(cls)
        }
        json_fields: list[tuple[str, int, bool]] = []
        blob_fields: list[tuple[str, bool]] = []
        for name, hint in field_kinds(cls):
            kind = _kind_of(cls, name, hint)
            if kind is None:
                blob_fields.append((name, required[name]))
            else:
                json_fields.append((name, kind, required[name]))
        spec = _Spec(cls, tuple(json_fields), tuple(n for n, _, _ in json_fields), tuple(blob_fields))
        _SPECS[cls] = spec
    return spec


def _message_class(msg: Message) -> type[Message]:
    cls = type(msg)
    if MESSAGE_TYPES.get(cls.CODE) is not cls:
        raise TypeError(f"{cls.__name__} is not a registered message type")
    return cls


def _body_parts(msg: Message) -> tuple[list[Any], int]:
    """The body as a list of buffers (blobs are not copied) and its total length."""
    spec = _spec(_message_class(msg))
    obj = {name: getattr(msg, name) for name in spec.json_names}
    js = wirejson.dumps(obj).encode("ascii")  # ensure_ascii: lone surrogates survive
    parts: list[Any] = [_U32.pack(len(js)), js]
    total = 4 + len(js)
    for name, _ in spec.blob_fields:
        blob = getattr(msg, name)
        if isinstance(blob, memoryview):
            size = blob.nbytes
        elif isinstance(blob, bytes | bytearray):
            size = len(blob)
        else:
            raise TypeError(f"{type(msg).__name__}.{name} must be bytes, not {type(blob).__name__}")
        parts.append(_U32.pack(size))
        parts.append(blob)
        total += 4 + size
    if total > MAX_BODY_LEN:
        raise ValueError(f"{type(msg).__name__} body of {total} bytes does not fit a frame")
    return parts, total


def body_parts(msg: Message) -> tuple[list[Any], int]:
    """The body of ``msg`` as buffers (blobs not copied) and its length: for fragmenting a large one."""
    return _body_parts(msg)


def encode_body(msg: Message) -> bytes:
    """The body bytes of ``msg`` (without any frame header)."""
    parts, _ = _body_parts(msg)
    return b"".join(parts)


def _bad(cls: type[Message], name: str, kind: int, value: Any) -> ProtocolError:
    return ProtocolError(f"{cls.__name__}.{name}: expected {_KIND_NAMES[kind]}, got {type(value).__name__}")


BLOB_VIEW_MIN = 65536


def decode_body(msg_type: int, body: bytes | bytearray | memoryview, views: bool = False) -> Message:
    """Build the message of type ``msg_type`` from ``body``, validating every field; ProtocolError if bad.

    With ``views`` (and ``body`` an immutable ``bytes``), a blob of ``BLOB_VIEW_MIN`` bytes or more is
    a read-only view into ``body`` instead of a copy: for a receiver that only passes blobs on.
    """
    views = views and isinstance(body, bytes)
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise ProtocolError(f"unknown message type {msg_type}")
    spec = _spec(cls)
    with memoryview(body) as mv:
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        size = mv.nbytes
        if size < 4:
            raise ProtocolError(f"{cls.__name__}: body of {size} bytes is too short")
        (json_len,) = _U32.unpack_from(mv, 0)
        pos = 4 + json_len
        if pos > size:
            raise ProtocolError(f"{cls.__name__}: JSON length {json_len} overruns the body")
        try:
            obj = wirejson.loads(str(mv[4:pos], "utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ProtocolError(f"{cls.__name__}: invalid JSON in body: {exc}") from None
        if type(obj) is not dict:
            raise ProtocolError(f"{cls.__name__}: body JSON is not an object")
        kwargs: dict[str, Any] = {}
        for name, kind, required in spec.json_fields:
            if name not in obj:
                if required:
                    raise ProtocolError(f"{cls.__name__}: missing field {name!r}")
                continue
            value = obj[name]
            vt = type(value)
            exact = _EXACT.get(kind)
            if exact is not None:
                if vt is not exact:  # exact type: a JSON bool is not an int
                    raise _bad(cls, name, kind, value)
            elif kind == _FLOAT:
                if vt is int:
                    value = float(value)
                elif vt is not float:
                    raise _bad(cls, name, kind, value)
            else:
                item = str if kind == _LIST_STR else int
                if vt is not list or not all(type(x) is item for x in value):
                    raise _bad(cls, name, kind, value)
            kwargs[name] = value
        for name, _required in spec.blob_fields:
            if pos + 4 > size:
                raise ProtocolError(f"{cls.__name__}: body ends before blob {name!r}")
            (blob_len,) = _U32.unpack_from(mv, pos)
            pos += 4
            if pos + blob_len > size:
                raise ProtocolError(f"{cls.__name__}: blob {name!r} of {blob_len} bytes overruns the body")
            if views and blob_len >= BLOB_VIEW_MIN:
                kwargs[name] = memoryview(body)[pos : pos + blob_len].toreadonly()
            else:
                kwargs[name] = mv[pos : pos + blob_len].tobytes()
            pos += blob_len
        if pos != size:
            raise ProtocolError(f"{cls.__name__}: {size - pos} trailing bytes in body")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # cannot happen with checked fields; never let peer input raise a TypeError
        raise ProtocolError(f"{cls.__name__}: {exc}") from None


def compute_mac(key: bytes, parts: Iterable[Any]) -> bytes:
    """HMAC-SHA256 of the concatenation of ``parts`` (without concatenating them)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def _check_serializer_name(name: bytes | bytearray | memoryview) -> str:
    if _SERIALIZER_NAME.fullmatch(name) is None:
        raise ProtocolError(f"invalid serializer name {bytes(name)!r} in frame header")
    return bytes(name).decode("ascii")


def _mac_len(flags: int) -> int:
    if not flags & FLAG_MAC:
        return 0
    return POLY1305_TAG_SIZE if flags & FLAG_POLY1305 else MAC_SIZE


def _poly1305(key: bytes, seq: int) -> Any:
    from cryptography.hazmat.primitives.poly1305 import Poly1305  # only processes that see large frames

    return Poly1305(hmac.digest(key, b"dispy-poly1305" + seq.to_bytes(8, "big"), "sha256"))


def encode_frame(msg: Message, *, seq: int, serializer: str, mac_key: bytes | None) -> bytes:
    """A complete frame for ``msg``; MAC'd (FLAG_MAC) when ``mac_key`` is given."""
    return b"".join(encode_frame_parts(msg, seq=seq, serializer=serializer, mac_key=mac_key))


def encode_frame_parts(msg: Message, *, seq: int, serializer: str, mac_key: bytes | None,
                       body: tuple[list[Any], int] | None = None) -> list[Any]:
    """The frame for ``msg`` as buffers to write in order: a large payload is not copied into a frame
    (one buffer when the frame is small). ``body`` is ``body_parts(msg)`` when the caller has it already."""
    cls = _message_class(msg)
    try:
        sername = serializer.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"serializer name {serializer!r} is not ASCII") from None
    if len(sername) > 255 or _SERIALIZER_NAME.fullmatch(sername) is None:
        raise ValueError(f"invalid serializer name {serializer!r}")
    parts, body_len = body if body is not None else _body_parts(msg)
    flags = FLAG_MAC if mac_key is not None else 0
    large = body_len > POLY1305_MIN_BODY
    if large and mac_key is not None:
        flags |= FLAG_POLY1305
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, flags, cls.CODE, seq, body_len, len(sername)) + sername
    if not large:
        frame = header + b"".join(parts)
        if mac_key is not None:
            frame += hmac.digest(mac_key, frame, "sha256")
        return [frame]
    out = coalesce([header, *parts], 4096)  # the small fields in one buffer, each large blob as it is
    if mac_key is not None:
        poly = _poly1305(mac_key, seq)
        for part in out:
            poly.update(part)
        out.append(poly.finalize())
    return out


@dataclass(frozen=True, slots=True)
class Frame:
    """One received frame; ``header`` is the fixed header plus the serializer name (MAC'd with ``body``)."""

    msg_type: int
    flags: int
    seq: int
    serializer: str
    header: bytes
    body: bytes
    mac: bytes = b""

    @property
    def has_mac(self) -> bool:
        return bool(self.flags & FLAG_MAC)

    def mac_valid(self, key: bytes) -> bool:
        """Whether the frame carries a MAC and it verifies under ``key`` (constant-time compare)."""
        if not self.flags & FLAG_MAC:
            return False
        if self.flags & FLAG_POLY1305:
            if len(self.body) <= POLY1305_MIN_BODY or len(self.mac) != POLY1305_TAG_SIZE:
                return False  # small frames use HMAC-SHA256 only: no choosing the weaker-looking one
            poly = _poly1305(key, self.seq)
            poly.update(self.header)
            poly.update(self.body)
            try:
                poly.verify(self.mac)
            except Exception:  # cryptography's InvalidSignature
                return False
            return True
        if len(self.body) <= 8192:  # one-shot HMAC: cheaper than incremental for the many tiny frames
            digest = hmac.digest(key, self.header + self.body, "sha256")
        else:
            digest = compute_mac(key, (self.header, self.body))
        return hmac.compare_digest(digest, self.mac)


class FrameDecoder:
    """Splits a byte stream into frames, however the stream is chunked.

    The header is validated (magic, version, flags, type, size bound, serializer name) as soon as its
    bytes are there, so an oversized or garbage frame is refused before its body is buffered. After an
    error the decoder is poisoned: the stream position is unknown, so nothing after it can be trusted.

    Small frames are parsed from one buffer (the caller's bytes object itself when nothing is pending);
    the rest of a large frame is collected as a list of chunks and joined once, so a large body is copied
    once, not on every read.
    """

    __slots__ = ("max_frame_size", "_data", "_pos", "_hdr", "_name", "_chunks", "_chunks_len", "_failed")

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._data: bytes | bytearray = b""
        self._pos = 0
        self._hdr: tuple[int, int, int, int, int] | None = None  # flags, type, seq, body_len, ser_len
        self._name: str | None = None
        self._chunks: list[bytes | bytearray | memoryview] | None = (
            None  # large-frame mode: the frame's bytes so far
        )
        self._chunks_len = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._data) - self._pos + self._chunks_len

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data`` and return every frame it completes."""
        self.push(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` without parsing (use with ``next_frame`` to change limits between frames)."""
        if self._failed:
            raise ProtocolError("frame decoder failed earlier; the stream is unusable")
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)  # the caller may reuse its buffer
        if self._chunks is not None:
            if len(data) >= _LARGE_REST:
                self._chunks.append(data)
            elif isinstance(self._chunks[-1], bytearray):
                self._chunks[-1] += data  # coalesce small reads: no object per tiny chunk
            else:
                self._chunks.append(bytearray(data))
            self._chunks_len += len(data)
            return
        if self._pos >= len(self._data):
            # nothing buffered: keep the caller's bytes as they are (no copy when frames arrive whole)
            self._data = data
            self._pos = 0
            return
        buf = self._data
        if isinstance(buf, bytes):
            with memoryview(buf) as mv:
                buf = bytearray(mv[self._pos :])
            self._pos = 0
        elif self._pos >= 65536 or self._pos * 2 >= len(buf):
            del buf[: self._pos]  # compaction, amortised linear
            self._pos = 0
        buf += data
        self._data = buf

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None when more bytes are needed."""
        if self._failed:
            raise ProtocolError("frame decoder failed earlier; the stream is unusable")
        try:
            if self._chunks is not None:
                return self._next_large_frame()
            return self._next_frame()
        except ProtocolError:
            self._failed = True
            self._data = b""
            self._pos = 0
            self._chunks = None
            self._chunks_len = 0
            raise

    def _parse_header(self, data: bytes | bytearray, pos: int) -> tuple[int, int, int, int, int]:
        magic, version, flags, msg_type, seq, body_len, ser_len = HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            raise ProtocolError(f"bad frame magic {magic!r}")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported frame version {version}")
        if flags & ~KNOWN_FLAGS:
            raise ProtocolError(f"unknown frame flags {flags:#x}")
        if flags & FLAG_POLY1305 and not flags & FLAG_MAC:
            raise ProtocolError("frame flags name a MAC algorithm but no MAC")
        if msg_type not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message type {msg_type}")
        if body_len > self.max_frame_size:
            raise FrameTooLarge(f"frame body of {body_len} bytes exceeds the limit {self.max_frame_size}")
        return flags, msg_type, seq, body_len, ser_len

    def _next_frame(self) -> Frame | None:
        data, pos = self._data, self._pos
        avail = len(data) - pos
        hdr = self._hdr
        if hdr is None:
            if avail < HEADER_SIZE:
                if avail and data[pos : pos + min(avail, 4)] != MAGIC[: min(avail, 4)]:
                    raise ProtocolError("bad frame magic")
                return None
            hdr = self._hdr = self._parse_header(data, pos)
        flags, msg_type, seq, body_len, ser_len = hdr
        name_end = HEADER_SIZE + ser_len
        if self._name is None:
            if avail < name_end:
                return None
            with memoryview(data) as mv:
                self._name = _check_serializer_name(mv[pos + HEADER_SIZE : pos + name_end])
        body_end = name_end + body_len
        total = body_end + _mac_len(flags)
        if avail < total:
            if total - avail >= _LARGE_REST:
                # switch to chunk mode: keep what is here (bytes: a view, no copy), join once when complete
                rest = memoryview(data)[pos:] if isinstance(data, bytes) else bytes(data[pos:])
                self._chunks, self._chunks_len = [rest], avail
                self._data, self._pos = b"", 0
            return None
        with memoryview(data) as mv:
            header = mv[pos : pos + name_end].tobytes()
            body = mv[pos + name_end : pos + body_end].tobytes()
            mac = mv[pos + body_end : pos + total].tobytes()
        frame = Frame(msg_type, flags, seq, self._name, header, body, mac)
        self._hdr = None
        self._name = None
        pos += total
        if pos >= len(data):
            data = b""
            pos = 0
        self._data, self._pos = data, pos
        return frame

    def _next_large_frame(self) -> Frame | None:
        assert self._hdr is not None and self._name is not None and self._chunks is not None
        flags, msg_type, seq, body_len, ser_len = self._hdr
        name_end = HEADER_SIZE + ser_len
        mac_len = _mac_len(flags)
        if self._chunks_len < name_end + body_len + mac_len:
            return None
        chunks = self._chunks
        header, body, mac = (
            self._take(chunks, name_end),
            self._take(chunks, body_len),
            self._take(chunks, mac_len),
        )
        frame = Frame(msg_type, flags, seq, self._name, header, body, mac)
        self._data, self._pos = b"".join(chunks), 0  # what follows the frame: at most one read's worth
        self._chunks, self._chunks_len = None, 0
        self._hdr = None
        self._name = None
        return frame

    @staticmethod
    def _take(chunks: list[bytes | bytearray | memoryview], size: int) -> bytes:
        """Remove and return the first ``size`` bytes of ``chunks`` (one copy)."""
        parts: list[bytes | bytearray | memoryview] = []
        i = 0
        while size:
            chunk = chunks[i]
            if len(chunk) <= size:
                parts.append(chunk)
                size -= len(chunk)
                i += 1
            else:
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                parts.append(view[:size])
                chunks[i] = view[size:]
                size = 0
        del chunks[:i]
        return b"".join(parts)
