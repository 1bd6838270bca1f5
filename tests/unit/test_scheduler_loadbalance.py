"""The loadbalance scheduler: least busy/cpus ratio among free nodes, deterministic ties, None if full."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dispy_core.config import Config
from dispy_core.interfaces import NodeLoad, Scheduler
from dispy_plugins.scheduler_loadbalance import hooks
from dispy_plugins.scheduler_loadbalance.scheduler import LoadBalanceScheduler


@st.composite
def node_loads(draw: st.DrawFn) -> list[NodeLoad]:
    ids = draw(st.lists(st.text("abcdefgh0123456789", min_size=1, max_size=6), unique=True, max_size=12))
    nodes = []
    for node_id in ids:
        cpus = draw(st.integers(1, 64))
        busy = draw(st.integers(0, cpus))
        avg = draw(st.floats(0, 1000, allow_nan=False))
        nodes.append(NodeLoad(node_id, cpus, busy, draw(st.integers(0, 10**6)), avg))
    return nodes


def ratio(node: NodeLoad) -> float:
    return node.busy / node.cpus


def test_hook_returns_a_scheduler() -> None:
    scheduler = hooks.dispy_make_scheduler(config=Config())
    assert isinstance(scheduler, LoadBalanceScheduler)
    assert isinstance(scheduler, Scheduler)


@given(node_loads())
def test_never_picks_a_full_node(nodes: list[NodeLoad]) -> None:
    chosen = LoadBalanceScheduler().choose(nodes)
    if chosen is not None:
        node = next(n for n in nodes if n.node_id == chosen)
        assert node.busy < node.cpus


@given(node_loads())
def test_none_iff_all_full(nodes: list[NodeLoad]) -> None:
    chosen = LoadBalanceScheduler().choose(nodes)
    assert (chosen is None) == all(n.busy >= n.cpus for n in nodes)


@given(node_loads())
def test_picks_a_least_loaded_node(nodes: list[NodeLoad]) -> None:
    chosen = LoadBalanceScheduler().choose(nodes)
    free = [n for n in nodes if n.busy < n.cpus]
    if free:
        node = next(n for n in nodes if n.node_id == chosen)
        assert ratio(node) == min(ratio(n) for n in free)


@given(node_loads(), st.randoms(use_true_random=False))
def test_order_of_nodes_does_not_matter(nodes: list[NodeLoad], rnd: object) -> None:
    shuffled = list(nodes)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert LoadBalanceScheduler().choose(nodes) == LoadBalanceScheduler().choose(shuffled)


def test_ties_fewer_busy_then_faster_then_id() -> None:
    choose = LoadBalanceScheduler().choose
    # equal ratio 1/2: the one with fewer busy CPUs
    assert choose([NodeLoad("big", 8, 4), NodeLoad("small", 2, 1)]) == "small"
    # equal ratio and busy: the faster one
    slow, fast = NodeLoad("slow", 4, 1, avg_job_time=3.0), NodeLoad("fast", 4, 1, avg_job_time=1.0)
    assert choose([slow, fast]) == "fast"
    # all equal: the smallest id
    assert choose([NodeLoad("n2", 4, 0), NodeLoad("n1", 4, 0), NodeLoad("n3", 4, 0)]) == "n1"


def test_examples() -> None:
    choose = LoadBalanceScheduler().choose
    assert choose([]) is None
    assert choose([NodeLoad("a", 2, 2), NodeLoad("b", 1, 1)]) is None
    assert choose([NodeLoad("a", 4, 3), NodeLoad("b", 2, 1), NodeLoad("c", 8, 8)]) == "b"
    # a node without CPUs is never free
    assert choose([NodeLoad("zero", 0, 0), NodeLoad("one", 1, 0)]) == "one"
