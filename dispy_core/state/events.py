"""What happens (events) and what to do about it (instructions), for the cluster and node state machines.

Small frozen dataclasses, like the wire messages: a driver turns a message, a timer or an API call into
an event, hands it to ``ClusterState.handle`` / ``NodeState.handle``, and carries out the instructions it
gets back in order. Time is a field of the events that need it; the state machines read no clock.

Instructions that send jobs name several jobs for one node (``SendJobs``), so a driver may later send
them as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispy_core.status import JobStatus, NodeStatus, RefusalReason

__all__ = [
    "CancelAsked", "CloseNode", "ClusterClosing", "ClusterEvent", "ClusterInstruction", "CompClosed",
    "CompClosing", "CompOpened", "CompReady", "DiscoveryDone", "JobArrived", "JobCancelAsked", "JobEnded", "JobLost",
    "JobStarted", "JobSubmitted", "JobsSubmitted", "KillJob", "NodeAllocation", "NodeCapacity", "NodeClosing",
    "NodeCpus", "NodeEvent",
    "NodeInstruction", "NodeLost", "NodeReady", "NoUsableNode", "NodeReleased", "NotifyJob", "NotifyNode",
    "ProvisionalArrived", "Redispatch", "Refused", "RefuseJob", "ReportCancelled", "ResultArrived", "SendCancel",
    "SendFailed", "SendJobs", "SendResult", "StartJob", "TerminateRunning", "Tick",
]


# =========================================================================== cluster: events
@dataclass(frozen=True, slots=True)
class JobSubmitted:
    """A program submitted a job; ``pinned`` names the node of ``submit_node``."""

    uid: int
    time: float
    pinned: str | None = None


@dataclass(frozen=True, slots=True)
class JobsSubmitted:
    """Jobs the program submitted together (the loop took them at once): each as ``JobSubmitted``, then
    one dispatch for all, so the nodes are looked at once, not once per job."""

    jobs: tuple[JobSubmitted, ...]


@dataclass(frozen=True, slots=True)
class DiscoveryDone:
    """The nodes named at start were all tried: jobs pinned to a node not found are cancelled now."""


@dataclass(frozen=True, slots=True)
class NodeReady:
    """A node is set up for the computation with ``cpus`` CPUs granted (again, after a resetup)."""

    node_id: str
    cpus: int
    time: float


@dataclass(frozen=True, slots=True)
class NodeCpus:
    """``set_node_cpus``: use ``cpus`` of the CPUs the node granted."""

    node_id: str
    cpus: int


@dataclass(frozen=True, slots=True)
class NodeAllocation:
    """``deallocate_node`` (False: no new jobs, running ones finish) or ``allocate_node`` (True)."""

    node_id: str
    allocated: bool


@dataclass(frozen=True, slots=True)
class NodeClosing:
    """No new jobs for this node; once its jobs are done (or now, cancelled, with ``terminate``), close it."""

    node_id: str
    terminate: bool
    time: float


@dataclass(frozen=True, slots=True)
class NodeLost:
    """The connection to a node failed: its jobs are recovered (resubmitted or abandoned)."""

    node_id: str
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class NodeReleased:
    """The cluster is done with a node (closed, refused at setup, cluster closing): it leaves the state."""

    node_id: str
    reason: str
    time: float
    notify: bool = True
    """Tell the program (``cluster_status`` gets ``DispyNode.Closed``)."""


@dataclass(frozen=True, slots=True)
class JobStarted:
    """A job that waited at its node for a CPU has started there."""

    uid: int
    node_id: str
    time: float


@dataclass(frozen=True, slots=True)
class ResultArrived:
    """A node reports a job done with ``status``; ``outcome`` is the driver's, passed back untouched."""

    uid: int
    node_id: str
    status: int
    run_time: float
    time: float
    outcome: Any = None


@dataclass(frozen=True, slots=True)
class ProvisionalArrived:
    """A running job sent a provisional result (``outcome``: the driver's, passed back untouched)."""

    uid: int
    node_id: str
    outcome: Any = None


@dataclass(frozen=True, slots=True)
class Refused:
    """The node refused a job it was sent."""

    uid: int
    node_id: str
    reason: RefusalReason
    time: float


@dataclass(frozen=True, slots=True)
class JobLost:
    """The job's process went down with its computation's host on that node (OOM killer, a job killing its
    parent): for this job, as if the node were lost; the node itself stays."""

    uid: int
    node_id: str
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A job (or its files) could not be delivered to its node."""

    uid: int
    node_id: str
    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class CancelAsked:
    """``cancel(job)``."""

    uid: int
    time: float


@dataclass(frozen=True, slots=True)
class ClusterClosing:
    """``close()``: with ``terminate``, every job not done is cancelled; every node is closed."""

    terminate: bool
    time: float


@dataclass(frozen=True, slots=True)
class NoUsableNode:
    """No node can run the jobs (every named node failed for good, or none came in time): ``reason`` says why,
    node by node. Jobs waiting end Abandoned, and so do jobs submitted until a node is ready."""

    reason: str
    time: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes (for timeouts: pulses missed, nodes to retry)."""

    time: float


