"""The daily service window (``--service_start/--service_stop/--service_end``), as pure functions.

Kept free of clocks and I/O so that every time of day can be tested; the server asks
:meth:`ServiceWindow.state_at` with its own (injectable) clock.

The three times are events on a 24-hour circle: ``start`` opens the node to new jobs, ``stop`` stops
accepting new jobs (running ones go on), ``end`` terminates running jobs too. The state at any moment is
set by the most recent event before it, so a window may wrap around midnight (22:00 to 06:00).
A missing ``start`` means midnight; with only ``start`` given, the window closes at midnight.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

DAY = 24 * 60
"""Minutes in a day."""


class ServiceState(enum.Enum):
    OPEN = "open"
    """Accepting new jobs."""
    STOPPED = "stopped"
    """After ``--service_stop``: no new jobs; running jobs go on."""
    ENDED = "ended"
    """After ``--service_end``: no new jobs, and running jobs are terminated."""


def parse_hhmm(text: str) -> int:
    """Minutes after midnight for ``HH:MM`` (24-hour clock); ValueError names the bad text."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"invalid time {text!r}: use HH:MM on a 24-hour clock, e.g. 18:30")
    return int(match.group(1)) * 60 + int(match.group(2))


def format_hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class ServiceWindow:
    """The configured times in minutes after midnight; all None means always open."""

    start: int | None = None
    stop: int | None = None
    end: int | None = None

    def __post_init__(self) -> None:
        for name in ("start", "stop", "end"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < DAY:
                raise ValueError(f"--service_{name} must be a time of day, not minute {value}")
        events = self.events()
        times = [t for t, _ in events]
        if len(set(times)) != len(times):
            raise ValueError("--service_start, --service_stop and --service_end must be different times "
                             "(a missing --service_start means 00:00)")
        if self.stop is not None and self.end is not None:
            start = 0 if self.start is None else self.start
            if (self.end - start) % DAY < (self.stop - start) % DAY:
                raise ValueError(f"--service_end {format_hhmm(self.end)} must come after --service_stop "
                                 f"{format_hhmm(self.stop)} (counting from the start of service)")

    @property
    def active(self) -> bool:
        return not (self.start is None and self.stop is None and self.end is None)

    def events(self) -> list[tuple[int, ServiceState]]:
        """The daily transitions, (minute of day, state it leads to)."""
        if not self.active:
            return []
        start = 0 if self.start is None else self.start
        events = [(start, ServiceState.OPEN)]
        if self.stop is not None:
            events.append((self.stop, ServiceState.STOPPED))
        if self.end is not None:
            events.append((self.end, ServiceState.ENDED))
        if self.stop is None and self.end is None and start != 0:
            events.append((0, ServiceState.STOPPED))  # only a start: serve until midnight
        return events

    def state_at(self, minute_of_day: float) -> ServiceState:
        """The state at ``minute_of_day`` (0 <= m < 1440, fractions allowed): the latest event's."""
        events = self.events()
        if not events:
            return ServiceState.OPEN
        return min(events, key=lambda event: (minute_of_day - event[0]) % DAY)[1]

    def minutes_to_next_change(self, minute_of_day: float) -> float | None:
        """Minutes until the next transition (None if there is none)."""
        events = self.events()
        if not events:
            return None
        return min(((t - minute_of_day) % DAY) or DAY for t, _ in events)


def minute_of_day(hour: int, minute: int, second: float = 0.0) -> float:
    return hour * 60 + minute + second / 60.0
