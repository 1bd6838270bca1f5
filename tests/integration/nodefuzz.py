"""Hostile inputs for a real dispynode's port, and what a correct answer to them is.

Used by ``test_fuzz_node.py``. A probe is one plain socket: send, half-close, read until the node hangs up.
Before authentication a correct node says at most a Challenge and an Error, both without a MAC, and closes
soon after our end of the stream: that is checked once here (``check_refusal``), for every kind of input.
Bulk inputs come from seeded generators: a failure shows its bytes (hex), and its kind and index with the
seed give the same bytes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import random
import socket
import threading
import time
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dispy_core.errors import ProtocolError
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import FLAG_MAC, FLAG_POLY1305, HEADER, MAGIC, FrameDecoder, decode_body, encode_frame
from dispy_core.protocol.session import HANDSHAKE_FRAME_LIMIT, NONCE_SIZE, Session, secret_key

CLOSE_WITHIN = 7.0
"""Seconds the node may take to hang up after our end of the stream: its 5 s handshake deadline plus slack."""
REPLY_LIMIT = 1 << 20
PROBE_DIR = Path(__file__).parent / "unpickle_probe"
HANDSHAKE = (m.Hello, m.Challenge, m.Auth, m.AuthOk)
STRAY_TYPES = [cls for cls in m.MESSAGE_TYPES.values() if cls not in HANDSHAKE]


# --------------------------------------------------------------------------- probes
@dataclass(frozen=True)
class Outcome:
    """What one connection got back, and how it ended: "eof", "reset" or "timeout" (a hang)."""

    reply: bytes
    end: str
    seconds: float


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WITHIN)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def finish(sock: socket.socket, data: bytes, started: float, reply: bytes = b"", linger: float = 0.0) -> Outcome:
    """Send ``data``, then read until the node hangs up (bounded in bytes and time).

    We half-close after ``linger`` seconds: at once, the node sees our EOF and must hang up even when it is
    waiting for the rest of a frame; later, it must hang up by itself (a node drops what it would still
    say to a peer that half-closed, so a test that wants to read the node's refusal lingers)."""
    try:
        sock.sendall(data)
    except OSError:
        return Outcome(reply, "reset", time.monotonic() - started)  # the node hung up while we were sending
    chunks = [reply]
    size = len(reply)
    deadline = started + CLOSE_WITHIN
    half_close_at = time.monotonic() + linger
    half_closed = False
    try:
        while size < REPLY_LIMIT:
            now = time.monotonic()
            if not half_closed and now >= half_close_at:
                sock.shutdown(socket.SHUT_WR)
                half_closed = True
            if now >= deadline:
                break
            sock.settimeout(max(0.01, min(deadline, half_close_at if not half_closed else deadline) - now))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return Outcome(b"".join(chunks), "eof", time.monotonic() - started)
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return Outcome(b"".join(chunks), "reset", time.monotonic() - started)
    return Outcome(b"".join(chunks), "timeout", time.monotonic() - started)


def probe(port: int, data: bytes, linger: float = 0.0) -> Outcome:
    """One connection that sends ``data`` and nothing else."""
    started = time.monotonic()
    with connect(port) as sock:
        return finish(sock, data, started, linger=linger)


def read_frame(sock: socket.socket, decoder: FrameDecoder) -> tuple[m.Message | None, bytes]:
    """The node's next frame (None if it hung up first) and the raw bytes read for it."""
    raw = b""
    sock.settimeout(CLOSE_WITHIN)
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return decode_body(frame.msg_type, frame.body), raw
        try:
            chunk = sock.recv(65536)
        except OSError:
            return None, raw
        if not chunk:
            return None, raw
        raw += chunk
        decoder.push(chunk)


def after_challenge(port: int, hello: bytes, then: Callable[[m.Challenge], bytes],
                    linger: float = 0.0) -> tuple[Outcome, bool]:
    """Send a genuine ``hello``, wait for the node's Challenge, then send ``then(challenge)``.

    The bool says whether a Challenge came (False: refused at once, e.g. when too many connections are
    proving the secret)."""
    started = time.monotonic()
    with connect(port) as sock:
        sock.sendall(hello)
        msg, raw = read_frame(sock, FrameDecoder(HANDSHAKE_FRAME_LIMIT))
        if not isinstance(msg, m.Challenge):
            return finish(sock, b"", started, raw), False
        return finish(sock, then(msg), started, raw, linger), True


def hold(port: int, chunks: list[bytes], gap: float) -> Outcome:
    """A peer that never finishes: sends ``chunks`` ``gap`` seconds apart and never half-closes. The node's
    handshake deadline must end it; ``seconds`` is when it did."""
    started = time.monotonic()
    reply = b""
    pending = list(chunks)
    with connect(port) as sock:
        while (left := started + CLOSE_WITHIN + 3 - time.monotonic()) > 0:
            try:
                if pending:
                    sock.sendall(pending.pop(0))
                sock.settimeout(min(gap, left) if pending else left)
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return Outcome(reply, "reset", time.monotonic() - started)
            if not chunk:
                return Outcome(reply, "eof", time.monotonic() - started)
            reply += chunk
    return Outcome(reply, "timeout", time.monotonic() - started)


def burst(port: int, n: int) -> tuple[int, int]:
    """``n`` connections at once, each a genuine Hello left waiting for our Auth: (challenged, refused)."""
    socks = []
    try:
        for _ in range(n):
            sock = connect(port)
            socks.append(sock)
            try:
                sock.sendall(genuine_hello())
            except OSError:
                pass  # refused already: counted below
        got = [read_frame(sock, FrameDecoder(HANDSHAKE_FRAME_LIMIT))[0] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    challenged = sum(isinstance(msg, m.Challenge) for msg in got)
    refused = sum(msg is None for msg in got)
    assert challenged + refused == n, [type(msg).__name__ for msg in got]
    return challenged, refused


def held_open(port: int, data: bytes, n: int, seconds: float) -> int:
    """``n`` connections at once that each send ``data`` and hold it there for ``seconds`` (the node buffers
    it, waiting for the rest); how many the node had not closed by then."""
    socks = []
    try:
        for _ in range(n):
            sock = connect(port)
            socks.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(data)
        time.sleep(seconds)
        still = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                still += sock.recv(1) != b""
            except BlockingIOError:
                still += 1  # nothing to read and not closed
            except OSError:
                pass
        return still
    finally:
        for sock in socks:
            sock.close()


def biggest_partial_hello() -> bytes:
    """A Hello header claiming the largest body a peer may send before authentication, and all of that body
    but its last byte: what makes a node buffer the most for one connection."""
    header = HEADER.pack(MAGIC, 1, 0, m.Hello.CODE, 0, HANDSHAKE_FRAME_LIMIT, 0)
    return header + os.urandom(HANDSHAKE_FRAME_LIMIT - 1)


def check_refusal(outcome: Outcome) -> list[m.Message]:
    """The messages of the node's answer to a peer that never authenticates, which must be: it hung up, having
    said at most one Challenge and then Errors, none under a MAC. AssertionError if it was anything else."""
    assert outcome.end != "timeout", f"the node kept the connection open {outcome.seconds:.1f} s after our EOF"
    decoder = FrameDecoder(HANDSHAKE_FRAME_LIMIT)
    try:
        frames = decoder.feed(outcome.reply)
    except ProtocolError as exc:
        raise AssertionError(f"the node's reply does not parse ({exc}): {outcome.reply[:200].hex()}") from None
    if outcome.end == "eof":  # after a reset the kernel may have dropped the tail of the reply
        assert decoder.buffered == 0, f"the node's reply ends in a partial frame: {outcome.reply[-200:].hex()}"
    messages: list[m.Message] = []
    for frame in frames:
        msg = decode_body(frame.msg_type, frame.body)
        assert isinstance(msg, m.Challenge | m.Error) and not frame.has_mac, f"unexpected {msg!r} before auth"
        messages.append(msg)
    kinds = [type(msg) for msg in messages]
    assert kinds.count(m.Challenge) <= 1 and m.Challenge not in kinds[1:], kinds
    assert all(k is m.Error for k in kinds[kinds.count(m.Challenge):]), kinds
    return messages


@dataclass
class Failure:
    """A case whose answer was wrong: enough to send the same bytes again."""

    kind: str
    index: int
    data: bytes
    problem: str

    def __str__(self) -> str:
        shown = self.data.hex() if len(self.data) <= 512 else f"{self.data[:512].hex()}... ({len(self.data)} bytes)"
        return f"{self.kind} #{self.index}: {self.problem}\n  input hex: {shown}"


@dataclass
class Tally:
    """Cases sent per kind, and the failures (recording stops after a few: one defect repeats).

    ``alive`` tells whether the node still runs: once it has died every later case fails too, so what is
    worth reporting is the input sent before (``last``), not the one that found the port closed."""

    alive: Callable[[], bool]
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    last: bytes = b""
    dead_reported: bool = False
    death: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, n: int = 1) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + n

    @contextlib.contextmanager
    def case(self, kind: str, data: bytes) -> Iterator[None]:
        """Around one case sent on its own: once the node has died, every case fails with one message, which
        names the inputs sent when it died (hypothesis, shrinking, then reports that, not its last try)."""
        self.add(kind)
        previous, self.last = self.last, data
        if self.alive():
            try:
                yield
                return
            except (OSError, AssertionError):
                if self.alive():
                    raise
        if not self.death:
            self.death = (f"the node died, on this {kind} input or the one before:\n  input hex: {data.hex()}\n"
                          f"  the one before: {previous.hex()}")
        raise AssertionError(self.death)

    def fail(self, failure: Failure) -> None:
        with self.lock:
            self.failures.append(failure)

    @property
    def stop(self) -> bool:
        return len(self.failures) >= 5

    def report(self) -> str:
        return "\n".join(str(f) for f in self.failures)


def run_bulk(port: int, kind: str, cases: list[bytes], tally: Tally, workers: int = 16) -> None:
    """Send every case on its own connection, ``workers`` at a time (under the node's 64 in the handshake)."""

    def one(index: int) -> None:
        if tally.stop:
            return
        try:
            check_refusal(probe(port, cases[index]))
        except (AssertionError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            if not tally.alive() and not tally.dead_reported:
                tally.dead_reported = True  # once: every later case fails the same way
                suspects = range(max(0, index - 2 * workers), index)
                problem += (f"\n  the node is dead: it died on one of {kind} #{suspects.start}-#{suspects.stop - 1}"
                            + "".join(f"\n  #{i}: {cases[i].hex()}" for i in suspects if len(cases[i]) <= 512))
            tally.fail(Failure(kind, index, cases[index], problem))
        tally.add(kind)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(len(cases))))


