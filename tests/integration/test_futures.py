"""job.future, ``await job`` and cluster.as_completed against real dispynode processes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dispy
from dispy_core.client.futures import JobAbandoned, JobTerminated, RemoteTraceback
from dispy_core.testing.nodes import NodeProcess, start_node


def compute(kind: str, value: Any = None) -> Any:
    import os
    import time

    if kind == "square":
        return value * value
    if kind == "raise":
        raise ValueError(f"bad value {value}")
    if kind == "unserializable":
        raise ValueError(n for n in range(1))  # a generator: the exception cannot travel, its text does
    if kind == "die":
        os._exit(3)
    if kind == "sleep":
        time.sleep(value)
        return value
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    started = start_node(["-c", "2"], prefix=Path(tmp_path_factory.mktemp("node")))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cluster(node: NodeProcess) -> Iterator[dispy.JobCluster]:
    made = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=node.base_port)
    yield made
    made.close(timeout=30, terminate=True)


def submitted(cluster: dispy.JobCluster, *args: Any) -> dispy.DispyJob:
    job = cluster.submit(*args)
    assert job is not None
    return job


def test_future_gives_the_result_and_raises_the_original_exception_with_the_remote_traceback(
        cluster: dispy.JobCluster) -> None:
    good, bad = submitted(cluster, "square", 7), submitted(cluster, "raise", 3)
    assert good.future.result(timeout=60) == 49
    with pytest.raises(ValueError, match="bad value 3") as caught:
        bad.future.result(timeout=60)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "Traceback (most recent call last)" in cause.text and "ValueError: bad value 3" in cause.text
    assert "in compute" in cause.text
    # the original's API is unchanged: job() is None, job.exception the traceback text
    assert bad() is None and bad.status == dispy.DispyJob.Terminated
    assert "ValueError: bad value 3" in str(bad.exception)
    assert isinstance(bad.future, concurrent.futures.Future) and bad.future is bad.future


def test_failures_without_an_exception_object_give_clear_errors(cluster: dispy.JobCluster) -> None:
    unserializable, dies = submitted(cluster, "unserializable"), submitted(cluster, "die")
    with pytest.raises(JobTerminated, match="ValueError") as caught:
        unserializable.future.result(timeout=60)
    assert caught.value.job is unserializable
    with pytest.raises(JobTerminated, match="was terminated") as died:
        dies.future.result(timeout=60)
    assert "exit" in str(died.value) and dies.status == dispy.DispyJob.Terminated



def test_an_abandoned_job_raises_job_abandoned(node: NodeProcess) -> None:
    with dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=node.base_port, max_payload=1 << 20) as cluster:
        too_large = cluster.submit("square", b"x" * (1 << 20))  # refused before it is sent
        assert too_large is not None and too_large.status == dispy.DispyJob.Abandoned
        with pytest.raises(JobAbandoned, match="max_payload"):
            too_large.future.result(timeout=5)


def test_concurrent_futures_wait_and_as_completed_take_job_futures(cluster: dispy.JobCluster) -> None:
    jobs = [submitted(cluster, "square", n) for n in range(8)]
    done, pending = concurrent.futures.wait([job.future for job in jobs], timeout=60)
    assert not pending and {f.result() for f in done} == {n * n for n in range(8)}
    more = [submitted(cluster, "square", n) for n in range(8, 12)]
    results = sorted(f.result() for f in concurrent.futures.as_completed([j.future for j in more], timeout=60))
    assert results == [n * n for n in range(8, 12)]


def test_await_job_in_asyncio_run(cluster: dispy.JobCluster) -> None:
    async def main() -> tuple[list[Any], BaseException | None]:
        values = await asyncio.gather(*(submitted(cluster, "square", n) for n in range(5)))
        try:
            await submitted(cluster, "raise", "awaited")
        except ValueError as exc:
            return list(values), exc
        return list(values), None

    values, error = asyncio.run(main())
    assert values == [0, 1, 4, 9, 16]
    assert isinstance(error, ValueError) and "awaited" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)


def test_await_on_the_clusters_own_loop_is_refused(cluster: dispy.JobCluster) -> None:
    job = submitted(cluster, "square", 2)

    async def on_cluster_loop() -> Any:
        return await job

    attempt = asyncio.run_coroutine_threadsafe(on_cluster_loop(), cluster._loop.loop)
    with pytest.raises(RuntimeError, match="own loop"):
        attempt.result(timeout=30)
    assert job(timeout=60) == 4


def test_cluster_as_completed_yields_jobs_as_they_finish_and_times_out(cluster: dispy.JobCluster) -> None:
    slow, fast = submitted(cluster, "sleep", 1.5), submitted(cluster, "sleep", 0.05)
    order = [job for job in cluster.as_completed([slow, fast], timeout=60)]
    assert order == [fast, slow]
    held = [submitted(cluster, "square", n) for n in range(3)]
    seen = list(cluster.as_completed(timeout=60))  # every job the test still holds, finished ones included
    assert set(held) <= set(seen) and {slow, fast} <= set(seen)
    waiting = submitted(cluster, "sleep", 30.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        list(cluster.as_completed([waiting], timeout=0.5))
    assert time.monotonic() - started < 10
    assert cluster.cancel(waiting) == 0
    concurrent.futures.wait([waiting.future], timeout=30)
    assert waiting.future.cancelled() and waiting.status == dispy.DispyJob.Cancelled
    with pytest.raises(TypeError, match="not a DispyJob"):
        list(cluster.as_completed([None]))  # type: ignore[list-item]


def test_future_cancel_removes_a_queued_job_but_not_a_running_one(node_factory: Any) -> None:
    one_cpu = node_factory("-c", "1")
    with dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=one_cpu.base_port) as cluster:
        running = submitted(cluster, "sleep", 1.5)
        queued = submitted(cluster, "square", 5)
        deadline = time.monotonic() + 30
        while running.status != dispy.DispyJob.Running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.status == dispy.DispyJob.Running
        assert running.future.cancel() is False
        assert queued.future.cancel() is True and queued.future.cancelled()
        assert cluster.wait(timeout=60)
        assert queued.status == dispy.DispyJob.Cancelled
        assert running.future.result(timeout=5) == 1.5


def test_print_status_shows_milliseconds_and_rate_for_tiny_jobs(cluster: dispy.JobCluster) -> None:
    jobs = [submitted(cluster, "square", n) for n in range(10)]
    assert all(job(timeout=60) is not None for job in jobs)
    table = cluster.format_status()
    assert "Sec/Job" in table and "Node Time Sec" in table
    node_line = next(line for line in table.splitlines() if line.strip().startswith("127.0.0.1"))
    per_job = node_line.split("|")[3]
    assert re.fullmatch(r"[0-9.]+ ms", per_job.strip()), node_line
    assert re.search(r"[0-9.]+ jobs/s", table) and not re.search(r"\b0\.000\b", node_line)
