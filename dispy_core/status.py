"""Status codes of jobs and nodes, with the values the original dispy 4.15 used (programs compare them)."""

from __future__ import annotations

from enum import IntEnum


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
