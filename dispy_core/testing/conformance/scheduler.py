"""Conformance of a scheduler plugin: randomized but reproducible cluster histories, invariants on ``assign``.

Each scenario (one ``random.Random(seed)``) adds and removes nodes, submits jobs (a few pinned,
some to nodes that are gone), finishes jobs with run times, and asks ``assign`` what to send where,
passing snapshots the way the cluster state does. A failure names the seed and step, so it replays.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dispy_core.interfaces import JobView, NodeLoad, Scheduler
from dispy_core.status import JobStatus

__all__ = ["check_scheduler"]

NODE_NAMES = [f"10.0.0.{i}:9701" for i in range(1, 9)] + ["node-a", "node-b", "Z"]


@dataclass
class _Node:
    cpus: int
    capacity: int
    speed: float
    running: set[int] = field(default_factory=set)
    jobs_done: int = 0
    total_time: float = 0.0

    def load(self, node_id: str) -> NodeLoad:
        avg = self.total_time / self.jobs_done if self.jobs_done else 0.0
        return NodeLoad(node_id, self.cpus, len(self.running), self.jobs_done, avg, self.capacity)


class _Scenario:
    def __init__(self, factory: Callable[[], Any], seed: int, steps: int) -> None:
        self.rnd = random.Random(seed)
        self.seed = seed
        self.steps = steps
        self.scheduler = factory()
        self.label = f"scheduler {getattr(self.scheduler, 'name', type(self.scheduler).__name__)!r}"
        self.nodes: dict[str, _Node] = {}
        self.pending: list[JobView] = []
        self.running: dict[int, tuple[str, JobView]] = {}
        self.next_uid = 1
        self.step = 0

    def fail(self, what: str) -> AssertionError:
        return AssertionError(f"{self.label} (scenario seed {self.seed}, step {self.step}): {what}")

    def call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.scheduler, method)(*args)
        except Exception as exc:
            raise self.fail(f"{method}() raised {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ events
    def add_node(self) -> None:
        free_names = [name for name in NODE_NAMES if name not in self.nodes]
        if not free_names:
            return
        node_id = self.rnd.choice(free_names)
        cpus = self.rnd.choice([1, 1, 2, 4, 8])
        capacity = self.rnd.choice([0, cpus, 2 * cpus])
        node = self.nodes[node_id] = _Node(cpus, capacity, self.rnd.choice([0.1, 1.0, 1.0, 10.0]))
        self.call("node_added", node.load(node_id))

    def remove_node(self) -> None:
        if not self.nodes:
            return
        node_id = self.rnd.choice(sorted(self.nodes))
        node = self.nodes.pop(node_id)
        self.call("node_removed", node_id)
        for uid in sorted(node.running):  # its jobs are resubmitted, pins included
            _, job = self.running.pop(uid)
            self.pending.append(JobView(uid, JobStatus.Created, pinned=job.pinned, attempts=job.attempts))

    def submit(self) -> None:
        for _ in range(self.rnd.choice([1, 1, 2, 5, 20])):
            pinned = None
            if self.rnd.random() < 0.15:
                pinned = self.rnd.choice(sorted(self.nodes) + ["gone:9701"]) if self.nodes else "gone:9701"
            self.pending.append(JobView(self.next_uid, JobStatus.Created, pinned=pinned, submit_time=self.step))
            self.next_uid += 1

    def finish(self) -> None:
        for uid in self.rnd.sample(sorted(self.running), min(len(self.running), self.rnd.randint(1, 6))):
            node_id, _job = self.running.pop(uid)
            node = self.nodes[node_id]
            node.running.discard(uid)
            run_time = node.speed * self.rnd.uniform(0.5, 1.5)
            node.jobs_done += 1
            node.total_time += run_time
            self.call("job_done", node_id, run_time)

    # ------------------------------------------------------------------ the decision
    def assign(self) -> None:
        ready = [node_id for node_id in self.nodes if self.rnd.random() < 0.9]  # some are not ready yet
        snapshot = [self.nodes[node_id].load(node_id) for node_id in ready]
        self.rnd.shuffle(snapshot)
        pending, nodes = tuple(self.pending), tuple(snapshot)
        pending_arg, nodes_arg = list(pending), list(nodes)
        result = self.call("assign", pending_arg, nodes_arg)
        if tuple(pending_arg) != pending or tuple(nodes_arg) != nodes:
            raise self.fail("assign() changed the sequences it was given (they belong to the cluster state)")
        if not isinstance(result, list):
            raise self.fail(f"assign() returned {type(result).__name__}, not a list of (uid, node_id) pairs")
        self.verify(result, pending, nodes)
        for uid, node_id in result:
            job = next(j for j in self.pending if j.uid == uid)
            self.pending.remove(job)
            self.running[uid] = (node_id, job)
            self.nodes[node_id].running.add(uid)

    def verify(self, result: list[Any], pending: tuple[JobView, ...], nodes: tuple[NodeLoad, ...]) -> None:
        jobs = {job.uid: job for job in pending}
        free = {node.node_id: node.free for node in nodes}
        seen: set[int] = set()
        for pair in result:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise self.fail(f"assign() returned {pair!r}, not a (uid, node_id) pair")
            uid, node_id = pair
            if uid not in jobs:
                raise self.fail(f"assign() gave job {uid!r}, which is not pending (pending: {sorted(jobs)[:20]})")
            if uid in seen:
                raise self.fail(f"assign() gave job {uid} twice")
            seen.add(uid)
            if node_id not in free:
                raise self.fail(f"assign() gave job {uid} to {node_id!r}, which is not among the nodes passed "
                                f"({sorted(free)})")
            pinned = jobs[uid].pinned
            if pinned is not None and node_id != pinned:
                raise self.fail(f"assign() gave job {uid}, pinned to {pinned!r}, to {node_id!r}")
        for node_id, count in Counter(node_id for _uid, node_id in result).items():
            if count > free[node_id]:
                node = next(n for n in nodes if n.node_id == node_id)
                raise self.fail(f"assign() gave {count} jobs to {node_id!r}, which had {free[node_id]} free "
                                f"(cpus={node.cpus}, capacity={node.capacity}, busy={node.busy})")
        if not result and any(free.values()) and any(job.pinned is None for job in pending):
            raise self.fail(f"assign() gave no job although {sum(free.values())} slots are free and "
                            f"{sum(job.pinned is None for job in pending)} unpinned jobs wait (work conservation)")

    # ------------------------------------------------------------------ the history
    def run(self) -> None:
        events = [self.add_node] * 3 + [self.remove_node] + [self.submit] * 3 + [self.finish] * 3
        for step in range(self.steps):
            self.step = step
            if step < 2:
                self.add_node()
            else:
                self.rnd.choice(events)()
            if self.rnd.random() < 0.7:
                self.assign()


def check_scheduler(factory: Callable[[], Scheduler], seeds: Iterable[int] = range(25), steps: int = 80) -> None:
    """Check a scheduler plugin; ``factory()`` must return a fresh scheduler. AssertionError names the fault.

    Checks: the object follows the Scheduler protocol and has a str ``name``; ``assign`` with nothing
    pending or no nodes gives nothing; over randomized histories (nodes joining, leaving, rejoining
    under the same id, not ready, with ``capacity`` above ``cpus``; jobs done with run times; jobs
    pinned, also to nodes that are gone; a node's jobs resubmitted when it leaves) ``assign`` returns a
    list of ``(uid, node_id)`` pairs naming only pending jobs and nodes passed in that call, each job at
    most once, a pinned job only on its node, never more jobs on a node than its ``free`` slots, and
    at least one job whenever a node has a free slot and an unpinned job waits.
    """
    first, second = factory(), factory()
    label = f"scheduler {getattr(first, 'name', type(first).__name__)!r}"
    if first is second:
        raise AssertionError(f"{label}: the factory returned the same object twice (it must make fresh ones)")
    if not isinstance(first, Scheduler):
        raise AssertionError(f"{label}: does not follow the Scheduler protocol "
                             "(name, node_added, node_removed, job_done, assign)")
    if not isinstance(getattr(first, "name", None), str) or not first.name:
        raise AssertionError(f"{label}: name should be a non-empty str")
    nodes = [NodeLoad("a", 2, 0)]
    if first.assign([], nodes) != []:
        raise AssertionError(f"{label}: assign() with no pending job should return []")
    if first.assign([JobView(1, JobStatus.Created)], []) != []:
        raise AssertionError(f"{label}: assign() with no nodes should return []")
    for seed in seeds:
        _Scenario(factory, seed, steps).run()
