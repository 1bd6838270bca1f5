"""ArbiterState: which computation's waiting job takes a free CPU slot, when dispyscheduler's computations share nodes.

Pure, like ``state.cluster``: snapshots in, decisions out, no I/O and no clock. ``dispyscheduler`` runs one
``ClusterState`` per computation; each would fill every node it is set up on. This file decides between them;
the driver (``scheduler/arbiter.py``) builds the snapshots and carries the decisions out.

- **Admission.** Computations are admitted first come, first served (in the order they were set up). One
  created with ``exclusive=True`` is admitted only when every computation before it has closed; while it
  waits or runs, the computations behind it wait. A computation not admitted gets no slot: its jobs wait
  at the scheduler (its nodes are set up for it all the same, so it starts at once when admitted).
- **Slots.** A node has ``slots`` (its CPUs times the pipeline: one job running and one waiting per CPU)
  shared by every computation; the free ones are those no computation's job holds now.
- **Choice.** Each free slot, node by node, goes to the computation the policy (``interfaces.Policy``, a
  ``dispy.policy`` plugin) chooses among the admitted ones with a job waiting and room at that node. The
  views are updated after each choice (one job fewer waiting, one more in flight, served last), so a policy
  choosing slot by slot sees what it already gave. An answer naming no candidate leaves the node's slots
  free until the next decision: a faulty policy cannot overfill a node.
- **Grants.** A decision replaces every computation's grants: ``{comp_id: {node_id: jobs}}``. A computation's
  scheduler plugin is shown only its granted slots (:class:`Gate`), and each job sent uses one up.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dispy_core.interfaces import ClusterView, JobView, NodeLoad, Policy, Scheduler

__all__ = ["ArbiterState", "ClusterLoad", "Gate", "Grants"]

Grants = dict[str, dict[str, int]]
"""comp_id -> node_id -> jobs it may send there now."""


@dataclass(frozen=True, slots=True)
class ClusterLoad:
    """One computation now, as its ``ClusterState`` says (built by the driver)."""

    comp_id: str
    pending: int
    """Jobs waiting at the scheduler."""
    waiting: tuple[float, ...] = ()
    """Submit times of its first waiting jobs, oldest first (no more than the slots that could be free)."""
    in_flight: Mapping[str, int] = field(default_factory=dict)
    """node_id -> its jobs at that node (running or waiting there)."""
    room: Mapping[str, int] = field(default_factory=dict)
    """node_id -> jobs more its own state would send there (its capacity, refusals and closing nodes)."""
    jobs_done: int = 0


@dataclass(slots=True)
class _Entry:
    comp_id: str
    name: str
    order: int
    created: float
    exclusive: bool
    served: int = 0


class ArbiterState:
    """The computations in arrival order, the policy, and who was served when; see the module docstring."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.clusters: dict[str, _Entry] = {}
        self._arrivals = itertools.count(1)
        self._serves = 0

    # ------------------------------------------------------------------ computations come and go
    def arrive(self, comp_id: str, name: str, exclusive: bool, time: float) -> None:
        if comp_id not in self.clusters:
            self.clusters[comp_id] = _Entry(comp_id, name, next(self._arrivals), time, exclusive)

    def leave(self, comp_id: str) -> None:
        self.clusters.pop(comp_id, None)

    def admitted(self) -> list[str]:
        """The computations that may run jobs now, in arrival order (see "Admission")."""
        admitted: list[str] = []
        for entry in self.clusters.values():  # dicts keep arrival order
            if entry.exclusive:
                if not admitted:
                    admitted.append(entry.comp_id)
                break
            admitted.append(entry.comp_id)
        return admitted

    def waiting_behind(self, comp_id: str) -> str | None:
        """The exclusive computation ``comp_id`` waits for (itself if it waits for others), else None."""
        admitted = self.admitted()
        if comp_id in admitted or comp_id not in self.clusters:
            return None
        exclusive = next(e.comp_id for e in self.clusters.values() if e.exclusive)
        return exclusive

    # ------------------------------------------------------------------ deciding
    def decide(self, loads: Sequence[ClusterLoad], slots: Mapping[str, int]) -> Grants:
        """Hand out every node's free slots (``slots``: node_id -> slots of the node); see "Choice"."""
        used: collections.Counter[str] = collections.Counter()
        for load in loads:
            used.update(load.in_flight)
        admitted = set(self.admitted())
        views: dict[str, ClusterView] = {}
        waiting: dict[str, collections.deque[float]] = {}
        room: dict[str, dict[str, int]] = {}
        for load in loads:
            entry = self.clusters.get(load.comp_id)
            if entry is None or load.comp_id not in admitted or load.pending <= 0:
                continue
            waiting[load.comp_id] = collections.deque(load.waiting)
            room[load.comp_id] = dict(load.room)
            views[load.comp_id] = ClusterView(
                entry.comp_id, entry.name, entry.order, entry.created, load.pending,
                waiting[load.comp_id][0] if load.waiting else float("inf"), sum(load.in_flight.values()),
                entry.served, load.jobs_done, entry.exclusive)
        grants: Grants = {}
        for node_id in sorted(slots):
            free = slots[node_id] - used[node_id]
            while free > 0:
                candidates = [view for comp_id, view in views.items()
                              if view.pending > 0 and room[comp_id].get(node_id, 0) > 0]
                if not candidates:
                    break
                chosen = self.policy.choose(candidates, node_id)
                if chosen is None or not any(view.comp_id == chosen for view in candidates):
                    break
                free -= 1
                self._serves += 1
                self.clusters[chosen].served = self._serves
                room[chosen][node_id] -= 1
                node_grants = grants.setdefault(chosen, {})
                node_grants[node_id] = node_grants.get(node_id, 0) + 1
                views[chosen] = self._served(views[chosen], waiting[chosen])
        return grants

    def _served(self, view: ClusterView, waiting: collections.deque[float]) -> ClusterView:
        if waiting:
            waiting.popleft()
        return dataclasses.replace(view, pending=view.pending - 1, in_flight=view.in_flight + 1,
                                   served=self._serves, next_submit=waiting[0] if waiting else view.next_submit)


class Gate:
    """A computation's scheduler plugin, shown only the slots the arbiter granted (each job sent uses one)."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.name = inner.name
        self.grants: dict[str, int] = {}

    def node_added(self, node: NodeLoad) -> None:
        self.inner.node_added(node)

    def node_removed(self, node_id: str) -> None:
        self.grants.pop(node_id, None)
        self.inner.node_removed(node_id)

    def job_done(self, node_id: str, run_time: float) -> None:
        self.inner.job_done(node_id, run_time)

    def assign(self, pending: Sequence[JobView], nodes: Sequence[NodeLoad]) -> list[tuple[int, str]]:
        shown = []
        for node in nodes:
            granted = min(node.free, self.grants.get(node.node_id, 0))
            if granted > 0:
                shown.append(dataclasses.replace(node, capacity=node.busy + granted))
        if not shown:
            return []
        pairs = []
        for uid, node_id in self.inner.assign(pending, shown) or ():
            if self.grants.get(node_id, 0) > 0:  # a plugin answering outside what it was shown gets nothing
                self.grants[node_id] -= 1
                pairs.append((uid, node_id))
        return pairs
