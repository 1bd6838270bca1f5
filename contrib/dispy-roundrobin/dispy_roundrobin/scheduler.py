"""Hand jobs to nodes with room in turn, ignoring how loaded or how fast each one is."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from dispy_core.interfaces import JobView, NodeLoad
from dispy_core.status import JobStatus


class RoundRobinScheduler:
    """Cycle over nodes with free room in ``node_id`` order.

    The position is remembered as the last chosen ``node_id`` rather than an index, so the cycle stays
    fair when nodes join, leave or are reordered between calls. A pinned job goes only to its node and
    does not move the cycle.
    """

    name = "roundrobin"

    def __init__(self) -> None:
        self._last: str | None = None

    def node_added(self, node: NodeLoad) -> None:
        pass

    def node_removed(self, node_id: str) -> None:
        pass  # the cycle goes on from the next id, whether or not the last one is still there

    def job_done(self, node_id: str, run_time: float) -> None:
        pass

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        room = {node.node_id: node.free for node in nodes if node.free > 0}
        ids = sorted(room)
        assigned: list[tuple[int, str]] = []
        for job in pending:
            if not ids:
                break
            if job.pinned is not None:
                if room.get(job.pinned, 0) > 0:
                    room[job.pinned] -= 1
                    assigned.append((job.uid, job.pinned))
                    if not room[job.pinned]:
                        ids.remove(job.pinned)
                continue
            start = 0 if self._last is None else bisect_right(ids, self._last)
            node_id = ids[start % len(ids)]
            room[node_id] -= 1
            if not room[node_id]:
                ids.remove(node_id)
            self._last = node_id
            assigned.append((job.uid, node_id))
        return assigned

    def choose(self, nodes: Sequence[NodeLoad]) -> str | None:
        """The node one more job would go to (None when no node has room); moves the cycle on."""
        pairs = self.assign([JobView(uid=0, status=JobStatus.Created)], nodes)
        return pairs[0][1] if pairs else None