# --------------------------------------------------------------------------- genuine peers
def genuine_hello() -> bytes:
    """A fresh Hello exactly as a client sends it (the Hello does not depend on the secret)."""
    session = Session(initiator=True, secret="any", serializers=["pickle"], serializer="pickle")
    session.start()
    return session.data_to_send()


def auth_frame(secret: str, challenge: m.Challenge, client_nonce: bytes) -> bytes:
    """The Auth a client knowing ``secret`` would send: a wrong one when ``secret`` is not the node's."""
    mine = proof(secret_key(secret), b"dispy-client", client_nonce, challenge.nonce)
    return encode_frame(m.Auth(proof=mine), seq=0, serializer="", mac_key=None)


def proof(key: bytes, label: bytes, nc: bytes, ns: bytes) -> bytes:
    return hmac.new(key, label + nc + ns, hashlib.sha256).digest()


def hello_nonce(hello: bytes) -> bytes:
    [frame] = FrameDecoder(HANDSHAKE_FRAME_LIMIT).feed(hello)
    msg = decode_body(frame.msg_type, frame.body)
    assert isinstance(msg, m.Hello)
    return msg.nonce


@dataclass
class Authenticated:
    """A client connection that proved the secret, with every byte it sent in order (for replays)."""

    sock: socket.socket
    session: Session
    sent: list[bytes]

    def send(self, msg: m.Message) -> bytes:
        data = self.session.send(msg)
        self.sock.sendall(data)
        self.sent.append(data)
        return data

    def receive(self) -> list[m.Message]:
        """The messages of the node's next read (ProtocolError when it refused us and said why)."""
        self.sock.settimeout(CLOSE_WITHIN)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the node closed the connection")
        return self.session.receive_data(chunk)


