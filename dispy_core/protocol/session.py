"""One connection's protocol state, sans-I/O: mutual handshake, then MAC'd, sequenced frames.

The handshake proves knowledge of the shared secret in both directions without sending it or anything
replayable (both sides contribute a fresh nonce)::

    initiator -> Hello(Nc)                                  no MAC
    acceptor  -> Challenge(Ns, HMAC(K, "dispy-server"|Nc|Ns))  no MAC
    initiator -> Auth(HMAC(K, "dispy-client"|Nc|Ns))           no MAC
    acceptor  -> AuthOk                                     first frame under the session keys

with ``K = SHA256("dispy-secret" | secret)``. Each direction then has its own key
``HMAC(K, "dispy-session-c2s"/"dispy-session-s2c" | Nc | Ns)`` and its own sequence counter starting
at 0, so a frame that is forged, replayed, reordered or dropped is detected. A peer's blobs are only
ever handed to a serializer through :meth:`Session.loads`, and only once the peer is authenticated.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from ..errors import (
    AuthenticationError,
    DispyError,
    IntegrityError,
    PayloadTooLarge,
    PeerClosedError,
    ProtocolError,
    SerializationError,
)
from ..interfaces import Serializer
from . import messages as m
from .codec import Frame, FrameDecoder, body_parts, decode_body, encode_frame, encode_frame_parts

__all__ = ["FEATURES", "FRAGMENT_SIZE", "HANDSHAKE_FRAME_LIMIT", "MAX_PAYLOAD", "NONCE_SIZE", "DerivedKey",
           "Prepared", "Session", "secret_key"]

NONCE_SIZE = 32
FRAGMENT_SIZE = 8 << 20
"""Bodies above this travel as Fragment frames: no frame is larger, whatever the payload."""
MAX_PAYLOAD = 1 << 30
"""Bytes one message may carry (an argument, a result, a provisional result): both sides' ``max_payload``."""
HANDSHAKE_FRAME_LIMIT = 65536  # an unauthenticated peer cannot make us buffer more than this
SUPPORTED_VERSIONS = (m.PROTOCOL_VERSION,)
FEATURES = ("batch",)
"""Optional parts of the protocol this version speaks; the handshake agrees on those both sides offer."""
BATCH_BODY_MAX = 16384
"""A message with a larger body travels in a frame of its own (joining it into a Batch would copy it)."""
BATCH_BYTES = 1 << 20
BATCH_COUNT = 4096
"""At most this many messages in one Batch (a peer's larger one is refused)."""
_HANDSHAKE_TYPES = (m.Hello, m.Challenge, m.Auth, m.AuthOk)
_NOT_IN_BATCH = frozenset({m.Batch.CODE, m.Fragment.CODE, *(t.CODE for t in _HANDSHAKE_TYPES)})

Prepared = tuple[m.Message, list[Any], int]
"""A message checked and its body encoded (``Session.prepare``), not yet framed: (message, body buffers, size)."""

# states
_IDLE = "idle"  # initiator before start()
_WAIT_HELLO = "wait-hello"  # acceptor
_WAIT_CHALLENGE = "wait-challenge"  # initiator, Hello sent
_WAIT_AUTH = "wait-auth"  # acceptor, Challenge sent
_WAIT_AUTH_OK = "wait-auth-ok"  # initiator, Auth sent
_READY = "ready"
_FAILED = "failed"


class DerivedKey(bytes):
    """A secret already turned into its key (``secret_key``): what a recover file keeps instead of the secret."""


def secret_key(secret: str | bytes) -> bytes:
    """The key both proofs and session keys derive from (fixed length, so an empty secret works)."""
    if isinstance(secret, DerivedKey):
        return bytes(secret)
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return hashlib.sha256(b"dispy-secret" + raw).digest()


def _hmac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


