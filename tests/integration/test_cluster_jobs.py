"""Job control against real dispynode processes: provisional results, cancel, wait / close return
values, status(), submit_job_id and the context manager."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.waiting import wait_for

Factory = Callable[..., NodeProcess]


def steps(n: int) -> str:
    import time

    for i in range(n):
        dispy_provisional_result(("step", i))  # type: ignore[name-defined] # noqa: F821
        time.sleep(0.02)
    return "done"


def sleeper(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def saves_state_on_interrupt(seconds: float) -> str:
    import time

    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        return "saved before stopping"
    return "ran to the end"


def ignores_interrupt(seconds: float) -> str:
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dispy_provisional_result("ignoring")  # type: ignore[name-defined] # noqa: F821
    time.sleep(seconds)
    return "not cancelled"



def cluster_for(node: NodeProcess, computation: Any, **kwargs: Any) -> dispy.JobCluster:
    return dispy.JobCluster(computation, nodes=["127.0.0.1"], dispy_port=node.base_port, **kwargs)


def test_provisional_results_arrive_in_order_before_the_final_one(node: NodeProcess) -> None:
    seen: list[tuple[int, Any]] = []
    cluster_seen: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def job_status(job: dispy.DispyJob) -> None:
        with lock:
            seen.append((job.status, job.result))

    def cluster_status(status: int, node_: Any, job: Any) -> None:
        if job is not None:
            with lock:
                cluster_seen.append((status, job.result))

    with cluster_for(node, steps, job_status=job_status, cluster_status=cluster_status) as cluster:
        job = cluster.submit(5)
        assert job is not None and job(timeout=30) == "done"
        assert job.status == dispy.DispyJob.Finished
    wait_for(lambda: len(seen) == 6)
    provisional = [(dispy.DispyJob.ProvisionalResult, ("step", i)) for i in range(5)]
    assert seen == provisional + [(dispy.DispyJob.Finished, "done")]
    assert [c for c in cluster_seen if c[0] == dispy.DispyJob.ProvisionalResult] == provisional
    assert cluster_seen[-1] == (dispy.DispyJob.Finished, "done")


def test_cancel_queued_running_and_finished_jobs(node_factory: Factory) -> None:
    node = node_factory("--cpus", "1")
    statuses: list[tuple[Any, int]] = []
    with cluster_for(node, sleeper, job_status=lambda j: statuses.append((j.id, j.status))) as cluster:
        running = cluster.submit_job_id("running", 30)
        queued = cluster.submit_job_id("queued", 0)
        assert running is not None and queued is not None
        wait_for(lambda: running.status == dispy.DispyJob.Running)
        assert queued.status == dispy.DispyJob.Created
        assert cluster.cancel(queued) == 0
        assert queued.status == dispy.DispyJob.Cancelled and queued() is None
        start = time.monotonic()
        assert cluster.cancel(running) == 0
        assert running(timeout=20) is None
        assert time.monotonic() - start < 5  # an uncaught interrupt ends the job at once
        assert running.status == dispy.DispyJob.Cancelled and running.exception
        assert cluster.cancel(running) == -1 and cluster.cancel(queued) == -1
        done = cluster.submit(0)
        assert done is not None and done(timeout=20) == 0
        assert cluster.cancel(done) == -1
        unknown = dispy.DispyJob(10**6, (), {})
        assert cluster.cancel(unknown) == -1
    wait_for(lambda: len(statuses) == 3)
    assert ("queued", dispy.DispyJob.Cancelled) in statuses and ("running", dispy.DispyJob.Cancelled) in statuses


def test_cancelled_job_that_catches_the_interrupt_finishes_with_its_value(node: NodeProcess) -> None:
    with cluster_for(node, saves_state_on_interrupt) as cluster:
        job = cluster.submit(30)
        assert job is not None
        wait_for(lambda: cluster.node_jobs("127.0.0.1"))
        time.sleep(0.5)  # let the job reach its try block
        assert cluster.cancel(job) == 0
        assert job(timeout=20) == "saved before stopping"
        assert job.status == dispy.DispyJob.Finished


def test_cancelled_job_that_ignores_the_interrupt_is_killed_after_the_grace(node: NodeProcess) -> None:
    provisional = threading.Event()

    def job_status(job: dispy.DispyJob) -> None:
        if job.status == dispy.DispyJob.ProvisionalResult:
            provisional.set()

    with cluster_for(node, ignores_interrupt, job_status=job_status) as cluster:
        job = cluster.submit(60)
        assert job is not None
        assert provisional.wait(20)  # SIGINT is ignored from here on
        start = time.monotonic()
        assert cluster.cancel(job) == 0
        assert job(timeout=30) is None
        assert 3 < time.monotonic() - start < 20
        assert job.status == dispy.DispyJob.Cancelled


def test_wait_and_close_return_values(node_factory: Factory) -> None:
    node = node_factory("--cpus", "1")
    cluster = cluster_for(node, sleeper)
    running = cluster.submit(30)
    queued = cluster.submit(0)
    assert running is not None and queued is not None
    assert cluster.wait(timeout=0.3) is False
    status = cluster.status()
    assert status["name"] == cluster.name == "sleeper"
    assert status["unfinished"] == 2 and status["running"] + status["pending"] == 2
    assert cluster.close(timeout=0.2) is False  # jobs left and no terminate: still open
    assert cluster.status()["unfinished"] == 2
    assert cluster.close(timeout=0.2, terminate=True) is False  # timed out: the rest was cancelled
    assert running.status == dispy.DispyJob.Cancelled and queued.status == dispy.DispyJob.Cancelled
    assert cluster.wait(timeout=0) is True and cluster.close() is True
    with pytest.raises(RuntimeError, match="closed"):
        cluster.submit(1)
    assert cluster.node_jobs("127.0.0.1") == [] and cluster.set_node_cpus("127.0.0.1", 1) == -1
    with cluster_for(node, sleeper) as cluster:
        job = cluster.submit(0.1)
        assert cluster.wait() is True
        assert cluster.close(timeout=5) is True
    assert job is not None and job.status == dispy.DispyJob.Finished


def test_context_manager_cancels_on_error_and_propagates(node: NodeProcess) -> None:
    with pytest.raises(ZeroDivisionError), cluster_for(node, sleeper) as cluster:
        job = cluster.submit(30)
        assert job is not None
        wait_for(lambda: job.status == dispy.DispyJob.Running)
        1 / 0  # noqa: B018
    assert job.status == dispy.DispyJob.Cancelled


def test_loglevel_constants_and_debug_logging(node: NodeProcess, caplog: pytest.LogCaptureFixture) -> None:
    assert (dispy.logger.DEBUG, dispy.logger.INFO, dispy.logger.WARNING, dispy.logger.ERROR,
            dispy.logger.CRITICAL) == (10, 20, 30, 40, 50)
    caplog.set_level(10, logger="dispy")
    with cluster_for(node, sleeper, loglevel=dispy.logger.DEBUG) as cluster:
        assert dispy.logger.getEffectiveLevel() == dispy.logger.DEBUG
        job = cluster.submit(0)
        assert job is not None and job(timeout=20) == 0
    assert any("ready with" in r.getMessage() for r in caplog.records)
    with cluster_for(node, sleeper, loglevel=dispy.logger.WARNING):
        assert dispy.logger.getEffectiveLevel() == dispy.logger.WARNING
