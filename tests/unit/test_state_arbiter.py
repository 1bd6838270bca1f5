"""dispyscheduler's decisions between computations: admission, the built-in policies, grants and the gate.

``ArbiterState.decide(loads, slots) == grants``, as ``ClusterState.handle(event) == instructions``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispy_core.config import Config
from dispy_core.interfaces import ClusterView, JobView, NodeLoad, Policy
from dispy_core.pluginmanager import DispyPluginManager
from dispy_core.state import events as ev
from dispy_core.state.arbiter import ArbiterState, ClusterLoad, Gate
from dispy_core.state.cluster import ClusterState
from dispy_core.status import JobStatus
from dispy_plugins.policy_builtin.policies import EarlyClusterPolicy, FairClusterPolicy, LoadBalancePolicy
from dispy_plugins.scheduler_loadbalance.scheduler import LoadBalanceScheduler

T = 1000.0


def arbiter(policy: Policy, *clusters: tuple[str, bool]) -> ArbiterState:
    state = ArbiterState(policy)
    for i, (comp_id, exclusive) in enumerate(clusters):
        state.arrive(comp_id, f"name-{comp_id}", exclusive, T + i)
    return state


def load(comp_id: str, pending: int, waiting: Sequence[float] = (), in_flight: dict[str, int] | None = None,
         room: dict[str, int] | None = None) -> ClusterLoad:
    return ClusterLoad(comp_id, pending, tuple(waiting), in_flight or {}, room if room is not None else {"n": 8})


# =========================================================================== admission
def test_clusters_are_admitted_first_come_first_served() -> None:
    state = arbiter(LoadBalancePolicy(), ("a", False), ("b", False))
    assert state.admitted() == ["a", "b"]


def test_an_exclusive_cluster_waits_for_running_ones_and_those_behind_it_wait() -> None:
    state = arbiter(LoadBalancePolicy(), ("a", False), ("x", True), ("c", False))
    assert state.admitted() == ["a"]
    assert state.waiting_behind("c") == "x" and state.waiting_behind("x") == "x"
    state.leave("a")
    assert state.admitted() == ["x"]  # the nodes to itself
    state.arrive("d", "d", False, T + 9)
    assert state.admitted() == ["x"]
    state.leave("x")
    assert state.admitted() == ["c", "d"]


def test_an_exclusive_cluster_first_in_line_runs_at_once_and_a_second_one_waits() -> None:
    state = arbiter(LoadBalancePolicy(), ("x", True), ("y", True))
    assert state.admitted() == ["x"]
    state.leave("x")
    assert state.admitted() == ["y"]


def test_a_cluster_not_admitted_gets_no_slot() -> None:
    state = arbiter(LoadBalancePolicy(), ("a", False), ("x", True))
    grants = state.decide([load("a", 1, [T]), load("x", 5, [T - 50] * 5)], {"n": 4})
    assert grants == {"a": {"n": 1}}  # x's older jobs wait: a was there first


# =========================================================================== the policies
def test_loadbalance_serves_the_earliest_submitted_jobs_first() -> None:
    state = arbiter(LoadBalancePolicy(), ("a", False), ("b", False))
    loads = [load("a", 3, [T + 1, T + 5, T + 6]), load("b", 3, [T + 2, T + 3, T + 4])]
    assert state.decide(loads, {"n": 4}) == {"a": {"n": 1}, "b": {"n": 3}}


def test_fair_cluster_takes_turns_slot_by_slot_however_long_the_queues() -> None:
    state = arbiter(FairClusterPolicy(), ("a", False), ("b", False), ("c", False))
    loads = [load("a", 100, [T] * 100), load("b", 100, [T + 1] * 100), load("c", 1, [T + 2])]
    assert state.decide(loads, {"n": 5}) == {"a": {"n": 2}, "b": {"n": 2}, "c": {"n": 1}}
    # next time a slot frees, the least recently served goes: a was served before b's second turn
    loads = [load("a", 98, [T] * 98, {"n": 2}), load("b", 98, [T + 1] * 98, {"n": 2}),
             load("c", 0, [], {"n": 1})]
    assert state.decide(loads, {"n": 6}) == {"a": {"n": 1}}
    loads[0] = load("a", 97, [T] * 97, {"n": 3})
    assert state.decide(loads, {"n": 7}) == {"b": {"n": 1}}


def test_early_cluster_serves_the_earliest_created_first() -> None:
    state = arbiter(EarlyClusterPolicy(), ("a", False), ("b", False))
    loads = [load("a", 2, [T + 9, T + 9]), load("b", 5, [T] * 5)]
    assert state.decide(loads, {"n": 4}) == {"a": {"n": 2}, "b": {"n": 2}}  # b gets what a cannot use
    loads = [load("a", 9, [T + 9] * 9), load("b", 5, [T] * 5)]
    assert state.decide(loads, {"n": 4}) == {"a": {"n": 4}}


# =========================================================================== slots, room and faulty policies
def test_only_free_slots_are_given_and_every_cluster_in_flight_counts() -> None:
    state = arbiter(LoadBalancePolicy(), ("a", False), ("x", True))
    room = {"n": 8, "m": 8}
    loads = [load("a", 9, [T] * 9, {"n": 3, "m": 1}, room), load("x", 9, [T] * 9, {"n": 1}, room)]
    assert state.decide(loads, {"n": 4, "m": 2}) == {"a": {"m": 1}}


def test_a_cluster_gets_no_more_than_its_room_at_a_node() -> None:
    state = arbiter(EarlyClusterPolicy(), ("a", False), ("b", False))
    loads = [load("a", 9, [T] * 9, room={"n": 1, "m": 0}), load("b", 9, [T] * 9, room={"n": 4, "m": 4})]
    assert state.decide(loads, {"n": 4, "m": 2}) == {"a": {"n": 1}, "b": {"n": 3, "m": 2}}


class Faulty:
    name = "faulty"

    def __init__(self, answer: str | None) -> None:
        self.answer = answer

    def choose(self, clusters: Sequence[ClusterView], node_id: str) -> str | None:
        return self.answer


@pytest.mark.parametrize("answer", [None, "nobody", "b"])
def test_a_policy_naming_no_candidate_leaves_the_slot_free(answer: str | None) -> None:
    state = arbiter(Faulty(answer), ("a", False), ("b", False))
    assert state.decide([load("a", 3, [T] * 3), load("b", 0)], {"n": 4}) == {}


def test_views_are_updated_between_choices() -> None:
    seen: list[tuple[int, int, float]] = []

    class Recorder:
        name = "recorder"

        def choose(self, clusters: Sequence[ClusterView], node_id: str) -> str | None:
            [view] = clusters
            seen.append((view.pending, view.in_flight, view.next_submit))
            return view.comp_id

    state = arbiter(Recorder(), ("a", False))
    assert state.decide([load("a", 3, [T + 1, T + 2, T + 3], {"n": 1})], {"n": 9}) == {"a": {"n": 3}}
    assert seen == [(3, 1, T + 1), (2, 2, T + 2), (1, 3, T + 3)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 4), st.booleans()), min_size=1,
                max_size=5),
       st.integers(1, 8), st.sampled_from([LoadBalancePolicy, FairClusterPolicy, EarlyClusterPolicy]))
def test_grants_never_exceed_free_slots_room_or_pending(specs: list[tuple[int, int, int, bool]], slots: int,
                                                       policy: type) -> None:
    state = ArbiterState(policy())
    loads = []
    for i, (pending, in_flight, room, exclusive) in enumerate(specs):
        state.arrive(f"c{i}", f"c{i}", exclusive, T + i)
        loads.append(load(f"c{i}", pending, [T + i] * pending, {"n": in_flight} if in_flight else {}, {"n": room}))
    grants = state.decide(loads, {"n": slots})
    given_out = sum(g.get("n", 0) for g in grants.values())
    assert given_out <= max(0, slots - sum(s[1] for s in specs))
    admitted = set(state.admitted())
    for i, (pending, _, room, _) in enumerate(specs):
        granted = grants.get(f"c{i}", {}).get("n", 0)
        assert granted <= min(pending, room)
        assert granted == 0 or f"c{i}" in admitted
    # a work-conserving policy leaves no slot free while an admitted cluster could take it
    if given_out < max(0, slots - sum(s[1] for s in specs)):
        for i, (pending, _, room, _) in enumerate(specs):
            if f"c{i}" in admitted:
                assert grants.get(f"c{i}", {}).get("n", 0) == min(pending, room)


# =========================================================================== the gate and the cluster state
def test_the_gate_shows_the_scheduler_only_granted_slots_and_uses_them_up() -> None:
    gate = Gate(LoadBalanceScheduler())
    nodes = [NodeLoad("n", 2, 0, capacity=4), NodeLoad("m", 2, 1, capacity=4)]
    jobs = [JobView(uid, int(JobStatus.Created)) for uid in range(6)]
    assert gate.assign(jobs, nodes) == []
    gate.grants = {"n": 1, "m": 9}
    pairs = gate.assign(jobs, nodes)
    assert sorted(node for _, node in pairs) == ["m", "m", "m", "n"]  # m: only its 3 free places
    assert gate.grants == {"n": 0, "m": 6}


def test_redispatch_sends_what_the_gate_now_allows() -> None:
    gate = Gate(LoadBalanceScheduler())
    state = ClusterState(gate)
    state.handle(ev.NodeReady("n", 2, T))
    state.handle(ev.DiscoveryDone())
    assert [i for i in state.handle(ev.JobSubmitted(1, T)) if isinstance(i, ev.SendJobs)] == []
    state.handle(ev.JobSubmitted(2, T))
    assert state.handle(ev.Redispatch(T)) == []  # nothing granted yet
    gate.grants = {"n": 1}
    assert [i for i in state.handle(ev.Redispatch(T)) if isinstance(i, ev.SendJobs)] == [ev.SendJobs("n", (1,))]
    assert state.handle(ev.Redispatch(T)) == []


# =========================================================================== selection by name
@pytest.mark.parametrize("name, cls", [("loadbalance", LoadBalancePolicy), ("fair_cluster", FairClusterPolicy),
                                       ("early_cluster", EarlyClusterPolicy)])
def test_policies_are_selected_by_name_through_entry_points(name: str, cls: type) -> None:
    policy = DispyPluginManager(Config(role="scheduler", policy=name)).make_policy()
    assert type(policy) is cls and isinstance(policy, Policy) and policy.name == name


def test_dispy_make_policy_returns_none_for_other_names() -> None:
    from dispy_plugins.policy_builtin import hooks

    assert hooks.dispy_make_policy(config=Config(), name="no-such-policy") is None


def test_an_unknown_policy_lists_the_installed_ones() -> None:
    from dispy_core.errors import PluginNotFound

    with pytest.raises(PluginNotFound, match="fair_cluster"):
        DispyPluginManager(Config(role="scheduler", policy="no-such-policy"))


def test_the_site_config_and_environment_choose_the_policy(tmp_path: object) -> None:
    from pathlib import Path

    from dispy_core.config import load_config

    site = Path(str(tmp_path)) / "config.toml"
    site.write_text('[plugins]\npolicy = "early_cluster"\n')
    assert load_config("scheduler", env={"DISPY_CONFIG": str(site)}).policy == "early_cluster"
    assert load_config("scheduler", env={"DISPY_CONFIG": str(site), "DISPY_POLICY": "fair_cluster"}).policy == \
        "fair_cluster"
    assert load_config("scheduler", env={"DISPY_CONFIG": str(site)}, policy="loadbalance").policy == "loadbalance"
    assert load_config("scheduler", env={}).policy == "loadbalance"


def test_the_arbiter_state_is_pure() -> None:
    """Like the rest of ``dispy_core.state``: importing it brings in no I/O, clock or threads."""
    import subprocess
    import sys

    probe = ("import sys; before = set(sys.modules); import dispy_core.state.arbiter; "
             "print('\\n'.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    impure = ("asyncio", "socket", "ssl", "selectors", "threading", "subprocess", "time", "dispy_core.client",
              "dispy_core.scheduler", "dispy_core.pluginmanager")
    assert "dispy_core.state.arbiter" in loaded
    assert [name for name in loaded if name.split(".")[0] in impure or name.startswith(impure)] == []
