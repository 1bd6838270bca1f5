"""How a job's final status becomes its future's outcome (no node needed: the job's fields are set as the
client driver sets them)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import threading

import pytest

from dispy_core.client.futures import JobAbandoned, JobFailed, JobTerminated, RemoteTraceback, load_exception
from dispy_core.client.job import DispyJob
from dispy_core.status import JobStatus


def ended(status: int, result: object = None, exception: str | None = None,
          original: BaseException | None = None) -> DispyJob:
    job = DispyJob(1, (), {})
    job.status, job.result, job.exception, job._exc_object = status, result, exception, original
    job._finish()
    return job


def test_finished_gives_the_result_whether_the_future_is_made_before_or_after() -> None:
    job = DispyJob(1, (), {})
    early = job.future
    job.status, job.result = JobStatus.Finished, 42
    job._finish()
    assert early.result(timeout=0) == 42
    assert ended(JobStatus.Finished, result=[1]).future.result(timeout=0) == [1]


def test_a_result_the_client_could_not_load_raises_job_failed() -> None:
    with pytest.raises(JobFailed, match="cannot load result"):
        ended(JobStatus.Finished, exception="cannot load result: no module named x").future.result(timeout=0)


def test_terminated_raises_the_original_with_the_traceback_text_as_cause() -> None:
    text = 'Traceback (most recent call last):\n  File "job.py", line 3, in compute\nKeyError: \'k\'\n'
    future = ended(JobStatus.Terminated, exception=text, original=KeyError("k")).future
    with pytest.raises(KeyError) as caught:
        future.result(timeout=0)
    assert isinstance(caught.value.__cause__, RemoteTraceback)
    assert caught.value.__cause__.text == text.rstrip() and 'File "job.py", line 3' in str(caught.value.__cause__)
    with pytest.raises(JobTerminated, match="killed by signal 9"):
        ended(JobStatus.Terminated, exception="job process killed by signal 9").future.result(timeout=0)


def test_abandoned_and_cancelled() -> None:
    with pytest.raises(JobAbandoned, match="no usable node"):
        ended(JobStatus.Abandoned, exception="no usable node").future.result(timeout=0)
    cancelled = ended(JobStatus.Cancelled, exception="Cancelled").future
    assert cancelled.cancelled()
    done, _ = concurrent.futures.wait([cancelled], timeout=0)
    assert done == {cancelled}


def test_wait_and_await_wake_when_the_job_ends_on_another_thread() -> None:
    jobs = [DispyJob(n, (), {}) for n in range(3)]
    futures = [job.future for job in jobs]

    def end_them() -> None:
        for n, job in enumerate(jobs):
            job.status, job.result = JobStatus.Finished, n
            job._finish()

    threading.Timer(0.05, end_them).start()
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=10)) == [0, 1, 2]
    late = DispyJob(9, (), {})

    def end_late() -> None:
        late.status, late.result = JobStatus.Finished, "x"
        late._finish()

    async def main() -> object:
        threading.Timer(0.05, end_late).start()
        return await late

    assert asyncio.run(main()) == "x"


def test_cancel_without_a_cluster_is_refused() -> None:
    assert DispyJob(1, (), {}).future.cancel() is False


def test_load_exception_takes_only_exceptions() -> None:
    import base64

    def encoded(obj: object) -> str:
        return base64.b64encode(pickle.dumps(obj)).decode()

    loaded = load_exception(encoded(ValueError("v")), pickle.loads)
    assert isinstance(loaded, ValueError) and loaded.args == ("v",)
    assert load_exception(encoded("not an exception"), pickle.loads) is None
    assert load_exception("!!not base64!!", pickle.loads) is None
    assert load_exception("", pickle.loads) is None
