"""Framing between the node and a computation host, and between a host and its job processes.

A frame is ``u32 body_len | u16 n_blobs | u32 json_len | n_blobs * u32 blob_len | JSON | blobs``.
The JSON object carries small typed fields (``"op"`` names the message); user data (arguments,
results, output, files) travels as raw blobs that the node never deserializes. Nothing here
evaluates or unpickles anything, and a declared size above the bound is refused before allocation,
so a misbehaving host (it runs user code) can at worst break its own computation.
"""

from __future__ import annotations

import collections
import itertools
import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from dispy_core import wirejson
from dispy_core.buffers import coalesce, nbytes
from dispy_core.errors import IPCError  # raised here; ipc.IPCError keeps working

DEFAULT_MAX_FRAME = 256 * 1024 * 1024
"""Bound of one frame's body; a config may set ``executor.max_frame``."""

_LEN = struct.Struct("!I")
_PREFIX = struct.Struct("!IHI")

Frame = tuple[dict[str, Any], list[bytes]]


Buffer = bytes | bytearray | memoryview

LARGE = 65536
"""A blob this large is written from where it is (``writev``), not copied into a frame first."""


def encode(header: dict[str, Any], blobs: Sequence[Buffer] = ()) -> bytes:
    """One frame as bytes; ``header`` must be JSON-able."""
    return b"".join(encode_parts(header, blobs))


def encode_parts(header: dict[str, Any], blobs: Sequence[Buffer] = ()) -> list[Buffer]:
    """One frame as buffers to write in order: small parts joined, large blobs as they are."""
    head = wirejson.dumps(header).encode("ascii")
    n = len(blobs)
    lens = [nbytes(b) for b in blobs]
    body_len = 6 + 4 * n + len(head) + sum(lens)
    small: list[Buffer] = [_PREFIX.pack(body_len, n, len(head))]
    if n:
        small.append(struct.pack(f"!{n}I", *lens))
    small.append(head)
    return coalesce([*small, *blobs], LARGE)




class FrameReader:
    """Incremental decoder: feed it bytes as they arrive, get complete frames back.

    A large frame's pieces are kept as they arrive and joined once, when it is complete. With
    ``views``, its large blobs are then read-only views of that one copy (for a process that only
    passes them on, or unpickles them), not copies of their own.
    """

    __slots__ = ("_buf", "_max", "_views", "_chunks", "_missing")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, views: bool = False) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._views = views
        self._chunks: list[Any] = []  # a large frame being collected (its first chunk starts it)
        self._missing = 0  # bytes that frame still lacks

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        frames: list[Frame] = []
        if isinstance(data, bytes):
            view = memoryview(data)  # immutable: its slices may be kept without copying
        else:
            view = memoryview(bytes(data))  # the caller may reuse its buffer
        if self._chunks:
            view = self._collect(view, frames)
            if not view:
                return frames
        buf = self._buf
        if buf:  # a partial small frame waits: continue it in the buffer
            buf += view
            src: Any = buf
        else:
            src = view
        pos = 0
        end = len(src)
        while end - pos >= 4:
            (body_len,) = _LEN.unpack_from(src, pos)
            if body_len > self._max:
                raise IPCError(f"frame of {body_len} bytes exceeds the bound of {self._max} bytes")
            if end - pos - 4 < body_len:
                if body_len >= LARGE:  # collect the rest in chunks: no growing buffer, one join
                    self._chunks = [bytes(src[pos:]) if src is buf else src[pos:]]
                    self._missing = 4 + body_len - (end - pos)
                    pos = end
                break
            frames.append(_decode_body(memoryview(src)[pos + 4:pos + 4 + body_len], False))
            pos += 4 + body_len
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        return frames

    def _collect(self, data: memoryview, frames: list[Frame]) -> memoryview:
        """Add ``data`` to the large frame; once complete, decode it; return what follows it."""
        take = min(self._missing, len(data))
        self._chunks.append(data[:take])
        self._missing -= take
        if self._missing:
            return data[:0]
        whole = b"".join(self._chunks)
        self._chunks = []
        frames.append(_decode_body(memoryview(whole)[4:], self._views))
        return data[take:]

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf) + sum(len(c) for c in self._chunks)


def _decode_body(body: memoryview, views: bool) -> Frame:
    try:
        if len(body) < 6:
            raise IPCError("frame body shorter than its fixed part")
        n, json_len = struct.unpack_from("!HI", body, 0)
        pos = 6 + 4 * n
        if pos + json_len > len(body):
            raise IPCError("frame header length exceeds the frame")
        lens = struct.unpack_from(f"!{n}I", body, 6) if n else ()
        if pos + json_len + sum(lens) != len(body):
            raise IPCError("frame blob lengths do not add up to the frame length")
        try:
            header = wirejson.loads(bytes(body[pos:pos + json_len]).decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise IPCError(f"frame header is not valid JSON: {exc}") from None
        if not isinstance(header, dict) or not isinstance(header.get("op"), str):
            raise IPCError("frame header is not an object with a string 'op'")
        pos += json_len
        blobs: list[Any] = []
        for size in lens:
            if views and size >= LARGE:  # body views an immutable bytes object: safe to hand out
                blobs.append(body[pos:pos + size].toreadonly())
            else:
                blobs.append(bytes(body[pos:pos + size]))
            pos += size
        return header, blobs
    finally:
        if not views:
            body.release()


def close_quietly(fds: Iterable[int]) -> None:
    """Close each descriptor, ignoring those already closed (a new process dropping what it inherited)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux


def enlarge_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Let one pipe hold a whole 1 MB argument: 16x fewer writes, reads and context switches than the
    default 64 KiB (Linux only; elsewhere, and above the system's pipe-max-size, a no-op)."""
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except (ImportError, OSError):
        pass


def write_all(fd: int, data: Buffer | list[Buffer]) -> None:
    """Blocking write of everything (the fd must be in blocking mode); a list is written with
    ``writev``, without joining it first."""
    if isinstance(data, list):
        if len(data) == 1:
            data = data[0]
        else:
            _writev_all(fd, data)
            return
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


WRITEV_MAX = 512
"""Buffers per ``writev`` call: under every system's IOV_MAX (1024 on Linux)."""


def _writev_all(fd: int, parts: list[Buffer]) -> None:
    views = collections.deque(memoryview(p).cast("B") for p in parts if nbytes(p))
    while views:
        written = os.writev(fd, list(itertools.islice(views, WRITEV_MAX)))
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.popleft()
        if written:
            views[0] = views[0][written:]


class BlockingReader:
    """Reads whole frames from a blocking fd, one at a time (job processes, which wait anyway)."""

    __slots__ = ("_fd", "_reader", "_ready")

    def __init__(self, fd: int, max_frame: int = DEFAULT_MAX_FRAME, views: bool = False) -> None:
        self._fd = fd
        self._reader = FrameReader(max_frame, views)
        self._ready: list[Frame] = []

    def read(self) -> Frame | None:
        """The next frame; None at end of stream."""
        while not self._ready:
            chunk = os.read(self._fd, 1 << 20)
            if not chunk:
                return None
            self._ready.extend(self._reader.feed(chunk))
        return self._ready.pop(0)
