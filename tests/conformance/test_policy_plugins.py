"""Every installed ``dispy.policy`` plugin (dispyscheduler's policy between computations) keeps the contract.

Parametrized from the entry points, so a third-party policy installed here (contrib/dispy-smallfirst) is checked
by the same tests as the built-in ones.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

from dispy_core.config import Config
from dispy_core.interfaces import ClusterView, Policy
from dispy_core.state.arbiter import ArbiterState, ClusterLoad


def _entry_points() -> list[Any]:
    eps = sorted(importlib.metadata.entry_points(group="dispy.policy"), key=lambda ep: ep.name)
    return [pytest.param(ep, id=ep.name) for ep in eps]


def _views(count: int) -> list[ClusterView]:
    return [ClusterView(f"c{i}", f"c{i}", i + 1, 100.0 + i, pending=3 - i % 3, next_submit=200.0 - i,
                        in_flight=i % 2, served=(i * 7) % 5) for i in range(count)]


@pytest.mark.parametrize("ep", _entry_points())
def test_policy_plugin_conforms(ep: Any) -> None:
    module = ep.load()
    make = getattr(module, "dispy_make_policy", None)
    assert make is not None, f"{ep.value} has no dispy_make_policy hook"
    assert make(config=Config(role="scheduler"), name="no-such-policy") is None
    policy = make(config=Config(role="scheduler", policy=ep.name), name=ep.name)
    assert isinstance(policy, Policy) and policy.name == ep.name
    for count in (1, 2, 5):
        views = _views(count)
        chosen = policy.choose(views, "node")
        assert chosen is None or chosen in {view.comp_id for view in views}, f"{ep.name} chose {chosen!r}"
        assert policy.choose(views, "node") == chosen, f"{ep.name} is not a function of its arguments"
    # driven by the arbiter: never more than the free slots, only to computations that asked
    state = ArbiterState(policy)
    for i in range(3):
        state.arrive(f"c{i}", f"c{i}", False, 100.0 + i)
    loads = [ClusterLoad(f"c{i}", 4, tuple([100.0 + i] * 4), {}, {"n": 4, "m": 4}) for i in range(3)]
    grants = state.decide(loads, {"n": 4, "m": 2})
    assert sum(sum(per_node.values()) for per_node in grants.values()) <= 6
    assert set(grants) <= {"c0", "c1", "c2"}
