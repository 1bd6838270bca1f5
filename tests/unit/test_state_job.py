"""The job state machine: every (status, event) pair either follows the table or is refused."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispy_core.state.job import TRANSITIONS, InvalidTransition, JobEvent, next_status, result_event
from dispy_core.status import FINAL_JOB_STATES, JobStatus


@pytest.mark.parametrize(("status", "event"), list(itertools.product(JobStatus, JobEvent)))
def test_every_pair(status: JobStatus, event: JobEvent) -> None:
    if (status, event) in TRANSITIONS:
        assert next_status(status, event) == TRANSITIONS[(status, event)]
    else:
        with pytest.raises(InvalidTransition, match=status.name):
            next_status(status, event)


def test_final_states_never_change() -> None:
    for status in FINAL_JOB_STATES:
        for event in JobEvent:
            with pytest.raises(InvalidTransition, match="final status"):
                next_status(status, event)


def test_unknown_status_refused() -> None:
    with pytest.raises(InvalidTransition, match="unknown job status"):
        next_status(99, JobEvent.DISPATCHED)


@given(st.lists(st.sampled_from(list(JobEvent)), max_size=30))
def test_any_event_sequence_keeps_the_job_consistent(events: list[JobEvent]) -> None:
    """Applying any sequence (skipping refused events) never leaves a final status, and a job that
    reached a final status got there by a result, a cancel, an abandon or a failed send."""
    status: JobStatus = JobStatus.Created
    history = [status]
    for event in events:
        try:
            status = next_status(status, event)
        except InvalidTransition:
            continue
        if history[-1] in FINAL_JOB_STATES:
            pytest.fail(f"left final status {history[-1]} on {event}")
        history.append(status)
    finals = [s for s in history if s in FINAL_JOB_STATES]
    assert len(finals) <= 1 and (not finals or finals[0] == history[-1])


@pytest.mark.parametrize(("status", "event"), [(JobStatus.Finished, JobEvent.FINISHED),
                                               (JobStatus.Cancelled, JobEvent.CANCELLED),
                                               (JobStatus.Terminated, JobEvent.FAILED),
                                               (JobStatus.Abandoned, JobEvent.GIVEN_UP)])
def test_result_event(status: JobStatus, event: JobEvent) -> None:
    assert result_event(status) == event
