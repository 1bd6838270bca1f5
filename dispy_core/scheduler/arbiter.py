"""The scheduler-wide arbiter: carries out ``state.arbiter``'s decisions between the computations' back ends.

Each :class:`~dispy_core.scheduler.backend.Backend` drives the nodes with its own ``ClusterState``, whose
scheduler plugin is wrapped in a :class:`~dispy_core.state.arbiter.Gate`. Whenever a back end's state changes
(a job submitted, a result, a node ready or lost...), the arbiter makes one decision soon after (coalesced on
the loop): snapshots of every back end in, grants out. Each gate's grants are replaced, and a back end given
more than it had is told to dispatch again (``Redispatch``). Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Any

from dispy_core.interfaces import Policy
from dispy_core.state.arbiter import ArbiterState, ClusterLoad

if TYPE_CHECKING:
    from dispy_core.scheduler.backend import Backend

log = logging.getLogger("dispy.scheduler")

__all__ = ["Arbiter"]


class Arbiter:
    """One per dispyscheduler: the back ends in arrival order, and the policy's decisions carried out."""

    def __init__(self, policy: Policy) -> None:
        self.state = ArbiterState(policy)
        self.backends: dict[str, Backend] = {}
        self._scheduled = False
        self._admitted: set[str] = set()
        self.decisions = 0

    @property
    def policy_name(self) -> str:
        return str(getattr(self.state.policy, "name", type(self.state.policy).__name__))

    def join(self, backend: Backend, exclusive: bool, now: float) -> None:
        """A computation is set up: it queues for admission (first come, first served)."""
        self.backends[backend.comp_id] = backend
        self.state.arrive(backend.comp_id, backend.name, exclusive, now)
        if backend.comp_id not in self.state.admitted():
            blocker = self.state.waiting_behind(backend.comp_id)
            log.info("computation %s (%s) waits: %s", backend.name, backend.comp_id,
                     "it is exclusive and other computations are open" if blocker == backend.comp_id else
                     f"exclusive computation {self._name(blocker)} is ahead of it")
        self.changed()

    def leave(self, comp_id: str) -> None:
        """A computation closed (its jobs are gone from the nodes): its slots are free for the others."""
        if self.backends.pop(comp_id, None) is not None:
            self.state.leave(comp_id)
            self.changed()

    def changed(self) -> None:
        """Something a decision depends on changed: decide once, soon (many changes, one decision)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._decide)

    def _decide(self) -> None:
        self._scheduled = False
        self.decisions += 1
        slots: dict[str, int] = {}
        loads = []
        for backend in self.backends.values():
            loads.append(self._load(backend, slots))
        admitted = self.state.admitted()
        for comp_id in admitted:
            if comp_id not in self._admitted and len(self.backends) > 1:
                log.info("computation %s (%s) admitted%s", self._name(comp_id), comp_id,
                         " with the nodes to itself (exclusive)" if self.state.clusters[comp_id].exclusive else "")
        self._admitted = set(admitted)
        grants = self.state.decide(loads, slots)
        for comp_id, backend in list(self.backends.items()):
            new = grants.get(comp_id, {})
            gate = backend.gate
            more = any(count > gate.grants.get(node_id, 0) for node_id, count in new.items())
            gate.grants = new
            if more:
                backend.redispatch()

    @staticmethod
    def _load(backend: Backend, slots: dict[str, int]) -> ClusterLoad:
        """The back end's snapshot; each node's slots are the most any computation was granted there."""
        state = backend.state
        in_flight: dict[str, int] = {}
        room: dict[str, int] = {}
        jobs_done = 0
        for node_id, node in state.nodes.items():
            # Its CPUs times the pipeline, or exactly its CPUs when lowered (set_node_cpus): as ClusterState's capacity.
            own = node.cpus * node.pipeline if node.cpus >= node.granted else node.cpus
            slots[node_id] = max(slots.get(node_id, 0), own)
            jobs_done += node.jobs_done
            if node.busy:
                in_flight[node_id] = node.busy
            if node.accepting and node.busy < node.capacity:
                room[node_id] = node.capacity - node.busy
        limit = sum(room.values())
        waiting = tuple(state.jobs[uid].submit_time for uid in itertools.islice(state.pending, limit))
        return ClusterLoad(backend.comp_id, 0 if state.closing else len(state.pending), waiting, in_flight, room,
                           jobs_done)

    def _name(self, comp_id: Any) -> str:
        backend = self.backends.get(comp_id)
        return backend.name if backend is not None else str(comp_id)

    def status(self) -> list[tuple[str, str, bool]]:
        """(comp_id, name, admitted) of each computation, in arrival order (for logs and tests)."""
        admitted = set(self.state.admitted())
        return [(e.comp_id, e.name, e.comp_id in admitted) for e in self.state.clusters.values()]
