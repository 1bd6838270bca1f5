"""The loadbalance scheduler: each job to the node where it would finish first (busy per CPU times the
node's mean job time), never more than a node's free slots, pinned jobs only on their node."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dispy_core.config import Config
from dispy_core.interfaces import JobView, NodeLoad, Scheduler
from dispy_core.status import JobStatus
from dispy_plugins.scheduler_loadbalance import hooks
from dispy_plugins.scheduler_loadbalance.scheduler import LoadBalanceScheduler


@st.composite
def node_loads(draw: st.DrawFn) -> list[NodeLoad]:
    ids = draw(st.lists(st.text("abcdefgh0123456789", min_size=1, max_size=6), unique=True, max_size=12))
    nodes = []
    for node_id in ids:
        cpus = draw(st.integers(0, 16))
        capacity = draw(st.sampled_from([0, cpus, 2 * cpus]))
        busy = draw(st.integers(0, max(capacity, cpus) + 1))
        avg = draw(st.sampled_from([0.0, 0.5, 1.0, 10.0]))
        nodes.append(NodeLoad(node_id, cpus, busy, draw(st.integers(0, 100)), avg, capacity))
    return nodes


def jobs(n: int, start: int = 0, pinned: str | None = None) -> list[JobView]:
    return [JobView(uid, JobStatus.Created, pinned=pinned) for uid in range(start, start + n)]


def estimate(node: NodeLoad, given: int = 0) -> float:
    busy, cpus = node.busy + given, max(node.cpus, 1)
    return (busy // cpus + 1) * node.avg_job_time


def per_node(pairs: list[tuple[int, str]]) -> Counter[str]:
    return Counter(node_id for _uid, node_id in pairs)


def test_hook_returns_a_scheduler() -> None:
    scheduler = hooks.dispy_make_scheduler(config=Config())
    assert isinstance(scheduler, LoadBalanceScheduler)
    assert isinstance(scheduler, Scheduler)


@given(node_loads(), st.integers(0, 40))
def test_free_slots_are_never_exceeded_and_every_slot_is_used(nodes: list[NodeLoad], n: int) -> None:
    pairs = LoadBalanceScheduler().assign(jobs(n), nodes)
    free = {node.node_id: node.free for node in nodes}
    assert all(count <= free[node_id] for node_id, count in per_node(pairs).items())
    assert [uid for uid, _ in pairs] == list(range(len(pairs)))  # in order, each once
    assert len(pairs) == min(n, sum(free.values()))


@given(node_loads())
def test_one_job_goes_where_it_finishes_first(nodes: list[NodeLoad]) -> None:
    chosen = LoadBalanceScheduler().choose(nodes)
    candidates = [node for node in nodes if node.free > 0]
    assert (chosen is None) == (not candidates)
    if candidates:
        node = next(n for n in nodes if n.node_id == chosen)
        assert estimate(node) == min(estimate(n) for n in candidates)


@given(node_loads(), st.integers(1, 30), st.randoms(use_true_random=False))
def test_order_of_nodes_does_not_matter(nodes: list[NodeLoad], n: int, rnd: random.Random) -> None:
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert LoadBalanceScheduler().assign(jobs(n), nodes) == LoadBalanceScheduler().assign(jobs(n), shuffled)


def test_a_slow_node_gets_fewer_jobs() -> None:
    fast = NodeLoad("fast", 2, 0, 10, avg_job_time=1.0, capacity=4)
    slow = NodeLoad("slow", 2, 0, 10, avg_job_time=10.0, capacity=4)
    counts = per_node(LoadBalanceScheduler().assign(jobs(6), [slow, fast]))
    assert counts == {"fast": 4, "slow": 2}
    # the same when the times are only known from job_done (the snapshot says 0.0)
    scheduler = LoadBalanceScheduler()
    for name, run_time in (("fast", 1.0), ("slow", 10.0), ("fast", 1.0)):
        scheduler.job_done(name, run_time)
    unmeasured = [NodeLoad("fast", 2, 0, capacity=4), NodeLoad("slow", 2, 0, capacity=4)]
    assert per_node(scheduler.assign(jobs(6), unmeasured)) == {"fast": 4, "slow": 2}


def test_jobs_follow_cpu_counts() -> None:
    big = NodeLoad("big", 8, 0, 5, avg_job_time=1.0, capacity=16)
    small = NodeLoad("small", 2, 0, 5, avg_job_time=1.0, capacity=4)
    assert per_node(LoadBalanceScheduler().assign(jobs(10), [small, big])) == {"big": 8, "small": 2}
    # six of eight busy still finishes a job sooner than two of two busy
    assert LoadBalanceScheduler().choose([NodeLoad("big", 8, 6, 1, 1.0, 16), NodeLoad("small", 2, 2, 1, 1.0, 4)]) \
        == "big"


def test_a_node_not_measured_yet_is_tried_first() -> None:
    measured = NodeLoad("a", 4, 0, 3, avg_job_time=0.1)
    new = NodeLoad("z", 4, 3)
    assert LoadBalanceScheduler().choose([measured, new]) == "z"


def test_ties_by_busy_per_cpu_then_id() -> None:
    choose = LoadBalanceScheduler().choose
    assert choose([NodeLoad("a", 2, 1), NodeLoad("b", 4, 1)]) == "b"
    assert choose([NodeLoad("n2", 4, 0), NodeLoad("n1", 4, 0), NodeLoad("n3", 4, 0)]) == "n1"
    assert choose([NodeLoad("big", 8, 4), NodeLoad("small", 2, 1)]) == "big"


def test_pinned_jobs_only_on_their_node_and_counted() -> None:
    nodes = [NodeLoad("a", 2, 0), NodeLoad("b", 1, 0)]
    pending = [JobView(1, JobStatus.Created, pinned="b"), JobView(2, JobStatus.Created, pinned="b"),
               JobView(3, JobStatus.Created, pinned="gone"), *jobs(3, start=4)]
    assert LoadBalanceScheduler().assign(pending, nodes) == [(1, "b"), (4, "a"), (5, "a")]


def test_measurements_are_forgotten_with_the_node() -> None:
    scheduler = LoadBalanceScheduler()
    scheduler.node_added(NodeLoad("a", 1, 0))
    scheduler.job_done("a", 50.0)
    assert scheduler.choose([NodeLoad("a", 1, 0), NodeLoad("b", 1, 0, avg_job_time=1.0)]) == "b"
    scheduler.node_removed("a")
    scheduler.node_added(NodeLoad("a", 1, 0))
    assert scheduler.choose([NodeLoad("a", 1, 0), NodeLoad("b", 1, 0, avg_job_time=1.0)]) == "a"


def test_examples() -> None:
    scheduler = LoadBalanceScheduler()
    assert scheduler.assign([], [NodeLoad("a", 1, 0)]) == []
    assert scheduler.assign(jobs(2), []) == []
    assert scheduler.choose([NodeLoad("a", 2, 2), NodeLoad("b", 1, 1)]) is None
    assert scheduler.choose([NodeLoad("a", 4, 3), NodeLoad("b", 2, 1), NodeLoad("c", 8, 8)]) == "b"
    # a node without CPUs (and no capacity) is never free
    assert scheduler.choose([NodeLoad("zero", 0, 0), NodeLoad("one", 1, 0)]) == "one"
