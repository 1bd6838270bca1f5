"""Earliest-finish-first: dispy's default policy, weighted by each node's CPUs and observed job times.

A job given to a node with ``busy`` jobs in flight on ``cpus`` CPUs waits for ``busy // cpus`` rounds of
that node's jobs, then runs one: it should finish after ``(busy // cpus + 1) * avg_job_time``. Each
pending job goes, in order, to the node where that estimate is smallest, counting the jobs already
given out in the same call. A node not measured yet counts as fastest (estimate 0), so it gets tried;
ties go to the lower ``busy / cpus``, then to the smaller ``node_id``, so equal snapshots always give
the same answer.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from dispy_core.interfaces import JobView, NodeLoad
from dispy_core.status import JobStatus

__all__ = ["LoadBalanceScheduler"]

_Key = tuple[float, float, str]


class _Measured:
    """Run times the scheduler was told of (``job_done``), for nodes whose snapshot has none."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0


class LoadBalanceScheduler:
    """Give each pending job to the node where it would finish first (see the module docstring)."""

    name = "loadbalance"

    def __init__(self) -> None:
        self._measured: dict[str, _Measured] = {}

    # ------------------------------------------------------------------ told what happens
    def node_added(self, node: NodeLoad) -> None:
        self._measured[node.node_id] = _Measured()

    def node_removed(self, node_id: str) -> None:
        self._measured.pop(node_id, None)

    def job_done(self, node_id: str, run_time: float) -> None:
        measured = self._measured.setdefault(node_id, _Measured())
        if run_time >= 0:
            measured.count += 1
            measured.total += run_time

    # ------------------------------------------------------------------ deciding
    def _avg(self, node: NodeLoad) -> float:
        """The snapshot's mean job time, else the mean of the run times ``job_done`` reported."""
        if node.avg_job_time > 0:
            return node.avg_job_time
        measured = self._measured.get(node.node_id)
        return measured.total / measured.count if measured is not None and measured.count else 0.0

    @staticmethod
    def _key(node: NodeLoad, avg: float, given: int) -> _Key:
        busy, cpus = node.busy + given, max(node.cpus, 1)
        return ((busy // cpus + 1) * avg, busy / cpus, node.node_id)

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        """``(uid, node_id)`` pairs, never more per node than its ``free`` slots; a pinned job goes
        only to its own node. O(nodes + pending * log nodes)."""
        if not pending:
            return []
        by_id = {node.node_id: node for node in nodes if node.free > 0}
        if not by_id:
            return []
        if len(by_id) == 1:  # the common case on a small cluster: no estimate to compare
            [(node_id, only)] = by_id.items()
            room = only.free
            return [(job.uid, node_id) for job in pending if job.pinned in (None, node_id)][:room]
        avg = {node_id: self._avg(node) for node_id, node in by_id.items()}
        given = dict.fromkeys(by_id, 0)
        # Heap of (key, node_id) over nodes with room; an entry is stale when its key no longer matches
        # what the node's given count says (after a pinned job went there): it is re-pushed, not used.
        heap = [(self._key(node, avg[node_id], 0), node_id) for node_id, node in by_id.items()]
        heapq.heapify(heap)
        assigned: list[tuple[int, str]] = []
        for job in pending:
            if job.pinned is not None:
                node = by_id.get(job.pinned)
                if node is not None and given[job.pinned] < node.free:
                    given[job.pinned] += 1
                    assigned.append((job.uid, job.pinned))
                continue
            while heap:
                key, node_id = heap[0]
                node = by_id[node_id]
                if given[node_id] >= node.free:
                    heapq.heappop(heap)
                    continue
                current = self._key(node, avg[node_id], given[node_id])
                if current != key:
                    heapq.heapreplace(heap, (current, node_id))
                    continue
                given[node_id] += 1
                assigned.append((job.uid, node_id))
                heapq.heapreplace(heap, (self._key(node, avg[node_id], given[node_id]), node_id))
                break
            else:
                # No node has room left; only pinned jobs to nodes with room could still be placed,
                # and every node with room is in the heap, so there are none.
                break
        return assigned

    def choose(self, nodes: Sequence[NodeLoad]) -> str | None:
        """The node one more job would go to (None when no node has room)."""
        pairs = self.assign([JobView(uid=0, status=JobStatus.Created)], nodes)
        return pairs[0][1] if pairs else None
