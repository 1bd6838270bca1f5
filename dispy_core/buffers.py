"""Buffers for vectored writes: small pieces joined, large ones passed on as they are."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def nbytes(buffer: Any) -> int:
    """Length in bytes of a bytes-like object (a memoryview's ``len`` counts items, not bytes)."""
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def coalesce(pieces: Iterable[Any], large: int) -> list[Any]:
    """``pieces`` in order, runs of pieces under ``large`` bytes joined into one: a frame's small fields
    cost one buffer, and a large payload is never copied just to sit behind its header."""
    out: list[Any] = []
    small: list[Any] = []
    for piece in pieces:
        if nbytes(piece) >= large:
            if small:
                out.append(b"".join(small))
                small = []
            out.append(piece)
        else:
            small.append(piece)
    if small:
        out.append(b"".join(small))
    return out
