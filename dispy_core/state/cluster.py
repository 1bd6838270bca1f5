"""ClusterState: which job goes to which node, and what becomes of jobs when nodes change.

This file answers "how are jobs chosen", "what happens when a node dies" and "when is a job Abandoned".
It is pure: events in (``state.events``), instructions out, no I/O and no clock. The client runs one per
``JobCluster``; ``dispyscheduler`` runs one per computation.

- **Queues.** A submitted job waits in ``pending`` (or, pinned by ``submit_node``, in its node's own
  queue; pinned to a node not found yet, ``parked`` until discovery is done).
- **Capacity.** A node takes ``pipeline`` jobs per CPU in flight (one running, one waiting there, so a
  CPU that frees starts the next job without a round trip), or exactly its CPUs when ``set_node_cpus``
  lowered them below what the node granted. When its jobs prove short, up to ``deep_pipeline`` per CPU:
  about ``QUEUE_SECONDS`` of work waits there per CPU, so that results and jobs travel in batches (one
  write, one wake-up of each process, for many tiny jobs) while a long job never waits behind a deep queue.
  A node with a deep queue is topped up only once it has drained below its low water (its CPUs plus
  half the queue beyond them: ``NodeRecord.has_room``), and then to its capacity at once: jobs go to it
  many in one frame rather than one per result, and its CPUs still never wait. A job sent beyond the
  node's CPUs waits there and stays
  ``Created`` until the node says it started. ``busy`` is the number of jobs in flight: never a counter.
- **Choice.** Pinned jobs go first to their node. Then the scheduler plugin (``interfaces.Scheduler``)
  assigns pending jobs to nodes with room; assignments that name an unknown job or node, a pinned job,
  or a node without room are ignored, so a faulty scheduler cannot overfill a node.
- **Refusals.** A refused job goes back to the front of its queue, and the node that refused it gets no
  more jobs than it holds now (it is shared, not ready or closing), one more with each result it returns
  or each ``Tick``: a refusal never turns into a ping-pong.
- **Lost nodes.** Jobs that only waited there go back to the queue. Running jobs are resubmitted or
  abandoned as ``recover`` (the ``dispy_recover`` hook) decides, by default resubmitted when the cluster
  is ``reentrant``; a job whose node was lost while running it ``allowed_failures`` times is Abandoned,
  whatever is decided (a poison job must not take down every node in turn). A job being cancelled ends
  Cancelled; a pinned job cannot move and is Abandoned.
- **No node.** When no node can run the jobs (every named node failed for good, or none came within the
  cluster's ``node_timeout``), queued jobs end Abandoned with the reason, and so do new ones until a node
  is ready.
- **Cancels.** A queued job is Cancelled at once; a job at a node is cancelled there (``SendCancel``) and
  ends with the node's answer.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dispy_core.interfaces import JobView, NodeLoad, Scheduler
from dispy_core.state import events as ev
from dispy_core.state.job import JobEvent, next_status, result_event
from dispy_core.status import FINAL_JOB_STATES, JobStatus, NodeStatus

__all__ = ["PIPELINE", "ClusterState", "JobRecord", "NodeRecord", "RecoverPolicy"]

PIPELINE = 2
"""Jobs in flight per node CPU: one running and one waiting on the node."""

QUEUE_SECONDS = 0.01
"""With a deep pipeline, the work (by the node's average job time) kept waiting at a node per CPU."""

ALLOWED_FAILURES = 3
"""Times a job may be running on a node that is lost before it is not resubmitted again (Dask's
``allowed_failures``): one poison job cannot take down every node in turn."""

RecoverPolicy = Callable[[JobView, str], str | None]
"""Decides for a job whose node failed: ``"resubmit"``, ``"abandon"`` or None (then ``reentrant`` decides)."""

Out = list[ev.ClusterInstruction]


@dataclass(slots=True)
class JobRecord:
    """What the state knows of one unfinished job."""

    uid: int
    status: JobStatus
    submit_time: float
    pinned: str | None = None
    node_id: str | None = None
    """The node the job is at (sent, waiting or running there); None while queued here."""
    waiting: bool = False
    """At its node but not started: every CPU there was busy when it was sent."""
    attempts: int = 0
    cancelling: bool = False
    losses: int = 0
    """Times a node was lost while running this job."""

    def view(self) -> JobView:
        return JobView(self.uid, int(self.status), self.node_id, self.pinned, self.submit_time, self.attempts,
                       self.losses)


@dataclass(slots=True)
class NodeRecord:
    """A node set up for the computation."""

    node_id: str
    granted: int
    cpus: int
    pipeline: int = PIPELINE
    deep: int = PIPELINE
    """The most jobs per CPU in flight when jobs are short (see the module's "Capacity")."""
    allocated: bool = True
    closing: bool = False
    close_when_drained: bool = False
    terminate: bool = False
    in_flight: dict[int, JobRecord] = field(default_factory=dict)
    pinned: collections.deque[int] = field(default_factory=collections.deque)
    jobs_done: int = 0
    run_time: float = 0.0
    limit: int | None = None
    """Jobs the node held when it last refused one for want of a CPU (it is shared); None: no such bound."""

    @property
    def busy(self) -> int:
        return len(self.in_flight)

    depth: int = 0
    """Jobs per CPU to keep in flight: ``pipeline``, more for short jobs, up to ``deep`` (see :meth:`learn`)."""

    def __post_init__(self) -> None:
        self.depth = self.pipeline

    def learn(self, run_time: float) -> None:
        """A job ended after ``run_time`` s there: the node's figures, and so its depth."""
        self.jobs_done += 1
        self.run_time += run_time
        if self.deep > self.pipeline:
            average = self.run_time / self.jobs_done
            if average * self.deep <= QUEUE_SECONDS:  # (no division: a denormal average would overflow it)
                self.depth = self.deep
            else:
                self.depth = max(self.pipeline, int(QUEUE_SECONDS / average))

    @property
    def full(self) -> int:
        """Jobs in flight that fill the node, before any refusal's bound."""
        return self.cpus * self.depth if self.cpus >= self.granted else self.cpus

    @property
    def capacity(self) -> int:
        """Jobs to keep in flight here (see the module's "Capacity")."""
        full = self.full
        return full if self.limit is None else min(full, self.limit)

    @property
    def has_room(self) -> bool:
        """Whether to send it jobs now: below its capacity, and for a deep queue below its low water."""
        capacity, busy = self.capacity, len(self.in_flight)
        if capacity <= 2 * self.cpus:
            return busy < capacity
        return busy < self.cpus + (capacity - self.cpus + 1) // 2

    def relax(self) -> None:
        """Try one job more than the node last held (a result came back, or time passed)."""
        if self.limit is not None:
            self.limit += 1
            if self.limit >= self.full:
                self.limit = None

    @property
    def accepting(self) -> bool:
        return self.allocated and not self.closing

    @property
    def avg_job_time(self) -> float:
        return self.run_time / self.jobs_done if self.jobs_done else 0.0

    def load(self) -> NodeLoad:
        return NodeLoad(self.node_id, self.cpus, self.busy, self.jobs_done, self.avg_job_time, self.capacity)


class ClusterState:
    """The scheduling state of one computation; see the module docstring for the rules."""

    def __init__(self, scheduler: Scheduler, *, recover: RecoverPolicy | None = None, reentrant: bool = False,
                 pipeline: int = PIPELINE, allowed_failures: int = ALLOWED_FAILURES,
                 deep_pipeline: int | None = None) -> None:
        self.scheduler = scheduler
        self.recover = recover
        self.reentrant = reentrant
        self.pipeline = pipeline
        self.deep_pipeline = pipeline if deep_pipeline is None else max(pipeline, deep_pipeline)
        self.allowed_failures = allowed_failures
        self.starts_reported = False
        """Every job sent to a node waits there (``Created``) until the node says it started: a scheduler, which
        queues jobs for its own nodes, is such a node; a real node starts a job at once when a CPU is free."""
        self.jobs: dict[int, JobRecord] = {}
        self.pending: collections.deque[int] = collections.deque()
        self.parked: list[int] = []
        self.nodes: dict[str, NodeRecord] = {}
        self.discovered = False
        self.closing = False
        self._room: dict[str, None] = {}
        """Nodes that may have room for a job: every node that has some is here (an event about a node puts it
        back), so a dispatch looks at these, not at every node (flat in the number of nodes)."""
        self.no_node: str | None = None
        """Why no node can run jobs (``NoUsableNode``), until one is ready: new jobs end Abandoned at once."""

    def handle(self, event: ev.ClusterEvent) -> Out:
        """Apply ``event``; the instructions to carry out, in order."""
        out: Out = []
        self._handlers[type(event)](self, event, out)
        return out

    # ------------------------------------------------------------------ queries (for drivers and tests)
    def running_uids(self, node_id: str) -> list[int]:
        """Jobs running (not only waiting) at ``node_id``."""
        node = self.nodes.get(node_id)
        return [uid for uid, rec in node.in_flight.items() if not rec.waiting] if node else []

    def counts(self) -> tuple[int, int]:
        """(jobs not at a node or waiting there, jobs running)."""
        running = sum(1 for rec in self.jobs.values() if rec.status in (JobStatus.Running,
                                                                        JobStatus.ProvisionalResult))
        return len(self.jobs) - running, running

    # ------------------------------------------------------------------ jobs
    def _submitted(self, event: ev.JobSubmitted, out: Out) -> None:
        self._add(event, out)
        self._dispatch(out)

    def _submitted_together(self, event: ev.JobsSubmitted, out: Out) -> None:
        for job in event.jobs:
            self._add(job, out)
        self._dispatch(out)

    def _add(self, event: ev.JobSubmitted, out: Out) -> None:
        record = JobRecord(event.uid, JobStatus.Created, event.time, event.pinned)
        self.jobs[event.uid] = record
        out.append(ev.NotifyJob(event.uid, JobStatus.Created, None))
        self._place(record, out)

    def _place(self, record: JobRecord, out: Out, front: bool = False) -> None:
        """Queue a job that is at no node: pending, its pinned node's queue, or parked."""
        if self.no_node is not None and not self.nodes:
            self._final(record, JobEvent.NO_NODE, out, self.no_node)
            return
        if record.pinned is None:
            (self.pending.appendleft if front else self.pending.append)(record.uid)
            return
        node = self.nodes.get(record.pinned)
        if node is not None:
            (node.pinned.appendleft if front else node.pinned.append)(record.uid)
        elif not self.discovered:
            self.parked.append(record.uid)
        else:
            self._final(record, JobEvent.CANCELLED, out, f"node {record.pinned} is not in this cluster")

    def _discovery_done(self, event: ev.DiscoveryDone, out: Out) -> None:
        self.discovered = True
        parked, self.parked = self.parked, []
        for uid in parked:
            self._place(self.jobs[uid], out)
        self._dispatch(out)

    def _started(self, event: ev.JobStarted, out: Out) -> None:
        record = self._at(event.uid, event.node_id)
        if record is not None and record.waiting:
            record.waiting = False
            self._move(record, JobEvent.STARTED, out)

    def _result(self, event: ev.ResultArrived, out: Out) -> None:
        record = self._at(event.uid, event.node_id)
        if record is None:
            return  # late: the job was cancelled here, or its node given up
        node = self.nodes[event.node_id]
        del node.in_flight[event.uid]
        run_time = event.run_time if event.run_time > 0.0 else 0.0
        node.learn(run_time)
        self._room[node.node_id] = None
        if node.limit is not None:
            node.relax()
        self.scheduler.job_done(node.node_id, run_time)
        status = event.status if event.status in FINAL_JOB_STATES else JobStatus.Terminated
        self._final(record, result_event(status), out, outcome=event.outcome)
        self._slot_freed(node, out)
        self._dispatch(out)

    def _provisional(self, event: ev.ProvisionalArrived, out: Out) -> None:
        record = self._at(event.uid, event.node_id)
        if record is None or record.status != JobStatus.Running:
            return
        self._move(record, JobEvent.PROVISIONAL, out, outcome=event.outcome)
        self._move(record, JobEvent.RESUMED, out, notify=False)

    def _refused(self, event: ev.Refused, out: Out) -> None:
        record = self._at(event.uid, event.node_id)
        if record is None:
            return
        node = self.nodes[event.node_id]
        del node.in_flight[event.uid]
        record.node_id, record.waiting = None, False
        node.limit = node.busy  # no more than it holds now: a probe per result or Tick, never a ping-pong
        if record.cancelling:
            self._final(record, JobEvent.CANCELLED, out, "Cancelled")
        else:
            self._move(record, JobEvent.REFUSED, out, notify=False)
            self._place(record, out, front=True)
        self._slot_freed(node, out)
        self._dispatch(out)

    def _send_failed(self, event: ev.SendFailed, out: Out) -> None:
        record = self._at(event.uid, event.node_id)
        if record is None:
            return
        node = self.nodes[event.node_id]
        del node.in_flight[event.uid]
        self._final(record, JobEvent.SEND_FAILED, out, f"could not send job to {event.node_id}: {event.reason}")
        self._slot_freed(node, out)
        self._dispatch(out)

    def _cancel(self, event: ev.CancelAsked, out: Out) -> None:
        record = self.jobs.get(event.uid)
        if record is None:
            return
        if record.node_id is not None:
            record.cancelling = True
            out.append(ev.SendCancel(record.node_id, record.uid))
            return
        self._unqueue(record)
        self._final(record, JobEvent.CANCELLED, out, "Cancelled")

    def _unqueue(self, record: JobRecord) -> None:
        if record.pinned is None:
            self.pending.remove(record.uid)
        elif record.uid in self.parked:
            self.parked.remove(record.uid)
        else:
            self.nodes[record.pinned].pinned.remove(record.uid)

    # ------------------------------------------------------------------ nodes
    def _node_ready(self, event: ev.NodeReady, out: Out) -> None:
        self.no_node = None
        cpus = max(1, event.cpus)
        node = self.nodes.get(event.node_id)
        if node is None:
            node = self.nodes[event.node_id] = NodeRecord(event.node_id, cpus, cpus, self.pipeline,
                                                                     self.deep_pipeline)
            self.scheduler.node_added(node.load())
        else:  # set up again (resetup_node)
            node.granted = node.cpus = cpus
            node.closing = node.close_when_drained = node.terminate = False
            node.limit = None
        parked = [uid for uid in self.parked if self.jobs[uid].pinned == event.node_id]
        for uid in parked:
            self.parked.remove(uid)
            node.pinned.append(uid)
        out.append(ev.NotifyNode(event.node_id, NodeStatus.Initialized))
        self._room[node.node_id] = None
        self._dispatch(out)

    def _node_cpus(self, event: ev.NodeCpus, out: Out) -> None:
        node = self.nodes.get(event.node_id)
        if node is not None:
            node.cpus = max(1, min(event.cpus, node.granted))
            self._room[node.node_id] = None
            self._dispatch(out)

    def _node_allocation(self, event: ev.NodeAllocation, out: Out) -> None:
        node = self.nodes.get(event.node_id)
        if node is not None:
            node.allocated = event.allocated
            self._room[node.node_id] = None
            self._dispatch(out)

    def _node_closing(self, event: ev.NodeClosing, out: Out) -> None:
        node = self.nodes.get(event.node_id)
        if node is not None:
            self._close(node, event.terminate, "Cancelled (terminated: node closed)", out)

    def _close(self, node: NodeRecord, terminate: bool, why: str, out: Out) -> None:
        node.closing, node.close_when_drained = True, True
        node.terminate = node.terminate or terminate
        if terminate:  # the node is told to kill them and will not report them
            for record in list(node.in_flight.values()):
                del node.in_flight[record.uid]
                self._final(record, JobEvent.CANCELLED, out, why)
        self._slot_freed(node, out)

    def _slot_freed(self, node: NodeRecord, out: Out) -> None:
        self._room[node.node_id] = None
        if node.close_when_drained and not node.in_flight:
            node.close_when_drained = False
            out.append(ev.CloseNode(node.node_id, node.terminate))

    def _node_lost(self, event: ev.NodeLost, out: Out) -> None:
        node = self.nodes.pop(event.node_id, None)
        if node is not None:
            self._evict(node, f"node {event.node_id} lost: {event.reason}", out)
            self._dispatch(out)

    def _node_released(self, event: ev.NodeReleased, out: Out) -> None:
        node = self.nodes.pop(event.node_id, None)
        if node is not None:
            self._evict(node, f"node {event.node_id} closed: {event.reason}", out, event.notify)
            self._dispatch(out)

    def _evict(self, node: NodeRecord, why: str, out: Out, notify: bool = True) -> None:
        """The node is gone: recover its jobs, cancel those pinned to it, tell the scheduler and program."""
        self.scheduler.node_removed(node.node_id)
        requeue = [record for record in node.in_flight.values() if self._lost(record, why, out)]
        node.in_flight.clear()
        for record in reversed(requeue):  # ahead of newer jobs, in their order
            self.pending.appendleft(record.uid)
        for uid in node.pinned:
            self._final(self.jobs[uid], JobEvent.CANCELLED, out, why)
        node.pinned.clear()
        if notify:
            out.append(ev.NotifyNode(node.node_id, NodeStatus.Closed))

    def _lost(self, record: JobRecord, why: str, out: Out) -> bool:
        """A job in flight at a node that is gone (or whose host died): its fate; True to queue it again."""
        requeue = False
        if record.cancelling:
            self._final(record, JobEvent.CANCELLED, out, f"Cancelled ({why})")
        elif record.pinned is not None:  # cannot run elsewhere
            self._final(record, JobEvent.NODE_LOST_ABANDON if not record.waiting else JobEvent.CANCELLED, out, why)
        elif record.waiting:  # never started there: nothing to recover, it runs elsewhere
            record.waiting = False
            self._move(record, JobEvent.NODE_LOST_RESUBMIT, out)
            requeue = True
        elif self._lost_too_often(record):
            self._final(record, JobEvent.NODE_LOST_ABANDON, out,
                        f"{why}; its node was lost while running it {_times(record.losses)}, so it is not "
                        f"resubmitted again (allowed_failures={self.allowed_failures})")
        elif self._resubmit(record, "node-lost"):
            self._move(record, JobEvent.NODE_LOST_RESUBMIT, out)
            requeue = True
        else:
            self._final(record, JobEvent.NODE_LOST_ABANDON, out, why)
        record.node_id = None  # after the decision: dispy_recover sees the job's node
        return requeue

    def _job_lost(self, event: ev.JobLost, out: Out) -> None:
        record = self._at(event.uid, event.node_id)
        if record is None:
            return
        node = self.nodes[event.node_id]
        del node.in_flight[event.uid]
        if self._lost(record, f"lost on node {event.node_id}: {event.reason}", out):
            self.pending.appendleft(record.uid)
        self._slot_freed(node, out)
        self._dispatch(out)

    def _lost_too_often(self, record: JobRecord) -> bool:
        record.losses += 1
        return record.losses >= self.allowed_failures

    def _resubmit(self, record: JobRecord, failure: str) -> bool:
        decision = self.recover(record.view(), failure) if self.recover is not None else None
        if decision == "resubmit":
            return True
        if decision == "abandon":
            return False
        return self.reentrant

    def _cluster_closing(self, event: ev.ClusterClosing, out: Out) -> None:
        self.closing = True
        if event.terminate:
            why = "Cancelled (cluster closed)"
            queued = list(self.pending) + self.parked + [uid for n in self.nodes.values() for uid in n.pinned]
            self.pending.clear()
            self.parked.clear()
            for node in self.nodes.values():
                node.pinned.clear()
            for uid in queued:
                self._final(self.jobs[uid], JobEvent.CANCELLED, out, why)
        for node in list(self.nodes.values()):
            self._close(node, event.terminate, "Cancelled (cluster closed)", out)

    def _no_usable_node(self, event: ev.NoUsableNode, out: Out) -> None:
        if self.nodes:
            return  # one is usable after all
        self.no_node = event.reason
        queued = list(self.pending) + self.parked
        self.pending.clear()
        self.parked.clear()
        for uid in queued:
            self._final(self.jobs[uid], JobEvent.NO_NODE, out, event.reason)

    def _tick(self, event: ev.Tick, out: Out) -> None:
        """A node that refused jobs for want of a CPU is offered one more each tick (a probe)."""
        relaxed = False
        for node in self.nodes.values():
            if node.limit is not None:
                node.relax()
                self._room[node.node_id] = None
                relaxed = True
        if relaxed:
            self._dispatch(out)

    def _redispatch(self, event: ev.Redispatch, out: Out) -> None:
        self._room.update(dict.fromkeys(self.nodes))  # more slots granted: any node may take jobs now
        self._dispatch(out)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, out: Out) -> None:
        """Send queued jobs to nodes with room: pinned jobs first, then the scheduler's assignments."""
        if self.closing:
            return
        batches: dict[str, list[int]] = {}
        for node in self._with_room():
            while node.pinned and node.busy < node.capacity:
                self._send(node, self.jobs[node.pinned.popleft()], out, batches)
        while self.pending:
            room = self._with_room()
            if not room:
                break
            loads = [n.load() for n in room]
            free = sum(load.free for load in loads)
            views = [self.jobs[uid].view() for uid in itertools.islice(self.pending, free)]
            if not self._assign(self.scheduler.assign(views, loads), out, batches):
                break
        for node_id, uids in batches.items():
            out.append(ev.SendJobs(node_id, tuple(uids)))

    def _with_room(self) -> list[NodeRecord]:
        """The nodes that can take a job now; the others leave ``_room`` until an event about them."""
        room = []
        for node_id in list(self._room):
            node = self.nodes.get(node_id)
            if node is not None and node.accepting and node.has_room:
                room.append(node)
            else:
                del self._room[node_id]
        return room

    def _assign(self, pairs: Any, out: Out, batches: dict[str, list[int]]) -> int:
        sent = 0
        for uid, node_id in pairs or ():
            node = self.nodes.get(node_id)
            record = self.jobs.get(uid)
            if (node is None or record is None or record.node_id is not None or record.pinned is not None
                    or not node.accepting or node.busy >= node.capacity):
                continue
            if self.pending and self.pending[0] == uid:
                self.pending.popleft()
            else:
                try:
                    self.pending.remove(uid)
                except ValueError:
                    continue
            self._send(node, record, out, batches)
            sent += 1
        return sent

    def _send(self, node: NodeRecord, record: JobRecord, out: Out, batches: dict[str, list[int]]) -> None:
        record.waiting = self.starts_reported or node.busy >= node.cpus
        record.node_id = node.node_id
        record.attempts += 1
        node.in_flight[record.uid] = record
        self._move(record, JobEvent.QUEUED_AT_NODE if record.waiting else JobEvent.DISPATCHED, out)
        batches.setdefault(node.node_id, []).append(record.uid)

    # ------------------------------------------------------------------ transitions
    def _at(self, uid: int, node_id: str) -> JobRecord | None:
        """The job, if it is in flight at ``node_id`` (a message about any other job is late)."""
        node = self.nodes.get(node_id)
        return node.in_flight.get(uid) if node is not None else None

    def _move(self, record: JobRecord, event: JobEvent, out: Out, reason: str | None = None, outcome: Any = None,
              notify: bool = True) -> None:
        previous = record.status
        record.status = next_status(previous, event)
        if notify and (record.status != previous or event is JobEvent.PROVISIONAL):
            out.append(ev.NotifyJob(record.uid, record.status, previous, reason, outcome))

    def _final(self, record: JobRecord, event: JobEvent, out: Out, reason: str | None = None,
               outcome: Any = None) -> None:
        self._move(record, event, out, reason, outcome)
        del self.jobs[record.uid]

    _handlers: dict[type, Callable[[ClusterState, Any, Out], None]] = {
        ev.JobSubmitted: _submitted,
        ev.JobsSubmitted: _submitted_together,
        ev.DiscoveryDone: _discovery_done,
        ev.NodeReady: _node_ready,
        ev.NodeCpus: _node_cpus,
        ev.NodeAllocation: _node_allocation,
        ev.NodeClosing: _node_closing,
        ev.NodeLost: _node_lost,
        ev.NodeReleased: _node_released,
        ev.JobStarted: _started,
        ev.ResultArrived: _result,
        ev.ProvisionalArrived: _provisional,
        ev.Refused: _refused,
        ev.JobLost: _job_lost,
        ev.SendFailed: _send_failed,
        ev.CancelAsked: _cancel,
        ev.ClusterClosing: _cluster_closing,
        ev.NoUsableNode: _no_usable_node,
        ev.Tick: _tick,
        ev.Redispatch: _redispatch,
    }


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"