def authenticate(port: int, secret: str) -> Authenticated:
    """Run the real handshake over a plain socket, as a client does."""
    session = Session(initiator=True, secret=secret, name="fuzz", serializers=["pickle"], serializer="pickle")
    session.start()
    sock = connect(port)
    sent: list[bytes] = []
    while not session.authenticated:
        out = session.data_to_send()
        if out:
            sock.sendall(out)
            sent.append(out)
        chunk = sock.recv(65536)
        if not chunk:
            sock.close()
            raise ConnectionError("the node closed the connection during the handshake")
        session.receive_data(chunk)
    return Authenticated(sock, session, sent)


# --------------------------------------------------------------------------- generated inputs
class Canary:
    """A pickle that makes a directory when loaded: a second witness, beside the unpickle probe."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def canary_blob(path: Path) -> bytes:
    return pickle.dumps(Canary(path), protocol=5)


def sample_message(cls: type[m.Message], rng: random.Random, blob: bytes) -> m.Message:
    """An instance of ``cls`` with plausible or awkward values, ``blob`` in each bytes field."""
    strs = ["", "x", "../../../etc/passwd", "é" * 300, "\udcff", "comp-" + "0" * 40, "a/" * 200]
    kwargs: dict[str, Any] = {}
    for name, hint in m.field_kinds(cls):
        origin = typing.get_origin(hint)
        if hint is bytes:
            kwargs[name] = blob
        elif hint is bool:
            kwargs[name] = rng.random() < 0.5
        elif hint is int:
            kwargs[name] = rng.choice([0, 1, -1, 2**31, 2**63 - 1, -(2**63), 10**30])
        elif hint is float:
            kwargs[name] = rng.choice([0.0, -1.0, 1e308, 5e-324])
        elif hint is str:
            kwargs[name] = rng.choice(strs)
        elif origin is list:
            kwargs[name] = [rng.choice(strs)] if typing.get_args(hint) == (str,) else [1, 2**40]
        else:
            kwargs[name] = {"cpus": 10**9, "nested": {"x": [1, "2"]}}
    return cls(**kwargs)


def stray_frames(rng: random.Random, blob: bytes) -> Iterator[bytes]:
    """Every message a client or node sends after the handshake, framed as no handshake expects: with no MAC,
    with a MAC under a key the node never derived, with the Poly1305 flag, under various serializer names."""
    while True:
        for cls in STRAY_TYPES:
            msg = sample_message(cls, rng, blob)
            key = rng.choice([None, rng.randbytes(32), bytes(32)])
            ser = rng.choice(["", "pickle", "dill", "json"])
            frame = encode_frame(msg, seq=rng.choice([0, 1, 2**64 - 1]), serializer=ser, mac_key=key)
            if key is not None and rng.random() < 0.2:
                flags_at = 5  # after the magic and the version
                frame = frame[:flags_at] + bytes([FLAG_MAC | FLAG_POLY1305]) + frame[flags_at + 1 :]
            yield frame


def random_cases(rng: random.Random) -> Iterator[bytes]:
    """Bytes with no structure at all, or with a little: the magic, a version, a genuine Hello beside them."""
    while True:
        hello = hello_frame(nonce=rng.randbytes(NONCE_SIZE))  # as genuine_hello(), but from the seed
        size = rng.choice([0, 1, 3, 4, 5, 24, 25, 100, rng.randrange(2000), rng.randrange(2000)])
        noise = rng.randbytes(size)
        yield rng.choice([
            noise,
            MAGIC + noise,
            MAGIC + b"\x01" + noise,
            hello + noise,
            noise + hello,
            hello[: rng.randrange(len(hello))] + noise,
        ])


def header_cases(rng: random.Random) -> Iterator[bytes]:
    """Well-formed and nearly well-formed headers with awkward fields (oversized, zero, maximal lengths),
    followed by as much body as they claim, or less, or more."""
    codes = list(m.MESSAGE_TYPES)
    while True:
        version = rng.choice([1, 1, 1, 0, 2, 255])
        flags = rng.choice([0, 0, FLAG_MAC, FLAG_MAC | FLAG_POLY1305, FLAG_POLY1305, rng.randrange(256)])
        msg_type = rng.choice(codes + [0, 8, 9, 99, 65535, rng.randrange(65536)])
        seq = rng.choice([0, 1, 2**63, 2**64 - 1])
        body_len = rng.choice([0, 1, 3, 4, 5, 64, 4096, 65535, 65536, 65537, 2**31, 2**32 - 1, rng.randrange(70000)])
        name = rng.choice([b"", b"pickle", b"dill", b"PICKLE", b"\x00" * 6, rng.randbytes(rng.randrange(256))])
        ser_len = rng.choice([len(name), len(name), rng.randrange(256)])
        header = HEADER.pack(MAGIC, version, flags, msg_type, seq, body_len, ser_len)
        have = rng.choice([body_len, body_len, 0, rng.randrange(body_len + 1), body_len + 40])
        have = min(have, 70000)
        body = _body_like(rng, have)
        mac = rng.choice([b"", rng.randbytes(16), rng.randbytes(32)])
        yield header + name + body + mac


def _body_like(rng: random.Random, size: int) -> bytes:
    """``size`` bytes that start like a body (a JSON length, then JSON) about half of the time."""
    if size < 8 or rng.random() < 0.5:
        return rng.randbytes(size)
    js = rng.choice([b"{}", b'{"nonce":1}', b"[" * 5000, b'{"versions":[1]}', b"\xff\xfe", b'{"a":' * 3000])
    claimed = rng.choice([len(js), len(js), 2**32 - 1, rng.randrange(size)])
    body = claimed.to_bytes(4, "big") + js
    return (body + rng.randbytes(max(0, size - len(body))))[:size]


def hello_frame(**fields: Any) -> bytes:
    """A Hello frame with the given fields (a 32-byte nonce unless given)."""
    fields.setdefault("nonce", os.urandom(NONCE_SIZE))
    return encode_frame(m.Hello(**fields), seq=0, serializer="", mac_key=None)


# --------------------------------------------------------------------------- the node's resources
@contextlib.contextmanager
def rss_peak(proc: psutil.Process, interval: float = 0.1) -> Iterator[list[int]]:
    """Sample ``proc``'s RSS in the background; the list holds the peak so far."""
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def unpickle_records(path: Path) -> list[tuple[int, str]]:
    """(pid, what) of each unpickling the probe recorded."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(int(pid), what) for pid, what in (line.split(" ", 1) for line in lines)]


def probe_env(log: Path) -> dict[str, str]:
    """The environment that loads the unpickle probe into a node (and everything it starts)."""
    path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROBE_DIR), path) if p),
        "DISPY_UNPICKLE_LOG": str(log),
        "DISPY_UNPICKLE_SELFTEST": "1",
    }
