"""Cancel and provisional results through a real dispynode and dispy.JobCluster: the node's real ~5 s
grace for a job that ignores the interrupt (and its setsid grandchild), a job that catches it and
returns a value, and 50 quick provisional results reaching ``job_status`` in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

import dispy
from dispy_core.testing.nodes import NodeProcess

GRANDCHILD = ("import signal, time\n"
              "for s in (signal.SIGINT, signal.SIGTERM):\n"
              "    signal.signal(s, signal.SIG_IGN)\n"
              "time.sleep(120)\n")


def stubborn(grandchild_src: str) -> None:
    import signal
    import subprocess
    import sys

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                              "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], start_new_session=True)\n"
                              "print(p.pid, flush=True)\n"
                              "time.sleep(120)\n", grandchild_src], stdout=subprocess.PIPE)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    dispy_provisional_result((os.getpid(), child.pid, grandchild))  # type: ignore[name-defined] # noqa: F821
    while True:
        time.sleep(1)


def polite(n: int) -> str:
    try:
        dispy_provisional_result(n)  # type: ignore[name-defined] # noqa: F821
        time.sleep(120)
    except KeyboardInterrupt:
        return f"saved {n}"
    return "not interrupted"


def chatty(n: int) -> int:
    for i in range(n):
        dispy_provisional_result(i)  # type: ignore[name-defined] # noqa: F821
    return -1


def cluster_for(node: NodeProcess, computation: Any, **kwargs: Any) -> Any:
    return dispy.JobCluster(computation, nodes=[node.host], dispy_port=node.base_port, **kwargs)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Provisional:
    """Collects provisional results from the callback thread."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.finals: list[Any] = []
        self.arrived = threading.Event()

    def __call__(self, job: Any) -> None:
        if job.status == dispy.DispyJob.ProvisionalResult:
            self.values.append(job.result)
            self.arrived.set()
        else:
            self.finals.append((job.status, job.result, len(self.values)))


@pytest.mark.parametrize("executor", ["fork", "spawn"])
def test_cancel_a_job_that_catches_the_interrupt(node_factory: Callable[..., NodeProcess], executor: str) -> None:
    node = node_factory("--executor", executor)
    seen = Provisional()
    with cluster_for(node, polite, job_status=seen) as cluster:
        job = cluster.submit(7)
        assert job is not None and seen.arrived.wait(20)
        t0 = time.monotonic()
        assert cluster.cancel(job) == 0
        assert job(timeout=20) == "saved 7"
        assert time.monotonic() - t0 < 4
        assert job.status == dispy.DispyJob.Finished


def test_cancel_after_the_nodes_grace_kills_the_job_and_its_setsid_grandchild(
        node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory("--executor", "fork")
    seen = Provisional()
    with cluster_for(node, stubborn, job_status=seen) as cluster:
        job = cluster.submit(GRANDCHILD)
        assert job is not None and seen.arrived.wait(20)
        pids = list(seen.values[0])
        assert all(alive(pid) for pid in pids)
        t0 = time.monotonic()
        assert cluster.cancel(job) == 0
        job(timeout=30)
        elapsed = time.monotonic() - t0
        assert job.status == dispy.DispyJob.Cancelled
        assert 4.5 <= elapsed < 12  # the node's default grace is about 5 s, then TERM, then KILL
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in pids)


@pytest.mark.parametrize("executor", ["fork", "spawn"])
def test_fifty_provisional_results_in_order_before_the_result(node_factory: Callable[..., NodeProcess],
                                                              executor: str) -> None:
    node = node_factory("--executor", executor)
    seen = Provisional()
    with cluster_for(node, chatty, job_status=seen) as cluster:
        job = cluster.submit(50)
        assert job is not None and job() == -1
    deadline = time.monotonic() + 5
    while not seen.finals and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen.values == list(range(50))
    assert seen.finals == [(dispy.DispyJob.Finished, -1, 50)]
