"""The job state machine, without I/O or clocks: which status a job moves to on each event.

The client (and later the shared scheduler) applies these transitions; anything not in the table is a
bug or a late message from a peer, and is refused with :class:`InvalidTransition` rather than
silently corrupting a job (a final status never changes again).
"""

from __future__ import annotations

from enum import Enum

from dispy_core.errors import DispyError
from dispy_core.status import FINAL_JOB_STATES, JobStatus


class JobEvent(Enum):
    DISPATCHED = "dispatched"            # sent to a node
    REFUSED = "refused"                  # the node had no room: back in the queue
    PROVISIONAL = "provisional"          # dispy_provisional_result arrived
    FINISHED = "finished"                # the computation returned
    FAILED = "failed"                    # the computation raised, or its process died
    CANCELLED = "cancelled"              # cancel() of a queued job, or the node confirmed a cancel
    NODE_LOST_RESUBMIT = "node_lost_resubmit"
    NODE_LOST_ABANDON = "node_lost_abandon"
    SEND_FAILED = "send_failed"          # the job could not be delivered to the node


class InvalidTransition(DispyError):
    """An event that cannot happen to a job in its current status."""


_S = JobStatus
_E = JobEvent
TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (_S.Created, _E.DISPATCHED): _S.Running,
    (_S.Created, _E.CANCELLED): _S.Cancelled,
    (_S.Running, _E.REFUSED): _S.Created,
    (_S.Running, _E.PROVISIONAL): _S.ProvisionalResult,
    (_S.Running, _E.FINISHED): _S.Finished,
    (_S.Running, _E.FAILED): _S.Terminated,
    (_S.Running, _E.CANCELLED): _S.Cancelled,
    (_S.Running, _E.NODE_LOST_RESUBMIT): _S.Created,
    (_S.Running, _E.NODE_LOST_ABANDON): _S.Abandoned,
    (_S.Running, _E.SEND_FAILED): _S.Cancelled,
    # ProvisionalResult is the status while job_status sees the value; the job is still running.
    (_S.ProvisionalResult, _E.PROVISIONAL): _S.ProvisionalResult,
    (_S.ProvisionalResult, _E.FINISHED): _S.Finished,
    (_S.ProvisionalResult, _E.FAILED): _S.Terminated,
    (_S.ProvisionalResult, _E.CANCELLED): _S.Cancelled,
    (_S.ProvisionalResult, _E.NODE_LOST_RESUBMIT): _S.Created,
    (_S.ProvisionalResult, _E.NODE_LOST_ABANDON): _S.Abandoned,
}


def next_status(status: int, event: JobEvent) -> JobStatus:
    """The status after ``event``; InvalidTransition when the event is impossible in ``status``."""
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
    """The event a node's result status stands for (Finished, Terminated or Cancelled)."""
    if status == JobStatus.Finished:
        return JobEvent.FINISHED
    if status == JobStatus.Cancelled:
        return JobEvent.CANCELLED
    return JobEvent.FAILED
