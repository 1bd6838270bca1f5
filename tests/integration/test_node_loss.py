"""What becomes of jobs when real nodes die: a poison job that kills its node is resubmitted by a
reentrant cluster only ``allowed_failures`` times, then ends Abandoned with the reason; other jobs finish."""

from __future__ import annotations

from collections.abc import Callable

import dispy
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.waiting import wait_for


def poison_or_square(n: int) -> int:
    """n < 0 kills the dispynode running it (as an OOM killer or a bad C extension might); else n * n."""
    if n < 0:
        import os
        import signal

        import psutil

        for parent in psutil.Process().parents():
            if any("dispynode" in part or "dispy_core.node" in part for part in parent.cmdline()):
                os.kill(parent.pid, signal.SIGKILL)
        import time

        time.sleep(30)
    return n * n


def test_a_poison_job_takes_down_only_allowed_failures_nodes(node_factory: Callable[..., NodeProcess]) -> None:
    nodes = [node_factory("--name", f"n{i}", "--cpus", "1") for i in range(3)]
    allocs = [dispy.NodeAllocate("127.0.0.1", port=node.port) for node in nodes]
    with dispy.JobCluster(poison_or_square, nodes=allocs, reentrant=True, allowed_failures=2) as cluster:
        wait_for(lambda: len(cluster.status()["nodes"]) == 3, timeout=30)
        poison = cluster.submit(-1)
        assert poison is not None
        assert poison.wait(timeout=60)
        assert poison.status == dispy.DispyJob.Abandoned
        assert "lost while running it 2 times" in str(poison.exception), poison.exception
        assert sum(1 for node in nodes if node.proc.poll() is None) == 1  # two died, no more
        jobs = [cluster.submit(i) for i in range(10)]
        assert [job() for job in jobs if job is not None] == [i * i for i in range(10)]
