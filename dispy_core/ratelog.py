"""A log line that repeats under attack (refused connections, a full fd table) is said once per period,
with how many times it happened meanwhile: a flood of peers never floods the log."""

from __future__ import annotations

import logging
import time

__all__ = ["Throttled"]


class Throttled:
    """``warning(text)`` logs at most once every ``period`` seconds per ``key`` (kinds of event); the next one
    says how many were held back meanwhile."""

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self.logger = logger
        self.period = period
        self._last: dict[str, tuple[float, int]] = {}  # key -> (when logged, held since)

    def warning(self, text: str, *args: object, key: str = "") -> bool:
        """True if it was logged now."""
        now = time.monotonic()
        last, held = self._last.get(key, (0.0, 0))
        if last and now - last < self.period:
            self._last[key] = (last, held + 1)
            return False
        if len(self._last) > 256:  # kinds are few; keep the table small whatever the keys
            self._last.clear()
        self._last[key] = (now, 0)
        suffix = f" (and {held} more like it in the last {self.period:g} s)" if held else ""
        self.logger.warning(text + suffix, *args)
        return True
