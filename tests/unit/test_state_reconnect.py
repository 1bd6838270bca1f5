"""The reconnect schedule: capped exponential backoff for transient failures, none after a failure for good."""

from __future__ import annotations

from dispy_core.state.reconnect import Reconnect


def test_backoff_doubles_up_to_the_cap_and_restarts_after_a_success() -> None:
    plan = Reconnect(first=1.0, cap=4.0)
    plan.failed("a:1", 0.0, "refused")
    assert plan.due(0.5) == [] and plan.due(1.0) == ["a:1"]
    assert plan.due(1.0) == []  # being tried: not handed out twice
    dues = []
    now = 1.0
    for _ in range(4):
        plan.failed("a:1", now, "refused")
        delay = plan.waiting["a:1"].delay
        dues.append(delay)
        now += delay
        assert plan.due(now - 0.01) == [] and plan.due(now) == ["a:1"]
    assert dues == [2.0, 4.0, 4.0, 4.0]
    plan.connected("a:1")
    assert plan.waiting == {}
    plan.failed("a:1", now, "lost")
    assert plan.waiting["a:1"].delay == 1.0


def test_a_failure_for_good_is_not_retried() -> None:
    plan = Reconnect()
    plan.failed("a:1", 0.0, "refused")
    plan.failed("a:1", 1.0, "authentication failed", permanent=True)
    assert plan.due(100.0) == [] and plan.permanent == {"a:1": "authentication failed"}
    assert not plan.all_permanent({"a:1", "b:1"})
    plan.failed("b:1", 1.0, "name does not resolve", permanent=True)
    assert plan.all_permanent({"a:1", "b:1"}) and not plan.all_permanent(set())
    plan.forget("a:1")
    assert not plan.all_permanent({"a:1", "b:1"})
