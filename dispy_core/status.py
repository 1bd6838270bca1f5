"""Status codes of jobs and nodes, with the values the original dispy 4.15 used (programs compare them)."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class JobStatus(IntEnum):
    Created = 5
    Running = 6
    ProvisionalResult = 7
    Cancelled = 8
    Terminated = 9
    Abandoned = 10
    Finished = 11


class NodeStatus(IntEnum):
    Initialized = 4
    Closed = 16
    AvailInfo = 17


FINAL_JOB_STATES = frozenset({JobStatus.Cancelled, JobStatus.Terminated, JobStatus.Abandoned, JobStatus.Finished})


class RefusalReason(StrEnum):
    """Why a node refused a job (``JobRefused.code`` on the wire): the client's next step depends on it."""

    NO_FREE_CPU = "no-free-cpu"
    """Every CPU this computation may use is busy and its waiting line is full: the node is shared."""
    NOT_READY = "not-ready"
    """The computation is unknown here or not set up (yet)."""
    NOT_ACCEPTING = "not-accepting"
    """The node takes no jobs now: stopped by its operator, outside its service window, shutting down."""
    CLOSING = "closing"
    """The computation is closing on the node."""
