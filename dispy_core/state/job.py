"""The job state machine, without I/O or clocks: which status a job moves to on each event.

Every status change of a job in the product goes through :func:`next_status` (``ClusterState`` calls it),
so this table is the whole story of a job's life. Anything not in it is a bug or a late message from a
peer, and is refused with :class:`InvalidTransition` rather than silently corrupting a job (a final
status never changes again).

A job sent to a node whose CPUs are all busy waits there (``QUEUED_AT_NODE``) and stays ``Created``
until the node starts it (``STARTED``); a job the node refuses, or whose node is lost before it started,
is ``Created`` again and goes back to the queue. ``ProvisionalResult`` lasts while ``job_status`` sees
the value; the job then ``RESUMED`` running.
"""

from __future__ import annotations

from enum import Enum

from dispy_core.errors import InvalidTransition
from dispy_core.status import FINAL_JOB_STATES, JobStatus

__all__ = ["TRANSITIONS", "InvalidTransition", "JobEvent", "next_status", "result_event"]


class JobEvent(Enum):
    DISPATCHED = "dispatched"            # sent to a node with a free CPU: it starts at once
    QUEUED_AT_NODE = "queued_at_node"    # sent to a node whose CPUs are busy: it waits there
    STARTED = "started"                  # the node started a job that waited there
    REFUSED = "refused"                  # the node had no room: back in the queue
    PROVISIONAL = "provisional"          # dispy_provisional_result arrived
    RESUMED = "resumed"                  # job_status has seen the provisional value: running again
    FINISHED = "finished"                # the computation returned
    FAILED = "failed"                    # the computation raised, or its process died
    CANCELLED = "cancelled"              # cancel() of a queued job, or the node confirmed a cancel
    NODE_LOST_RESUBMIT = "node_lost_resubmit"
    NODE_LOST_ABANDON = "node_lost_abandon"
    SEND_FAILED = "send_failed"          # the job could not be delivered to the node
    NO_NODE = "no_node"                  # no node can ever take it (every node failed for good, or none came)
    GIVEN_UP = "given_up"                # its "node" gave it up and says so (dispyscheduler: node lost there)


_S = JobStatus
_E = JobEvent
TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (_S.Created, _E.DISPATCHED): _S.Running,
    (_S.Created, _E.QUEUED_AT_NODE): _S.Created,
    (_S.Created, _E.STARTED): _S.Running,
    (_S.Created, _E.REFUSED): _S.Created,
    (_S.Created, _E.CANCELLED): _S.Cancelled,
    (_S.Created, _E.NODE_LOST_RESUBMIT): _S.Created,
    (_S.Created, _E.SEND_FAILED): _S.Cancelled,
    (_S.Created, _E.NO_NODE): _S.Abandoned,
    # a job waiting at a node may end there without starting (its computation's host died)
    (_S.Created, _E.FAILED): _S.Terminated,
    (_S.Created, _E.FINISHED): _S.Finished,
    (_S.Running, _E.REFUSED): _S.Created,
    (_S.Running, _E.PROVISIONAL): _S.ProvisionalResult,
    (_S.Running, _E.FINISHED): _S.Finished,
    (_S.Running, _E.FAILED): _S.Terminated,
    (_S.Running, _E.CANCELLED): _S.Cancelled,
    (_S.Running, _E.NODE_LOST_RESUBMIT): _S.Created,
    (_S.Running, _E.NODE_LOST_ABANDON): _S.Abandoned,
    (_S.Running, _E.SEND_FAILED): _S.Cancelled,
    (_S.ProvisionalResult, _E.RESUMED): _S.Running,
    (_S.ProvisionalResult, _E.PROVISIONAL): _S.ProvisionalResult,
    (_S.ProvisionalResult, _E.FINISHED): _S.Finished,
    (_S.ProvisionalResult, _E.FAILED): _S.Terminated,
    (_S.ProvisionalResult, _E.CANCELLED): _S.Cancelled,
    (_S.ProvisionalResult, _E.NODE_LOST_RESUBMIT): _S.Created,
    (_S.ProvisionalResult, _E.NODE_LOST_ABANDON): _S.Abandoned,
    (_S.Created, _E.GIVEN_UP): _S.Abandoned,
    (_S.Running, _E.GIVEN_UP): _S.Abandoned,
    (_S.ProvisionalResult, _E.GIVEN_UP): _S.Abandoned,
}


def next_status(status: int, event: JobEvent) -> JobStatus:
    """The status after ``event``; InvalidTransition when the event is impossible in ``status``."""
    target = TRANSITIONS.get((status, event))  # type: ignore[arg-type]  # an int finds its JobStatus
    if target is not None:
        return target
    try:
        current = JobStatus(status)
    except ValueError:
        raise InvalidTransition(f"unknown job status {status!r}") from None
    target = TRANSITIONS.get((current, event))
    if target is None:
        final = " (a final status)" if current in FINAL_JOB_STATES else ""
        raise InvalidTransition(f"a job in status {current.name}{final} cannot take event {event.value}")
    return target


def result_event(status: int) -> JobEvent:
    """The event a node's result status stands for (Finished, Terminated, Cancelled; Abandoned from a
    scheduler that gave the job up)."""
    if status == JobStatus.Finished:
        return JobEvent.FINISHED
    if status == JobStatus.Cancelled:
        return JobEvent.CANCELLED
    if status == JobStatus.Abandoned:
        return JobEvent.GIVEN_UP
    return JobEvent.FAILED
