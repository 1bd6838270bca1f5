"""``coalesce``: the same bytes in the same order, small runs joined, large pieces passed on untouched."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispy_core.buffers import coalesce, nbytes


@given(st.lists(st.binary(max_size=40), max_size=12), st.integers(1, 32), st.booleans())
def test_coalesce_keeps_bytes_and_order(pieces: list[bytes], large: int, views: bool) -> None:
    given_pieces = [memoryview(p) if views else p for p in pieces]
    out = coalesce(given_pieces, large)
    assert b"".join(out) == b"".join(pieces)
    big = [p for p in given_pieces if nbytes(p) >= large]
    assert [p for p in out if any(p is b for b in big)] == big  # large pieces: the same objects, in order
    for a, b in zip(out, out[1:], strict=False):  # never two small buffers side by side
        assert nbytes(a) >= large or nbytes(b) >= large
