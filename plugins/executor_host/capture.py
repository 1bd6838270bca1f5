"""A job's stdout and stderr: what it writes to file descriptors 1 and 2, not only what it prints.

Each job process gets two pipes to its host besides its argument and result pipes. While a job runs,
they are its fds 1 and 2 (:class:`FdCapture`), so ``print``, ``os.write(1, ...)``, C extensions and the
programs the job starts (they inherit the descriptors) all land there, in the order written. Between
jobs, fds 1 and 2 are the node's log again. The host reads the pipes as data comes (a job that writes
much never blocks on a full pipe) and keeps the first :data:`OUTPUT_CAP` bytes of each stream, counting
the rest (:class:`Captured`).

The host knows a job's output is complete when its result arrives: before writing the result, the
job process flushed its streams and ended (and reaped) every process it started, so every byte they
wrote is already in the pipes, and the host reads them dry. Without the pipes (a job run outside a
host, in tests), :class:`StringCapture` keeps the original's ``print``-only capture.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

OUTPUT_CAP = 16 * 1024 * 1024
"""stdout/stderr beyond this many bytes are cut (a note says so) to keep the result frame bounded."""

TRUNCATED = b"\n[output truncated by dispynode]\n"


def capped(data: bytes) -> bytes:
    """``data`` cut at :data:`OUTPUT_CAP`, with the note."""
    return data[:OUTPUT_CAP] + TRUNCATED if len(data) > OUTPUT_CAP else data


class Captured:
    """The host's copy of one stream of one job: the first :data:`OUTPUT_CAP` bytes; the rest counted."""

    __slots__ = ("parts", "size", "dropped")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = OUTPUT_CAP - self.size
        if room <= 0:
            self.dropped += len(data)
            return
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        self.parts.append(data)
        self.size += len(data)

    def take(self, before: bytes = b"") -> bytes:
        """All of it (after ``before``, what the job process itself sent), capped; then empty again."""
        data = b"".join([bytes(before), *self.parts]) if before else b"".join(self.parts)
        truncated = self.dropped > 0 or len(data) > OUTPUT_CAP
        self.parts, self.size, self.dropped = [], 0, 0
        return data[:OUTPUT_CAP] + TRUNCATED if truncated else data


class FdCapture:
    """The job process's side: fds 1 and 2 point at the pipes to the host while a job runs."""

    __slots__ = ("out_fd", "err_fd", "saved", "streams", "_before")

    def __init__(self, out_fd: int, err_fd: int) -> None:
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.saved = (-1, -1)  # what fds 1 and 2 were (the node's log), restored between jobs
        self.streams: tuple[Any, Any] | None = None
        self._before: tuple[Any, Any] = (None, None)

    def begin(self) -> None:
        if self.saved[0] < 0:
            self.saved = (os.dup(1), os.dup(2))
        os.dup2(self.out_fd, 1)
        os.dup2(self.err_fd, 2)
        if self.streams is None or self.streams[0].closed or self.streams[1].closed:
            # like a Python whose stdout is a pipe: stdout block-buffered, stderr line-buffered
            self.streams = (_text(1, line_buffering=False), _text(2, line_buffering=True))
        self._before = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self.streams

    def end(self) -> tuple[bytes, bytes]:
        """Flush, put everything back; nothing to return: the host has the bytes."""
        for stream in (sys.stdout, sys.stderr, *(self.streams or ())):
            try:
                stream.flush()
            except Exception:  # a stream the job closed or replaced with something odd
                pass
        if self._before[0] is not None:  # (begin may have failed half way)
            sys.stdout, sys.stderr = self._before
        self._before = (None, None)
        if self.saved[0] >= 0:
            os.dup2(self.saved[0], 1)
            os.dup2(self.saved[1], 2)
        return b"", b""


class StringCapture:
    """Capture of ``print`` only (no pipes to a host): ``sys.stdout``/``sys.stderr`` into strings."""

    __slots__ = ("_before", "_out", "_err")

    def __init__(self) -> None:
        self._before: tuple[Any, Any] = (None, None)
        self._out = io.StringIO()
        self._err = io.StringIO()

    def begin(self) -> None:
        self._before = (sys.stdout, sys.stderr)
        self._out, self._err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = self._out, self._err

    def end(self) -> tuple[bytes, bytes]:
        if self._before[0] is not None:
            sys.stdout, sys.stderr = self._before
        return (capped(self._out.getvalue().encode("utf-8", "replace")),
                capped(self._err.getvalue().encode("utf-8", "replace")))


def _text(fd: int, line_buffering: bool) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                            line_buffering=line_buffering)
