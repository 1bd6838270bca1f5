"""Throttled log lines: a flood is one line per kind per period, with a count; kinds do not hide each other."""

from __future__ import annotations

import logging

import pytest

from dispy_core.ratelog import Throttled


def test_a_flood_is_one_line_then_a_count(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("dispy_core.ratelog.time.monotonic", lambda: now[0])
    throttled = Throttled(logging.getLogger("t"), period=10.0)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttled.warning("refused %s", "a", key="auth")
        for _ in range(500):
            assert not throttled.warning("refused %s", "b", key="auth")
        assert throttled.warning("closed %s", "c", key="eof")  # another kind is not held back
        now[0] += 10.5
        assert throttled.warning("refused %s", "d", key="auth")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused a", "closed c", "refused d (and 500 more like it in the last 10 s)"]