class Session:
    """The protocol state of one connection; feeds on bytes, produces messages and bytes (like h11).

    ``features`` are the optional parts of the protocol this side offers (default: all of ``FEATURES``);
    ``self.features`` holds, once the handshake is done, those the peer speaks too.
    ``serializers`` is the accept list: a frame naming another serializer is refused; a list of names
    accepts those names but gives no serializer to ``loads`` with. ``serializer`` is the name this side
    puts in the frames it sends. After any error the session is failed and every call raises
    ProtocolError, except ``data_to_send``, which still returns what is queued (such as the ``Error``
    frame that tells the peer why it was refused).
    """

    def __init__(
        self,
        *,
        initiator: bool,
        secret: str | bytes,
        name: str = "",
        software: str = "",
        role: str = "client",
        serializers: Mapping[str, Serializer] | list[str] | tuple[str, ...] | None = None,
        serializer: str = "pickle",
        max_frame_size: int = FRAGMENT_SIZE + 65536,
        max_payload: int = MAX_PAYLOAD,
        features: tuple[str, ...] = FEATURES,
    ) -> None:
        self.initiator = initiator
        self.name = name
        self.software = software
        self.role = role  # what the initiator announces in its Hello
        if serializers is None:
            self.serializers: dict[str, Serializer] = {}
            self._accept: frozenset[str] = frozenset()
        elif isinstance(serializers, Mapping):
            self.serializers = dict(serializers)
            self._accept = frozenset(serializers)
        else:
            self.serializers = {}
            self._accept = frozenset(serializers)
        self.serializer = serializer
        self.max_frame_size = max_frame_size
        self.max_payload = max_payload
        self._assembly: tuple[int, bytearray, int] | None = None  # (msg_type, buffer, bytes so far)
        self.peer_name = ""
        self.peer_software = ""
        self.peer_role = ""  # the role an initiating peer announced
        self.peer_serializer = ""  # the name in the peer's latest frame: what its blobs are loaded with
        self.blob_views = False  # large blobs as read-only views, not copies (a node only passes them on)
        self._offer = tuple(features)
        self.features: frozenset[str] = frozenset()
        self._key = secret_key(secret)
        self._state = _IDLE if initiator else _WAIT_HELLO
        self._nonce = b""  # ours
        self._peer_nonce = b""
        self._send_key = b""
        self._recv_key = b""
        self._send_seq = 0
        self._recv_seq = 0
        self._outgoing = bytearray()
        self._decoder = FrameDecoder(min(HANDSHAKE_FRAME_LIMIT, max_frame_size))

    # ------------------------------------------------------------------ state
    @property
    def authenticated(self) -> bool:
        return self._state == _READY

    @property
    def failed(self) -> bool:
        return self._state == _FAILED

    def _check_usable(self) -> None:
        if self._state == _FAILED:
            raise ProtocolError("session failed earlier; the connection must be closed")

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._state = _FAILED
        self._send_key = self._recv_key = b""
        return error

    def _refuse(self, code: str, message: str, error: ProtocolError) -> ProtocolError:
        """Queue an unMAC'd Error frame so the peer learns why, then fail."""
        error_msg = m.Error(code=code, message=message)
        self._outgoing += encode_frame(error_msg, seq=0, serializer="", mac_key=None)
        return self._fail(error)

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Initiator only: queue the Hello that opens the handshake."""
        self._check_usable()
        if not self.initiator or self._state != _IDLE:
            raise ProtocolError("start() is for the initiator, once")
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        hello = m.Hello(
            nonce=self._nonce,
            role=self.role,
            name=self.name,
            versions=list(SUPPORTED_VERSIONS),
            software=self.software,
            features=list(self._offer),
        )
        self._outgoing += encode_frame(hello, seq=0, serializer="", mac_key=None)
        self._state = _WAIT_CHALLENGE

    def data_to_send(self) -> bytes:
        """Bytes the handshake produced; drain after start() and after each receive_data()."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def send(self, msg: m.Message) -> bytes:
        """A MAC'd frame carrying ``msg``, for an authenticated session."""
        return b"".join(self.send_parts(msg))

    def send_parts(self, msg: m.Message) -> list[Any]:
        """Like :meth:`send`, as buffers to write in order (a large payload is not copied into a frame)."""
        return self._frame(self.prepare(msg))

    def prepare(self, msg: m.Message) -> Prepared:
        """Check ``msg`` and encode its body, to be framed later by :meth:`send_many` (errors come now)."""
        self._check_usable()
        if self._state != _READY:
            raise ProtocolError("cannot send before the peer is authenticated")
        if isinstance(msg, (*_HANDSHAKE_TYPES, m.Batch)):
            raise ProtocolError(f"{type(msg).__name__} is not a message to send")
        body, size = body_parts(msg)
        if size > self.max_payload:
            raise PayloadTooLarge(f"{type(msg).__name__} of {size} bytes is above the {self.max_payload} bytes "
                                  f"a message may have (max_payload)")
        return msg, body, size

    def send_many(self, prepared: list[Prepared]) -> list[Any]:
        """The frames of prepared messages, in order, as buffers to write: when the peer speaks ``"batch"``,
        each run of small ones shares one Batch frame."""
        if "batch" not in self.features or len(prepared) < 2:
            return [part for item in prepared for part in self._frame(item)]
        out: list[Any] = []
        run: list[Prepared] = []
        run_bytes = 0
        for item in prepared:
            size = item[2]
            if size > BATCH_BODY_MAX:
                out += self._frame_run(run)
                out += self._frame(item)
                run, run_bytes = [], 0
                continue
            if len(run) == BATCH_COUNT or run_bytes + size > BATCH_BYTES:
                out += self._frame_run(run)
                run, run_bytes = [], 0
            run.append(item)
            run_bytes += size
        return out + self._frame_run(run)

    def _frame_run(self, run: list[Prepared]) -> list[Any]:
        if len(run) < 2:
            return [part for item in run for part in self._frame(item)]
        batch = m.Batch([type(msg).CODE for msg, _, _ in run], [size for _, _, size in run],
                        b"".join([part for _, body, _ in run for part in body]))
        return self._frame((batch, *body_parts(batch)))

    def _frame(self, item: Prepared) -> list[Any]:
        msg, body, size = item
        if size > FRAGMENT_SIZE:
            return self._fragments(type(msg).CODE, body, size)
        parts = encode_frame_parts(msg, seq=self._send_seq, serializer=self.serializer, mac_key=self._send_key,
                                   body=(body, size))
        self._send_seq += 1
        return parts

    def loads(self, payload: bytes | memoryview, serializer: str | None = None) -> Any:
        """Deserialize a blob from the peer with the serializer its frames named (or ``serializer``)."""
        self._check_usable()
        if self._state != _READY:
            raise ProtocolError("refusing to load a payload from an unauthenticated peer")
        sername = self.peer_serializer if serializer is None else serializer
        if not sername:
            raise ProtocolError("the peer named no serializer")
        ser = self.serializers.get(sername)
        if ser is None:
            raise ProtocolError(f"no serializer {sername!r} available to load the peer's payload")
        try:
            return ser.loads(payload)
        except DispyError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot load payload with {sername!r}: {exc!r}") from exc

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[m.Message]:
        """Consume bytes from the peer; return the application messages they complete."""
        self._check_usable()
        try:
            self._decoder.push(data)
            out: list[m.Message] = []
            while (frame := self._decoder.next_frame()) is not None:
                if self._state == _READY:
                    msg = self._app_frame(frame)
                    if isinstance(msg, m.Fragment):
                        whole = self._reassemble(msg)
                        if whole is None:
                            continue
                        msg = whole
                    if isinstance(msg, m.Batch):
                        out += self._unbatch(msg)
                    else:
                        out.append(msg)
                else:
                    self._handshake_frame(frame)
                    if self._state == _READY:
                        self._decoder.max_frame_size = self.max_frame_size
            return out
        except ProtocolError as exc:
            if self._state != _FAILED:
                self._fail(exc)
            raise

    # ------------------------------------------------------------------ frames
    def _fragments(self, msg_type: int, body: list[Any], size: int) -> list[Any]:
        """A large body as Fragment frames of at most FRAGMENT_SIZE (big blobs sliced, not copied)."""
        out: list[Any] = []
        pieces: list[Any] = []
        filled = sent = 0
        for part in body:
            view = memoryview(part).cast("B")
            while view.nbytes:
                take = min(view.nbytes, FRAGMENT_SIZE - filled)
                pieces.append(view[:take])
                view, filled = view[take:], filled + take
                if filled == FRAGMENT_SIZE:
                    sent += filled
                    out += self._fragment(msg_type, size, pieces, sent == size)
                    pieces, filled = [], 0
        if pieces:
            out += self._fragment(msg_type, size, pieces, True)
        return out

    def _fragment(self, msg_type: int, size: int, pieces: list[Any], last: bool) -> list[Any]:
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        parts = encode_frame_parts(m.Fragment(msg_type, size, data, last), seq=self._send_seq,
                                   serializer=self.serializer, mac_key=self._send_key)
        self._send_seq += 1
        return parts

    def _reassemble(self, piece: m.Fragment) -> m.Message | None:
        """Add a fragment; the message once its last fragment is in."""
        if self._assembly is None:
            if not 0 < piece.total <= self.max_payload:
                raise PayloadTooLarge(f"peer announces a message of {piece.total} bytes; at most "
                                      f"{self.max_payload} are accepted (max_payload)")
            if piece.msg_type in _NOT_IN_BATCH - {m.Batch.CODE}:
                raise ProtocolError(f"fragments of message type {piece.msg_type} are not allowed")
            self._assembly = (piece.msg_type, bytearray(piece.total), 0)
        msg_type, buffer, filled = self._assembly
        data = memoryview(piece.data)
        if piece.msg_type != msg_type or piece.total != len(buffer) or filled + data.nbytes > len(buffer):
            raise ProtocolError("fragment does not continue the message being reassembled")
        buffer[filled:filled + data.nbytes] = data
        filled += data.nbytes
        self._assembly = (msg_type, buffer, filled)
        if not piece.last:
            return None
        self._assembly = None
        if filled != len(buffer):
            raise ProtocolError(f"message reassembled from fragments has {filled} of its {len(buffer)} bytes")
        return decode_body(msg_type, memoryview(buffer), self.blob_views)

    def _unbatch(self, batch: m.Batch) -> list[m.Message]:
        """The messages of a Batch frame (already MAC-verified), each checked as if it came alone."""
        if "batch" not in self.features:
            raise ProtocolError("Batch frame from a peer that did not agree to batching")
        codes, sizes = batch.codes, batch.sizes
        if len(codes) != len(sizes) or not 0 < len(codes) <= BATCH_COUNT:
            raise ProtocolError(f"Batch of {len(codes)} codes and {len(sizes)} sizes (at most {BATCH_COUNT})")
        if min(sizes) < 0 or sum(sizes) != len(batch.bodies):
            raise ProtocolError("Batch sizes do not add up to its bodies")
        out: list[m.Message] = []
        pos = 0
        bodies = memoryview(batch.bodies)
        for code, size in zip(codes, sizes, strict=True):
            if code in _NOT_IN_BATCH:
                raise ProtocolError(f"message type {code} cannot travel in a Batch")
            out.append(decode_body(code, bodies[pos:pos + size]))
            pos += size
        return out

    def farewell(self, reason: str, code: str = "closing") -> bytes:
        """A last Error frame saying why we end the connection (unMAC'd: usable after the session failed).
        ``code`` tells the peer what to make of it ("released": do not come back by yourself)."""
        return encode_frame(m.Error(code=code, message=reason[:500]), seq=0, serializer="", mac_key=None)

    def _app_frame(self, frame: Frame) -> m.Message:
        if frame.msg_type == m.Error.CODE and not frame.has_mac:  # the peer's farewell: why it hangs up
            err = _decode(frame)
            assert isinstance(err, m.Error)
            raise PeerClosedError(f"the peer closed the connection: {err.message[:500]}", code=err.code)
        self._check_mac(frame)
        name = frame.serializer
        if name and name not in self._accept:
            raise ProtocolError(f"peer uses serializer {name!r}, not one of {sorted(self._accept)}")
        msg = decode_body(frame.msg_type, frame.body, self.blob_views)  # only now: the MAC verified
        if isinstance(msg, _HANDSHAKE_TYPES):
            raise ProtocolError(f"unexpected {type(msg).__name__} after the handshake")
        if name:
            self.peer_serializer = name
        return msg

    def _check_mac(self, frame: Frame) -> None:
        if not frame.has_mac:
            raise IntegrityError("frame without MAC on an authenticated session")
        if not frame.mac_valid(self._recv_key):
            raise IntegrityError("frame MAC does not verify")
        if frame.seq != self._recv_seq:
            raise IntegrityError(
                f"frame sequence {frame.seq}, expected {self._recv_seq} (replay/reorder/loss)"
            )
        self._recv_seq += 1

    def _handshake_frame(self, frame: Frame) -> None:
        expected: type[m.Message] | None = {
            _WAIT_HELLO: m.Hello,
            _WAIT_CHALLENGE: m.Challenge,
            _WAIT_AUTH: m.Auth,
            _WAIT_AUTH_OK: m.AuthOk,
        }.get(self._state)
        if expected is None:
            raise ProtocolError(f"unexpected frame before start() (state {self._state})")
        if frame.msg_type == m.Error.CODE and not frame.has_mac:
            err = _decode(frame)
            assert isinstance(err, m.Error)
            text = f"peer refused the handshake ({err.code}): {err.message}"
            raise AuthenticationError(text) if err.code == "auth" else ProtocolError(text)
        if frame.msg_type != expected.CODE:
            raise ProtocolError(
                f"expected {expected.__name__} in the handshake, got message type {frame.msg_type}"
            )
        if expected is m.AuthOk:
            self._check_mac(frame)  # the first frame under the session keys proves the acceptor derived them
            msg = _decode(frame)
            assert isinstance(msg, m.AuthOk)
            self._state = _READY
            return
        if frame.has_mac:
            raise ProtocolError(f"unexpected MAC on {expected.__name__}")
        msg = _decode(frame)
        if isinstance(msg, m.Hello):
            self._on_hello(msg)
        elif isinstance(msg, m.Challenge):
            self._on_challenge(msg)
        elif isinstance(msg, m.Auth):
            self._on_auth(msg)

    def _on_hello(self, hello: m.Hello) -> None:
        if len(hello.nonce) != NONCE_SIZE:
            raise ProtocolError(f"Hello nonce of {len(hello.nonce)} bytes, expected {NONCE_SIZE}")
        common = [v for v in hello.versions if v in SUPPORTED_VERSIONS]
        if not common:
            raise self._refuse(
                "version",
                f"no common protocol version: peer has {hello.versions}, we have {list(SUPPORTED_VERSIONS)}",
                ProtocolError(f"peer speaks protocol versions {hello.versions} only"),
            )
        self._peer_nonce = hello.nonce
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        if self._nonce == self._peer_nonce:
            raise AuthenticationError("peer reflected our nonce")
        self.peer_name, self.peer_software, self.peer_role = hello.name, hello.software, hello.role
        self.features = frozenset(hello.features) & frozenset(self._offer)
        nc, ns = self._peer_nonce, self._nonce
        challenge = m.Challenge(
            nonce=ns,
            proof=_hmac(self._key, b"dispy-server", nc, ns),
            version=max(common),
            name=self.name,
            software=self.software,
            features=sorted(self.features),
        )
        self._outgoing += encode_frame(challenge, seq=0, serializer="", mac_key=None)
        self._state = _WAIT_AUTH

    def _on_challenge(self, challenge: m.Challenge) -> None:
        nc, ns = self._nonce, challenge.nonce
        if len(ns) != NONCE_SIZE:
            raise ProtocolError(f"Challenge nonce of {len(ns)} bytes, expected {NONCE_SIZE}")
        if ns == nc:
            raise AuthenticationError("peer reflected our nonce")
        if challenge.version not in SUPPORTED_VERSIONS:
            raise ProtocolError(f"peer chose unsupported protocol version {challenge.version}")
        if not hmac.compare_digest(challenge.proof, _hmac(self._key, b"dispy-server", nc, ns)):
            raise self._refuse(
                "auth",
                "authentication failed",
                AuthenticationError("the peer does not know the shared secret (server proof failed)"),
            )
        self._peer_nonce = ns
        self.peer_name, self.peer_software = challenge.name, challenge.software
        self.features = frozenset(challenge.features) & frozenset(self._offer)
        auth = m.Auth(proof=_hmac(self._key, b"dispy-client", nc, ns))
        self._outgoing += encode_frame(auth, seq=0, serializer="", mac_key=None)
        self._derive_keys(nc, ns)
        self._state = _WAIT_AUTH_OK

    def _on_auth(self, auth: m.Auth) -> None:
        nc, ns = self._peer_nonce, self._nonce
        if not hmac.compare_digest(auth.proof, _hmac(self._key, b"dispy-client", nc, ns)):
            raise self._refuse(
                "auth",
                "authentication failed",
                AuthenticationError("the peer does not know the shared secret (client proof failed)"),
            )
        self._derive_keys(nc, ns)
        self._state = _READY
        self._outgoing += encode_frame(m.AuthOk(name=self.name), seq=0, serializer="", mac_key=self._send_key)
        self._send_seq = 1

    def _derive_keys(self, nc: bytes, ns: bytes) -> None:
        c2s = _hmac(self._key, b"dispy-session-c2s", nc, ns)
        s2c = _hmac(self._key, b"dispy-session-s2c", nc, ns)
        self._send_key, self._recv_key = (c2s, s2c) if self.initiator else (s2c, c2s)
        self._send_seq = self._recv_seq = 0


def _decode(frame: Frame) -> m.Message:
    return decode_body(frame.msg_type, frame.body)
