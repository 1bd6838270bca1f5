"""The daily service window, as pure functions, and the node's reaction to it with an injected clock."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispy_core.node.server import NodeOptions, NodeServer
from dispy_core.node.service import DAY, ServiceState, ServiceWindow, format_hhmm, parse_hhmm
from dispy_core.state import events as ev

minutes = st.integers(min_value=0, max_value=DAY - 1)


@st.composite
def windows(draw: st.DrawFn) -> ServiceWindow:
    """Valid windows: distinct times, stop before end counting from start; any of them may be absent."""
    start = draw(st.none() | minutes)
    base = 0 if start is None else start
    offsets = draw(st.lists(st.integers(min_value=1, max_value=DAY - 1), min_size=2, max_size=2, unique=True))
    stop_offset, end_offset = sorted(offsets)
    stop = (base + stop_offset) % DAY if draw(st.booleans()) else None
    end = (base + end_offset) % DAY if draw(st.booleans()) else None
    return ServiceWindow(start, stop, end)


def test_parse_and_format() -> None:
    assert parse_hhmm("00:00") == 0 and parse_hhmm("9:05") == 545 and parse_hhmm("23:59") == DAY - 1
    assert format_hhmm(545) == "09:05"
    for bad in ("24:00", "12:60", "noon", "12", "-1:00", ""):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_hhmm(bad)


@given(minutes)
def test_no_window_is_always_open(now: int) -> None:
    assert ServiceWindow().state_at(now) is ServiceState.OPEN
    assert ServiceWindow().minutes_to_next_change(now) is None


@given(windows())
def test_each_event_sets_its_state(window: ServiceWindow) -> None:
    for at, state in window.events():
        assert window.state_at(at) is state
        assert window.state_at(at + 0.5) is state  # and it holds until the next event (all a minute apart)


@given(windows(), minutes)
def test_state_holds_until_the_next_change(window: ServiceWindow, now: int) -> None:
    wait = window.minutes_to_next_change(now)
    if not window.active:
        assert wait is None
        return
    assert wait is not None and 0 < wait <= DAY
    state = window.state_at(now)
    for fraction in (0.25, 0.5, 0.99):
        assert window.state_at((now + wait * fraction) % DAY) is state
    after = window.state_at((now + wait) % DAY)
    assert after in {s for t, s in window.events() if t == (now + wait) % DAY}


@given(windows())
def test_before_start_nothing_runs(window: ServiceWindow) -> None:
    if window.start is None or len(window.events()) < 2:
        return
    before = window.state_at((window.start - 0.5) % DAY)
    assert before is (ServiceState.ENDED if window.end is not None else ServiceState.STOPPED)


def test_window_across_midnight() -> None:
    window = ServiceWindow(parse_hhmm("22:00"), parse_hhmm("05:00"), parse_hhmm("06:00"))
    assert window.state_at(parse_hhmm("23:30")) is ServiceState.OPEN
    assert window.state_at(parse_hhmm("02:00")) is ServiceState.OPEN
    assert window.state_at(parse_hhmm("05:30")) is ServiceState.STOPPED
    assert window.state_at(parse_hhmm("12:00")) is ServiceState.ENDED


def test_only_start_serves_until_midnight() -> None:
    window = ServiceWindow(start=parse_hhmm("08:00"))
    assert window.state_at(parse_hhmm("07:59")) is ServiceState.STOPPED
    assert window.state_at(parse_hhmm("08:00")) is ServiceState.OPEN
    assert window.state_at(parse_hhmm("23:59")) is ServiceState.OPEN
    assert ServiceWindow(start=0).state_at(600) is ServiceState.OPEN


@pytest.mark.parametrize(("start", "stop", "end", "message"), [
    ("10:00", "10:00", None, "different times"),
    (None, "00:00", None, "different times"),
    ("08:00", "18:00", "17:00", "must come after --service_stop"),
])
def test_bad_windows(start: str | None, stop: str | None, end: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceWindow(*(parse_hhmm(t) if t else None for t in (start, stop, end)))


def test_node_follows_the_window_with_an_injected_clock() -> None:
    now = [datetime(2024, 5, 1, 9, 0)]
    window = ServiceWindow(parse_hhmm("10:00"), parse_hhmm("17:00"), parse_hhmm("18:00"))
    server = NodeServer(NodeOptions(host="127.0.0.1", cpus=1, service=window), clock=lambda: now[0])
    assert server.apply_service_state() is ServiceState.ENDED
    assert server.avail_cpus == 0 and "service window" in server.not_accepting_reason()
    now[0] = datetime(2024, 5, 1, 10, 0)
    assert server.apply_service_state() is ServiceState.OPEN and server.avail_cpus == 1
    server.set_accepting(False)
    assert server.avail_cpus == 0 and "operator" in server.not_accepting_reason()
    server.set_accepting(True)
    now[0] = datetime(2024, 5, 1, 17, 30)
    assert server.apply_service_state() is ServiceState.STOPPED and server.avail_cpus == 0


def test_service_end_terminates_running_jobs() -> None:
    now = [datetime(2024, 5, 1, 17, 30)]
    window = ServiceWindow(parse_hhmm("10:00"), parse_hhmm("17:00"), parse_hhmm("18:00"))
    server = NodeServer(NodeOptions(host="127.0.0.1", cpus=1, service=window), clock=lambda: now[0])
    cancelled: list[tuple[str, int, float]] = []

    class Executor:
        async def cancel(self, comp_id: str, job_uid: int, grace: float = 5.0) -> bool:
            cancelled.append((comp_id, job_uid, grace))
            return True

    async def scenario() -> None:
        server.executor = Executor()  # type: ignore[assignment]
        server.state.handle(ev.CompOpened("c1", 1))
        server.state.handle(ev.CompReady("c1"))
        server.state.handle(ev.JobArrived("c1", 7, 0.0))
        assert server.apply_service_state() is ServiceState.STOPPED and not cancelled  # running jobs go on
        now[0] = datetime(2024, 5, 1, 18, 0)
        assert server.apply_service_state() is ServiceState.ENDED
        await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert cancelled == [("c1", 7, 0.0)]


def test_zombie_detection_is_on_by_default_as_in_the_original() -> None:
    from dispy_core.node.cli import options_from_args, parse_args

    args, parser = parse_args(["-i", "127.0.0.1"])
    assert options_from_args(args, parser).zombie_interval == 60.0
    args, parser = parse_args(["-i", "127.0.0.1", "--zombie_interval", "0"])
    assert options_from_args(args, parser).zombie_interval == 0.0  # 0 still turns it off
    assert NodeOptions().zombie_interval == 60.0