@dataclass(frozen=True, slots=True)
class Redispatch:
    """What the scheduler plugin would assign changed outside the state (``dispyscheduler``'s arbiter gave this
    computation CPUs another one freed): send queued jobs to nodes with room again."""

    time: float


ClusterEvent = (JobSubmitted | JobsSubmitted | DiscoveryDone | NodeReady | NodeCpus | NodeAllocation | NodeClosing
                | NodeLost | NodeReleased | JobStarted | ResultArrived | ProvisionalArrived | Refused | JobLost
                | SendFailed | CancelAsked | ClusterClosing | NoUsableNode | Tick | Redispatch)


# =========================================================================== cluster: instructions
@dataclass(frozen=True, slots=True)
class SendJobs:
    """Send these jobs, in order, to one node."""

    node_id: str
    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SendCancel:
    """Ask the node to cancel a job it has (the node answers with the job's result)."""

    node_id: str
    uid: int


@dataclass(frozen=True, slots=True)
class NotifyJob:
    """A job's status changed: update the program's DispyJob, run the hooks and callbacks.

    ``reason`` goes to ``job.exception``; ``outcome`` is what the event that caused this carried
    (a result message, a provisional result). ``status`` final: the job is done, wake its waiters.
    """

    uid: int
    status: JobStatus
    previous: JobStatus | None
    reason: str | None = None
    outcome: Any = None


@dataclass(frozen=True, slots=True)
class NotifyNode:
    """A node's status changed for the program (Initialized, Closed)."""

    node_id: str
    status: NodeStatus


@dataclass(frozen=True, slots=True)
class CloseNode:
    """Close the computation on the node now (its jobs are done or were cancelled), then release it."""

    node_id: str
    terminate: bool


ClusterInstruction = SendJobs | SendCancel | NotifyJob | NotifyNode | CloseNode


# =========================================================================== node: events
@dataclass(frozen=True, slots=True)
class CompOpened:
    """A client opened a computation that may use ``cpus`` of the node's CPUs (not ready for jobs yet);
    ``announce_starts``: tell it when each job starts, also those that start on arrival (a scheduler asks: its
    computation shares the node's CPUs with others, so it cannot know that a job it sent runs at once)."""

    comp_id: str
    cpus: int
    announce_starts: bool = False
    queue_per_cpu: int = 1
    """Jobs that may wait here per CPU it may use (the client keeps more in flight when jobs are short)."""


@dataclass(frozen=True, slots=True)
class CompReady:
    """The computation's setup is done: it takes jobs."""

    comp_id: str


@dataclass(frozen=True, slots=True)
class CompClosing:
    """The computation closes: no new jobs; jobs waiting for a CPU go back to the client."""

    comp_id: str


@dataclass(frozen=True, slots=True)
class CompClosed:
    """The computation is gone (its executor closed): jobs it never reported free their CPUs."""

    comp_id: str
    time: float


@dataclass(frozen=True, slots=True)
class JobArrived:
    """A client sent a job."""

    comp_id: str
    uid: int
    time: float


@dataclass(frozen=True, slots=True)
class JobEnded:
    """The executor reports a job done (or it could not start)."""

    comp_id: str
    uid: int
    time: float


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """The CPUs the node serves, and whether it takes jobs (``closed_reason`` says why not)."""

    cpus: int
    closed_reason: str = ""
    """Empty: open. Otherwise why new jobs are refused (stopped, outside the service window, quitting)."""
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class TerminateRunning:
    """Kill every running job now (the service window ended)."""

    reason: str


@dataclass(frozen=True, slots=True)
class JobCancelAsked:
    """A client asked to cancel a job it sent."""

    comp_id: str
    uid: int
    time: float


NodeEvent = (CompOpened | CompReady | CompClosing | CompClosed | JobArrived | JobEnded | JobCancelAsked
             | NodeCapacity | TerminateRunning)


# =========================================================================== node: instructions
@dataclass(frozen=True, slots=True)
class StartJob:
    """Hand the job to the executor; ``announce``: it waited, tell the client it started (at ``time``)."""

    comp_id: str
    uid: int
    announce: bool
    time: float


@dataclass(frozen=True, slots=True)
class RefuseJob:
    """Send the job back to the client, refused; ``delay`` s later (a node taking no jobs holds refusals so
    a client re-sending at once cannot spin)."""

    comp_id: str
    uid: int
    reason: RefusalReason
    detail: str
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class SendResult:
    """Forward the job's result (the driver holds it) to the client."""

    comp_id: str
    uid: int


@dataclass(frozen=True, slots=True)
class KillJob:
    """Cancel a running job through the executor (interrupt, then kill after ``grace`` s)."""

    comp_id: str
    uid: int
    grace: float | None = None


@dataclass(frozen=True, slots=True)
class ReportCancelled:
    """A job cancelled while it waited for a CPU: send the client a Cancelled result."""

    comp_id: str
    uid: int
    time: float


NodeInstruction = StartJob | RefuseJob | SendResult | KillJob | ReportCancelled
