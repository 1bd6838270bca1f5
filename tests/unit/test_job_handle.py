"""A job's completion signal: made only for a waiter, never missed by one (whichever comes first)."""

from __future__ import annotations

import threading

from dispy_core.client.job import DispyJob
from dispy_core.status import JobStatus


def done(job: DispyJob, result: object) -> None:
    job.status, job.result = JobStatus.Finished, result
    job._finish()


def test_a_job_nobody_waits_for_holds_no_event() -> None:
    job = DispyJob(1, (), {})
    done(job, 3)
    assert job.finished and job() == 3 and job.wait(0)
    assert job._done_event is None  # an Event per job was most of a submit's cost


def test_a_waiter_before_the_end_wakes_and_one_after_returns_at_once() -> None:
    job = DispyJob(1, (), {})
    assert not job.finished and not job.wait(0.01)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(job()))
    waiter.start()
    done(job, "r")
    waiter.join(5)
    assert got == ["r"]
    assert job(timeout=0) == "r" and job.wait(0)


def test_no_waiter_misses_an_end_that_races_its_first_wait() -> None:
    for uid in range(300):
        job = DispyJob(uid, (), {})
        woke: list[bool] = []
        waiters = [threading.Thread(target=lambda j=job, out=woke: out.append(j.wait(5))) for _ in range(3)]
        for thread in waiters:
            thread.start()
        done(job, uid)
        for thread in waiters:
            thread.join(10)
        assert woke == [True, True, True], uid
